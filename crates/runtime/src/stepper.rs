//! The real [`Stepper`]: a [`Transformer`] on a compute backend. A training step writes the
//! batch into freshly allocated (B, T) token and target buffers, runs the schedule's forward,
//! backward and AdamW step, and reads the per-token losses back; evaluation runs the forward
//! that keeps nothing; checkpoints go through [`checkpoint::save`] / [`checkpoint::load`] with
//! AdamW's moments, so a resumed run continues from exactly the state it stopped in.

use crate::checkpoint::{self, CheckpointError, Contents, RunInfo};
use crate::data::Batch;
use crate::train::{StepParams, Stepper};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use tperf_core::backend::{repeated_step, Backend, BackendError};
use tperf_core::comm::{Communicator, Solo};
use tperf_core::ops::adamw::AdamWParams;
use tperf_core::schedule::Transformer;
use tperf_core::tensor::Tensor;

/// AdamW's moment decays and epsilon: GPT-2's recipe as nanoGPT and llm.c run it (β2 0.95
/// rather than Adam's 0.999 — the second moment forgets faster, which keeps early
/// large-gradient steps from dominating it for thousands of steps).
pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.95;
pub const EPS: f64 = 1e-8;

#[derive(Debug, Error)]
pub enum StepperError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the batch is {b}×{t} but holds {tokens} tokens and {targets} targets")]
    BadBatch {
        b: usize,
        t: usize,
        tokens: usize,
        targets: usize,
    },
    #[error("the model was built for inference; training needs gradients and AdamW state")]
    NotTraining,
    #[error("a batch of {b} sequences does not split into {k} equal micro-batches (--grad-accum)")]
    MicroBatches { b: usize, k: usize },
    #[error("the backend returned {got} losses for a batch of {want} tokens")]
    LossCount { got: usize, want: usize },
}

/// A model on a backend, trained step by step. Owns both so that the loop has one thing to
/// drive; [`ModelStepper::into_parts`] gives them back for generation or inspection.
pub struct ModelStepper<B: Backend> {
    pub be: B,
    pub model: Transformer,
    /// The run's settings by flag name, recorded in every checkpoint it saves.
    pub flags: std::collections::BTreeMap<String, String>,
    /// The rank group a ZeRO-1 model's checkpoints gather their shards over (alone: [`Solo`]).
    pub group: Arc<dyn Communicator>,
}

impl<B: Backend> ModelStepper<B> {
    /// `model` must have been built with `training = true` on `be`, its weights initialised (or
    /// about to be loaded from a checkpoint).
    pub fn new(be: B, model: Transformer) -> Result<Self, StepperError> {
        if !model.training {
            return Err(StepperError::NotTraining);
        }
        Ok(ModelStepper {
            be,
            model,
            flags: Default::default(),
            group: Arc::new(Solo),
        })
    }

    /// This stepper as one rank of `group`, which its checkpoints gather ZeRO-1 shards over.
    pub fn in_group(mut self, group: Arc<dyn Communicator>) -> Self {
        self.group = group;
        self
    }

    pub fn into_parts(self) -> (B, Transformer) {
        (self.be, self.model)
    }

    /// The AdamW hyper-parameters of one step. Clipping at 0 means none (the loop's
    /// convention); the schedule's is `None`.
    pub fn adamw(params: &StepParams) -> AdamWParams {
        AdamWParams {
            lr: params.lr,
            beta1: BETA1,
            beta2: BETA2,
            eps: EPS,
            weight_decay: params.weight_decay,
            step: params.step,
            max_grad_norm: (params.grad_clip > 0.0).then_some(params.grad_clip),
        }
    }

    /// Allocates and fills the (B, T) token and target buffers of `batch`. On a write error
    /// both are freed, so a failed step leaks nothing.
    fn inputs(&mut self, batch: &Batch) -> Result<(Tensor, Tensor), StepperError> {
        let n = batch.b * batch.t;
        if batch.tokens.len() != n || batch.targets.len() != n {
            return Err(StepperError::BadBatch {
                b: batch.b,
                t: batch.t,
                tokens: batch.tokens.len(),
                targets: batch.targets.len(),
            });
        }
        let (tokens, targets) = self
            .model
            .alloc_inputs(&mut self.be, batch.b, batch.t, true)?;
        let Some(targets) = targets else {
            // alloc_inputs returns targets when asked; keep the buffers balanced regardless.
            self.be.free(tokens);
            return Err(StepperError::NotTraining);
        };
        let written = self
            .be
            .write_i32(&tokens, &batch.tokens)
            .and_then(|()| self.be.write_i32(&targets, &batch.targets));
        if let Err(e) = written {
            self.be.free(tokens);
            self.be.free(targets);
            return Err(e.into());
        }
        Ok((tokens, targets))
    }

    /// Reads the per-token losses, frees them and returns their mean, summed in f64 so the
    /// mean of B·T values does not depend on their order more than f32 rounding of each.
    fn mean_loss(&mut self, losses: Tensor, want: usize) -> Result<f32, StepperError> {
        let values = self.be.read_f32(&losses);
        self.be.free(losses);
        let values = values?;
        if values.len() != want || want == 0 {
            return Err(StepperError::LossCount {
                got: values.len(),
                want,
            });
        }
        let sum: f64 = values.iter().map(|&x| x as f64).sum();
        Ok((sum / want as f64) as f32)
    }
}

impl<B: Backend> Stepper for ModelStepper<B> {
    type Error = StepperError;

    /// Under gradient accumulation (K = `opts.grad_accum` > 1) the batch's rows are split into
    /// K micro-batches of equal size, in order, and the loss is their mean.
    fn train_step(&mut self, batch: &Batch, params: &StepParams) -> Result<f32, StepperError> {
        let k = self.model.opts.micro_steps();
        if !batch.b.is_multiple_of(k) {
            return Err(StepperError::MicroBatches { b: batch.b, k });
        }
        let rows = batch.b / k;
        let mut micro = Vec::with_capacity(k);
        for i in 0..k {
            let span = i * rows * batch.t..(i + 1) * rows * batch.t;
            let part = Batch {
                b: rows,
                t: batch.t,
                tokens: batch.tokens[span.clone()].to_vec(),
                targets: batch.targets[span].to_vec(),
            };
            match self.inputs(&part) {
                Ok(pair) => micro.push(pair),
                Err(e) => {
                    for (tokens, targets) in micro {
                        self.be.free(tokens);
                        self.be.free(targets);
                    }
                    return Err(e);
                }
            }
        }
        let model = &self.model;
        // Every step of a run is the same step on new data: a backend may capture and replay it.
        let losses = repeated_step(&mut self.be, "train", |be| {
            model.train_step_micro(be, micro, Self::adamw(params))
        })?;
        // Equal tokens per micro-batch: the batch's mean is the mean of theirs.
        let mut sum = 0.0f64;
        for l in losses {
            sum += f64::from(self.mean_loss(l, rows * batch.t)?);
        }
        Ok((sum / k as f64) as f32)
    }

    fn eval_loss(&mut self, batch: &Batch) -> Result<f32, StepperError> {
        let (tokens, targets) = self.inputs(batch)?;
        let model = &self.model;
        let losses = repeated_step(&mut self.be, "eval", |be| {
            let mut state = model.forward_eval(be, tokens, Some(targets))?;
            let losses = state.losses.take();
            model.free_state(be, state);
            Ok(losses)
        })?;
        match losses {
            Some(l) => self.mean_loss(l, batch.n_tokens()),
            // forward_eval with targets always computes the loss.
            None => Err(StepperError::LossCount {
                got: 0,
                want: batch.n_tokens(),
            }),
        }
    }

    fn save_checkpoint(&mut self, path: &Path, run: &RunInfo) -> Result<(), StepperError> {
        let mut run = run.clone();
        if run.flags.is_empty() {
            run.flags = self.flags.clone();
        }
        checkpoint::save_ranked(
            path,
            &mut self.be,
            &self.model,
            &run,
            Contents::WeightsAndOptimizer,
            &*self.group,
        )?;
        Ok(())
    }

    fn load_checkpoint(&mut self, path: &Path) -> Result<RunInfo, StepperError> {
        let meta = checkpoint::load_ranked(
            path,
            &mut self.be,
            &self.model,
            Contents::WeightsAndOptimizer,
            self.group.rank(),
        )?;
        Ok(meta.run)
    }

    /// A ZeRO-1 model's checkpoint gathers shards: every rank saves (rank 0 writes).
    fn saves_collectively(&self) -> bool {
        self.model.opts.zero1().is_some()
    }
}
