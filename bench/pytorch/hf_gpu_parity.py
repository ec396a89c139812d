"""A model size that matters for the Hugging Face loader's parity check on a GPU: GPT-2 124M
shapes (or 1.5B with --size 1.5b, for the host-memory measurement) with random weights, saved by
transformers as a bf16 `save_pretrained` folder, with the logits transformers computes for a
fixed random prompt on the GPU: in fp32 (the reference) and in bf16 (the peer tperf is judged
against). crates/cuda/tests/hf.rs loads the folder in tperf (bf16, CUDA backend) and compares.

    python bench/pytorch/hf_gpu_parity.py --out /tmp/tperf-hf-gpt2
    TPERF_HF_PARITY_DIR=/tmp/tperf-hf-gpt2 cargo test --release -p tperf-cuda --test hf -- --nocapture

The weights are transformers' own init (GPT-2: N(0, 0.02)) rounded to bf16, so the fp32 and
bf16 runs start from the same stored values. parity.safetensors holds ids (int64, T),
logits_fp32 and logits_bf16 (T, V, f32).
"""

import argparse
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, GPT2Config

SIZES = {
    "124m": dict(n_embd=768, n_layer=12, n_head=12),
    "1.5b": dict(n_embd=1600, n_layer=48, n_head=25),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", default="124m", choices=sorted(SIZES))
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cfg = GPT2Config(**SIZES[args.size])
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True)
    ids = torch.randint(0, cfg.vocab_size, (args.seq,), generator=torch.Generator().manual_seed(1))
    out = {"ids": ids}
    for name, dtype in [("logits_fp32", torch.float32), ("logits_bf16", torch.bfloat16)]:
        m = model.to(device=device, dtype=dtype)
        with torch.no_grad():
            out[name] = m(ids[None].to(device)).logits[0].float().cpu()
    save_file(out, os.path.join(args.out, "parity.safetensors"))
    d = (out["logits_bf16"] - out["logits_fp32"]).abs()
    print(
        f"{args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params on {device}; "
        f"transformers bf16 vs fp32: max |Δ| {d.max():.3g}, mean |Δ| {d.mean():.3g}, "
        f"max |logit| {out['logits_fp32'].abs().max():.3g}"
    )


if __name__ == "__main__":
    main()
