#!/usr/bin/env bash
# Session 14's first call on one H200 (about 6 minutes): the data the offline work needs.
# 1. An H200 calibration with its samples kept (scripts/calibrate-gpu.sh) for `--refit`.
# 2. ncu's raw CSV (TPERF_NCU points at a wrapper that tees ncu's stdout) of the report preset's
#    fwd_bwd at batch 16 and 256 in fp32 and its forward and fwd_bwd at batch 16 in bf16, so the
#    matrix kernels' tile padding can be modelled and tested offline against real counts.
# 3. Offline decode at the batch the server runs at saturation (256) beside B 1, 32, 128,
#    context 384 and 192, and the server at saturation in steady state (4096 prompts of 128 in /
#    128 out, at most 512 in flight): issue 17's "≥ 85% of the offline decode throughput".
# Run from the repo root with carry/tperf:  timeout 560 bash scripts/session14a-gpu.sh
R=$PWD; T=$R/carry/tperf; O=/tmp/a; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; which ncu; ncu --version | tail -1; } > $O/machine.txt 2>&1

timeout 150 bash scripts/calibrate-gpu.sh; cp -r /tmp/cal $O/cal
echo "calibrate done at $((SECONDS-S0))s" >> $O/machine.txt

NCU=$(command -v ncu)
cat > /tmp/ncu-tee <<W
#!/usr/bin/env bash
"$NCU" "\$@" | tee "\$NCU_RAW"
W
chmod +x /tmp/ncu-tee
ctr() { local tag=$1; shift; NCU_RAW=$O/ncu-$tag.csv TPERF_NCU=/tmp/ncu-tee step profile-$tag.txt 90 $T profile "$@" --counters --all-layers; }
ctr report-fwdbwd-b16-f32 report --phase fwd_bwd --batch 16 --seq 35
ctr report-fwdbwd-b256-f32 report --phase fwd_bwd --batch 256 --seq 35
ctr report-fwd-b16-bf16 report --phase forward --batch 16 --seq 35 --dtype bf16
ctr report-fwdbwd-b16-bf16 report --phase fwd_bwd --batch 16 --seq 35 --dtype bf16
ctr small-fwdbwd-b4-bf16 small --phase fwd_bwd --batch 4 --seq 256 --dtype bf16
echo "counters done at $((SECONDS-S0))s" >> $O/machine.txt

step decode.txt 60 $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128,256 --steps 100 --temperature 0 --back-to-back
step decode.txt 40 $T bench gpt2-124m --phase decode --seq 192 --dtype bf16 --device cuda --batch 128,256 --steps 100 --temperature 0 --back-to-back
step decode.txt 40 $T bench gpt2-124m --phase decode --seq 192 --dtype bf16 --device cuda --batch 256 --steps 100 --temperature 1 --back-to-back

port=8000; log=$O/serve.txt
$T serve gpt2-124m --device cuda --dtype bf16 --port $port >>$log 2>&1 &
server=$!
for _ in $(seq 1 120); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" >/dev/null 2>&1 && break; sleep 0.5; done
for mc in 512 256; do
  echo "### bench serve 4096 prompts 128/128 inf max-concurrency $mc" >>$log
  timeout 100 $T bench serve --url http://127.0.0.1:$port --num-prompts 4096 --random-input-len 128 --random-output-len 128 \
    --request-rate inf --max-concurrency $mc --model-config gpt2-124m --hw h200 --dtype bf16 --omit-requests \
    --json $O/serve-mc$mc.json --calibration $O/cal/h200-calibration.json >>$log 2>&1
  echo "### exit $?" >>$log
done
python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/metrics').read().decode())" 2>&1 | grep -Ev "^#|_bucket" >>$log
kill -INT $server; wait $server; echo "### server exit $?" >>$log
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
