#!/usr/bin/env bash
# The GPU check of branch perop (engine contract v2: one CUDA kernel file and one host file per
# op). The kernels moved out of optimizer.cu and paged.cu unchanged, and the host code out of
# ops/optimizer.rs, ops/paged.rs and ops/elementwise.rs, with the ragged range checks, the
# 16-byte alignment check, the gated launches, the tensor-table descriptors, the flash kernel
# choice and cuBLASLt's epilogue pointers rewritten on the host: the CUDA test binaries that run
# those ops, the flash ones once more on the mma.sync kernels instead of Hopper's wgmma, and the
# conformance suite. About 4 minutes on one H200.
#
# Run from the repo root on a GPU machine with carry/tperf and carry/tests/<test binary>
# (ops_basic ops_norms ops_paged ops_attention ragged graphs nccl pytorch; carry/tests.tar.xz
# holding them is unpacked first when carry/tests is absent):
#   timeout 540 bash scripts/perop-gpu.sh     # results in /tmp/perop/, summary.txt first
set -uo pipefail
R=$PWD
T=$R/carry/tperf
X=$R/carry/tests
O=/tmp/perop
mkdir -p "$O"
if [ ! -d "$X" ] && [ -f "$R/carry/tests.tar.xz" ]; then
    mkdir -p /tmp/perop-tests && tar xJf "$R/carry/tests.tar.xz" -C /tmp/perop-tests
    X=/tmp/perop-tests/tests
fi
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
# step FILE LIMIT_S COMMAND…: appends the command's output and its exit status to $O/FILE.
step() {
    local f=$1 l=$2
    shift 2
    echo "### $* (limit ${l}s)" >>"$O/$f"
    local t0=$SECONDS
    timeout "$l" "$@" >>"$O/$f" 2>&1
    echo "### exit $? after $((SECONDS - t0))s" >>"$O/$f"
}
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } \
    >"$O/machine.txt" 2>&1
# Compiles every source once (NVRTC, cached on disk) before the tests start together.
step warm.txt 90 "$T" bench small --batch 1 --seq 16 --phase train --device cuda --steps 1 --warmup 1
# ops_basic: activation, SwiGLU/GeGLU (gated), residual, cast, kv_append, take_last, rope,
#   embedding, matmul with bias and GELU epilogues (blas.rs); ops_norms: the norms,
#   cross-entropy, grad_norm, adamw; ops_paged: paged attention, flash-decoding and the general
#   kernel; ops_attention: the flash forward and backward on every kernel tier; ragged: paged KV
#   append, take_rows, per-row rope/embedding and their range checks in a ragged step; pytorch:
#   whole models against PyTorch's fixtures.
for t in ops_basic ops_norms ops_paged ops_attention ragged pytorch; do
    (step "tests-$t.txt" 200 "$X/$t" --test-threads 2) &
done
# graphs: replayed steps (check_replayed, the optimizer's tensor tables) against eager ones.
(step tests-graphs.txt 200 "$X/graphs" --test-threads 1) &
# nccl: ZeRO-1's optimizer share of one rank (needs one GPU; the group tests need NCCL).
(step tests-nccl.txt 120 "$X/nccl" --test-threads 1) &
wait
# The flash tests once more with the mma.sync kernels where Hopper's wgmma would run.
step tests-ops_attention-mma.txt 200 env TPERF_FLASH_WGMMA=0 "$X/ops_attention" --test-threads 2
step conformance.txt 200 "$T" conformance --device cuda --out "$O/conformance.json"
{
    echo "perop GPU check, $((SECONDS - S0))s"
    cat "$O/machine.txt"
    for f in "$O"/warm.txt "$O"/tests-*.txt "$O"/conformance.txt; do
        echo "== $(basename "$f")"
        grep -E '^### exit|^test result|FAILED|panicked|^failures:' "$f" | head -20
    done
    echo "== conformance (last lines)"
    tail -5 "$O/conformance.txt"
} >"$O/summary.txt"
cat "$O/summary.txt"
