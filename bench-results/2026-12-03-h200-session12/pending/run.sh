#!/usr/bin/env bash
# What session 11 landed or kept without a GPU run (its device time ran out), in one call of
# about 3 minutes: the ws4/ws5 flash backwards (TPERF_FLASH_WGMMA_BWD; tests, racecheck on the
# ring test, timings beside wg and ws), the engine warm-up's time to first token (tperf
# generate, 5.0 ms in session 8, 124-146 ms before the warm-up change), conformance, the CUDA
# graph and ragged tests and the decode and small training benches. After restoring the replay
# path's host-cost work (revert commit 49213c6) it checks that too: graphs.txt must pass and
# decode.txt then has a "host ms" column.
# Run from the repo root with carry/tperf and carry/tests/{graphs,ragged,ops_attention}:
#   bash scripts/pending-gpu.sh; results in /tmp/k
O=/tmp/k; mkdir -p $O; T=$PWD/carry/tperf; X=$PWD/carry/tests
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; } > $O/machine.txt 2>&1
step warm.txt 60 $T bench small --phase forward --batch 1 --seq 16 --device cuda --steps 1 --warmup 0
( step tests-graphs.txt 45 $X/graphs --test-threads 1; step tests-graphs.txt 45 $X/graphs --test-threads 1 ) &
( step tests-ragged.txt 60 $X/ragged --test-threads 2 ) &
( step tests-attn-ws4.txt 100 env TPERF_FLASH_WGMMA_BWD=ws4 $X/ops_attention --test-threads 2 ) &
( step tests-attn-ws5.txt 100 env TPERF_FLASH_WGMMA_BWD=ws5 $X/ops_attention --test-threads 2 ) &
( step racecheck-ws4.txt 100 env TPERF_FLASH_WGMMA_BWD=ws4 compute-sanitizer --tool racecheck --print-limit 5 $X/ops_attention --test-threads 1 flash_attention_backward_in_16_bits_over_many_query_tiles ) &
( step conformance.txt 90 $T conformance --device cuda ) &
wait
echo "tests done at ${SECONDS}s" >> $O/machine.txt
A="$T attention --device cuda --batch 1 --heads 16 --dims 64,128 --seqs 4096,16384 --kernels flash --dtype bf16"
for v in wg ws ws4 ws5; do step attention-$v.txt 30 env TPERF_FLASH_WGMMA_BWD=$v $A; done
step decode.txt 45 $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128 --steps 50
for i in 1 2; do step generate.txt 25 $T generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --prompt "The quick brown fox jumps over the lazy dog"; done
step train.txt 60 $T bench --sizes small --dtype bf16 --batch 4 --seq 256 --device cuda
echo "end at ${SECONDS}s" >> $O/machine.txt
