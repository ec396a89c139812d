//! Cross-entropy fused with softmax (kernels/cross_entropy.cu): a row of V logits per block,
//! or per warp (8 rows a block) for a vocabulary below `WARP_ROWS_MAX_V`.
//!
//! Forward: losses from logits and targets, the per-row loss in the output's dtype (f32 in every
//! schedule). Backward: dlogits = S·(softmax − onehot)/n, the gradient of S times the mean loss
//! (S = the op's `grad_scale`, the fp16 policy's loss scale); in place when dlogits is the
//! logits tensor (the fused schedule).

use super::all_aligned_16;
use crate::backend::{unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::cross_entropy::{CrossEntropy, CrossEntropyBackwardIo, CrossEntropyIo};
use tperf_core::tensor::Tensor;

const SRC: &str = "cross_entropy";

/// Threads of a block; a multiple of 32 for the reductions.
const THREADS: u32 = 256;

/// Below this V a warp reduces a row (CE_WARP_ROWS_MAX_V in cross_entropy.cu): a block per row
/// would leave most of its threads without elements; from here on a row is 16 or more 8-element
/// vectors a lane of a block, enough to keep the loads in flight.
const WARP_ROWS_MAX_V: usize = 4096;

/// How a launch covers the rows.
struct Layout {
    grid: (u32, u32, u32),
    warp_rows: i32,
}

impl CudaBackend {
    /// The targets' argument (their ids checked against V), the grid and V as the kernels'
    /// i32, after the size checks.
    fn ce_setup(
        &self,
        call: &OpCall,
        ce: &CrossEntropy,
        targets: &Tensor,
    ) -> Result<(Arg, Layout, i32), BackendError> {
        let targets = self.check_ids(call, targets, ce.n, ce.v, "target")?;
        let v = i32::try_from(ce.v).map_err(|_| unsupported(call, "V exceeds the kernels' i32"))?;
        let warp_rows = ce.v < WARP_ROWS_MAX_V;
        let rows_per_block = if warp_rows { THREADS as usize / 32 } else { 1 };
        let blocks = u32::try_from(ce.n.div_ceil(rows_per_block))
            .map_err(|_| unsupported(call, "more rows than a grid holds"))?;
        let layout = Layout {
            grid: (blocks, 1, 1),
            warp_rows: i32::from(warp_rows),
        };
        Ok((targets, layout, v))
    }

    pub(crate) fn cross_entropy_forward(
        &mut self,
        call: &OpCall,
        ce: &CrossEntropy,
    ) -> Result<(), BackendError> {
        let io: CrossEntropyIo = call.operands(ce)?;
        let (targets, layout, v) = self.ce_setup(call, ce, &io.targets)?;
        let logits = self.arg(call, &io.logits, (ce.n * ce.v) as u64)?;
        let vec = i32::from(all_aligned_16(&[&logits]));
        let args = [
            logits,
            targets,
            self.arg(call, &io.losses, ce.n as u64)?,
            Arg::I64(ce.n as i64),
            Arg::I32(v),
            Arg::I32(layout.warp_rows),
            Arg::I32(vec),
        ];
        if ce.n == 0 {
            return Ok(());
        }
        self.launch(
            call,
            SRC,
            "cross_entropy_forward",
            layout.grid,
            (THREADS, 1, 1),
            0,
            &args,
        )
    }

    pub(crate) fn cross_entropy_backward(
        &mut self,
        call: &OpCall,
        ce: &CrossEntropy,
    ) -> Result<(), BackendError> {
        let io: CrossEntropyBackwardIo = call.operands(ce)?;
        let (targets, layout, v) = self.ce_setup(call, ce, &io.targets)?;
        let numel = (ce.n * ce.v) as u64;
        let logits = self.arg(call, &io.logits, numel)?;
        let dlogits = self.arg(call, &io.dlogits, numel)?;
        let vec = all_aligned_16(&[&logits, &dlogits]);
        // When dlogits is the logits tensor the kernel reads and overwrites the same buffer;
        // each element is read before it is written, by the thread that writes it.
        let args = [
            logits,
            targets,
            dlogits,
            Arg::I64(ce.n as i64),
            Arg::I32(v),
            // S/n in f64 rounded once, as the CPU kernel computes it.
            Arg::F32((ce.grad_scale / ce.n as f64) as f32),
            Arg::I32(layout.warp_rows),
            Arg::I32(i32::from(vec)),
        ];
        if ce.n == 0 {
            return Ok(());
        }
        self.launch(
            call,
            SRC,
            "cross_entropy_backward",
            layout.grid,
            (THREADS, 1, 1),
            0,
            &args,
        )
    }
}
