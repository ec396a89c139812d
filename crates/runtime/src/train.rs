//! The training-loop driver: the learning-rate schedule, periodic evaluation and checkpoints,
//! a stop flag that Ctrl-C sets so a run saves before it exits, and exact resumption.
//!
//! The loop is written against [`Stepper`], the few things it needs from a model: one training
//! step, one evaluation loss, save, load. The real stepper is
//! [`crate::stepper::ModelStepper`], a `Transformer` on any compute backend; the loop's own
//! tests use a fake one whose update depends on every input, so they need no kernels.

use crate::checkpoint::RunInfo;
use crate::data::{Batch, DataError, Loader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("{field} = {value} is not valid: {why}")]
    Config {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{what} failed at step {step}: {source}")]
    Stepper {
        what: &'static str,
        step: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the training loss is {loss} at step {step}: training diverged (try a lower --lr or a longer warm-up); {}", match kept {
        Some(k) => format!("the last checkpoint is kept ({k})"),
        None => "no checkpoint was written".to_string(),
    })]
    NonFiniteLoss {
        step: u64,
        loss: f32,
        /// The checkpoint left on disk, "PATH at step N", if any.
        kept: Option<String>,
    },
    #[error("the checkpoint {} is at step {step}, beyond --steps {steps}", path.display())]
    ResumePastEnd {
        path: PathBuf,
        step: u64,
        steps: u64,
    },
    #[error("the checkpoint {} records no data-loader position, so the run cannot resume exactly; start a new run from its weights instead", path.display())]
    NoLoaderPosition { path: PathBuf },
    #[error("cannot install the Ctrl-C handler: {0}")]
    SignalHandler(#[from] ctrlc::Error),
}

/// A run's hyper-parameters. Steps count optimizer steps; `step` in this module is 0-based for
/// the step being taken and the number of steps completed once it is done.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub steps: u64,
    /// B
    pub batch: usize,
    /// T
    pub seq: usize,
    /// The peak learning rate, reached at the end of warm-up.
    pub lr: f64,
    pub warmup_steps: u64,
    /// The floor of the cosine decay, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub grad_clip: f64,
    /// Evaluate every this many steps and after the last; 0 never.
    pub eval_every: u64,
    pub eval_batches: usize,
    /// Save every this many steps; 0 saves only at the end and on a stop.
    pub checkpoint_every: u64,
    pub seed: u64,
    /// Stop after this step (saving, as a stop request does) though the schedule runs to
    /// `steps`: a long run split into sessions takes exactly the steps of an unbroken one,
    /// because the learning rate still follows the whole run's schedule.
    pub stop_at: Option<u64>,
}

impl Default for TrainConfig {
    /// nanoGPT's and llm.c's GPT-2 recipe, scaled to a short run: peak 6e-4, decay to a tenth,
    /// weight decay 0.1, clip at 1.0.
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch: 8,
            seq: 256,
            lr: 6e-4,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batches: 20,
            checkpoint_every: 500,
            seed: 1337,
            stop_at: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field, value: String, why: &str| {
            Err(TrainError::Config {
                field,
                value,
                why: why.to_string(),
            })
        };
        if self.steps == 0 {
            return bad("steps", "0".into(), "train at least one step");
        }
        if self.batch == 0 {
            return bad("batch", "0".into(), "must be at least 1");
        }
        if self.seq == 0 {
            return bad("seq", "0".into(), "must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr.to_string(), "must be a positive number");
        }
        if self.warmup_steps > self.steps {
            return bad(
                "warmup_steps",
                self.warmup_steps.to_string(),
                &format!("exceeds steps ({})", self.steps),
            );
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(
                "min_lr_ratio",
                self.min_lr_ratio.to_string(),
                "must be between 0 and 1",
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                self.weight_decay.to_string(),
                "must be a non-negative number",
            );
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return bad(
                "grad_clip",
                self.grad_clip.to_string(),
                "must be a non-negative number (0 disables clipping)",
            );
        }
        if let Some(at) = self.stop_at {
            if at == 0 || at > self.steps {
                return bad(
                    "stop_at",
                    at.to_string(),
                    &format!("must be between 1 and steps ({})", self.steps),
                );
            }
        }
        if self.eval_every > 0 && self.eval_batches == 0 {
            return bad(
                "eval_batches",
                "0".into(),
                "must be at least 1 when eval_every is set",
            );
        }
        Ok(())
    }

    pub fn min_lr(&self) -> f64 {
        self.lr * self.min_lr_ratio
    }

    /// The learning rate of 0-based step `step`: linear warm-up from lr / warmup to lr over
    /// the first `warmup_steps` steps, then half a cosine from lr down to min_lr at `steps`
    /// (llm.c's schedule). Warm-up starts at lr / warmup, not 0, because a step at lr 0 is a
    /// wasted step; the decay reaches min_lr exactly at `steps`, one past the last step, so
    /// the last step still learns a little. Past `steps` the rate stays at min_lr.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.steps {
            return self.min_lr();
        }
        // steps > warmup_steps here, so the ratio is defined and in [0, 1).
        let progress = (step - self.warmup_steps) as f64 / (self.steps - self.warmup_steps) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr() + coeff * (self.lr - self.min_lr())
    }
}

/// What one optimizer step needs besides the batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepParams {
    /// 1-based: AdamW's bias correction divides by 1 − β^t with this t.
    pub step: u64,
    pub lr: f64,
    pub weight_decay: f64,
    /// 0 disables clipping.
    pub grad_clip: f64,
}

/// What the loop needs from a model on a backend.
pub trait Stepper {
    type Error: std::error::Error + Send + Sync + 'static;

    /// One optimizer step on `batch`; returns the batch's mean loss.
    fn train_step(&mut self, batch: &Batch, params: &StepParams) -> Result<f32, Self::Error>;

    /// The mean loss on `batch`, without changing the model.
    fn eval_loss(&mut self, batch: &Batch) -> Result<f32, Self::Error>;

    /// Saves weights, optimizer state and `run` to `path` (the real stepper calls
    /// `checkpoint::save` with `Contents::WeightsAndOptimizer`).
    fn save_checkpoint(&mut self, path: &Path, run: &RunInfo) -> Result<(), Self::Error>;

    /// Restores weights and optimizer state from `path` and returns where that run stood.
    fn load_checkpoint(&mut self, path: &Path) -> Result<RunInfo, Self::Error>;

    /// Whether every rank of a data-parallel run must call [`Stepper::save_checkpoint`] (its
    /// state is sharded, and gathered to rank 0, which alone writes) rather than rank 0 alone.
    fn saves_collectively(&self) -> bool {
        false
    }
}

/// Set from a Ctrl-C handler (or anything else) to ask the loop to save and stop after the
/// step in progress: a half-done step cannot be saved.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Makes Ctrl-C (SIGINT) set this flag. A second Ctrl-C exits at once with status 130
    /// (the shell's code for SIGINT), for when saving itself hangs. The handler is process-wide
    /// and can be installed once.
    pub fn install_ctrlc_handler(&self) -> Result<(), TrainError> {
        self.install_handler_saying(
            "stopping after this step and saving a checkpoint (Ctrl-C again to quit now)",
        )
    }

    /// [`install_ctrlc_handler`](Self::install_ctrlc_handler) with the first Ctrl-C's message
    /// chosen by the caller (a run without a checkpoint saves nothing). The second removes any
    /// checkpoint being written (its temporary file) before it exits.
    pub fn install_handler_saying(&self, first: &'static str) -> Result<(), TrainError> {
        let flag = self.0.clone();
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                crate::checkpoint::remove_temporary_files();
                eprintln!("\ninterrupted again: exiting now (a save in progress is discarded; the previous checkpoint, if any, is intact)");
                std::process::exit(130);
            }
            // ctrlc runs this on its own thread, not in the signal handler, so printing is safe.
            eprintln!("\n{first}");
        })?;
        Ok(())
    }
}

/// Where the run saves and what it resumes from.
#[derive(Clone, Debug, Default)]
pub struct RunPaths {
    /// The checkpoint file, overwritten atomically at each save; None saves nothing.
    pub checkpoint: Option<PathBuf>,
    /// A checkpoint to resume from.
    pub resume: Option<PathBuf>,
}

/// One completed step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// Steps completed, this one included.
    pub step: u64,
    pub lr: f64,
    pub loss: f32,
    /// B · T
    pub tokens: u64,
    /// Wall time of the step: fetching the batch and the stepper's train_step, not evaluation
    /// or saving.
    pub dur_s: f64,
    pub tokens_per_s: f64,
    /// The mean loss over the validation batches, on steps that evaluate.
    pub val_loss: Option<f32>,
    /// Whether a checkpoint was saved after this step.
    pub saved: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    /// Steps completed before this run started (non-zero when resumed).
    pub start_step: u64,
    pub end_step: u64,
    pub records: Vec<StepRecord>,
    /// The steps at which checkpoints were saved.
    pub checkpoints: Vec<u64>,
    /// Whether the stop flag or `stop_at` ended the run early.
    pub stopped: bool,
}

/// Runs (or resumes) training: `cfg.steps` steps of `stepper` on batches from `data`,
/// evaluating and saving as `cfg` asks, calling `on_record` after every step (to print
/// progress), and stopping — after saving — when `stop` is set.
pub fn train<S: Stepper>(
    cfg: &TrainConfig,
    stepper: &mut S,
    data: &mut Loader,
    paths: &RunPaths,
    tokenizer: &str,
    stop: &StopFlag,
    on_record: &mut dyn FnMut(&StepRecord),
) -> Result<TrainSummary, TrainError> {
    cfg.validate()?;
    for (field, want, got) in [
        ("batch", cfg.batch, data.batch()),
        ("seq", cfg.seq, data.seq()),
    ] {
        if want != got {
            return Err(TrainError::Config {
                field,
                value: want.to_string(),
                why: format!("the data loader was built with {field} {got}"),
            });
        }
    }
    // The validation batches are the same at every evaluation; build them once.
    let eval = if cfg.eval_every > 0 {
        let batches = data.eval_batches(cfg.eval_batches);
        if batches.is_empty() {
            return Err(TrainError::Config {
                field: "eval_every",
                value: cfg.eval_every.to_string(),
                why: "the data has no validation split (--val-fraction 0); set --eval-every 0"
                    .into(),
            });
        }
        batches
    } else {
        Vec::new()
    };
    let stepper_err = |what, step| {
        move |e: S::Error| TrainError::Stepper {
            what,
            step,
            source: Box::new(e),
        }
    };

    let mut step = 0;
    let mut seed = cfg.seed;
    if let Some(path) = &paths.resume {
        let run = stepper
            .load_checkpoint(path)
            .map_err(stepper_err("loading the checkpoint", 0))?;
        if run.step > cfg.steps {
            return Err(TrainError::ResumePastEnd {
                path: path.clone(),
                step: run.step,
                steps: cfg.steps,
            });
        }
        let Some(state) = &run.loader else {
            return Err(TrainError::NoLoaderPosition { path: path.clone() });
        };
        data.restore(state)?;
        step = run.step;
        seed = run.seed;
    }

    let mut summary = TrainSummary {
        start_step: step,
        end_step: step,
        records: Vec::new(),
        checkpoints: Vec::new(),
        stopped: false,
    };
    if stop.is_requested() {
        // Stopped before any step: there is nothing new to save.
        summary.stopped = true;
        return Ok(summary);
    }
    while step < cfg.steps {
        let params = StepParams {
            step: step + 1,
            lr: cfg.lr_at(step),
            weight_decay: cfg.weight_decay,
            grad_clip: cfg.grad_clip,
        };
        let started = Instant::now();
        let batch = data.next_batch();
        let loss = stepper
            .train_step(&batch, &params)
            .map_err(stepper_err("the training step", step + 1))?;
        let dur_s = started.elapsed().as_secs_f64();
        step += 1;
        if !loss.is_finite() {
            let saved_now = paths
                .checkpoint
                .as_ref()
                .zip(summary.checkpoints.last())
                .map(|(p, s)| format!("{} at step {s}", p.display()));
            let resumed_from = paths
                .resume
                .as_ref()
                .map(|p| format!("{} at step {}", p.display(), summary.start_step));
            return Err(TrainError::NonFiniteLoss {
                step,
                loss,
                kept: saved_now.or(resumed_from),
            });
        }

        let last = step == cfg.steps;
        let val_loss = if cfg.eval_every > 0 && (step % cfg.eval_every == 0 || last) {
            let mut sum = 0.0f64;
            for b in &eval {
                sum += stepper
                    .eval_loss(b)
                    .map_err(stepper_err("evaluation", step))? as f64;
            }
            Some((sum / eval.len() as f64) as f32)
        } else {
            None
        };

        let stopping = stop.is_requested() || cfg.stop_at == Some(step);
        let due = cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0;
        let mut saved = false;
        if let Some(path) = &paths.checkpoint {
            if due || last || stopping {
                let run = RunInfo {
                    step,
                    seed,
                    loader: Some(data.state()),
                    tokenizer: tokenizer.to_string(),
                    flags: Default::default(),
                };
                stepper
                    .save_checkpoint(path, &run)
                    .map_err(stepper_err("saving the checkpoint", step))?;
                summary.checkpoints.push(step);
                saved = true;
            }
        }

        let tokens = batch.n_tokens() as u64;
        let record = StepRecord {
            step,
            lr: params.lr,
            loss,
            tokens,
            dur_s,
            tokens_per_s: if dur_s > 0.0 {
                tokens as f64 / dur_s
            } else {
                f64::INFINITY
            },
            val_loss,
            saved,
        };
        on_record(&record);
        summary.records.push(record);
        summary.end_step = step;
        if stopping {
            summary.stopped = true;
            break;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(steps: u64, warmup: u64) -> TrainConfig {
        TrainConfig {
            steps,
            warmup_steps: warmup,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            ..TrainConfig::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-12)
    }

    #[test]
    fn warmup_is_linear_and_reaches_the_peak_on_its_last_step() {
        let c = cfg(100, 10);
        assert!(close(c.lr_at(0), 1e-4));
        assert!(close(c.lr_at(4), 5e-4));
        assert!(close(c.lr_at(9), 1e-3));
        // The first decay step is at the peak too (progress 0).
        assert!(close(c.lr_at(10), 1e-3));
    }

    #[test]
    fn cosine_decays_to_min_lr_at_steps_and_stays_there() {
        let c = cfg(110, 10);
        // Halfway through the decay the cosine term is 1/2: the midpoint of lr and min_lr.
        assert!(close(c.lr_at(60), 0.5 * (1e-3 + 1e-4)));
        // The last step is at progress 99/100: just above the floor, not on it.
        let last = 1e-4 + 0.5 * (1.0 + (0.99 * std::f64::consts::PI).cos()) * 9e-4;
        assert!(close(c.lr_at(109), last) && last > 1e-4);
        assert!(close(c.lr_at(110), 1e-4));
        assert!(close(c.lr_at(10_000), 1e-4));
        for s in 10..110 {
            assert!(c.lr_at(s + 1) <= c.lr_at(s), "not decreasing at {s}");
        }
    }

    #[test]
    fn no_warmup_starts_at_the_peak_and_all_warmup_never_decays() {
        let c = cfg(50, 0);
        assert!(close(c.lr_at(0), 1e-3));
        let c = cfg(5, 5);
        assert!(close(c.lr_at(4), 1e-3));
        assert!(close(c.lr_at(5), 1e-4));
        let flat = TrainConfig {
            min_lr_ratio: 1.0,
            ..cfg(20, 0)
        };
        assert!((0..25).all(|s| close(flat.lr_at(s), 1e-3)));
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = [
            TrainConfig {
                steps: 0,
                ..cfg(1, 0)
            },
            TrainConfig {
                lr: f64::NAN,
                ..cfg(1, 0)
            },
            TrainConfig {
                warmup_steps: 11,
                ..cfg(10, 0)
            },
            TrainConfig {
                min_lr_ratio: 1.5,
                ..cfg(10, 0)
            },
            TrainConfig {
                grad_clip: -1.0,
                ..cfg(10, 0)
            },
            TrainConfig {
                eval_batches: 0,
                ..cfg(10, 0)
            },
            TrainConfig {
                stop_at: Some(11),
                ..cfg(10, 0)
            },
        ];
        let fields = [
            "steps",
            "lr",
            "warmup_steps",
            "min_lr_ratio",
            "grad_clip",
            "eval_batches",
            "stop_at",
        ];
        for (c, want) in bad.iter().zip(fields) {
            match c.validate() {
                Err(TrainError::Config { field, .. }) => assert_eq!(field, want),
                other => panic!("{want}: expected a config error, got {other:?}"),
            }
        }
        assert!(TrainConfig::default().validate().is_ok());
    }
}
