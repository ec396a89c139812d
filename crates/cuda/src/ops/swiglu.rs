//! SwiGLU: y = silu(gate)·up over the two halves of h; operands by name. The kernels are the
//! gated pair GeGLU shares (ops/gated.rs), with the SiLU activation code.

use crate::backend::CudaBackend;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::activation::ActivationKind;
use tperf_core::ops::swiglu::{SwiGlu, SwiGluBackwardIo, SwiGluIo};

impl CudaBackend {
    pub(crate) fn swiglu_forward(&mut self, call: &OpCall, s: &SwiGlu) -> Result<(), BackendError> {
        let io: SwiGluIo = call.operands(s)?;
        let tensors = [&io.h, &io.g];
        self.gated_forward(call, tensors, (s.n, s.f), ActivationKind::Silu)
    }

    pub(crate) fn swiglu_backward(
        &mut self,
        call: &OpCall,
        s: &SwiGlu,
    ) -> Result<(), BackendError> {
        let io: SwiGluBackwardIo = call.operands(s)?;
        let tensors = [&io.h, &io.dg, &io.dh];
        self.gated_backward(call, tensors, (s.n, s.f), ActivationKind::Silu)
    }
}
