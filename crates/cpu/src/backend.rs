//! CpuBackend: storage per tensor id, op dispatch to the kernels, memory accounting by category
//! and an optional per-op timing log.

use crate::exec::{missing, narrow_into, widen, Buffer, Data, Exec, Outs, WidenPool, NAME};
use crate::kernels;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tperf_core::backend::{Backend, BackendError, OpCall};
use tperf_core::comm::Communicator;
use tperf_core::dtype::DType;
use tperf_core::ledger::Ledger;
use tperf_core::ops::cast::round_to;
use tperf_core::ops::Op;
use tperf_core::tensor::{MemCategory, Tensor, TensorId, TensorSpec};

/// The CPU backend. Kernels compute in f32 (i32 for token ids). A bf16/f16 weight (category
/// `Weights`: inference parameters, mixed-precision copies) is stored in 16 bits; every other
/// bf16/f16 tensor (activations, their gradients, the KV cache) is stored in f32 holding values
/// rounded to its dtype at every write. Either way a tensor holds the same values, bit for bit.
///
/// Why only weights: they are what a model's memory is (a 1.5B model's 3 GB in bf16), they
/// are written rarely (the load, AdamW's copies) and read by one op each. An activation is
/// written by one op and read by the next, so 16-bit storage would add a widen and a narrow
/// per op for memory that is small beside the weights at inference; the KV cache is appended
/// a row per step and would be widened whole at every append.
#[derive(Default)]
pub struct CpuBackend {
    buffers: HashMap<TensorId, Buffer>,
    next_id: u32,
    /// Freed f32 vectors by length, handed out again by `alloc`: a training step allocates and
    /// frees the same activation shapes every step, so the steady state allocates nothing.
    pool: HashMap<usize, Vec<Vec<f32>>>,
    /// Reused by kernels that need a temporary (the fused activation's backward).
    scratch: Vec<f32>,
    /// The vectors 16-bit inputs are widened into for the kernels, reused from op to op.
    widened: WidenPool,
    ops_run: usize,
    sample_calls: u64,
    /// Bytes in use by category at the tensors' dtype widths, as the Meta backend records them;
    /// its event log is off until [`CpuBackend::enable_memory_events`].
    ledger: Ledger,
    /// (op index, start, wall time) of every op when enabled with [`CpuBackend::enable_timing`].
    pub timing: Option<Vec<(usize, Instant, Duration)>>,
    /// The rank group of a data-parallel run, which `Op::Collective` runs over.
    comm: Option<Arc<dyn Communicator>>,
    /// Stores 16-bit weights in f32 too (rounded), as the backend did before 16-bit storage:
    /// the reference the 16-bit storage is tested against, bit for bit.
    weights_in_f32: bool,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend that is one rank of `comm`'s group: the schedule's collectives reduce over it.
    pub fn with_communicator(comm: Arc<dyn Communicator>) -> Self {
        CpuBackend {
            comm: Some(comm),
            ..Self::default()
        }
    }

    /// A backend that stores bf16/f16 weights in f32, rounded to their dtype (the storage
    /// before 16-bit weights): the same values in twice the memory. For tests and for timing
    /// the cost of widening 16-bit weights.
    pub fn with_weights_in_f32() -> Self {
        CpuBackend {
            weights_in_f32: true,
            ..Self::default()
        }
    }

    /// Whether a tensor of `spec` is stored in 16 bits (see [`CpuBackend`]).
    fn stores_16bit(&self, spec: &TensorSpec) -> bool {
        spec.category == MemCategory::Weights
            && matches!(spec.dtype, DType::Bf16 | DType::F16)
            && !self.weights_in_f32
    }

    /// Bytes the allocated tensors' storage holds, neither the pool of freed f32 vectors nor an
    /// op's temporaries: equal to the ledger's total where every bf16/f16 tensor is a weight.
    pub fn storage_bytes(&self) -> u64 {
        self.buffers.values().map(|b| b.data.bytes() as u64).sum()
    }

    /// Bytes in use by category at the tensors' dtype widths, their peak, and the event log.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// To reset the peak or turn the event log on or off.
    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// Records the wall time of every op from now on.
    pub fn enable_timing(&mut self) {
        self.timing.get_or_insert_with(Vec::new);
    }

    /// Ops executed so far (the index of the next op in the schedule).
    pub fn ops_run(&self) -> usize {
        self.ops_run
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        NAME.to_string()
    }

    fn alloc(&mut self, spec: TensorSpec) -> Result<Tensor, BackendError> {
        let n = usize::try_from(spec.numel()).map_err(|_| BackendError::OutOfMemory {
            name: spec.name.to_string(),
            requested_bytes: spec.size_bytes(),
            in_use_bytes: self.ledger.total_bytes_in_use(),
            capacity_bytes: usize::MAX as u64,
        })?;
        let id = TensorId(self.next_id);
        self.next_id += 1;
        let data = match spec.dtype {
            DType::I32 => Data::I32(vec![0; n]),
            DType::Bf16 if self.stores_16bit(&spec) => Data::Bf16(vec![half::bf16::ZERO; n]),
            DType::F16 if self.stores_16bit(&spec) => Data::F16(vec![half::f16::ZERO; n]),
            _ => Data::F32(match self.pool.get_mut(&n).and_then(Vec::pop) {
                Some(mut v) => {
                    v.fill(0.0);
                    v
                }
                None => vec![0.0; n],
            }),
        };
        let tensor = spec.tensor(id);
        self.ledger.alloc(self.ops_run, &spec.name, &tensor);
        self.buffers.insert(
            id,
            Buffer {
                name: spec.name,
                data,
            },
        );
        Ok(tensor)
    }

    fn free(&mut self, tensor: Tensor) {
        if let Some(buf) = self.buffers.remove(&tensor.id) {
            self.ledger.free(self.ops_run, &buf.name, &tensor);
            // 16-bit vectors are weights, allocated once per model: not worth pooling.
            if let Data::F32(v) = buf.data {
                self.pool.entry(v.len()).or_default().push(v);
            }
        }
    }

    fn exec(&mut self, call: OpCall) -> Result<(), BackendError> {
        let start = Instant::now();
        let mut taken: Vec<(TensorId, Data)> = Vec::with_capacity(call.outputs.len());
        // A 16-bit output's storage, set aside while the op writes an f32 copy of it (a copy,
        // not zeros: ops that update in place, such as RoPE or an accumulating dx, read it).
        let mut stored_16bit: Vec<(TensorId, Data)> = Vec::new();
        for t in &call.outputs {
            if taken.iter().any(|(id, _)| *id == t.id) {
                continue;
            }
            match self.buffers.get_mut(&t.id) {
                Some(buf) => {
                    let data = std::mem::replace(&mut buf.data, Data::F32(Vec::new()));
                    let working = match &data {
                        Data::Bf16(v) => Some(widen(v)),
                        Data::F16(v) => Some(widen(v)),
                        Data::F32(_) | Data::I32(_) => None,
                    };
                    match working {
                        Some(f32s) => {
                            stored_16bit.push((t.id, data));
                            taken.push((t.id, Data::F32(f32s)));
                        }
                        None => taken.push((t.id, data)),
                    }
                }
                None => {
                    // Put back what was taken before reporting.
                    for (id, data) in taken {
                        if let Some(b) = self.buffers.get_mut(&id) {
                            b.data = data;
                        }
                    }
                    for (id, data) in stored_16bit {
                        if let Some(b) = self.buffers.get_mut(&id) {
                            b.data = data;
                        }
                    }
                    return Err(missing(format!(
                        "output tensor #{} is not allocated",
                        t.id.0
                    )));
                }
            }
        }
        // The outputs' slots hold empty placeholders while the op runs; remove them from view so
        // that an input aliasing an output is caught rather than read as empty.
        let placeholders: Vec<(TensorId, Buffer)> = taken
            .iter()
            .filter_map(|(id, _)| self.buffers.remove_entry(id))
            .collect();
        let mut outs = Outs(taken);
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.run(&call, &mut outs, &mut scratch);
        self.scratch = scratch;
        for ((id, mut buf), (_, data)) in placeholders.into_iter().zip(outs.0) {
            buf.data = match stored_16bit.iter().position(|(s, _)| *s == id) {
                // Narrowing rounds as the emulation's pass below did (and is exact for a
                // copy of values already in the dtype: KV append, take last, cast).
                Some(i) => {
                    let (_, mut stored) = stored_16bit.swap_remove(i);
                    if let Data::F32(f32s) = &data {
                        match &mut stored {
                            Data::Bf16(v) => narrow_into(f32s, v),
                            Data::F16(v) => narrow_into(f32s, v),
                            Data::F32(_) | Data::I32(_) => {}
                        }
                    }
                    stored
                }
                None => data,
            };
            self.buffers.insert(id, buf);
        }
        result?;
        // Emulate low-precision storage. Copies from a tensor of the same dtype (KV append, take
        // last) are already representable and skip the pass over the whole cache.
        if !matches!(call.op, Op::KvAppend(_) | Op::TakeLast(_) | Op::Cast(_)) {
            for t in &call.outputs {
                if matches!(t.dtype, DType::Bf16 | DType::F16) {
                    if let Some(Buffer {
                        data: Data::F32(v), ..
                    }) = self.buffers.get_mut(&t.id)
                    {
                        let dt = t.dtype;
                        v.par_iter_mut().for_each(|x| *x = round_to(dt, *x));
                    }
                }
            }
        }
        let index = self.ops_run;
        self.ops_run += 1;
        if let Some(log) = &mut self.timing {
            log.push((index, start, start.elapsed()));
        }
        Ok(())
    }

    fn write_f32(&mut self, tensor: &Tensor, data: &[f32]) -> Result<(), BackendError> {
        match self.buffers.get_mut(&tensor.id).map(|b| &mut b.data) {
            Some(Data::I32(_)) | None => Err(missing(format!(
                "tensor #{} is not an allocated float tensor",
                tensor.id.0
            ))),
            Some(stored) if stored.len() != data.len() => Err(missing(format!(
                "write of {} values into a tensor of {}",
                data.len(),
                stored.len()
            ))),
            Some(Data::F32(v)) => {
                v.iter_mut()
                    .zip(data)
                    .for_each(|(d, &s)| *d = round_to(tensor.dtype, s));
                Ok(())
            }
            Some(Data::Bf16(v)) => {
                narrow_into(data, v);
                Ok(())
            }
            Some(Data::F16(v)) => {
                narrow_into(data, v);
                Ok(())
            }
        }
    }

    fn write_i32(&mut self, tensor: &Tensor, data: &[i32]) -> Result<(), BackendError> {
        match self.buffers.get_mut(&tensor.id).map(|b| &mut b.data) {
            Some(Data::I32(v)) if v.len() == data.len() => {
                v.copy_from_slice(data);
                Ok(())
            }
            Some(Data::I32(v)) => Err(missing(format!(
                "write of {} ids into a tensor of {}",
                data.len(),
                v.len()
            ))),
            _ => Err(missing(format!(
                "tensor #{} is not an allocated i32 tensor",
                tensor.id.0
            ))),
        }
    }

    fn read_f32(&mut self, tensor: &Tensor) -> Result<Vec<f32>, BackendError> {
        match self.buffers.get(&tensor.id).map(|b| &b.data) {
            Some(Data::F32(v)) => Ok(v.clone()),
            Some(Data::Bf16(v)) => Ok(widen(v)),
            Some(Data::F16(v)) => Ok(widen(v)),
            // Token ids are exact in f32 below 2^24, far above any vocabulary.
            Some(Data::I32(v)) => Ok(v.iter().map(|&x| x as f32).collect()),
            None => Err(missing(format!("tensor #{} is not allocated", tensor.id.0))),
        }
    }
}

impl CpuBackend {
    /// One registration line per op: its dispatch lives beside its kernel in `kernels/<op>.rs`.
    fn run(
        &mut self,
        call: &OpCall,
        outs: &mut Outs,
        scratch: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let cx = &mut Exec {
            call,
            buffers: &self.buffers,
            widened: &self.widened,
            outs,
            scratch,
            sample_calls: self.sample_calls,
            comm: self.comm.as_deref(),
        };
        match &call.op {
            Op::Embedding(e) => kernels::embedding::exec(cx, e),
            Op::EmbeddingBackward(e) => kernels::embedding::exec_backward(cx, e),
            Op::Matmul(mm) => kernels::matmul::exec(cx, mm),
            Op::MatmulBackward(mm) => kernels::matmul::exec_backward(cx, mm),
            Op::LayerNorm(ln) => kernels::layernorm::exec(cx, ln),
            Op::LayerNormBackward(ln) => kernels::layernorm::exec_backward(cx, ln),
            Op::RmsNorm(rn) => kernels::rmsnorm::exec(cx, rn),
            Op::RmsNormBackward(rn) => kernels::rmsnorm::exec_backward(cx, rn),
            Op::Rope(r) => kernels::rope::exec(cx, r, false),
            Op::RopeBackward(r) => kernels::rope::exec(cx, r, true),
            Op::Activation(a) => kernels::activation::exec(cx, a),
            Op::ActivationBackward(a) => kernels::activation::exec_backward(cx, a),
            Op::SwiGlu(s) => kernels::swiglu::exec(cx, s),
            Op::SwiGluBackward(s) => kernels::swiglu::exec_backward(cx, s),
            Op::GeGlu(s) => kernels::geglu::exec(cx, s),
            Op::GeGluBackward(s) => kernels::geglu::exec_backward(cx, s),
            Op::ResidualAdd(r) => kernels::residual::exec(cx, r),
            Op::AttnScores(a) => kernels::attention::exec_scores(cx, a),
            Op::AttnSoftmax(a) => kernels::attention::exec_softmax(cx, a),
            Op::AttnValue(a) => kernels::attention::exec_value(cx, a),
            Op::AttnValueBackward(a) => kernels::attention::exec_value_backward(cx, a),
            Op::AttnSoftmaxBackward(a) => kernels::attention::exec_softmax_backward(cx, a),
            Op::AttnScoresBackward(a) => kernels::attention::exec_scores_backward(cx, a),
            Op::FlashAttention(a) => kernels::flash_attention::exec(cx, a),
            Op::FlashAttentionBackward(a) => kernels::flash_attention::exec_backward(cx, a),
            Op::CrossEntropy(ce) => kernels::cross_entropy::exec(cx, ce),
            Op::CrossEntropyBackward(ce) => kernels::cross_entropy::exec_backward(cx, ce),
            Op::AdamW(adam) => kernels::adamw::exec(cx, adam),
            Op::GradNorm(g) => kernels::grad_norm::exec(cx, g),
            Op::Cast(c) => kernels::cast::exec(cx, c),
            Op::KvAppend(k) => kernels::kv_cache::exec(cx, k),
            Op::PagedKvAppend(k) => kernels::kv_cache::exec_paged(cx, k),
            Op::PagedAttention(a) => kernels::paged_attention::exec(cx, a),
            Op::TakeLast(t) => kernels::take_last::exec(cx, t),
            Op::TakeRows(t) => kernels::take_last::exec_rows(cx, t),
            Op::Sample(s) => {
                kernels::sampling::exec(cx, s)?;
                self.sample_calls += 1;
                Ok(())
            }
            Op::Collective(c) => kernels::collective::exec(cx, c),
        }
    }
}
