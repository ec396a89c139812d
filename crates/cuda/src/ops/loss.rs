//! Cross-entropy fused with softmax (kernels/loss.cu), one block per row of V logits.
//!
//! Forward: losses from logits and targets, the per-row loss in the output's dtype (f32 in every
//! schedule). Backward: dlogits = S·(softmax − onehot)/n, the gradient of S times the mean loss
//! (S = the op's `grad_scale`, the fp16 policy's loss scale); in place when dlogits is the
//! logits tensor (the fused schedule).

use super::ROW_THREADS;
use crate::backend::{unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::cross_entropy::{CrossEntropy, CrossEntropyBackwardIo, CrossEntropyIo};
use tperf_core::tensor::Tensor;

const SRC: &str = "loss";

impl CudaBackend {
    /// The targets' argument (their ids checked against V), the rows (one block each) and V as
    /// the kernels' i32, after the size checks.
    fn ce_setup(
        &self,
        call: &OpCall,
        ce: &CrossEntropy,
        targets: &Tensor,
    ) -> Result<(Arg, u32, i32), BackendError> {
        let targets = self.check_ids(call, targets, ce.n, ce.v, "target")?;
        let rows =
            u32::try_from(ce.n).map_err(|_| unsupported(call, "more rows than a grid holds"))?;
        let v = i32::try_from(ce.v).map_err(|_| unsupported(call, "V exceeds the kernels' i32"))?;
        Ok((targets, rows, v))
    }

    pub(crate) fn cross_entropy_forward(
        &mut self,
        call: &OpCall,
        ce: &CrossEntropy,
    ) -> Result<(), BackendError> {
        let io: CrossEntropyIo = call.operands(ce)?;
        let (targets, rows, v) = self.ce_setup(call, ce, &io.targets)?;
        let args = [
            self.arg(call, &io.logits, (ce.n * ce.v) as u64)?,
            targets,
            self.arg(call, &io.losses, ce.n as u64)?,
            Arg::I32(v),
        ];
        if ce.n == 0 {
            return Ok(());
        }
        self.launch(
            call,
            SRC,
            "cross_entropy_forward",
            (rows, 1, 1),
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
        let io: CrossEntropyBackwardIo = call.operands(ce)?;
        let (targets, rows, v) = self.ce_setup(call, ce, &io.targets)?;
        let numel = (ce.n * ce.v) as u64;
        // When dlogits is the logits tensor the kernel reads and overwrites the same buffer;
        // each element is read before it is written, by the thread that writes it.
        let args = [
            self.arg(call, &io.logits, numel)?,
            targets,
            self.arg(call, &io.dlogits, numel)?,
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
            (rows, 1, 1),
            (ROW_THREADS, 1, 1),
            0,
            &args,
        )
    }
}
