#!/usr/bin/env bash
# Session 13's second call on one H200 (about 3 minutes): the fused pre-norm with the rows in
# registers (norm_matmul.cu's NormStage) checked by ops_basic (its op test), memcheck on that
# test, the graph and PyTorch-parity tests and conformance; gpt2-124m decode back to back and
# greedy, session 12's main (carry/tperf-base) against this one, twice each in turn; the CUPTI
# profile at B1 and B2. Run from the repo root with carry/tperf, carry/tperf-base.xz and
# carry/tests.tar.xz:
#   timeout 300 bash scripts/session13b-gpu.sh; results in /tmp/b
R=$PWD; T=$R/carry/tperf; U=/tmp/unpacked; B=$U/tperf-base; X=$U/tests; O=/tmp/b; mkdir -p $O $U
xz -dc carry/tperf-base.xz > $B && chmod +x $B
tar xJf carry/tests.tar.xz -C $U
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
step warm.txt 60 $T bench gpt2-124m --phase decode --batch 1 --seq 16 --device cuda --steps 1 --warmup 1
step warm.txt 60 $B bench gpt2-124m --phase decode --batch 1 --seq 16 --device cuda --steps 1 --warmup 1
( step sanitizer.txt 120 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_basic --test-threads 1 norm_matmul ) &
for t in ops_basic pytorch; do ( step tests-$t.txt 150 $X/$t --test-threads 2 ) & done
( step tests-graphs.txt 60 $X/graphs --test-threads 1 ) &
( step conformance.txt 90 $T conformance --device cuda ) &
wait
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
D="bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,2,4,32,128 --steps 100 --temperature 0 --back-to-back"
for i in 1 2; do step decode-base.txt 40 $B $D; step decode-new.txt 40 $T $D; done
for b in 1 2; do step profile-decode-b$b.txt 30 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch $b; done
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
