"""Loads a Hugging Face folder with transformers (strictly: no missing or unexpected weights) and
prints the greedy continuation of a prompt, to compare with `tperf generate DIR --temperature 0`:
the check that a folder `tperf train --save-hf` wrote is one transformers reads as tperf does.

    python bench/pytorch/hf_check.py DIR --prompt "The quick brown fox" --max-new 12
"""

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new", type=int, default=12)
    args = ap.parse_args()
    model, info = AutoModelForCausalLM.from_pretrained(
        args.dir, torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise SystemExit(f"{args.dir}: {bad}")
    tok = AutoTokenizer.from_pretrained(args.dir)
    seq = tok(args.prompt)["input_ids"]
    new = []
    for _ in range(args.max_new):
        with torch.no_grad():
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
        if nxt in ([model.config.eos_token_id] if isinstance(model.config.eos_token_id, int) else model.config.eos_token_id or []):
            break
        seq.append(nxt)
        new.append(nxt)
    print(f"loaded {args.dir} strictly; greedy ids {new}")
    print(args.prompt + tok.decode(new))


if __name__ == "__main__":
    main()
