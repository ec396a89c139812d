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
    /// y = act(gate)·up: h (n, 2f) = [gate | up] into g (n, f).
    pub(crate) fn gated_forward(
        &mut self,
        call: &OpCall,
        [h, g]: [&Tensor; 2],
        (n, f): (usize, usize),
        kind: ActivationKind,
    ) -> Result<(), BackendError> {
        let (n, f) = (n as u64, f as u64);
        let args = [
            self.arg(call, h, 2 * n * f)?,
            self.arg(call, g, n * f)?,
            Arg::I64(n as i64),
            Arg::I64(f as i64),
            Arg::I32(act_code(kind)),
        ];
        if n * f == 0 {
            return Ok(());
        }
        self.launch(
            call,
            SRC,
            "gated_forward",
            gated_grid(n, f),
            (256, 1, 1),
            0,
            &args,
        )
    }

    /// Both halves of dh (n, 2f) from h and the output's gradient dg (n, f).
    pub(crate) fn gated_backward(
        &mut self,
        call: &OpCall,
        [h, dg, dh]: [&Tensor; 3],
        (n, f): (usize, usize),
        kind: ActivationKind,
    ) -> Result<(), BackendError> {
        let (n, f) = (n as u64, f as u64);
        let args = [
            self.arg(call, h, 2 * n * f)?,
            self.arg(call, dg, n * f)?,
            self.arg(call, dh, 2 * n * f)?,
            Arg::I64(n as i64),
            Arg::I64(f as i64),
            Arg::I32(act_code(kind)),
        ];
        if n * f == 0 {
            return Ok(());
        }
        self.launch(
            call,
            SRC,
            "gated_backward",
            gated_grid(n, f),
            (256, 1, 1),
            0,
            &args,
        )
    }
}
