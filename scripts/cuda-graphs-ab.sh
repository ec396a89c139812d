#!/usr/bin/env bash
# On the GPU machine: what CUDA graph replay and cuBLASLt's GELU epilogue change, each measured
# against the same build with the feature off, plus the NVTX ranges as Nsight Compute sees them
# and a short training run. Writes text files into OUT_DIR.
#
# Usage: scripts/cuda-graphs-ab.sh OUT_DIR
# Needs: a built tperf (TPERF, default target/release/tperf); ncu on the PATH or under
# /usr/local/cuda/bin for the NVTX check.
set -uo pipefail
out=${1:?usage: scripts/cuda-graphs-ab.sh OUT_DIR}
tperf=${TPERF:-target/release/tperf}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PATH=$PATH:/usr/local/cuda/bin
# Graphs on (the default) and off, alternating twice so that drift shows.
for round in 1 2; do
    for g in graphs no-graphs; do
        flag=(); [ "$g" = no-graphs ] && flag=(--no-graphs)
        {
            "$tperf" bench small --phase forward,train --batch 1 --seq 64 --dtype fp32,bf16 --device cuda "${flag[@]}"
            "$tperf" bench small --phase train --batch 4 --seq 256 --dtype fp32,bf16 --device cuda "${flag[@]}"
            "$tperf" bench gpt2 --phase decode --batch 1 --seq 256 --dtype bf16 --device cuda "${flag[@]}"
            "$tperf" generate gpt2 --prompt "The GPU" --max-new 128 --dtype bf16 --temperature 0 --device cuda "${flag[@]}"
        } > "$out/$g-$round.txt" 2>&1
        echo "$g round $round exit $?"
    done
done
# The GELU epilogue on (the default) and off, on GPT-2 (GELU MLPs): the step, and the per-op
# profile whose matmul_gelu row is the fused op.
for e in 1 0; do
    {
        TPERF_GELU_EPILOGUE=$e "$tperf" bench gpt2 --phase forward,train --batch 8 --seq 512 --dtype fp32,bf16 --device cuda
        TPERF_GELU_EPILOGUE=$e "$tperf" profile gpt2 --phase train --batch 8 --seq 512 --dtype bf16 --device cuda
    } > "$out/gelu-epilogue-$e.txt" 2>&1
    echo "gelu epilogue $e exit $?"
done
# NVTX: Nsight Compute profiles only kernels inside ranges named "matmul …".
ncu --nvtx --nvtx-include "regex:matmul.*/" -c 2 "$tperf" bench small --phase train --dtype bf16 \
    --batch 1 --seq 64 --warmup 0 --steps 1 --no-graphs --device cuda > "$out/ncu-nvtx.txt" 2>&1
echo "ncu exit $?"
"$tperf" train small --data "$here/README.md" --steps 60 --batch 8 --seq 256 --dtype bf16 \
    --eval-every 30 --device cuda > "$out/train.txt" 2>&1
echo "train exit $?"
