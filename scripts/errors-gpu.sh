#!/usr/bin/env bash
# On the GPU machine: the error paths the typed-errors branch changed that only a GPU reaches,
# each run once with its stderr kept, so the messages can be read.
#   scripts/errors-gpu.sh OUT [TPERF]          (TPERF: carry/tperf by default; about 1 minute)
# 1. NVML sampling (utilisation::start_for → SamplerError): a short CUDA bench must print a
#    "utilisation:" summary, not "not collected".
# 2. Engine::start's builder (EngineError::Build keeping the loader's error chain as its cause):
#    `tperf serve` of a tiny checkpoint (trained here on the CPU, 2 steps) with --tokenizer gpt2
#    must fail on the GPU with exit 2 and the same message as on the CPU: "… and --tokenizer:
#    the model 'tiny' has a vocabulary of 256 tokens, smaller than the gpt2 tokenizer's …".
# 3. tperf serve measured by tperf bench serve (ClientError, SloError): a clean run of 16
#    prompts with --goodput, then a bad --goodput word, a wrong endpoint (HTTP 404 through
#    ClientError::Status) and, after the server stops, a refused connection.
# DEVICE=cpu runs the same steps on the CPU (how the script was checked without a GPU).
# Writes OUT/errors.txt; each step ends with its exit status.
set -u
out=${1:?usage: scripts/errors-gpu.sh OUT [TPERF]}
tperf=${2:-carry/tperf}
device=${DEVICE:-cuda}
port=8011
mkdir -p "$out"
log=$out/errors.txt
: >"$log"
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null' EXIT

step() {
    echo "### $*" >>"$log"
    timeout 120 "$@" >>"$log" 2>&1
    echo "### exit $?" >>"$log"
}

step "$tperf" bench --sizes small --dtype bf16 --batch 4 --seq 256 --device "$device"

tiny=$out/tiny
mkdir -p "$tiny"
python3 - "$tiny/tiny.json" <<'PY'
import json, sys
json.dump({"name": "tiny", "biases": {"attn_out": True, "lm_head": False, "mlp": True,
           "norm": True, "qkv": True}, "causal": True, "context": 64, "d_ff": 64,
           "d_model": 32, "final_norm": True, "head_dim": 8, "mlp": "gelu", "n_heads": 4,
           "n_kv_heads": 4, "n_layers": 2, "norm": "layernorm", "norm_eps": 1e-5,
           "norm_placement": "pre", "positions": {"kind": "learned"}, "scale_embedding": False,
           "sliding_window": None, "tied_embeddings": True, "vocab_size": 256},
          open(sys.argv[1], "w"))
PY
step "$tperf" train "$tiny/tiny.json" --synthetic --steps 2 --batch 2 --seq 16 --device cpu \
    --checkpoint "$tiny/ck.safetensors"
step "$tperf" serve "$tiny/ck.safetensors" --device "$device" --tokenizer gpt2 --port "$port"

echo "### serve gpt2-124m --device $device --dtype bf16" >>"$log"
"$tperf" serve gpt2-124m --device "$device" --dtype bf16 --port "$port" >>"$log" 2>&1 &
server=$!
for _ in $(seq 1 120); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=1)" \
        >/dev/null 2>&1 && break
    sleep 0.5
done
url=http://127.0.0.1:$port
step "$tperf" bench serve --url "$url" --num-prompts 16 --random-input-len 64 \
    --random-output-len 32 --goodput ttft:1000 tpot:50
step "$tperf" bench serve --url "$url" --num-prompts 4 --goodput ttft=1000
step "$tperf" bench serve --url "$url" --num-prompts 4 --endpoint /v1/nowhere
kill -INT "$server"
wait "$server"
echo "### server exit $?" >>"$log"
server=
step "$tperf" bench serve --url "$url" --num-prompts 4
grep -E "^### |utilisation|error" "$log"
