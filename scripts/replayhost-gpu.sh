#!/usr/bin/env bash
# The replay path's host cost (branch replayhost) on one H200, in under 200 s: the CUDA graph
# tests three times (replays that must match eager steps bit for bit, fallbacks, host time
# recorded), the ragged tests, then the gpt2-124m decode bench at B = 1, 32, 128 (T = 384, bf16)
# with its "host ms" column (median host time of a replayed step, begin_step to the return of
# cuGraphLaunch) beside the step time, and a greedy generation whose summary carries the same.
# Run from the repo root with the stripped binaries in carry/ (carry/tperf,
# carry/tests/graphs, carry/tests/ragged):
#   bash scripts/replayhost-gpu.sh OUTDIR
O=${1:?usage: scripts/replayhost-gpu.sh OUTDIR}; mkdir -p "$O"
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests
export PATH=$PATH:/usr/local/cuda/bin
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>"$O/$f"; local t0=$SECONDS; timeout "$l" "$@" >>"$O/$f" 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>"$O/$f"; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; git -C "$R" log --oneline -1; } >"$O/machine.txt" 2>&1
for i in 1 2 3; do step graphs.txt 40 "$X/graphs" --test-threads 1; done
step ragged.txt 40 "$X/ragged" --test-threads 1
echo "tests done at $((SECONDS-S0))s" >>"$O/machine.txt"
# Timings alone on the GPU. 50 timed steps a row: the host column is a median over the replays.
step bench-decode.txt 45 "$T" bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128 --steps 50
step generate.txt 25 "$T" generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --prompt "The quick brown fox"
echo "end at $((SECONDS-S0))s" >>"$O/machine.txt"
grep -h "^test result\|panicked\|FAILED\|### exit" "$O"/graphs.txt "$O"/ragged.txt >"$O/summary.txt" 2>/dev/null
grep -h "gpt2-124m\|CUDA graphs" "$O"/bench-decode.txt >>"$O/summary.txt" 2>/dev/null
grep -h "time per output token\|CUDA graphs" "$O"/generate.txt >>"$O/summary.txt" 2>/dev/null
