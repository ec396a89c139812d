#!/usr/bin/env bash
# Decode-step kernels on one H200 (about 4 minutes): the sampling tests and memcheck, the decode
# bench at B1/32/128 beside the default (greedy) sampling cost, decode profiles, ncu of the
# flash-decoding kernels at B1 and B128, and the training bench with its 2.7B profile.
# Run from the repo root with carry/tperf and carry/tests/NAME:
#   bash scripts/decode-gpu.sh OUT
O=${1:?output folder}; mkdir -p "$O"; T=$PWD/carry/tperf; X=$PWD/carry/tests
export PATH=$PATH:/usr/local/cuda/bin
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
step warm.txt 60 $T bench small --phase forward --batch 1 --seq 16 --device cuda --steps 1 --warmup 0
( step tests-sampling.txt 90 $X/ops_sampling --test-threads 2
  step sanitizer-sampling.txt 90 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_sampling --test-threads 1 ) &
( step tests-basic.txt 120 $X/ops_basic --test-threads 2 ) &
wait
step decode.txt 30 $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128
for b in 1 128; do step profile-decode-b$b.txt 20 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch $b; done
for b in 1 128; do
  step ncu-decode-b$b.txt 60 ncu --kernel-name regex:decode_split --launch-count 1 --launch-skip 12 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch $b --no-graphs --warmup 1 --steps 1
done
step ncu-sample-b1.txt 60 ncu --kernel-name sample_rows --launch-count 1 --launch-skip 1 --section SpeedOfLight --section LaunchStats --section WarpStateStats $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1 --no-graphs --warmup 1 --steps 1
step train.txt 150 $T bench --sizes small,2.7B --dtype bf16 --batch 4 --seq 256 --device cuda
step profile-2.7B.txt 50 $T profile 2.7B --batch 4 --seq 256 --dtype bf16 --device cuda --steps 2 --warmup 1
echo "end after ${SECONDS}s" >> $O/machine.txt
