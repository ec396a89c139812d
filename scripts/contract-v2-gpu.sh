#!/usr/bin/env bash
# On the GPU machine: the engine-contract-v2 record. Correctness (conformance, the GPU test
# binaries, compute-sanitizer on training steps and a ragged step), the kernel↔op join
# (tperf profile), and the no-regression bench of the new build against the build before it,
# alternated twice. Writes text files into OUT_DIR.
#
# Usage: scripts/contract-v2-gpu.sh OUT_DIR NEW_TPERF OLD_TPERF [TEST_BINARY …]
set -uo pipefail
out=${1:?usage: scripts/contract-v2-gpu.sh OUT_DIR NEW_TPERF OLD_TPERF [TEST_BINARY …]}
new=${2:?new tperf}
old=${3:?old tperf}
shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PATH=$PATH:/usr/local/cuda/bin
{ nvidia-smi; uname -r; } > "$out/machine.txt" 2>&1
# No regression: tperf bench of the seed's small and 2.7B at B4 T256 bf16, old and new alternating.
for round in 1 2; do
    for which in old new; do
        bin=$old; [ "$which" = new ] && bin=$new
        "$bin" bench --sizes small,2.7B --dtype bf16 --batch 4 --seq 256 --device cuda \
            > "$out/bench-$which-$round.txt" 2>&1
        echo "bench $which round $round exit $?"
    done
done
# Every op's kernels under it (CUPTI external correlation).
"$new" profile small --batch 4 --seq 256 --dtype bf16 --device cuda > "$out/profile-small.txt" 2>&1
echo "profile exit $?"
TPERF="$new" "$here/scripts/gpu-check.sh" "$out/check" "$@"
