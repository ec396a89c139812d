//! The collectives of data-parallel training ([`super::options::DataParallel`]), issued by the
//! schedule on the communication stream so that the Meta record models them like any other op.
//!
//! Gradient buckets: the backward reports each parameter whose gradient it has just completed
//! ([`Emit::grads_done`]); gradients join the open bucket in that order (the output layer and
//! the last block first, the embedding last, as DDP's reverse-order buckets and llm.c), and a
//! bucket closes once it holds its capacity. A closed bucket's all-reduce (ZeRO-1: its
//! reduce-scatter) is issued at once on [`Stream::Comm`], waiting on the compute stream's work
//! so far, that is on the op that completed its last gradient; the backward goes on beside it.
//! The bucket still open when the backward ends is issued then. Collectives run in place over
//! the gradient buffers (NCCL allows it), so they allocate nothing.

use super::{Emit, Param, Weights};
use crate::backend::{Backend, BackendError, OpCall, Stream};
use crate::comm::Reduce;
use crate::ops::cast::{Cast, CastIo};
use crate::ops::collective::{Collective, CollectiveKind};
use crate::ops::residual::{ResidualAdd, ResidualAddIo};
use crate::ops::Op;
use crate::schedule::options::DataParallel;
use crate::tensor::{Tensor, TensorId};
use std::collections::HashMap;

/// The backward's open gradient bucket and what it still waits for; under gradient
/// accumulation also which micro-step this backward is.
pub(super) struct GradBuckets {
    /// None: no collectives (one device, or a micro-step before the last).
    dp: Option<DataParallel>,
    /// (this micro-step, K) when K > 1.
    micro: Option<(usize, usize)>,
    /// Backward ops still to write each gradient: 1, and 2 for a tied embedding (the output
    /// layer's backward writes it, the embedding backward adds its part last).
    remaining: HashMap<TensorId, u32>,
    open: Vec<Tensor>,
    open_bytes: u64,
    closed: usize,
}

/// The schedule's per-call stream state: the backward's buckets and waits for the next op.
#[derive(Default)]
pub(super) struct StreamState {
    pub(super) buckets: Option<GradBuckets>,
    /// Streams the next op issued through [`Emit::op`] waits on.
    pub(super) waits: Vec<Stream>,
}

impl GradBuckets {
    /// Buckets for micro-step `micro` of `of` of a backward over `weights` under `dp`; None
    /// when there is nothing to do (one device, no accumulation).
    pub(super) fn new(
        dp: Option<DataParallel>,
        weights: &Weights,
        (micro, of): (usize, usize),
    ) -> Option<Self> {
        let micro = (of > 1).then_some((micro, of));
        // Collectives reduce the gradients of the last micro-step only (the sum by then).
        let dp = dp.filter(|_| micro.is_none_or(|(i, k)| i + 1 == k));
        if dp.is_none() && micro.is_none() {
            return None;
        }
        let mut remaining = HashMap::new();
        for p in weights.all_params() {
            *remaining.entry(p.grad().id).or_insert(0) += 1;
        }
        if weights.lm_head.is_none() {
            *remaining
                .entry(weights.token_embedding.grad().id)
                .or_insert(0) += 1;
        }
        Some(GradBuckets {
            dp,
            micro,
            remaining,
            open: Vec::new(),
            open_bytes: 0,
            closed: 0,
        })
    }

    /// Records one write of `grad`; whether the gradient is now complete.
    fn written(&mut self, grad: &Tensor) -> bool {
        let Some(left) = self.remaining.get_mut(&grad.id).filter(|n| **n > 0) else {
            return false;
        };
        *left -= 1;
        *left == 0
    }

    /// Adds a complete gradient to the open bucket; returns a bucket to issue when this
    /// closed one (never without collectives).
    fn push(&mut self, grad: &Tensor) -> Option<Vec<Tensor>> {
        let dp = self.dp?;
        let capacity = if self.closed == 0 {
            dp.first_bucket_bytes
        } else {
            dp.bucket_bytes
        };
        self.open.push(grad.clone());
        self.open_bytes += grad.size_bytes();
        if self.open_bytes >= capacity {
            return self.close();
        }
        None
    }

    fn close(&mut self) -> Option<Vec<Tensor>> {
        if self.open.is_empty() {
            return None;
        }
        self.closed += 1;
        self.open_bytes = 0;
        Some(std::mem::take(&mut self.open))
    }

    fn kind(&self) -> CollectiveKind {
        if self.dp.is_some_and(|d| d.zero1) {
            CollectiveKind::ReduceScatter
        } else {
            CollectiveKind::AllReduce
        }
    }
}

impl<B: Backend> Emit<'_, B> {
    /// Issues `kind` (reducing by `reduce`) in place over `tensors` on the communication
    /// stream, after the compute stream's work so far.
    pub(super) fn collective(
        &mut self,
        (kind, reduce): (CollectiveKind, Reduce),
        tensors: Vec<Tensor>,
        world: usize,
        label: &'static str,
    ) -> Result<(), BackendError> {
        let Some(first) = tensors.first() else {
            return Ok(());
        };
        let op = Collective {
            kind,
            reduce,
            numel: tensors.iter().map(Tensor::numel).sum(),
            width_bytes: first.dtype.size_bytes(),
            world,
        };
        debug_assert!(tensors.iter().all(|t| t.dtype == first.dtype));
        let call = OpCall::from_lists(
            Op::Collective(op),
            tensors.clone(),
            tensors,
            label,
            self.layer,
            self.phase,
        );
        self.be
            .exec(call.on_stream(Stream::Comm, &[Stream::Compute]))
    }

    /// The backward op just issued wrote these parameters' gradients: a gradient that is now
    /// complete joins the open bucket, and a bucket that fills is reduced. Nothing on one
    /// device.
    pub(super) fn grads_done<'p>(
        &mut self,
        params: impl IntoIterator<Item = &'p Param>,
    ) -> Result<(), BackendError> {
        let Some(mut buckets) = self.streams.buckets.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        for p in params {
            if !buckets.written(p.grad()) {
                continue;
            }
            if let Some(micro) = buckets.micro {
                result = self.accumulate(p, micro);
                if result.is_err() {
                    break;
                }
            }
            if let Some(bucket) = buckets.push(p.grad()) {
                let world = buckets.dp.map_or(1, |d| d.world);
                result = self.collective((buckets.kind(), Reduce::Mean), bucket, world, "dp.grads");
                if result.is_err() {
                    break;
                }
            }
        }
        self.streams.buckets = Some(buckets);
        result
    }

    /// Gradient accumulation, as micro-step `i` of `k` completes `p`'s gradient: the first
    /// copies it into the accumulator, the middle ones add it there, the last adds the
    /// accumulator into the gradient (which the optimizer and the collectives read).
    fn accumulate(&mut self, p: &Param, (i, k): (usize, usize)) -> Result<(), BackendError> {
        let (Some(acc), grad) = (p.acc.as_ref(), p.grad()) else {
            return Err(BackendError::InvalidInput {
                op: "grad_accumulate",
                label: "grad_acc",
                backend: "schedule",
                why: format!(
                    "'{}' has no accumulator: the model was built for K = 1",
                    p.name
                ),
            });
        };
        let numel = grad.numel();
        if i == 0 {
            let io = CastIo {
                src: vec![grad.clone()],
                dst: vec![acc.clone()],
            };
            return self.run(Cast { numel }, Op::Cast, io, "grad_acc");
        }
        let (into, other) = if i + 1 == k { (grad, acc) } else { (acc, grad) };
        let io = ResidualAddIo {
            a: into.clone(),
            b: other.clone(),
            sum: into.clone(),
        };
        let op = ResidualAdd {
            numel: numel as usize,
        };
        self.run(op, Op::ResidualAdd, io, "grad_acc")
    }

    /// Issues the bucket still open at the end of the backward.
    pub(super) fn flush_grads(&mut self) -> Result<(), BackendError> {
        let Some(mut buckets) = self.streams.buckets.take() else {
            return Ok(());
        };
        debug_assert!(
            buckets.remaining.values().all(|&n| n == 0),
            "a gradient the backward never reported complete"
        );
        match (buckets.close(), buckets.dp) {
            (Some(bucket), Some(dp)) => {
                self.collective((buckets.kind(), Reduce::Mean), bucket, dp.world, "dp.grads")
            }
            _ => Ok(()),
        }
    }

    /// The next op issued waits for everything issued so far on `stream`.
    pub(super) fn wait_for(&mut self, stream: Stream) {
        if !self.streams.waits.contains(&stream) {
            self.streams.waits.push(stream);
        }
    }
}

impl super::Transformer {
    /// The gradient buckets of micro-step `micro` of this model's backward, when it trains
    /// data-parallel or accumulates.
    pub(super) fn grad_buckets(&self, micro: usize) -> Option<GradBuckets> {
        GradBuckets::new(
            self.opts.dp(),
            &self.weights,
            (micro, self.opts.micro_steps()),
        )
    }

    /// Elements of `params` the optimizer updates on this rank: all of them, or the ZeRO-1
    /// shard of each.
    pub(super) fn optimizer_numel(&self, params: &[&Param]) -> u64 {
        match self.opts.zero1() {
            Some(dp) => params.iter().map(|p| dp.shard(p.numel())).sum(),
            None => params.iter().map(|p| p.numel()).sum(),
        }
    }

    /// The ranks the optimizer state is sharded over: W under ZeRO-1, else 1.
    pub(super) fn optimizer_shards(&self) -> usize {
        self.opts.zero1().map_or(1, |dp| dp.world)
    }

    /// The optimizer's first op, the gradient norm, waits for the gradient buckets.
    pub(super) fn before_grad_norm(&self, e: &mut Emit<'_, impl Backend>) {
        if self.opts.dp().is_some() {
            e.wait_for(Stream::Comm);
        }
    }

    /// ZeRO-1, after the gradient norm op wrote this rank's shard's Σg²: the all-reduce that
    /// sums the ranks' squares (AdamW takes the root), which AdamW then waits for. Nothing
    /// otherwise.
    pub(super) fn after_grad_norm(
        &self,
        e: &mut Emit<'_, impl Backend>,
        norm: &Tensor,
    ) -> Result<(), BackendError> {
        let Some(dp) = self.opts.zero1() else {
            return Ok(());
        };
        e.collective(
            (CollectiveKind::AllReduce, Reduce::Sum),
            vec![norm.clone()],
            dp.world,
            "dp.grad_norm",
        )?;
        e.wait_for(Stream::Comm);
        Ok(())
    }

    /// ZeRO-1, after a group's update: the all-gather that brings every rank the group's new
    /// weights the forward reads (the low-precision copies, or the fp32 weights).
    pub(super) fn after_adamw(
        &self,
        e: &mut Emit<'_, impl Backend>,
        params: &[&Param],
    ) -> Result<(), BackendError> {
        let Some(dp) = self.opts.zero1() else {
            return Ok(());
        };
        let weights = params.iter().map(|p| p.w().clone()).collect();
        e.collective(
            (CollectiveKind::AllGather, Reduce::Sum),
            weights,
            dp.world,
            "dp.weights",
        )
    }
}
