"""tperf's CUDA backend beside PyTorch on the same GPU: the ratio table.

Joins bench_seed.py's pytorch_seed.json with `tperf bench --json` and `tperf attention --json`
runs of the same shapes and prints a markdown table of times and the ratio tperf / PyTorch
(below 1: tperf is faster). Rows are matched by size, dtype and pass; attention by kernel
(tperf naive ~ PyTorch naive, tperf flash ~ PyTorch SDPA), head dim and sequence length.

Usage: python compare_cuda.py PYTORCH_JSON TPERF_BENCH_JSON[L] TPERF_ATTENTION_JSON > table.md
"""

import json
import sys


def load(path):
    """A JSON document, or JSON lines (one row each, as `tperf bench --out` appends them)."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"rows": [json.loads(line) for line in text.splitlines() if line.strip()]}


def main():
    torch_rows = load(sys.argv[1])["rows"]
    bench = load(sys.argv[2])["rows"]
    attn = load(sys.argv[3])["rows"] if len(sys.argv) > 3 else []

    ours = {}
    for r in bench:
        sc = r["scenario"]
        key = (r["model"], sc["opts"]["precision"], sc["workload"])
        ours[key] = r
    print("## Model table: seed LM, batch 4 x 256, AdamW (ms, median)\n")
    print("| size | dtype | pass | tperf | tperf peak GiB | PyTorch eager | ratio | PyTorch compile | ratio | PyTorch peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    passes = [("forward", "forward"), ("fwd_bwd", "fwd_bwd"), ("train", "train_step")]
    for size in ["small", "medium", "large", "xl", "2.7B"]:
        for dtype in ["fp32", "bf16"]:
            for ours_pass, torch_pass in passes:
                r = ours.get((size, dtype, ours_pass))
                eager = next((t for t in torch_rows if t["kind"] == "model" and t["size"] == size
                              and t["dtype"] == dtype and t["mode"] == "eager"), None)
                comp = next((t for t in torch_rows if t["kind"] == "model" and t["size"] == size
                             and t["dtype"] == dtype and t["mode"] == "compile"), None)
                if r is None and eager is None:
                    continue
                ms = r["measured"]["median"] * 1e3 if r else None
                peak = r["peak_bytes_measured"] / 2**30 if r else None

                def t_ms(row):
                    if row is None or torch_pass not in row or "median_ms" not in row[torch_pass]:
                        return None
                    return row[torch_pass]["median_ms"]

                e, c = t_ms(eager), t_ms(comp)
                tpeak = eager[torch_pass].get("peak_bytes", 0) / 2**30 if e is not None else None
                f = lambda x: f"{x:.2f}" if x is not None else "—"
                ratio = lambda a, b: f"{a / b:.2f}" if a is not None and b else "—"
                print(f"| {size} | {dtype} | {ours_pass} | {f(ms)} | {f(peak)} | {f(e)} | {ratio(ms, e)} | {f(c)} | {ratio(ms, c)} | {f(tpeak)} |")

    if attn:
        print("\n## Attention: causal, bf16, forward + backward (ms, median)\n")
        print("| B | H | d | T | tperf naive | PyTorch naive | ratio | tperf flash | PyTorch SDPA | ratio |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        cases = sorted({(r["case"]["shape"]["b"], r["case"]["shape"]["h"], r["case"]["shape"]["d"], r["case"]["shape"]["tq"]) for r in attn})
        for (b, h, d, t) in cases:
            def ours_ms(kernel):
                r = next((r for r in attn if r["case"]["kernel"] == kernel and (r["case"]["shape"]["b"], r["case"]["shape"]["h"], r["case"]["shape"]["d"], r["case"]["shape"]["tq"]) == (b, h, d, t)), None)
                if r is None or r.get("measured") is None:
                    return None
                m = r["measured"]
                return (m["forward"]["median"] + m["backward"]["median"]) * 1e3

            def torch_ms(kernel):
                r = next((r for r in torch_rows if r["kind"] == "attention" and r["kernel"] == kernel and (r["batch"], r["heads"], r["d"], r["seq"]) == (b, h, d, t)), None)
                if r is None or "fwd_bwd" not in r or "median_ms" not in r["fwd_bwd"]:
                    return None
                return r["fwd_bwd"]["median_ms"]

            on, tn, of, ts = ours_ms("naive"), torch_ms("naive"), ours_ms("flash"), torch_ms("sdpa")
            f = lambda x: f"{x:.2f}" if x is not None else "—"
            ratio = lambda a, b: f"{a / b:.2f}" if a is not None and b else "—"
            print(f"| {b} | {h} | {d} | {t} | {f(on)} | {f(tn)} | {ratio(on, tn)} | {f(of)} | {f(ts)} | {ratio(of, ts)} |")


if __name__ == "__main__":
    main()
