//! Paged attention over a ragged batch (kernels/paged_attention.cu): each packed row's query
//! attends to its sequence's keys, read from the paged pools through the block table. It is
//! flash-decoding (ops/decode.rs: each packed row a unit, its keys split across blocks) where the
//! shape fits that kernel, else paged_attention.cu's one block per (row, head). The metadata
//! (positions, the row → sequence map, context lengths, block tables) comes from the host, which
//! records each tensor's (min, max) as it writes it; the launch checks those ranges against the
//! pools and the batch, so a bad layout is an error naming the op rather than an out-of-bounds
//! read.

use super::attention::{mma_variant, MmaVariant, FLASH_MMA, MMA_FWD_THREADS};
use super::decode::{decode_fits, Decode, DecodeKv};
use super::decode::{MAX_ROWS, SMALL_ROWS};
use crate::backend::{dt_code, unsupported, CudaBackend};
use crate::error::driver;
use crate::gpu::Arg;
use cudarc::driver::result as cu;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::paged_attention::{PagedAttention, PagedAttentionIo, SeqLens};

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
        let group = a.h / a.h_kv;
        let decode = decode_fits(group, a.d, k, v);
        // Prefill chunks of at least PREFILL_ROWS rows (every row, where flash-decoding does not
        // take the shape) run on tensor cores, in units of up to the kernel's query tile; only
        // eagerly, as the units table is written for this launch (a captured step is
        // decode-only).
        let mma = mma_variant(a.d, &[qkv, k, v, out], &[width, a.d as u64])
            .filter(|_| !self.capturing() && self.paged_mma);
        let least = if decode { PREFILL_ROWS } else { 1 };
        let on_mma: Vec<bool> = a
            .seqs
            .iter()
            .map(|s| mma.is_some() && s.q_len >= least)
            .collect();
        if let Some(m) = mma.as_ref().filter(|_| on_mma.contains(&true)) {
            let units = query_runs(&a.seqs, m.fwd_bq as usize, |i| on_mma[i]);
            let operands = PagedOperands {
                qkv,
                k,
                v,
                positions,
                row_seq,
                ctx_lens,
                block_table,
                out,
            };
            self.paged_mma(call, a, m, &units, &operands)?;
            if !on_mma.contains(&false) {
                return Ok(());
            }
        }
        if decode {
            // A prefill chunk's rows share their sequence's keys: runs of them are one unit,
            // which reads those keys once for all its queries. Decode rows stay one a unit.
            // (Chunks on tensor cores are left out of the runs.)
            let tile = query_tile(group);
            let chunks = !self.capturing() && a.seqs.iter().any(|s| s.q_len > 1);
            let runs = if on_mma.contains(&true) || (tile > 1 && chunks) {
                Some(query_runs(&a.seqs, tile, |i| !on_mma[i]))
            } else {
                None
            };
            let table = match &runs {
                Some(r) => Some(self.upload_i32_scratch(r, "paged attention's query runs")?),
                None => None,
            };
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
                    runs: table.map_or(Arg::Buf(0, 0), |b| Arg::Buf(b.ptr, dt_code(DType::I32))),
                    block_size: a.block_size,
                    max_blocks: a.max_blocks,
                },
                units: runs.as_ref().map_or(n as usize, |r| r.len() / 2),
                tq: if runs.is_some() { tile } else { 1 },
                h: a.h,
                h_kv: a.h_kv,
                d: a.d,
                causal: a.causal,
                window: window_arg(a),
                scale: scale(a),
            };
            let result = self.decode_attention(call, &dec);
            if let Some(b) = table {
                // Stream-ordered: the kernel that reads it runs first.
                self.alloc.free(b);
            }
            return result;
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

/// The device operands of one paged attention call, as its kernels take them.
struct PagedOperands {
    qkv: Arg,
    k: Arg,
    v: Arg,
    positions: Arg,
    row_seq: Arg,
    ctx_lens: Arg,
    block_table: Arg,
    out: Arg,
}

/// The sliding window as flash-decoding and the tensor-core prefill take it: −1 for none.
fn window_arg(a: &PagedAttention) -> i64 {
    a.window.map_or(-1, |w| w.min(i32::MAX as usize) as i64)
}

/// 1/√D, the scores' scale.
fn scale(a: &PagedAttention) -> f32 {
    (1.0 / (a.d as f64).sqrt()) as f32
}

/// Rows a sequence's chunk needs for the tensor-core prefill kernel where flash-decoding also
/// takes the shape: one m16 tile of the kernel's. Shorter chunks (and decode rows) are cheaper
/// as flash-decoding units, which read the keys once for one or two queries where the tile
/// would compute on at least 16 rows.
const PREFILL_ROWS: usize = 16;

impl CudaBackend {
    /// The tensor-core paged prefill (flash_mma.cu's paged_mma_fwd_*) over `units`, (first row,
    /// rows ≤ the variant's query tile) pairs of one sequence's rows each: one block per (unit,
    /// head).
    fn paged_mma(
        &mut self,
        call: &OpCall,
        a: &PagedAttention,
        m: &MmaVariant,
        units: &[i32],
        ops: &PagedOperands,
    ) -> Result<(), BackendError> {
        let blocks = (units.len() / 2) as u64 * a.h as u64;
        if blocks > i32::MAX as u64 {
            return Err(unsupported(
                call,
                format!("{blocks} blocks of paged prefill are past the grid's limit"),
            ));
        }
        let table = self.upload_i32_scratch(units, "paged prefill's units")?;
        let args = [
            ops.qkv,
            ops.k,
            ops.v,
            ops.block_table,
            ops.row_seq,
            ops.positions,
            ops.ctx_lens,
            Arg::Buf(table.ptr, dt_code(DType::I32)),
            ops.out,
            Arg::I32(a.h as i32),
            Arg::I32(a.h_kv as i32),
            Arg::I32(a.block_size as i32),
            Arg::I32(a.max_blocks as i32),
            Arg::I32(i32::from(a.causal)),
            Arg::I64(window_arg(a)),
            Arg::F32(scale(a)),
        ];
        let grid = (blocks as u32, 1, 1);
        let result = self.launch(
            call,
            FLASH_MMA,
            m.paged,
            grid,
            (MMA_FWD_THREADS, 1, 1),
            m.fwd_shared,
            &args,
        );
        // Stream-ordered: the kernel that reads it runs first.
        self.alloc.free(table);
        result
    }

    /// A scratch block holding `words`, copied on the stream (the caller frees it, stream-
    /// ordered, after the launch that reads it).
    fn upload_i32_scratch(
        &mut self,
        words: &[i32],
        what: &'static str,
    ) -> Result<crate::alloc::Block, BackendError> {
        let block = self
            .alloc
            .alloc((words.len() * 4) as u64)
            .map_err(driver(what))?;
        // SAFETY: `block` holds at least `words.len()` i32s; `words` is pageable host memory,
        // which the driver stages before the call returns; the kernels that read the block are
        // issued after the copy on the same stream.
        if let Err(e) = unsafe { cu::memcpy_htod_async(block.ptr, words, self.gpu.cu_stream()) } {
            self.alloc.free(block);
            return Err(driver(what)(e).into());
        }
        Ok(block)
    }
}

/// Queries of one sequence a unit of flash-decoding takes: as many as the two-row kernels hold
/// (rows = query heads of a group × queries ≤ SMALL_ROWS), so 2 for MHA and 1 (one row a unit)
/// for GQA. Measured serving gpt2-124m bf16 on the H200 at saturation (4096 prompts of 128 in /
/// 128 out; bench-results/2026-12-04-h200-session14/serve-tiles), the device part of a step with
/// ~1,900 rows of prefill: 5.31 ms at 1, 4.58 at 2, 5.78 at 4, 7.05 at 8 — the eight-row kernel
/// (247 registers, 2 blocks an SM) issues the same dot products per key at a third of the
/// occupancy, and the keys a run shares are read from the L2 either way. A tensor-core paged
/// prefill kernel is what these rows want. `TPERF_PAGED_QUERY_TILE` sets another tile (up to
/// MAX_ROWS / group), for measuring.
fn query_tile(group: usize) -> usize {
    let most = (MAX_ROWS / group.max(1)).max(1);
    let default = (SMALL_ROWS / group.max(1)).max(1);
    std::env::var("TPERF_PAGED_QUERY_TILE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(default, |t| t.clamp(1, most))
}

/// The (first row, rows) pairs that cut the packed rows (in order) of each sequence `pick`
/// takes (by index) into runs of at most `tile`.
fn query_runs(seqs: &[SeqLens], tile: usize, pick: impl Fn(usize) -> bool) -> Vec<i32> {
    let mut runs = Vec::new();
    let mut row = 0;
    for (i, s) in seqs.iter().enumerate() {
        if !pick(i) {
            row += s.q_len;
            continue;
        }
        let mut left = s.q_len;
        while left > 0 {
            let take = left.min(tile);
            runs.extend([row as i32, take as i32]);
            row += take;
            left -= take;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cut_each_sequence_and_never_cross_one() {
        let seqs = |q: &[usize]| -> Vec<SeqLens> {
            q.iter()
                .map(|&q_len| SeqLens {
                    q_len,
                    ctx_len: q_len,
                })
                .collect()
        };
        let all = |_| true;
        assert_eq!(query_runs(&seqs(&[1, 1]), 8, all), vec![0, 1, 1, 1]);
        assert_eq!(
            query_runs(&seqs(&[3, 17, 1]), 8, all),
            vec![0, 3, 3, 8, 11, 8, 19, 1, 20, 1]
        );
        assert_eq!(
            query_runs(&seqs(&[5]), 1, all),
            vec![0, 1, 1, 1, 2, 1, 3, 1, 4, 1]
        );
        // A picked subset keeps the rows' places: the 17-row chunk (rows 3..20) in runs of 8,
        // the others left to another kernel.
        assert_eq!(
            query_runs(&seqs(&[3, 17, 1]), 8, |i| i == 1),
            vec![3, 8, 11, 8, 19, 1]
        );
        assert_eq!(
            query_runs(&seqs(&[3, 17, 1]), 2, |i| i != 1),
            vec![0, 2, 2, 1, 20, 1]
        );
    }
}
