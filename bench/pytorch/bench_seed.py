"""The seed's benchmarks in PyTorch, for side-by-side runs with `tperf bench` / `tperf attention`.

1. Model table: the seed's Llama-style LM (tperf_model.py, the same model tperf runs) at the
   seed sizes, batch 4, context 256, AdamW; fp32 and bf16 autocast; eager and torch.compile;
   forward, forward+backward, full training step; W warm-up and N timed steps with
   torch.cuda.synchronize around each; peak memory per pass. TF32 is off.
2. Attention sweep: batch 8, one head, d in {16, 32, 64, 128} x T in {256, 1024, 4096, 8192,
   16384}, causal, bf16: naive (materialised scores) and SDPA; forward and backward time and
   the memory in use before the backward; out-of-memory reported, not crashed. Plus multi-head
   causal configurations (B=1, H=16).

Usage: python bench_seed.py --out DIR [--sizes small,medium] [--skip-attention] [--quick]
Writes DIR/pytorch_seed.json (every row with provenance) and prints a table.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import tperf_model as tm  # noqa: E402

SIZES = {
    "small": (768, 3072, 12, 12),
    "medium": (1024, 4096, 24, 16),
    "large": (1280, 5120, 36, 20),
    "xl": (1600, 6400, 48, 25),
    "2.7B": (2560, 10240, 32, 32),
}


def seed_config(name):
    d, f, l, h = SIZES[name]
    return {
        "name": name, "vocab_size": 10000, "context": 1024, "d_model": d, "d_ff": f,
        "n_layers": l, "n_heads": h, "n_kv_heads": h, "head_dim": d // h, "norm": "rmsnorm",
        "norm_eps": 1e-5, "mlp": "swiglu", "positions": {"kind": "rope", "theta": 10000.0},
        "biases": {"qkv": False, "attn_out": False, "mlp": False, "norm": False, "lm_head": False},
        "tied_embeddings": False, "causal": True, "norm_placement": "pre", "final_norm": True,
        "scale_embedding": False, "sliding_window": None,
    }


def provenance():
    p = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date_unix": int(time.time()),
        "host": platform.node(),
    }
    if torch.cuda.is_available():
        p["device"] = torch.cuda.get_device_name(0)
        p["cuda"] = torch.version.cuda
        p["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return p


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def stats(times):
    ms = [t * 1e3 for t in times]
    return {
        "mean_ms": statistics.mean(ms),
        "std_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0,
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


def model_rows(sizes, warmup, steps, modes, dtypes):
    rows = []
    dev = "cuda"
    B, T = 4, 256
    for name in sizes:
        cfg = seed_config(name)
        for dtype in dtypes:
            for mode in modes:
                if mode == "compile" and dtype == "fp32":
                    continue
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                params = {k: v.detach().to(dev).requires_grad_(True) for k, v in tm.init_params(cfg).items()}
                opt = tm.adamw(params, 1e-4, 0.1, 1.0)
                tokens = torch.randint(0, cfg["vocab_size"], (B, T), device=dev)
                targets = torch.randint(0, cfg["vocab_size"], (B, T), device=dev)
                amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=(dtype == "bf16"))
                fwd = (lambda t, y: tm.loss_fn(cfg, params, t, y)[0])
                if mode == "compile":
                    fwd = torch.compile(fwd)

                def forward():
                    with torch.no_grad(), amp:
                        fwd(tokens, targets)

                def fwd_bwd():
                    with amp:
                        loss = fwd(tokens, targets)
                    loss.backward()
                    for p in params.values():
                        p.grad = None

                def step():
                    opt.zero_grad(set_to_none=True)
                    with amp:
                        loss = fwd(tokens, targets)
                    loss.backward()
                    opt.step()

                row = {"kind": "model", "size": name, "dtype": dtype, "mode": mode, "batch": B, "seq": T,
                       "params": sum(p.numel() for p in params.values())}
                try:
                    for label, fn in (("forward", forward), ("fwd_bwd", fwd_bwd), ("train_step", step)):
                        torch.cuda.reset_peak_memory_stats()
                        row[label] = stats(timed(fn, warmup, steps))
                        row[label]["peak_bytes"] = torch.cuda.max_memory_allocated()
                except torch.OutOfMemoryError as e:
                    row["error"] = f"out of memory: {str(e).splitlines()[0]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
                del params, opt
    return rows


def naive_attention(q, k, v):
    T = q.shape[-2]
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, device=q.device, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def attention_rows(configs, warmup, steps):
    rows = []
    for (B, H, d, T) in configs:
        for kernel in ("naive", "sdpa"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            row = {"kind": "attention", "kernel": kernel, "batch": B, "heads": H, "d": d, "seq": T, "dtype": "bf16", "causal": True}
            try:
                q, k, v = (torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
                fn = naive_attention if kernel == "naive" else (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                do = torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16)
                row["forward"] = stats(timed(lambda: fn(q, k, v), warmup, steps))
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                o = fn(q, k, v)
                sync()
                row["memory_before_backward_bytes"] = torch.cuda.memory_allocated() - base
                row["forward_peak_bytes"] = torch.cuda.max_memory_allocated()

                def fwd_bwd():
                    out = fn(q, k, v)
                    out.backward(do)
                    q.grad = k.grad = v.grad = None

                row["fwd_bwd"] = stats(timed(fwd_bwd, warmup, steps))
                row["backward_ms_mean"] = row["fwd_bwd"]["mean_ms"] - row["forward"]["mean_ms"]
                del o
            except torch.OutOfMemoryError as e:
                row["error"] = f"out of memory: {str(e).splitlines()[0]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--sizes", default="small,medium,large,xl,2.7B")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--compile-sizes", default="small,medium")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--attention", default="sdpa", choices=["naive", "sdpa"], help="the model's attention path")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--skip-attention", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_seed.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)
    tm.ATTENTION = args.attention
    result = {"provenance": provenance(), "model_attention": args.attention, "rows": []}
    if not args.skip_model:
        sizes = args.sizes.split(",")
        modes = args.modes.split(",")
        eager = [s for s in sizes]
        result["rows"] += model_rows(eager, args.warmup, args.steps, [m for m in modes if m == "eager"], args.dtypes.split(","))
        if "compile" in modes:
            comp = [s for s in args.compile_sizes.split(",") if s in sizes]
            result["rows"] += model_rows(comp, args.warmup, args.steps, ["compile"], ["bf16"])
    if not args.skip_attention:
        sweep = [(8, 1, d, T) for d in (16, 32, 64, 128) for T in (256, 1024, 4096, 8192, 16384)]
        multi = [(1, 16, d, T) for d in (64, 128) for T in (4096, 16384)]
        result["rows"] += attention_rows(sweep + multi, args.warmup, args.steps)
    path = os.path.join(args.out, "pytorch_seed.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
    for r in result["rows"]:
        if r["kind"] == "model":
            cells = [r["size"], r["dtype"], r["mode"]] + [f"{r[k]['mean_ms']:.1f}" if k in r else "-" for k in ("forward", "fwd_bwd", "train_step")]
            peak = max((r[k]["peak_bytes"] for k in ("forward", "fwd_bwd", "train_step") if k in r), default=0)
            print(" | ".join(cells + [f"{peak / 2**30:.1f} GiB", r.get("error", "")]))
        else:
            f_ = r.get("forward", {}).get("mean_ms")
            fb = r.get("fwd_bwd", {}).get("mean_ms")
            print(f"attn {r['kernel']:5} B{r['batch']} H{r['heads']} d{r['d']} T{r['seq']}: fwd {f_} fwd+bwd {fb} mem-before-bwd {r.get('memory_before_backward_bytes')} {r.get('error', '')}")


if __name__ == "__main__":
    main()
