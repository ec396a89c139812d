#!/usr/bin/env bash
# The GPU-kernel issue's checks on a CUDA machine, in two halves that each fit one device call:
#
#   scripts/kernels-gpu.sh tests OUT TPERF TESTS_DIR   correctness: the CUDA test binaries,
#                                                      conformance (also with poisoned allocations)
#   scripts/kernels-gpu.sh bench OUT TPERF             speed: flash attention, decode, train steps,
#                                                      the PyTorch peers (bench/pytorch/bench_peers.py),
#                                                      a bf16 profile of the small train step
#
# TPERF is a release binary built on the dev machine; TESTS_DIR holds stripped CUDA test
# binaries named after their test file (compile, ops_attention, ...; TESTS="a b" picks some). Writes at most 8 files
# under OUT (what the device tool brings back). Each step has its own timeout, so one hang
# costs only that step.
set -u
mode=$1
out=$2
tperf=$3
tests=${4:-}
mkdir -p "$out"
export PATH=$PATH:/usr/local/cuda/bin
# The PyTorch fixtures are found through CARGO_MANIFEST_DIR, the dev machine's /work/main.
mkdir -p /work && ln -sfn "$PWD" /work/main 2>/dev/null

machine() {
    {
        date -u +%FT%TZ
        nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
        uname -r
        "$tperf" --version 2>&1 | head -1
    } >"$out/machine.txt" 2>&1
}

step() {
    local file=$1 limit=$2
    shift 2
    echo "### $* (limit ${limit}s)" >>"$out/$file"
    local t0=$SECONDS
    timeout "$limit" "$@" >>"$out/$file" 2>&1
    echo "### exit $? after $((SECONDS - t0))s" >>"$out/$file"
}

case $mode in
tests)
    machine
    for t in ${TESTS:-compile nccl ops_sampling ops_attention ops_norms ops_basic graphs ragged hf pytorch}; do
        [ -x "$tests/$t" ] && step tests.txt 240 "$tests/$t" --test-threads 1
    done
    step conformance.txt 120 "$tperf" conformance --device cuda
    step conformance.txt 120 env TPERF_POISON_ALLOC=1 "$tperf" conformance --device cuda
    ;;
bench)
    machine
    step attention.txt 120 "$tperf" attention --device cuda --batch 1 --heads 16 \
        --dims 64,128 --seqs 4096,16384 --kernels flash --dtype bf16
    step decode.txt 120 "$tperf" bench gpt2-124m --phase decode --seq 384 --dtype bf16 \
        --device cuda --batch 1,32,128
    step train.txt 200 "$tperf" bench --sizes small,2.7B --dtype bf16 --batch 4 --seq 256 \
        --device cuda
    # PEERS=0 skips the PyTorch peers (when they were measured earlier in the same session).
    [ "${PEERS:-1}" = 0 ] || step peers.txt 240 python3 bench/pytorch/bench_peers.py --out "$out"
    step profile.txt 60 "$tperf" profile small --batch 4 --seq 256 --dtype bf16 --device cuda
    ;;
*)
    echo "usage: $0 tests|bench OUT TPERF [TESTS_DIR]" >&2
    exit 2
    ;;
esac
