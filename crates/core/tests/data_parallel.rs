//! Data-parallel training in the schedule: the collectives it issues on the communication
//! stream, the step time as the critical path over the streams, and memory per GPU under DDP
//! and ZeRO-1.

use tperf_core::backend::Stream;
use tperf_core::cost::analysis::{self, Analysis, Scenario, Workload};
use tperf_core::cost::hardware;
use tperf_core::meta::MetaBackend;
use tperf_core::ops::collective::CollectiveKind;
use tperf_core::ops::{Op, Phase};
use tperf_core::presets;
use tperf_core::schedule::{DataParallel, Options, Precision};
use tperf_core::tensor::MemCategory;

fn train(batch: usize, seq: usize, opts: Options) -> Scenario {
    Scenario {
        workload: Workload::Train,
        batch,
        seq,
        opts,
    }
}

fn with_dp(dp: DataParallel) -> Options {
    Options {
        data_parallel: Some(dp),
        ..Options::default()
    }
}

fn collectives(rec: &MetaBackend) -> Vec<(usize, CollectiveKind, u64)> {
    rec.ops
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.call.op {
            Op::Collective(c) => Some((i, c.kind, c.numel)),
            _ => None,
        })
        .collect()
}

fn analyze(key: &str, sc: &Scenario) -> (MetaBackend, Analysis) {
    let cfg = presets::find(key).unwrap().config;
    let hw = hardware::find("h100-sxm").unwrap();
    let rec = analysis::record(&cfg, sc).unwrap();
    let a = analysis::analyze_record(&cfg, sc, &hw, &rec);
    (rec, a)
}

/// Regression: with one device the step time is the plain sum of the op times, bit for bit, as
/// before streams existed, for every preset and workload; a world of 1 issues nothing.
#[test]
fn one_device_step_time_is_the_plain_sum_for_every_preset() {
    let hw = hardware::find("h100-sxm").unwrap();
    for p in presets::all() {
        for workload in [Workload::Train, Workload::Forward, Workload::Decode] {
            let sc = Scenario {
                workload,
                batch: 1,
                seq: 64,
                opts: Options::default(),
            };
            let a = analysis::analyze(&p.config, &sc, &hw).unwrap();
            let plain = a.rows.iter().fold(0.0, |s, r| s + r.seconds);
            assert_eq!(a.step_seconds(), plain, "{} {}", p.key, workload.name());
            assert_eq!(a.step_seconds(), a.total.seconds);
            assert_eq!(a.timing.exposed_comm_seconds, 0.0);
            assert!(a.timing.single_stream());

            let one = Scenario {
                opts: with_dp(DataParallel::zero1(1)),
                ..sc
            };
            let b = analysis::analyze(&p.config, &one, &hw).unwrap();
            assert_eq!(
                b.rows.len(),
                a.rows.len(),
                "{}: W = 1 issues nothing",
                p.key
            );
            assert_eq!(b.step_seconds(), a.step_seconds());
            assert_eq!(b.memory.peak_bytes, a.memory.peak_bytes);
        }
    }
}

#[test]
fn ddp_all_reduces_every_gradient_once_in_buckets_from_the_last_layer() {
    let cfg = presets::find("gpt2-124m").unwrap().config;
    let sc = train(4, 256, with_dp(DataParallel::ddp(8)));
    let (rec, a) = analyze("gpt2-124m", &sc);
    assert!(rec.errors.is_empty(), "{:?}", rec.errors);
    let cs = collectives(&rec);
    assert!(cs.len() > 3, "{} buckets", cs.len());
    assert!(cs.iter().all(|c| c.1 == CollectiveKind::AllReduce));
    let numel: u64 = cs.iter().map(|c| c.2).sum();
    assert_eq!(numel, cfg.param_count(), "every gradient exactly once");
    // The first bucket closes at 1 MiB, the others at 25 MiB (a bucket holds whole tensors,
    // so it passes its capacity by less than its last tensor).
    assert!(cs[0].2 * 4 >= 1 << 20 && cs[0].2 * 4 < 25 << 20);
    for (i, _, _) in &cs {
        let call = &rec.ops[*i].call;
        assert_eq!(call.stream, Stream::Comm);
        assert_eq!(call.waits, vec![Stream::Compute]);
        assert_eq!(call.phase, Phase::Backward);
    }
    // The first bucket holds the last block's gradients and is issued inside the backward,
    // long before its end; the embedding's gradient goes last.
    let first = &rec.ops[cs[0].0].call;
    assert_eq!(first.layer, Some(cfg.n_layers - 1));
    let last_backward = rec
        .ops
        .iter()
        .rposition(|r| r.call.phase == Phase::Backward && r.call.stream == Stream::Compute)
        .unwrap();
    assert!(cs[0].0 < last_backward / 2);
    assert!(cs.last().unwrap().0 > last_backward);
    // The optimizer's first op waits for the buckets.
    let opt = rec
        .ops
        .iter()
        .find(|r| r.call.phase == Phase::Optimizer)
        .unwrap();
    assert_eq!(opt.call.waits, vec![Stream::Comm]);
    // Nothing else changes: the compute ops and memory are the single-device ones.
    let (one_rec, one) = analyze("gpt2-124m", &train(4, 256, Options::default()));
    assert_eq!(rec.ops.len(), one_rec.ops.len() + cs.len());
    assert_eq!(a.timing.compute_seconds, one.step_seconds());
    assert_eq!(a.memory.peak_bytes, one.memory.peak_bytes);
    // Overlap hides most of the all-reduces but not the last bucket's.
    assert!(a.timing.exposed_comm_seconds > 0.0);
    assert!(a.timing.exposed_comm_seconds < a.timing.comm_seconds);
    assert!(
        (a.step_seconds() - (a.timing.compute_seconds + a.timing.exposed_comm_seconds)).abs()
            < 1e-12
    );
}

#[test]
fn zero1_shards_the_adamw_state_and_reduce_scatters_then_all_gathers() {
    let w = 8;
    for precision in [Precision::Fp32, Precision::Bf16] {
        let opts = |dp| Options {
            precision,
            data_parallel: dp,
            ..Options::default()
        };
        let cfg = presets::find("gpt2-124m").unwrap().config;
        let (rec, a) = analyze(
            "gpt2-124m",
            &train(2, 128, opts(Some(DataParallel::zero1(w)))),
        );
        let (_, ddp) = analyze(
            "gpt2-124m",
            &train(2, 128, opts(Some(DataParallel::ddp(w)))),
        );
        assert!(rec.errors.is_empty(), "{:?}", rec.errors);
        let cs = collectives(&rec);
        let sum = |kind| -> u64 { cs.iter().filter(|c| c.1 == kind).map(|c| c.2).sum() };
        let n = cfg.param_count();
        assert_eq!(sum(CollectiveKind::ReduceScatter), n);
        assert_eq!(sum(CollectiveKind::AllGather), n);
        assert_eq!(sum(CollectiveKind::AllReduce), 1, "the norm's scalar");
        let state = |a: &Analysis| a.memory.max_by_category[&MemCategory::OptimizerState];
        assert_eq!(state(&ddp), 8 * n);
        // Each moment holds ⌈numel/W⌉ of each tensor.
        assert!(state(&a) >= 8 * n / w as u64 && state(&a) < 8 * n / w as u64 + 8 * 1000);
        assert_eq!(
            a.memory.max_by_category[&MemCategory::Gradients],
            ddp.memory.max_by_category[&MemCategory::Gradients]
        );
        assert!(a.memory.peak_bytes < ddp.memory.peak_bytes);
        // AdamW does 1/W of the work and traffic.
        let adamw = |a: &Analysis| -> (u64, u64) {
            a.rows
                .iter()
                .filter(|r| r.name == "adamw")
                .fold((0, 0), |(f, b), r| (f + r.flops, b + r.bytes))
        };
        let (f8, b8) = adamw(&a);
        let (f1, b1) = adamw(&ddp);
        assert!((f8 as f64 / f1 as f64 - 1.0 / w as f64).abs() < 1e-3);
        assert!((b8 as f64 / b1 as f64 - 1.0 / w as f64).abs() < 1e-3);
        // Ring bytes: reduce-scatter plus all-gather move what one all-reduce moves (the
        // all-gather of a bf16 copy half of it).
        let link = |kind| -> u64 {
            cs.iter()
                .filter(|c| c.1 == kind)
                .map(|c| rec.ops[c.0].cost.bytes)
                .sum()
        };
        let width = precision.compute_dtype().size_bytes();
        let one_way = |bytes: u64| bytes * (w as u64 - 1) / w as u64;
        assert!(link(CollectiveKind::ReduceScatter).abs_diff(one_way(4 * n)) < 64);
        assert!(link(CollectiveKind::AllGather).abs_diff(one_way(width * n)) < 64);
    }
}

/// The two cases, on the real schedule: a bucket issued early in the backward is hidden
/// by the rest of it and adds nothing; the last one has nothing left to hide behind.
#[test]
fn hidden_collectives_add_nothing_and_the_rest_add_their_exposed_part() {
    let hw = hardware::find("h100-sxm").unwrap();
    let cfg = presets::find("gpt2-124m").unwrap().config;
    let sc = train(8, 512, with_dp(DataParallel::ddp(2)));
    let rec = analysis::record(&cfg, &sc).unwrap();
    let a = analysis::analyze_record(&cfg, &sc, &hw, &rec);
    let cs = collectives(&rec);
    let end = |i: usize| a.timing.start_seconds[i] + a.rows[i].seconds;
    // Every bucket issued inside the blocks' backward ends before the compute stream reaches
    // the embedding backward, so it adds nothing.
    let embedding = rec
        .ops
        .iter()
        .position(|r| r.call.label == "embedding" && r.call.phase == Phase::Backward)
        .unwrap();
    let (hidden, exposed): (Vec<_>, Vec<_>) = cs.iter().partition(|c| c.0 < embedding);
    assert!(hidden.len() > 3 && !exposed.is_empty());
    for &&(i, _, _) in &hidden {
        assert!(
            end(i) <= a.timing.start_seconds[embedding],
            "bucket at op {i}"
        );
    }
    // The buckets closed by the embedding's gradient (the last one computed) start when the
    // backward is done, and the optimizer waits for them: exactly their time is exposed.
    let tail: f64 = exposed.iter().map(|c| a.rows[c.0].seconds).sum();
    let got = a.timing.exposed_comm_seconds;
    assert!((got - tail).abs() <= 1e-9 * tail, "{got} vs {tail}");
    assert!(got < a.timing.comm_seconds);
}

/// Every gradient is reduced exactly once, after the op that completes it, under every option
/// and family (tied embeddings, learned positions, biases), with buckets small enough that
/// nearly every tensor closes one; the record stays balanced.
#[test]
fn every_gradient_is_reduced_once_under_every_option() {
    use tperf_core::schedule::{AttentionKernel, Recompute};
    for key in ["small", "gpt2-124m", "report"] {
        let mut cfg = presets::find(key).unwrap().config;
        (cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_layers) = (97, 32, 48, 3);
        (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.context) = (4, 2, 8, 64);
        for zero1 in [false, true] {
            for precision in [Precision::Fp32, Precision::Bf16] {
                for attention in [AttentionKernel::Naive, AttentionKernel::Flash] {
                    for recompute in [Recompute::None, Recompute::Selective, Recompute::Full] {
                        for fused in [false, true] {
                            let dp = DataParallel {
                                world: 3,
                                bucket_bytes: 1024,
                                first_bucket_bytes: 256,
                                zero1,
                            };
                            let opts = Options {
                                precision,
                                attention,
                                recompute,
                                fused,
                                data_parallel: Some(dp),
                                ..Options::default()
                            };
                            let rec = analysis::record(&cfg, &train(2, 7, opts)).unwrap();
                            let what = format!("{key} {opts:?}");
                            assert!(rec.errors.is_empty(), "{what}: {:?}", rec.errors);
                            let summary = tperf_core::cost::memory::summarize(rec.mem_events());
                            assert!(summary.at_end.is_empty(), "{what}");
                            let grads: u64 = collectives(&rec)
                                .iter()
                                .filter(|c| rec.ops[c.0].call.phase == Phase::Backward)
                                .map(|c| c.2)
                                .sum();
                            assert_eq!(grads, cfg.param_count(), "{what}");
                        }
                    }
                }
            }
        }
    }
}

/// ZeRO-1's optimizer ops (the gradient norm, AdamW and the unfused cast to the bf16 copy) read
/// and write 1/W of what they do on one device.
#[test]
fn zero1_optimizer_ops_move_a_shard_of_the_bytes() {
    let w = 4;
    let opts = |dp| Options {
        precision: Precision::Bf16,
        fused: false,
        data_parallel: dp,
        ..Options::default()
    };
    let (_, one) = analyze("gpt2-124m", &train(1, 64, opts(None)));
    let (_, z) = analyze(
        "gpt2-124m",
        &train(1, 64, opts(Some(DataParallel::zero1(w)))),
    );
    for name in ["grad_norm", "adamw", "cast"] {
        let bytes = |a: &Analysis| -> u64 {
            a.rows
                .iter()
                .filter(|r| r.name == name)
                .map(|r| r.bytes)
                .sum()
        };
        let ratio = bytes(&z) as f64 / bytes(&one) as f64;
        assert!((ratio - 1.0 / w as f64).abs() < 1e-3, "{name}: {ratio}");
    }
}
