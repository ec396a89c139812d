"""A Hugging Face Llama folder of a chosen size with random bf16 weights, for measuring what
loading costs (host memory, time) without downloading a model: config.json, sharded
model-0000k-of-0000n.safetensors with model.safetensors.index.json, and the tiny llama
fixture's tokenizer (so `tperf generate` and `tperf serve` accept the folder). numpy alone, so
it runs where torch cannot be installed (the development machine) as well as beside it.

    python3 bench/pytorch/hf_random_folder.py OUT [--layers 27] [--hidden 2048]

The default shapes (C 2048, F 5632, 27 layers, 16 heads, vocab 32000, untied head) hold
1.52 B parameters: 3.04 GB of bf16: N(0, 0.02²) matrices and norm gains of 1. (Until 2026-12-02
this script drew them with torch; the folders the records before then name hold other values
of the same distribution.)

safetensors is written directly (numpy has no bfloat16, so the safetensors package's numpy API
cannot write one): an 8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then the tensors' bytes in header order. Each tensor is
generated, rounded to bf16 and appended on its own, so the script holds one tensor at a time
(the 262 MB embedding at most), not a shard.
"""

import argparse
import json
import os
import shutil

import numpy as np

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "runtime", "tests", "fixtures", "hf", "llama")

# Rows generated per call, so a (32000, 2048) matrix is made in pieces of 64 MB of f32.
ROWS_PER_CHUNK = 8192


def to_bf16_bits(x):
    """float32 array -> uint16 bf16 bit patterns, rounded to nearest even (as torch's .to(bfloat16)
    and half::bf16::from_f32 round; the inputs here are finite, so NaN needs no case)."""
    bits = x.astype(np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


def write_shard(path, tensors, rng):
    """tensors: [(name, shape)]. Writes one safetensors file of bf16 tensors; returns its bytes
    of tensor data."""
    header, offset = {}, 0
    for name, shape in tensors:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    # The format lets the header be padded with spaces; 8-byte alignment of the data keeps
    # every tensor's start aligned for readers that map it.
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little"))
        fh.write(text)
        for name, shape in tensors:
            if len(shape) == 1:
                fh.write(to_bf16_bits(np.ones(shape, dtype=np.float32)).tobytes())
                continue
            rows, cols = shape
            for r in range(0, rows, ROWS_PER_CHUNK):
                n = min(ROWS_PER_CHUNK, rows - r)
                x = rng.standard_normal((n, cols), dtype=np.float32) * np.float32(0.02)
                fh.write(to_bf16_bits(x).tobytes())
    return offset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=27)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--shards", type=int, default=4)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    c, f, v, hd = a.hidden, a.ffn, a.vocab, a.hidden // a.heads
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": c,
        "intermediate_size": f, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
        "num_key_value_heads": a.heads, "head_dim": hd, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": v, "tie_word_embeddings": False,
        "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
    }
    shapes = [("model.embed_tokens.weight", (v, c))]
    for l in range(a.layers):
        p = f"model.layers.{l}."
        shapes += [
            (p + "input_layernorm.weight", (c,)),
            (p + "self_attn.q_proj.weight", (c, c)),
            (p + "self_attn.k_proj.weight", (c, c)),
            (p + "self_attn.v_proj.weight", (c, c)),
            (p + "self_attn.o_proj.weight", (c, c)),
            (p + "post_attention_layernorm.weight", (c,)),
            (p + "mlp.gate_proj.weight", (f, c)),
            (p + "mlp.up_proj.weight", (f, c)),
            (p + "mlp.down_proj.weight", (c, f)),
        ]
    shapes += [("model.norm.weight", (c,)), ("lm_head.weight", (v, c))]
    params = sum(int(np.prod(s)) for _, s in shapes)
    per_shard = (len(shapes) + a.shards - 1) // a.shards
    rng = np.random.default_rng(0)
    weight_map, total = {}, 0
    for k in range(a.shards):
        name = f"model-{k + 1:05d}-of-{a.shards:05d}.safetensors"
        tensors = shapes[k * per_shard:(k + 1) * per_shard]
        total += write_shard(os.path.join(a.out, name), tensors, rng)
        weight_map.update({t: name for t, _ in tensors})
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=1)
    with open(os.path.join(a.out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    for t in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(FIXTURE, t), os.path.join(a.out, t))
    print(f"{a.out}: {params / 1e9:.3f} B parameters, {total / 1e9:.3f} GB of bf16 weights in {a.shards} shards")


if __name__ == "__main__":
    main()
