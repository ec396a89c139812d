#!/usr/bin/env bash
# The warp-specialised flash backward's variants (ws_bwd in flash_wgmma.cu, picked by
# TPERF_FLASH_WGMMA_BWD) on one H200, in under 250 s:
#   wg   (unset) the default two-warpgroup backward, wg_bwd;
#   ws   the measured warp-specialised one (3 stages at D = 64, 2 at 128);
#   ws4  ws with the lean per-tile loop (wsb_pds: masks only in the tiles that need them) and
#        every consumer thread releasing a stage (empty counts 256);
#   ws5  ws4 with each tile's dV, dK deferred under the next tile's Pᵀ, dSᵀ (D = 64; at 128 it
#        runs ws4's kernels).
# Correctness first, in parallel: ops_attention with each; memcheck of the ring test with ws4
# and ws5; racecheck of the ring test with ws, ws4 and ws5 (ws reported 12 hazards on the lse/Dᵢ
# ring, a write-after-read racecheck cannot see ordered by the empty mbarrier; ws4 and ws5 show
# whether per-thread arrivals make it visible). Then, alone on the GPU, the attention sweep with
# each, and ncu of ws4 and ws5 at D = 64 while the budget allows. Run from the repo root with
# the stripped binaries in carry/ (carry/tperf, carry/tests/ops_attention; carry/tests/compile
# optional, for the device NVRTC's register counts):
#   bash scripts/wsbwd-gpu.sh OUTDIR
O=${1:?usage: scripts/wsbwd-gpu.sh OUTDIR}; mkdir -p "$O"
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests
export PATH=$PATH:/usr/local/cuda/bin
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>"$O/$f"; local t0=$SECONDS; timeout "$l" "$@" >>"$O/$f" 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>"$O/$f"; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; git -C "$R" log --oneline -1; } >"$O/machine.txt" 2>&1
RING=flash_attention_backward_in_16_bits_over_many_query_tiles
# Correctness, in parallel (timings come after, alone on the GPU). The sanitizers run one test
# thread; the plain test runs two.
( step tests-default.txt 130 "$X/ops_attention" --test-threads 2 ) &
for v in ws ws4 ws5; do
  ( step "tests-$v.txt" 130 env TPERF_FLASH_WGMMA_BWD=$v "$X/ops_attention" --test-threads 2 ) &
done
for v in ws4 ws5; do
  ( step "memcheck-$v.txt" 130 env TPERF_FLASH_WGMMA_BWD=$v compute-sanitizer --tool memcheck --print-limit 20 "$X/ops_attention" --test-threads 1 $RING ) &
done
for v in ws ws4 ws5; do
  ( step "racecheck-$v.txt" 130 env TPERF_FLASH_WGMMA_BWD=$v compute-sanitizer --tool racecheck --print-limit 20 "$X/ops_attention" --test-threads 1 $RING ) &
done
if [ -x "$X/compile" ]; then
  ( step compile.txt 90 env TPERF_COMPILE_ONLY=flash_wgmma TPERF_DUMP_CUBIN="$O/cubins" "$X/compile" --nocapture
    CO=$(command -v cuobjdump || ls /usr/local/cuda*/bin/cuobjdump 2>/dev/null | head -1)
    [ -n "$CO" ] && "$CO" -res-usage "$O/cubins/flash_wgmma-sm_90a.cubin" >"$O/res-usage.txt" 2>&1 ) &
fi
wait
echo "correctness done at $((SECONDS-S0))s" >>"$O/machine.txt"
A="$T attention --device cuda --batch 1 --heads 16 --dims 64,128 --seqs 4096,16384 --kernels flash --dtype bf16"
# A variant whose tests did not pass (or hung) is not timed: a hang would spend the budget.
passed() { grep -q "^### exit 0 " "$O/tests-$1.txt"; }
step attention-default.txt 30 $A
for v in ws ws4 ws5; do passed $v && step "attention-$v.txt" 30 env TPERF_FLASH_WGMMA_BWD=$v $A; done
# Where ws4's and ws5's time goes (D = 64, T = 16384), while the budget allows; then the stall
# reasons (a metric list this ncu may not know; its failure costs nothing else).
N="--launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats --section ComputeWorkloadAnalysis --section InstructionStats"
A64="$T attention --device cuda --batch 1 --heads 16 --dims 64 --seqs 16384 --kernels flash --dtype bf16"
for v in ws4 ws5; do
  passed $v && [ $((SECONDS-S0)) -lt 205 ] && command -v ncu >/dev/null && step "ncu-$v.txt" 40 env TPERF_FLASH_WGMMA_BWD=$v ncu --kernel-name "regex:flash_wgmma_${v}_bwd" $N $A64
done
M=$(printf 'smsp__warp_issue_stalled_%s_per_warp_active.pct,' long_scoreboard short_scoreboard barrier membar wait math_pipe_throttle mio_throttle lg_throttle sleeping dispatch_stall no_instruction selected not_selected branch_resolving misc)
passed ws4 && [ $((SECONDS-S0)) -lt 225 ] && command -v ncu >/dev/null && step ncu-stalls-ws4.txt 25 env TPERF_FLASH_WGMMA_BWD=ws4 ncu --kernel-name regex:flash_wgmma_ws4_bwd --launch-count 1 --metrics "${M%,}" $A64
echo "end at $((SECONDS-S0))s" >>"$O/machine.txt"
grep -h "^test result\|panicked\|FAILED\|ERROR SUMMARY\|RACECHECK SUMMARY\|### exit" "$O"/tests-*.txt "$O"/memcheck-*.txt "$O"/racecheck-*.txt >"$O/summary.txt" 2>/dev/null
grep -H "^  flash " "$O"/attention-*.txt >>"$O/summary.txt" 2>/dev/null
