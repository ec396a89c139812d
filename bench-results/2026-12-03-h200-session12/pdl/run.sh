#!/usr/bin/env bash
# Session 12's decode work on one H200 in one call (about 6 minutes): programmatic dependent
# launch (PDL_ENTRY in the inference kernels, TPERF_PDL=0 turns it off) and host writes that no
# longer synchronise, checked by every CUDA test binary and conformance with PDL on; then the
# decode A/B (PDL on/off × synced/back-to-back timing, greedy; and temperature 1), a profile,
# the PyTorch decode peers, time to first token, the small training bench and the serving sweep.
# Run from the repo root with carry/tperf and carry/tests/*:
#   timeout 570 bash scripts/session12-gpu.sh; results in /tmp/s
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests; O=/tmp/s; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
step warm.txt 60 $T bench gpt2-124m --phase decode --batch 1 --seq 16 --device cuda --steps 1 --warmup 1
for t in ops_sampling ops_attention ops_norms ops_basic ops_paged ragged pytorch; do
  ( step tests-$t.txt 150 $X/$t --test-threads 2 ) &
done
( for i in 1 2; do step tests-graphs.txt 45 $X/graphs --test-threads 1; done ) &
( step conformance.txt 90 $T conformance --device cuda; step conformance.txt 90 env TPERF_POISON_ALLOC=1 $T conformance --device cuda ) &
( step sanitizer.txt 120 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_paged --test-threads 1 ) &
wait
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
D="$T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128 --steps 100"
step decode-pdl-synced.txt 40 $D --temperature 0
step decode-nopdl-synced.txt 40 env TPERF_PDL=0 $D --temperature 0
step decode-pdl-b2b.txt 40 $D --temperature 0 --back-to-back
step decode-nopdl-b2b.txt 40 env TPERF_PDL=0 $D --temperature 0 --back-to-back
step decode-pdl-b2b-t1.txt 40 $D --back-to-back
step decode-pdl-synced-t1.txt 40 $D
step profile-decode-b1.txt 30 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1
step peers.txt 120 python3 bench/pytorch/bench_peers.py --skip-attention --batches 1,32,128 --steps 100 --out $O
for i in 1 2; do step generate.txt 25 $T generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --prompt "The quick brown fox jumps over the lazy dog"; done
step train.txt 60 $T bench --sizes small --dtype bf16 --batch 4 --seq 256 --device cuda
step train-nopdl.txt 60 env TPERF_PDL=0 $T bench --sizes small --dtype bf16 --batch 4 --seq 256 --device cuda
echo "B done at $((SECONDS-S0))s" >> $O/machine.txt
mkdir -p $O/serve; step serve-driver.txt 120 bash scripts/serve-gpu.sh $O/serve $T gpt2-124m
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
