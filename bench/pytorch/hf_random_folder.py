"""A Hugging Face Llama folder of a chosen size with random bf16 weights, for measuring what
loading costs (host memory, time) without downloading a model: config.json, sharded
model-0000k-of-0000n.safetensors with model.safetensors.index.json, and the tiny llama
fixture's tokenizer (so `tperf generate` and `tperf serve` accept the folder).

    /work/venv-hf/bin/python bench/pytorch/hf_random_folder.py OUT [--layers 27] [--hidden 2048]

The default shapes (C 2048, F 5632, 27 layers, 16 heads, vocab 32000, untied head) hold
1.52 B parameters: 3.04 GB of bf16. Tensors are written one shard at a time, so the script's
own memory stays near one shard's size.
"""

import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "runtime", "tests", "fixtures", "hf", "llama")


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
    params = sum(torch.Size(s).numel() for _, s in shapes)
    per_shard = (len(shapes) + a.shards - 1) // a.shards
    g = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for k in range(a.shards):
        name = f"model-{k + 1:05d}-of-{a.shards:05d}.safetensors"
        tensors = {}
        for t, s in shapes[k * per_shard:(k + 1) * per_shard]:
            x = torch.ones(s) if len(s) == 1 else torch.randn(s, generator=g) * 0.02
            tensors[t] = x.to(torch.bfloat16)
            weight_map[t] = name
            total += tensors[t].numel() * 2
        save_file(tensors, os.path.join(a.out, name), metadata={"format": "pt"})
        del tensors
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=1)
    with open(os.path.join(a.out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    for t in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(FIXTURE, t), os.path.join(a.out, t))
    print(f"{a.out}: {params / 1e9:.3f} B parameters, {total / 1e9:.3f} GB of bf16 weights in {a.shards} shards")


if __name__ == "__main__":
    main()
