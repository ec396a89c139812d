//! Hugging Face model folders on the CUDA backend: the tiny fixtures of crates/runtime/tests/hf.rs
//! against transformers (fp32), and, when TPERF_HF_PARITY_DIR names a folder written by
//! bench/pytorch/hf_gpu_parity.py, GPT-2 124M shapes in bf16 against transformers on the GPU.
//! Needs a CUDA device; where there is none (CI) each test says it skipped.

use serde_json::Value;
use std::path::{Path, PathBuf};
use tperf_core::backend::Backend;
use tperf_core::schedule::{AttentionKernel, Options, Precision, Transformer};
use tperf_cuda::CudaBackend;
use tperf_runtime::hf::HfModel;

fn has_gpu() -> bool {
    match tperf_cuda::device_count() {
        Ok(n) if n > 0 => true,
        Ok(_) => {
            eprintln!("skipped: no CUDA device");
            false
        }
        Err(why) => {
            eprintln!("skipped: {}", tperf_core::error::report(&why));
            false
        }
    }
}

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../runtime/tests/fixtures/hf/{family}"))
}

fn loaded(dir: &Path, opts: Options) -> (CudaBackend, Transformer) {
    let hf = HfModel::open(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut be = CudaBackend::new(0).expect("the CUDA device opens");
    let model = Transformer::new(&mut be, &hf.config, opts, false).unwrap();
    hf.load_weights(&mut be, &model).unwrap();
    (be, model)
}

fn logits(be: &mut CudaBackend, model: &Transformer, ids: &[i32]) -> Vec<f32> {
    let (tokens, _) = model.alloc_inputs(be, 1, ids.len(), false).unwrap();
    be.write_i32(&tokens, ids).unwrap();
    let state = model.forward_eval(be, tokens, None).unwrap();
    let out = be.read_f32(&state.logits).unwrap();
    model.free_state(be, state);
    out
}

#[test]
fn hf_fixtures_match_transformers_on_the_gpu() {
    if !has_gpu() {
        return;
    }
    // fp32 with TF32 off: the CPU test's bound, loosened 5× for cuBLAS's summation order.
    for family in ["gpt2", "llama", "mistral", "qwen2"] {
        let text = std::fs::read_to_string(fixture(family).join("expected.json")).unwrap();
        let e: Value = serde_json::from_str(&text).unwrap();
        let ids: Vec<i32> = e["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap() as i32)
            .collect();
        let want: Vec<f32> = e["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect();
        for attention in [AttentionKernel::Flash, AttentionKernel::Naive] {
            let opts = Options {
                attention,
                ..Options::default()
            };
            let (mut be, model) = loaded(&fixture(family), opts);
            let got = logits(&mut be, &model, &ids);
            let mut worst = 0f32;
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let err = (g - w).abs();
                worst = worst.max(err);
                assert!(
                    err <= 1e-4 + 1e-4 * w.abs(),
                    "{family} ({attention:?}): logit {i} is {g}, transformers {w}"
                );
            }
            eprintln!("{family} ({attention:?}) on the GPU: max |Δ logit| {worst:.2e}");
        }
    }
}

/// Mean and max |a − b|.
fn diff(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut sum, mut max) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = (x as f64 - y as f64).abs();
        sum += d;
        max = max.max(d);
    }
    (sum / a.len() as f64, max)
}

fn argmax_rows(v: &[f32], vocab: usize) -> Vec<usize> {
    v.chunks(vocab)
        .map(|r| {
            (0..r.len())
                .max_by(|&i, &j| r[i].total_cmp(&r[j]))
                .unwrap_or(0)
        })
        .collect()
}

#[test]
fn a_gpt2_124m_folder_in_bf16_matches_transformers_bf16() {
    let Some(dir) = std::env::var_os("TPERF_HF_PARITY_DIR") else {
        eprintln!("skipped: set TPERF_HF_PARITY_DIR (bench/pytorch/hf_gpu_parity.py writes it)");
        return;
    };
    if !has_gpu() {
        return;
    }
    let dir = PathBuf::from(dir);
    let bytes = std::fs::read(dir.join("parity.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let ids: Vec<i32> = st
        .tensor("ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as i32)
        .collect();
    let (fp32, hf_bf16) = (f32s("logits_fp32"), f32s("logits_bf16"));
    let opts = Options {
        precision: Precision::Bf16,
        ..Options::default()
    };
    let (mut be, model) = loaded(&dir, opts);
    let got = logits(&mut be, &model, &ids);
    let vocab = model.cfg.vocab_size;
    let (ours_mean, ours_max) = diff(&got, &fp32);
    let (theirs_mean, theirs_max) = diff(&hf_bf16, &fp32);
    let (a, b, r) = (
        argmax_rows(&got, vocab),
        argmax_rows(&hf_bf16, vocab),
        argmax_rows(&fp32, vocab),
    );
    let agree = |x: &[usize]| x.iter().zip(&r).filter(|(p, q)| p == q).count();
    eprintln!(
        "{} ({} tokens), bf16 against transformers fp32: tperf mean |Δ| {ours_mean:.3e} max {ours_max:.3e}, argmax = fp32's at {}/{}; transformers bf16 mean |Δ| {theirs_mean:.3e} max {theirs_max:.3e}, argmax at {}/{}; tperf vs transformers bf16 argmax equal at {}/{}",
        dir.display(),
        ids.len(),
        agree(&a),
        r.len(),
        agree(&b),
        r.len(),
        a.iter().zip(&b).filter(|(p, q)| p == q).count(),
        r.len()
    );
    // tperf's bf16 error is of the size of transformers' own bf16 error (bf16 storage of
    // activations; a mapping error would be orders larger).
    assert!(
        ours_mean <= 3.0 * theirs_mean + 1e-4,
        "tperf's bf16 error is well above transformers'"
    );
}
