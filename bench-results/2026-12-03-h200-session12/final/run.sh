#!/usr/bin/env bash
# Session 12's third decode call on one H200 (about 6 minutes): session12b-gpu.sh again after
# its fixes (a launch with exactly 48 KB of dynamic shared memory beside static shared memory
# now raises the limit: gemv_rows_split at 8 rows of K = 3072 failed to launch, and with it the
# serving runs' 8-sequence steps; gemv's first W loads issued before X is staged; narrow_rows
# on a 2-D grid), with memcheck on the matmul test.
# Run from the repo root with carry/tperf and carry/tests/*:
#   timeout 590 bash scripts/session12c-gpu.sh; results in /tmp/u
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests; O=/tmp/u; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
step warm.txt 60 $T bench gpt2-124m --phase decode --batch 1,32 --seq 16 --device cuda --steps 1 --warmup 1
for t in ops_basic ops_sampling ops_paged ragged pytorch; do
  ( step tests-$t.txt 150 $X/$t --test-threads 2 ) &
done
( for i in 1 2; do step tests-graphs.txt 45 $X/graphs --test-threads 1; done ) &
( step conformance.txt 90 $T conformance --device cuda; step conformance.txt 90 env TPERF_POISON_ALLOC=1 $T conformance --device cuda ) &
( step sanitizer.txt 110 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_basic --test-threads 1 matmul ) &
wait
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
D="$T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,8,32,128 --steps 100 --temperature 0"
step decode-b2b.txt 40 $D --back-to-back
step decode-synced.txt 40 $D
step decode-gemv0-b2b.txt 40 env TPERF_GEMV=0 $D --back-to-back
for b in 1 128; do step profile-decode-b$b.txt 30 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch $b; done
step peers.txt 120 python3 bench/pytorch/bench_peers.py --skip-attention --batches 1,8,32,128 --steps 100 --out $O
step generate.txt 25 $T generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --prompt "The quick brown fox jumps over the lazy dog"
step train.txt 150 $T bench --sizes small --dtype bf16 --batch 4 --seq 256 --device cuda
step calibrate.txt 60 $T calibrate --device cuda --hw h200 --time-limit 45 --out $O/h200-calibration.json
echo "B done at $((SECONDS-S0))s" >> $O/machine.txt
mkdir -p $O/serve; [ -f $O/h200-calibration.json ] && export CALIBRATION=$O/h200-calibration.json; step serve-driver.txt 150 bash scripts/serve-gpu.sh $O/serve $T gpt2-124m
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
