#!/usr/bin/env bash
# Session 14's third call on one H200 (about 4 minutes): paged attention's prefill rows in
# query runs (ops/paged_attention.rs), checked and measured.
# 1. The CUDA tests that reach it (ops_paged, ragged, graphs, ops_attention), ops_paged under
#    compute-sanitizer, conformance, and gpt2-124m decode (the contiguous path takes the kernel too).
# 2. tperf serve at saturation in steady state (4096 prompts of 128 in / 128 out, ≤ 512 in
#    flight), TPERF_PAGED_QUERY_TILE = 1 (one row a unit, the old path), 8 (the default for
#    MHA), 4, 2; the step split by kind and into issue and wait from /metrics.
# Run from the repo root with carry/tperf and carry/tests.tar.xz:
#   timeout 500 bash scripts/session14c-gpu.sh; results in /tmp/c
R=$PWD; T=$R/carry/tperf; O=/tmp/c; mkdir -p $O /tmp/unpacked
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
tar xJf carry/tests.tar.xz -C /tmp/unpacked
for t in ops_paged ragged graphs ops_attention; do step tests-$t.txt 120 /tmp/unpacked/tests/$t --test-threads 2; done
step sanitizer.txt 200 compute-sanitizer --tool memcheck --print-limit 20 /tmp/unpacked/tests/ops_paged --test-threads 1
step conformance.txt 120 $T conformance --device cuda
step decode.txt 60 $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128 --steps 100 --temperature 0 --back-to-back
echo "tests done at $((SECONDS-S0))s" >> $O/machine.txt

port=8000
serve_run() { # tag, env assignments..., then server flags after --
  local tag=$1; shift; local log=$O/serve-$tag.txt
  env "$@" $T serve gpt2-124m --device cuda --dtype bf16 --port $port >>$log 2>&1 &
  local server=$!
  for _ in $(seq 1 60); do kill -0 $server 2>/dev/null || break; python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" >/dev/null 2>&1 && break; sleep 0.5; done
  echo "### $* bench serve 4096 prompts 128/128 inf max-concurrency 512" >>$log
  timeout 100 $T bench serve --url http://127.0.0.1:$port --num-prompts 4096 --random-input-len 128 --random-output-len 128 \
    --request-rate inf --max-concurrency 512 --model-config gpt2-124m --hw h200 --dtype bf16 --omit-requests \
    --json $O/serve-$tag.json >>$log 2>&1
  echo "### exit $?" >>$log
  python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/metrics').read().decode())" 2>&1 | grep -Ev "^#|_bucket" >>$log
  kill -INT $server; wait $server; echo "### server exit $?" >>$log
}
for tile in 1 8 4 2; do serve_run tile$tile TPERF_PAGED_QUERY_TILE=$tile; done
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
