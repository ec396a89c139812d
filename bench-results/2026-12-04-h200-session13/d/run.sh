#!/usr/bin/env bash
# Session 13's last call on one H200 (about 4 minutes): the final tree (the per-op CUDA files of
# branch perop, the fused pre-norm and the L2 prefetch backed out) checked by every CUDA test
# binary and conformance (scripts/perop-gpu.sh, plus ops_sampling), then the benches the engine
# contract issue names for "no speed regression" (small and 2.7B, bf16, B4 T256) and gpt2-124m
# decode back to back and greedy. Run from the repo root with carry/tperf and carry/tests.tar.xz:
#   timeout 400 bash scripts/session13d-gpu.sh; results in /tmp/d and /tmp/perop
R=$PWD; T=$R/carry/tperf; O=/tmp/d; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
step perop-driver.txt 200 bash scripts/perop-gpu.sh
step tests-ops_sampling.txt 60 /tmp/perop-tests/tests/ops_sampling --test-threads 2
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
step decode-b2b.txt 40 $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,2,8,32,128 --steps 100 --temperature 0 --back-to-back
step train.txt 120 $T bench --sizes small,2.7B --dtype bf16 --batch 4 --seq 256 --device cuda
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
