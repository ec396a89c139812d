//! Ragged batches over a paged KV cache (kernels/paged.cu): RoPE and the embedding at per-row
//! positions, the paged KV append, paged attention and the row gather. Operands by name (the
//! op's `operands!` struct). The metadata tensors (positions, slots, block tables, …) come from
//! the host, which records each one's (min, max) as it writes it; the launches check those
//! ranges against the pools and the batch, so a bad layout is an error naming the op rather than
//! an out-of-bounds read.

use crate::backend::{invalid, unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::embedding::{Embedding, EmbeddingIo, PositionTable};
use tperf_core::ops::kv_cache::{PagedKvAppend, PagedKvAppendIo};
use tperf_core::ops::paged_attention::{PagedAttention, PagedAttentionIo};
use tperf_core::ops::rope::{Rope, RopeIo};
use tperf_core::ops::take_last::{TakeRows, TakeRowsIo};
use tperf_core::ops::Op;
use tperf_core::tensor::Tensor;

const SRC: &str = "paged";

/// Threads of a paged attention block (PAGED_THREADS in paged.cu); each owns up to 4 of the D
/// output dimensions, so D ≤ 512.
const PAGED_THREADS: u32 = 128;
const MAX_HEAD_DIM: usize = 4 * PAGED_THREADS as usize;

impl CudaBackend {
    /// Fails when the host-written ids of `t` leave lo..hi (unchecked when a kernel wrote them).
    fn check_range(
        &self,
        call: &OpCall,
        t: &Tensor,
        (lo, hi): (i64, i64),
        what: &str,
    ) -> Result<(), BackendError> {
        if let Some((min, max)) = self.buf(t)?.id_range {
            if i64::from(min) < lo || i64::from(max) >= hi {
                let bad = if i64::from(min) < lo { min } else { max };
                return Err(invalid(call, format!("{what} {bad} is outside {lo}..{hi}")));
            }
        }
        Ok(())
    }

    /// The data checks of a ragged op, whether it is launched or replayed from a graph.
    pub(crate) fn check_ragged(&self, call: &OpCall) -> Result<(), BackendError> {
        match &call.op {
            Op::Rope(r) if r.per_row => {
                let io: RopeIo = call.operands(r)?;
                if let Some(p) = &io.positions {
                    self.check_range(call, p, (0, i64::from(i32::MAX)), "position")?;
                }
            }
            Op::Embedding(e) if e.per_row => {
                let io: EmbeddingIo = call.operands(e)?;
                let rows = match &io.wpe {
                    Some(wpe) => (wpe.numel() / (e.c as u64).max(1)) as i64,
                    None => i64::from(i32::MAX),
                };
                if let Some(p) = &io.positions {
                    self.check_range(call, p, (0, rows), "position")?;
                }
            }
            Op::PagedKvAppend(k) => {
                let io: PagedKvAppendIo = call.operands(k)?;
                let blocks = io.k_pool.shape.first().copied().unwrap_or(0);
                let capacity = (blocks * k.block_size) as i64;
                self.check_range(call, &io.slots, (0, capacity), "slot")?;
            }
            Op::PagedAttention(a) => {
                let io: PagedAttentionIo = call.operands(a)?;
                let blocks = io.k_pool.shape.first().copied().unwrap_or(0) as i64;
                let seqs = io.ctx_lens.numel() as i64;
                let keys = (a.max_blocks * a.block_size) as i64;
                self.check_range(call, &io.block_table, (0, blocks), "block")?;
                self.check_range(call, &io.row_seq, (0, seqs), "sequence")?;
                self.check_range(call, &io.ctx_lens, (0, keys + 1), "context length")?;
                self.check_range(call, &io.positions, (0, keys), "position")?;
            }
            Op::TakeRows(t) => {
                let io: TakeRowsIo = call.operands(t)?;
                let n = (io.x.numel() / (t.c as u64).max(1)) as i64;
                self.check_range(call, &io.rows, (0, n), "row")?;
            }
            _ => {}
        }
        Ok(())
    }

    /// RoPE with each row at positions[row] (forward, or backward with `sign` −1).
    pub(crate) fn rope_positions(
        &mut self,
        call: &OpCall,
        r: &Rope,
        backward: bool,
    ) -> Result<(), BackendError> {
        let io: RopeIo = call.operands(r)?;
        // The scaling as the kernel's three numbers (common.cuh's rope_inv_freq).
        let bands = r.scaling.bands();
        let positions = io
            .positions
            .as_ref()
            .ok_or_else(|| unsupported(call, "per-row RoPE reads positions"))?;
        self.check_ragged(call)?;
        let rows = (r.b * r.t) as u64;
        let width = r.row_width();
        let args = [
            self.arg(call, &io.qkv, rows * width as u64)?,
            self.arg(call, positions, rows)?,
            Arg::I64(rows as i64),
            Arg::I32((r.h_q + r.h_kv) as i32),
            Arg::I32(width as i32),
            Arg::I32(r.d as i32),
            Arg::F64(r.theta),
            Arg::F64(bands.factor),
            Arg::F64(bands.keep_below),
            Arg::F64(bands.divide_above),
            Arg::F64(if backward { -1.0 } else { 1.0 }),
        ];
        let pairs = rows * ((r.h_q + r.h_kv) * (r.d / 2)) as u64;
        self.launch_1d(call, SRC, "rope_positions", pairs, &args)
    }

    /// The embedding with each row at positions[row].
    pub(crate) fn embedding_positions(
        &mut self,
        call: &OpCall,
        e: &Embedding,
    ) -> Result<(), BackendError> {
        let io: EmbeddingIo = call.operands(e)?;
        let positions = io
            .positions
            .as_ref()
            .ok_or_else(|| unsupported(call, "per-row embedding reads positions"))?;
        self.check_ragged(call)?;
        let (n, c) = (e.n as u64, e.c as u64);
        let tokens = self.check_ids(call, &io.tokens, e.n, e.vocab, "token")?;
        let (kind, wpe) = match (&e.positions, &io.wpe) {
            (PositionTable::Learned, Some(wpe)) => (1, self.arg(call, wpe, wpe.numel())?),
            (PositionTable::Sinusoidal, _) => (2, Arg::Buf(0, 0)),
            _ => (0, Arg::Buf(0, 0)),
        };
        let scale = if e.scale { (e.c as f32).sqrt() } else { 1.0 };
        let args = [
            tokens,
            self.arg(call, &io.wte, e.vocab as u64 * c)?,
            wpe,
            self.arg(call, positions, n)?,
            self.arg(call, &io.x, n * c)?,
            Arg::I64(n as i64),
            Arg::I32(e.c as i32),
            Arg::I32(kind),
            Arg::F32(scale),
        ];
        self.launch_1d(call, SRC, "embedding_positions", n * c, &args)
    }

    pub(crate) fn paged_kv_append(
        &mut self,
        call: &OpCall,
        k: &PagedKvAppend,
    ) -> Result<(), BackendError> {
        let io: PagedKvAppendIo = call.operands(k)?;
        self.check_ragged(call)?;
        let n = k.n as u64;
        let width = ((k.h_q + 2 * k.h_kv) * k.d) as u64;
        let pool = io.k_pool.numel();
        let args = [
            self.arg(call, &io.qkv, n * width)?,
            self.arg(call, &io.slots, n)?,
            self.arg(call, &io.k_pool, pool)?,
            self.arg(call, &io.v_pool, pool)?,
            Arg::I64(n as i64),
            Arg::I32(k.h_q as i32),
            Arg::I32(k.h_kv as i32),
            Arg::I32(k.d as i32),
            Arg::I32(k.block_size as i32),
        ];
        self.launch_1d(
            call,
            SRC,
            "paged_kv_append",
            n * (k.h_kv * k.d) as u64,
            &args,
        )
    }

    pub(crate) fn paged_attention(
        &mut self,
        call: &OpCall,
        a: &PagedAttention,
    ) -> Result<(), BackendError> {
        let io: PagedAttentionIo = call.operands(a)?;
        if a.h_kv == 0 || !a.h.is_multiple_of(a.h_kv) {
            return Err(unsupported(
                call,
                format!("H = {} is not a multiple of H_kv = {}", a.h, a.h_kv),
            ));
        }
        if a.d > MAX_HEAD_DIM {
            return Err(unsupported(
                call,
                format!(
                    "head dim {} is above the paged kernel's {MAX_HEAD_DIM}",
                    a.d
                ),
            ));
        }
        self.check_ragged(call)?;
        let n = a.rows() as u64;
        let seqs = io.ctx_lens.numel();
        let width = ((a.h + 2 * a.h_kv) * a.d) as u64;
        let pool = io.k_pool.numel();
        let args = [
            self.arg(call, &io.qkv, n * width)?,
            self.arg(call, &io.k_pool, pool)?,
            self.arg(call, &io.v_pool, pool)?,
            self.arg(call, &io.positions, n)?,
            self.arg(call, &io.row_seq, n)?,
            self.arg(call, &io.ctx_lens, seqs)?,
            self.arg(call, &io.block_table, seqs * a.max_blocks as u64)?,
            self.arg(call, &io.out, n * (a.h * a.d) as u64)?,
            Arg::I32(a.h as i32),
            Arg::I32(a.h_kv as i32),
            Arg::I32(a.d as i32),
            Arg::I32(a.block_size as i32),
            Arg::I32(a.max_blocks as i32),
            Arg::I32(i32::from(a.causal)),
            Arg::I32(a.window.map_or(0, |w| w as i32)),
        ];
        if n == 0 {
            return Ok(());
        }
        let grid = (n.min(i32::MAX as u64) as u32, a.h as u32, 1);
        let shared = (a.d * 4) as u32;
        self.launch(
            call,
            SRC,
            "paged_attention",
            grid,
            (PAGED_THREADS, 1, 1),
            shared,
            &args,
        )
    }

    pub(crate) fn take_rows(&mut self, call: &OpCall, t: &TakeRows) -> Result<(), BackendError> {
        let io: TakeRowsIo = call.operands(t)?;
        self.check_ragged(call)?;
        let (s, c) = (t.s as u64, t.c as u64);
        let args = [
            self.arg(call, &io.x, io.x.numel())?,
            self.arg(call, &io.rows, s)?,
            self.arg(call, &io.out, s * c)?,
            Arg::I32(t.s as i32),
            Arg::I32(t.c as i32),
        ];
        self.launch_1d(call, SRC, "take_rows", s * c, &args)
    }
}
