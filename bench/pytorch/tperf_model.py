"""A PyTorch mirror of tperf's model, for fixtures and side-by-side benchmarks.

It builds the model a tperf config describes (the JSON `tperf model <m> --json` prints under
"config"), with tperf's parameter names and layouts, so it can load a tperf safetensors
checkpoint and produce outputs to compare against:

  wte (V, C); wpe (T_max, C) for learned positions
  h{l}.ln_1.w/.b, h{l}.attn.qkv.w ((H + 2H_kv)·D, C) and .b, h{l}.attn.proj.w (C, H·D) and .b,
  h{l}.ln_2.w/.b, h{l}.mlp.fc.w (F or 2F, C) and .b, h{l}.mlp.proj.w (C, F) and .b,
  ln_f.w/.b, lm_head.w (V, C) unless tied to wte, lm_head.b

Layouts and conventions (tperf's schedule, crates/core/src/schedule/mod.rs):
  - qkv columns: all query heads, then the key heads, then the value heads, D each;
  - grouped-query attention: query head h reads key/value head h // (H / H_kv);
  - RoPE rotates interleaved pairs (x[2i], x[2i+1]) of each q/k head by p·θ^(−2i/D);
  - SwiGLU: the fused projection's first F columns are the gate g, the next F the up u:
    y = silu(g)·u;
  - GELU is the tanh approximation; sinusoidal positions are those of PyTorch's
    word_language_model example; an embedding scaled by √C when the config says so;
  - post-norm blocks compute norm(x + f(x)); pre-norm blocks x + f(norm(x)).
"""

import json
import math

import torch
import torch.nn.functional as F


def load_config(path_or_dict):
    if isinstance(path_or_dict, dict):
        return path_or_dict
    with open(path_or_dict) as f:
        cfg = json.load(f)
    return cfg.get("config", cfg)


def param_shapes(cfg):
    """The parameters of a tperf model, in tperf's allocation order, with their shapes."""
    C, V, Fd = cfg["d_model"], cfg["vocab_size"], cfg["d_ff"]
    H, Hkv, D = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    b = cfg["biases"]
    qkv = (H + 2 * Hkv) * D
    mlp_in = 2 * Fd if cfg["mlp"] == "swiglu" else Fd
    layer_norm_bias = cfg["norm"] == "layernorm" and b["norm"]
    shapes = [("wte", (V, C))]
    if cfg["positions"]["kind"] == "learned":
        shapes.append(("wpe", (cfg["context"], C)))

    def norm(name):
        out = [(f"{name}.w", (C,))]
        if layer_norm_bias:
            out.append((f"{name}.b", (C,)))
        return out

    for l in range(cfg["n_layers"]):
        p = f"h{l}."
        shapes += norm(p + "ln_1")
        shapes.append((p + "attn.qkv.w", (qkv, C)))
        if b["qkv"]:
            shapes.append((p + "attn.qkv.b", (qkv,)))
        shapes.append((p + "attn.proj.w", (C, H * D)))
        if b["attn_out"]:
            shapes.append((p + "attn.proj.b", (C,)))
        shapes += norm(p + "ln_2")
        shapes.append((p + "mlp.fc.w", (mlp_in, C)))
        if b["mlp"]:
            shapes.append((p + "mlp.fc.b", (mlp_in,)))
        shapes.append((p + "mlp.proj.w", (C, Fd)))
        if b["mlp"]:
            shapes.append((p + "mlp.proj.b", (C,)))
    if cfg["final_norm"]:
        shapes += norm("ln_f")
    if not cfg["tied_embeddings"]:
        shapes.append(("lm_head.w", (V, C)))
    if b["lm_head"]:
        shapes.append(("lm_head.b", (V,)))
    return shapes


def load_tperf_checkpoint(path):
    """The config and parameters of a tperf checkpoint (`tperf train --checkpoint`): the
    safetensors file holds each parameter under its tperf name (AdamW moments as
    `<name>.adam_m` / `.adam_v`, ignored here) and the config as JSON in its metadata."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if "config" not in meta:
            raise SystemExit(f"{path}: not a tperf checkpoint (no config in its metadata)")
        cfg = json.loads(meta["config"])
        params = {}
        for name, shape in param_shapes(cfg):
            t = f.get_tensor(name).float()
            if tuple(t.shape) != tuple(shape):
                raise SystemExit(f"{path}: {name} has shape {tuple(t.shape)}, the config says {shape}")
            params[name] = t.requires_grad_(True)
    return cfg, params


def init_params(cfg, seed=0, dtype=torch.float32):
    """GPT-2-style random values: N(0, 0.02) matrices, unit gains, small random biases (not zero,
    so that fixtures exercise the bias paths)."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in param_shapes(cfg):
        if name.endswith(".w") and len(shape) == 1:  # norm gains
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            t = 0.02 * torch.randn(shape, generator=g)
        else:
            t = 0.02 * torch.randn(shape, generator=g)
        params[name] = t.to(dtype).requires_grad_(True)
    return params


def sinusoidal(T, C, device, dtype):
    pos = torch.arange(T, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, C, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / C))
    pe = torch.zeros(T, C, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe.to(dtype)


def rope(x, theta, offset=0):
    """x: (B, T, heads, D); rotate interleaved pairs by p·θ^(−2i/D)."""
    B, T, Hh, D = x.shape
    i = torch.arange(0, D, 2, device=x.device, dtype=torch.float32)
    inv = theta ** (-i / D)
    p = torch.arange(offset, offset + T, device=x.device, dtype=torch.float32)
    ang = torch.outer(p, inv)  # (T, D/2)
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    xf = x.float()
    x0, x1 = xf[..., 0::2], xf[..., 1::2]
    out = torch.empty_like(xf)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out.to(x.dtype)


def norm(cfg, x, params, name):
    w = params[f"{name}.w"]
    if cfg["norm"] == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), w, params.get(f"{name}.b"), cfg["norm_eps"])
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + cfg["norm_eps"])
    return (xf * rstd).to(x.dtype) * w


def linear(x, params, name):
    return F.linear(x, params[f"{name}.w"], params.get(f"{name}.b"))


# "naive" materialises the scores (tperf's --attention naive); "sdpa" calls PyTorch's fused
# scaled_dot_product_attention (flash/memory-efficient kernels), the fastest PyTorch path.
ATTENTION = "naive"


def attention(cfg, qkv, B, T):
    H, Hkv, D = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
    q, k, v = q.view(B, T, H, D), k.view(B, T, Hkv, D), v.view(B, T, Hkv, D)
    if cfg["positions"]["kind"] == "rope":
        q, k = rope(q, cfg["positions"]["theta"]), rope(k, cfg["positions"]["theta"])
    rep = H // Hkv
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    if ATTENTION == "sdpa" and not cfg.get("sliding_window"):
        o = F.scaled_dot_product_attention(q, k, v, is_causal=cfg["causal"])
        return o.transpose(1, 2).reshape(B, T, H * D)
    s = (q @ k.transpose(-2, -1)) / math.sqrt(D)
    if cfg["causal"]:
        i = torch.arange(T, device=qkv.device)
        visible = i[None, :] <= i[:, None]
        if cfg.get("sliding_window"):
            visible &= (i[:, None] - i[None, :]) < cfg["sliding_window"]
        s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    o = p @ v
    return o.transpose(1, 2).reshape(B, T, H * D)


def mlp(cfg, x, params, l):
    h = linear(x, params, f"h{l}.mlp.fc")
    if cfg["mlp"] == "swiglu":
        g, u = h.chunk(2, dim=-1)
        a = F.silu(g) * u
    elif cfg["mlp"] == "gelu":
        a = F.gelu(h, approximate="tanh")
    else:
        a = F.relu(h)
    return linear(a, params, f"h{l}.mlp.proj")


def forward(cfg, params, tokens):
    """Logits (B, T, V) of tokens (B, T)."""
    B, T = tokens.shape
    C = cfg["d_model"]
    x = params["wte"][tokens]
    if cfg["scale_embedding"]:
        x = x * math.sqrt(C)
    kind = cfg["positions"]["kind"]
    if kind == "learned":
        x = x + params["wpe"][:T]
    elif kind == "sinusoidal":
        x = x + sinusoidal(T, C, x.device, x.dtype)
    pre = cfg["norm_placement"] == "pre"
    for l in range(cfg["n_layers"]):
        p = f"h{l}."
        if pre:
            x = x + linear(attention(cfg, linear(norm(cfg, x, params, p + "ln_1"), params, p + "attn.qkv"), B, T), params, p + "attn.proj")
            x = x + mlp(cfg, norm(cfg, x, params, p + "ln_2"), params, l)
        else:
            a = linear(attention(cfg, linear(x, params, p + "attn.qkv"), B, T), params, p + "attn.proj")
            x = norm(cfg, x + a, params, p + "ln_1")
            x = norm(cfg, x + mlp(cfg, x, params, l), params, p + "ln_2")
    if cfg["final_norm"]:
        x = norm(cfg, x, params, "ln_f")
    w = params.get("lm_head.w", params["wte"])
    return F.linear(x, w, params.get("lm_head.b"))


def loss_fn(cfg, params, tokens, targets):
    logits = forward(cfg, params, tokens)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)), logits


def adamw(params, lr, weight_decay, max_grad_norm, betas=(0.9, 0.95), eps=1e-8):
    """torch's AdamW with decay on 2-D tensors only, after global-norm clipping."""
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=betas, eps=eps,
    )
    return opt
