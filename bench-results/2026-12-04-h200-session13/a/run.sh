#!/usr/bin/env bash
# Session 13's first call on one H200 (about 5 minutes): the L2 prefetch before PDL's wait
# (PDL_ENTRY_PREFETCHING in gemv_rows, gemv_rows_split and the decode kernels) and the fused
# pre-norm (NormMatmul, norm_matmul.cu) checked by the CUDA test binaries that run those
# kernels, memcheck on the fused op's test and conformance; then gpt2-124m decode, back to back
# and greedy: session 12's main (carry/tperf-base), the prefetch alone (carry/tperf-prefetch)
# and both (carry/tperf), twice each in turn; the CUPTI profile at B1 and B32; and the PyTorch
# decode peers in the same call.
# Run from the repo root with carry/tperf, carry/tperf-{base,prefetch}.xz and carry/tests.tar.xz (packed so
# that the working tree and carry stay under the device's 64 MiB):
#   timeout 480 bash scripts/session13a-gpu.sh; results in /tmp/a
R=$PWD; T=$R/carry/tperf; U=/tmp/unpacked; B=$U/tperf-base; X=$U/tests; O=/tmp/a; mkdir -p $O $U
P=$U/tperf-prefetch
xz -dc carry/tperf-base.xz > $B && xz -dc carry/tperf-prefetch.xz > $P && chmod +x $B $P
tar xJf carry/tests.tar.xz -C $U
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
step warm.txt 60 $T bench gpt2-124m --phase decode --batch 1 --seq 16 --device cuda --steps 1 --warmup 1
step warm.txt 60 $B bench gpt2-124m --phase decode --batch 1 --seq 16 --device cuda --steps 1 --warmup 1
step warm.txt 60 $P bench gpt2-124m --phase decode --batch 1 --seq 16 --device cuda --steps 1 --warmup 1
( step sanitizer.txt 120 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_basic --test-threads 1 norm_matmul ) &
for t in ops_basic ops_attention ops_norms ops_paged ragged pytorch; do ( step tests-$t.txt 150 $X/$t --test-threads 2 ) & done
( step tests-graphs.txt 60 $X/graphs --test-threads 1 ) &
( step conformance.txt 90 $T conformance --device cuda ) &
wait
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
D="bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,2,4,8,32,128 --steps 100 --temperature 0 --back-to-back"
for i in 1 2; do step decode-base.txt 40 $B $D; step decode-prefetch.txt 40 $P $D; step decode-new.txt 40 $T $D; done
step decode-new-synced.txt 40 $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128 --steps 100 --temperature 0
step profile-decode-b1.txt 30 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1
step profile-decode-b32.txt 30 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 32
step profile-decode-b1-base.txt 30 $B profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1
echo "B done at $((SECONDS-S0))s" >> $O/machine.txt
step peers.txt 120 python3 bench/pytorch/bench_peers.py --skip-attention --batches 1,32,128 --steps 100 --out $O
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
