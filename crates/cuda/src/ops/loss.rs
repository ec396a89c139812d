//! Cross-entropy fused with softmax (kernels/loss.cu), one block per row of V logits.
//!
//! Forward: inputs [logits, targets] → [losses], the per-row loss in the output's dtype (f32 in
//! every schedule). Backward: inputs [logits, targets] → [dlogits] = S·(softmax − onehot)/n, the
//! gradient of S times the mean loss (S = the op's `grad_scale`, the fp16 policy's loss scale);
//! in place when dlogits is the logits tensor (the fused schedule).

use super::ROW_THREADS;
use crate::backend::{unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::cross_entropy::CrossEntropy;

const SRC: &str = "loss";

impl CudaBackend {
    /// The grid of one block per row and V as the kernels' i32, after the size checks.
    fn ce_shape(
        &self,
        call: &OpCall,
        ce: &CrossEntropy,
    ) -> Result<((u32, u32, u32), i32), BackendError> {
        let rows =
            u32::try_from(ce.n).map_err(|_| unsupported(call, "more rows than a grid holds"))?;
        let v = i32::try_from(ce.v).map_err(|_| unsupported(call, "V exceeds the kernels' i32"))?;
        Ok(((rows, 1, 1), v))
    }

    pub(crate) fn cross_entropy_forward(
        &mut self,
        call: &OpCall,
        ce: &CrossEntropy,
    ) -> Result<(), BackendError> {
        let targets = self.check_ids(call, 1, ce.n, ce.v, "target")?;
        let (grid, v) = self.ce_shape(call, ce)?;
        let args = [
            self.input(call, 0, (ce.n * ce.v) as u64)?,
            targets,
            self.output(call, 0, ce.n as u64)?,
            Arg::I32(v),
        ];
        if ce.n == 0 {
            return Ok(());
        }
        self.launch(
            call,
            SRC,
            "cross_entropy_forward",
            grid,
            (ROW_THREADS, 1, 1),
            0,
            &args,
        )
    }

    pub(crate) fn cross_entropy_backward(
        &mut self,
        call: &OpCall,
        ce: &CrossEntropy,
    ) -> Result<(), BackendError> {
        let targets = self.check_ids(call, 1, ce.n, ce.v, "target")?;
        let (grid, v) = self.ce_shape(call, ce)?;
        let numel = (ce.n * ce.v) as u64;
        // When output 0 is input 0 the kernel reads and overwrites the same buffer; each
        // element is read before it is written, by the thread that writes it.
        let args = [
            self.input(call, 0, numel)?,
            targets,
            self.output(call, 0, numel)?,
            Arg::I32(v),
            // S/n in f64 rounded once, as the CPU kernel computes it.
            Arg::F32((ce.grad_scale / ce.n as f64) as f32),
        ];
        if ce.n == 0 {
            return Ok(());
        }
        self.launch(
            call,
            SRC,
            "cross_entropy_backward",
            grid,
            (ROW_THREADS, 1, 1),
            0,
            &args,
        )
    }
}
