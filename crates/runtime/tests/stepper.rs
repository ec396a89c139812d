//! The real stepper on the CPU backend: a tiny GPT-2-style model learns a small English text,
//! and a run stopped and resumed from its checkpoint takes exactly the steps an uninterrupted
//! run takes.
//!
//! Why resumption is bit-identical, not merely close: the checkpoint holds the f32 master
//! weights and both AdamW moments exactly (f32 in, f32 out), the step count that the bias
//! correction and the learning-rate schedule read, and the data loader's position; tperf's
//! training draws no random numbers; and the CPU kernels split work the same way on every run
//! with the same thread count, so each floating-point sum is taken in the same order. Any
//! difference at all would mean some state was not saved.

use std::path::Path;
use std::sync::Arc;
use tperf_core::config::ModelConfig;
use tperf_core::presets;
use tperf_core::schedule::{Options, Transformer};
use tperf_cpu::CpuBackend;
use tperf_runtime::data::{Corpus, Loader, TextLoader};
use tperf_runtime::stepper::ModelStepper;
use tperf_runtime::tokenizer::Tokenizer;
use tperf_runtime::train::{train, RunPaths, StepRecord, StopFlag, TrainConfig};

const B: usize = 4;
const T: usize = 16;

fn tiny() -> ModelConfig {
    let mut cfg = presets::find("gpt2").expect("preset exists").config;
    cfg.vocab_size = 256;
    cfg.context = 32;
    cfg.d_model = 32;
    cfg.d_ff = 128;
    cfg.n_layers = 2;
    let cfg = cfg.with_heads(4, 4).expect("4 heads divide 32");
    cfg.validate().expect("tiny config is valid");
    cfg
}

fn text() -> String {
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. \
     All that glitters is not gold. Where there is a will there is a way. "
        .repeat(40)
}

fn loader() -> Loader {
    let corpus = Corpus::from_text("test", &text(), &Tokenizer::byte(), 0.1).expect("corpus");
    Loader::Text(TextLoader::new(Arc::new(corpus), B, T, 3).expect("loader"))
}

fn stepper(init_seed: u64) -> ModelStepper<CpuBackend> {
    let mut be = CpuBackend::new();
    let model = Transformer::new(&mut be, &tiny(), Options::default(), true).expect("model");
    model.init_weights(&mut be, init_seed).expect("init");
    ModelStepper::new(be, model).expect("a training model")
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch: B,
        seq: T,
        lr: 3e-3,
        warmup_steps: 5,
        eval_every: 10,
        eval_batches: 2,
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

fn run(
    cfg: &TrainConfig,
    s: &mut ModelStepper<CpuBackend>,
    paths: &RunPaths,
    stop_after: Option<u64>,
) -> Vec<StepRecord> {
    let stop = StopFlag::new();
    let mut data = loader();
    let mut on_record = |r: &StepRecord| {
        if Some(r.step) == stop_after.map(|s| s - 1) {
            // Set during step s − 1's report: the loop sees it after step s, as a Ctrl-C
            // arriving mid-step would be seen.
            stop.request();
        }
    };
    let summary = train(cfg, s, &mut data, paths, "byte", &stop, &mut on_record).expect("train");
    summary.records
}

#[test]
fn loss_falls_on_english_text() {
    let mut s = stepper(1);
    let records = run(&config(60), &mut s, &RunPaths::default(), None);
    let mean = |r: &[StepRecord]| r.iter().map(|r| r.loss as f64).sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&records[..5]), mean(&records[55..]));
    // A fresh model predicts bytes roughly uniformly: ln 256 ≈ 5.5.
    assert!((first - 256f64.ln()).abs() < 0.5, "first loss {first}");
    assert!(last < first - 2.0, "loss {first} → {last} did not fall");
    let vals: Vec<f32> = records.iter().filter_map(|r| r.val_loss).collect();
    assert_eq!(vals.len(), 6);
    assert!(vals[5] < vals[0], "val loss {vals:?}");
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(20);

    let mut whole = stepper(1);
    let straight = run(
        &cfg,
        &mut whole,
        &RunPaths {
            checkpoint: Some(dir.path().join("whole.safetensors")),
            resume: None,
        },
        None,
    );

    let ckpt = dir.path().join("part.safetensors");
    let mut first = stepper(1);
    let paths = RunPaths {
        checkpoint: Some(ckpt.clone()),
        resume: None,
    };
    let before = run(&cfg, &mut first, &paths, Some(8));
    assert_eq!(before.len(), 8, "stopped after step 8");
    assert!(before[7].saved);

    // A different initialisation, so only the checkpoint can make the runs agree.
    let mut second = stepper(99);
    let paths = RunPaths {
        checkpoint: Some(ckpt.clone()),
        resume: Some(ckpt.clone()),
    };
    let after = run(&cfg, &mut second, &paths, None);
    assert_eq!(after.first().map(|r| r.step), Some(9));

    let resumed: Vec<_> = before.iter().chain(&after).collect();
    assert_eq!(resumed.len(), straight.len());
    for (a, b) in straight.iter().zip(resumed) {
        assert_eq!(a.step, b.step);
        assert_eq!(a.lr, b.lr);
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}", a.step);
        assert_eq!(
            a.val_loss.map(f32::to_bits),
            b.val_loss.map(f32::to_bits),
            "val at step {}",
            a.step
        );
    }
    assert_same_weights(&dir.path().join("whole.safetensors"), &ckpt);
}

/// The final checkpoints of both runs hold the same tensors: compare their CRCs through the
/// metadata-free route of loading both into models and reading every master weight.
fn assert_same_weights(a: &Path, b: &Path) {
    let read = |p: &Path| {
        let mut s = stepper(5);
        tperf_runtime::checkpoint::load(
            p,
            &mut s.be,
            &s.model,
            tperf_runtime::checkpoint::Contents::WeightsAndOptimizer,
        )
        .expect("load");
        let mut out = Vec::new();
        for param in s.model.weights.all_params() {
            let v = tperf_core::backend::Backend::read_f32(&mut s.be, &param.master).expect("read");
            out.extend(v.into_iter().map(f32::to_bits));
        }
        out
    };
    assert!(read(a) == read(b), "final weights differ");
}
