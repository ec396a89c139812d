#!/usr/bin/env bash
# Session 14's second call on one H200 (about 6 minutes): where the serving step's time goes.
# 1. Warm the kernel cache (a decode bench), so the calibration below measures, not compiles
#    (the first call's calibration spent its 45 s limit compiling and fitted one workload).
# 2. tperf serve gpt2-124m bf16 at saturation in steady state (4096 prompts of 128 in / 128 out,
#    at most 512 in flight), with the step split by kind from /metrics (decode-only against
#    steps that carried prefill), at token budgets of 2048 (the default), 512 and 8192 a step.
# 3. The same server under Nsight Systems (when nsys is on the machine): the kernels of the
#    whole run, summed (nsys stats cuda_gpu_kern_sum, nvtx sums).
# 4. The H200 calibration with its samples (--time-limit 150), for --refit offline.
# Run from the repo root with carry/tperf:  timeout 580 bash scripts/session14b-gpu.sh
R=$PWD; T=$R/carry/tperf; O=/tmp/b; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; echo "nsys: $NSYS"; } > $O/machine.txt 2>&1

step decode.txt 60 $T bench gpt2-124m --phase decode --seq 192 --dtype bf16 --device cuda --batch 1,256 --steps 100 --temperature 0 --back-to-back
echo "warm at $((SECONDS-S0))s" >> $O/machine.txt

port=8000
serve_run() { # tag, then server flags
  local tag=$1; shift; local log=$O/serve-$tag.txt
  $T serve gpt2-124m --device cuda --dtype bf16 --port $port "$@" >>$log 2>&1 &
  local server=$!
  for _ in $(seq 1 120); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" >/dev/null 2>&1 && break; sleep 0.5; done
  echo "### bench serve 4096 prompts 128/128 inf max-concurrency 512" >>$log
  timeout 100 $T bench serve --url http://127.0.0.1:$port --num-prompts 4096 --random-input-len 128 --random-output-len 128 \
    --request-rate inf --max-concurrency 512 --model-config gpt2-124m --hw h200 --dtype bf16 --omit-requests \
    --json $O/serve-$tag.json >>$log 2>&1
  echo "### exit $?" >>$log
  python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/metrics').read().decode())" 2>&1 | grep -Ev "^#|_bucket" >>$log
  kill -INT $server; wait $server; echo "### server exit $?" >>$log
}
serve_run budget2048
serve_run budget512 --max-num-batched-tokens 512
serve_run budget8192 --max-num-batched-tokens 8192
echo "serve done at $((SECONDS-S0))s" >> $O/machine.txt

if [ -n "$NSYS" ]; then
  log=$O/serve-nsys.txt
  timeout 120 $NSYS profile -o $O/serve --force-overwrite true --trace cuda,nvtx --sample none --cpuctxsw none \
     $T serve gpt2-124m --device cuda --dtype bf16 --port $port >>$log 2>&1 &
  nsys_pid=$!
  for _ in $(seq 1 120); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" >/dev/null 2>&1 && break; sleep 0.5; done
  timeout 60 $T bench serve --url http://127.0.0.1:$port --num-prompts 2048 --random-input-len 128 --random-output-len 128 \
    --request-rate inf --max-concurrency 512 --omit-requests >>$log 2>&1
  pkill -INT -f "carry/tperf serve" ; wait $nsys_pid; echo "### nsys exit $?" >>$log
  timeout 90 $NSYS stats --report cuda_gpu_kern_sum --report cuda_api_sum --report nvtx_sum --format csv --output $O/nsys $O/serve.nsys-rep >>$log 2>&1
  rm -f $O/serve.sqlite $O/serve.nsys-rep
  ls -la $O >> $log
  echo "nsys done at $((SECONDS-S0))s" >> $O/machine.txt
fi

timeout 200 ./carry/tperf calibrate --device cuda --hw h200 --time-limit 150 --out $O/h200-calibration.json > $O/calibrate.txt 2>&1
echo "### exit $?" >> $O/calibrate.txt
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
