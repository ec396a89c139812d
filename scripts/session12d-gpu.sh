#!/usr/bin/env bash
# Session 12's last call on one H200 (about 2.5 minutes): the merged host-cost branch (tensor
# names formatted when read, the engine's tables borrowed, GPT-2 detokenising from a table)
# checked by the graph, ragged, paged, PyTorch-parity tests and conformance; gemv_rows against
# cuBLASLt (TPERF_GEMV=0) at 1, 2, 4 and 8 rows, to bound the rows gemv takes; then
# scripts/hostcost-gpu.sh (the serving step's host part at saturation, calibrated with the
# final call's calibration). Run from the repo root with carry/:
#   timeout 300 bash scripts/session12d-gpu.sh; results in /tmp/v
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests; O=/tmp/v; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
step warm.txt 60 $T bench gpt2-124m --phase decode --batch 1 --seq 16 --device cuda --steps 1 --warmup 1
for t in ops_paged ragged pytorch ops_sampling; do ( step tests-$t.txt 60 $X/$t --test-threads 2 ) & done
( for i in 1 2; do step tests-graphs.txt 45 $X/graphs --test-threads 1; done ) &
( step conformance.txt 60 $T conformance --device cuda ) &
wait
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
D="$T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,2,4,8,32,128 --steps 100 --temperature 0 --back-to-back"
step decode-b2b.txt 40 $D
step decode-gemv0-b2b.txt 40 env TPERF_GEMV=0 $D
step generate.txt 25 $T generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --prompt "The quick brown fox jumps over the lazy dog"
echo "B done at $((SECONDS-S0))s" >> $O/machine.txt
CALIBRATION=$R/bench-results/2026-12-03-h200-session12/final/h200-calibration.json step hostcost-driver.txt 120 bash scripts/hostcost-gpu.sh $O/hostcost $T
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
