//! The training loop against a fake stepper: a real (tiny) Transformer on the host test
//! backend, real checkpoints, and a made-up update that depends on every batch, learning rate
//! and step, so any difference in what a resumed run sees shows in its final weights.

mod common;

use common::{fill, model, snapshot, tiny_config, HostBackend};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use tperf_core::backend::Backend;
use tperf_core::schedule::{Precision, Transformer};
use tperf_runtime::checkpoint::{self, CheckpointError, Contents, RunInfo};
use tperf_runtime::data::{Batch, Corpus, Loader, TextLoader};
use tperf_runtime::train::{
    train, RunPaths, StepParams, StepRecord, Stepper, StopFlag, TrainConfig, TrainError,
    TrainSummary,
};

#[derive(Debug)]
enum FakeError {
    Checkpoint(CheckpointError),
    Injected(u64),
}

impl fmt::Display for FakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FakeError::Checkpoint(e) => e.fmt(f),
            FakeError::Injected(step) => write!(f, "injected failure at step {step}"),
        }
    }
}

impl std::error::Error for FakeError {}

struct Fake {
    be: HostBackend,
    model: Transformer,
    seen: Vec<Batch>,
    saves: Vec<u64>,
    /// Request a stop while taking this (1-based) step, as a Ctrl-C mid-step would.
    stop_during: Option<(u64, StopFlag)>,
    nan_at: Option<u64>,
    fail_at: Option<u64>,
}

impl Fake {
    fn new() -> Self {
        let mut be = HostBackend::new();
        let model = model(&mut be, &tiny_config(), Precision::Fp32, true);
        fill(&mut be, &model, 0.5);
        Fake {
            be,
            model,
            seen: Vec::new(),
            saves: Vec::new(),
            stop_during: None,
            nan_at: None,
            fail_at: None,
        }
    }
}

impl Stepper for Fake {
    type Error = FakeError;

    fn train_step(&mut self, batch: &Batch, p: &StepParams) -> Result<f32, FakeError> {
        if self.fail_at == Some(p.step) {
            return Err(FakeError::Injected(p.step));
        }
        if let Some((step, flag)) = &self.stop_during {
            if *step == p.step {
                flag.request();
            }
        }
        let mean = batch.tokens.iter().map(|&t| t as f64).sum::<f64>() / batch.tokens.len() as f64;
        for param in self.model.weights.all_params().into_iter().take(4) {
            let (m, v) = (param.m.clone().unwrap(), param.v.clone().unwrap());
            let mut w = self.be.read_f32(&param.master).unwrap();
            let mut mm = self.be.read_f32(&m).unwrap();
            let mut vv = self.be.read_f32(&v).unwrap();
            for j in 0..w.len() {
                mm[j] = 0.9 * mm[j] + 0.1 * (mean as f32 - w[j]);
                vv[j] = 0.99 * vv[j] + 0.01 * (p.step as f32).sqrt();
                w[j] += (p.lr * mm[j] as f64 * (1.0 + j as f64 * 1e-3)) as f32;
            }
            self.be.write_f32(&param.master, &w).unwrap();
            self.be.write_f32(&m, &mm).unwrap();
            self.be.write_f32(&v, &vv).unwrap();
        }
        self.seen.push(batch.clone());
        if self.nan_at == Some(p.step) {
            return Ok(f32::NAN);
        }
        Ok((mean / 64.0) as f32 + 1.0 / p.step as f32)
    }

    fn eval_loss(&mut self, batch: &Batch) -> Result<f32, FakeError> {
        let w = self
            .be
            .read_f32(&self.model.weights.token_embedding.master)
            .unwrap();
        Ok(w.iter().sum::<f32>() / w.len() as f32 + batch.tokens[0] as f32 * 1e-3)
    }

    fn save_checkpoint(&mut self, path: &Path, run: &RunInfo) -> Result<(), FakeError> {
        checkpoint::save(
            path,
            &mut self.be,
            &self.model,
            run,
            Contents::WeightsAndOptimizer,
        )
        .map_err(FakeError::Checkpoint)?;
        self.saves.push(run.step);
        Ok(())
    }

    fn load_checkpoint(&mut self, path: &Path) -> Result<RunInfo, FakeError> {
        checkpoint::load(
            path,
            &mut self.be,
            &self.model,
            Contents::WeightsAndOptimizer,
        )
        .map(|m| m.run)
        .map_err(FakeError::Checkpoint)
    }
}

fn loader() -> Loader {
    // 2,000 byte-valued tokens; 200 held out.
    let tokens = (0..2000u32).map(|i| (i * 7919 + i / 3) % 256).collect();
    let corpus = Arc::new(Corpus::from_tokens("mem", "byte", tokens, 0.1));
    Loader::Text(TextLoader::new(corpus, 2, 8, 1234).unwrap())
}

fn config() -> TrainConfig {
    TrainConfig {
        steps: 10,
        batch: 2,
        seq: 8,
        lr: 1e-2,
        warmup_steps: 3,
        eval_every: 4,
        eval_batches: 2,
        checkpoint_every: 3,
        seed: 1234,
        ..TrainConfig::default()
    }
}

fn run(
    cfg: &TrainConfig,
    fake: &mut Fake,
    data: &mut Loader,
    paths: &RunPaths,
    stop: &StopFlag,
) -> Result<TrainSummary, TrainError> {
    let mut seen = Vec::new();
    let mut on_record = |r: &StepRecord| seen.push(r.step);
    let summary = train(cfg, fake, data, paths, "byte", stop, &mut on_record)?;
    assert_eq!(
        seen,
        summary.records.iter().map(|r| r.step).collect::<Vec<_>>(),
        "on_record sees every record"
    );
    Ok(summary)
}

#[test]
fn the_loop_records_loss_and_throughput_evaluates_and_checkpoints_every_n_steps() {
    let dir = tempfile::tempdir().unwrap();
    let paths = RunPaths {
        checkpoint: Some(dir.path().join("ckpt.safetensors")),
        resume: None,
    };
    let cfg = config();
    let mut fake = Fake::new();
    let s = run(&cfg, &mut fake, &mut loader(), &paths, &StopFlag::new()).unwrap();

    assert_eq!((s.start_step, s.end_step, s.stopped), (0, 10, false));
    // Every 3 steps, and after the last.
    assert_eq!(s.checkpoints, [3, 6, 9, 10]);
    assert_eq!(fake.saves, [3, 6, 9, 10]);
    assert_eq!(s.records.len(), 10);
    for (i, r) in s.records.iter().enumerate() {
        assert_eq!(r.step, i as u64 + 1);
        assert_eq!(r.lr, cfg.lr_at(i as u64));
        assert_eq!(r.tokens, 16);
        assert!(r.loss.is_finite());
        assert!(r.dur_s >= 0.0 && r.tokens_per_s > 0.0);
        assert_eq!(
            r.val_loss.is_some(),
            [4, 8, 10].contains(&r.step),
            "step {}",
            r.step
        );
        assert_eq!(r.saved, s.checkpoints.contains(&r.step));
    }
    let meta = checkpoint::read_metadata(paths.checkpoint.as_ref().unwrap()).unwrap();
    assert_eq!(meta.run.step, 10);
    assert_eq!(meta.run.tokenizer, "byte");
    assert!(meta.run.loader.is_some());
}

#[test]
fn a_stop_saves_after_the_step_in_progress_and_the_resumed_run_matches_an_unbroken_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();

    // The reference: ten steps without a break.
    let mut whole = Fake::new();
    let whole_paths = RunPaths {
        checkpoint: Some(dir.path().join("whole.safetensors")),
        resume: None,
    };
    let ref_summary = run(
        &cfg,
        &mut whole,
        &mut loader(),
        &whole_paths,
        &StopFlag::new(),
    )
    .unwrap();

    // Interrupted during step 5 (not a checkpoint step): it finishes step 5, saves, stops.
    let ckpt = dir.path().join("broken.safetensors");
    let stop = StopFlag::new();
    let mut first = Fake::new();
    first.stop_during = Some((5, stop.clone()));
    let paths = RunPaths {
        checkpoint: Some(ckpt.clone()),
        resume: None,
    };
    let s1 = run(&cfg, &mut first, &mut loader(), &paths, &stop).unwrap();
    assert!(s1.stopped);
    assert_eq!(s1.end_step, 5);
    assert_eq!(s1.checkpoints, [3, 5]);
    assert_eq!(checkpoint::read_metadata(&ckpt).unwrap().run.step, 5);

    // A new process: fresh model (other initial values), fresh loader, resume.
    let mut second = Fake::new();
    fill(&mut second.be, &second.model, -9.0);
    let paths = RunPaths {
        checkpoint: Some(ckpt.clone()),
        resume: Some(ckpt.clone()),
    };
    let s2 = run(&cfg, &mut second, &mut loader(), &paths, &StopFlag::new()).unwrap();
    assert_eq!((s2.start_step, s2.end_step, s2.stopped), (5, 10, false));
    assert_eq!(s2.checkpoints, [6, 9, 10]);

    // The same batches in the same order, the same losses, bit-identical weights and moments.
    let seen: Vec<Batch> = first.seen.iter().chain(&second.seen).cloned().collect();
    assert_eq!(seen, whole.seen);
    let losses = |s: &[&TrainSummary]| -> Vec<(u64, f32, f64, Option<f32>)> {
        s.iter()
            .flat_map(|s| s.records.iter().map(|r| (r.step, r.loss, r.lr, r.val_loss)))
            .collect()
    };
    assert_eq!(losses(&[&s1, &s2]), losses(&[&ref_summary]));
    assert_eq!(
        snapshot(&mut second.be, &second.model),
        snapshot(&mut whole.be, &whole.model)
    );
}

#[test]
fn resuming_at_the_end_does_nothing_and_past_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");
    let paths = RunPaths {
        checkpoint: Some(ckpt.clone()),
        resume: None,
    };
    run(
        &config(),
        &mut Fake::new(),
        &mut loader(),
        &paths,
        &StopFlag::new(),
    )
    .unwrap();
    let resume = RunPaths {
        checkpoint: Some(ckpt.clone()),
        resume: Some(ckpt.clone()),
    };
    let s = run(
        &config(),
        &mut Fake::new(),
        &mut loader(),
        &resume,
        &StopFlag::new(),
    )
    .unwrap();
    assert_eq!((s.start_step, s.end_step), (10, 10));
    assert!(s.records.is_empty());

    let shorter = TrainConfig {
        steps: 6,
        ..config()
    };
    let err = run(
        &shorter,
        &mut Fake::new(),
        &mut loader(),
        &resume,
        &StopFlag::new(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::ResumePastEnd {
                step: 10,
                steps: 6,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_stop_before_the_first_step_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let paths = RunPaths {
        checkpoint: Some(dir.path().join("ckpt.safetensors")),
        resume: None,
    };
    let stop = StopFlag::new();
    stop.request();
    let mut fake = Fake::new();
    let s = run(&config(), &mut fake, &mut loader(), &paths, &stop).unwrap();
    assert!(s.stopped && s.records.is_empty() && fake.saves.is_empty());
}

#[test]
fn a_diverged_step_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");
    let paths = RunPaths {
        checkpoint: Some(ckpt.clone()),
        resume: None,
    };
    let mut fake = Fake::new();
    fake.nan_at = Some(5);
    let err = run(
        &config(),
        &mut fake,
        &mut loader(),
        &paths,
        &StopFlag::new(),
    )
    .unwrap_err();
    assert!(
        matches!(err, TrainError::NonFiniteLoss { step: 5, .. }),
        "{err}"
    );
    assert_eq!(fake.saves, [3]);
    assert_eq!(checkpoint::read_metadata(&ckpt).unwrap().run.step, 3);
    assert!(
        err.to_string().contains(&format!(
            "the last checkpoint is kept ({} at step 3)",
            ckpt.display()
        )),
        "{err}"
    );

    // Without a checkpoint nothing is kept, and the error says so.
    let mut fake = Fake::new();
    fake.nan_at = Some(2);
    let err = run(
        &config(),
        &mut fake,
        &mut loader(),
        &RunPaths::default(),
        &StopFlag::new(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no checkpoint was written"),
        "{err}"
    );
}

#[test]
fn stepper_failures_carry_the_step() {
    let mut fake = Fake::new();
    fake.fail_at = Some(2);
    let err = run(
        &config(),
        &mut fake,
        &mut loader(),
        &RunPaths::default(),
        &StopFlag::new(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("the training step failed at step 2: injected failure"),
        "{msg}"
    );
    // Without a checkpoint path nothing is saved.
    assert!(fake.saves.is_empty());
}

#[test]
fn evaluation_without_a_validation_split_and_mismatched_shapes_are_refused_up_front() {
    let corpus = Arc::new(Corpus::from_tokens(
        "mem",
        "byte",
        (0..500).map(|i| i % 256).collect(),
        0.0,
    ));
    let mut no_val = Loader::Text(TextLoader::new(corpus, 2, 8, 1).unwrap());
    let mut fake = Fake::new();
    let err = run(
        &config(),
        &mut fake,
        &mut no_val,
        &RunPaths::default(),
        &StopFlag::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no validation split"), "{err}");
    let no_eval = TrainConfig {
        eval_every: 0,
        ..config()
    };
    assert!(run(
        &no_eval,
        &mut fake,
        &mut no_val,
        &RunPaths::default(),
        &StopFlag::new()
    )
    .is_ok());

    let wrong_seq = TrainConfig {
        seq: 16,
        ..config()
    };
    let err = run(
        &wrong_seq,
        &mut Fake::new(),
        &mut loader(),
        &RunPaths::default(),
        &StopFlag::new(),
    )
    .unwrap_err();
    assert!(
        matches!(err, TrainError::Config { field: "seq", .. }),
        "{err}"
    );
    assert!(fake.seen.len() == 10, "only the no-eval run trained");
}
