//! GeGLU: y = gelu(gate)·up over the two halves of h; operands by name. The kernels are the
//! gated pair SwiGLU shares (kernels/elementwise.cu `gated_forward` / `gated_backward`), with
//! the GELU activation code.

use crate::backend::CudaBackend;
use crate::gpu::Arg;
use crate::ops::elementwise::{act_code, gated_grid};
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::activation::ActivationKind;
use tperf_core::ops::geglu::{GeGlu, GeGluBackwardIo, GeGluIo};

const SRC: &str = "elementwise";

impl CudaBackend {
    pub(crate) fn geglu_forward(&mut self, call: &OpCall, s: &GeGlu) -> Result<(), BackendError> {
        let io: GeGluIo = call.operands(s)?;
        let (n, f) = (s.n as u64, s.f as u64);
        let args = [
            self.arg(call, &io.h, 2 * n * f)?,
            self.arg(call, &io.g, n * f)?,
            Arg::I64(n as i64),
            Arg::I64(f as i64),
            Arg::I32(act_code(ActivationKind::Gelu)),
        ];
        if n * f == 0 {
            return Ok(());
        }
        let grid = gated_grid(n, f);
        self.launch(call, SRC, "gated_forward", grid, (256, 1, 1), 0, &args)
    }

    pub(crate) fn geglu_backward(&mut self, call: &OpCall, s: &GeGlu) -> Result<(), BackendError> {
        let io: GeGluBackwardIo = call.operands(s)?;
        let (n, f) = (s.n as u64, s.f as u64);
        let args = [
            self.arg(call, &io.h, 2 * n * f)?,
            self.arg(call, &io.dg, n * f)?,
            self.arg(call, &io.dh, 2 * n * f)?,
            Arg::I64(n as i64),
            Arg::I64(f as i64),
            Arg::I32(act_code(ActivationKind::Gelu)),
        ];
        if n * f == 0 {
            return Ok(());
        }
        let grid = gated_grid(n, f);
        self.launch(call, SRC, "gated_backward", grid, (256, 1, 1), 0, &args)
    }
}
