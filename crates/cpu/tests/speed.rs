//! Speed probes, ignored by default (they measure, they do not check): run with
//! `cargo test --release -p tperf-cpu --test speed -- --ignored --nocapture`.

use std::time::Instant;
use tperf_core::backend::Backend;
use tperf_core::ops::adamw::AdamWParams;
use tperf_core::ops::matmul::Matmul;
use tperf_core::presets;
use tperf_core::rng::Rng;
use tperf_core::schedule::{Options, Transformer};
use tperf_cpu::{kernels, CpuBackend};

#[test]
#[ignore]
fn matmul_1024_cubed() {
    let n = 1024;
    let mm = Matmul::new(n, n, n, false);
    let (x, w) = (
        Rng::new(1).normal_vec(n * n, 1.0),
        Rng::new(2).normal_vec(n * n, 1.0),
    );
    let mut y = vec![0.0; n * n];
    kernels::matmul::forward(&mm, &x, &w, None, &mut y, None);
    let reps = 10;
    let start = Instant::now();
    for _ in 0..reps {
        kernels::matmul::forward(&mm, &x, &w, None, &mut y, None);
    }
    let s = start.elapsed().as_secs_f64() / reps as f64;
    println!(
        "matmul 1024³ (x·Wᵀ): {:.2} ms, {:.1} GFLOP/s on {} threads",
        s * 1e3,
        mm.product_flops() as f64 / s / 1e9,
        rayon::current_num_threads()
    );
}

#[test]
#[ignore]
fn gpt2_style_train_step() {
    let mut cfg = presets::find("gpt2").unwrap().config;
    cfg.vocab_size = 4096;
    cfg.context = 128;
    cfg.d_model = 256;
    cfg.d_ff = 1024;
    cfg.n_layers = 4;
    let cfg = cfg.with_heads(4, 4).unwrap();
    let (b, t) = (4, 128);
    let mut be = CpuBackend::new();
    let model = Transformer::new(&mut be, &cfg, Options::default(), true).unwrap();
    model.init_weights(&mut be, 0).unwrap();
    let mut rng = Rng::new(3);
    let ids: Vec<i32> = (0..b * t).map(|_| (rng.next_u64() % 4096) as i32).collect();
    let mut times = vec![];
    for step in 1..=6 {
        let (tokens, targets) = model.alloc_inputs(&mut be, b, t, true).unwrap();
        let targets = targets.unwrap();
        be.write_i32(&tokens, &ids).unwrap();
        be.write_i32(&targets, &ids).unwrap();
        let start = Instant::now();
        let hyper = AdamWParams {
            step,
            ..AdamWParams::default()
        };
        let losses = model.train_step(&mut be, tokens, targets, hyper).unwrap();
        times.push(start.elapsed().as_secs_f64());
        be.free(losses);
    }
    let mean = times[1..].iter().sum::<f64>() / (times.len() - 1) as f64;
    let flops = 6.0 * cfg.param_count() as f64 * (b * t) as f64;
    println!(
        "gpt2-style {} params, B={b} T={t}: {:.1} ms/step (6N·BT ≈ {:.1} GFLOP/s), peak {:.1} MiB",
        cfg.param_count(),
        mean * 1e3,
        flops / mean / 1e9,
        be.ledger().peak_bytes() as f64 / (1 << 20) as f64
    );
}

/// Median seconds of `f` over at least 3 runs and at least ~1 s in all, after one warm-up run.
fn median_secs(mut f: impl FnMut()) -> f64 {
    f();
    let (mut times, start) = (vec![], Instant::now());
    while times.len() < 3 || (times.len() < 50 && start.elapsed().as_secs_f64() < 1.0) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Flash attention (forward, backward) against the three naive ops on the same shapes:
/// B=1, H=12, D=64, causal, T from `TPERF_ATTN_T` (comma-separated; default 128,512,2048).
#[test]
#[ignore]
fn flash_vs_naive_attention() {
    use tperf_core::ops::attention::{Attention, KvSource};
    use tperf_core::ops::flash_attention::{backward_flops, forward_flops};
    let ts: Vec<usize> = std::env::var("TPERF_ATTN_T")
        .unwrap_or_else(|_| "128,512,2048".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let naive = std::env::var("TPERF_ATTN_NAIVE").map_or(true, |v| v != "0");
    for t in ts {
        let a = Attention {
            b: 1,
            h: 12,
            h_kv: 12,
            tq: t,
            tk: t,
            d: 64,
            causal: true,
            window: None,
            kv_cache: false,
        };
        let qkv = Rng::new(1).normal_vec(a.b * a.tq * a.qkv_width(), 1.0);
        let ol = a.b * a.tq * a.h * a.d;
        let dout = Rng::new(2).normal_vec(ol, 1.0);
        let (mut o, mut lse) = (vec![0.0; ol], vec![0.0; a.b * a.h * a.tq]);
        let mut dqkv = vec![0.0; qkv.len()];
        let (ff, bf) = (forward_flops(&a) as f64, backward_flops(&a) as f64);
        let fwd = median_secs(|| {
            kernels::flash_attention::forward(&a, &qkv, KvSource::Qkv, &mut o, &mut lse)
        });
        let bwd = median_secs(|| {
            kernels::flash_attention::backward(&a, &qkv, &o, &dout, &lse, &mut dqkv)
        });
        println!(
            "T={t:5} flash fwd {:9.3} ms ({:6.1} GFLOP/s)  bwd {:9.3} ms ({:6.1} GFLOP/s)",
            fwd * 1e3,
            ff / fwd / 1e9,
            bwd * 1e3,
            bf / bwd / 1e9
        );
        if !naive {
            continue;
        }
        let sl = a.b * a.h * a.tq * a.tk;
        let (mut s, mut p, mut dp, mut ds) =
            (vec![0.0; sl], vec![0.0; sl], vec![0.0; sl], vec![0.0; sl]);
        let fwd = median_secs(|| {
            kernels::attention::scores_forward(&a, &qkv, KvSource::Qkv, &mut s);
            kernels::attention::softmax_forward(&a, &s, &mut p);
            kernels::attention::value_forward(&a, &p, &qkv, KvSource::Qkv, &mut o);
        });
        let bwd = median_secs(|| {
            kernels::attention::value_backward(&a, &dout, &qkv, &p, &mut dp, &mut dqkv);
            kernels::attention::softmax_backward(&a, &p, &dp, &mut ds);
            kernels::attention::scores_backward(&a, &ds, &qkv, &mut dqkv);
        });
        println!(
            "T={t:5} naive fwd {:9.3} ms ({:6.1} GFLOP/s)  bwd {:9.3} ms ({:6.1} GFLOP/s)  [flash FLOPs]",
            fwd * 1e3,
            ff / fwd / 1e9,
            bwd * 1e3,
            bf / bwd / 1e9
        );
    }
}
