//! CpuBackend: storage per tensor id, op dispatch to the kernels, memory accounting by category
//! and an optional per-op timing log.

use crate::kernels;
use rayon::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tperf_core::backend::{Backend, BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ledger::Ledger;
use tperf_core::ops::attention::{Attention, KvSource};
use tperf_core::ops::cast::round_to;
use tperf_core::ops::embedding::PositionTable;
use tperf_core::ops::{self, Op};
use tperf_core::tensor::{Tensor, TensorId, TensorSpec};

const NAME: &str = "cpu";

enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

struct Buffer {
    name: String,
    data: Data,
}

/// The CPU backend. Host memory is f32 (i32 for token ids); bf16/f16 tensors hold values
/// rounded to their dtype at every write, so storage precision is emulated, not saved.
#[derive(Default)]
pub struct CpuBackend {
    buffers: HashMap<TensorId, Buffer>,
    next_id: u32,
    /// Freed f32 vectors by length, handed out again by `alloc`: a training step allocates and
    /// frees the same activation shapes every step, so the steady state allocates nothing.
    pool: HashMap<usize, Vec<Vec<f32>>>,
    /// Reused by kernels that need a temporary (the fused activation's backward).
    scratch: Vec<f32>,
    ops_run: usize,
    sample_calls: u64,
    /// Bytes in use by category at the tensors' dtype widths, as the Meta backend records them;
    /// its event log is off until [`CpuBackend::enable_memory_events`].
    ledger: Ledger,
    /// (op index, start, wall time) of every op when enabled with [`CpuBackend::enable_timing`].
    pub timing: Option<Vec<(usize, Instant, Duration)>>,
}

fn invalid(call: &OpCall, why: String) -> BackendError {
    BackendError::InvalidInput {
        op: call.op.name(),
        label: call.label,
        backend: NAME,
        why,
    }
}

fn unsupported(call: &OpCall, why: impl Into<String>) -> BackendError {
    BackendError::Unsupported {
        op: call.op.name(),
        label: call.label,
        backend: NAME,
        why: why.into(),
    }
}

fn missing(what: String) -> BackendError {
    BackendError::Device {
        backend: NAME,
        message: what,
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
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

    fn f32(&self, t: &Tensor) -> Result<&[f32], BackendError> {
        match self.buffers.get(&t.id).map(|b| &b.data) {
            Some(Data::F32(v)) => Ok(v),
            Some(Data::I32(_)) => Err(missing(format!(
                "tensor #{} is i32 where f32 was expected",
                t.id.0
            ))),
            None => Err(missing(format!(
                "tensor #{} is not allocated (or is also an output)",
                t.id.0
            ))),
        }
    }

    fn i32(&self, t: &Tensor) -> Result<&[i32], BackendError> {
        match self.buffers.get(&t.id).map(|b| &b.data) {
            Some(Data::I32(v)) => Ok(v),
            _ => Err(missing(format!(
                "tensor #{} is not an allocated i32 tensor",
                t.id.0
            ))),
        }
    }
}

type F32x3<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32]);

/// The outputs of one op, taken out of the map while the op runs so that the inputs can be
/// borrowed from it at the same time.
struct Outs(Vec<(TensorId, Data)>);

impl Outs {
    fn f32(&mut self, i: usize) -> Result<&mut [f32], BackendError> {
        match self.0.get_mut(i).map(|(_, d)| d) {
            Some(Data::F32(v)) => Ok(v),
            _ => Err(missing(format!("output {i} is missing or not f32"))),
        }
    }

    /// Two distinct f32 outputs at once.
    fn f32_pair(&mut self, i: usize, j: usize) -> Result<(&mut [f32], &mut [f32]), BackendError> {
        debug_assert!(i < j);
        let (lo, hi) = self.0.split_at_mut(j);
        match (&mut lo[i].1, &mut hi[0].1) {
            (Data::F32(a), Data::F32(b)) => Ok((a, b)),
            _ => Err(missing("outputs are not f32".into())),
        }
    }

    /// Three distinct f32 outputs at once.
    fn f32_triple(&mut self, i: usize) -> Result<F32x3<'_>, BackendError> {
        match &mut self.0[i..] {
            [(_, Data::F32(a)), (_, Data::F32(b)), (_, Data::F32(c)), ..] => Ok((a, b, c)),
            _ => Err(missing("outputs are not f32".into())),
        }
    }
}

fn check_len(call: &OpCall, what: &str, got: usize, want: usize) -> Result<(), BackendError> {
    if got < want {
        return Err(unsupported(
            call,
            format!("{what} holds {got} elements where the op reads {want}"),
        ));
    }
    Ok(())
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        NAME.to_string()
    }

    fn alloc(&mut self, spec: TensorSpec) -> Result<Tensor, BackendError> {
        let n = usize::try_from(spec.numel()).map_err(|_| BackendError::OutOfMemory {
            name: spec.name.clone(),
            requested_bytes: spec.size_bytes(),
            in_use_bytes: self.ledger.total_bytes_in_use(),
            capacity_bytes: usize::MAX as u64,
        })?;
        let id = TensorId(self.next_id);
        self.next_id += 1;
        let data = match spec.dtype {
            DType::I32 => Data::I32(vec![0; n]),
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
            if let Data::F32(v) = buf.data {
                self.pool.entry(v.len()).or_default().push(v);
            }
        }
    }

    fn exec(&mut self, call: OpCall) -> Result<(), BackendError> {
        let start = Instant::now();
        let mut taken = Vec::with_capacity(call.outputs.len());
        for t in &call.outputs {
            if taken.iter().any(|(id, _)| *id == t.id) {
                continue;
            }
            match self.buffers.get_mut(&t.id) {
                Some(buf) => {
                    let data = std::mem::replace(&mut buf.data, Data::F32(Vec::new()));
                    taken.push((t.id, data));
                }
                None => {
                    // Put back what was taken before reporting.
                    for (id, data) in taken {
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
            buf.data = data;
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
            Some(Data::F32(v)) if v.len() == data.len() => {
                v.iter_mut()
                    .zip(data)
                    .for_each(|(d, &s)| *d = round_to(tensor.dtype, s));
                Ok(())
            }
            Some(Data::F32(v)) => Err(missing(format!(
                "write of {} values into a tensor of {}",
                data.len(),
                v.len()
            ))),
            _ => Err(missing(format!(
                "tensor #{} is not an allocated f32 tensor",
                tensor.id.0
            ))),
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
            // Token ids are exact in f32 below 2^24, far above any vocabulary.
            Some(Data::I32(v)) => Ok(v.iter().map(|&x| x as f32).collect()),
            None => Err(missing(format!("tensor #{} is not allocated", tensor.id.0))),
        }
    }
}

impl CpuBackend {
    fn run(
        &mut self,
        call: &OpCall,
        outs: &mut Outs,
        scratch: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let ins = &call.inputs;
        let input = |i: usize| -> Result<&Tensor, BackendError> {
            ins.get(i)
                .ok_or_else(|| unsupported(call, format!("expected an input #{i}")))
        };
        match &call.op {
            Op::Embedding(e) => {
                let tokens = self.i32(input(0)?)?;
                check_ids(call, tokens, e.vocab, "token")?;
                check_len(call, "tokens", tokens.len(), e.n)?;
                let wte = self.f32(input(1)?)?;
                check_len(call, "wte", wte.len(), e.vocab * e.c)?;
                let wpe = match e.positions {
                    PositionTable::Learned => {
                        let wpe = self.f32(input(2)?)?;
                        let rows = wpe.len() / e.c.max(1);
                        if e.pos_offset + e.t > rows {
                            return Err(invalid(call, format!(
                                "positions up to {} exceed the learned position table of {rows}: use a sequence within the model's context",
                                e.pos_offset + e.t
                            )));
                        }
                        Some(wpe)
                    }
                    _ => None,
                };
                kernels::embedding::forward(e, tokens, wte, wpe, outs.f32(0)?);
            }
            Op::EmbeddingBackward(e) => {
                let tokens = self.i32(input(0)?)?;
                check_ids(call, tokens, e.vocab, "token")?;
                let dout = self.f32(input(1)?)?;
                if e.positions == PositionTable::Learned {
                    let (dwte, dwpe) = outs.f32_pair(0, 1)?;
                    kernels::embedding::backward(e, tokens, dout, dwte, Some(dwpe));
                } else {
                    kernels::embedding::backward(e, tokens, dout, outs.f32(0)?, None);
                }
            }
            Op::Matmul(mm) => {
                let (x, w) = (self.f32(input(0)?)?, self.f32(input(1)?)?);
                check_len(call, "x", x.len(), mm.m * mm.k)?;
                check_len(call, "W", w.len(), mm.n * mm.k)?;
                let bias = if mm.bias {
                    Some(self.f32(input(2)?)?)
                } else {
                    None
                };
                if mm.activation.is_some() {
                    let (pre, act) = outs.f32_pair(0, 1)?;
                    kernels::matmul::forward(mm, x, w, bias, pre, Some(act));
                } else {
                    kernels::matmul::forward(mm, x, w, bias, outs.f32(0)?, None);
                }
            }
            Op::MatmulBackward(mm) => {
                let (x, w, dy) = (
                    self.f32(input(0)?)?,
                    self.f32(input(1)?)?,
                    self.f32(input(2)?)?,
                );
                let pre = if mm.activation.is_some() {
                    Some(self.f32(input(3)?)?)
                } else {
                    None
                };
                if mm.bias {
                    let (dx, dw, db) = outs.f32_triple(0)?;
                    kernels::matmul::backward(mm, x, w, dy, pre, dx, dw, Some(db), scratch);
                } else {
                    let (dx, dw) = outs.f32_pair(0, 1)?;
                    kernels::matmul::backward(mm, x, w, dy, pre, dx, dw, None, scratch);
                }
            }
            Op::LayerNorm(ln) => {
                let k = if ln.residual { 2 } else { 1 };
                let gamma = self.f32(input(k)?)?;
                let beta = if ln.bias {
                    Some(self.f32(input(k + 1)?)?)
                } else {
                    None
                };
                if ln.residual {
                    let (a, b) = (self.f32(input(0)?)?, self.f32(input(1)?)?);
                    let (sum, y, stats) = outs.f32_triple(0)?;
                    kernels::layernorm::residual_forward(ln, a, b, gamma, beta, sum, y, stats);
                } else {
                    let (y, stats) = outs.f32_pair(0, 1)?;
                    kernels::layernorm::forward(ln, self.f32(input(0)?)?, gamma, beta, y, stats);
                }
            }
            Op::LayerNormBackward(ln) => {
                let (x, stats, gamma, dy) = (
                    self.f32(input(0)?)?,
                    self.f32(input(1)?)?,
                    self.f32(input(2)?)?,
                    self.f32(input(3)?)?,
                );
                if ln.bias {
                    let (dx, dg, db) = outs.f32_triple(0)?;
                    kernels::layernorm::backward(ln, x, stats, gamma, dy, dx, dg, Some(db));
                } else {
                    let (dx, dg) = outs.f32_pair(0, 1)?;
                    kernels::layernorm::backward(ln, x, stats, gamma, dy, dx, dg, None);
                }
            }
            Op::RmsNorm(rn) => {
                if rn.residual {
                    let (a, b, gamma) = (
                        self.f32(input(0)?)?,
                        self.f32(input(1)?)?,
                        self.f32(input(2)?)?,
                    );
                    let (sum, y, stats) = outs.f32_triple(0)?;
                    kernels::rmsnorm::residual_forward(rn, a, b, gamma, sum, y, stats);
                } else {
                    let (x, gamma) = (self.f32(input(0)?)?, self.f32(input(1)?)?);
                    let (y, stats) = outs.f32_pair(0, 1)?;
                    kernels::rmsnorm::forward(rn, x, gamma, y, stats);
                }
            }
            Op::RmsNormBackward(rn) => {
                let (x, stats, gamma, dy) = (
                    self.f32(input(0)?)?,
                    self.f32(input(1)?)?,
                    self.f32(input(2)?)?,
                    self.f32(input(3)?)?,
                );
                let (dx, dg) = outs.f32_pair(0, 1)?;
                kernels::rmsnorm::backward(rn, x, stats, gamma, dy, dx, dg);
            }
            Op::Rope(r) => kernels::rope::forward(r, outs.f32(0)?),
            Op::RopeBackward(r) => kernels::rope::backward(r, outs.f32(0)?),
            Op::Activation(a) => {
                kernels::activation::forward(a.kind, self.f32(input(0)?)?, outs.f32(0)?)
            }
            Op::ActivationBackward(a) => kernels::activation::backward(
                a.kind,
                self.f32(input(0)?)?,
                self.f32(input(1)?)?,
                outs.f32(0)?,
            ),
            Op::SwiGlu(s) => kernels::swiglu::forward(s, self.f32(input(0)?)?, outs.f32(0)?),
            Op::SwiGluBackward(s) => kernels::swiglu::backward(
                s,
                self.f32(input(0)?)?,
                self.f32(input(1)?)?,
                outs.f32(0)?,
            ),
            Op::ResidualAdd(_) => {
                kernels::residual::forward(self.f32(input(0)?)?, self.f32(input(1)?)?, outs.f32(0)?)
            }
            Op::AttnScores(a) => {
                let src = self.kv_source(call, a, 1, false)?;
                check_local(call, a, &src)?;
                kernels::attention::scores_forward(a, self.f32(input(0)?)?, src, outs.f32(0)?);
            }
            Op::AttnSoftmax(a) => {
                kernels::attention::softmax_forward(a, self.f32(input(0)?)?, outs.f32(0)?)
            }
            Op::AttnValue(a) => {
                let src = self.kv_source(call, a, 2, true)?;
                check_local(call, a, &src)?;
                let (p, qkv) = (self.f32(input(0)?)?, self.f32(input(1)?)?);
                kernels::attention::value_forward(a, p, qkv, src, outs.f32(0)?);
            }
            Op::AttnValueBackward(a) => {
                no_cache_in_backward(call, a, 3)?;
                let (dout, qkv, p) = (
                    self.f32(input(0)?)?,
                    self.f32(input(1)?)?,
                    self.f32(input(2)?)?,
                );
                let (dp, dqkv) = outs.f32_pair(0, 1)?;
                kernels::attention::value_backward(a, dout, qkv, p, dp, dqkv);
            }
            Op::AttnSoftmaxBackward(a) => kernels::attention::softmax_backward(
                a,
                self.f32(input(0)?)?,
                self.f32(input(1)?)?,
                outs.f32(0)?,
            ),
            Op::AttnScoresBackward(a) => {
                no_cache_in_backward(call, a, 2)?;
                kernels::attention::scores_backward(
                    a,
                    self.f32(input(0)?)?,
                    self.f32(input(1)?)?,
                    outs.f32(0)?,
                )
            }
            Op::FlashAttention(a) => {
                let src = if ins.len() >= 3 {
                    let (k, v) = (self.f32(input(1)?)?, self.f32(input(2)?)?);
                    cache_source(call, a, input(1)?, k, v)?
                } else {
                    KvSource::Qkv
                };
                check_local(call, a, &src)?;
                let (o, lse) = outs.f32_pair(0, 1)?;
                kernels::flash_attention::forward(a, self.f32(input(0)?)?, src, o, lse);
            }
            Op::FlashAttentionBackward(a) => {
                no_cache_in_backward(call, a, 4)?;
                let (qkv, o, dout, lse) = (
                    self.f32(input(0)?)?,
                    self.f32(input(1)?)?,
                    self.f32(input(2)?)?,
                    self.f32(input(3)?)?,
                );
                kernels::flash_attention::backward(a, qkv, o, dout, lse, outs.f32(0)?);
            }
            Op::CrossEntropy(ce) => {
                let targets = self.i32(input(1)?)?;
                check_ids(call, targets, ce.v, "target")?;
                kernels::cross_entropy::forward(ce, self.f32(input(0)?)?, targets, outs.f32(0)?);
            }
            Op::CrossEntropyBackward(ce) => {
                let targets = self.i32(input(1)?)?;
                check_ids(call, targets, ce.v, "target")?;
                let dz = outs.f32(0)?;
                // In place when the output is the logits buffer (then input 0 is not readable).
                if call.inputs[0].id != call.outputs[0].id {
                    dz.copy_from_slice(self.f32(input(0)?)?);
                }
                kernels::cross_entropy::backward_in_place(ce, dz, targets);
            }
            Op::AdamW(adam) => self.adamw(call, adam, outs)?,
            Op::GradNorm(_) => {
                let grads: Vec<&[f32]> =
                    ins.iter().map(|t| self.f32(t)).collect::<Result<_, _>>()?;
                let sum: f64 = grads
                    .par_iter()
                    .map(|g| {
                        g.par_chunks(1 << 14)
                            .map(kernels::grad_norm::sum_of_squares)
                            .sum::<f64>()
                    })
                    .sum();
                outs.f32(0)?[0] = sum.sqrt() as f32;
            }
            Op::Cast(_) => {
                for (i, (src, dst)) in ins.iter().zip(&call.outputs).enumerate() {
                    ops::cast::cast_forward(dst.dtype, self.f32(src)?, outs.f32(i)?);
                }
            }
            Op::KvAppend(k) => {
                let qkv = self.f32(input(0)?)?;
                let kc = &call.outputs[0];
                let capacity = kc.shape.get(2).copied().unwrap_or(0);
                if k.pos + k.t_new > capacity {
                    return Err(invalid(call, format!(
                        "appending {} positions at {} overflows the KV cache of {capacity}: allocate a larger cache",
                        k.t_new, k.pos
                    )));
                }
                let width = qkv.len() / (k.b * k.t_new).max(1);
                let h_q = (width / k.d.max(1)).saturating_sub(2 * k.h_kv);
                let (kc_data, vc_data) = outs.f32_pair(0, 1)?;
                check_len(
                    call,
                    "v cache",
                    vc_data.len().min(kc_data.len()),
                    k.b * k.h_kv * capacity * k.d,
                )?;
                ops::kv_cache::kv_append(k, h_q, capacity, qkv, kc_data, vc_data);
            }
            Op::TakeLast(t) => ops::take_last::take_last(t, self.f32(input(0)?)?, outs.f32(0)?),
            Op::Sample(s) => {
                let logits = self.f32(input(0)?)?;
                let out = match outs.0.get_mut(0) {
                    Some((_, Data::I32(v))) => v,
                    _ => return Err(unsupported(call, "the sampled ids must be an i32 tensor")),
                };
                ops::sampling::sample(s, logits, self.sample_calls, out);
                self.sample_calls += 1;
            }
            Op::Collective(_) => {
                return Err(unsupported(call, "collectives need more than one device"))
            }
        }
        Ok(())
    }

    /// Keys or values from the cache when the call passes it at input `at`, else from qkv.
    fn kv_source(
        &self,
        call: &OpCall,
        a: &Attention,
        at: usize,
        value: bool,
    ) -> Result<KvSource<'_, f32>, BackendError> {
        match call.inputs.get(at) {
            None => Ok(KvSource::Qkv),
            Some(t) => {
                let data = self.f32(t)?;
                let (k, v) = if value {
                    (&[][..], data)
                } else {
                    (data, &[][..])
                };
                let src = cache_source(call, a, t, k, v)?;
                // Only the half this op reads was passed; the other stays empty.
                Ok(src)
            }
        }
    }

    fn adamw(
        &mut self,
        call: &OpCall,
        adam: &ops::adamw::AdamW,
        outs: &mut Outs,
    ) -> Result<(), BackendError> {
        // inputs [norm, θ…, g…, m…, v…] → outputs [θ…, m…, v…, copies…]
        let p = call.inputs.len().saturating_sub(1) / 4;
        if p == 0 || call.inputs.len() != 1 + 4 * p || call.outputs.len() < 3 * p {
            return Err(unsupported(
                call,
                "AdamW expects [norm, θ…, g…, m…, v…] → [θ…, m…, v…, copies…]",
            ));
        }
        let norm = f64::from(self.f32(&call.inputs[0])?[0]);
        // clip(‖g‖/S)/S: unscales the loss-scaled gradients and clips them in one factor (1/S
        // is exact for a power-of-two S, so this is (g/S)·clip). None: a non-finite norm under
        // loss scaling means an fp16 gradient overflowed, and the step leaves θ, m, v and the
        // copies as they are.
        let Some(factor) = adam.grad_factor(norm) else {
            return Ok(());
        };
        let clip = factor as f32;
        let copies = call.outputs.len() - 3 * p;
        for i in 0..p {
            let theta_t = &call.outputs[i];
            let decay = theta_t.shape.len() == 2;
            let g = self.f32(&call.inputs[1 + p + i])?;
            let (theta, rest) = outs.0.split_at_mut(p);
            let (m, rest) = rest.split_at_mut(p);
            let (v, copy) = rest.split_at_mut(p);
            let (Data::F32(theta), Data::F32(m), Data::F32(v)) =
                (&mut theta[i].1, &mut m[i].1, &mut v[i].1)
            else {
                return Err(unsupported(call, "AdamW state must be f32"));
            };
            let copy = if copies > 0 {
                match &mut copy[i].1 {
                    Data::F32(c) => Some((&mut c[..], call.outputs[3 * p + i].dtype)),
                    Data::I32(_) => None,
                }
            } else {
                None
            };
            kernels::adamw::update(&adam.hyper, decay, clip, theta, g, m, v, copy);
        }
        Ok(())
    }
}

fn check_ids(call: &OpCall, ids: &[i32], vocab: usize, what: &str) -> Result<(), BackendError> {
    match ids.iter().position(|&t| t < 0 || t as usize >= vocab) {
        Some(i) => Err(invalid(
            call,
            format!(
                "{what} id {} at position {i} is outside the vocabulary of {vocab}",
                ids[i]
            ),
        )),
        None => Ok(()),
    }
}

/// A cache source after checking that the cache covers the Tk positions attention reads.
fn cache_source<'a>(
    call: &OpCall,
    a: &Attention,
    t: &Tensor,
    k: &'a [f32],
    v: &'a [f32],
) -> Result<KvSource<'a, f32>, BackendError> {
    match t.shape[..] {
        [b, h_kv, capacity, d] if b == a.b && h_kv == a.h_kv && d == a.d && capacity >= a.tk => {
            Ok(KvSource::Cache { k, v, capacity })
        }
        _ => Err(unsupported(
            call,
            format!(
                "KV cache of shape {:?} does not hold {} positions of {a:?}",
                t.shape, a.tk
            ),
        )),
    }
}

/// Attention reading keys from qkv needs the queries and keys to be the same tokens.
fn check_local(call: &OpCall, a: &Attention, src: &KvSource<'_, f32>) -> Result<(), BackendError> {
    if matches!(src, KvSource::Qkv) && a.tq != a.tk {
        return Err(unsupported(
            call,
            format!("Tq = {} ≠ Tk = {} needs a KV cache", a.tq, a.tk),
        ));
    }
    if a.h_kv == 0 || !a.h.is_multiple_of(a.h_kv) {
        return Err(unsupported(
            call,
            format!("H = {} is not a multiple of H_kv = {}", a.h, a.h_kv),
        ));
    }
    Ok(())
}

fn no_cache_in_backward(call: &OpCall, a: &Attention, inputs: usize) -> Result<(), BackendError> {
    if call.inputs.len() > inputs || a.tq != a.tk {
        return Err(unsupported(
            call,
            "attention backward through a KV cache (training reads qkv only)",
        ));
    }
    Ok(())
}
