#!/usr/bin/env bash
# The merged build on one H200 in one device call (about 6 minutes): correctness in parallel
# (the CUDA test binaries, conformance plain and poisoned, compute-sanitizer on the paged decode),
# then timings one at a time (attention, decode, train, the PyTorch attention and decode peers, TTFT, calibrate,
# serving sweeps and fairness with the calibrated prediction, a profile, counters).
# Run from the repo root with the stripped binaries in carry/ (carry/tperf, carry/tests/NAME):
#   timeout 570 bash scripts/verify-gpu.sh; tar czf $OUT/results.tgz -C /tmp f
# Writes /tmp/f/*.
R=$PWD; T=$R/carry/tperf; X=$R/carry/tests; O=/tmp/f; mkdir -p $O
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
mkdir -p /work && ln -sfn "$R" /work/main 2>/dev/null
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; uname -r; } > $O/machine.txt 2>&1
# warm the kernel cache once
step warm.txt 60 $T bench small --phase forward --batch 1 --seq 16 --device cuda --steps 1 --warmup 0
# A: correctness, in parallel
for t in compile nccl ops_sampling ops_attention ops_norms ops_basic ops_paged ragged hf pytorch; do
  ( step tests-$t.txt 150 $X/$t --test-threads 2 ) &
done
( for i in 1 2 3; do step tests-graphs.txt 40 $X/graphs --test-threads 1; done ) &
( step tests-plain.txt 150 env TPERF_FLASH_WGMMA=plain $X/ops_attention --test-threads 2
  step sanitizer-many-tiles.txt 120 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_attention --test-threads 1 flash_attention_in_16_bits_over_many_key_tiles ) &
( step conformance.txt 90 $T conformance --device cuda; step conformance.txt 90 env TPERF_POISON_ALLOC=1 $T conformance --device cuda ) &
( step sanitizer.txt 90 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_paged --test-threads 1
  step sanitizer.txt 90 compute-sanitizer --tool racecheck --print-limit 50 $X/ops_paged --test-threads 1
  step sanitizer.txt 90 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_norms --test-threads 1 norm
  step sanitizer.txt 120 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_attention --test-threads 1 flash_attention_in_16_bits_matches_the_cpu ) &
wait
echo "A done at $((SECONDS-S0))s" >> $O/machine.txt
# B: timings
step attention.txt 40 $T attention --device cuda --batch 1 --heads 16 --dims 64,80,128 --seqs 4096,16384 --kernels flash --dtype bf16
step attention.txt 20 $T attention --device cuda --batch 4 --heads 32 --dims 80 --seqs 256 --kernels flash --dtype bf16
# The same sweep with the two-warpgroup forward (TPERF_FLASH_WGMMA=plain; the default is warp-specialised), for the A/B in one session.
step attention-plain.txt 40 env TPERF_FLASH_WGMMA=plain $T attention --device cuda --batch 1 --heads 16 --dims 64,128 --seqs 4096,16384 --kernels flash --dtype bf16
step decode.txt 30 $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128
step decode-cublas.txt 30 env TPERF_GEMV=0 $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128
for b in 1 32 128; do step profile-decode-b$b.txt 20 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch $b; done
# The 2.7B rows need more than 80 s on a fresh machine (cut at 80 s on 2026-12-02).
step train.txt 150 $T bench --sizes small,2.7B --dtype bf16 --batch 4 --seq 256 --device cuda
step peers.txt 120 python3 bench/pytorch/bench_peers.py --attention 1x16x64x4096,1x16x64x16384,1x16x80x4096,1x16x80x16384,1x16x128x4096,1x16x128x16384,4x32x80x256 --batches 1,32,128 --steps 50 --out $O
step generate.txt 20 $T generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --prompt "The quick brown fox jumps over the lazy dog"
step calibrate.txt 60 $T calibrate --device cuda --hw h200 --time-limit 45 --out $O/h200-calibration.json
echo "B done at $((SECONDS-S0))s" >> $O/machine.txt
mkdir -p $O/serve; [ -f $O/h200-calibration.json ] && export CALIBRATION=$O/h200-calibration.json; step serve-driver.txt 120 bash scripts/serve-gpu.sh $O/serve $T gpt2-124m
echo "serve done at $((SECONDS-S0))s" >> $O/machine.txt
step profile.txt 20 $T profile small --batch 4 --seq 256 --dtype bf16 --device cuda
step profile-2.7B.txt 50 $T profile 2.7B --batch 4 --seq 256 --dtype bf16 --device cuda --steps 2 --warmup 1
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
