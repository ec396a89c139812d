//! 16-bit weight storage (issue 16): a bf16/f16 weight stored in 16 bits holds the values the
//! f32 emulation held, so every result is bit for bit the same as on a backend that keeps the
//! weights in f32 rounded to their dtype (`CpuBackend::with_weights_in_f32`, the storage before),
//! while the weights take half the host memory and the ledger counts what is really held.

use tperf_core::backend::Backend;
use tperf_core::config::ModelConfig;
use tperf_core::ops::adamw::AdamWParams;
use tperf_core::presets;
use tperf_core::rng::Rng;
use tperf_core::schedule::{alloc_step_tokens, Options, Precision, Transformer};
use tperf_cpu::CpuBackend;

const B: usize = 2;
const T: usize = 8;

/// A Llama-style ("small": RMSNorm, RoPE, SwiGLU, grouped KV heads) or GPT-2-style (learned
/// positions, LayerNorm with biases, GELU) model of a few thousand parameters.
fn tiny(preset: &str) -> ModelConfig {
    let mut cfg = presets::find(preset).expect("preset exists").config;
    cfg.vocab_size = 50;
    cfg.context = 16;
    cfg.d_model = 32;
    cfg.d_ff = 48;
    cfg.n_layers = 2;
    let cfg = cfg.with_heads(4, 2).expect("4 heads divide 32");
    cfg.validate().expect("tiny config is valid");
    cfg
}

fn tokens(seed: u64, len: usize, vocab: usize) -> Vec<i32> {
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|_| (rng.next_u64() % vocab as u64) as i32)
        .collect()
}

fn assert_bits_equal(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}[{i}]: 16-bit storage {g} vs f32 storage {w}"
        );
    }
}

/// Logits of a full forward over (B, T) tokens, then of a prefill of 5 and one decode step
/// through the KV cache, on `be`.
fn inference_logits(be: &mut CpuBackend, cfg: &ModelConfig, precision: Precision) -> Vec<f32> {
    let opts = Options {
        precision,
        ..Options::default()
    };
    let model = Transformer::new(be, cfg, opts, false).unwrap();
    model.init_weights(be, 11).unwrap();
    let mut out = vec![];
    let t = alloc_step_tokens(be, B, T).unwrap();
    be.write_i32(&t, &tokens(1, B * T, cfg.vocab_size)).unwrap();
    let logits = model.step_logits(be, t, None).unwrap();
    out.extend(be.read_f32(&logits).unwrap());
    be.free(logits);

    let mut cache = model.alloc_kv_cache(be, B, 8).unwrap();
    let t = alloc_step_tokens(be, B, 5).unwrap();
    be.write_i32(&t, &tokens(2, B * 5, cfg.vocab_size)).unwrap();
    let logits = model.step_logits(be, t, Some(&mut cache)).unwrap();
    out.extend(be.read_f32(&logits).unwrap());
    be.free(logits);
    let t = alloc_step_tokens(be, B, 1).unwrap();
    be.write_i32(&t, &tokens(3, B, cfg.vocab_size)).unwrap();
    let logits = model.step_logits(be, t, Some(&mut cache)).unwrap();
    out.extend(be.read_f32(&logits).unwrap());
    be.free(logits);
    model.free_kv_cache(be, cache);
    model.free(be);
    out
}

#[test]
fn bf16_and_fp16_inference_logits_are_bit_identical_to_f32_storage() {
    for preset in ["small", "gpt2"] {
        let cfg = tiny(preset);
        for precision in [Precision::Bf16, Precision::Fp16] {
            let what = format!("{preset} {precision:?}");
            let mut stored_16bit = CpuBackend::new();
            let mut stored_f32 = CpuBackend::with_weights_in_f32();
            let got = inference_logits(&mut stored_16bit, &cfg, precision);
            let want = inference_logits(&mut stored_f32, &cfg, precision);
            assert!(got.iter().all(|x| x.is_finite()), "{what}: logits {got:?}");
            assert_bits_equal(&format!("{what} logits"), &got, &want);
            assert_eq!(stored_16bit.storage_bytes(), 0, "{what}: all freed");
        }
    }
}

#[test]
fn bf16_weights_take_two_bytes_and_the_ledger_counts_what_is_held() {
    let cfg = tiny("small");
    let opts = Options {
        precision: Precision::Bf16,
        ..Options::default()
    };
    let mut stored_16bit = CpuBackend::new();
    let mut stored_f32 = CpuBackend::with_weights_in_f32();
    let model = Transformer::new(&mut stored_16bit, &cfg, opts, false).unwrap();
    let _reference = Transformer::new(&mut stored_f32, &cfg, opts, false).unwrap();
    let params: u64 = model.weights.all_params().iter().map(|p| p.numel()).sum();
    // Only the weights are allocated: the ledger (dtype widths) and the storage agree.
    assert_eq!(stored_16bit.storage_bytes(), 2 * params);
    assert_eq!(
        stored_16bit.storage_bytes(),
        stored_16bit.ledger().total_bytes_in_use()
    );
    assert_eq!(stored_f32.storage_bytes(), 4 * params);
}

/// Losses of 3 mixed-precision training steps, then every parameter's master weight and its
/// low-precision copy.
fn train_steps(be: &mut CpuBackend, cfg: &ModelConfig, precision: Precision) -> Vec<Vec<f32>> {
    let opts = Options {
        precision,
        ..Options::default()
    };
    let model = Transformer::new(be, cfg, opts, true).unwrap();
    model.init_weights(be, 3).unwrap();
    let mut losses = vec![];
    for step in 1..=3 {
        let (t, targets) = model.alloc_inputs(be, B, T, true).unwrap();
        let targets = targets.unwrap();
        be.write_i32(&t, &tokens(step, B * T, cfg.vocab_size))
            .unwrap();
        be.write_i32(&targets, &tokens(100 + step, B * T, cfg.vocab_size))
            .unwrap();
        let hyper = AdamWParams {
            lr: 1e-2,
            step,
            ..AdamWParams::default()
        };
        let l = model.train_step(be, t, targets, hyper).unwrap();
        losses.extend(be.read_f32(&l).unwrap());
        be.free(l);
    }
    let mut out = vec![losses];
    for p in model.weights.all_params() {
        out.push(be.read_f32(&p.master).unwrap());
        let copy = p.copy.as_ref().expect("a mixed policy keeps a copy");
        out.push(be.read_f32(copy).unwrap());
    }
    out
}

#[test]
fn mixed_precision_training_is_bit_identical_to_f32_storage() {
    let cfg = tiny("small");
    for precision in [Precision::Bf16, Precision::Fp16] {
        let got = train_steps(&mut CpuBackend::new(), &cfg, precision);
        let want = train_steps(&mut CpuBackend::with_weights_in_f32(), &cfg, precision);
        assert_eq!(got.len(), want.len());
        assert!(got[0].iter().all(|x| x.is_finite()), "losses {:?}", got[0]);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let what = match i {
                0 => "losses".to_string(),
                i if i % 2 == 1 => format!("master {}", i / 2),
                i => format!("copy {}", i / 2 - 1),
            };
            assert_bits_equal(&format!("{precision:?} {what}"), g, w);
        }
    }
}
