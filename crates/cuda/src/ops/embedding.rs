//! The embedding (kernels/embedding.cu): the forward gather (contiguous positions, or per row
//! for a ragged batch, 8 columns a thread where the row allows) and the backward, atomic adds
//! into the f32 token and position tables after zeroing them.

use super::all_aligned_16;
use crate::backend::{invalid, unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::embedding::{Embedding, EmbeddingBackwardIo, EmbeddingIo, PositionTable};
use tperf_core::tensor::Tensor;

const SRC: &str = "embedding";

impl CudaBackend {
    /// Every position the forward reads has a row of the learned table (a computed table takes
    /// any non-negative i32): per row, each host-written position; contiguous, the batch's last.
    pub(crate) fn check_embedding_positions(
        &self,
        call: &OpCall,
        e: &Embedding,
        io: &EmbeddingIo,
    ) -> Result<(), BackendError> {
        match (&io.positions, &io.wpe) {
            (Some(positions), wpe) => {
                let rows = match wpe {
                    Some(wpe) => (wpe.numel() / (e.c as u64).max(1)) as i64,
                    None => i64::from(i32::MAX),
                };
                self.check_range(call, positions, (0, rows), "position")
            }
            (None, Some(wpe)) => check_position_room(call, e, wpe),
            (None, None) => Ok(()),
        }
    }

    pub(crate) fn embedding_forward(
        &mut self,
        call: &OpCall,
        e: &Embedding,
    ) -> Result<(), BackendError> {
        let io: EmbeddingIo = call.operands(e)?;
        if e.per_row && io.positions.is_none() {
            return Err(unsupported(call, "per-row embedding reads positions"));
        }
        let (n, c) = (e.n as u64, e.c as u64);
        let tokens = self.check_ids(call, &io.tokens, e.n, e.vocab, "token")?;
        self.check_embedding_positions(call, e, &io)?;
        // wpe is an operand exactly when the table is learned.
        let (kind, wpe) = match (&io.wpe, e.positions) {
            (Some(wpe), _) => (1, self.arg(call, wpe, wpe.numel())?),
            (None, PositionTable::Sinusoidal) => (2, Arg::Buf(0, 0)),
            (None, _) => (0, Arg::Buf(0, 0)),
        };
        let wte = self.arg(call, &io.wte, e.vocab as u64 * c)?;
        let positions = self.arg_opt(call, io.positions.as_ref(), n)?;
        let out = self.arg(call, &io.x, n * c)?;
        let vec = c.is_multiple_of(8) && all_aligned_16(&[&wte, &wpe, &out]);
        let scale = if e.scale { (e.c as f32).sqrt() } else { 1.0 };
        let threads = n * if vec { c / 8 } else { c };
        let args = [
            tokens,
            wte,
            wpe,
            positions,
            out,
            Arg::I64(n as i64),
            Arg::I32(e.c as i32),
            Arg::I32(e.t as i32),
            Arg::I32(e.pos_offset as i32),
            Arg::I32(kind),
            Arg::F32(scale),
            Arg::I32(i32::from(vec)),
            Arg::Ptr(if e.per_row { 0 } else { self.op_scalars }),
        ];
        self.launch_1d(call, SRC, "embedding_forward", threads, &args)
    }

    pub(crate) fn embedding_backward(
        &mut self,
        call: &OpCall,
        e: &Embedding,
    ) -> Result<(), BackendError> {
        let io: EmbeddingBackwardIo = call.operands(e)?;
        let (n, c) = (e.n as u64, e.c as u64);
        let tokens = self.check_ids(call, &io.tokens, e.n, e.vocab, "token")?;
        let dout = self.arg(call, &io.dx, n * c)?;
        if io.dwte.dtype != DType::F32 {
            return Err(unsupported(call, "embedding gradients accumulate in f32"));
        }
        self.arg(call, &io.dwte, e.vocab as u64 * c)?;
        if !e.accumulate {
            self.zero(&io.dwte)?;
        }
        // dwpe is an operand exactly when the table is learned.
        let dwpe = match &io.dwpe {
            Some(t) => {
                if t.dtype != DType::F32 {
                    return Err(unsupported(call, "embedding gradients accumulate in f32"));
                }
                self.zero(t)?;
                self.ptr(t)?
            }
            None => 0,
        };
        let scale = if e.scale { (e.c as f32).sqrt() } else { 1.0 };
        let args = [
            tokens,
            dout,
            Arg::Ptr(self.ptr(&io.dwte)?),
            Arg::Ptr(dwpe),
            Arg::I64(n as i64),
            Arg::I32(e.c as i32),
            Arg::I32(e.t as i32),
            Arg::I32(e.pos_offset as i32),
            Arg::F32(scale),
        ];
        self.launch_1d(call, SRC, "embedding_backward", n * c, &args)
    }
}

/// The learned position table `wpe` has a row for every position of a contiguous batch.
fn check_position_room(call: &OpCall, e: &Embedding, wpe: &Tensor) -> Result<(), BackendError> {
    let rows = wpe.numel() / (e.c as u64).max(1);
    if (e.pos_offset + e.t) as u64 > rows {
        return Err(invalid(call, format!(
            "positions up to {} exceed the learned position table of {rows}: use a sequence within the model's context",
            e.pos_offset + e.t
        )));
    }
    Ok(())
}
