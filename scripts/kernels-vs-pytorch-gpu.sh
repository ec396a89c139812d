#!/usr/bin/env bash
# The kernels' checks and timings beside PyTorch in one device call (about 9 minutes): the CUDA
# attention/norm/basic tests, conformance plain and poisoned, compute-sanitizer memcheck on the
# norm and 16-bit flash tests, then `tperf attention` (d 64/80/128, and the seed 2.7B's layer),
# the seed train steps, profiles, SDPA on the same shapes and the seed in PyTorch, and a
# racecheck of the flash tests cut at 60 s (a partial run: its hazards, if any, are printed).
# Run from the repo root with carry/ as verify-gpu.sh wants:
#   timeout 570 bash scripts/kernels-vs-pytorch-gpu.sh; tar czf $OUT/results.tgz -C /tmp f
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests; O=/tmp/f; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
mkdir -p /work && ln -sfn "$R" /work/main 2>/dev/null
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; uname -r; } > $O/machine.txt 2>&1
step warm.txt 90 $T bench small --phase forward --batch 1 --seq 16 --device cuda --steps 1 --warmup 0
for t in compile ops_attention ops_norms ops_basic; do ( step tests-$t.txt 150 $X/$t --test-threads 2 ) & done
( step conformance.txt 90 $T conformance --device cuda; step conformance.txt 90 env TPERF_POISON_ALLOC=1 $T conformance --device cuda ) &
( step sanitizer.txt 100 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_norms --test-threads 1 rmsnorm
  step sanitizer.txt 100 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_norms --test-threads 1 layernorm_backward_matches ) &
( step sanitizer-flash.txt 150 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_attention --test-threads 1 flash_attention_in_16_bits_matches_the_cpu ) &
wait
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
step attention.txt 40 $T attention --device cuda --batch 1 --heads 16 --dims 64,80,128 --seqs 4096,16384 --kernels flash --dtype bf16
step attention.txt 20 $T attention --device cuda --batch 4 --heads 32 --dims 80 --seqs 256 --kernels flash --dtype bf16
step train.txt 150 $T bench --sizes small,2.7B --dtype bf16 --batch 4 --seq 256 --device cuda
step profile-2.7B.txt 60 $T profile 2.7B --batch 4 --seq 256 --dtype bf16 --device cuda --steps 2 --warmup 1
step profile-small.txt 30 $T profile small --batch 4 --seq 256 --dtype bf16 --device cuda
echo "B done at $((SECONDS-S0))s" >> $O/machine.txt
step peers.txt 60 python3 bench/pytorch/bench_peers.py --skip-decode --attention 1x16x64x4096,1x16x64x16384,1x16x80x4096,1x16x80x16384,1x16x128x4096,1x16x128x16384,4x32x80x256 --out $O
step seed.txt 100 python3 bench/pytorch/bench_seed.py --sizes small,2.7B --modes eager,compile --dtypes bf16 --compile-sizes small --skip-attention --out $O
step racecheck-flash.txt 60 compute-sanitizer --tool racecheck --print-limit 50 $X/ops_attention --test-threads 1 flash_attention_in_16_bits_matches_the_cpu
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
