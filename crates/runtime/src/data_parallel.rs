//! One rank of a data-parallel run, as a [`Stepper`] the ordinary training loop drives.
//!
//! Every rank runs the same loop over the same data loader, built for the global batch (W × B
//! sequences); the rank keeps its B rows of each batch, so the ranks see disjoint data and
//! their union is the batch one device would train on. The model's schedule all-reduces the
//! gradients (its `Op::Collective`s, run by the backend over its rank group); this wrapper only
//! averages what the loop reports — the step's loss, and the validation loss — so every rank logs
//! the global numbers, and agrees on stopping: a stop asked on any rank (Ctrl-C reaches each
//! process of a launch) stops all of them after the same step, so no rank waits forever in a
//! collective its peers never join.
//!
//! Only rank 0 writes checkpoints: under DDP the replicas are identical and rank 0 alone saves;
//! under ZeRO-1 every rank takes part ([`Stepper::saves_collectively`]) so that rank 0 can
//! gather the shards and write the whole state. Every rank reads the same checkpoint to resume,
//! whatever the number of ranks that wrote it.

use crate::checkpoint::RunInfo;
use crate::data::Batch;
use crate::train::{StepParams, Stepper, StopFlag};
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use tperf_core::comm::{CommError, Communicator, Reduce};

#[derive(Debug, Error)]
pub enum RankError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Step(E),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error("a global batch of {rows} sequences does not split over {world} ranks")]
    Split { rows: usize, world: usize },
}

pub struct RankStepper<S> {
    inner: S,
    comm: Arc<dyn Communicator>,
    stop: StopFlag,
}

impl<S: Stepper> RankStepper<S> {
    /// `inner` runs on a backend that reduces over `comm`; `stop` is the flag the loop watches.
    pub fn new(inner: S, comm: Arc<dyn Communicator>, stop: StopFlag) -> Self {
        RankStepper { inner, comm, stop }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// This rank's rows of the global batch (the batch itself when the rank runs alone: no copy
    /// on the single-process path every `tperf train` takes).
    fn mine<'b>(&self, batch: &'b Batch) -> Result<Cow<'b, Batch>, RankError<S::Error>> {
        let world = self.comm.world();
        if world == 1 {
            return Ok(Cow::Borrowed(batch));
        }
        if !batch.b.is_multiple_of(world) {
            return Err(RankError::Split {
                rows: batch.b,
                world,
            });
        }
        let b = batch.b / world;
        let span = self.comm.rank() * b * batch.t..(self.comm.rank() + 1) * b * batch.t;
        Ok(Cow::Owned(Batch {
            b,
            t: batch.t,
            tokens: batch.tokens[span.clone()].to_vec(),
            targets: batch.targets[span].to_vec(),
        }))
    }

    /// The mean of `loss` over the ranks (equal token counts: the global batch's mean), with
    /// the ranks' stop requests combined in the same exchange.
    fn global(&self, loss: f32) -> Result<f32, RankError<S::Error>> {
        let world = self.comm.world() as f32;
        let mut v = [
            loss / world,
            if self.stop.is_requested() { 1.0 } else { 0.0 },
        ];
        self.comm.all_reduce(&mut v, Reduce::Sum)?;
        if v[1] > 0.0 {
            self.stop.request();
        }
        Ok(v[0])
    }
}

impl<S: Stepper> Stepper for RankStepper<S> {
    type Error = RankError<S::Error>;

    fn train_step(&mut self, batch: &Batch, params: &StepParams) -> Result<f32, Self::Error> {
        let mine = self.mine(batch)?;
        let loss = self
            .inner
            .train_step(&mine, params)
            .map_err(RankError::Step)?;
        self.global(loss)
    }

    fn eval_loss(&mut self, batch: &Batch) -> Result<f32, Self::Error> {
        let mine = self.mine(batch)?;
        let loss = self.inner.eval_loss(&mine).map_err(RankError::Step)?;
        self.global(loss)
    }

    fn save_checkpoint(&mut self, path: &Path, run: &RunInfo) -> Result<(), Self::Error> {
        if self.comm.rank() == 0 || self.inner.saves_collectively() {
            self.inner
                .save_checkpoint(path, run)
                .map_err(RankError::Step)?;
        }
        // The others wait for the save, so that a run stopped now finds the file complete.
        let mut done = [0.0f32];
        self.comm.all_reduce(&mut done, Reduce::Sum)?;
        Ok(())
    }

    fn load_checkpoint(&mut self, path: &Path) -> Result<RunInfo, Self::Error> {
        self.inner.load_checkpoint(path).map_err(RankError::Step)
    }
}
