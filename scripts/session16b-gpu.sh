#!/usr/bin/env bash
# Session 16's second GPU call (about 9 minutes on one H200):
# 1. The engine's tests on the GPU (tests/cuda: several decode steps an iteration give one
#    step's tokens; tests/engine), then the server at saturation (2048 prompts of 128 in / 128
#    out, ≤ 512 in flight) at --decode-steps 1, 4 and 8.
# 2. Calibration after column_sum's rewrite (issue 12's held-out error; refit offline).
# 3. scripts/serve-gpu.sh (continuous against static batching, the rate sweep, fairness under
#    VTC and FCFS) with that calibration beside the runs, at --decode-steps $STEPS (4 unless set).
# Build the carry with scripts/carry.sh, then from the repo root:
#   timeout 590 bash scripts/session16b-gpu.sh; results in /tmp/e (copy them under $OUT)
# Results go straight under $OUT (when set), so that a run cut off at its limit keeps them.
R=$PWD; T=$R/carry/tperf; O=${OUT:-/tmp}/e; X=/tmp/unpacked/tests; mkdir -p $O/cal /tmp/unpacked
export PATH=$PATH:/usr/local/cuda/bin
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; cat $R/carry/REV 2>/dev/null; } > $O/machine.txt 2>&1
tar xJf carry/tests.tar.xz -C /tmp/unpacked
step tests-engine-cuda.txt 60 $X/cuda --test-threads 1
step tests-engine.txt 60 $X/engine --test-threads 2
port=8000
serve_run() { # tag, then server flags
  local tag=$1; shift; local log=$O/serve-$tag.txt
  $T serve gpt2-124m --device cuda --dtype bf16 --port $port "$@" >>$log 2>&1 &
  local server=$!
  for _ in $(seq 1 120); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" >/dev/null 2>&1 && break; sleep 0.5; done
  timeout 60 $T bench serve --url http://127.0.0.1:$port --num-prompts 2048 --random-input-len 128 --random-output-len 128 \
    --request-rate inf --max-concurrency 512 --model-config gpt2-124m --hw h200 --dtype bf16 --omit-requests \
    --json $O/serve-$tag.json >>$log 2>&1
  echo "### exit $?" >>$log
  kill -INT $server; wait $server; echo "### server exit $?" >>$log
}
export TPERF_PAGED_MMA=1 # opt-in until call A's tests have passed
for k in 1 4 8; do serve_run steps$k-inf --decode-steps $k; done
echo "serve A/B done at $((SECONDS-S0))s" >> $O/machine.txt
# A warm-up so that the calibration's time goes on measuring, not on compiling kernels.
timeout 60 $T bench gpt2-124m --device cuda --dtype bf16 --batch 8 --seq 128 --steps 3 > $O/warmup.txt 2>&1
timeout 190 $T calibrate --device cuda --hw h200 --time-limit 150 --out $O/cal/h200-calibration.json > $O/cal/calibrate.txt 2>&1
echo "### exit $?" >> $O/cal/calibrate.txt
echo "calibration done at $((SECONDS-S0))s" >> $O/machine.txt
SERVE_ARGS="--decode-steps ${STEPS:-4}" CALIBRATION=$O/cal/h200-calibration.json timeout 200 bash scripts/serve-gpu.sh $O/serve $T
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
grep -h "^test result\|panicked\|FAILED\|### exit" $O/tests-*.txt > $O/summary.txt 2>/dev/null
grep -h "throughput\|by kind\|engine step\|with prefill" $O/serve-*.txt >> $O/summary.txt 2>/dev/null
