#!/usr/bin/env bash
# The vectorised norm backward's rows per block (TPERF_NORM_BWD_ROWS) swept on the small and
# 2.7B train steps' profiles, with the norm tests, memcheck and conformance first, then the seed
# train steps and `bench --gpus 1 --scaling weak` (the scaling bench's CUDA path at N = 1).
# Run from the repo root with carry/ as verify-gpu.sh wants:
#   timeout 500 bash scripts/norms-sweep-gpu.sh; tar czf $OUT/results.tgz -C /tmp f
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests; O=/tmp/f; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
mkdir -p /work && ln -sfn "$R" /work/main 2>/dev/null
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; uname -r; } > $O/machine.txt 2>&1
step warm.txt 90 $T bench small --phase forward --batch 1 --seq 16 --device cuda --steps 1 --warmup 0
for t in compile ops_norms; do ( step tests-$t.txt 150 $X/$t --test-threads 2 ) & done
( step conformance.txt 90 $T conformance --device cuda ) &
( step sanitizer.txt 90 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_norms --test-threads 1 norm ) &
wait
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
for r in 1 2 4 8; do step sweep-small.txt 30 env TPERF_NORM_BWD_ROWS=$r $T profile small --batch 4 --seq 256 --dtype bf16 --device cuda; done
for r in 1 2 4; do step sweep-2.7B.txt 60 env TPERF_NORM_BWD_ROWS=$r $T profile 2.7B --batch 4 --seq 256 --dtype bf16 --device cuda --steps 2 --warmup 1; done
echo "sweep done at $((SECONDS-S0))s" >> $O/machine.txt
step scaling.txt 60 $T bench small --gpus 1 --scaling weak --batch 4 --seq 256 --dtype bf16 --steps 5 --json $O/scaling-gpus1.json
step train.txt 150 $T bench --sizes small,2.7B --dtype bf16 --batch 4 --seq 256 --device cuda
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
