#!/usr/bin/env bash
# Session 14's last call on one H200 (about 5 minutes): the final tree.
# 1. ops_paged with the default prefill runs (2 queries a unit for MHA; 8 and 1 passed in
#    serve-tiles/), and the ragged whole-model test.
# 2. The report's experiment (`tperf counters`: the report preset at batch 16…256 under ncu),
#    now with the model at the kernels' tiles beside the counts (crates/bench/src/tiles.rs).
# 3. scripts/serve-gpu.sh with the refitted calibration (CALIBRATION): continuous against
#    static batching, saturation in steady state, VTC and FCFS fairness, the report page; the
#    prediction beside each run is calibrated, with the host term measured.
# Run from the repo root with carry/tperf, carry/tests.tar.xz and carry/calibration.json:
#   timeout 400 bash scripts/session14d-gpu.sh; results in /tmp/d
R=$PWD; T=$R/carry/tperf; O=/tmp/d; mkdir -p $O /tmp/unpacked
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
S0=$SECONDS
step() { local f=$1 l=$2; shift 2; echo "### $* (limit ${l}s)" >>$O/$f; local t0=$SECONDS; timeout $l "$@" >>$O/$f 2>&1; echo "### exit $? after $((SECONDS-t0))s" >>$O/$f; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader; } > $O/machine.txt 2>&1
tar xJf carry/tests.tar.xz -C /tmp/unpacked
step tests-ops_paged.txt 60 /tmp/unpacked/tests/ops_paged --test-threads 2
step tests-ragged.txt 60 /tmp/unpacked/tests/ragged --test-threads 2
echo "tests done at $((SECONDS-S0))s" >> $O/machine.txt
step counters.txt 150 $T counters --out $O/counters
echo "counters done at $((SECONDS-S0))s" >> $O/machine.txt
CALIBRATION=$R/carry/calibration.json timeout 230 bash scripts/serve-gpu.sh $O/serve $T
echo "end at $((SECONDS-S0))s" >> $O/machine.txt
