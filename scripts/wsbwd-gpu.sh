#!/usr/bin/env bash
# The warp-specialised flash backward (ws_bwd in flash_wgmma.cu, TPERF_FLASH_WGMMA_BWD=ws) on
# one H200, in under 250 s: the attention tests with it and without it (the default, wg_bwd),
# memcheck (and racecheck, informational) on the ring-wrapping backward test with it, then the attention sweep with and
# without it (and, if time is left, the other ring depth and an ncu profile). Run from the repo root with the
# stripped binaries in carry/ (carry/tperf, carry/tests/ops_attention; carry/tests/compile
# optional, for the device NVRTC's register counts):
#   bash scripts/wsbwd-gpu.sh OUTDIR
O=${1:?usage: scripts/wsbwd-gpu.sh OUTDIR}; mkdir -p "$O"
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests
export PATH=$PATH:/usr/local/cuda/bin
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>"$O/$f"; local t0=$SECONDS; timeout "$l" "$@" >>"$O/$f" 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>"$O/$f"; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; git -C "$R" log --oneline -1; } >"$O/machine.txt" 2>&1
# Correctness, in parallel (timings come after, alone on the GPU).
( step tests-ws.txt 120 env TPERF_FLASH_WGMMA_BWD=ws "$X/ops_attention" --test-threads 2 ) &
( step tests-default.txt 120 "$X/ops_attention" --test-threads 2 ) &
( step memcheck-ws.txt 120 env TPERF_FLASH_WGMMA_BWD=ws compute-sanitizer --tool memcheck --print-limit 20 "$X/ops_attention" --test-threads 1 flash_attention_backward_in_16_bits_over_many_query_tiles ) &
# Informational: racecheck on the same test (the ring's hand-offs and the dSᵀ double buffer);
# it may not finish in its limit.
( step racecheck-ws.txt 110 env TPERF_FLASH_WGMMA_BWD=ws compute-sanitizer --tool racecheck --print-limit 20 "$X/ops_attention" --test-threads 1 flash_attention_backward_in_16_bits_over_many_query_tiles ) &
if [ -x "$X/compile" ]; then
  ( step compile.txt 90 env TPERF_COMPILE_ONLY=flash_wgmma TPERF_DUMP_CUBIN="$O/cubins" "$X/compile" --nocapture
    CO=$(command -v cuobjdump || ls /usr/local/cuda*/bin/cuobjdump 2>/dev/null | head -1)
    [ -n "$CO" ] && "$CO" -res-usage "$O/cubins/flash_wgmma-sm_90a.cubin" >"$O/res-usage.txt" 2>&1 ) &
fi
wait
echo "correctness done at $((SECONDS-S0))s" >>"$O/machine.txt"
A="$T attention --device cuda --batch 1 --heads 16 --dims 64,128 --seqs 4096,16384 --kernels flash --dtype bf16"
step attention-ws.txt 40 env TPERF_FLASH_WGMMA_BWD=ws $A
step attention-default.txt 40 $A
# The other depths (2 stages at D = 64, 3 at 128), only while the budget allows.
[ $((SECONDS-S0)) -lt 195 ] && step attention-ws2.txt 25 env TPERF_FLASH_WGMMA_BWD=ws2 $T attention --device cuda --batch 1 --heads 16 --dims 64 --seqs 16384 --kernels flash --dtype bf16
[ $((SECONDS-S0)) -lt 220 ] && step attention-ws3.txt 25 env TPERF_FLASH_WGMMA_BWD=ws3 $T attention --device cuda --batch 1 --heads 16 --dims 128 --seqs 16384 --kernels flash --dtype bf16
# Where the warp-specialised backward's time goes (D = 64, T = 16384), if the budget allows.
[ $((SECONDS-S0)) -lt 190 ] && command -v ncu >/dev/null && step ncu-ws.txt 50 env TPERF_FLASH_WGMMA_BWD=ws ncu --kernel-name regex:flash_wgmma_ws_bwd --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats $T attention --device cuda --batch 1 --heads 16 --dims 64 --seqs 16384 --kernels flash --dtype bf16
echo "end at $((SECONDS-S0))s" >>"$O/machine.txt"
grep -h "^test result\|panicked\|FAILED\|ERROR SUMMARY\|### exit" "$O"/tests-*.txt "$O"/memcheck-ws.txt "$O"/racecheck-ws.txt >"$O/summary.txt" 2>/dev/null
