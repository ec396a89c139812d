#!/usr/bin/env bash
# One H200 calibration with its samples kept (about 1.5 minutes), for fitting offline afterwards:
#   timeout 150 bash scripts/calibrate-gpu.sh; results in /tmp/cal
# then, on any machine: tperf calibrate --refit /tmp/cal/h200-calibration.json --out NEW.json
# (the held-out error before and after a change to the fit, with no GPU). Needs carry/tperf.
O=/tmp/cal; mkdir -p $O
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; } > $O/machine.txt 2>&1
timeout 120 ./carry/tperf calibrate --device cuda --hw h200 --time-limit 45 --out $O/h200-calibration.json > $O/calibrate.txt 2>&1
echo "### exit $?" >> $O/calibrate.txt
