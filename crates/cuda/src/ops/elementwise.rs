//! Elementwise and data-movement ops (kernels/elementwise.cu).

use crate::backend::{invalid, unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::activation::{Activation, ActivationKind};
use tperf_core::ops::cast::Cast;
use tperf_core::ops::embedding::{Embedding, PositionTable};
use tperf_core::ops::kv_cache::KvAppend;
use tperf_core::ops::residual::ResidualAdd;
use tperf_core::ops::rope::Rope;
use tperf_core::ops::swiglu::SwiGlu;
use tperf_core::ops::take_last::TakeLast;
use tperf_core::ops::Op;
use tperf_core::tensor::Tensor;

const SRC: &str = "elementwise";

pub(crate) fn act_code(kind: ActivationKind) -> i32 {
    match kind {
        ActivationKind::Gelu => 0,
        ActivationKind::Relu => 1,
        ActivationKind::Silu => 2,
    }
}

impl CudaBackend {
    pub(crate) fn activation_forward(
        &mut self,
        call: &OpCall,
        a: &Activation,
    ) -> Result<(), BackendError> {
        let n = a.numel as u64;
        let args = [
            self.input(call, 0, n)?,
            self.output(call, 0, n)?,
            Arg::I64(n as i64),
            Arg::I32(act_code(a.kind)),
        ];
        self.launch_1d(call, SRC, "activation_forward", n, &args)
    }

    pub(crate) fn activation_backward(
        &mut self,
        call: &OpCall,
        a: &Activation,
    ) -> Result<(), BackendError> {
        let n = a.numel as u64;
        let args = [
            self.input(call, 0, n)?,
            self.input(call, 1, n)?,
            self.output(call, 0, n)?,
            Arg::I64(n as i64),
            Arg::I32(act_code(a.kind)),
        ];
        self.launch_1d(call, SRC, "activation_backward", n, &args)
    }

    pub(crate) fn swiglu_forward(&mut self, call: &OpCall, s: &SwiGlu) -> Result<(), BackendError> {
        let (n, f) = (s.n as u64, s.f as u64);
        let args = [
            self.input(call, 0, 2 * n * f)?,
            self.output(call, 0, n * f)?,
            Arg::I64(n as i64),
            Arg::I64(f as i64),
        ];
        self.launch_1d(call, SRC, "swiglu_forward", n * f, &args)
    }

    pub(crate) fn swiglu_backward(
        &mut self,
        call: &OpCall,
        s: &SwiGlu,
    ) -> Result<(), BackendError> {
        let (n, f) = (s.n as u64, s.f as u64);
        let args = [
            self.input(call, 0, 2 * n * f)?,
            self.input(call, 1, n * f)?,
            self.output(call, 0, 2 * n * f)?,
            Arg::I64(n as i64),
            Arg::I64(f as i64),
        ];
        self.launch_1d(call, SRC, "swiglu_backward", n * f, &args)
    }

    pub(crate) fn residual_add(
        &mut self,
        call: &OpCall,
        r: &ResidualAdd,
    ) -> Result<(), BackendError> {
        let n = r.numel as u64;
        let args = [
            self.input(call, 0, n)?,
            self.input(call, 1, n)?,
            self.output(call, 0, n)?,
            Arg::I64(n as i64),
        ];
        self.launch_1d(call, SRC, "residual_add", n, &args)
    }

    pub(crate) fn cast(&mut self, call: &OpCall, _c: &Cast) -> Result<(), BackendError> {
        if call.inputs.len() != call.outputs.len() {
            return Err(unsupported(call, "cast pairs each input with one output"));
        }
        for i in 0..call.inputs.len() {
            let n = call.outputs[i].numel();
            let args = [
                self.input(call, i, n)?,
                self.output(call, i, n)?,
                Arg::I64(n as i64),
            ];
            self.launch_1d(call, SRC, "cast", n, &args)?;
        }
        Ok(())
    }

    /// In place on qkv (output 0): the query and key heads of every row.
    pub(crate) fn rope(
        &mut self,
        call: &OpCall,
        r: &Rope,
        backward: bool,
    ) -> Result<(), BackendError> {
        let rows = (r.b * r.t) as u64;
        let width = r.row_width();
        let qkv = self.output(call, 0, rows * width as u64)?;
        let pairs = rows * ((r.h_q + r.h_kv) * (r.d / 2)) as u64;
        let args = [
            qkv,
            Arg::I64(rows as i64),
            Arg::I32(r.t as i32),
            Arg::I32(r.pos_offset as i32),
            Arg::I32((r.h_q + r.h_kv) as i32),
            Arg::I32(width as i32),
            Arg::I32(r.d as i32),
            Arg::F64(r.theta),
            Arg::F64(if backward { -1.0 } else { 1.0 }),
            Arg::Ptr(self.op_scalars),
        ];
        self.launch_1d(call, SRC, "rope_rows", pairs, &args)
    }

    pub(crate) fn embedding_forward(
        &mut self,
        call: &OpCall,
        e: &Embedding,
    ) -> Result<(), BackendError> {
        let (n, c) = (e.n as u64, e.c as u64);
        let tokens = self.check_ids(call, 0, e.n, e.vocab, "token")?;
        let wte = self.input(call, 1, e.vocab as u64 * c)?;
        let (positions, wpe) = match e.positions {
            PositionTable::Learned => {
                let t = call
                    .inputs
                    .get(2)
                    .ok_or_else(|| unsupported(call, "learned positions need wpe"))?;
                let rows = t.numel() / c.max(1);
                check_position_room(call, e)?;
                (1, self.arg(call, t, rows * c)?)
            }
            PositionTable::Sinusoidal => (2, Arg::Buf(0, 0)),
            _ => (0, Arg::Buf(0, 0)),
        };
        let scale = if e.scale { (e.c as f32).sqrt() } else { 1.0 };
        let args = [
            tokens,
            wte,
            wpe,
            self.output(call, 0, n * c)?,
            Arg::I64(n as i64),
            Arg::I32(e.c as i32),
            Arg::I32(e.t as i32),
            Arg::I32(e.pos_offset as i32),
            Arg::I32(positions),
            Arg::F32(scale),
            Arg::Ptr(self.op_scalars),
        ];
        self.launch_1d(call, SRC, "embedding_forward", n * c, &args)
    }

    pub(crate) fn embedding_backward(
        &mut self,
        call: &OpCall,
        e: &Embedding,
    ) -> Result<(), BackendError> {
        let (n, c) = (e.n as u64, e.c as u64);
        let tokens = self.check_ids(call, 0, e.n, e.vocab, "token")?;
        let dout = self.input(call, 1, n * c)?;
        let dwte_t = call
            .outputs
            .first()
            .ok_or_else(|| unsupported(call, "expected dwte"))?
            .clone();
        if dwte_t.dtype != DType::F32 {
            return Err(unsupported(call, "embedding gradients accumulate in f32"));
        }
        self.output(call, 0, e.vocab as u64 * c)?;
        if !e.accumulate {
            self.zero(&dwte_t)?;
        }
        let dwpe = if e.positions == PositionTable::Learned {
            let t = call
                .outputs
                .get(1)
                .ok_or_else(|| unsupported(call, "learned positions need dwpe"))?
                .clone();
            if t.dtype != DType::F32 {
                return Err(unsupported(call, "embedding gradients accumulate in f32"));
            }
            self.zero(&t)?;
            self.ptr(&t)?
        } else {
            0
        };
        let scale = if e.scale { (e.c as f32).sqrt() } else { 1.0 };
        let args = [
            tokens,
            dout,
            Arg::Ptr(self.ptr(&dwte_t)?),
            Arg::Ptr(dwpe),
            Arg::I64(n as i64),
            Arg::I32(e.c as i32),
            Arg::I32(e.t as i32),
            Arg::I32(e.pos_offset as i32),
            Arg::F32(scale),
        ];
        self.launch_1d(call, SRC, "embedding_backward", n * c, &args)
    }

    pub(crate) fn kv_append(&mut self, call: &OpCall, k: &KvAppend) -> Result<(), BackendError> {
        let kc = call
            .outputs
            .first()
            .ok_or_else(|| unsupported(call, "expected the K cache"))?;
        let capacity = kc.shape.get(2).copied().unwrap_or(0);
        check_kv_room(call, k)?;
        let qkv_t = call
            .inputs
            .first()
            .ok_or_else(|| unsupported(call, "expected qkv"))?;
        let rows = (k.b * k.t_new) as u64;
        let width = qkv_t.numel() / rows.max(1);
        let h_q = (width / k.d.max(1) as u64).saturating_sub(2 * k.h_kv as u64) as usize;
        let cache = (k.b * k.h_kv * capacity * k.d) as u64;
        let args = [
            self.input(call, 0, rows * width)?,
            self.output(call, 0, cache)?,
            self.output(call, 1, cache)?,
            Arg::I32(k.b as i32),
            Arg::I32(k.t_new as i32),
            Arg::I32(h_q as i32),
            Arg::I32(k.h_kv as i32),
            Arg::I32(k.d as i32),
            Arg::I32(k.pos as i32),
            Arg::I32(capacity as i32),
            Arg::Ptr(self.op_scalars),
        ];
        self.launch_1d(call, SRC, "kv_append", rows * (k.h_kv * k.d) as u64, &args)
    }

    pub(crate) fn take_last(&mut self, call: &OpCall, t: &TakeLast) -> Result<(), BackendError> {
        let (b, tt, c) = (t.b as u64, t.t as u64, t.c as u64);
        let args = [
            self.input(call, 0, b * tt * c)?,
            self.output(call, 0, b * c)?,
            Arg::I32(t.b as i32),
            Arg::I32(t.t as i32),
            Arg::I32(t.c as i32),
        ];
        self.launch_1d(call, SRC, "take_last", b * c, &args)
    }

    /// Input `i` as i32 ids, checked to be in 0..limit before they reach a kernel (an id past
    /// the table would read out of bounds). Ids enter only through `write_i32`, which records
    /// their range on the host, so the check needs no read back from the device.
    pub(crate) fn check_ids(
        &mut self,
        call: &OpCall,
        i: usize,
        n: usize,
        limit: usize,
        what: &str,
    ) -> Result<Arg, BackendError> {
        let t = call
            .inputs
            .get(i)
            .ok_or_else(|| unsupported(call, format!("expected {what} ids at input {i}")))?;
        if t.dtype != DType::I32 {
            return Err(unsupported(call, format!("{what} ids must be i32")));
        }
        let arg = self.arg(call, t, n as u64)?;
        self.check_id_range(call, t, limit, what)?;
        Ok(arg)
    }

    fn check_id_range(
        &self,
        call: &OpCall,
        t: &Tensor,
        limit: usize,
        what: &str,
    ) -> Result<(), BackendError> {
        if let Some((lo, hi)) = self.buf(t)?.id_range {
            let bad = if lo < 0 { lo } else { hi };
            if lo < 0 || hi as usize >= limit {
                return Err(invalid(
                    call,
                    format!("{what} id {bad} is outside the vocabulary of {limit}"),
                ));
            }
        }
        Ok(())
    }

    /// The checks on data an op's launch would have made, for an op that is not launched (in a
    /// replayed graph step, where token ids and positions are new), so bad data fails the same
    /// way whether the step is replayed or run.
    pub(crate) fn check_replayed(&self, call: &OpCall) -> Result<(), BackendError> {
        self.check_ragged(call)?;
        let (i, limit, what) = match &call.op {
            Op::Embedding(e) => {
                // Per-row positions were range-checked by check_ragged above.
                if e.positions == PositionTable::Learned && !e.per_row {
                    check_position_room(call, e)?;
                }
                (0, e.vocab, "token")
            }
            Op::EmbeddingBackward(e) => (0, e.vocab, "token"),
            Op::CrossEntropy(ce) | Op::CrossEntropyBackward(ce) => (1, ce.v, "target"),
            Op::KvAppend(k) => return check_kv_room(call, k),
            _ => return Ok(()),
        };
        match call.inputs.get(i) {
            Some(t) => self.check_id_range(call, t, limit, what),
            None => Ok(()),
        }
    }
}

/// The learned position table has a row for every position the op embeds.
fn check_position_room(call: &OpCall, e: &Embedding) -> Result<(), BackendError> {
    let rows = call
        .inputs
        .get(2)
        .map_or(0, |t| t.numel() / (e.c as u64).max(1));
    if (e.pos_offset + e.t) as u64 > rows {
        return Err(invalid(call, format!(
            "positions up to {} exceed the learned position table of {rows}: use a sequence within the model's context",
            e.pos_offset + e.t
        )));
    }
    Ok(())
}

/// The KV cache has room for the appended positions.
fn check_kv_room(call: &OpCall, k: &KvAppend) -> Result<(), BackendError> {
    let capacity = call
        .outputs
        .first()
        .and_then(|kc| kc.shape.get(2).copied())
        .unwrap_or(0);
    if k.pos + k.t_new > capacity {
        return Err(invalid(call, format!(
            "appending {} positions at {} overflows the KV cache of {capacity}: allocate a larger cache",
            k.t_new, k.pos
        )));
    }
    Ok(())
}
