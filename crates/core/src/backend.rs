//! The Backend trait: the small surface the one schedule is written against. A backend allocates
//! buffers, runs ops, and moves data in and out; the Meta backend does none of the arithmetic
//! and records everything, which is the analytic model.

use crate::ops::operands::{OperandError, Operands};
use crate::ops::{Op, Phase};
use crate::tensor::{Tensor, TensorSpec};
use thiserror::Error;

/// The queue an op is issued on. Ops on one stream run in the order they were issued; ops on
/// different streams may run at the same time, ordered only by [`OpCall::waits`].
///
/// The schedule issues every op on [`Stream::Compute`] except the collectives of data-parallel
/// training, which go on [`Stream::Comm`] so that a gradient all-reduce can overlap the rest of
/// the backward (as NCCL on its own CUDA stream does in PyTorch DDP and llm.c).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    #[default]
    Compute,
    Comm,
}

impl Stream {
    pub const fn name(self) -> &'static str {
        match self {
            Stream::Compute => "compute",
            Stream::Comm => "comm",
        }
    }
}

/// One op as the schedule issues it: what to compute, on which buffers, where in the model, and
/// on which stream after what.
///
/// The stream contract: an op starts once the op issued before it on its own `stream` has
/// finished and, for each stream `s` in `waits`, every op issued on `s` before this call has
/// finished. That is CUDA's event pattern taken at issue time (`cuEventRecord` on `s`, then
/// `cuStreamWaitEvent` on this op's stream), so a wait names no op index: the schedule issues a
/// bucket's all-reduce right after the op that completed its last gradient, and waiting on the
/// compute stream's work so far waits on exactly that op. A backend that runs every op in issue
/// order on one queue (the CPU backend, the CUDA backend today) satisfies the contract; the cost
/// model (`cost::analysis`) places each op on its stream and takes the step time as the
/// makespan. [`OpCall::new`] and [`OpCall::from_lists`] build a call on the compute stream
/// with no waits; [`OpCall::on_stream`] moves it.
#[derive(Clone, Debug)]
pub struct OpCall {
    pub op: Op,
    /// Buffers read. A buffer both read and written (accumulation, in-place) is in both lists.
    pub inputs: Vec<Tensor>,
    /// Buffers written.
    pub outputs: Vec<Tensor>,
    /// Where in the model: "attn.qkv", "mlp.down", "lm_head", …
    pub label: &'static str,
    /// Transformer block index; None for embedding, final norm, loss, optimizer groups outside
    /// the blocks.
    pub layer: Option<usize>,
    pub phase: Phase,
    /// The stream the op is issued on.
    pub stream: Stream,
    /// Streams whose work issued so far must finish before this op starts (its own stream is
    /// implied). Empty for every op of a single-device schedule.
    pub waits: Vec<Stream>,
}

impl OpCall {
    /// A call of `op` on operand lists in the op's order, on the compute stream with no waits:
    /// for ops that have no operand struct (the collectives) and tests that build raw calls.
    pub fn from_lists(
        op: Op,
        inputs: Vec<Tensor>,
        outputs: Vec<Tensor>,
        label: &'static str,
        layer: Option<usize>,
        phase: Phase,
    ) -> Self {
        OpCall {
            op,
            inputs,
            outputs,
            label,
            layer,
            phase,
            stream: Stream::Compute,
            waits: Vec::new(),
        }
    }

    /// The same call issued on `stream` after the work issued so far on each of `waits`.
    pub fn on_stream(mut self, stream: Stream, waits: &[Stream]) -> Self {
        self.stream = stream;
        self.waits = waits.iter().copied().filter(|&s| s != stream).collect();
        self
    }

    /// The call of `op` (built from its descriptor by `wrap`, e.g. `Op::RmsNorm`) on its named
    /// operands `io`.
    pub fn new<D: Clone, I: Operands<D>>(
        desc: D,
        wrap: fn(D) -> Op,
        io: I,
        label: &'static str,
        layer: Option<usize>,
        phase: Phase,
    ) -> Self {
        let (inputs, outputs) = io.into_lists(&desc);
        Self::from_lists(wrap(desc), inputs, outputs, label, layer, phase)
    }

    /// This call's operands by name, as the op's descriptor `desc` lays them out.
    pub fn operands<D, I: Operands<D>>(&self, desc: &D) -> Result<I, BackendError> {
        I::from_lists(desc, &self.inputs, &self.outputs).map_err(|source| BackendError::Operands {
            op: self.op.name(),
            label: self.label,
            source: Box::new(source),
        })
    }
}

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("out of memory allocating {requested_bytes} bytes for '{name}' with {in_use_bytes} bytes in use of {capacity_bytes}")]
    OutOfMemory {
        name: String,
        requested_bytes: u64,
        in_use_bytes: u64,
        capacity_bytes: u64,
    },
    #[error("op '{op}' ({label}) is not supported by the {backend} backend: {why}")]
    Unsupported {
        op: &'static str,
        label: &'static str,
        backend: &'static str,
        why: String,
    },
    /// Data a user supplied that the op cannot accept (a token id outside the vocabulary, a
    /// sequence past the context or the KV cache's capacity).
    #[error("{backend} backend: invalid input to '{op}' ({label}): {why}")]
    InvalidInput {
        op: &'static str,
        label: &'static str,
        backend: &'static str,
        why: String,
    },
    /// A call whose buffer lists do not match its op's operands: a schedule bug.
    #[error("op '{op}' ({label}): {source}")]
    Operands {
        op: &'static str,
        label: &'static str,
        /// Boxed: a rare error should not widen every backend result.
        source: Box<OperandError>,
    },
    #[error("the {backend} backend holds no data: {what}")]
    NoData { backend: &'static str, what: String },
    #[error("{backend} backend: {message}")]
    Device {
        backend: &'static str,
        message: String,
    },
}

pub trait Backend {
    /// A short name for tables: "meta", "cpu", "cuda:0".
    fn name(&self) -> String;

    /// A new buffer, every element zero (accumulating ops and the optimizer's fresh moments
    /// rely on it).
    fn alloc(&mut self, spec: TensorSpec) -> Result<Tensor, BackendError>;

    fn free(&mut self, tensor: Tensor);

    fn exec(&mut self, call: OpCall) -> Result<(), BackendError>;

    /// Fill a buffer from the host (token ids as i32, weights as f32 converted to the buffer's
    /// dtype).
    fn write_f32(&mut self, tensor: &Tensor, data: &[f32]) -> Result<(), BackendError>;
    fn write_i32(&mut self, tensor: &Tensor, data: &[i32]) -> Result<(), BackendError>;

    /// Copy a buffer to the host as f32.
    fn read_f32(&mut self, tensor: &Tensor) -> Result<Vec<f32>, BackendError>;

    /// Marks the start of a step the caller repeats (a training step, a decode step): between
    /// this and [`Backend::end_step`] it issues the same allocations, ops and frees on the same
    /// shapes every time it begins a step under the same `key`, and touches no host memory;
    /// only the per-step scalars of ops (AdamW's learning rate and step count) change. A backend
    /// may capture such a step once and replay it (the CUDA backend's graphs); it must fall back
    /// to running the ops as issued whenever a step breaks the promise. Does nothing by default.
    fn begin_step(&mut self, _key: &str) -> Result<(), BackendError> {
        Ok(())
    }

    /// Ends the step begun by [`Backend::begin_step`]: its work has been issued (not
    /// necessarily finished) when this returns.
    fn end_step(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Whether repeated steps are replayed rather than issued op by op: a caller may then shape
    /// its steps so that they repeat (pad a batch to one of a few sizes), which on a backend
    /// that issues every op would only add work. False by default.
    fn replays_repeated_steps(&self) -> bool {
        false
    }
}

/// Runs `f` as one repeated step of kind `key` between [`Backend::begin_step`] and
/// [`Backend::end_step`]. On an error the step is left unfinished; the backend abandons it at the
/// next `begin_step` or host access.
pub fn repeated_step<B: Backend, T>(
    be: &mut B,
    key: &str,
    f: impl FnOnce(&mut B) -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    be.begin_step(key)?;
    let out = f(be)?;
    be.end_step()?;
    Ok(out)
}
