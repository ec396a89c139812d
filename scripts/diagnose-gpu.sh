#!/usr/bin/env bash
# Correctness on the H200 plus the profiles that say where the time goes, in one device call
# (about 5 minutes): the CUDA test binaries, conformance plain and poisoned, then
# `tperf profile` of the 2.7B and small train steps and the gpt2-124m decode steps at B1/B128,
# Nsight Compute's view of the flash kernels, and the host memory of loading a 1.5B bf16
# Hugging Face folder onto the GPU. Run from the repo root with carry/ as verify-gpu.sh wants:
#   timeout 500 bash scripts/diagnose-gpu.sh; tar czf $OUT/results.tgz -C /tmp f
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests; O=/tmp/f; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
mkdir -p /work && ln -sfn "$R" /work/main 2>/dev/null
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; uname -r; } > $O/machine.txt 2>&1
step warm.txt 60 $T bench small --phase forward --batch 1 --seq 16 --device cuda --steps 1 --warmup 0
# The 1.5B folder is made on the CPU while the GPU tests run (transformers lives here).
( step hf15b.txt 120 python3 bench/pytorch/hf_random_folder.py /tmp/hf15b ) &
for t in compile nccl ops_sampling ops_attention ops_norms ops_basic ops_paged ragged hf pytorch; do
  ( step tests-$t.txt 150 $X/$t --test-threads 2 ) &
done
( for i in 1 2 3; do step tests-graphs.txt 40 $X/graphs --test-threads 1; done ) &
( step conformance.txt 90 $T conformance --device cuda; step conformance.txt 90 env TPERF_POISON_ALLOC=1 $T conformance --device cuda ) &
wait
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
step profile-2.7B.txt 120 $T profile 2.7B --batch 4 --seq 256 --dtype bf16 --device cuda --steps 2 --warmup 1
step profile-small.txt 30 $T profile small --batch 4 --seq 256 --dtype bf16 --device cuda
step profile-decode.txt 30 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1
step profile-decode.txt 30 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 128
step attention.txt 40 $T attention --device cuda --batch 1 --heads 16 --dims 64,128 --seqs 4096,16384 --kernels flash --dtype bf16
# Nsight Compute on the flash kernels (T 4096, d64 and d128): stall reasons, issue rate, spills.
step ncu-flash.txt 60 ncu --kernel-name regex:flash_mma_.wd --launch-count 2 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis $T attention --device cuda --batch 1 --heads 16 --dims 64 --seqs 4096 --kernels flash --dtype bf16
step ncu-flash.txt 60 ncu --kernel-name regex:flash_mma_.wd --launch-count 2 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis $T attention --device cuda --batch 1 --heads 16 --dims 128 --seqs 4096 --kernels flash --dtype bf16
echo "B done at $((SECONDS-S0))s" >> $O/machine.txt
[ -f /tmp/hf15b/config.json ] && step hf15b-load.txt 120 /usr/bin/time -v $T generate /tmp/hf15b --prompt "The quick" --max-new 2 --dtype bf16 --device cuda --temperature 0
du -sb /tmp/hf15b >> $O/hf15b-load.txt 2>&1
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
