#!/usr/bin/env bash
# Session 16's first GPU call (about 9 minutes on one H200; the order is the priority): the untested changes of sessions 15
# and 16 checked, then measured.
# 1. Correctness: ops_paged (the tensor-core paged prefill, flash_mma.cu's paged_mma_fwd, against
#    the CPU), ragged, graphs, ops_attention (the dense forward now shares its tile body),
#    ops_basic (column_sum, the bias gradient), compute-sanitizer memcheck of the new paged test
#    and of ops_basic's matmul tests; conformance.
# 2. gpt2-124m's training step under `tperf profile` (column_sum was 50–64 µs a biased product).
# 3. Offline decode at B128 and B256, context 192 (the serving target's reference); decode B1
#    and B32 at context 384 under `tperf profile` (issue 11's two decode rows still short).
# 4. The server at saturation (2048 prompts of 128 in / 128 out, ≤ 512 in flight) with every
#    change on (TPERF_PAGED_MMA=1: the tensor-core prefill is opt-in until its tests pass on a
#    GPU), then each one off: TPERF_PAGED_MMA=0 (prefill chunks through flash-decoding's runs), TPERF_EVENTS_INLINE=1 (sinks called from the engine's step), TPERF_GEMM_EXACT_ALGO=1
#    (a cuBLASLt heuristic query per new shape); --decode-steps 4 and 8 (several decode steps an
#    iteration, fed on the device); and all on at 256 req/s. tests/cuda (the engine's GPU test)
#    checks that several decode steps an iteration give one step's tokens.
# Build the carry with scripts/carry.sh, then from the repo root:
#   timeout 580 bash scripts/session16-gpu.sh; results in /tmp/e (copy them under $OUT)
# Results go straight under $OUT (when set), so that a run cut off at its limit keeps them.
R=$PWD; T=$R/carry/tperf; O=${OUT:-/tmp}/e; X=/tmp/unpacked/tests; mkdir -p $O /tmp/unpacked
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; cat $R/carry/REV 2>/dev/null; } > $O/machine.txt 2>&1
tar xJf carry/tests.tar.xz -C /tmp/unpacked
step tests-ops_paged.txt 90 $X/ops_paged --test-threads 2
step tests-ragged.txt 60 $X/ragged --test-threads 1
step tests-graphs.txt 60 $X/graphs --test-threads 1
step tests-ops_basic.txt 90 $X/ops_basic --test-threads 2
step tests-engine-cuda.txt 60 $X/cuda --test-threads 1
echo "tests done at $((SECONDS-S0))s" >> $O/machine.txt
step sanitizer.txt 90 compute-sanitizer --tool memcheck $X/ops_paged tensor_cores --test-threads 1
port=8000
serve_run() { # tag, rate, VAR=value settings of the server's environment, then server flags
  local tag=$1 rate=$2; shift 2; local log=$O/serve-$tag.txt vars=()
  while [[ ${1:-} == *=* ]]; do vars+=("$1"); shift; done
  env "${vars[@]}" $T serve gpt2-124m --device cuda --dtype bf16 --port $port "$@" >>$log 2>&1 &
  local server=$!
  for _ in $(seq 1 120); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" >/dev/null 2>&1 && break; sleep 0.5; done
  timeout 60 $T bench serve --url http://127.0.0.1:$port --num-prompts 2048 --random-input-len 128 --random-output-len 128 \
    --request-rate $rate --max-concurrency 512 --model-config gpt2-124m --hw h200 --dtype bf16 --omit-requests \
    --json $O/serve-$tag.json >>$log 2>&1
  echo "### exit $?" >>$log
  kill -INT $server; wait $server; echo "### server exit $?" >>$log
}
serve_run all-inf inf TPERF_PAGED_MMA=1
serve_run no-paged-mma-inf inf TPERF_PAGED_MMA=0
serve_run events-inline-inf inf TPERF_EVENTS_INLINE=1 TPERF_PAGED_MMA=1
serve_run gemm-exact-inf inf TPERF_GEMM_EXACT_ALGO=1 TPERF_PAGED_MMA=1
serve_run steps4-inf inf TPERF_PAGED_MMA=1 --decode-steps 4
serve_run steps8-inf inf TPERF_PAGED_MMA=1 --decode-steps 8
serve_run all-256 256 TPERF_PAGED_MMA=1
echo "serving done at $((SECONDS-S0))s" >> $O/machine.txt
step decode.txt 40 $T bench gpt2-124m --phase decode --seq 192 --dtype bf16 --device cuda --batch 128,256 --steps 100 --temperature 0 --back-to-back
step profile-train.txt 60 $T profile gpt2-124m --batch 8 --seq 128 --dtype bf16 --device cuda
# Past 7 minutes the rest waits for another call (session16b-gpu.sh needs the device time).
[ $((SECONDS-S0)) -gt 420 ] && { echo "stopped at $((SECONDS-S0))s" >> $O/machine.txt; exit 0; }
step sanitizer.txt 120 compute-sanitizer --tool memcheck $X/ops_basic matmul --test-threads 1
step tests-ops_attention.txt 120 $X/ops_attention --test-threads 2
step profile-decode.txt 60 $T profile gpt2-124m --phase decode --batch 1 --seq 384 --dtype bf16 --device cuda
step profile-decode.txt 60 $T profile gpt2-124m --phase decode --batch 32 --seq 384 --dtype bf16 --device cuda
step conformance.txt 60 $T conformance --device cuda
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
grep -h "^test result\|panicked\|FAILED\|ERROR SUMMARY\|### exit" $O/tests-*.txt $O/sanitizer.txt > $O/summary.txt 2>/dev/null
grep -h "output token throughput\|Output token\|by kind\|engine step" $O/serve-*.txt >> $O/summary.txt 2>/dev/null
