#!/usr/bin/env bash
# Session 13's third call on one H200 (about 2 minutes): why the fused pre-norm's kernel
# (norm_gemv_rows_split) is slower than the norm kernel and gemv it replaces. gpt2-124m decode B1
# and B2, back to back and greedy, with its grid capped at 8, 4, 2 and 1 blocks an SM
# (TPERF_NORM_GEMV_BLOCKS_PER_SM) beside gemv's grid and session 12's main, and LayerNorm's
# statistics in one reduction (TPERF_NORM_ONE_PASS=1); then Nsight Compute
# on one fused and one plain gemv launch (eager: TPERF_CUDA_GRAPHS=0). Run from the repo root
# with carry/tperf and carry/tperf-base.xz:
#   timeout 240 bash scripts/session13c-gpu.sh; results in /tmp/c
R=$PWD; T=$R/carry/tperf; U=/tmp/unpacked; B=$U/tperf-base; O=/tmp/c; mkdir -p $O $U
xz -dc carry/tperf-base.xz > $B && chmod +x $B
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
step warm.txt 60 $T bench gpt2-124m --phase decode --batch 1 --seq 16 --device cuda --steps 1 --warmup 1
step warm.txt 60 $B bench gpt2-124m --phase decode --batch 1 --seq 16 --device cuda --steps 1 --warmup 1
D="bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,2 --steps 200 --temperature 0 --back-to-back"
for i in 1 2; do
  step decode-base.txt 30 $B $D
  step decode-grid.txt 30 $T $D
  for c in 8 4 2 1; do step decode-cap$c.txt 30 env TPERF_NORM_GEMV_BLOCKS_PER_SM=$c $T $D; done
  step decode-onepass.txt 30 env TPERF_NORM_ONE_PASS=1 $T $D
  step decode-onepass-cap4.txt 30 env TPERF_NORM_ONE_PASS=1 TPERF_NORM_GEMV_BLOCKS_PER_SM=4 $T $D
done
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
N="bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1 --steps 2 --warmup 1 --temperature 0"
step ncu-fused.txt 60 env TPERF_CUDA_GRAPHS=0 ncu --kernel-name regex:norm_gemv_rows_split --launch-skip 24 --launch-count 2 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis $T $N
step ncu-plain.txt 60 env TPERF_CUDA_GRAPHS=0 ncu --kernel-name regex:"^(gemv_rows_split|norm_forward_vec)$" --launch-skip 48 --launch-count 3 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats $B $N
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
