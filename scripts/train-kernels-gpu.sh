#!/usr/bin/env bash
# The train step's memory-bound kernels (grad_norm.cu, adamw.cu, gated.cu, norms.cu's backward, rope.cu) on
# one H200: their tests and memcheck first, then the 2.7B and small train profiles and the bench.
# Run from the repo root with the stripped binaries in carry/ (carry/tperf, carry/tests/NAME):
#   timeout 570 bash scripts/train-kernels-gpu.sh; tar czf $OUT/results.tgz -C /tmp f
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests; O=/tmp/f; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; uname -r; } > $O/machine.txt 2>&1
step tests-ops_norms.txt 200 $X/ops_norms --test-threads 2 &
step tests-ops_basic.txt 200 $X/ops_basic --test-threads 2 elementwise rope &
wait
echo "tests done at $((SECONDS-S0))s" >> $O/machine.txt
step profile-2.7B.txt 60 $T profile 2.7B --batch 4 --seq 256 --dtype bf16 --device cuda --steps 2 --warmup 1
step profile-small.txt 40 $T profile small --batch 4 --seq 256 --dtype bf16 --device cuda
step train.txt 150 $T bench --sizes small,2.7B --dtype bf16 --batch 4 --seq 256 --device cuda
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
for r in 2 8; do step sweep-rows-2.7B.txt 60 env TPERF_NORM_BWD_ROWS=$r $T profile 2.7B --batch 4 --seq 256 --dtype bf16 --device cuda --steps 2 --warmup 1; done
echo "sweep done at $((SECONDS-S0))s" >> $O/machine.txt
