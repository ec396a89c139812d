#!/usr/bin/env bash
# The host part of a serving step (branch hostcost) on one GPU, in about two minutes: tperf
# serve gpt2-124m bf16 saturated by tperf bench serve (rate inf, 2048 prompts of 128 ± 0 tokens
# in and out, so about 220–256 sequences decode at once), then the engine's step split as its
# /metrics split it (tperf_engine_step_seconds{part="host"|"device"}, summed over
# tperf_engine_steps_total), and the gpt2-124m decode bench's "host ms" column (the replayed step's
# host time) at B = 1 and 128. Run it once with main's binary and once with this branch's to
# compare (the CPU harness is crates/engine/tests/host_cost.rs):
#   bash scripts/hostcost-gpu.sh OUTDIR TPERF
# CALIBRATION=FILE (a `tperf calibrate` file) makes the serving prediction beside it calibrated.
set -u
out=${1:?usage: scripts/hostcost-gpu.sh OUTDIR TPERF}
tperf=${2:?usage: scripts/hostcost-gpu.sh OUTDIR TPERF}
port=8000
mkdir -p "$out"
log=$out/hostcost.txt
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null' EXIT
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } >"$log" 2>&1
metrics() {
    python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/metrics', timeout=5).read().decode())" 2>&1
}
"$tperf" serve gpt2-124m --device cuda --dtype bf16 --port "$port" >>"$log" 2>&1 &
server=$!
for _ in $(seq 1 120); do
    metrics >/dev/null 2>&1 && break
    sleep 0.5
done
echo "### bench serve (rate inf, 2048 prompts)" >>"$log"
timeout 150 "$tperf" bench serve --url "http://127.0.0.1:$port" --num-prompts 2048 \
    --random-input-len 128 --random-output-len 128 --request-rate inf \
    --model-config gpt2-124m --hw h200 --dtype bf16 --json "$out/serve.json" \
    ${CALIBRATION:+--calibration "$CALIBRATION"} >>"$log" 2>&1
echo "### exit $?" >>"$log"
metrics | grep -E "step|running" | grep -v "^#" >"$out/metrics.txt"
cat "$out/metrics.txt" >>"$log"
kill -INT "$server"
wait "$server"
echo "### server exit $?" >>"$log"
server=
# Host and device microseconds per step from the sums (the metric names carry the part).
python3 - "$out/metrics.txt" <<'EOF' | tee -a "$log"
import re, sys
text = open(sys.argv[1]).read()
def value(name, part=""):
    m = re.search(name + r"\{[^}]*" + part + r"[^}]*\}\s+([0-9.eE+-]+)", text)
    return float(m.group(1)) if m else None
steps = value("tperf_engine_steps_total")
host = value("tperf_engine_step_seconds_sum", 'part="host"')
device = value("tperf_engine_step_seconds_sum", 'part="device"')
if steps and host is not None and device is not None:
    print(f"per step over {steps:.0f} steps: host {host / steps * 1e6:.0f} us, device part {device / steps * 1e6:.0f} us")
else:
    print("step metrics not found; see metrics.txt")
EOF
echo "### bench decode" >>"$log"
timeout 60 "$tperf" bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda \
    --batch 1,128 --steps 50 >>"$log" 2>&1
echo "### exit $?" >>"$log"
