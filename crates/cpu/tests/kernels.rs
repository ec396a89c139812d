//! Every fast kernel against its op's reference implementation (tperf_core::ops), in f32, on
//! random inputs across edge shapes: 1, odd, prime and larger sizes, B = 1, T = 1.
//!
//! Tolerance (f32): |fast − reference| ≤ 1e-4·(1 + |reference|) for rows and elementwise ops,
//! ≤ 1e-4·(1 + k) ·max|input|² for products whose reduction of length k the fast kernel sums in
//! a different order (gemm's blocking, the online softmax).

use tperf_core::config::RopeScaling;
use tperf_core::ops::activation::{self, ActivationKind};
use tperf_core::ops::attention::{self, Attention, KvSource};
use tperf_core::ops::cross_entropy::{self, CrossEntropy};
use tperf_core::ops::embedding::{self, Embedding, PositionTable};
use tperf_core::ops::flash_attention;
use tperf_core::ops::layernorm::{self, LayerNorm};
use tperf_core::ops::matmul::{self, Matmul};
use tperf_core::ops::rmsnorm::{self, RmsNorm};
use tperf_core::ops::rope::{self, Rope};
use tperf_core::ops::swiglu::{self, SwiGlu};
use tperf_core::ops::{adamw, residual};
use tperf_core::rng::Rng;
use tperf_cpu::kernels;

fn randn(seed: u64, n: usize) -> Vec<f32> {
    Rng::new(seed).normal_vec(n, 1.0)
}

fn close(what: &str, fast: &[f32], reference: &[f32], tol: f32) {
    assert_eq!(fast.len(), reference.len(), "{what}: length");
    for (i, (a, b)) in fast.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}[{i}]: fast {a} vs reference {b}"
        );
    }
}

const SIZES: [usize; 5] = [1, 2, 7, 13, 67];

#[test]
fn matmul_forward_and_backward() {
    for &m in &SIZES {
        for &(k, n) in &[(1, 1), (3, 5), (17, 13), (64, 31)] {
            for (bias, act, acc) in [
                (false, None, false),
                (true, Some(ActivationKind::Gelu), true),
                (true, None, true),
            ] {
                let mm = Matmul {
                    m,
                    k,
                    n,
                    bias,
                    activation: act,
                    accumulate_dx: acc,
                };
                let (x, w, b) = (randn(1, m * k), randn(2, n * k), randn(3, n));
                let tol = 1e-5 * (1 + k) as f32;
                let (mut pre, mut a) = (vec![0.0; m * n], vec![0.0; m * n]);
                let (mut pre_r, mut a_r) = (pre.clone(), a.clone());
                kernels::matmul::forward(
                    &mm,
                    &x,
                    &w,
                    bias.then_some(&b[..]),
                    &mut pre,
                    Some(&mut a),
                );
                matmul::matmul_forward(
                    &mm,
                    &x,
                    &w,
                    bias.then_some(&b[..]),
                    &mut pre_r,
                    Some(&mut a_r),
                );
                close(&format!("{mm:?} pre"), &pre, &pre_r, tol);
                if act.is_some() {
                    close(&format!("{mm:?} act"), &a, &a_r, tol);
                }
                let dy = randn(4, m * n);
                let dx0 = randn(5, m * k);
                let (mut dx, mut dw, mut db) = (dx0.clone(), vec![9.0; n * k], vec![9.0; n]);
                let (mut dx_r, mut dw_r, mut db_r) = (dx0.clone(), vec![0.0; n * k], vec![0.0; n]);
                let mut scratch = vec![];
                kernels::matmul::backward(
                    &mm,
                    &x,
                    &w,
                    &dy,
                    Some(&pre_r),
                    &mut dx,
                    &mut dw,
                    bias.then_some(&mut db[..]),
                    &mut scratch,
                );
                matmul::matmul_backward(
                    &mm,
                    &x,
                    &w,
                    &dy,
                    Some(&pre_r),
                    &mut dx_r,
                    &mut dw_r,
                    bias.then_some(&mut db_r[..]),
                );
                close(&format!("{mm:?} dx"), &dx, &dx_r, 1e-5 * (1 + n) as f32);
                close(&format!("{mm:?} dW"), &dw, &dw_r, 1e-5 * (1 + m) as f32);
                if bias {
                    close(&format!("{mm:?} db"), &db, &db_r, 1e-5 * (1 + m) as f32);
                }
            }
        }
    }
}

#[test]
fn norms_plain_and_fused() {
    for &n in &SIZES {
        for &c in &[1, 3, 64, 97] {
            let (a, b, g, be) = (randn(1, n * c), randn(2, n * c), randn(3, c), randn(4, c));
            for (residual, accumulate, bias) in [
                (false, false, true),
                (true, true, false),
                (true, false, true),
            ] {
                let ln = LayerNorm {
                    n,
                    c,
                    bias,
                    eps: 1e-5,
                    residual,
                    accumulate,
                };
                let beta = bias.then_some(&be[..]);
                let (mut s, mut y, mut st) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; 2 * n]);
                let (mut s_r, mut y_r, mut st_r) = (s.clone(), y.clone(), st.clone());
                if residual {
                    kernels::layernorm::residual_forward(
                        &ln, &a, &b, &g, beta, &mut s, &mut y, &mut st,
                    );
                    layernorm::residual_layernorm_forward(
                        &ln, &a, &b, &g, beta, &mut s_r, &mut y_r, &mut st_r,
                    );
                    close("ln sum", &s, &s_r, 1e-6);
                } else {
                    kernels::layernorm::forward(&ln, &a, &g, beta, &mut y, &mut st);
                    layernorm::layernorm_forward(&ln, &a, &g, beta, &mut y_r, &mut st_r);
                    s_r = a.clone();
                }
                close(&format!("{ln:?} y"), &y, &y_r, 1e-4);
                close(&format!("{ln:?} stats"), &st, &st_r, 1e-4);
                let dy = randn(5, n * c);
                let (mut dx, mut dg, mut db) = (randn(6, n * c), vec![0.0; c], vec![0.0; c]);
                let (mut dx_r, mut dg_r, mut db_r) = (dx.clone(), dg.clone(), db.clone());
                kernels::layernorm::backward(
                    &ln,
                    &s_r,
                    &st_r,
                    &g,
                    &dy,
                    &mut dx,
                    &mut dg,
                    bias.then_some(&mut db[..]),
                );
                layernorm::layernorm_backward(
                    &ln,
                    &s_r,
                    &st_r,
                    &g,
                    &dy,
                    &mut dx_r,
                    &mut dg_r,
                    bias.then_some(&mut db_r[..]),
                );
                close(&format!("{ln:?} dx"), &dx, &dx_r, 1e-4);
                close(&format!("{ln:?} dγ"), &dg, &dg_r, 1e-4 * n as f32);
                close(&format!("{ln:?} dβ"), &db, &db_r, 1e-4 * n as f32);

                let rn = RmsNorm {
                    n,
                    c,
                    eps: 1e-5,
                    residual,
                    accumulate,
                };
                let (mut y, mut st) = (vec![0.0; n * c], vec![0.0; n]);
                let (mut y_r, mut st_r) = (y.clone(), st.clone());
                if residual {
                    kernels::rmsnorm::residual_forward(&rn, &a, &b, &g, &mut s, &mut y, &mut st);
                    rmsnorm::residual_rmsnorm_forward(
                        &rn, &a, &b, &g, &mut s_r, &mut y_r, &mut st_r,
                    );
                } else {
                    kernels::rmsnorm::forward(&rn, &a, &g, &mut y, &mut st);
                    rmsnorm::rmsnorm_forward(&rn, &a, &g, &mut y_r, &mut st_r);
                }
                close(&format!("{rn:?} y"), &y, &y_r, 1e-4);
                let (mut dx, mut dg) = (randn(6, n * c), vec![0.0; c]);
                let (mut dx_r, mut dg_r) = (dx.clone(), dg.clone());
                kernels::rmsnorm::backward(&rn, &s_r, &st_r, &g, &dy, &mut dx, &mut dg);
                rmsnorm::rmsnorm_backward(&rn, &s_r, &st_r, &g, &dy, &mut dx_r, &mut dg_r);
                close(&format!("{rn:?} dx"), &dx, &dx_r, 1e-4);
                close(&format!("{rn:?} dγ"), &dg, &dg_r, 1e-4 * n as f32);
            }
        }
    }
}

#[test]
fn elementwise_ops() {
    for &n in &[1usize, 7, 1 << 15 | 3] {
        let (x, dy) = (randn(1, n), randn(2, n));
        for kind in [
            ActivationKind::Gelu,
            ActivationKind::Relu,
            ActivationKind::Silu,
        ] {
            let (mut y, mut y_r) = (vec![0.0; n], vec![0.0; n]);
            kernels::activation::forward(kind, &x, &mut y);
            activation::activation_forward(kind, &x, &mut y_r);
            close(kind.name(), &y, &y_r, 1e-6);
            kernels::activation::backward(kind, &x, &dy, &mut y);
            activation::activation_backward(kind, &x, &dy, &mut y_r);
            close(kind.backward_name(), &y, &y_r, 1e-6);
        }
        let (mut y, mut y_r) = (vec![0.0; n], vec![0.0; n]);
        kernels::residual::forward(&x, &dy, &mut y);
        residual::residual_forward(&x, &dy, &mut y_r);
        close("residual", &y, &y_r, 0.0);
    }
    for &(n, f) in &[(1, 1), (3, 7), (13, 64)] {
        let s = SwiGlu { n, f };
        let (h, dy) = (randn(1, 2 * n * f), randn(2, n * f));
        let (mut y, mut y_r) = (vec![0.0; n * f], vec![0.0; n * f]);
        kernels::swiglu::forward(&s, &h, &mut y);
        swiglu::swiglu_forward(&s, &h, &mut y_r);
        close("swiglu", &y, &y_r, 1e-6);
        let (mut dh, mut dh_r) = (vec![0.0; 2 * n * f], vec![0.0; 2 * n * f]);
        kernels::swiglu::backward(&s, &h, &dy, &mut dh);
        swiglu::swiglu_backward(&s, &h, &dy, &mut dh_r);
        close("swiglu_backward", &dh, &dh_r, 1e-6);
        let g = tperf_core::ops::geglu::GeGlu { n, f };
        kernels::geglu::forward(&g, &h, &mut y);
        tperf_core::ops::geglu::geglu_forward(&g, &h, &mut y_r);
        close("geglu", &y, &y_r, 1e-6);
        kernels::geglu::backward(&g, &h, &dy, &mut dh);
        tperf_core::ops::geglu::geglu_backward(&g, &h, &dy, &mut dh_r);
        close("geglu_backward", &dh, &dh_r, 1e-6);
    }
}

#[test]
fn rope_embedding_cross_entropy_adamw() {
    // Llama 3's bands at this size keep the fastest pair, blend the next two (d = 16) and
    // divide the rest; linear divides them all.
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_context: 64,
    };
    let scalings = [
        RopeScaling::None,
        RopeScaling::Linear { factor: 2.0 },
        llama3,
    ];
    let shapes = [(1, 1, 1, 1, 2, 0), (2, 5, 4, 2, 8, 3), (3, 7, 3, 1, 16, 0)];
    for (&(b, t, hq, hkv, d, off), scaling) in shapes
        .iter()
        .flat_map(|s| scalings.iter().map(move |&c| (s, c)))
    {
        let r = Rope {
            b,
            t,
            h_q: hq,
            h_kv: hkv,
            d,
            pos_offset: off,
            per_row: false,
            theta: 10_000.0,
            scaling,
        };
        let x = randn(1, b * t * r.row_width());
        let (mut y, mut y_r) = (x.clone(), x.clone());
        kernels::rope::forward(&r, &mut y);
        rope::rope_forward(&r, &mut y_r);
        close("rope", &y, &y_r, 1e-6);
        kernels::rope::backward(&r, &mut y);
        rope::rope_backward(&r, &mut y_r);
        close("rope_backward", &y, &y_r, 1e-6);
        close("rope round trip", &y, &x, 1e-5);
    }
    for positions in [
        PositionTable::Learned,
        PositionTable::Sinusoidal,
        PositionTable::None,
    ] {
        for &(n, t, c) in &[(1, 1, 1), (6, 3, 5), (14, 7, 32)] {
            let e = Embedding {
                n,
                c,
                vocab: 11,
                t,
                pos_offset: 1,
                per_row: false,
                positions,
                scale: positions == PositionTable::Sinusoidal,
                accumulate: n == 6,
            };
            let tokens: Vec<i32> = (0..n).map(|i| (i * 7 % 11) as i32).collect();
            let (wte, wpe) = (randn(1, 11 * c), randn(2, 16 * c));
            let wpe = (positions == PositionTable::Learned).then_some(&wpe[..]);
            let (mut y, mut y_r) = (vec![0.0; n * c], vec![0.0; n * c]);
            kernels::embedding::forward(&e, &tokens, &wte, wpe, None, &mut y);
            embedding::embedding_forward(&e, &tokens, &wte, wpe, &mut y_r);
            close("embedding", &y, &y_r, 1e-6);
            let dout = randn(3, n * c);
            let (mut dw, mut dp) = (randn(4, 11 * c), vec![1.0; 16 * c]);
            let (mut dw_r, mut dp_r) = (dw.clone(), dp.clone());
            let learned = wpe.is_some();
            kernels::embedding::backward(
                &e,
                &tokens,
                &dout,
                &mut dw,
                learned.then_some(&mut dp[..]),
            );
            embedding::embedding_backward(
                &e,
                &tokens,
                &dout,
                &mut dw_r,
                learned.then_some(&mut dp_r[..]),
            );
            close("embedding_backward dwte", &dw, &dw_r, 1e-6);
            close("embedding_backward dwpe", &dp, &dp_r, 1e-6);
        }
    }
    for &(n, v) in &[(1, 1), (3, 7), (5, 1000)] {
        let ce = CrossEntropy {
            n,
            v,
            grad_scale: 1.0,
        };
        let z = randn(1, n * v);
        let targets: Vec<i32> = (0..n).map(|i| (i * 3 % v) as i32).collect();
        let (mut l, mut l_r) = (vec![0.0; n], vec![0.0; n]);
        kernels::cross_entropy::forward(&ce, &z, &targets, &mut l);
        cross_entropy::cross_entropy_forward(&ce, &z, &targets, &mut l_r);
        close("cross_entropy", &l, &l_r, 1e-5);
        let (mut dz, mut dz_r) = (z.clone(), vec![0.0; n * v]);
        kernels::cross_entropy::backward_in_place(&ce, &mut dz, &targets);
        cross_entropy::cross_entropy_backward(&ce, &z, &targets, &mut dz_r);
        close("cross_entropy_backward", &dz, &dz_r, 1e-6);
        // Loss-scaled: S times the unscaled kernel's output (exactly for a power of two), and
        // the reference's to the same relative tolerance.
        for s in [1024.0, 3.0] {
            let scaled = CrossEntropy {
                grad_scale: s,
                ..ce
            };
            let (mut ds, mut ds_r) = (z.clone(), vec![0.0; n * v]);
            kernels::cross_entropy::backward_in_place(&scaled, &mut ds, &targets);
            cross_entropy::cross_entropy_backward(&scaled, &z, &targets, &mut ds_r);
            let tol = 1e-6 * s as f32;
            close("cross_entropy_backward scaled", &ds, &ds_r, tol);
            let times_s: Vec<f32> = dz.iter().map(|x| x * s as f32).collect();
            if s == 1024.0 {
                assert_eq!(ds, times_s, "S = {s} scales exactly");
            } else {
                close("cross_entropy_backward S×", &ds, &times_s, tol);
            }
        }
    }
    let p = adamw::AdamWParams {
        step: 3,
        ..adamw::AdamWParams::default()
    };
    for &n in &[1usize, 5, 40_000] {
        let g = randn(1, n);
        let (mut th, mut m, mut v) = (
            randn(2, n),
            randn(3, n),
            randn(4, n).iter().map(|x| x * x).collect::<Vec<_>>(),
        );
        let (mut th_r, mut m_r, mut v_r) = (th.clone(), m.clone(), v.clone());
        let mut copy = vec![0.0; n];
        kernels::adamw::update(
            &p,
            true,
            0.5,
            &mut th,
            &g,
            &mut m,
            &mut v,
            Some((&mut copy, tperf_core::dtype::DType::Bf16)),
        );
        adamw::adamw_update(&p, true, 0.5, &mut th_r, &g, &mut m_r, &mut v_r);
        close("adamw θ", &th, &th_r, 1e-6);
        close("adamw m", &m, &m_r, 1e-6);
        close("adamw v", &v, &v_r, 1e-6);
        close("adamw bf16 copy", &copy, &th_r, 1e-2);
    }
}

fn attention_cases() -> Vec<Attention> {
    let mut out = vec![];
    for &(b, h, h_kv, t, d) in &[
        (1, 1, 1, 1, 1),
        (1, 2, 1, 7, 4),
        (2, 4, 2, 13, 8),
        (1, 3, 3, 67, 16),
        (2, 2, 1, 100, 8),
        // Longer than the flash kernel's query tile and key block: several of each, the online
        // softmax rescaling across blocks, and a window that spans a block boundary.
        (1, 4, 2, 300, 12),
    ] {
        let windows = [
            (true, None),
            (false, None),
            (true, Some(5)),
            (true, Some(150)),
        ];
        for (causal, window) in windows {
            out.push(Attention {
                b,
                h,
                h_kv,
                tq: t,
                tk: t,
                d,
                causal,
                window,
                kv_cache: false,
            });
        }
    }
    out
}

#[test]
fn naive_and_flash_attention_against_the_reference() {
    for a in attention_cases() {
        let qkv = randn(1, a.b * a.tq * a.qkv_width());
        let sl = a.b * a.h * a.tq * a.tk;
        let ol = a.b * a.tq * a.h * a.d;
        let tol = 1e-5 * (1 + a.tk + a.d) as f32;
        // Naive forward.
        let (mut s, mut s_r) = (vec![0.0; sl], vec![0.0; sl]);
        kernels::attention::scores_forward(&a, &qkv, KvSource::Qkv, &mut s);
        attention::attn_scores_forward(&a, &qkv, KvSource::Qkv, &mut s_r);
        close(&format!("scores {a:?}"), &s, &s_r, tol);
        let (mut p, mut p_r) = (vec![0.0; sl], vec![0.0; sl]);
        kernels::attention::softmax_forward(&a, &s_r, &mut p);
        attention::attn_softmax_forward(&a, &s_r, &mut p_r);
        close(&format!("softmax {a:?}"), &p, &p_r, 1e-5);
        let (mut o, mut o_r) = (vec![0.0; ol], vec![0.0; ol]);
        kernels::attention::value_forward(&a, &p_r, &qkv, KvSource::Qkv, &mut o);
        attention::attn_value_forward(&a, &p_r, &qkv, KvSource::Qkv, &mut o_r);
        close(&format!("value {a:?}"), &o, &o_r, tol);
        // Naive backward.
        let dout = randn(2, ol);
        let (mut dp, mut dp_r) = (vec![0.0; sl], vec![0.0; sl]);
        let (mut dq, mut dq_r) = (vec![0.0; qkv.len()], vec![0.0; qkv.len()]);
        kernels::attention::value_backward(&a, &dout, &qkv, &p_r, &mut dp, &mut dq);
        attention::attn_value_backward(&a, &dout, &qkv, &p_r, &mut dp_r, &mut dq_r);
        close(&format!("value_backward dP {a:?}"), &dp, &dp_r, tol);
        let (mut ds, mut ds_r) = (vec![0.0; sl], vec![0.0; sl]);
        kernels::attention::softmax_backward(&a, &p_r, &dp_r, &mut ds);
        attention::attn_softmax_backward(&a, &p_r, &dp_r, &mut ds_r);
        close(&format!("softmax_backward {a:?}"), &ds, &ds_r, tol);
        kernels::attention::scores_backward(&a, &ds_r, &qkv, &mut dq);
        attention::attn_scores_backward(&a, &ds_r, &qkv, &mut dq_r);
        close(&format!("naive dqkv {a:?}"), &dq, &dq_r, tol);
        // Flash forward and backward against the reference flash, and against naive.
        let (mut fo, mut fo_r) = (vec![0.0; ol], vec![0.0; ol]);
        let (mut lse, mut lse_r) = (vec![0.0; a.b * a.h * a.tq], vec![0.0; a.b * a.h * a.tq]);
        kernels::flash_attention::forward(&a, &qkv, KvSource::Qkv, &mut fo, &mut lse);
        flash_attention::flash_attention_forward(&a, &qkv, KvSource::Qkv, &mut fo_r, &mut lse_r);
        close(&format!("flash O {a:?}"), &fo, &fo_r, tol);
        close(&format!("flash lse {a:?}"), &lse, &lse_r, tol);
        close(&format!("flash O = naive O {a:?}"), &fo, &o_r, tol);
        let (mut fd, mut fd_r) = (vec![0.0; qkv.len()], vec![0.0; qkv.len()]);
        kernels::flash_attention::backward(&a, &qkv, &fo_r, &dout, &lse_r, &mut fd);
        flash_attention::flash_attention_backward(&a, &qkv, &fo_r, &dout, &lse_r, &mut fd_r);
        close(&format!("flash dqkv {a:?}"), &fd, &fd_r, tol);
        close(&format!("flash dqkv = naive dqkv {a:?}"), &fd, &dq_r, tol);
    }
}

#[test]
fn attention_from_the_cache() {
    // Decode 1 and prefill 3 query rows against a cache of capacity 20 holding Tk positions.
    for &(tq, tk) in &[(1usize, 1usize), (1, 9), (3, 17)] {
        for window in [None, Some(4)] {
            let a = Attention {
                b: 2,
                h: 4,
                h_kv: 2,
                tq,
                tk,
                d: 8,
                causal: true,
                window,
                kv_cache: true,
            };
            let cap = 20;
            let qkv = randn(1, a.b * tq * a.qkv_width());
            let (kc, vc) = (
                randn(2, a.b * a.h_kv * cap * a.d),
                randn(3, a.b * a.h_kv * cap * a.d),
            );
            let src = KvSource::Cache {
                k: &kc,
                v: &vc,
                capacity: cap,
            };
            let tol = 1e-5 * (1 + tk + a.d) as f32;
            let sl = a.b * a.h * tq * tk;
            let (mut s, mut s_r) = (vec![0.0; sl], vec![0.0; sl]);
            kernels::attention::scores_forward(&a, &qkv, src, &mut s);
            attention::attn_scores_forward(&a, &qkv, src, &mut s_r);
            close("cached scores", &s, &s_r, tol);
            let mut p = vec![0.0; sl];
            attention::attn_softmax_forward(&a, &s_r, &mut p);
            let ol = a.b * tq * a.h * a.d;
            let (mut o, mut o_r) = (vec![0.0; ol], vec![0.0; ol]);
            kernels::attention::value_forward(&a, &p, &qkv, src, &mut o);
            attention::attn_value_forward(&a, &p, &qkv, src, &mut o_r);
            close("cached value", &o, &o_r, tol);
            let (mut fo, mut lse) = (vec![0.0; ol], vec![0.0; a.b * a.h * tq]);
            kernels::flash_attention::forward(&a, &qkv, src, &mut fo, &mut lse);
            close("cached flash", &fo, &o_r, tol);
        }
    }
}
