"""The PyTorch peers of the GPU-kernel issue, measured the way a user would set them up at best.

1. Attention: SDPA (PyTorch's fastest built-in: FlashAttention-2 / cuDNN on Hopper) forward and
   forward+backward, causal, bf16, B=1, H=16, d in {64, 128}, T in {4096, 16384} by default
   (`--attention BxHxDxT,...` for others);
   `triton.testing.do_bench` medians (it flushes L2 between runs and warms up by time).
2. Decode: a GPT-2 124M-shaped model (random weights: the time does not depend on them), bf16,
   greedy, with a static KV cache of `--max-context` positions. One step is embedding + 12 blocks
   (LayerNorm, fused QKV, the new K/V written at the current position by index_copy_, SDPA over
   the whole static cache with a mask of the positions so far, projection, LayerNorm, GELU MLP)
   + final LayerNorm + tied head + argmax, the argmax fed back as the next input and the
   position advanced on the device: the whole step captured in one CUDA graph, run eagerly
   inside the graph ("eager+graph") and with torch.compile'd kernels inside ("compile+graph").
   The context starts at `--context` (prefilled positions are random: attention cost depends on
   their number, not their values) and every replay advances it by one, so the timed steps sit
   at context ... context + steps. A masked SDPA reads the whole static cache (`--max-context`
   positions) whatever the live length: that is what this recipe costs, and it is the recipe
   PyTorch users run (Hugging Face's static cache works the same way).

Usage: python bench_peers.py --out DIR [--skip-attention] [--skip-decode] [--batches 1,8,32,128]
Writes DIR/pytorch_peers.json (rows with provenance) and prints one line per row.
"""

import argparse
import json
import math
import os
import platform
import sys

import torch
import torch.nn.functional as F


def provenance():
    p = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
        "python": platform.python_version(),
        "host": platform.node(),
    }
    try:
        import triton

        p["triton"] = triton.__version__
    except ImportError:
        pass
    return p


def attention_rows(configs):
    from triton.testing import do_bench

    rows = []
    for (B, H, d, T) in configs:
        torch.cuda.empty_cache()
        q, k, v = (
            torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(3)
        )
        do = torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16)

        def fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def fwd_bwd():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o.backward(do)
            q.grad = k.grad = v.grad = None

        row = {
            "kind": "attention",
            "kernel": "sdpa",
            "batch": B,
            "heads": H,
            "d": d,
            "seq": T,
            "dtype": "bf16",
            "causal": True,
            "forward_ms": do_bench(fwd, warmup=50, rep=300),
            "fwd_bwd_ms": do_bench(fwd_bwd, warmup=50, rep=300),
        }
        # Causal attention FLOPs: forward 4·B·H·T²·d / 2, backward 2.5× the forward (5 GEMMs
        # of which one recomputes S), the count FlashAttention's papers use.
        fwd_flops = 4 * B * H * T * T * d / 2
        row["forward_tflops"] = fwd_flops / row["forward_ms"] / 1e9
        row["fwd_bwd_tflops"] = 3.5 * fwd_flops / row["fwd_bwd_ms"] / 1e9
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


class Gpt2Decode(torch.nn.Module):
    """GPT-2 124M shapes with a static KV cache: one greedy step per call."""

    def __init__(self, batch, max_context, vocab=50257, d=768, layers=12, heads=12, ff=3072):
        super().__init__()
        dt = torch.bfloat16
        dev = "cuda"
        self.heads, self.d, self.layers = heads, d, layers
        std = 0.02
        self.wte = torch.nn.Parameter(torch.randn(vocab, d, device=dev, dtype=dt) * std)
        self.wpe = torch.nn.Parameter(torch.randn(1024, d, device=dev, dtype=dt) * std)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            b = torch.nn.Module()
            b.ln1 = torch.nn.LayerNorm(d, device=dev, dtype=dt)
            b.qkv = torch.nn.Linear(d, 3 * d, device=dev, dtype=dt)
            b.proj = torch.nn.Linear(d, d, device=dev, dtype=dt)
            b.ln2 = torch.nn.LayerNorm(d, device=dev, dtype=dt)
            b.fc = torch.nn.Linear(d, ff, device=dev, dtype=dt)
            b.fc_out = torch.nn.Linear(ff, d, device=dev, dtype=dt)
            self.blocks.append(b)
        self.ln_f = torch.nn.LayerNorm(d, device=dev, dtype=dt)
        hd = d // heads
        shape = (layers, batch, heads, max_context, hd)
        self.k_cache = torch.randn(shape, device=dev, dtype=dt)
        self.v_cache = torch.randn(shape, device=dev, dtype=dt)
        self.positions = torch.arange(max_context, device=dev)

    def forward(self, tokens, pos):
        # tokens: (B,) int64, pos: () int64 on the device — both static buffers of the graph.
        B = tokens.shape[0]
        hd = self.d // self.heads
        # index_select, not wpe[pos]: indexing by a 0-d tensor reads it back to the host (a sync
        # that invalidates the capture, and a data-dependent shape to torch.compile).
        x = self.wte.index_select(0, tokens) + self.wpe.index_select(0, pos.view(1))
        mask = (self.positions <= pos).view(1, 1, 1, -1)
        for i, b in enumerate(self.blocks):
            h = b.ln1(x)
            q, k, v = b.qkv(h).view(B, 3, self.heads, 1, hd).unbind(1)
            self.k_cache[i].index_copy_(2, pos.view(1), k)
            self.v_cache[i].index_copy_(2, pos.view(1), v)
            a = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=mask)
            x = x + b.proj(a.reshape(B, self.d))
            x = x + b.fc_out(F.gelu(b.fc(b.ln2(x)), approximate="tanh"))
        logits = self.ln_f(x) @ self.wte.t()
        return logits.argmax(-1)


def decode_rows(batches, context, max_context, steps, modes):
    rows = []
    for mode in modes:
        for B in batches:
            torch.cuda.empty_cache()
            row = {"kind": "decode", "model": "gpt2-124m", "mode": mode, "batch": B,
                   "context": context, "max_context": max_context, "dtype": "bf16"}
            try:
                with torch.no_grad():
                    m = Gpt2Decode(B, max_context)
                    tokens = torch.randint(0, 50257, (B,), device="cuda")
                    pos = torch.tensor(context, device="cuda")
                    fn = torch.compile(m, fullgraph=True) if mode == "compile+graph" else m

                    def step():
                        nxt = fn(tokens, pos)
                        tokens.copy_(nxt)
                        pos.add_(1)

                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        for _ in range(3):
                            step()
                    torch.cuda.current_stream().wait_stream(side)
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        step()
                    pos.fill_(context)
                    for _ in range(5):
                        g.replay()
                    pos.fill_(context)
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(steps):
                        g.replay()
                    end.record()
                    torch.cuda.synchronize()
                    row["step_ms"] = start.elapsed_time(end) / steps
                    row["steps"] = steps
                    row["tokens_per_s"] = B * 1000.0 / row["step_ms"]
            except Exception as e:  # a peer that cannot run is recorded, not fatal
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--skip-attention", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--context", type=int, default=384)
    ap.add_argument("--max-context", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--modes", default="eager+graph,compile+graph")
    ap.add_argument("--attention", default="1x16x64x4096,1x16x64x16384,1x16x128x4096,1x16x128x16384",
                    help="attention shapes BxHxDxT, comma-separated (4x32x80x256: the seed's 2.7B layer)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_peers.py needs a CUDA GPU")
    if args.context + args.steps + 8 >= args.max_context:
        sys.exit("--max-context must exceed --context + --steps + 8 (the replays advance it)")
    torch.backends.cuda.matmul.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)
    result = {"provenance": provenance(), "rows": []}
    if not args.skip_attention:
        configs = [tuple(int(x) for x in c.split("x")) for c in args.attention.split(",")]
        result["rows"] += attention_rows(configs)
    if not args.skip_decode:
        batches = [int(b) for b in args.batches.split(",")]
        result["rows"] += decode_rows(batches, args.context, args.max_context, args.steps,
                                      args.modes.split(","))
    path = os.path.join(args.out, "pytorch_peers.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
