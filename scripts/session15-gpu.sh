#!/usr/bin/env bash
# Session 15's changes, not yet run on a GPU, checked and measured on one H200 (about 6 minutes):
# 1. column_sum (the bias gradient, kernels/matmul.cu): ops_basic (matmul backward against the
#    CPU over 15 shapes and 3 dtypes), under compute-sanitizer memcheck too; conformance; then
#    gpt2-124m's training step under `tperf profile` (its biased backward products took 77–89
#    µs before, column_sum 50–64 of it).
# 2. cuBLASLt shape classes (blas.rs, `algo_rows`): the server at saturation and at a light
#    rate with TPERF_GEMM_EXACT_ALGO=1 (a heuristic query per new shape, as before) and without;
#    the `by kind` lines' issue time of steps with prefill is the figure to compare, then TTFT.
# 3. scripts/session14d-gpu.sh's lost part: continuous against static batching and fairness.
# Build the carry with scripts/carry.sh, then from the repo root:
#   timeout 580 bash scripts/session15-gpu.sh; results in /tmp/e (copy them under $OUT)
R=$PWD; T=$R/carry/tperf; O=/tmp/e; mkdir -p $O /tmp/unpacked
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
tar xJf carry/tests.tar.xz -C /tmp/unpacked
step tests-ops_basic.txt 90 /tmp/unpacked/tests/ops_basic --test-threads 2
step sanitizer.txt 120 compute-sanitizer --tool memcheck /tmp/unpacked/tests/ops_basic matmul --test-threads 1
step conformance.txt 60 $T conformance --device cuda
echo "tests done at $((SECONDS-S0))s" >> $O/machine.txt
step profile-train.txt 60 $T profile gpt2-124m --batch 8 --seq 128 --dtype bf16 --device cuda
port=8000
serve_run() { # tag, rate, then env for the server
  local tag=$1 rate=$2; shift 2; local log=$O/serve-$tag.txt
  env "$@" $T serve gpt2-124m --device cuda --dtype bf16 --port $port >>$log 2>&1 &
  local server=$!
  for _ in $(seq 1 120); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" >/dev/null 2>&1 && break; sleep 0.5; done
  timeout 100 $T bench serve --url http://127.0.0.1:$port --num-prompts 2048 --random-input-len 128 --random-output-len 128 \
    --request-rate $rate --max-concurrency 512 --model-config gpt2-124m --hw h200 --dtype bf16 --omit-requests \
    --json $O/serve-$tag.json >>$log 2>&1
  echo "### exit $?" >>$log
  kill -INT $server; wait $server; echo "### server exit $?" >>$log
}
serve_run classes-inf inf TPERF_GEMM_EXACT_ALGO=0
serve_run exact-inf inf TPERF_GEMM_EXACT_ALGO=1
serve_run classes-256 256 TPERF_GEMM_EXACT_ALGO=0
serve_run exact-256 256 TPERF_GEMM_EXACT_ALGO=1
echo "serve A/B done at $((SECONDS-S0))s" >> $O/machine.txt
timeout 200 bash scripts/serve-gpu.sh $O/serve $T
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
