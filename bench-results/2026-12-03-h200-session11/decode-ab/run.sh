O=/tmp/h; mkdir -p $O; T=$PWD/carry/tperf; TB=$PWD/carry/tperf-b; X=$PWD/carry/tests
export PATH=$PATH:/usr/local/cuda/bin
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; } > $O/machine.txt
step warm.txt 60 $T bench small --phase forward --batch 1 --seq 16 --device cuda --steps 1 --warmup 0
( step tests-paged.txt 120 $X/ops_paged --test-threads 2 ) &
( step tests-ragged.txt 120 $X/ragged --test-threads 2 ) &
( step tests-graphs.txt 60 $X/graphs --test-threads 1 ) &
( step tests-pytorch.txt 90 $X/pytorch --test-threads 2 ) &
( step conformance.txt 90 $T conformance --device cuda ) &
( step sanitizer-paged.txt 120 compute-sanitizer --tool memcheck --print-limit 20 $X/ops_paged --test-threads 1 ) &
wait
echo "tests done at ${SECONDS}s" >> $O/machine.txt
for i in 1 2; do
  step decode-a.txt 30 $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128
  step decode-b.txt 30 $TB bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 1,32,128
done
step profile-b128-a.txt 20 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 128
step profile-b128-b.txt 20 $TB profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 128
step profile-b32-a.txt 20 $T profile gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 32
step ncu-b128-a.txt 60 ncu --kernel-name regex:decode_split --launch-count 1 --launch-skip 12 --section SpeedOfLight --section Occupancy --section WarpStateStats $T bench gpt2-124m --phase decode --seq 384 --dtype bf16 --device cuda --batch 128 --no-graphs --warmup 1 --steps 1
echo "timings done at ${SECONDS}s" >> $O/machine.txt
step errors.txt 150 bash scripts/errors-gpu.sh $O/errors $T
echo "end at ${SECONDS}s" >> $O/machine.txt
for i in 1 2; do step generate.txt 30 $T generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --prompt "The quick brown fox jumps over the lazy dog"; done
step generate-nographs.txt 30 $T generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --no-graphs --prompt "The quick brown fox jumps over the lazy dog"
echo "end2 at ${SECONDS}s" >> $O/machine.txt
step generate-plain.txt 30 env TPERF_FLASH_WGMMA=plain $T generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --prompt "The quick brown fox jumps over the lazy dog"
step generate-mma.txt 30 env TPERF_FLASH_WGMMA=0 $T generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --prompt "The quick brown fox jumps over the lazy dog"
step generate-nogemv.txt 30 env TPERF_GEMV=0 $T generate gpt2-124m --device cuda --dtype bf16 --temperature 0 --max-new 32 --prompt "The quick brown fox jumps over the lazy dog"
echo "end3 at ${SECONDS}s" >> $O/machine.txt
