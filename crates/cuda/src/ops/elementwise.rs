//! Host side of the elementwise and data-movement ops, each with its own kernel file
//! (kernels/{activation,gated,residual,cast,kv_cache,take_last}.cu), and the id checks the ops
//! that read token or target ids share.

use crate::backend::{invalid, unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::activation::{Activation, ActivationBackwardIo, ActivationIo, ActivationKind};
use tperf_core::ops::cast::{Cast, CastIo};
use tperf_core::ops::cross_entropy::{CrossEntropyBackwardIo, CrossEntropyIo};
use tperf_core::ops::embedding::{EmbeddingBackwardIo, EmbeddingIo};
use tperf_core::ops::kv_cache::{KvAppend, KvAppendIo};
use tperf_core::ops::residual::{ResidualAdd, ResidualAddIo};
use tperf_core::ops::swiglu::{SwiGlu, SwiGluBackwardIo, SwiGluIo};
use tperf_core::ops::take_last::{TakeLast, TakeLastIo};
use tperf_core::ops::Op;
use tperf_core::tensor::Tensor;

pub(crate) fn act_code(kind: ActivationKind) -> i32 {
    match kind {
        ActivationKind::Gelu => 0,
        ActivationKind::Relu => 1,
        ActivationKind::Silu => 2,
    }
}

/// The grid of `gated_forward`/`gated_backward` (256 threads a block): x covers a row's F
/// columns at 4 a thread (the vector path's width), y one block row per matrix row up to the
/// grid's limit, beyond which the rows go grid-stride.
pub(crate) fn gated_grid(rows: u64, f: u64) -> (u32, u32, u32) {
    let x = f.div_ceil(4 * 256).clamp(1, 1 << 16) as u32;
    let y = rows.clamp(1, 65_535) as u32;
    (x, y, 1)
}

impl CudaBackend {
    pub(crate) fn activation_forward(
        &mut self,
        call: &OpCall,
        a: &Activation,
    ) -> Result<(), BackendError> {
        let io: ActivationIo = call.operands(a)?;
        let n = a.numel as u64;
        let args = [
            self.arg(call, &io.x, n)?,
            self.arg(call, &io.y, n)?,
            Arg::I64(n as i64),
            Arg::I32(act_code(a.kind)),
        ];
        self.launch_1d(call, "activation", "activation_forward", n, &args)
    }

    pub(crate) fn activation_backward(
        &mut self,
        call: &OpCall,
        a: &Activation,
    ) -> Result<(), BackendError> {
        let io: ActivationBackwardIo = call.operands(a)?;
        let n = a.numel as u64;
        let args = [
            self.arg(call, &io.x, n)?,
            self.arg(call, &io.dy, n)?,
            self.arg(call, &io.dx, n)?,
            Arg::I64(n as i64),
            Arg::I32(act_code(a.kind)),
        ];
        self.launch_1d(call, "activation", "activation_backward", n, &args)
    }

    pub(crate) fn swiglu_forward(&mut self, call: &OpCall, s: &SwiGlu) -> Result<(), BackendError> {
        let io: SwiGluIo = call.operands(s)?;
        let (n, f) = (s.n as u64, s.f as u64);
        let tensors = [(&io.h, 2 * n * f), (&io.g, n * f)];
        self.launch_gated(
            call,
            "gated_forward",
            &tensors,
            (n, f),
            ActivationKind::Silu,
        )
    }

    pub(crate) fn swiglu_backward(
        &mut self,
        call: &OpCall,
        s: &SwiGlu,
    ) -> Result<(), BackendError> {
        let io: SwiGluBackwardIo = call.operands(s)?;
        let (n, f) = (s.n as u64, s.f as u64);
        let tensors = [(&io.h, 2 * n * f), (&io.dg, n * f), (&io.dh, 2 * n * f)];
        self.launch_gated(
            call,
            "gated_backward",
            &tensors,
            (n, f),
            ActivationKind::Silu,
        )
    }

    /// One launch of the gated pair SwiGLU and GeGLU share (`gated_forward`: h, g;
    /// `gated_backward`: h, dg, dh), over n rows of f gated columns with activation `kind`.
    pub(crate) fn launch_gated(
        &mut self,
        call: &OpCall,
        kernel: &'static str,
        tensors: &[(&Tensor, u64)],
        (n, f): (u64, u64),
        kind: ActivationKind,
    ) -> Result<(), BackendError> {
        let mut args = Vec::with_capacity(tensors.len() + 3);
        for (t, numel) in tensors {
            args.push(self.arg(call, t, *numel)?);
        }
        args.extend([
            Arg::I64(n as i64),
            Arg::I64(f as i64),
            Arg::I32(act_code(kind)),
        ]);
        if n * f == 0 {
            return Ok(());
        }
        let grid = gated_grid(n, f);
        self.launch(call, "gated", kernel, grid, (256, 1, 1), 0, &args)
    }

    pub(crate) fn residual_add(
        &mut self,
        call: &OpCall,
        r: &ResidualAdd,
    ) -> Result<(), BackendError> {
        let io: ResidualAddIo = call.operands(r)?;
        let n = r.numel as u64;
        let args = [
            self.arg(call, &io.a, n)?,
            self.arg(call, &io.b, n)?,
            self.arg(call, &io.sum, n)?,
            Arg::I64(n as i64),
        ];
        self.launch_1d(call, "residual", "residual_add", n, &args)
    }

    pub(crate) fn cast(&mut self, call: &OpCall, c: &Cast) -> Result<(), BackendError> {
        let io: CastIo = call.operands(c)?;
        for (src, dst) in io.src.iter().zip(&io.dst) {
            let n = dst.numel();
            let args = [
                self.arg(call, src, n)?,
                self.arg(call, dst, n)?,
                Arg::I64(n as i64),
            ];
            self.launch_1d(call, "cast", "cast", n, &args)?;
        }
        Ok(())
    }

    pub(crate) fn kv_append(&mut self, call: &OpCall, k: &KvAppend) -> Result<(), BackendError> {
        let io: KvAppendIo = call.operands(k)?;
        let capacity = io.k_cache.shape.get(2).copied().unwrap_or(0);
        check_kv_room(call, k, &io.k_cache)?;
        let rows = (k.b * k.t_new) as u64;
        let width = io.qkv.numel() / rows.max(1);
        let h_q = (width / k.d.max(1) as u64).saturating_sub(2 * k.h_kv as u64) as usize;
        let cache = (k.b * k.h_kv * capacity * k.d) as u64;
        let args = [
            self.arg(call, &io.qkv, rows * width)?,
            self.arg(call, &io.k_cache, cache)?,
            self.arg(call, &io.v_cache, cache)?,
            Arg::I32(k.b as i32),
            Arg::I32(k.t_new as i32),
            Arg::I32(h_q as i32),
            Arg::I32(k.h_kv as i32),
            Arg::I32(k.d as i32),
            Arg::I32(k.pos as i32),
            Arg::I32(capacity as i32),
            Arg::Ptr(self.op_scalars),
        ];
        self.launch_1d(
            call,
            "kv_cache",
            "kv_append",
            rows * (k.h_kv * k.d) as u64,
            &args,
        )
    }

    pub(crate) fn take_last(&mut self, call: &OpCall, t: &TakeLast) -> Result<(), BackendError> {
        let io: TakeLastIo = call.operands(t)?;
        let (b, tt, c) = (t.b as u64, t.t as u64, t.c as u64);
        let args = [
            self.arg(call, &io.x, b * tt * c)?,
            self.arg(call, &io.last, b * c)?,
            Arg::I32(t.b as i32),
            Arg::I32(t.t as i32),
            Arg::I32(t.c as i32),
        ];
        self.launch_1d(call, "take_last", "take_last", b * c, &args)
    }

    /// `t` as i32 ids, checked to be in 0..limit before they reach a kernel (an id past the
    /// table would read out of bounds). Ids enter only through `write_i32`, which records their
    /// range on the host, so the check needs no read back from the device.
    pub(crate) fn check_ids(
        &self,
        call: &OpCall,
        t: &Tensor,
        n: usize,
        limit: usize,
        what: &str,
    ) -> Result<Arg, BackendError> {
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
        let (ids, limit, what) = match &call.op {
            Op::Embedding(e) => {
                let io: EmbeddingIo = call.operands(e)?;
                // Per-row positions were range-checked by check_ragged above.
                if let (Some(wpe), false) = (&io.wpe, e.per_row) {
                    super::embedding::check_position_room(call, e, wpe)?;
                }
                (io.tokens, e.vocab, "token")
            }
            Op::EmbeddingBackward(e) => {
                let io: EmbeddingBackwardIo = call.operands(e)?;
                (io.tokens, e.vocab, "token")
            }
            Op::CrossEntropy(ce) => {
                let io: CrossEntropyIo = call.operands(ce)?;
                (io.targets, ce.v, "target")
            }
            Op::CrossEntropyBackward(ce) => {
                let io: CrossEntropyBackwardIo = call.operands(ce)?;
                (io.targets, ce.v, "target")
            }
            Op::KvAppend(k) => {
                let io: KvAppendIo = call.operands(k)?;
                return check_kv_room(call, k, &io.k_cache);
            }
            _ => return Ok(()),
        };
        self.check_id_range(call, &ids, limit, what)
    }
}

/// The KV cache (`k_cache`, shaped as its V twin) has room for the appended positions.
fn check_kv_room(call: &OpCall, k: &KvAppend, k_cache: &Tensor) -> Result<(), BackendError> {
    let capacity = k_cache.shape.get(2).copied().unwrap_or(0);
    if k.pos + k.t_new > capacity {
        return Err(invalid(call, format!(
            "appending {} positions at {} overflows the KV cache of {capacity}: allocate a larger cache",
            k.t_new, k.pos
        )));
    }
    Ok(())
}
