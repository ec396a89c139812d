#!/usr/bin/env bash
# The wsbwd2 helper's GPU run is scripts/wsbwd-gpu.sh (updated in place: every ws_bwd variant
# tested, sanitised and timed in one run); this name only follows the helpers' convention.
#   bash scripts/wsbwd2-gpu.sh OUTDIR
exec bash "$(dirname "$0")/wsbwd-gpu.sh" "$@"
