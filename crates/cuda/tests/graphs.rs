//! CUDA graph capture and replay of repeated steps (graph.rs): a run whose steps are replayed from
//! a graph ends with the weights of the same run launched op by op, with a learning rate that
//! changes every step (so a graph replaying stale scalars would fail); steps that break the
//! promise of `begin_step` fall back to eager execution and still compute the right thing.
//!
//! Two eager runs of the same steps differ by rounding where kernels add with atomics (the
//! embedding and flash-attention backwards), so each weight tensor (f32 masters in every policy)
//! is compared by its L2 distance, against that of a second eager run ([`assert_like_eager`]).
//! A stale learning rate or step count changes weights by far more (the rate doubles between
//! steps below). The decode forward has no atomics, so its logits are compared bit for bit.
//! Needs a CUDA device; where there is none (CI) each test says it skipped.

use tperf_core::backend::{repeated_step, Backend};
use tperf_core::cost::analysis::{Scenario, StepRunner, Workload};
use tperf_core::ops::adamw::AdamWParams;
use tperf_core::schedule::{AttentionKernel, Options, Precision};
use tperf_cuda::conformance::{gpu_or_skip, tiny};
use tperf_cuda::CudaBackend;

fn gpu(graphs: bool) -> Option<CudaBackend> {
    let mut be = gpu_or_skip()?;
    be.set_graphs(graphs);
    Some(be)
}

fn scenario(precision: Precision, attention: AttentionKernel, batch: usize) -> Scenario {
    Scenario {
        workload: Workload::Train,
        batch,
        seq: 17,
        opts: Options {
            precision,
            attention,
            ..Options::default()
        },
    }
}

/// Step `i`'s learning rate: it changes every step.
fn lr(i: usize) -> f64 {
    1e-3 * (1 + i % 3) as f64
}

/// Runs `steps` training steps of `sc` and returns every master weight.
fn train(be: &mut CudaBackend, preset: &str, sc: Scenario, steps: usize) -> Vec<Vec<f32>> {
    let cfg = tiny(preset);
    let mut runner = StepRunner::new(be, &cfg, sc).expect("the model fits");
    runner
        .model
        .init_weights(be, 7)
        .expect("weights initialise");
    for i in 0..steps {
        let hyper = AdamWParams {
            lr: lr(i),
            ..AdamWParams::default()
        };
        runner.step(be, hyper).expect("a training step runs");
    }
    let params: Vec<_> = runner
        .model
        .weights
        .all_params()
        .into_iter()
        .cloned()
        .collect();
    let weights = params
        .iter()
        .map(|p| be.read_f32(&p.master).expect("weights read back"))
        .collect();
    runner.free(be);
    weights
}

/// The relative L2 floor of the weight comparison below.
const REL_L2: f64 = 1e-5;

/// How much further from the eager run the graph run may be than a second eager run is.
const NOISE_MARGIN: f64 = 4.0;

fn l2(x: &[f32], y: &[f32]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Asserts that each tensor of `graphs` (a run replayed from graphs) is as close to `eager` as a
/// second eager run `control` is: ‖graphs − eager‖ ≤ 4·‖control − eager‖ + 1e-5·‖eager‖.
/// Elementwise or fixed tolerances do not work here: where a gradient is pure rounding noise (a
/// bias whose true gradient is ~0), AdamW's m/√v turns the atomics' run-to-run noise into
/// updates of a visible fraction of lr — measured on the H100, gpt2-style fp32 naive, 8 steps:
/// eager against eager 1.5e-4 relative on such a tensor, graphs against eager 1.7–1.9e-4. A stale
/// learning rate or step count would move every weight by ~lr: percents.
fn assert_like_eager(graphs: &[Vec<f32>], eager: &[Vec<f32>], control: &[Vec<f32>], what: &str) {
    assert_eq!(graphs.len(), eager.len());
    assert_eq!(control.len(), eager.len());
    for (i, ((g, e), c)) in graphs.iter().zip(eager).zip(control).enumerate() {
        assert_eq!(g.len(), e.len());
        let norm = e.iter().map(|&q| (q as f64).powi(2)).sum::<f64>().sqrt();
        let (off, noise) = (l2(g, e), l2(c, e));
        let bound = NOISE_MARGIN * noise + REL_L2 * norm.max(1e-12);
        assert!(
            off <= bound,
            "{what}: parameter {i}: graphs are {off:.2e} from eager (L2), a second eager run \
             {noise:.2e}, ‖eager‖ {norm:.2e}"
        );
    }
}

/// [`assert_like_eager`] without a control run: the relative floor alone.
fn assert_close(graphs: &[Vec<f32>], eager: &[Vec<f32>], what: &str) {
    assert_like_eager(graphs, eager, eager, what)
}

#[test]
fn replayed_steps_train_like_eager_steps() {
    let (Some(mut with), Some(mut without), Some(mut control)) =
        (gpu(true), gpu(false), gpu(false))
    else {
        return;
    };
    let steps = 8;
    for preset in ["small", "gpt2"] {
        for precision in [Precision::Fp32, Precision::Bf16] {
            for attention in [AttentionKernel::Naive, AttentionKernel::Flash] {
                let what = format!("{preset} {} {}", precision.name(), attention.name());
                let before = with.graph_stats();
                let sc = scenario(precision, attention, 3);
                let a = train(&mut with, preset, sc, steps);
                let b = train(&mut without, preset, sc, steps);
                let c = train(&mut control, preset, sc, steps);
                assert_like_eager(&a, &b, &c, &what);
                let after = with.graph_stats();
                // One warm-up step, one capture, the rest replayed — with two allowances. Every
                // model after the first runs under the same step key "train": its first step
                // finds the previous model's graph, differs from it and runs eagerly. And a
                // capture may be followed by a step whose allocations differ while the
                // allocator's cache settles; that step runs eagerly and the next is captured
                // again. So: at least steps − 4 replays, and never a refusal.
                let replayed = after.replayed - before.replayed;
                assert!(replayed >= steps as u64 - 4, "{what}: {after:?}");
                assert!(after.refused.is_empty(), "{what}: {after:?}");
                assert_eq!(without.graph_stats().replayed, 0);
            }
        }
    }
}

#[test]
fn a_step_that_differs_from_the_captured_one_falls_back_and_stays_right() {
    let (Some(mut with), Some(mut without)) = (gpu(true), gpu(false)) else {
        return;
    };
    let small = scenario(Precision::Fp32, AttentionKernel::Flash, 2);
    let wide = scenario(Precision::Fp32, AttentionKernel::Flash, 3);
    // Captures "train" at batch 2 …
    let a = train(&mut with, "small", small, 3);
    let b = train(&mut without, "small", small, 3);
    assert_close(&a, &b, "batch 2");
    let first = with.graph_stats();
    assert!(first.captured >= 1, "{first:?}");
    // … then the same key at batch 3: the replay's first action differs, the step runs eagerly,
    // and a later step is captured again.
    let a = train(&mut with, "small", wide, 6);
    let b = train(&mut without, "small", wide, 6);
    assert_close(&a, &b, "batch 3 after a capture at batch 2");
    let stats = with.graph_stats();
    assert!(stats.fell_back > first.fell_back, "{stats:?}");
    assert!(stats.captured > first.captured, "{stats:?}");
    assert!(stats.replayed > first.replayed, "{stats:?}");
    assert!(stats.refused.is_empty(), "{stats:?}");
}

#[test]
fn a_step_that_reads_the_host_is_not_captured_and_stays_right() {
    let (Some(mut with), Some(mut without)) = (gpu(true), gpu(false)) else {
        return;
    };
    let cfg = tiny("small");
    let sc = scenario(Precision::Fp32, AttentionKernel::Flash, 2);
    let mut losses = Vec::new();
    for be in [&mut with, &mut without] {
        let runner = StepRunner::new(be, &cfg, sc).expect("the model fits");
        runner
            .model
            .init_weights(be, 7)
            .expect("weights initialise");
        let model = &runner.model;
        let mut seen = Vec::new();
        for i in 0..4 {
            let (tokens, targets) = model.alloc_inputs(be, 2, 17, true).unwrap();
            let targets = targets.unwrap();
            let ids: Vec<i32> = (0..34).map(|k| (k * 7 + i * 3) % 61).collect();
            be.write_i32(&tokens, &ids).unwrap();
            be.write_i32(&targets, &ids).unwrap();
            let loss = repeated_step(be, "peek", |be| {
                let state = model.forward_train(be, tokens, targets)?;
                // A read in the middle of the step: not capturable.
                let peek = be.read_f32(state.losses.as_ref().expect("training keeps losses"))?;
                let losses = model.backward(be, state)?;
                model.optimizer_step(be, AdamWParams::default())?;
                be.free(losses);
                Ok(peek)
            })
            .unwrap();
            seen.push(loss);
        }
        losses.push(seen);
        runner.free(be);
    }
    for (a, b) in losses[0].iter().zip(&losses[1]) {
        assert_close(
            std::slice::from_ref(a),
            std::slice::from_ref(b),
            "losses read inside the step",
        );
    }
    let stats = with.graph_stats();
    assert_eq!(stats.replayed, 0, "{stats:?}");
    assert_eq!(stats.refused.len(), 1, "{stats:?}");
    assert!(stats.refused[0].1.contains("host memory"), "{stats:?}");
}

/// Prefills `prompt` tokens, then decodes `steps` tokens one at a time (each step's input is a
/// fixed function of the step, so both runs see the same inputs), each decode step a repeated
/// step; returns the logits of every step.
fn decode_logits(
    be: &mut CudaBackend,
    preset: &str,
    attention: AttentionKernel,
    steps: usize,
) -> Vec<Vec<f32>> {
    use tperf_core::schedule::{alloc_step_tokens, Transformer};
    let cfg = tiny(preset);
    let opts = Options {
        precision: Precision::Fp32,
        attention,
        ..Options::default()
    };
    let model = Transformer::new(be, &cfg, opts, false).expect("the model fits");
    model.init_weights(be, 11).expect("weights initialise");
    let mut cache = model.alloc_kv_cache(be, 2, cfg.context).unwrap();
    let mut out = Vec::new();
    for i in 0..=steps {
        let t = if i == 0 { 5 } else { 1 };
        let tokens = alloc_step_tokens(be, 2, t).unwrap();
        let ids: Vec<i32> = (0..2 * t).map(|k| ((k * 13 + i * 5) % 61) as i32).collect();
        be.write_i32(&tokens, &ids).unwrap();
        let logits = if i == 0 {
            model.step_logits(be, tokens, Some(&mut cache)).unwrap()
        } else {
            repeated_step(be, "decode", |be| {
                model.step_logits(be, tokens, Some(&mut cache))
            })
            .unwrap()
        };
        out.push(be.read_f32(&logits).unwrap());
        be.free(logits);
    }
    model.free_kv_cache(be, cache);
    model.free(be);
    out
}

#[test]
fn replayed_decode_steps_advance_the_position_like_eager_steps() {
    let (Some(mut with), Some(mut without)) = (gpu(true), gpu(false)) else {
        return;
    };
    let steps = 20;
    // Rotary positions with grouped-query attention, and learned positions (GPT-2). The second
    // model's first decode step finds the first model's graph under the same key, differs, and
    // runs eagerly (see the training test above for the counts).
    for preset in ["small", "gpt2"] {
        let before = with.graph_stats();
        let a = decode_logits(&mut with, preset, AttentionKernel::Flash, steps);
        let b = decode_logits(&mut without, preset, AttentionKernel::Flash, steps);
        // The forward has no atomics: the same kernels on the same data give the same bits.
        assert_eq!(
            a, b,
            "{preset}: decode logits differ between replayed and eager steps"
        );
        let after = with.graph_stats();
        let replayed = after.replayed - before.replayed;
        assert!(replayed >= steps as u64 - 4, "{preset}: {after:?}");
        assert!(after.refused.is_empty(), "{preset}: {after:?}");
        // Every replayed step's host time is kept (fewer than the ring holds here).
        assert_eq!(after.replay_host_seconds.len() as u64, after.replayed);
        let host = after.replay_host_median_seconds();
        assert!(
            host.is_some_and(|s| s > 0.0 && s < 1.0),
            "{preset}: {host:?}"
        );
    }
}

#[test]
fn naive_decode_steps_are_not_replayed_across_positions_and_stay_right() {
    let (Some(mut with), Some(mut without)) = (gpu(true), gpu(false)) else {
        return;
    };
    let a = decode_logits(&mut with, "small", AttentionKernel::Naive, 12);
    let b = decode_logits(&mut without, "small", AttentionKernel::Naive, 12);
    assert_eq!(a, b, "naive decode logits differ with graphs on");
    let stats = with.graph_stats();
    // The naive kernels' shapes grow with the cache: every replay finds a different step.
    assert_eq!(stats.replayed, 0, "{stats:?}");
    assert_eq!(stats.refused.len(), 1, "{stats:?}");
}

/// Decodes `steps` tokens of a batch of 3, each step's logits sampled on the device inside the
/// repeated step (temperature, top-k, top-p), the sampled ids fed back as the next input;
/// returns the ids each step was given.
fn decode_sampled(be: &mut CudaBackend, steps: usize) -> Vec<Vec<i32>> {
    use tperf_core::ops::sampling::Sampling;
    use tperf_core::schedule::{alloc_step_tokens, Transformer};
    let cfg = tiny("gpt2");
    let opts = Options {
        precision: Precision::Fp32,
        attention: AttentionKernel::Flash,
        ..Options::default()
    };
    let sampling = Sampling {
        temperature: 1.5,
        top_k: Some(20),
        top_p: Some(0.95),
        seed: 3,
    };
    be.restart_sampling().unwrap();
    let model = Transformer::new(be, &cfg, opts, false).expect("the model fits");
    model.init_weights(be, 11).expect("weights initialise");
    let b = 3;
    let mut cache = model.alloc_kv_cache(be, b, cfg.context).unwrap();
    let prompt = alloc_step_tokens(be, b, 4).unwrap();
    let ids: Vec<i32> = (0..b * 4).map(|k| ((k * 13) % 61) as i32).collect();
    be.write_i32(&prompt, &ids).unwrap();
    let logits = model.step_logits(be, prompt, Some(&mut cache)).unwrap();
    let mut next = model.sample(be, logits, sampling).unwrap();
    let mut out = Vec::new();
    for _ in 0..steps {
        // The generator's loop: the ids come back between steps and go in as the next tokens.
        let ids: Vec<i32> = be
            .read_f32(&next)
            .unwrap()
            .iter()
            .map(|&x| x as i32)
            .collect();
        be.free(next);
        let tokens = alloc_step_tokens(be, b, 1).unwrap();
        be.write_i32(&tokens, &ids).unwrap();
        out.push(ids);
        next = repeated_step(be, "decode", |be| {
            let logits = model.step_logits(be, tokens, Some(&mut cache))?;
            model.sample(be, logits, sampling)
        })
        .unwrap();
    }
    be.free(next);
    model.free_kv_cache(be, cache);
    model.free(be);
    out
}

#[test]
fn sampling_inside_replayed_decode_steps_draws_like_eager_steps() {
    let (Some(mut with), Some(mut without)) = (gpu(true), gpu(false)) else {
        return;
    };
    let steps = 16;
    let before = with.graph_stats();
    let a = decode_sampled(&mut with, steps);
    let b = decode_sampled(&mut without, steps);
    // Same logits bit for bit (no atomics in the forward), same settings, and the call counter
    // advanced by the replayed kernel as by the eager one: the same ids.
    assert_eq!(a, b, "sampled ids differ between replayed and eager steps");
    let after = with.graph_stats();
    assert!(
        after.replayed - before.replayed >= steps as u64 - 4,
        "{after:?}"
    );
    assert!(after.refused.is_empty(), "{after:?}");
    // Successive steps draw from successive streams: not every row repeats one token.
    assert!(a.windows(2).any(|w| w[0] != w[1]), "{a:?}");
}
