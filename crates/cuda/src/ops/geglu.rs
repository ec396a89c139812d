//! GeGLU: y = gelu(gate)·up over the two halves of h; operands by name. The kernels are the
//! gated pair SwiGLU shares (ops/gated.rs), with the GELU activation code.

use crate::backend::CudaBackend;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::activation::ActivationKind;
use tperf_core::ops::geglu::{GeGlu, GeGluBackwardIo, GeGluIo};

impl CudaBackend {
    pub(crate) fn geglu_forward(&mut self, call: &OpCall, s: &GeGlu) -> Result<(), BackendError> {
        let io: GeGluIo = call.operands(s)?;
        let (n, f) = (s.n as u64, s.f as u64);
        let tensors = [(&io.h, 2 * n * f), (&io.g, n * f)];
        self.launch_gated(
            call,
            "gated_forward",
            &tensors,
            (n, f),
            ActivationKind::Gelu,
        )
    }

    pub(crate) fn geglu_backward(&mut self, call: &OpCall, s: &GeGlu) -> Result<(), BackendError> {
        let io: GeGluBackwardIo = call.operands(s)?;
        let (n, f) = (s.n as u64, s.f as u64);
        let tensors = [(&io.h, 2 * n * f), (&io.dg, n * f), (&io.dh, 2 * n * f)];
        self.launch_gated(
            call,
            "gated_backward",
            &tensors,
            (n, f),
            ActivationKind::Gelu,
        )
    }
}
