//! Paged attention over a ragged batch (kernels/paged_attention.cu): each packed row's query
//! attends to its sequence's keys, read from the paged pools through the block table. It is
//! flash-decoding (ops/decode.rs: each packed row a unit, its keys split across blocks) where the
//! shape fits that kernel, else paged_attention.cu's one block per (row, head). The metadata
//! (positions, the row → sequence map, context lengths, block tables) comes from the host, which
//! records each tensor's (min, max) as it writes it; the launch checks those ranges against the
//! pools and the batch, so a bad layout is an error naming the op rather than an out-of-bounds
//! read.

use super::decode::{decode_fits, Decode, DecodeKv};
use crate::backend::{unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::paged_attention::{PagedAttention, PagedAttentionIo};

const SRC: &str = "paged_attention";

/// Threads of a paged attention block (PAGED_THREADS in paged_attention.cu); each owns up to 4
/// of the D output dimensions, so D ≤ 512.
const PAGED_THREADS: u32 = 128;
const MAX_HEAD_DIM: usize = 4 * PAGED_THREADS as usize;

impl CudaBackend {
    /// Every host-written block id, sequence index, context length and position lies in the
    /// pools, the batch and the block table's width.
    pub(crate) fn check_paged_attention(
        &self,
        call: &OpCall,
        a: &PagedAttention,
        io: &PagedAttentionIo,
    ) -> Result<(), BackendError> {
        let blocks = io.k_pool.shape.first().copied().unwrap_or(0) as i64;
        let seqs = io.ctx_lens.numel() as i64;
        let keys = (a.max_blocks * a.block_size) as i64;
        self.check_range(call, &io.block_table, (0, blocks), "block")?;
        self.check_range(call, &io.row_seq, (0, seqs), "sequence")?;
        self.check_range(call, &io.ctx_lens, (0, keys + 1), "context length")?;
        self.check_range(call, &io.positions, (0, keys), "position")
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
        self.check_paged_attention(call, a, &io)?;
        let n = a.rows() as u64;
        let seqs = io.ctx_lens.numel();
        let width = ((a.h + 2 * a.h_kv) * a.d) as u64;
        let pool = io.k_pool.numel();
        let qkv = self.arg(call, &io.qkv, n * width)?;
        let k = self.arg(call, &io.k_pool, pool)?;
        let v = self.arg(call, &io.v_pool, pool)?;
        let positions = self.arg(call, &io.positions, n)?;
        let row_seq = self.arg(call, &io.row_seq, n)?;
        let ctx_lens = self.arg(call, &io.ctx_lens, seqs)?;
        let block_table = self.arg(call, &io.block_table, seqs * a.max_blocks as u64)?;
        let out = self.arg(call, &io.out, n * (a.h * a.d) as u64)?;
        if n == 0 {
            return Ok(());
        }
        if decode_fits(a.h / a.h_kv, a.d, k, v) {
            let dec = Decode {
                qkv,
                k,
                v,
                o: out,
                lse: Arg::Buf(0, 0),
                kv: DecodeKv::Paged {
                    block_table,
                    row_seq,
                    positions,
                    ctx_lens,
                    block_size: a.block_size,
                    max_blocks: a.max_blocks,
                },
                units: n as usize,
                tq: 1,
                h: a.h,
                h_kv: a.h_kv,
                d: a.d,
                causal: a.causal,
                window: a.window.map_or(-1, |w| w.min(i32::MAX as usize) as i64),
                scale: (1.0 / (a.d as f64).sqrt()) as f32,
            };
            return self.decode_attention(call, &dec);
        }
        let args = [
            qkv,
            k,
            v,
            positions,
            row_seq,
            ctx_lens,
            block_table,
            out,
            Arg::I32(a.h as i32),
            Arg::I32(a.h_kv as i32),
            Arg::I32(a.d as i32),
            Arg::I32(a.block_size as i32),
            Arg::I32(a.max_blocks as i32),
            Arg::I32(i32::from(a.causal)),
            Arg::I32(a.window.map_or(0, |w| w as i32)),
        ];
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
}
