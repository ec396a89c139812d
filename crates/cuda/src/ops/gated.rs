//! The gated-unit kernel pair (kernels/gated.cu `gated_forward` / `gated_backward`) that SwiGLU
//! (ops/swiglu.rs) and GeGLU (ops/geglu.rs) share, taking the activation code as
//! `activation_forward` does.

use super::activation::act_code;
use crate::backend::CudaBackend;
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::activation::ActivationKind;
use tperf_core::tensor::Tensor;

const SRC: &str = "gated";

/// The grid of `gated_forward`/`gated_backward` (256 threads a block): x covers a row's F
/// columns at 4 a thread (the vector path's width), y one block row per matrix row up to the
/// grid's limit, beyond which the rows go grid-stride.
fn gated_grid(rows: u64, f: u64) -> (u32, u32, u32) {
    let x = f.div_ceil(4 * 256).clamp(1, 1 << 16) as u32;
    let y = rows.clamp(1, 65_535) as u32;
    (x, y, 1)
}

impl CudaBackend {
    /// One launch of the gated pair SwiGLU and GeGLU share (`gated_forward`: h, g;
    /// `gated_backward`: h, dg, dh), over n rows of f gated columns with activation `kind`.
    pub(crate) fn launch_gated(
        &mut self,
        call: &OpCall,
        kernel: &'static str,
        tensors: &[(&Tensor, u64)],
        (n, f): (u64, u64),
        kind: ActivationKind,
    ) -> Result<(), BackendError> {
        let mut args = Vec::with_capacity(tensors.len() + 3);
        for (t, numel) in tensors {
            args.push(self.arg(call, t, *numel)?);
        }
        args.extend([
            Arg::I64(n as i64),
            Arg::I64(f as i64),
            Arg::I32(act_code(kind)),
        ]);
        if n * f == 0 {
            return Ok(());
        }
        let grid = gated_grid(n, f);
        self.launch(call, SRC, kernel, grid, (256, 1, 1), 0, &args)
    }
}
