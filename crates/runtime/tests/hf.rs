//! Hugging Face model folders against `transformers`: the fixtures in tests/fixtures/hf/<family>/
//! were written by bench/pytorch/hf_fixtures.py (tiny random models, `save_pretrained`, with the
//! logits, greedy continuation, token ids and chat rendering transformers computed).
//!
//! Tolerance, fp32 on the CPU backend: |tperf − transformers| ≤ 2e-5 + 2e-5·|x| per logit. Both
//! compute in f32 from the same stored values (bf16 and fp16 files widen exactly); what differs is
//! summation order (gemm blocking, flash attention's online softmax), and expected.json rounds
//! the logits to 6 decimals (±5e-7). Seen: at most 3.5e-6 over the four families and both
//! attention kernels, for logits of order 1–10; a mapping error (a wrong permutation or
//! transpose) moves them by O(1).

use serde_json::Value;
use std::path::{Path, PathBuf};
use tperf_core::backend::Backend;
use tperf_core::schedule::{alloc_step_tokens, AttentionKernel, Options, Precision, Transformer};
use tperf_cpu::CpuBackend;
use tperf_runtime::hf::{ChatMessage, HfError, HfModel};

/// llama31 is Llama with Llama 3.1's RoPE scaling (`rope_type` "llama3").
const FAMILIES: [&str; 5] = ["gpt2", "llama", "mistral", "qwen2", "llama31"];

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/hf/{family}"))
}

fn expected(family: &str) -> Value {
    let text = std::fs::read_to_string(fixture(family).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn loaded(dir: &Path, opts: Options) -> (CpuBackend, HfModel, Transformer) {
    let hf = HfModel::open(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut be = CpuBackend::new();
    let model = Transformer::new(&mut be, &hf.config, opts, false).unwrap();
    hf.load_weights(&mut be, &model).unwrap();
    (be, hf, model)
}

/// Logits of every position of `ids`, (T, V) flattened.
fn logits(be: &mut CpuBackend, model: &Transformer, ids: &[u32]) -> Vec<f32> {
    let (tokens, _) = model.alloc_inputs(be, 1, ids.len(), false).unwrap();
    let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    be.write_i32(&tokens, &ids).unwrap();
    let state = model.forward_eval(be, tokens, None).unwrap();
    let out = be.read_f32(&state.logits).unwrap();
    model.free_state(be, state);
    out
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decoding through the KV cache, as `tperf generate --temperature 0` runs it.
fn greedy_cached(be: &mut CpuBackend, model: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.alloc_kv_cache(be, 1, prompt.len() + n).unwrap();
    let mut seq: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let mut out = Vec::new();
    for i in 0..n {
        let feed = if i == 0 {
            &seq[..]
        } else {
            &seq[seq.len() - 1..]
        };
        let tokens = alloc_step_tokens(be, 1, feed.len()).unwrap();
        be.write_i32(&tokens, feed).unwrap();
        let l = model.step_logits(be, tokens, Some(&mut cache)).unwrap();
        let row = be.read_f32(&l).unwrap();
        be.free(l);
        let next = argmax(&row);
        out.push(next);
        seq.push(next as i32);
    }
    model.free_kv_cache(be, cache);
    out
}

fn check_logits(family: &str, got: &[f32], want: &Value, tol_abs: f32, tol_rel: f32) -> f32 {
    let want: Vec<f32> = want
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{family}: logits count");
    let mut worst = 0f32;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let err = (g - w).abs();
        worst = worst.max(err);
        assert!(
            err <= tol_abs + tol_rel * w.abs(),
            "{family}: logit {i} is {g}, transformers {w} (|Δ| {err})"
        );
    }
    worst
}

#[test]
fn every_family_matches_transformers_logits_and_greedy_continuation() {
    for family in FAMILIES {
        let e = expected(family);
        let ids = u32s(&e["ids"]);
        for attention in [AttentionKernel::Flash, AttentionKernel::Naive] {
            let opts = Options {
                attention,
                ..Options::default()
            };
            let (mut be, _, model) = loaded(&fixture(family), opts);
            let got = logits(&mut be, &model, &ids);
            let worst = check_logits(family, &got, &e["logits"], 2e-5, 2e-5);
            eprintln!("{family} ({attention:?}): max |Δ logit| {worst:.2e}");
            let want = u32s(&e["greedy"]);
            let cont = greedy_cached(&mut be, &model, &ids, want.len());
            assert_eq!(cont, want, "{family} ({attention:?}): greedy continuation");
        }
    }
}

#[test]
fn a_bf16_run_of_the_fixtures_stays_close() {
    // bf16 storage of every activation: ~3 significant digits per op, so a loose bound that
    // still catches a mapping error (which moves logits by O(1) against a spread of ~10).
    for family in FAMILIES {
        let e = expected(family);
        let ids = u32s(&e["ids"]);
        let opts = Options {
            precision: Precision::Bf16,
            ..Options::default()
        };
        let (mut be, _, model) = loaded(&fixture(family), opts);
        let got = logits(&mut be, &model, &ids);
        check_logits(family, &got, &e["logits"], 0.15, 0.05);
    }
}

#[test]
fn llama31_rope_scaling_is_what_makes_its_logits_match() {
    // The same weights with the scaling removed from config.json must miss transformers'
    // logits by far more than the tolerance, or the parity above would not test the scaling.
    let e = expected("llama31");
    let ids = u32s(&e["ids"]);
    let dir = copy_fixture("llama31");
    edit_config(dir.path(), |c| {
        let plain = serde_json::json!({"rope_type": "default", "rope_theta": 10000.0});
        c.insert("rope_parameters".into(), plain);
    });
    let (mut be, _, model) = loaded(dir.path(), Options::default());
    let got = logits(&mut be, &model, &ids);
    let want: Vec<f64> = e["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    assert!(
        worst > 1e-2,
        "unscaled RoPE is within {worst} of the scaled logits"
    );
}

#[test]
fn tokenizers_encode_and_decode_as_transformers() {
    for family in FAMILIES {
        let e = expected(family);
        let hf = HfModel::open(&fixture(family)).unwrap();
        let tok = hf
            .tokenizer
            .clone()
            .expect("the fixture has tokenizer.json");
        assert_eq!(
            tok.encode(e["prompt"].as_str().unwrap()),
            u32s(&e["ids"]),
            "{family}"
        );
        let mut all = u32s(&e["ids"]);
        all.extend(u32s(&e["greedy"]));
        assert_eq!(
            tok.decode(&all),
            e["decode_all"].as_str().unwrap(),
            "{family}"
        );
        assert_eq!(tok.vocab_size(), e["vocab"].as_u64().unwrap() as usize);
        assert!(
            tok.eot().is_some(),
            "{family}: an end token from the folder"
        );
        // An id past the vocabulary decodes to U+FFFD rather than vanishing.
        assert!(tok.decode(&[100_000]).contains('\u{FFFD}'));
    }
}

#[test]
fn chat_templates_render_as_transformers() {
    for family in ["llama", "mistral", "qwen2"] {
        let e = expected(family);
        let hf = HfModel::open(&fixture(family)).unwrap();
        let messages: Vec<ChatMessage> =
            serde_json::from_value(e["chat_messages"].clone()).unwrap();
        let got = hf.apply_chat_template(&messages, true).unwrap();
        assert_eq!(got, e["chat"].as_str().unwrap(), "{family}");
    }
    let gpt2 = HfModel::open(&fixture("gpt2")).unwrap();
    let err = gpt2.apply_chat_template(&[], true).unwrap_err();
    assert!(matches!(err, HfError::NoChatTemplate { .. }), "{err}");
}

#[test]
fn llama_fixture_is_sharded_and_families_store_their_dtypes() {
    let dir = fixture("llama");
    assert!(dir.join("model.safetensors.index.json").is_file());
    assert!(!dir.join("model.safetensors").exists());
    for (family, dtype) in [
        ("gpt2", "float32"),
        ("llama", "bfloat16"),
        ("mistral", "float16"),
        ("qwen2", "float32"),
    ] {
        assert_eq!(expected(family)["dtype"], dtype);
    }
    let mistral = HfModel::open(&fixture("mistral")).unwrap();
    assert_eq!(mistral.config.sliding_window, Some(5));
}

/// A copy of a fixture in a temporary folder, to break.
fn copy_fixture(family: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(family)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

fn open_err(dir: &Path) -> String {
    match HfModel::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = copy_fixture("qwen2");
    edit_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), 3.into());
    });
    let e = open_err(dir.path());
    assert!(
        e.contains("missing") && e.contains("model.layers.2.self_attn.q_proj.weight"),
        "{e}"
    );
}

#[test]
fn an_extra_tensor_is_named() {
    let dir = copy_fixture("gpt2");
    edit_config(dir.path(), |c| {
        c.insert("n_layer".into(), 1.into());
    });
    let e = open_err(dir.path());
    assert!(
        e.contains("not part of") && e.contains("h.1.attn.c_attn.weight"),
        "{e}"
    );
}

#[test]
fn a_wrong_shape_names_the_tensor_and_both_shapes() {
    let dir = copy_fixture("mistral");
    edit_config(dir.path(), |c| {
        c.insert("intermediate_size".into(), 48.into());
    });
    let e = open_err(dir.path());
    assert!(
        e.contains("gate_proj.weight") && e.contains("[64, 32]") && e.contains("[48, 32]"),
        "{e}"
    );
}

#[test]
fn a_truncated_shard_is_a_clear_error() {
    let dir = copy_fixture("llama");
    let shard = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-of-00002.safetensors"))
        .unwrap();
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 100]).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("truncated") && e.contains("safetensors"), "{e}");

    // A header of garbage, and a shard the index names that is not there.
    std::fs::write(&shard, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("not a valid safetensors file"), "{e}");
    std::fs::remove_file(&shard).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("cannot read") && e.contains("-of-00002"), "{e}");
}

#[test]
fn an_unknown_architecture_or_unsupported_rope_is_refused() {
    let dir = copy_fixture("llama");
    edit_config(dir.path(), |c| {
        c.insert("model_type".into(), "t5".into());
    });
    let e = open_err(dir.path());
    assert!(e.contains("t5") && e.contains("not supported"), "{e}");

    // Llama 3 scaling with a field missing names the field; a kind tperf does not compute is
    // refused with the ones it does.
    let dir = copy_fixture("llama");
    edit_config(dir.path(), |c| {
        let scaling = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
        c.insert("rope_scaling".into(), scaling);
    });
    let e = open_err(dir.path());
    assert!(
        e.contains("rope_scaling.original_max_position_embeddings"),
        "{e}"
    );
    for kind in ["dynamic", "yarn"] {
        let dir = copy_fixture("llama");
        edit_config(dir.path(), |c| {
            let scaling = serde_json::json!({"rope_type": kind, "factor": 2.0});
            c.insert("rope_scaling".into(), scaling);
        });
        let e = open_err(dir.path());
        assert!(
            e.contains("rope scaling") && e.contains(kind) && e.contains("\"llama3\""),
            "{e}"
        );
    }

    let empty = tempfile::tempdir().unwrap();
    let e = open_err(empty.path());
    assert!(e.contains("no config.json"), "{e}");
    std::fs::copy(
        fixture("gpt2").join("config.json"),
        empty.path().join("config.json"),
    )
    .unwrap();
    let e = open_err(empty.path());
    assert!(e.contains("no weights"), "{e}");
}

#[test]
fn a_non_finite_weight_is_refused_when_loading() {
    // An f32 NaN written over the first value of the embedding of the gpt2 fixture.
    let dir = copy_fixture("gpt2");
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let wte = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("wte.weight"))
        .map(|(_, v)| v["data_offsets"][0].as_u64().unwrap() as usize)
        .unwrap();
    let at = 8 + header_len + wte;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let hf = HfModel::open(dir.path()).unwrap();
    let mut be = CpuBackend::new();
    let model = Transformer::new(&mut be, &hf.config, Options::default(), false).unwrap();
    let e = hf.load_weights(&mut be, &model).unwrap_err().to_string();
    assert!(e.contains("wte.weight") && e.contains("NaN"), "{e}");
}

#[test]
fn save_pretrained_writes_back_what_was_loaded() {
    // Every layout the loader undoes: Conv1D transposes (gpt2), RoPE permutations and fused
    // q/k/v and gate/up (llama, bf16 and sharded in the source), biases (qwen2), fp16 (mistral).
    for family in FAMILIES {
        let (mut be, hf, model) = loaded(&fixture(family), Options::default());
        let out = tempfile::tempdir().unwrap();
        hf.save_pretrained(&mut be, &model, out.path()).unwrap();
        let src = std::fs::read_to_string(fixture(family).join("config.json")).unwrap();
        let dst = std::fs::read_to_string(out.path().join("config.json")).unwrap();
        assert_eq!(src, dst, "{family}: the config is copied");
        assert!(out.path().join("tokenizer.json").is_file());
        let ids = u32s(&expected(family)["ids"]);
        let before = logits(&mut be, &model, &ids);
        let (mut be2, _, model2) = loaded(out.path(), Options::default());
        let after = logits(&mut be2, &model2, &ids);
        assert_eq!(
            before, after,
            "{family}: the saved folder loads to the same model"
        );
        // Saving over the mapped source is refused.
        let err = hf
            .save_pretrained(&mut be, &model, &fixture(family))
            .unwrap_err();
        assert!(err.to_string().contains("loaded from"), "{err}");
    }
}
