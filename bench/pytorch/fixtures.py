"""Fixtures that tie tperf's CPU backend to PyTorch.

For a tiny config of each model family (Llama-style with GQA and RoPE, GPT-2-style with learned
positions and tied embeddings, the report's post-norm encoder-as-LM), this writes one
safetensors file holding:
  - the parameters under tperf's names (tperf's checkpoint layout; see tperf_model.py),
  - tokens and targets (int32, B × T),
  - logits (B, T, V), the mean cross-entropy loss,
  - grad.<name> for every parameter, from loss.backward(),
  - losses_adamw: the loss before each of three AdamW steps and after the third (4 values),
and, in the metadata, the config JSON and the optimizer's hyper-parameters.

Run:  python bench/pytorch/fixtures.py --out bench/pytorch/fixtures
      python bench/pytorch/fixtures.py --checkpoint run.safetensors --out DIR   (a tperf checkpoint)
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file

import tperf_model as tm

BIASES_NONE = {"qkv": False, "attn_out": False, "mlp": False, "norm": False, "lm_head": False}

FAMILIES = {
    "llama": {
        "name": "tiny-llama", "vocab_size": 61, "context": 16, "d_model": 32, "d_ff": 48,
        "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "norm": "rmsnorm",
        "norm_eps": 1e-5, "mlp": "swiglu", "positions": {"kind": "rope", "theta": 10000.0},
        "biases": BIASES_NONE, "tied_embeddings": False, "causal": True,
        "norm_placement": "pre", "final_norm": True, "scale_embedding": False,
        "sliding_window": None,
    },
    "gpt2": {
        "name": "tiny-gpt2", "vocab_size": 61, "context": 16, "d_model": 32, "d_ff": 128,
        "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "head_dim": 8, "norm": "layernorm",
        "norm_eps": 1e-5, "mlp": "gelu", "positions": {"kind": "learned"},
        "biases": {"qkv": True, "attn_out": True, "mlp": True, "norm": True, "lm_head": False},
        "tied_embeddings": True, "causal": True, "norm_placement": "pre", "final_norm": True,
        "scale_embedding": False, "sliding_window": None,
    },
    "report": {
        "name": "tiny-report", "vocab_size": 61, "context": 16, "d_model": 32, "d_ff": 32,
        "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "head_dim": 16, "norm": "layernorm",
        "norm_eps": 1e-5, "mlp": "relu", "positions": {"kind": "sinusoidal"},
        "biases": {"qkv": True, "attn_out": True, "mlp": True, "norm": True, "lm_head": True},
        "tied_embeddings": False, "causal": True, "norm_placement": "post", "final_norm": True,
        "scale_embedding": True, "sliding_window": None,
    },
}

HYPER = {"lr": 1e-2, "weight_decay": 0.1, "max_grad_norm": 1.0, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8}
B, T = 2, 7


def make(family, cfg, out_dir, params=None):
    torch.manual_seed(0)
    if params is None:
        params = tm.init_params(cfg, seed=1)
    initial = {k: v.detach().clone() for k, v in params.items()}
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
    targets = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)

    loss, logits = tm.loss_fn(cfg, params, tokens, targets)
    loss.backward()
    grads = {f"grad.{k}": v.grad.detach().clone() for k, v in params.items()}

    opt = tm.adamw(params, HYPER["lr"], HYPER["weight_decay"], HYPER["max_grad_norm"],
                   betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"])
    losses = []
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        l, _ = tm.loss_fn(cfg, params, tokens, targets)
        losses.append(l.item())
        l.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), HYPER["max_grad_norm"])
        opt.step()
    with torch.no_grad():
        losses.append(tm.loss_fn(cfg, params, tokens, targets)[0].item())

    tensors = dict(initial)
    tensors.update(grads)
    tensors["tokens"] = tokens.to(torch.int32)
    tensors["targets"] = targets.to(torch.int32)
    tensors["logits"] = logits.detach().float().contiguous()
    tensors["loss"] = loss.detach().float().reshape(1)
    tensors["losses_adamw"] = torch.tensor(losses, dtype=torch.float32)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    meta = {
        "config": json.dumps(cfg),
        "hyper": json.dumps(HYPER),
        "torch_version": torch.__version__,
        "note": "losses_adamw: loss before each of 3 AdamW steps (clip, then step), then after the third",
    }
    path = os.path.join(out_dir, f"{family}.safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"{path}: loss {loss.item():.6f}, losses_adamw {[round(x, 6) for x in losses]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "fixtures"))
    ap.add_argument("--checkpoint", help="build the model from this tperf checkpoint instead of "
                    "the built-in tiny configs; writes <out>/checkpoint.safetensors")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_default_dtype(torch.float32)
    if args.checkpoint:
        cfg, params = tm.load_tperf_checkpoint(args.checkpoint)
        make("checkpoint", cfg, args.out, params)
        return
    for family, cfg in FAMILIES.items():
        make(family, cfg, args.out)


if __name__ == "__main__":
    main()
