#!/bin/bash
# The Hopper flash forward (flash_wgmma.cu): its build on the H200's NVRTC, the attention tests,
# the attention sweep with each forward (TPERF_FLASH_WGMMA=0 is flash_mma.cu's), and ncu of the
# wgmma kernel. Writes /tmp/f and $OUT/results.tgz.
F=/tmp/f; mkdir -p $F; cd "$(dirname "$0")/.."
run() { local name=$1 lim=$2; shift 2; echo "### $* (limit ${lim}s)" > $F/$name.txt; local s=$(date +%s); timeout $lim "$@" >> $F/$name.txt 2>&1; echo "### exit $? after $(( $(date +%s) - s ))s" >> $F/$name.txt; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $F/machine.txt 2>&1
for s in flash_wgmma flash_mma; do TPERF_COMPILE_ONLY=$s TPERF_DUMP_CUBIN=$F/cubins run compile-$s 60 ./carry/tests/compile --nocapture; done
CO=$(command -v cuobjdump || ls /usr/local/cuda*/bin/cuobjdump 2>/dev/null | head -1)
[ -n "$CO" ] && $CO -res-usage $F/cubins/flash_wgmma-sm_90a.cubin $F/cubins/flash_mma-sm_90.cubin > $F/res-usage.txt 2>&1
TPERF_FLASH_WGMMA=1 run tests-attention 200 ./carry/tests/ops_attention --test-threads 2
A="./carry/tperf attention --device cuda --batch 1 --heads 16 --dims 64,80,128 --seqs 4096,16384 --kernels flash --dtype bf16"
S="./carry/tperf attention --device cuda --batch 4 --heads 12 --dims 64 --seqs 256,1024 --kernels flash --dtype bf16"
for v in wgmma fwd mma; do
  case $v in mma) export TPERF_FLASH_WGMMA=0;; fwd) export TPERF_FLASH_WGMMA=fwd;; *) export TPERF_FLASH_WGMMA=1;; esac
  run attn-$v 60 $A; run attn-$v-small 30 $S
done
unset TPERF_FLASH_WGMMA
run ncu 90 ncu --kernel-name regex:flash_wgmma_bwd --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section InstructionStats ./carry/tperf attention --device cuda --batch 1 --heads 16 --dims 64 --seqs 16384 --kernels flash --dtype bf16
tar czf $OUT/results.tgz -C /tmp f
