//! Flash-decoding (kernels/decode_attention.cu): one argument builder and one launch for both
//! of its callers — the flash forward's few-query case over a contiguous KV cache
//! (attention.rs) and PagedAttention over a ragged batch (paged.rs). Both describe their keys
//! as a [`DecodeKv`] and their queries as units (a batch element with Tq queries, or a packed
//! row with one); the kernel splits each unit's keys across blocks so that the grid fills the
//! GPU, and the last block of a unit to finish combines the splits when there is more than one.

use super::aligned_16;
use crate::backend::{unsupported, CudaBackend};
use crate::error::driver;
use crate::gpu::Arg;
use cudarc::driver::result as cu;
use tperf_core::backend::{BackendError, OpCall};

const SRC: &str = "decode_attention";

/// decode_attention.cu's block: threads, the rows (query heads of a group × queries of a unit)
/// each kernel holds in registers, and the head dims it takes (multiples of its 8-element
/// vectors, at most DEC_MAX_D).
const THREADS: u32 = 128;
pub(crate) const SMALL_ROWS: usize = 2;
pub(crate) const MAX_ROWS: usize = 8;
const VECTOR: usize = 8;
const MAX_HEAD_DIM: usize = 256;
/// DEC_UNROLL: keys a key group loads per step (16-bit dtypes).
const UNROLL: usize = 4;
/// Fewest keys a split takes (one block's key groups, DEC_UNROLL deep, at D = 64): shorter
/// chunks leave the block idle for the launch's latency.
const MIN_CHUNK: u64 = 64;

/// Whether the decode kernel takes `rows` rows of head dim `d` per unit with K and V pools of
/// dtypes `k_dt`, `v_dt` at device addresses `k_ptr`, `v_ptr` (16-byte vector loads).
pub(crate) fn decode_fits(rows: usize, d: usize, k: Arg, v: Arg) -> bool {
    let (Arg::Buf(k_ptr, k_dt), Arg::Buf(v_ptr, v_dt)) = (k, v) else {
        return false;
    };
    (1..=MAX_ROWS).contains(&rows)
        && d.is_multiple_of(VECTOR)
        && d <= MAX_HEAD_DIM
        && k_dt == v_dt
        && aligned_16(k_ptr)
        && aligned_16(v_ptr)
}

/// Where a unit's keys live. Key j of KV head g of sequence s is element
/// `((block · H_kv + g) · block_size + j % block_size) · D` of the pools, `block` from the block
/// table (or s itself without one: a contiguous (B, H_kv, capacity, D) cache is one block of
/// `capacity` per sequence).
pub(crate) enum DecodeKv {
    /// A contiguous cache: unit b is batch element b with `tq` queries at the last positions of
    /// `tk` keys (`step` holds Tk in a replayed step, else null).
    Contiguous {
        capacity: usize,
        tk: usize,
        step: u64,
    },
    /// A paged batch: unit r is packed row r (one query), or with `runs` (the device table of
    /// (first row, rows) pairs, i32) run r of up to Tq consecutive rows of one sequence; the
    /// sequence, position and keys are read from the device tensors; `max_blocks` is the block
    /// table's width.
    Paged {
        block_table: Arg,
        row_seq: Arg,
        positions: Arg,
        ctx_lens: Arg,
        runs: Arg,
        block_size: usize,
        max_blocks: usize,
    },
}

/// One flash-decoding call: `units` units of `tq` queries for `h` query heads over `h_kv` KV
/// heads of dim `d`, queries from `qkv` (rows of (H + 2H_kv)·D), keys and values from `k`, `v`;
/// the output O (units·Tq, H, D) and, when `lse` is not the null buffer, lse (units, H, Tq).
pub(crate) struct Decode {
    pub qkv: Arg,
    pub k: Arg,
    pub v: Arg,
    pub o: Arg,
    pub lse: Arg,
    pub kv: DecodeKv,
    pub units: usize,
    pub tq: usize,
    pub h: usize,
    pub h_kv: usize,
    pub d: usize,
    pub causal: bool,
    /// −1 for none.
    pub window: i64,
    pub scale: f32,
}

impl Decode {
    fn rows(&self) -> usize {
        self.h / self.h_kv * self.tq
    }

    /// Keys a block loads per step of its loop (DEC_UNROLL per key group, half of that for
    /// f32; a key group is the power of two of lanes ≥ D/8): a chunk longer than one step takes
    /// the prefetching kernel (measured on the H200, gpt2-124m bf16 context 384: B128 1.65 →
    /// 1.50 ms a step with it; B1, one step a chunk, 0.76 without it and 0.91 with it).
    fn keys_per_step(&self) -> u64 {
        let lanes_per_key = self.d.div_ceil(VECTOR).next_power_of_two().min(32);
        let key_groups = (THREADS as usize / 32) * (32 / lanes_per_key);
        let f32_kv = matches!(self.k, Arg::Buf(_, 0));
        (key_groups * if f32_kv { UNROLL / 2 } else { UNROLL }) as u64
    }

    /// Keys the grid covers: the cache's capacity, or every key the block table can name (a
    /// replayed step may hold more keys than the captured one).
    fn keys_max(&self) -> u64 {
        match self.kv {
            DecodeKv::Contiguous { capacity, .. } => capacity as u64,
            DecodeKv::Paged {
                block_size,
                max_blocks,
                ..
            } => (block_size * max_blocks) as u64,
        }
    }

    /// decode_split's arguments (DEC_PARAMS in the kernel), with partials at `part`, the split
    /// counters at `arrivals` and the keys split in chunks of `chunk`.
    fn split_args(&self, part: u64, arrivals: u64, chunk: u64) -> [Arg; 24] {
        let none = Arg::Buf(0, 0);
        let (tables, block_size, max_blocks, tk, step) = match self.kv {
            DecodeKv::Contiguous { capacity, tk, step } => ([none; 5], capacity, 1, tk, step),
            DecodeKv::Paged {
                block_table,
                row_seq,
                positions,
                ctx_lens,
                runs,
                block_size,
                max_blocks,
            } => (
                [block_table, row_seq, positions, ctx_lens, runs],
                block_size,
                max_blocks,
                0,
                0,
            ),
        };
        let [block_table, row_seq, positions, ctx_lens, runs] = tables;
        [
            self.qkv,
            self.k,
            self.v,
            block_table,
            row_seq,
            positions,
            ctx_lens,
            runs,
            Arg::Ptr(part),
            Arg::Ptr(arrivals),
            self.o,
            self.lse,
            Arg::I32(self.h as i32),
            Arg::I32(self.h_kv as i32),
            Arg::I32(self.tq as i32),
            Arg::I32(tk as i32),
            Arg::I32(self.d as i32),
            Arg::I32(block_size as i32),
            Arg::I32(max_blocks as i32),
            Arg::I32(i32::from(self.causal)),
            Arg::I64(self.window),
            Arg::F32(self.scale),
            Arg::I32(chunk as i32),
            Arg::Ptr(step),
        ]
    }
}

impl CudaBackend {
    /// Launches flash-decoding for `dec` (the caller has checked [`decode_fits`]): about two
    /// blocks per SM over the grid, no chunk under [`MIN_CHUNK`] keys, chunks whole 16-key
    /// blocks; one split writes O itself, more write partials that the unit's last block to
    /// finish combines.
    pub(crate) fn decode_attention(
        &mut self,
        call: &OpCall,
        dec: &Decode,
    ) -> Result<(), BackendError> {
        if dec.units == 0 || dec.h == 0 || dec.tq == 0 {
            return Ok(());
        }
        let units = (dec.units * dec.h_kv) as u64;
        let keys = dec.keys_max().max(1);
        let target = (2 * self.gpu.info.sms.max(1) as u64).div_ceil(units);
        let splits = target.clamp(1, keys.div_ceil(MIN_CHUNK).max(1));
        let chunk = keys.div_ceil(splits).next_multiple_of(16);
        let splits = keys.div_ceil(chunk);
        let max = i32::MAX as u64;
        if units > max || splits > 65_535 || chunk > max || keys > max {
            return Err(unsupported(
                call,
                "decode attention shape too large for one launch",
            ));
        }
        let rows = dec.rows() as u64;
        let kernel = if dec.rows() > SMALL_ROWS {
            "decode_split_r8"
        } else if chunk > dec.keys_per_step() {
            "decode_split_r2_deep"
        } else {
            "decode_split_r2"
        };
        let grid = (units as u32, splits as u32, 1);
        if splits == 1 {
            let args = dec.split_args(0, 0, chunk);
            return self.launch(call, SRC, kernel, grid, (THREADS, 1, 1), 0, &args);
        }
        let arrivals = self.decode_arrivals(units)?;
        let part_bytes = splits * units * rows * (dec.d as u64 + 2) * 4;
        let part = self
            .alloc
            .alloc(part_bytes)
            .map_err(driver("scratch for decode attention"))?;
        let args = dec.split_args(part.ptr, arrivals, chunk);
        let result = self.launch(call, SRC, kernel, grid, (THREADS, 1, 1), 0, &args);
        self.alloc.free(part);
        result
    }

    /// The split counters for `counters` units, zero: grown (and zeroed on the stream, before
    /// the kernels that count in them) when a launch has more units than any before; every
    /// launch leaves them zero again (the last block of a unit resets its counter).
    fn decode_arrivals(&mut self, counters: u64) -> Result<u64, BackendError> {
        let bytes = counters * 4;
        if self.decode_arrivals.bytes < bytes {
            let grown = self
                .alloc
                .alloc(bytes.next_power_of_two().max(4096))
                .map_err(driver("decode attention's split counters"))?;
            // SAFETY: `grown` was just allocated with `grown.bytes` bytes; the memset is ordered
            // on the stream before every kernel issued after it, the only readers.
            unsafe {
                cu::memset_d8_async(grown.ptr, 0, grown.bytes as usize, self.gpu.cu_stream())
            }
            .map_err(driver("zeroing decode attention's split counters"))?;
            if self.decode_arrivals.bytes > 0 {
                // Stream-ordered: a kernel still counting in the old block finishes first.
                self.alloc.free(self.decode_arrivals);
            }
            self.decode_arrivals = grown;
        }
        Ok(self.decode_arrivals.ptr)
    }
}
