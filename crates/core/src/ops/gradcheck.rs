//! Gradient checks: every reference backward against central finite differences of its reference
//! forward, both evaluated in f64.
//!
//! Each check differentiates the scalar L = Σ w ⊙ f(x) for fixed random weights w (so the
//! upstream gradient is w) with step h = 1e-5: the truncation error is O(h²) ≈ 1e-10 and the
//! rounding error ≈ ε·|L|/h ≈ 1e-10, so an analytic gradient must agree with the difference to
//! within 1e-6·max(1, |fd|) — far below what a wrong formula (an error of order 1e-2 or more)
//! produces.

use super::activation::*;
use super::adamw::*;
use super::attention::*;
use super::cross_entropy::*;
use super::embedding::*;
use super::flash_attention::*;
use super::layernorm::*;
use super::matmul::*;
use super::rmsnorm::*;
use super::rope::*;
use super::swiglu::*;
use crate::rng::Rng;

const H: f64 = 1e-5;
const TOL: f64 = 1e-6;

fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

fn weighted(w: &[f64], y: &[f64]) -> f64 {
    w.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Compares `grad` with the central difference of `loss` at `x`, element by element.
fn check(what: &str, x: &[f64], grad: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), grad.len(), "{what}: gradient length");
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + H;
        let up = loss(&xp);
        xp[i] = x[i] - H;
        let down = loss(&xp);
        xp[i] = x[i];
        let fd = (up - down) / (2.0 * H);
        let err = (fd - grad[i]).abs();
        assert!(
            err <= TOL * fd.abs().max(1.0),
            "{what}[{i}]: analytic {} vs finite difference {fd} (error {err:e})",
            grad[i]
        );
    }
}

#[test]
fn activations() {
    let mut rng = Rng::new(1);
    for kind in [
        ActivationKind::Gelu,
        ActivationKind::Relu,
        ActivationKind::Silu,
    ] {
        // Keep clear of ReLU's kink, where the difference quotient straddles two slopes.
        let x: Vec<f64> = randn(&mut rng, 64)
            .into_iter()
            .map(|v| if v.abs() < 1e-3 { 0.5 } else { v * 2.0 })
            .collect();
        let w = randn(&mut rng, 64);
        let mut dx = vec![0.0; 64];
        activation_backward(kind, &x, &w, &mut dx);
        check(kind.name(), &x, &dx, |x| {
            let mut y = vec![0.0; 64];
            activation_forward(kind, x, &mut y);
            weighted(&w, &y)
        });
    }
}

#[test]
fn swiglu() {
    let mut rng = Rng::new(2);
    let s = SwiGlu { n: 3, f: 5 };
    let h = randn(&mut rng, 30);
    let w = randn(&mut rng, 15);
    let mut dh = vec![0.0; 30];
    swiglu_backward(&s, &h, &w, &mut dh);
    check("swiglu", &h, &dh, |h| {
        let mut y = vec![0.0; 15];
        swiglu_forward(&s, h, &mut y);
        weighted(&w, &y)
    });
}

#[test]
fn geglu() {
    use super::geglu::{geglu_backward, geglu_forward, GeGlu};
    let mut rng = Rng::new(12);
    let s = GeGlu { n: 3, f: 5 };
    let h = randn(&mut rng, 30);
    let w = randn(&mut rng, 15);
    let mut dh = vec![0.0; 30];
    geglu_backward(&s, &h, &w, &mut dh);
    check("geglu", &h, &dh, |h| {
        let mut y = vec![0.0; 15];
        geglu_forward(&s, h, &mut y);
        weighted(&w, &y)
    });
}

fn matmul_case(activation: Option<ActivationKind>, bias: bool, accumulate_dx: bool) {
    let mut rng = Rng::new(3);
    let (m, k, n) = (4, 5, 3);
    let mm = Matmul {
        m,
        k,
        n,
        bias,
        activation,
        accumulate_dx,
    };
    let x = randn(&mut rng, m * k);
    let wt = randn(&mut rng, n * k);
    let b = randn(&mut rng, n);
    let w = randn(&mut rng, m * n);
    let forward = |x: &[f64], wt: &[f64], b: &[f64]| {
        let (mut pre, mut act) = (vec![0.0; m * n], vec![0.0; m * n]);
        matmul_forward(&mm, x, wt, bias.then_some(b), &mut pre, Some(&mut act));
        weighted(&w, if activation.is_some() { &act } else { &pre })
    };
    let mut pre = vec![0.0; m * n];
    matmul_forward(&mm, &x, &wt, bias.then_some(&b[..]), &mut pre, None);
    let dx0 = randn(&mut rng, m * k);
    let (mut dx, mut dw, mut db) = (dx0.clone(), vec![0.0; n * k], vec![0.0; n]);
    matmul_backward(
        &mm,
        &x,
        &wt,
        &w,
        Some(&pre),
        &mut dx,
        &mut dw,
        bias.then_some(&mut db[..]),
    );
    if accumulate_dx {
        dx.iter_mut().zip(&dx0).for_each(|(d, d0)| *d -= d0);
    }
    let name = mm.name();
    check(&format!("{name} dx"), &x, &dx, |x| forward(x, &wt, &b));
    check(&format!("{name} dW"), &wt, &dw, |wt| forward(&x, wt, &b));
    if bias {
        check(&format!("{name} db"), &b, &db, |b| forward(&x, &wt, b));
    }
}

#[test]
fn matmul_plain_bias_accumulate_and_fused_activations() {
    matmul_case(None, false, false);
    matmul_case(None, true, false);
    matmul_case(None, true, true);
    matmul_case(Some(ActivationKind::Gelu), true, false);
    matmul_case(Some(ActivationKind::Gelu), false, true);
    matmul_case(Some(ActivationKind::Silu), true, false);
}

/// A norm checked through its fused residual form: with s = a + b, ∂L/∂a = ∂L/∂b = ∂L/∂s, so the
/// one backward (on s) is compared against differences in both a and b.
fn norm_case(layer: bool, bias: bool, residual: bool, accumulate: bool) {
    let mut rng = Rng::new(4);
    let (n, c) = (3, 7);
    let a = randn(&mut rng, n * c);
    let b: Vec<f64> = randn(&mut rng, n * c).iter().map(|v| v * 0.5).collect();
    let gamma: Vec<f64> = randn(&mut rng, c).iter().map(|v| 1.0 + 0.3 * v).collect();
    let beta = randn(&mut rng, c);
    let w = randn(&mut rng, n * c);
    let ln = LayerNorm {
        n,
        c,
        bias,
        eps: 1e-5,
        residual,
        accumulate,
    };
    let rn = RmsNorm {
        n,
        c,
        eps: 1e-5,
        residual,
        accumulate,
    };
    let forward =
        |a: &[f64], b: &[f64], gamma: &[f64], beta: &[f64]| -> (Vec<f64>, Vec<f64>, Vec<f64>) {
            let mut s = a.to_vec();
            if residual {
                s.iter_mut().zip(b).for_each(|(s, b)| *s += b);
            }
            let mut y = vec![0.0; n * c];
            let mut stats = vec![0.0; n * 2];
            let (mut s2, mut y2) = (vec![0.0; n * c], vec![0.0; n * c]);
            match (layer, residual) {
                (true, false) => {
                    layernorm_forward(&ln, &s, gamma, bias.then_some(beta), &mut y, &mut stats)
                }
                (false, false) => rmsnorm_forward(&rn, &s, gamma, &mut y, &mut stats),
                (true, true) => residual_layernorm_forward(
                    &ln,
                    a,
                    b,
                    gamma,
                    bias.then_some(beta),
                    &mut s2,
                    &mut y2,
                    &mut stats,
                ),
                (false, true) => {
                    residual_rmsnorm_forward(&rn, a, b, gamma, &mut s2, &mut y2, &mut stats)
                }
            }
            if residual {
                assert_eq!(s, s2, "the fused form writes the residual sum");
                y = y2;
            }
            (s, y, stats)
        };
    let loss = |a: &[f64], b: &[f64], g: &[f64], be: &[f64]| weighted(&w, &forward(a, b, g, be).1);
    let (s, _, stats) = forward(&a, &b, &gamma, &beta);
    let dx0 = randn(&mut rng, n * c);
    let (mut dx, mut dg, mut db) = (dx0.clone(), vec![0.0; c], vec![0.0; c]);
    if layer {
        layernorm_backward(
            &ln,
            &s,
            &stats,
            &gamma,
            &w,
            &mut dx,
            &mut dg,
            bias.then_some(&mut db[..]),
        );
    } else {
        rmsnorm_backward(&rn, &s, &stats, &gamma, &w, &mut dx, &mut dg);
    }
    if accumulate {
        dx.iter_mut().zip(&dx0).for_each(|(d, d0)| *d -= d0);
    }
    let name = if layer { ln.name() } else { rn.name() };
    check(&format!("{name} da"), &a, &dx, |a| {
        loss(a, &b, &gamma, &beta)
    });
    if residual {
        check(&format!("{name} db"), &b, &dx, |b| {
            loss(&a, b, &gamma, &beta)
        });
    }
    check(&format!("{name} dγ"), &gamma, &dg, |g| {
        loss(&a, &b, g, &beta)
    });
    if layer && bias {
        check(&format!("{name} dβ"), &beta, &db, |be| {
            loss(&a, &b, &gamma, be)
        });
    }
}

#[test]
fn layernorm_plain_fused_accumulating() {
    for (bias, residual, accumulate) in [
        (true, false, false),
        (false, false, true),
        (true, true, false),
        (true, true, true),
    ] {
        norm_case(true, bias, residual, accumulate);
    }
}

#[test]
fn rmsnorm_plain_fused_accumulating() {
    for (residual, accumulate) in [(false, false), (false, true), (true, false), (true, true)] {
        norm_case(false, false, residual, accumulate);
    }
}

#[test]
fn embedding_tables() {
    let mut rng = Rng::new(5);
    for (positions, scale, accumulate) in [
        (PositionTable::Learned, false, false),
        (PositionTable::Learned, true, true),
        (PositionTable::Sinusoidal, true, false),
        (PositionTable::None, false, true),
    ] {
        let (b, t, c, vocab) = (2, 3, 4, 5);
        let e = Embedding {
            n: b * t,
            c,
            vocab,
            t,
            pos_offset: 1,
            per_row: false,
            positions,
            scale,
            accumulate,
        };
        let tokens = [0, 3, 3, 4, 1, 0];
        let wte = randn(&mut rng, vocab * c);
        let wpe = randn(&mut rng, 8 * c);
        let w = randn(&mut rng, b * t * c);
        let learned = positions == PositionTable::Learned;
        let loss = |wte: &[f64], wpe: &[f64]| {
            let mut out = vec![0.0; b * t * c];
            embedding_forward(&e, &tokens, wte, learned.then_some(wpe), &mut out);
            weighted(&w, &out)
        };
        let dwte0 = randn(&mut rng, vocab * c);
        let (mut dwte, mut dwpe) = (dwte0.clone(), vec![7.0; 8 * c]);
        embedding_backward(&e, &tokens, &w, &mut dwte, learned.then_some(&mut dwpe[..]));
        if accumulate {
            dwte.iter_mut().zip(&dwte0).for_each(|(d, d0)| *d -= d0);
        }
        check("embedding dwte", &wte, &dwte, |x| loss(x, &wpe));
        if learned {
            check("embedding dwpe", &wpe, &dwpe, |x| loss(&wte, x));
        }
    }
}

#[test]
fn rope_backward_is_the_inverse_rotation() {
    let mut rng = Rng::new(6);
    let r = Rope {
        b: 2,
        t: 3,
        h_q: 2,
        h_kv: 1,
        d: 4,
        pos_offset: 2,
        per_row: false,
        theta: 100.0,
        // Bands that blend one pair and divide the other: the scaled rotation is still
        // inverted exactly by the backward.
        scaling: crate::config::RopeScaling::Llama3 {
            factor: 4.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 64,
        },
    };
    let len = r.b * r.t * r.row_width();
    let x = randn(&mut rng, len);
    let w = randn(&mut rng, len);
    let mut dx = w.clone();
    rope_backward(&r, &mut dx);
    check("rope", &x, &dx, |x| {
        let mut y = x.to_vec();
        rope_forward(&r, &mut y);
        weighted(&w, &y)
    });
}

fn attention_shapes() -> Vec<Attention> {
    let base = Attention {
        b: 2,
        h: 2,
        h_kv: 2,
        tq: 5,
        tk: 5,
        d: 3,
        causal: true,
        window: None,
        kv_cache: false,
    };
    vec![
        base,
        Attention {
            causal: false,
            ..base
        },
        Attention {
            window: Some(2),
            kv_cache: false,
            ..base
        },
        // GQA: four query heads share two key/value heads; MQA: all share one.
        Attention {
            h: 4,
            h_kv: 2,
            window: Some(3),
            kv_cache: false,
            ..base
        },
        Attention {
            h: 3,
            h_kv: 1,
            b: 1,
            ..base
        },
    ]
}

fn naive_attention(a: &Attention, qkv: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let scores_len = a.b * a.h * a.tq * a.tk;
    let (mut s, mut p) = (vec![0.0; scores_len], vec![0.0; scores_len]);
    let mut o = vec![0.0; a.b * a.tq * a.h * a.d];
    attn_scores_forward(a, qkv, KvSource::Qkv, &mut s);
    attn_softmax_forward(a, &s, &mut p);
    attn_value_forward(a, &p, qkv, KvSource::Qkv, &mut o);
    (o, p)
}

#[test]
fn naive_attention_causal_windowed_gqa() {
    let mut rng = Rng::new(7);
    for a in attention_shapes() {
        let qkv = randn(&mut rng, a.b * a.tq * a.qkv_width());
        let (o, p) = naive_attention(&a, &qkv);
        let w = randn(&mut rng, o.len());
        let mut dp = vec![0.0; p.len()];
        let mut ds = vec![0.0; p.len()];
        let mut dqkv = vec![f64::NAN; qkv.len()];
        attn_value_backward(&a, &w, &qkv, &p, &mut dp, &mut dqkv);
        attn_softmax_backward(&a, &p, &dp, &mut ds);
        attn_scores_backward(&a, &ds, &qkv, &mut dqkv);
        check(&format!("naive attention {a:?}"), &qkv, &dqkv, |x| {
            weighted(&w, &naive_attention(&a, x).0)
        });
    }
}

#[test]
fn flash_attention_matches_naive_and_its_backward_checks() {
    let mut rng = Rng::new(8);
    for a in attention_shapes() {
        let qkv = randn(&mut rng, a.b * a.tq * a.qkv_width());
        let flash = |x: &[f64]| {
            let mut o = vec![0.0; a.b * a.tq * a.h * a.d];
            let mut lse = vec![0.0; a.b * a.h * a.tq];
            flash_attention_forward(&a, x, KvSource::Qkv, &mut o, &mut lse);
            (o, lse)
        };
        let (o, lse) = flash(&qkv);
        let (naive, _) = naive_attention(&a, &qkv);
        for (x, y) in o.iter().zip(&naive) {
            assert!((x - y).abs() < 1e-12, "flash {x} vs naive {y} for {a:?}");
        }
        let w = randn(&mut rng, o.len());
        let mut dqkv = vec![0.0; qkv.len()];
        flash_attention_backward(&a, &qkv, &o, &w, &lse, &mut dqkv);
        check(&format!("flash attention {a:?}"), &qkv, &dqkv, |x| {
            weighted(&w, &flash(x).0)
        });
    }
}

#[test]
fn attention_reads_the_cache_like_the_qkv_buffer() {
    // Decoding the last 2 of 5 positions from a cache gives the rows a full pass gives.
    let mut rng = Rng::new(9);
    let full = Attention {
        b: 2,
        h: 4,
        h_kv: 2,
        tq: 5,
        tk: 5,
        d: 3,
        causal: true,
        window: Some(3),
        kv_cache: false,
    };
    let qkv = randn(&mut rng, full.b * full.tq * full.qkv_width());
    let (o_full, _) = naive_attention(&full, &qkv);
    let cap = 7;
    let (mut kc, mut vc) = (
        vec![0.0; full.b * full.h_kv * cap * full.d],
        vec![0.0; full.b * full.h_kv * cap * full.d],
    );
    let append = super::kv_cache::KvAppend {
        b: full.b,
        t_new: full.tk,
        h_kv: full.h_kv,
        d: full.d,
        pos: 0,
    };
    super::kv_cache::kv_append(&append, full.h, cap, &qkv, &mut kc, &mut vc);
    let dec = Attention {
        tq: 2,
        kv_cache: true,
        ..full
    };
    let w = full.qkv_width();
    let q_rows: Vec<f64> = (0..full.b)
        .flat_map(|b| qkv[(b * 5 + 3) * w..(b * 5 + 5) * w].to_vec())
        .collect();
    let src = KvSource::Cache {
        k: &kc,
        v: &vc,
        capacity: cap,
    };
    let mut s = vec![0.0; dec.b * dec.h * dec.tq * dec.tk];
    let mut p = s.clone();
    let mut o = vec![0.0; dec.b * dec.tq * dec.h * dec.d];
    attn_scores_forward(&dec, &q_rows, src, &mut s);
    attn_softmax_forward(&dec, &s, &mut p);
    attn_value_forward(&dec, &p, &q_rows, src, &mut o);
    let (mut of, mut lse) = (vec![0.0; o.len()], vec![0.0; dec.b * dec.h * dec.tq]);
    flash_attention_forward(&dec, &q_rows, src, &mut of, &mut lse);
    let hd = full.h * full.d;
    for b in 0..full.b {
        for i in 0..2 {
            for e in 0..hd {
                let want = o_full[(b * 5 + 3 + i) * hd + e];
                assert!((o[(b * 2 + i) * hd + e] - want).abs() < 1e-12);
                assert!((of[(b * 2 + i) * hd + e] - want).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn cross_entropy_mean_loss() {
    let mut rng = Rng::new(10);
    let ce = CrossEntropy {
        n: 4,
        v: 6,
        grad_scale: 1.0,
    };
    let z = randn(&mut rng, 24);
    let targets = [0, 5, 2, 2];
    let mut dz = vec![0.0; 24];
    cross_entropy_backward(&ce, &z, &targets, &mut dz);
    check("cross_entropy", &z, &dz, |z| {
        let mut losses = vec![0.0; 4];
        cross_entropy_forward(&ce, z, &targets, &mut losses);
        losses.iter().sum::<f64>() / 4.0
    });
    // With a loss scale S the backward is the gradient of S times the mean loss.
    let scaled = CrossEntropy {
        grad_scale: 3.0,
        ..ce
    };
    cross_entropy_backward(&scaled, &z, &targets, &mut dz);
    check("cross_entropy scaled", &z, &dz, |z| {
        let mut losses = vec![0.0; 4];
        cross_entropy_forward(&scaled, z, &targets, &mut losses);
        3.0 * losses.iter().sum::<f64>() / 4.0
    });
}

#[test]
fn scaled_cross_entropy_backward_is_s_times_the_unscaled() {
    let mut rng = Rng::new(11);
    let (n, v) = (5, 9);
    let z = randn(&mut rng, n * v);
    let targets = [8, 0, 3, 3, 1];
    let plain = CrossEntropy {
        n,
        v,
        grad_scale: 1.0,
    };
    let mut d1 = vec![0.0; n * v];
    cross_entropy_backward(&plain, &z, &targets, &mut d1);
    // A power of two scales without rounding (exactly S times), any other S to a rounding.
    for s in [1024.0, 65536.0, 3.0] {
        let ce = CrossEntropy {
            grad_scale: s,
            ..plain
        };
        let mut ds = vec![0.0; n * v];
        cross_entropy_backward(&ce, &z, &targets, &mut ds);
        for (i, (a, b)) in ds.iter().zip(&d1).enumerate() {
            let want = s * b;
            if s == 3.0 {
                assert!(
                    (a - want).abs() <= 1e-15 * want.abs().max(1.0),
                    "S {s} [{i}]"
                );
            } else {
                assert_eq!(*a, want, "S {s} [{i}]");
            }
        }
        // The same in f32, the storage the CPU kernels compute in.
        let z32: Vec<f32> = z.iter().map(|&x| x as f32).collect();
        let (mut a32, mut b32) = (vec![0f32; n * v], vec![0f32; n * v]);
        cross_entropy_backward(&plain, &z32, &targets, &mut b32);
        cross_entropy_backward(&ce, &z32, &targets, &mut a32);
        for (i, (a, b)) in a32.iter().zip(&b32).enumerate() {
            let want = s as f32 * b;
            assert!(
                (a - want).abs() <= 1e-6 * want.abs().max(s as f32 / n as f32),
                "f32 S {s} [{i}]: {a} vs {want}"
            );
        }
    }
}

#[test]
fn adamw_first_step_moves_by_lr_times_sign() {
    // At t = 1 the bias-corrected m̂/√v̂ is g/|g|, so without decay each weight moves by lr
    // against its gradient's sign; with decay it moves λ·lr·θ further.
    let p = AdamWParams {
        lr: 0.01,
        weight_decay: 0.5,
        ..AdamWParams::default()
    };
    let g = [0.3f64, -2.0, 1e-3];
    for decay in [false, true] {
        let mut theta = [1.0, 2.0, -1.0];
        let (mut m, mut v) = ([0.0; 3], [0.0; 3]);
        adamw_update(&p, decay, 1.0, &mut theta, &g, &mut m, &mut v);
        for (i, start) in [1.0f64, 2.0, -1.0].into_iter().enumerate() {
            let wd = if decay { 0.5 * start } else { 0.0 };
            let want = start - 0.01 * (g[i].signum() + wd);
            assert!(
                (theta[i] - want).abs() < 1e-6,
                "{i}: {} vs {want}",
                theta[i]
            );
        }
    }
    assert_eq!(p.clip_scale(0.5), 1.0);
    assert!((p.clip_scale(4.0) - 0.25).abs() < 1e-6);
}

/// AdamW state after `steps` updates of `op` from fixed starting values, the gradients of step k
/// being `grad_scale`·g_k, with `norm` taken as the global norm of what AdamW is given.
fn adamw_run(op: &AdamW, steps: usize) -> [Vec<f32>; 3] {
    let mut rng = Rng::new(21);
    let n = 257;
    let to32 = |x: Vec<f64>| x.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let mut theta = to32(randn(&mut rng, n));
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    for k in 0..steps {
        // Gradients of norm ≈ 0.05·√n ≈ 0.8 and ≈ 8 by turns: unclipped, then clipped at 1.
        let size = if k % 2 == 0 { 0.05 } else { 0.5 };
        let g: Vec<f32> = randn(&mut rng, n)
            .into_iter()
            .map(|x| (size * x) as f32 * op.grad_scale as f32)
            .collect();
        let norm = g.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt() as f32;
        let op = AdamW {
            hyper: AdamWParams {
                step: k as u64 + 1,
                ..op.hyper
            },
            ..*op
        };
        assert!(adamw_step(
            &op,
            f64::from(norm),
            true,
            &mut theta,
            &g,
            &mut m,
            &mut v
        ));
    }
    [theta, m, v]
}

#[test]
fn adamw_with_grad_scale_s_on_s_g_equals_grad_scale_1_on_g() {
    let hyper = AdamWParams {
        lr: 1e-2,
        ..AdamWParams::default()
    };
    for max_grad_norm in [Some(1.0), None] {
        let hyper = AdamWParams {
            max_grad_norm,
            ..hyper
        };
        let plain = AdamW {
            numel: 257,
            hyper,
            grad_scale: 1.0,
            shards: 1,
        };
        let want = adamw_run(&plain, 6);
        for s in [1024.0, 3.0] {
            let got = adamw_run(
                &AdamW {
                    grad_scale: s,
                    shards: 1,
                    ..plain
                },
                6,
            );
            for (what, (a, b)) in ["θ", "m", "v"].iter().zip(got.iter().zip(&want)) {
                let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * scale,
                        "S {s} clip {max_grad_norm:?}: {what}[{i}] {x} vs {y}"
                    );
                }
            }
        }
    }
    // The factor itself: clip(‖g‖/S)/S, and exactly clip_scale for S = 1.
    let op = AdamW {
        numel: 1,
        hyper: AdamWParams::default(),
        grad_scale: 1024.0,
        shards: 1,
    };
    assert_eq!(
        op.grad_factor(4.0 * 1024.0),
        Some(1.0 / (4.0 + 1e-6) / 1024.0)
    );
    assert_eq!(op.grad_factor(0.5 * 1024.0), Some(1.0 / 1024.0));
    let one = AdamW {
        grad_scale: 1.0,
        shards: 1,
        ..op
    };
    assert_eq!(one.grad_factor(4.0), Some(one.hyper.clip_scale(4.0)));
}

#[test]
fn adamw_skips_a_step_whose_scaled_norm_is_not_finite() {
    let g = [1.0f64, f64::INFINITY, -2.0];
    for norm in [f64::INFINITY, f64::NAN] {
        let op = AdamW {
            numel: 3,
            hyper: AdamWParams::default(),
            grad_scale: 1024.0,
            shards: 1,
        };
        let (mut theta, mut m, mut v) = ([1.0, 2.0, 3.0], [0.1; 3], [0.2; 3]);
        assert!(op.skips(norm));
        assert_eq!(op.grad_factor(norm), None);
        assert!(!adamw_step(&op, norm, true, &mut theta, &g, &mut m, &mut v));
        assert_eq!((theta, m, v), ([1.0, 2.0, 3.0], [0.1; 3], [0.2; 3]));
        // Without loss scaling nothing is skipped (the fp32 and bf16 policies behave as before).
        let unscaled = AdamW {
            grad_scale: 1.0,
            shards: 1,
            ..op
        };
        assert!(!unscaled.skips(norm));
        assert!(adamw_step(
            &unscaled, norm, true, &mut theta, &g, &mut m, &mut v
        ));
    }
}

#[test]
fn greedy_sampling_takes_the_argmax_and_top_1_agrees() {
    use super::sampling::{sample, Sample, Sampling};
    let logits = [0.1f32, 3.0, -1.0, 3.0, 0.0, 0.5, 0.2, 0.1];
    let greedy = Sample {
        b: 2,
        v: 4,
        sampling: Sampling {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        },
        per_row: Vec::new(),
    };
    let mut out = [0; 2];
    sample(&greedy, &logits, 0, &mut out);
    assert_eq!(out, [1, 1]);
    let top1 = Sample {
        sampling: Sampling {
            temperature: 1.0,
            top_k: Some(1),
            top_p: None,
            seed: 3,
        },
        ..greedy.clone()
    };
    sample(&top1, &logits, 7, &mut out);
    assert_eq!(out, [1, 1]);
}
