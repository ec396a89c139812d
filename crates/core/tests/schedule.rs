//! The schedule and the cost model, tested like code (STYLE.md principle 3): parameter counts
//! against the closed forms, FLOP totals against 2N / 6N plus attention, memory components
//! against what the Meta backend saw allocated, and invariants over random valid configs.

use proptest::prelude::*;
use tperf_core::config::{ModelConfig, Positions};
use tperf_core::cost::analysis::{self, Scenario, Workload};
use tperf_core::cost::hardware;
use tperf_core::meta::MetaBackend;
use tperf_core::ops::{Op, OpClass, Phase};
use tperf_core::presets;
use tperf_core::schedule::{AttentionKernel, Options, Precision, Recompute, Transformer};
use tperf_core::tensor::MemCategory;

fn tiny(key: &str) -> ModelConfig {
    let mut c = presets::find(key).unwrap().config;
    c.vocab_size = 97;
    c.d_model = 32;
    c.d_ff = 48;
    c.n_layers = 3;
    c.n_heads = 4;
    c.n_kv_heads = 4;
    c.head_dim = 8;
    c.context = 64;
    c
}

fn all_option_combos() -> Vec<Options> {
    let mut out = vec![];
    for precision in [Precision::Fp32, Precision::Bf16] {
        for attention in [AttentionKernel::Naive, AttentionKernel::Flash] {
            for recompute in [Recompute::None, Recompute::Selective, Recompute::Full] {
                for fused in [false, true] {
                    for kv_cache in [false, true] {
                        out.push(Options {
                            precision,
                            attention,
                            kv_cache,
                            recompute,
                            fused,
                            data_parallel: None,
                            grad_accum: 1,
                        });
                    }
                }
            }
        }
    }
    out
}

fn scenario(workload: Workload, batch: usize, seq: usize, opts: Options) -> Scenario {
    Scenario {
        workload,
        batch,
        seq,
        opts,
    }
}

/// Every buffer the schedule allocates is freed exactly once, and no op touches a freed
/// buffer, for every family, workload and option combination. A leak here would be a wrong
/// memory model.
#[test]
fn every_schedule_balances_its_allocations() {
    for key in ["small", "gpt2-124m", "report"] {
        let mut cfg = tiny(key);
        for gqa in [4, 2, 1] {
            cfg.n_kv_heads = gqa;
            for opts in all_option_combos() {
                for workload in [
                    Workload::Train,
                    Workload::Forward,
                    Workload::Prefill,
                    Workload::Decode,
                ] {
                    let sc = scenario(workload, 2, 7, opts);
                    let rec = analysis::record(&cfg, &sc).unwrap();
                    assert!(
                        rec.errors.is_empty(),
                        "{key} {opts:?} {workload:?}: {:?}",
                        rec.errors
                    );
                    let summary = tperf_core::cost::memory::summarize(rec.mem_events());
                    assert!(
                        summary.at_end.is_empty(),
                        "{key} {opts:?} {workload:?} leaks {:?}",
                        summary.at_end
                    );
                }
            }
        }
    }
}

#[test]
fn allocated_parameters_match_the_closed_form() {
    for p in presets::all() {
        let mut be = MetaBackend::new();
        let model = Transformer::new(&mut be, &p.config, Options::default(), false).unwrap();
        let allocated: u64 = model.weights.all_params().iter().map(|p| p.numel()).sum();
        assert_eq!(allocated, p.config.param_count(), "{}", p.key);
    }
}

/// Weights, gradients and AdamW state per parameter: 4 + 4 + 8 = 16 bytes in fp32, and
/// 4 + 2 (bf16 copy) + 4 + 8 = 18 under the mixed policy; inference holds 2 bytes in bf16.
#[test]
fn persistent_memory_per_parameter() {
    let cfg = presets::find("small").unwrap().config;
    let n = cfg.param_count();
    for (precision, training, weights, grads, optimizer) in [
        (Precision::Fp32, true, 4, 4, 8),
        (Precision::Bf16, true, 6, 4, 8),
        (Precision::Bf16, false, 2, 0, 0),
        (Precision::Fp32, false, 4, 0, 0),
    ] {
        let opts = Options {
            precision,
            ..Options::default()
        };
        let mut be = MetaBackend::new();
        Transformer::new(&mut be, &cfg, opts, training).unwrap();
        let s = tperf_core::cost::memory::summarize(be.mem_events());
        let get = |c| s.at_end.get(&c).copied().unwrap_or(0);
        assert_eq!(
            get(MemCategory::Weights),
            weights * n,
            "{precision:?} {training}"
        );
        assert_eq!(get(MemCategory::Gradients), grads * n);
        assert_eq!(get(MemCategory::OptimizerState), optimizer * n);
    }
}

/// Parameters that multiply activations in matmuls: everything but norms, biases and the
/// embedding tables — except that a tied token embedding is also the output layer.
fn matmul_params(cfg: &ModelConfig) -> u64 {
    let (c, v) = (cfg.d_model as u64, cfg.vocab_size as u64);
    let l = cfg.n_layers as u64;
    let per_layer = c * cfg.qkv_dim() as u64
        + cfg.attn_dim() as u64 * c
        + c * cfg.mlp_in_dim() as u64
        + cfg.d_ff as u64 * c;
    l * per_layer + v * c
}

/// Forward FLOPs = 2 × (matmul parameters) per token + attention's 4·D·P per layer, exactly,
/// for the matrix-class ops; the elementwise ops add a few percent on top, bounded here.
/// Convention: causal attention counts the unmasked pairs P = T(T+1)/2 per head.
#[test]
fn forward_flops_match_2n_plus_attention() {
    for key in ["small", "medium", "gpt2-124m", "gpt2-355m", "report"] {
        let p = presets::find(key).unwrap();
        let cfg = p.config;
        let (b, t) = (p.default_batch as u64, p.default_seq as u64);
        let hw = hardware::find("h100-sxm").unwrap();
        let sc = scenario(
            Workload::Forward,
            b as usize,
            t as usize,
            Options::default(),
        );
        let a = analysis::analyze(&cfg, &sc, &hw).unwrap();
        let pairs = b * cfg.n_heads as u64 * t * (t + 1) / 2;
        let attention = cfg.n_layers as u64 * 4 * cfg.head_dim as u64 * pairs;
        let closed = 2 * matmul_params(&cfg) * b * t + attention;
        let matmul_class: u64 = a
            .rows
            .iter()
            .filter(|r| r.class == OpClass::Matmul)
            .map(|r| r.flops)
            .sum();
        // Biases add m·n each and the flash op counts its softmax: both small.
        let rel = matmul_class as f64 / closed as f64 - 1.0;
        assert!(
            (0.0..0.01).contains(&rel),
            "{key}: matmul-class {matmul_class} vs closed form {closed} ({rel:+.4})"
        );
        let all = a.phase_flops(Phase::Forward) as f64 / closed as f64 - 1.0;
        assert!(
            (0.0..0.05).contains(&all),
            "{key}: all forward ops {all:+.4} over the closed form"
        );
    }
}

/// Training ≈ 6N per token + 3× the forward attention (its backward is 2× the forward's
/// products) — Kaplan et al.'s 6N with the attention term counted on the causal half.
#[test]
fn training_flops_match_6n_plus_attention() {
    let cfg = presets::find("small").unwrap().config;
    let (b, t) = (4u64, 256u64);
    let hw = hardware::find("h100-sxm").unwrap();
    let opts = Options {
        attention: AttentionKernel::Naive,
        ..Options::default()
    };
    let a = analysis::analyze(&cfg, &scenario(Workload::Train, 4, 256, opts), &hw).unwrap();
    let pairs = b * cfg.n_heads as u64 * t * (t + 1) / 2;
    let attention = cfg.n_layers as u64 * 4 * cfg.head_dim as u64 * pairs;
    let closed = 6 * matmul_params(&cfg) * b * t + 3 * attention;
    let fwd_bwd = a.phase_flops(Phase::Forward) + a.phase_flops(Phase::Backward);
    let rel = fwd_bwd as f64 / closed as f64 - 1.0;
    assert!(
        (0.0..0.05).contains(&rel),
        "fwd+bwd {fwd_bwd} vs 6N+attention {closed} ({rel:+.4})"
    );
}

/// Full recomputation re-runs each block's forward: the recompute phase equals the blocks'
/// forward FLOPs, and the activation memory at the peak falls.
#[test]
fn full_recompute_trades_flops_for_memory() {
    let cfg = presets::find("small").unwrap().config;
    let hw = hardware::find("h100-sxm").unwrap();
    let run = |recompute| {
        let opts = Options {
            recompute,
            ..Options::default()
        };
        analysis::analyze(&cfg, &scenario(Workload::Train, 4, 256, opts), &hw).unwrap()
    };
    let (none, full) = (run(Recompute::None), run(Recompute::Full));
    let block_forward: u64 = none
        .rows
        .iter()
        .filter(|r| r.phase == Phase::Forward && r.layer.is_some())
        .map(|r| r.flops)
        .sum();
    let recompute = full.phase_flops(Phase::Recompute);
    // The recomputed blocks start from their saved inputs, so the residual add fused into
    // each block's first norm is not redone: C per token per block less.
    let fused_adds = (cfg.n_layers as u64 - 1) * 4 * 256 * cfg.d_model as u64;
    assert_eq!(recompute + fused_adds, block_forward);
    assert!(full.memory.peak_bytes < none.memory.peak_bytes);
}

/// Matmul backward is exactly twice its forward (no bias, no fused activation).
#[test]
fn matmul_backward_is_twice_forward() {
    let cfg = presets::find("small").unwrap().config;
    let rec =
        analysis::record(&cfg, &scenario(Workload::Train, 2, 64, Options::default())).unwrap();
    let mut checked = 0;
    for r in &rec.ops {
        if let Op::MatmulBackward(m) = &r.call.op {
            if !m.bias && m.activation.is_none() && !m.accumulate_dx {
                let fwd = Op::Matmul(*m).cost(&[], &[]).flops;
                assert_eq!(r.cost.flops, 2 * fwd);
                checked += 1;
            }
        }
    }
    assert!(checked >= cfg.n_layers * 3, "checked {checked}");
}

/// The fp16 policy's loss scale reaches the loss backward (which multiplies by it) and every
/// AdamW call (which divides it out); the other policies scale by 1.
#[test]
fn loss_scale_reaches_the_loss_backward_and_adamw() {
    use tperf_core::schedule::FP16_LOSS_SCALE;
    let cfg = tiny("small");
    for precision in [Precision::Fp32, Precision::Bf16, Precision::Fp16] {
        let want = if precision == Precision::Fp16 {
            FP16_LOSS_SCALE
        } else {
            1.0
        };
        assert_eq!(precision.loss_scale(), want);
        for fused in [false, true] {
            let opts = Options {
                precision,
                fused,
                ..Options::default()
            };
            let rec = analysis::record(&cfg, &scenario(Workload::Train, 2, 16, opts)).unwrap();
            let (mut ce, mut adamw) = (0, 0);
            for r in &rec.ops {
                match &r.call.op {
                    Op::CrossEntropyBackward(c) => {
                        assert_eq!(c.grad_scale, want, "{precision:?}");
                        ce += 1;
                    }
                    Op::AdamW(a) => {
                        assert_eq!(a.grad_scale, want, "{precision:?}");
                        adamw += 1;
                    }
                    _ => {}
                }
            }
            assert_eq!((ce, adamw), (1, cfg.n_layers + 1), "{precision:?}");
        }
    }
}

/// KV cache bytes: 2·L·B·T·H_kv·D·width, shrinking with grouped-query attention.
#[test]
fn kv_cache_bytes_for_mha_gqa_mqa() {
    let mut cfg = presets::find("small").unwrap().config;
    let (b, t) = (8usize, 1024usize);
    let opts = Options {
        precision: Precision::Bf16,
        ..Options::default()
    };
    let hw = hardware::find("h100-sxm").unwrap();
    for kv_heads in [12, 4, 1] {
        cfg.n_kv_heads = kv_heads;
        let a = analysis::analyze(&cfg, &scenario(Workload::Decode, b, t, opts), &hw).unwrap();
        let expected = 2 * 12 * b as u64 * t as u64 * kv_heads as u64 * 64 * 2;
        assert_eq!(
            a.memory.at_peak[&MemCategory::KvCache],
            expected,
            "H_kv = {kv_heads}"
        );
        assert_eq!(
            tperf_core::ops::kv_cache::cache_bytes(12, b, t, kv_heads, 64, 2),
            expected
        );
    }
}

/// Roofline: a large bf16 matmul is compute-bound on an H100 and a norm is memory-bound;
/// decoding at batch 1 is memory-bound throughout.
#[test]
fn roofline_boundaries() {
    let cfg = presets::find("small").unwrap().config;
    let hw = hardware::find("h100-sxm").unwrap();
    let opts = Options {
        precision: Precision::Bf16,
        ..Options::default()
    };
    let train = analysis::analyze(&cfg, &scenario(Workload::Train, 8, 1024, opts), &hw).unwrap();
    let qkv = train
        .rows
        .iter()
        .find(|r| r.label == "attn.qkv" && r.phase == Phase::Forward)
        .unwrap();
    assert!(qkv.intensity > hw.ridge_point(tperf_core::dtype::DType::Bf16));
    assert_eq!(qkv.bound, tperf_core::cost::roofline::Bound::Compute);
    let norm = train
        .rows
        .iter()
        .find(|r| r.name.contains("rmsnorm"))
        .unwrap();
    assert_eq!(norm.bound, tperf_core::cost::roofline::Bound::Memory);
    let decode = analysis::analyze(&cfg, &scenario(Workload::Decode, 1, 512, opts), &hw).unwrap();
    assert!(decode
        .rows
        .iter()
        .all(|r| r.bound == tperf_core::cost::roofline::Bound::Memory));
}

fn arb_config() -> impl Strategy<Value = ModelConfig> {
    (
        prop::sample::select(vec!["small", "gpt2-124m", "report"]),
        1usize..6,   // layers
        1usize..5,   // kv heads
        1usize..4,   // group size
        1usize..9,   // head_dim / 2
        1usize..200, // vocab
        1usize..100, // d_ff
        any::<bool>(),
    )
        .prop_map(|(key, layers, kv, group, half_d, vocab, ff, tied)| {
            let mut c = presets::find(key).unwrap().config;
            c.n_layers = layers;
            c.n_kv_heads = kv;
            c.n_heads = kv * group;
            c.head_dim = 2 * half_d;
            c.d_model = c.n_heads * c.head_dim;
            c.vocab_size = vocab;
            c.d_ff = ff;
            c.context = 64;
            c.tied_embeddings = tied;
            if matches!(c.positions, Positions::Rope { .. }) {
                c.sliding_window = if tied { Some(5) } else { None };
            }
            c
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Over random valid configs, options and workloads: totals are the sums of the ops,
    /// nothing is negative, NaN or infinite, every allocation is freed, and every matmul's
    /// backward is twice its forward plus the epilogue terms.
    #[test]
    fn invariants_hold_for_random_configs(
        cfg in arb_config(),
        b in 1usize..4,
        t in 1usize..20,
        opts_index in 0usize..48,
        workload in prop::sample::select(vec![Workload::Train, Workload::Forward, Workload::Prefill, Workload::Decode]),
    ) {
        prop_assert!(cfg.validate().is_ok());
        let opts = all_option_combos()[opts_index];
        let hw = hardware::find("a100-80gb").unwrap();
        let sc = scenario(workload, b, t, opts);
        let rec = analysis::record(&cfg, &sc).unwrap();
        prop_assert!(rec.errors.is_empty(), "{:?}", rec.errors);
        let a = analysis::analyze_record(&cfg, &sc, &hw, &rec);
        let flops: u64 = a.rows.iter().map(|r| r.flops).sum();
        let bytes: u64 = a.rows.iter().map(|r| r.bytes).sum();
        let seconds: f64 = a.rows.iter().map(|r| r.seconds).sum();
        prop_assert_eq!(a.total.flops, flops);
        prop_assert_eq!(a.total.bytes, bytes);
        prop_assert!((a.total.seconds - seconds).abs() <= 1e-12 * seconds.max(1.0));
        let by_phase: u64 = a.by_phase.values().map(|t| t.flops).sum();
        prop_assert_eq!(by_phase, flops);
        for r in &a.rows {
            prop_assert!(r.seconds.is_finite() && r.seconds > 0.0, "{:?}", r);
            prop_assert!(r.intensity.is_finite() && r.intensity >= 0.0);
            prop_assert!(r.bytes > 0, "{} moves no bytes", r.name);
        }
        prop_assert!(a.mfu.is_finite() && a.mfu >= 0.0 && a.mfu <= 1.0);
        prop_assert!(a.memory.at_end.is_empty(), "{:?}", a.memory.at_end);
        for r in &rec.ops {
            if let Op::MatmulBackward(m) = &r.call.op {
                let fwd = Op::Matmul(*m).cost(&[], &[]).flops;
                prop_assert!(r.cost.flops >= 2 * m.product_flops());
                prop_assert!(r.cost.flops <= 2 * fwd + (m.m * m.k) as u64 + 17 * (m.m * m.n) as u64);
            }
        }
    }
}

/// Sizes whose FLOP or byte counts would not fit in 64 bits are refused with an error instead of
/// wrapping silently.
#[test]
fn counts_that_would_overflow_are_refused() {
    let mut cfg = presets::find("small").unwrap().config;
    cfg.context = 1 << 24;
    let sc = scenario(Workload::Train, 1 << 24, 1 << 24, Options::default());
    let Err(err) = analysis::record(&cfg, &sc) else {
        panic!("an overflowing size was accepted");
    };
    let err = err.to_string();
    assert!(err.contains("too large"), "{err}");
    // The largest sizes that are accepted stay well inside u64.
    let ok = scenario(Workload::Train, 1, 1 << 16, Options::default());
    assert!(analysis::record(&cfg, &ok).is_ok());
}

/// `backward` alone on a model that accumulates gradients over K > 1 micro-steps would add an
/// accumulator nothing filled: it is refused with what to call instead, and what the forward
/// left is freed (the ledger ends where it started after the model is freed).
#[test]
fn one_backward_on_an_accumulating_model_is_refused_and_frees_its_state() {
    use tperf_core::backend::BackendError;
    let cfg = tiny("small");
    let mut be = MetaBackend::new();
    let opts = Options {
        grad_accum: 2,
        ..Options::default()
    };
    let model = Transformer::new(&mut be, &cfg, opts, true).unwrap();
    let (tokens, targets) = model.alloc_inputs(&mut be, 2, 7, true).unwrap();
    let state = model
        .forward_train(&mut be, tokens, targets.unwrap())
        .unwrap();
    match model.backward(&mut be, state) {
        Err(BackendError::InvalidInput { label, why, .. }) => {
            assert_eq!(label, "grad_accum");
            assert!(why.contains("backward_micro"), "{why}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    model.free(&mut be);
    assert!(
        !be.mem_events().is_empty(),
        "the Meta backend records allocations"
    );
    let summary = tperf_core::cost::memory::summarize(be.mem_events());
    assert!(summary.at_end.is_empty(), "leaks {:?}", summary.at_end);
}
