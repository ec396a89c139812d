//! GeGLU: y = gelu(gate)·up over the two halves of h; operands by name. The kernels are the
//! gated pair SwiGLU shares (ops/gated.rs), with the GELU activation code.

use crate::backend::CudaBackend;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::activation::ActivationKind;
use tperf_core::ops::geglu::{GeGlu, GeGluBackwardIo, GeGluIo};

impl CudaBackend {
    pub(crate) fn geglu_forward(&mut self, call: &OpCall, s: &GeGlu) -> Result<(), BackendError> {
        let io: GeGluIo = call.operands(s)?;
        let tensors = [&io.h, &io.g];
        self.gated_forward(call, tensors, (s.n, s.f), ActivationKind::Gelu)
    }

    pub(crate) fn geglu_backward(&mut self, call: &OpCall, s: &GeGlu) -> Result<(), BackendError> {
        let io: GeGluBackwardIo = call.operands(s)?;
        let tensors = [&io.h, &io.dg, &io.dh];
        self.gated_backward(call, tensors, (s.n, s.f), ActivationKind::Gelu)
    }
}
