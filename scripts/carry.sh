#!/usr/bin/env bash
# Builds what a GPU call carries (the device machine has no Rust toolchain): carry/tperf
# (stripped) and carry/tests.tar.xz, the tperf-cuda and tperf-engine test binaries as
# tests/<name>, for
# `tar xJf carry/tests.tar.xz -C /tmp/unpacked && /tmp/unpacked/tests/ops_basic`.
# Run from the repo root; carry/ is ignored (.git/info/exclude: /carry/).
set -euo pipefail
cargo build --release
mkdir -p carry/stage/tests
cp target/release/tperf carry/ && strip carry/tperf
cargo test --release -p tperf-cuda -p tperf-engine --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    m = json.loads(line)
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m["target"]["kind"] == ["test"]:
        shutil.copy(exe, os.path.join("carry/stage/tests", m["target"]["name"]))
'
strip carry/stage/tests/*
tar cJf carry/tests.tar.xz -C carry/stage tests && rm -rf carry/stage
{ git log --oneline -1; echo "uncommitted files: $(git status --short | wc -l)"; } > carry/REV
ls -la carry
