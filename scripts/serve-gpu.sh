#!/usr/bin/env bash
# tperf serve on the GPU, measured by tperf bench serve beside the serving prediction:
#   scripts/serve-gpu.sh OUT TPERF [MODEL]
# Starts the server on 127.0.0.1:8000, waits for /health, runs the benchmark at saturation
# (all requests at once) and at one request rate, and stops the server with SIGINT (it must
# exit 0). Writes OUT/serve.txt and OUT/serve-*.json.
set -u
out=$1
tperf=$2
model=${3:-gpt2-124m}
mkdir -p "$out"
log=$out/serve.txt
"$tperf" serve "$model" --device cuda --dtype bf16 --port 8000 >>"$log" 2>&1 &
server=$!
for _ in $(seq 1 120); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=1)" \
        >/dev/null 2>&1 && break
    sleep 0.5
done
for rate in inf 200; do
    echo "### bench serve --request-rate $rate" >>"$log"
    timeout 120 "$tperf" bench serve --url http://127.0.0.1:8000 --num-prompts 256 \
        --random-input-len 128 --random-output-len 128 --request-rate "$rate" \
        --model-config "$model" --hw h200 --dtype bf16 --json "$out/serve-$rate.json" >>"$log" 2>&1
    echo "### exit $?" >>"$log"
done
python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/metrics').read().decode())" \
    2>&1 | grep -Ev "^#|_bucket" >>"$log"
kill -INT "$server"
wait "$server"
echo "### server exit $?" >>"$log"
