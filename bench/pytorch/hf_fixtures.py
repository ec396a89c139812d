"""Tiny random Hugging Face models, one per family tperf loads, with what `transformers` computes
for them: the fixtures of crates/runtime/tests/hf.rs.

For each family (gpt2, llama, mistral, qwen2, and llama31: Llama with Llama 3.1's RoPE scaling)
it writes crates/runtime/tests/fixtures/hf/<family>/:
  - the `save_pretrained` folder: config.json, model.safetensors (llama: sharded in two, with
    model.safetensors.index.json), tokenizer.json, tokenizer_config.json, generation_config.json;
  - expected.json: a fixed prompt, its token ids, the fp32 logits transformers computes for every
    position, the greedy continuation (argmax of the full forward, no cache, `new_tokens` steps),
    the decoded text of the continuation, and a chat template applied by transformers.

The models are built with `from_config` at C = 32, 2 layers, 4 heads (2 key/value heads for the
grouped-query families), F = 64; their weights are redrawn larger than the default init (std 0.2
matrices, gains 1 ± 0.1, biases ± 0.1) so the logits are far from uniform and the greedy choice
is not a near-tie (the script checks the top-2 gap of every step). Each family stores one dtype:
gpt2, qwen2 and llama31 fp32, llama bf16, mistral fp16; the weights are rounded to that dtype before the
reference runs, so the stored file holds exactly the values transformers computed with (in fp32).

No network: the tokenizers are trained here with the `tokenizers` package on a fixed text, in
each family's style (gpt2: byte-level BPE; qwen2: byte-level BPE behind Qwen2's split regex and
NFC; llama, mistral: SentencePiece-style Metaspace BPE with a BOS post-processor).

    python -m venv /work/venv-hf && /work/venv-hf/bin/pip install torch transformers safetensors
    /work/venv-hf/bin/python bench/pytorch/hf_fixtures.py
"""

import json
import os
import shutil
import sys

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "runtime", "tests", "fixtures", "hf")
PROMPT = "The quick brown fox, 42 times!"
NEW_TOKENS = 12
VOCAB = 300

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "A transformer's time goes to matmuls and attention; its memory to weights and the KV cache.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1024 4096. Punctuation: , . ; : ! ? ' \" ( ) [ ] { } - _",
    "times timing timed time tokens token tokenizer the then there these those this that",
    "Hello, world! How are you today? I'm fine, thanks; you're kind. We'll see, they've said.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\nnew lines\n\n  and  spaces  ",
    "Café naïve résumé — unicode text, ümlaut ß 東京",
]

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Simple Jinja templates in each family's published format (the real ones add tool calls and
# checks; tperf's Rust templates implement these formats, tests/hf.rs compares them).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
INST = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def byte_level_tokenizer(specials, qwen_split=False):
    tok = Tokenizer(models.BPE())
    if qwen_split:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def metaspace_tokenizer(specials):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials)
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return tok


def family_spec(name):
    common = dict(vocab_size=VOCAB)
    if name == "gpt2":
        tok = byte_level_tokenizer(["<|endoftext|>"])
        eot = tok.token_to_id("<|endoftext|>")
        cfg = GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64, bos_token_id=eot, eos_token_id=eot, **common)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
        return cfg, fast, torch.float32, None
    llama_like = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        **common,
    )
    # θ other than transformers' default, so that where the loader reads it is tested
    # (transformers ≥ 5 writes it under rope_parameters, older versions as rope_theta).
    llama_like["rope_theta"] = {"llama": 500000.0, "llama31": 10000.0, "mistral": 10000.0, "qwen2": 1000000.0}[name]
    if name == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = byte_level_tokenizer(specials, qwen_split=True)
        cfg = Qwen2Config(
            tie_word_embeddings=True,
            use_sliding_window=False,
            bos_token_id=None,
            eos_token_id=tok.token_to_id("<|im_end|>"),
            **llama_like,
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML
        )
        return cfg, fast, torch.float32, CHATML
    specials = ["<unk>", "<s>", "</s>"]
    if name in ("llama", "llama31"):
        specials += ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = metaspace_tokenizer(specials)
    ids = dict(bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"))
    if name == "llama":
        cfg = LlamaConfig(tie_word_embeddings=False, **ids, **llama_like)
        template, dtype = LLAMA3, torch.bfloat16
    elif name == "llama31":
        # Llama 3.1's scaling with bands chosen for head_dim 8 at θ = 10⁴ (wavelengths 6.3, 63,
        # 628 and 6283 positions): the first two are kept (< 1024 / 4), the third is blended,
        # the fourth divided by the factor (> 1024 / 1).
        llama_like["max_position_embeddings"] = 8192
        rope = {
            "rope_type": "llama3",
            "rope_theta": llama_like.pop("rope_theta"),
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        }
        cfg = LlamaConfig(tie_word_embeddings=False, rope_parameters=rope, **ids, **llama_like)
        template, dtype = LLAMA3, torch.float32
    else:
        # A window shorter than prompt + continuation, so the window changes the result.
        cfg = MistralConfig(tie_word_embeddings=False, sliding_window=5, **ids, **llama_like)
        template, dtype = INST, torch.float16
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=template
    )
    return cfg, fast, dtype, template


def randomize(model, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif p.dim() == 1:
                v = 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = 0.2 * torch.randn(p.shape, generator=g)
            # Stored at `dtype`, computed in fp32 from exactly the stored values.
            p.copy_(v.to(dtype).float())


def greedy(model, ids, n):
    seq = list(ids)
    gaps = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1]
        top = torch.topk(logits, 2).values
        gaps.append(float(top[0] - top[1]))
        seq.append(int(torch.argmax(logits)))
    return seq[len(ids):], min(gaps)


def build(name):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    cfg, fast, dtype, template = family_spec(name)
    assert len(fast) == VOCAB, (name, len(fast))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    randomize(model, dtype, seed={"gpt2": 1, "llama": 2, "mistral": 3, "qwen2": 4, "llama31": 5}[name])
    ids = fast(PROMPT)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    continuation, gap = greedy(model, ids, NEW_TOKENS)
    if gap < 1e-3:
        sys.exit(f"{name}: a greedy step is a near-tie (top-2 gap {gap:g}); change the seed")
    # The sliding window must matter for Mistral: the same model without it must differ.
    if name == "mistral":
        cfg_full = MistralConfig(**{**cfg.to_dict(), "sliding_window": None})
        full = AutoModelForCausalLM.from_config(cfg_full, attn_implementation="eager").float().eval()
        full.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert not torch.allclose(full(torch.tensor([ids])).logits[0], logits, atol=1e-3), "window has no effect"
    # Likewise the RoPE scaling for llama31.
    if name == "llama31":
        plain = LlamaConfig(**{**cfg.to_dict(), "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})
        unscaled = AutoModelForCausalLM.from_config(plain, attn_implementation="eager").float().eval()
        unscaled.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert not torch.allclose(unscaled(torch.tensor([ids])).logits[0], logits, atol=1e-3), "scaling has no effect"

    shard = "60KB" if name == "llama" else "10GB"
    model.to(dtype).save_pretrained(out, safe_serialization=True, max_shard_size=shard)
    fast.save_pretrained(out)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "What is 42?"},
    ]
    if name == "mistral":
        messages = messages[1:]  # the [INST] format used here has no system turn
    expected = {
        "family": name,
        "dtype": str(dtype).replace("torch.", ""),
        "prompt": PROMPT,
        "ids": ids,
        "vocab": VOCAB,
        "logits": [[round(float(x), 6) for x in row] for row in logits],
        "greedy": continuation,
        "greedy_text": fast.decode(continuation),
        "min_top2_gap": gap,
        "decode_all": fast.decode(ids + continuation, skip_special_tokens=False),
    }
    if template is not None:
        expected["chat_messages"] = messages
        expected["chat"] = fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(out, x)) for x in os.listdir(out))
    print(f"{name}: {len(ids)} prompt ids, greedy {continuation}, min top-2 gap {gap:.3g}, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for family in sys.argv[1:] or ["gpt2", "llama", "mistral", "qwen2", "llama31"]:
        build(family)
