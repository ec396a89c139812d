//! RoPE (kernels/rope.cu), forward and backward, in place on the query and key heads of qkv:
//! one kernel for a contiguous batch (row r at r mod t + pos_offset, or the replayed decode
//! step's position) and a ragged one (row r at positions[r]).

use super::all_aligned_16;
use crate::backend::{unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::rope::{Rope, RopeIo};

const SRC: &str = "rope";

impl CudaBackend {
    /// Host-written per-row positions are non-negative i32s (every position has a rotation).
    pub(crate) fn check_rope_positions(
        &self,
        call: &OpCall,
        io: &RopeIo,
    ) -> Result<(), BackendError> {
        match &io.positions {
            Some(p) => self.check_range(call, p, (0, i64::from(i32::MAX)), "position"),
            None => Ok(()),
        }
    }

    /// The rotation by +angle (forward) or −angle (`backward`: a rotation's inverse).
    pub(crate) fn rope(
        &mut self,
        call: &OpCall,
        r: &Rope,
        backward: bool,
    ) -> Result<(), BackendError> {
        let io: RopeIo = call.operands(r)?;
        let bands = r.scaling.bands();
        if r.per_row && io.positions.is_none() {
            return Err(unsupported(call, "per-row RoPE reads positions"));
        }
        self.check_rope_positions(call, &io)?;
        let rows = (r.b * r.t) as u64;
        let width = r.row_width();
        let qkv = self.arg(call, &io.qkv, rows * width as u64)?;
        let positions = self.arg_opt(call, io.positions.as_ref(), rows)?;
        // 8 elements a thread where D allows it and the buffer is 16-byte aligned (rows of
        // (H + 2H_kv)·D then start aligned too).
        let vec = r.d.is_multiple_of(8) && all_aligned_16(&[&qkv]);
        let rotated = r.h_q + r.h_kv;
        if r.d / 2 > ROPE_MAX_PAIRS {
            return Err(unsupported(
                call,
                format!(
                    "head dim {} is above the kernel's {}",
                    r.d,
                    2 * ROPE_MAX_PAIRS
                ),
            ));
        }
        // A block per row, a thread per ROPE_JOBS groups of pairs (passes of them past
        // ROPE_THREADS threads).
        let jobs = (rotated * (r.d / 2 / if vec { 4 } else { 1 })) as u32;
        let threads = jobs
            .div_ceil(ROPE_JOBS)
            .next_multiple_of(32)
            .clamp(32, ROPE_THREADS);
        let grid = (rows.min(i32::MAX as u64) as u32, 1, 1);
        let args = [
            qkv,
            positions,
            Arg::I64(rows as i64),
            Arg::I32(r.t as i32),
            Arg::I32(r.pos_offset as i32),
            Arg::I32(rotated as i32),
            Arg::I32(width as i32),
            Arg::I32(r.d as i32),
            // θ^(−2/D): the kernel takes pair i's frequency as its i-th power.
            Arg::F64(r.theta.powf(-2.0 / r.d as f64)),
            // The long-context scaling as three numbers (common.cuh's rope_scale_freq).
            Arg::F64(bands.factor),
            Arg::F64(bands.keep_below),
            Arg::F64(bands.divide_above),
            Arg::F64(if backward { -1.0 } else { 1.0 }),
            Arg::I32(i32::from(vec)),
            Arg::Ptr(if r.per_row { 0 } else { self.op_scalars }),
        ];
        if rows == 0 || jobs == 0 {
            return Ok(());
        }
        self.launch(call, SRC, "rope", grid, (threads, 1, 1), 0, &args)
    }
}

/// The most pairs a head has (ROPE_MAX_PAIRS in rope.cu: the shared cos/sin table).
const ROPE_MAX_PAIRS: usize = 256;

/// Groups of pairs a thread rotates per pass (ROPE_JOBS in rope.cu).
const ROPE_JOBS: u32 = 4;

/// The most threads a block of `rope` has (ROPE_THREADS in rope.cu, its launch bounds).
const ROPE_THREADS: u32 = 256;
