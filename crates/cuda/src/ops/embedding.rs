//! The embedding (kernels/embedding.cu): the forward gather (contiguous positions, or per row
//! for a ragged batch) and the backward into the f32 token table (a warp per vocabulary row,
//! deterministic, no atomics, no separate zeroing) and the learned position table.

use crate::backend::{invalid, unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::embedding::{Embedding, EmbeddingBackwardIo, EmbeddingIo, PositionTable};
use tperf_core::tensor::Tensor;

const SRC: &str = "embedding";

/// Whether every buffer argument is 16-byte aligned (null ones, absent operands, count as
/// aligned: the kernel does not read them).
fn aligned(args: &[&Arg]) -> bool {
    args.iter()
        .all(|a| matches!(a, Arg::Buf(p, _) | Arg::Ptr(p) if p % 16 == 0))
}

impl CudaBackend {
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
        if e.per_row {
            // Per-row positions are range-checked against the table there.
            self.check_ragged(call)?;
        }
        // wpe is an operand exactly when the table is learned.
        let (kind, wpe) = match (&io.wpe, e.positions) {
            (Some(wpe), _) => {
                if !e.per_row {
                    check_position_room(call, e, wpe)?;
                }
                (1, self.arg(call, wpe, wpe.numel())?)
            }
            (None, PositionTable::Sinusoidal) => (2, Arg::Buf(0, 0)),
            (None, _) => (0, Arg::Buf(0, 0)),
        };
        let wte = self.arg(call, &io.wte, e.vocab as u64 * c)?;
        let positions = self.arg_opt(call, io.positions.as_ref(), n)?;
        let out = self.arg(call, &io.x, n * c)?;
        let vec = c.is_multiple_of(8) && aligned(&[&wte, &wpe, &out]);
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
        for g in std::iter::once(&io.dwte).chain(&io.dwpe) {
            if g.dtype != DType::F32 {
                return Err(unsupported(call, "embedding gradients accumulate in f32"));
            }
        }
        self.arg(call, &io.dwte, e.vocab as u64 * c)?;
        let dwte = Arg::Ptr(self.ptr(&io.dwte)?);
        let vec = c.is_multiple_of(8) && aligned(&[&dout, &dwte]);
        let scale = if e.scale { (e.c as f32).sqrt() } else { 1.0 };
        let args = [
            tokens,
            dout,
            dwte,
            Arg::I64(n as i64),
            Arg::I32(e.vocab as i32),
            Arg::I32(e.c as i32),
            Arg::F32(scale),
            Arg::I32(i32::from(e.accumulate)),
            Arg::I32(i32::from(vec)),
        ];
        if e.vocab > 0 && c > 0 {
            // A warp per vocabulary row, 8 warps a block, the rest grid-stride.
            let blocks = (e.vocab as u64)
                .div_ceil(8)
                .min(self.gpu.info.sms as u64 * 64);
            self.launch(
                call,
                SRC,
                "embedding_backward",
                (blocks as u32, 1, 1),
                (256, 1, 1),
                0,
                &args,
            )?;
        }
        // dwpe is an operand exactly when the table is learned.
        if let Some(dwpe) = &io.dwpe {
            let table_rows = dwpe.numel() / c.max(1);
            let b = e.n / e.t.max(1);
            let args = [
                self.arg(call, &io.dx, n * c)?,
                Arg::Ptr(self.ptr(dwpe)?),
                Arg::I64(table_rows as i64),
                Arg::I32(b as i32),
                Arg::I32(e.t as i32),
                Arg::I32(e.pos_offset as i32),
                Arg::I32(e.c as i32),
            ];
            self.launch_1d(
                call,
                SRC,
                "embedding_position_backward",
                table_rows * c,
                &args,
            )?;
        }
        Ok(())
    }
}

/// The learned position table `wpe` has a row for every position the op embeds.
pub(crate) fn check_position_room(
    call: &OpCall,
    e: &Embedding,
    wpe: &Tensor,
) -> Result<(), BackendError> {
    let rows = wpe.numel() / (e.c as u64).max(1);
    if (e.pos_offset + e.t) as u64 > rows {
        return Err(invalid(call, format!(
            "positions up to {} exceed the learned position table of {rows}: use a sequence within the model's context",
            e.pos_offset + e.t
        )));
    }
    Ok(())
}
