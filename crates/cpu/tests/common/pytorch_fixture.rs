//! Shared by the CPU and CUDA backends' PyTorch tests (included with `#[path]`): the whole model
//! against PyTorch fixtures on any backend.
//!
//! The whole model against PyTorch. `bench/pytorch/fixtures.py` built a tiny config of each
//! family in PyTorch (bench/pytorch/tperf_model.py, with tperf's parameter names and layouts),
//! and recorded its weights, a batch, the logits, the loss, every gradient, and the loss over
//! three AdamW steps. Here a backend loads the same weights and must reproduce them.
//!
//! Tolerances (both sides compute in f32, in different orders): logits within 2e-5 of the
//! largest |logit|; the loss within 1e-5 relative; each gradient within 1e-4 of the largest
//! |gradient| of its tensor (small tensors such as norm gains have tiny gradients, so the scale
//! is per tensor but floored at 1e-6); the AdamW losses within 1e-4 relative, since three steps
//! of lr 1e-2 amplify rounding.

#![allow(dead_code)]

use std::collections::HashMap;
use tperf_core::backend::Backend;
use tperf_core::config::ModelConfig;
use tperf_core::ops::adamw::AdamWParams;
use tperf_core::schedule::{AttentionKernel, Options, Transformer};
use tperf_core::tensor::Tensor;

struct Fixture {
    config: ModelConfig,
    hyper: serde_json::Value,
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    i32s: HashMap<String, Vec<i32>>,
}

fn load(family: &str) -> Fixture {
    let path = format!(
        "{}/../../bench/pytorch/fixtures/{family}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().expect("fixture metadata");
    let config: ModelConfig = serde_json::from_str(&meta["config"]).unwrap();
    config.validate().unwrap();
    let hyper = serde_json::from_str(&meta["hyper"]).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (mut f32s, mut i32s) = (HashMap::new(), HashMap::new());
    for (name, view) in st.tensors() {
        let data = view.data();
        match view.dtype() {
            safetensors::Dtype::F32 => {
                let v = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                f32s.insert(name, (view.shape().to_vec(), v));
            }
            safetensors::Dtype::I32 => {
                let v = data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                i32s.insert(name, v);
            }
            other => panic!("unexpected dtype {other:?} for {name}"),
        }
    }
    Fixture {
        config,
        hyper,
        f32s,
        i32s,
    }
}

fn hyper(f: &Fixture, step: u64) -> AdamWParams {
    let h = |k: &str| f.hyper[k].as_f64().unwrap();
    AdamWParams {
        lr: h("lr"),
        beta1: h("beta1"),
        beta2: h("beta2"),
        eps: h("eps"),
        weight_decay: h("weight_decay"),
        step,
        max_grad_norm: Some(h("max_grad_norm")),
    }
}

/// The model on a fresh backend with the fixture's weights, and the batch's tensors.
fn setup<B: Backend>(
    f: &Fixture,
    attention: AttentionKernel,
    new_backend: &impl Fn() -> B,
) -> (B, Transformer, usize, usize) {
    let mut be = new_backend();
    let opts = Options {
        attention,
        ..Options::default()
    };
    let model = Transformer::new(&mut be, &f.config, opts, true).unwrap();
    for p in model.weights.all_params() {
        let (shape, data) = &f.f32s[&p.name];
        assert_eq!(shape, &p.master.shape, "{}", p.name);
        be.write_f32(&p.master, data).unwrap();
    }
    let (b, t) = (f.f32s["logits"].0[0], f.f32s["logits"].0[1]);
    (be, model, b, t)
}

fn inputs<B: Backend>(
    f: &Fixture,
    be: &mut B,
    model: &Transformer,
    b: usize,
    t: usize,
) -> (Tensor, Tensor) {
    let (tokens, targets) = model.alloc_inputs(be, b, t, true).unwrap();
    let targets = targets.unwrap();
    be.write_i32(&tokens, &f.i32s["tokens"]).unwrap();
    be.write_i32(&targets, &f.i32s["targets"]).unwrap();
    (tokens, targets)
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, &x| m.max(x.abs()))
}

/// Runs the fixture of `family` on backends made by `new_backend` and checks every recorded
/// output (tolerances: the module comment).
pub fn check_family<B: Backend>(
    family: &str,
    attention: AttentionKernel,
    new_backend: impl Fn() -> B,
) {
    let f = load(family);
    let (mut be, model, b, t) = setup(&f, attention, &new_backend);
    let (tokens, targets) = inputs(&f, &mut be, &model, b, t);
    let state = model.forward_train(&mut be, tokens, targets).unwrap();
    let logits = be.read_f32(&state.logits).unwrap();
    let expected = &f.f32s["logits"].1;
    let scale = max_abs(expected);
    for (i, (x, y)) in logits.iter().zip(expected).enumerate() {
        assert!(
            (x - y).abs() <= 2e-5 * scale,
            "{family}: logit {i}: {x} vs {y}"
        );
    }
    let losses = model.backward(&mut be, state).unwrap();
    let loss = be.read_f32(&losses).unwrap().iter().sum::<f32>() / (b * t) as f32;
    be.free(losses);
    let want = f.f32s["loss"].1[0];
    assert!(
        (loss - want).abs() <= 1e-5 * want.abs(),
        "{family}: loss {loss} vs {want}"
    );
    for p in model.weights.all_params() {
        let got = be.read_f32(p.grad()).unwrap();
        let want = &f.f32s[&format!("grad.{}", p.name)].1;
        let scale = max_abs(want).max(1e-6);
        for (i, (x, y)) in got.iter().zip(want).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{family}: grad.{}[{i}]: {x} vs {y} (scale {scale})",
                p.name
            );
        }
    }

    // Three AdamW steps from the same weights: the loss before each, then after the third.
    let (mut be, model, b, t) = setup(&f, attention, &new_backend);
    let mut seen = Vec::new();
    for step in 1..=3 {
        let (tokens, targets) = inputs(&f, &mut be, &model, b, t);
        let losses = model
            .train_step(&mut be, tokens, targets, hyper(&f, step))
            .unwrap();
        seen.push(be.read_f32(&losses).unwrap().iter().sum::<f32>() / (b * t) as f32);
        be.free(losses);
    }
    let (tokens, targets) = inputs(&f, &mut be, &model, b, t);
    let state = model.forward_eval(&mut be, tokens, Some(targets)).unwrap();
    let losses = state.losses.clone().unwrap();
    seen.push(be.read_f32(&losses).unwrap().iter().sum::<f32>() / (b * t) as f32);
    model.free_state(&mut be, state);
    let want = &f.f32s["losses_adamw"].1;
    for (i, (x, y)) in seen.iter().zip(want).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * y.abs(),
            "{family}: AdamW loss {i}: {x} vs {y} (all: {seen:?} vs {want:?})"
        );
    }
}
