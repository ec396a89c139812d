#!/usr/bin/env bash
# tperf's CUDA backend beside PyTorch on the same GPU: the seed's model table (small … xl,
# fp32 and bf16, batch 4 × 256; forward, forward + backward, training step) and the attention
# sweep (causal, bf16), then the ratio table. Runs on the GPU machine.
#
# Usage: scripts/cuda-vs-pytorch.sh OUT_DIR [PYTORCH_JSON]
#   PYTORCH_JSON: an existing bench_seed.py result to compare against instead of running
#   PyTorch again (the ratio table names which file it used).
# Needs: a built tperf (TPERF, default target/release/tperf); python3 with torch for PyTorch.
set -euo pipefail
out=${1:?usage: scripts/cuda-vs-pytorch.sh OUT_DIR [PYTORCH_JSON]}
tperf=${TPERF:-target/release/tperf}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/device.txt" 2>&1 || true
# Rows are appended as each finishes, so an interrupted run keeps what it measured.
rm -f "$out/tperf_bench.jsonl"
"$tperf" bench --sizes small,medium,large,xl --dtype fp32,bf16 --batch 4 --seq 256 \
    --phase forward,fwd_bwd,train --warmup 3 --steps 10 --device cuda \
    --out "$out/tperf_bench.jsonl" > "$out/tperf_bench.txt"
"$tperf" attention --batch 1 --heads 16 --dims 64,128 --seqs 4096,16384 --dtype bf16 \
    --warmup 2 --steps 5 --device cuda --json > "$out/tperf_attention.json"
torch_json=${2:-}
if [ -z "$torch_json" ]; then
    python3 "$here/bench/pytorch/bench_seed.py" --out "$out/pytorch" --sizes small,medium,large,xl
    torch_json="$out/pytorch/pytorch_seed.json"
fi
python3 "$here/bench/pytorch/compare_cuda.py" "$torch_json" "$out/tperf_bench.jsonl" \
    "$out/tperf_attention.json" | tee "$out/ratio.md"
