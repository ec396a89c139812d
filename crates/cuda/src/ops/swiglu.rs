//! SwiGLU: y = silu(gate)·up over the two halves of h; operands by name. The kernels are the
//! gated pair GeGLU shares (ops/gated.rs), with the SiLU activation code.

use crate::backend::CudaBackend;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::activation::ActivationKind;
use tperf_core::ops::swiglu::{SwiGlu, SwiGluBackwardIo, SwiGluIo};

impl CudaBackend {
    pub(crate) fn swiglu_forward(&mut self, call: &OpCall, s: &SwiGlu) -> Result<(), BackendError> {
        let io: SwiGluIo = call.operands(s)?;
        let (n, f) = (s.n as u64, s.f as u64);
        let tensors = [(&io.h, 2 * n * f), (&io.g, n * f)];
        self.launch_gated(
            call,
            "gated_forward",
            &tensors,
            (n, f),
            ActivationKind::Silu,
        )
    }

    pub(crate) fn swiglu_backward(
        &mut self,
        call: &OpCall,
        s: &SwiGlu,
    ) -> Result<(), BackendError> {
        let io: SwiGluBackwardIo = call.operands(s)?;
        let (n, f) = (s.n as u64, s.f as u64);
        let tensors = [(&io.h, 2 * n * f), (&io.dg, n * f), (&io.dh, 2 * n * f)];
        self.launch_gated(
            call,
            "gated_backward",
            &tensors,
            (n, f),
            ActivationKind::Silu,
        )
    }
}
