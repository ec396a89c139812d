//! Whole-model tests on the CPU backend for each family (Llama-style, GPT-2-style and the
//! report's post-norm encoder-as-LM), shrunk from their presets to a few thousand parameters.
//!
//! Tolerances: every comparison is between two f32 computations of the same quantity by
//! different op sequences (recompute, fusion, kernel, cache); their rounding differs by a few
//! ulps per op, so gradients agree to 1e-4 relative to the largest gradient and logits to 1e-4
//! absolute.

use tperf_core::backend::Backend;
use tperf_core::config::ModelConfig;
use tperf_core::ops::adamw::AdamWParams;
use tperf_core::presets;
use tperf_core::rng::Rng;
use tperf_core::schedule::{alloc_step_tokens, AttentionKernel, Options, Recompute, Transformer};
use tperf_cpu::CpuBackend;

const B: usize = 2;
const T: usize = 8;

fn tiny(preset: &str) -> ModelConfig {
    let mut cfg = presets::find(preset).expect("preset exists").config;
    cfg.vocab_size = 50;
    cfg.context = 16;
    cfg.d_model = 32;
    cfg.d_ff = 48;
    cfg.n_layers = 2;
    let kv = if preset == "small" { 2 } else { 4 };
    let cfg = cfg.with_heads(4, kv).expect("4 heads divide 32");
    cfg.validate().expect("tiny config is valid");
    cfg
}

fn families() -> Vec<ModelConfig> {
    let mut windowed = tiny("small");
    windowed.sliding_window = Some(3);
    let mut geglu = tiny("small");
    geglu.mlp = tperf_core::config::Mlp::GeGlu;
    vec![tiny("small"), tiny("gpt2"), tiny("report"), windowed, geglu]
}

fn batch(seed: u64, len: usize, vocab: usize) -> Vec<i32> {
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|_| (rng.next_u64() % vocab as u64) as i32)
        .collect()
}

/// Runs forward and backward once; returns the mean loss and every weight gradient.
fn gradients(cfg: &ModelConfig, opts: Options) -> (f32, Vec<Vec<f32>>) {
    let mut be = CpuBackend::new();
    let model = Transformer::new(&mut be, cfg, opts, true).unwrap();
    model.init_weights(&mut be, 7).unwrap();
    let (tokens, targets) = model.alloc_inputs(&mut be, B, T, true).unwrap();
    let targets = targets.unwrap();
    be.write_i32(&tokens, &batch(1, B * T, cfg.vocab_size))
        .unwrap();
    be.write_i32(&targets, &batch(2, B * T, cfg.vocab_size))
        .unwrap();
    let state = model.forward_train(&mut be, tokens, targets).unwrap();
    let losses = model.backward(&mut be, state).unwrap();
    let loss = be.read_f32(&losses).unwrap().iter().sum::<f32>() / (B * T) as f32;
    let grads = model
        .weights
        .all_params()
        .iter()
        .map(|p| be.read_f32(p.grad()).unwrap())
        .collect();
    (loss, grads)
}

fn assert_same_grads(what: &str, a: &(f32, Vec<Vec<f32>>), b: &(f32, Vec<Vec<f32>>)) {
    assert!((a.0 - b.0).abs() < 1e-5, "{what}: loss {} vs {}", a.0, b.0);
    let scale = a.1.iter().flatten().fold(0f32, |m, &x| m.max(x.abs()));
    for (i, (x, y)) in a.1.iter().zip(&b.1).enumerate() {
        for (j, (p, q)) in x.iter().zip(y).enumerate() {
            assert!(
                (p - q).abs() <= 1e-4 * scale,
                "{what}: grad {i}[{j}] {p} vs {q} (scale {scale})"
            );
        }
    }
}

#[test]
fn loss_decreases_on_a_fixed_batch() {
    for cfg in families() {
        for attention in [AttentionKernel::Flash, AttentionKernel::Naive] {
            let opts = Options {
                attention,
                ..Options::default()
            };
            let mut be = CpuBackend::new();
            let model = Transformer::new(&mut be, &cfg, opts, true).unwrap();
            model.init_weights(&mut be, 3).unwrap();
            let mut curve = vec![];
            for step in 1..=8 {
                let (tokens, targets) = model.alloc_inputs(&mut be, B, T, true).unwrap();
                let targets = targets.unwrap();
                be.write_i32(&tokens, &batch(1, B * T, cfg.vocab_size))
                    .unwrap();
                be.write_i32(&targets, &batch(2, B * T, cfg.vocab_size))
                    .unwrap();
                let hyper = AdamWParams {
                    lr: 1e-2,
                    step,
                    ..AdamWParams::default()
                };
                let losses = model.train_step(&mut be, tokens, targets, hyper).unwrap();
                curve.push(be.read_f32(&losses).unwrap().iter().sum::<f32>() / (B * T) as f32);
                be.free(losses);
            }
            // ln(50) ≈ 3.9 at initialisation; a fixed batch is memorised quickly.
            assert!(
                (curve[0] - (50f32).ln()).abs() < 0.5,
                "{}: initial loss {curve:?}",
                cfg.name
            );
            assert!(
                curve[7] < curve[0] - 0.5,
                "{} {attention:?}: loss {curve:?}",
                cfg.name
            );
            model.free(&mut be);
            // Everything the schedule allocated was freed.
            assert_eq!(be.ledger().total_bytes_in_use(), 0, "{}", cfg.name);
        }
    }
}

#[test]
fn recompute_policies_give_the_same_gradients() {
    for cfg in families() {
        for attention in [AttentionKernel::Flash, AttentionKernel::Naive] {
            let base = Options {
                attention,
                ..Options::default()
            };
            let none = gradients(&cfg, base);
            for recompute in [Recompute::Selective, Recompute::Full] {
                let other = gradients(&cfg, Options { recompute, ..base });
                assert_same_grads(
                    &format!("{} {attention:?} {recompute:?}", cfg.name),
                    &none,
                    &other,
                );
            }
        }
    }
}

#[test]
fn fused_and_unfused_agree_and_flash_matches_naive() {
    for cfg in families() {
        let fused = gradients(&cfg, Options::default());
        let unfused = gradients(
            &cfg,
            Options {
                fused: false,
                ..Options::default()
            },
        );
        assert_same_grads(&format!("{} fused/unfused", cfg.name), &fused, &unfused);
        let naive = gradients(
            &cfg,
            Options {
                attention: AttentionKernel::Naive,
                ..Options::default()
            },
        );
        assert_same_grads(&format!("{} flash/naive", cfg.name), &fused, &naive);
    }
}

/// Last-position logits of `tokens` (B, len) by a full recompute.
fn full_logits(be: &mut CpuBackend, model: &Transformer, tokens: &[i32], len: usize) -> Vec<f32> {
    let t = alloc_step_tokens(be, B, len).unwrap();
    be.write_i32(&t, tokens).unwrap();
    let logits = model.step_logits(be, t, None).unwrap();
    let out = be.read_f32(&logits).unwrap();
    be.free(logits);
    out
}

#[test]
fn kv_cache_decoding_matches_full_recompute() {
    for cfg in families() {
        for attention in [AttentionKernel::Flash, AttentionKernel::Naive] {
            let opts = Options {
                attention,
                ..Options::default()
            };
            let mut be = CpuBackend::new();
            let model = Transformer::new(&mut be, &cfg, opts, false).unwrap();
            model.init_weights(&mut be, 5).unwrap();
            let total = 7;
            let seqs = batch(9, B * total, cfg.vocab_size);
            let prefix = |len: usize| -> Vec<i32> {
                (0..B)
                    .flat_map(|b| seqs[b * total..b * total + len].to_vec())
                    .collect()
            };
            let mut cache = model.alloc_kv_cache(&mut be, B, 10).unwrap();
            let (p0, mut steps) = (4, vec![]);
            let t = alloc_step_tokens(&mut be, B, p0).unwrap();
            be.write_i32(&t, &prefix(p0)).unwrap();
            let logits = model.step_logits(&mut be, t, Some(&mut cache)).unwrap();
            steps.push((p0, be.read_f32(&logits).unwrap()));
            be.free(logits);
            for len in p0 + 1..=total {
                let t = alloc_step_tokens(&mut be, B, 1).unwrap();
                let next: Vec<i32> = (0..B).map(|b| seqs[b * total + len - 1]).collect();
                be.write_i32(&t, &next).unwrap();
                let logits = model.step_logits(&mut be, t, Some(&mut cache)).unwrap();
                steps.push((len, be.read_f32(&logits).unwrap()));
                be.free(logits);
            }
            assert_eq!(cache.len, total);
            for (len, cached) in steps {
                let full = full_logits(&mut be, &model, &prefix(len), len);
                for (x, y) in cached.iter().zip(&full) {
                    assert!(
                        (x - y).abs() < 1e-4,
                        "{} {attention:?} len {len}: {x} vs {y}",
                        cfg.name
                    );
                }
            }
            // A decode past the cache's capacity is an error, not a panic.
            let mut small = model.alloc_kv_cache(&mut be, B, 2).unwrap();
            let t = alloc_step_tokens(&mut be, B, 3).unwrap();
            be.write_i32(&t, &prefix(3)).unwrap();
            assert!(model.step_logits(&mut be, t, Some(&mut small)).is_err());
        }
    }
}

#[test]
fn generate_samples_greedily_and_rejects_bad_token_ids() {
    let cfg = tiny("gpt2");
    let mut be = CpuBackend::new();
    let model = Transformer::new(&mut be, &cfg, Options::default(), false).unwrap();
    model.init_weights(&mut be, 5).unwrap();
    let prompt = batch(4, B * 3, cfg.vocab_size);
    let logits = full_logits(&mut be, &model, &prompt, 3);
    let mut cache = model.alloc_kv_cache(&mut be, B, 8).unwrap();
    let t = alloc_step_tokens(&mut be, B, 3).unwrap();
    be.write_i32(&t, &prompt).unwrap();
    let greedy = tperf_core::ops::sampling::Sampling {
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
    };
    let next = model.generate_step(&mut be, t, &mut cache, greedy).unwrap();
    let next = be.read_f32(&next).unwrap();
    for b in 0..B {
        let row = &logits[b * cfg.vocab_size..(b + 1) * cfg.vocab_size];
        let argmax = (0..row.len()).fold(0, |m, j| if row[j] > row[m] { j } else { m });
        assert_eq!(next[b] as usize, argmax);
    }
    let t = alloc_step_tokens(&mut be, B, 1).unwrap();
    be.write_i32(&t, &[3, cfg.vocab_size as i32]).unwrap();
    let err = model
        .generate_step(&mut be, t, &mut cache, greedy)
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}

#[test]
fn bf16_training_runs_and_learns() {
    let cfg = tiny("small");
    let opts = Options {
        precision: tperf_core::schedule::Precision::Bf16,
        ..Options::default()
    };
    let mut be = CpuBackend::new();
    let model = Transformer::new(&mut be, &cfg, opts, true).unwrap();
    model.init_weights(&mut be, 3).unwrap();
    let mut curve = vec![];
    for step in 1..=8 {
        let (tokens, targets) = model.alloc_inputs(&mut be, B, T, true).unwrap();
        let targets = targets.unwrap();
        be.write_i32(&tokens, &batch(1, B * T, cfg.vocab_size))
            .unwrap();
        be.write_i32(&targets, &batch(2, B * T, cfg.vocab_size))
            .unwrap();
        let hyper = AdamWParams {
            lr: 1e-2,
            step,
            ..AdamWParams::default()
        };
        let losses = model.train_step(&mut be, tokens, targets, hyper).unwrap();
        curve.push(be.read_f32(&losses).unwrap().iter().sum::<f32>() / (B * T) as f32);
        be.free(losses);
    }
    assert!(curve[7] < curve[0] - 0.5, "bf16 loss {curve:?}");
    // The weight copies hold bf16 values.
    let copy = model.weights.layers[0].qkv.copy.as_ref().unwrap();
    for x in be.read_f32(copy).unwrap() {
        assert_eq!(x, half::bf16::from_f32(x).to_f32());
    }
}

#[test]
fn fp16_training_with_loss_scaling_learns() {
    use tperf_core::schedule::{Precision, FP16_LOSS_SCALE};
    let cfg = tiny("small");
    let opts = Options {
        precision: Precision::Fp16,
        ..Options::default()
    };
    // The weight gradients carry the loss scale: S times the fp32 gradients, to f16 storage's
    // rounding of the activations and their gradients (a relative 2⁻¹¹ per value; about 1e-3 of
    // the largest gradient after this model's whole backward, checked at 1e-2).
    let (loss16, grads16) = gradients(&cfg, opts);
    let (loss32, grads32) = gradients(&cfg, Options::default());
    assert!((loss16 - loss32).abs() < 1e-2, "loss {loss16} vs {loss32}");
    let scale = grads32.iter().flatten().fold(0f32, |m, &x| m.max(x.abs()));
    let s = FP16_LOSS_SCALE as f32;
    for (i, (a, b)) in grads16.iter().zip(&grads32).enumerate() {
        for (j, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x / s - y).abs() <= 1e-2 * scale,
                "grad {i}[{j}]: fp16 {x} / S vs fp32 {y} (scale {scale})"
            );
        }
    }

    let mut be = CpuBackend::new();
    let model = Transformer::new(&mut be, &cfg, opts, true).unwrap();
    model.init_weights(&mut be, 3).unwrap();
    let mut curve = vec![];
    for step in 1..=8 {
        let (tokens, targets) = model.alloc_inputs(&mut be, B, T, true).unwrap();
        let targets = targets.unwrap();
        be.write_i32(&tokens, &batch(1, B * T, cfg.vocab_size))
            .unwrap();
        be.write_i32(&targets, &batch(2, B * T, cfg.vocab_size))
            .unwrap();
        let hyper = AdamWParams {
            lr: 1e-2,
            step,
            ..AdamWParams::default()
        };
        let losses = model.train_step(&mut be, tokens, targets, hyper).unwrap();
        curve.push(be.read_f32(&losses).unwrap().iter().sum::<f32>() / (B * T) as f32);
        be.free(losses);
    }
    assert!(curve.iter().all(|l| l.is_finite()), "fp16 loss {curve:?}");
    assert!(curve[7] < curve[0] - 0.5, "fp16 loss {curve:?}");
    // The weight copies hold f16 values.
    let copy = model.weights.layers[0].qkv.copy.as_ref().unwrap();
    for x in be.read_f32(copy).unwrap() {
        assert_eq!(x, half::f16::from_f32(x).to_f32());
    }
    model.free(&mut be);
    assert_eq!(be.ledger().total_bytes_in_use(), 0);
}
