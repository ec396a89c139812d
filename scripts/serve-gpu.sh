#!/usr/bin/env bash
# tperf serve on the GPU, measured by tperf bench serve beside the serving prediction:
#   scripts/serve-gpu.sh OUT TPERF [MODEL]
# gpt2-124m bf16 by default, random prompts of 128 tokens (mean) in and out. About a minute
# and a half:
# 1. Continuous against static batching (the same engine, `--batching static` admitting only
#    into an empty batch) on prompts and outputs of varying length (128 ± 90%: 13..244 tokens,
#    vLLM's range ratio 0.9), so a static batch holds its seats until its longest member ends:
#    a sweep of each, 16…768 req/s (past static's saturation; steps of 64 from 128 to 512, so
#    the rate each keeps within the TTFT limit is read off a fine grid: with steps of 128 the
#    ratio moved between 1.95× and 4.03× from one session to the next) at most 2 s of arrivals
#    a rate, and inf. "Equal p99 TTFT" is read off the runs: 2 × the larger light-load (16 req/s) p99
#    TTFT of the two; the static sweep (--compare-with the continuous one) names the highest
#    rate each keeps within it, the throughput measured there and their ratio. Every rate's p99
#    is in the tables, so any other limit can be read off.
# 2. Saturation in steady state: rate inf sends 2048 prompts, 8× the 256 sequences the engine
#    runs at once, so the ramp-up and the tail are a small part of the run (with 256 it was one
#    wave). Each run prints the engine's step measured from /metrics (host and device parts)
#    beside the model's, and its prediction includes the host time per step measured there.
# 3. Fairness: two clients, client-0 at 4× client-1's rate (240 and 60 req/s, both beyond a
#    fair share of a 16-sequence server; 400 requests), under VTC and under FCFS, with the VTC paper's bound
#    for that server: 2·max(w_in·L_in, w_out·M) = 2·max(128, 2·4096) = 16384 (M: 256 blocks of
#    16 tokens).
# CALIBRATION=FILE (a `tperf calibrate` file) makes the predictions beside the runs calibrated;
# SERVE_ARGS adds flags to every server (say `--decode-steps 4`).
# Each server is stopped with SIGINT (it must exit 0) after its /metrics are logged (0 running,
# 0 waiting, 0 KV blocks used). Writes OUT/serve.txt, OUT/*.json and OUT/report.html.
set -u
out=$1
tperf=$2
model=${3:-gpt2-124m}
port=8000
mkdir -p "$out"
log=$out/serve.txt
server=
# A script stopped from outside (timeout) leaves no server behind.
trap '[ -n "$server" ] && kill "$server" 2>/dev/null' EXIT

start_server() {
    echo "### serve $model --device cuda --dtype bf16 ${SERVE_ARGS:-} $*" >>"$log"
    "$tperf" serve "$model" --device cuda --dtype bf16 --port "$port" ${SERVE_ARGS:-} "$@" >>"$log" 2>&1 &
    server=$!
    for _ in $(seq 1 120); do
        python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" \
            >/dev/null 2>&1 && return
        sleep 0.5
    done
    echo "### the server did not answer /health" >>"$log"
}

stop_server() {
    python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/metrics').read().decode())" \
        2>&1 | grep -Ev "^#|_bucket" >>"$log"
    kill -INT "$server"
    wait "$server"
    echo "### server exit $?" >>"$log"
    server=
}

bench() {
    local name=$1
    shift
    echo "### bench serve $*" >>"$log"
    timeout 150 "$tperf" bench serve --url "http://127.0.0.1:$port" \
        --random-input-len 128 --random-output-len 128 \
        --model-config "$model" --hw h200 --dtype bf16 --json "$out/$name.json" \
        ${CALIBRATION:+--calibration "$CALIBRATION"} "$@" >>"$log" 2>&1
    echo "### exit $?" >>"$log"
}

for batching in continuous static; do
    start_server --batching "$batching"
    compare=
    [ "$batching" = static ] && compare="--compare-with $out/sweep-continuous.json"
    bench "sweep-$batching" --num-prompts 2048 --random-range-ratio 0.9 \
        --request-rate 16,64,128,192,256,320,384,448,512,640,768,inf --sweep-duration-s 2 \
        --label "$batching" --omit-requests $compare
    stop_server
done

for policy in vtc fcfs; do
    start_server --policy "$policy" --max-num-seqs 16 --kv-blocks 256
    bench "fairness-$policy" --num-prompts 400 --clients 2 --client-rates 240,60 \
        --label "$policy" --fairness-bound 16384 --omit-requests
    stop_server
done

echo "### report --serving" >>"$log"
"$tperf" report --serving "$out"/sweep-continuous.json "$out"/sweep-static.json \
    "$out"/fairness-vtc.json "$out"/fairness-fcfs.json --out "$out" >>"$log" 2>&1
echo "### exit $?" >>"$log"
