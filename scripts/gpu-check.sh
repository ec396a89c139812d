#!/usr/bin/env bash
# On the GPU machine: the CUDA backend's correctness record — the conformance suite, the
# edge-shape and PyTorch-fixture test binaries, and compute-sanitizer's memcheck and racecheck
# on short training steps (a warm-up step, one captured into a CUDA graph, one replayed from
# it). Writes text files into OUT_DIR.
#
# Usage: scripts/gpu-check.sh OUT_DIR [TEST_BINARY …]
# Needs: a built tperf (TPERF, default target/release/tperf); compute-sanitizer on the PATH or
# under /usr/local/cuda/bin.
set -uo pipefail
out=${1:?usage: scripts/gpu-check.sh OUT_DIR [TEST_BINARY …]}
shift
tperf=${TPERF:-target/release/tperf}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PATH=$PATH:/usr/local/cuda/bin
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
"$tperf" conformance --out "$out/conformance.json" > "$out/conformance.txt" 2>&1
echo "conformance exit $?" | tee -a "$out/conformance.txt"
for t in "$@"; do
    "$t" --test-threads=1 > "$out/test-$(basename "$t").txt" 2>&1
    echo "$(basename "$t") exit $?" | tee -a "$out/test-$(basename "$t").txt"
done
step=("$tperf" bench "$here/bench/configs/tiny-llama.json" --batch 2 --seq 64 --phase train
      --warmup 1 --steps 2 --device cuda)
for tool in memcheck racecheck; do
    for attn in flash naive; do
        compute-sanitizer --tool "$tool" --error-exitcode 9 "${step[@]}" --attention "$attn" \
            > "$out/sanitizer-$tool-$attn.txt" 2>&1
        echo "compute-sanitizer --tool $tool ($attn attention) exit $?" | tee -a "$out/sanitizer-$tool-$attn.txt"
    done
done
