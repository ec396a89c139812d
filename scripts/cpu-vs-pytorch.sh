#!/usr/bin/env bash
# tperf's CPU backend beside PyTorch on the CPU, both pinned to the same cores with the same
# thread count: forward, forward + backward and the training step of the same models, and the
# square matmul rates. Writes JSON files into OUT_DIR and prints a summary.
#
# Usage: scripts/cpu-vs-pytorch.sh OUT_DIR [CORES] [MODELS]
#   CORES: a taskset list, default 0,1 (two threads); MODELS: default "gpt2-124m small"
# Needs: a built tperf (TPERF, default target/release/tperf) and python3 with torch.
set -euo pipefail
out=${1:?usage: scripts/cpu-vs-pytorch.sh OUT_DIR [CORES] [MODELS]}
cores=${2:-0,1}
models=${3:-gpt2-124m small}
tperf=${TPERF:-target/release/tperf}
here=$(cd "$(dirname "$0")/.." && pwd)
threads=$(( $(tr ',' '\n' <<<"$cores" | wc -l) ))
mkdir -p "$out"
lscpu > "$out/cpu.txt" 2>/dev/null || cat /proc/cpuinfo > "$out/cpu.txt"
for m in $models; do
    taskset -c "$cores" "$tperf" bench "$m" --batch 1 --seq 128 --phase forward,fwd_bwd,train \
        --warmup 2 --steps 5 --device cpu --json > "$out/tperf_$m.json"
    taskset -c "$cores" python3 "$here/bench/pytorch/bench_cpu.py" --model "$m" --batch 1 --seq 128 \
        --threads "$threads" --warmup 2 --steps 5 > "$out/torch_$m.json"
done
taskset -c "$cores" "$tperf" hw measure --json > "$out/tperf_hw.json"
python3 - "$out" $models <<'PY'
import json, sys
out, models = sys.argv[1], sys.argv[2:]
print("model      pass     tperf ms  torch ms  tperf/torch")
for m in models:
    t = json.load(open(f"{out}/tperf_{m}.json")); p = json.load(open(f"{out}/torch_{m}.json"))
    pr = {r["phase"]: r for r in p["rows"]}
    for r in t["rows"]:
        ph = r["scenario"]["workload"]; a = r["measured"]["median"] * 1e3; b = pr[ph]["seconds"]["median"] * 1e3
        print(f"{m:10} {ph:8} {a:8.1f} {b:9.1f} {a / b:8.2f}")
hw = json.load(open(f"{out}/tperf_hw.json"))
print("matmul GFLOP/s:", [(x["n"], round(x["flops_per_s"] / 1e9, 1)) for x in hw["matmul"]])
PY
