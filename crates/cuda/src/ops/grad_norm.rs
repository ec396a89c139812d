//! The global gradient norm (kernels/grad_norm.cu) over every gradient in one launch, from a
//! tensor table (ops/tensor_table.rs), with no host synchronisation: AdamW reads the result on
//! the device.
//!
//! Σ g² over every gradient in f64, block b writing slot b of a scratch buffer (so no zeroing
//! and no atomics), then a one-block kernel adds the slots in a fixed order and writes √Σ
//! (under ZeRO-1, Σ itself: the ranks' squares are summed by an all-reduce and AdamW takes the
//! root). Deterministic: two launches in all.

use super::aligned_16;
use super::tensor_table::{Table, BLOCKS_PER_SM, THREADS};
use crate::backend::{unsupported, CudaBackend};
use crate::error::driver;
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::comm::shard_range;
use tperf_core::dtype::DType;
use tperf_core::ops::grad_norm::{GradNorm, GradNormIo};

const SRC: &str = "grad_norm";

/// Elements per work item: `NORM_CHUNK` of grad_norm.cu.
const NORM_CHUNK: u64 = 8192;

impl CudaBackend {
    /// GradNorm's table: per gradient {g, n, first item, dtype | aligned << 32}.
    pub(super) fn norm_table(
        &self,
        call: &OpCall,
        io: &GradNormIo,
        shards: usize,
    ) -> Result<Table, BackendError> {
        let rank = self.shard_rank(call, shards)?;
        let mut table = Table::new(NORM_CHUNK, io.grads.len(), 1);
        for t in &io.grads {
            if t.dtype == DType::I32 {
                return Err(unsupported(call, "gradients are floating-point tensors"));
            }
            let shard = shard_range(t.numel() as usize, rank, shards);
            let n = shard.len() as u64;
            if n == 0 {
                continue;
            }
            let Arg::Buf(ptr, dt) = self.arg(call, t, t.numel())? else {
                unreachable!("arg returns a Buf")
            };
            let ptr = ptr + shard.start as u64 * t.dtype.size_bytes();
            let vec = u64::from(aligned_16(ptr));
            table.push(&[ptr], n, dt as u32 as u64 | vec << 32);
        }
        Ok(table)
    }

    pub(crate) fn grad_norm(&mut self, call: &OpCall, g: &GradNorm) -> Result<(), BackendError> {
        let io: GradNormIo = call.operands(g)?;
        let norm = self.arg(call, &io.norm, 1)?;
        let table = self.norm_table(call, &io, g.shards)?;
        let (count, items) = (table.count, table.items);
        // One f64 slot per block, each written by its block.
        let blocks = items.clamp(
            1,
            (BLOCKS_PER_SM * self.gpu.info.sms.max(1) as u64).min(1024),
        );
        let scratch = self
            .alloc
            .alloc(blocks * 8)
            .map_err(driver("scratch for the gradient norm"))?;
        let result = (|| {
            if count > 0 {
                let ptr = self.upload(table)?;
                let args = [
                    Arg::Ptr(ptr),
                    Arg::I32(count as i32),
                    Arg::I64(items as i64),
                    Arg::Ptr(scratch.ptr),
                ];
                let grid = (blocks as u32, 1, 1);
                self.launch(
                    call,
                    SRC,
                    "grad_sum_sq_multi",
                    grid,
                    (THREADS, 1, 1),
                    0,
                    &args,
                )?;
            }
            // No gradient elements: no block wrote, so the finish reads none of the slots.
            let written = if count > 0 { blocks as i32 } else { 0 };
            let squared = Arg::I32(i32::from(g.shards > 1));
            let args = [Arg::Ptr(scratch.ptr), Arg::I32(written), squared, norm];
            self.launch(
                call,
                SRC,
                "grad_norm_finish",
                (1, 1, 1),
                (THREADS, 1, 1),
                0,
                &args,
            )
        })();
        // The stream orders the block's next user after the kernels above.
        self.alloc.free(scratch);
        result
    }
}
