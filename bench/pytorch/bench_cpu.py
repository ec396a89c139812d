"""PyTorch on the CPU, for `tperf bench` side by side: the same model (tperf_model.py, SDPA
attention), fp32, with a fixed thread count; forward (with the loss, no grad), forward +
backward, and the training step (AdamW); plus square matmul rates.

Usage: python bench_cpu.py --model small --batch 1 --seq 128 --threads 2 --warmup 2 --steps 5
Prints one JSON document: provenance, rows (mean/std/median/min/max seconds, tokens/s), matmul.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import tperf_model as tm  # noqa: E402
from bench_seed import SIZES, seed_config  # noqa: E402


def gpt2_config(d, l, h):
    return {
        "name": f"gpt2-{d}", "vocab_size": 50257, "context": 1024, "d_model": d, "d_ff": 4 * d,
        "n_layers": l, "n_heads": h, "n_kv_heads": h, "head_dim": d // h, "norm": "layernorm",
        "norm_eps": 1e-5, "mlp": "gelu", "positions": {"kind": "learned"},
        "biases": {"qkv": True, "attn_out": True, "mlp": True, "norm": True, "lm_head": False},
        "tied_embeddings": True, "causal": True, "norm_placement": "pre", "final_norm": True,
        "scale_embedding": False, "sliding_window": None,
    }


def config(name):
    if name in SIZES:
        return seed_config(name)
    if name == "gpt2-124m":
        return gpt2_config(768, 12, 12)
    raise SystemExit(f"unknown model {name}: use one of {list(SIZES)} or gpt2-124m")


def summary(times):
    return {"mean": statistics.mean(times), "std": statistics.stdev(times) if len(times) > 1 else 0.0,
            "median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


def timed(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--matmul", default="256,512,1024,2048")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tm.ATTENTION = "sdpa"
    cfg = config(args.model)
    params = tm.init_params(cfg, seed=0)
    opt = tm.adamw(params, 1e-5, 0.1, 1.0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq), generator=g)
    targets = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq), generator=g)

    def forward():
        with torch.no_grad():
            tm.loss_fn(cfg, params, tokens, targets)

    def fwd_bwd():
        loss, _ = tm.loss_fn(cfg, params, tokens, targets)
        loss.backward()
        for p in params.values():
            p.grad = None

    def train():
        opt.zero_grad(set_to_none=True)
        loss, _ = tm.loss_fn(cfg, params, tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()

    rows = []
    n_tok = args.batch * args.seq
    for name, fn in (("forward", forward), ("fwd_bwd", fwd_bwd), ("train", train)):
        s = summary(timed(fn, args.warmup, args.steps))
        rows.append({"phase": name, "seconds": s, "tokens_per_s": n_tok / s["median"]})
        print(f"{name}: median {s['median'] * 1e3:.1f} ms, {n_tok / s['median']:.0f} tokens/s", file=sys.stderr)
    mm = []
    for n in (int(x) for x in args.matmul.split(",")):
        a, b = torch.randn(n, n), torch.randn(n, n)
        t = summary(timed(lambda: a @ b.T, 1, 5))
        mm.append({"n": n, "flops_per_s": 2 * n ** 3 / t["median"], "seconds": t})
    print(json.dumps({
        "provenance": {"torch": torch.__version__, "python": platform.python_version(),
                       "processor": platform.processor(), "threads": torch.get_num_threads(),
                       "date_unix": int(time.time())},
        "model": cfg["name"], "params": sum(p.numel() for p in params.values()),
        "batch": args.batch, "seq": args.seq, "rows": rows, "matmul": mm,
    }, indent=1))


if __name__ == "__main__":
    main()
