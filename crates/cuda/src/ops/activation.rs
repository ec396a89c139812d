//! Pointwise activations (kernels/activation.cu), forward and backward, and the activation codes
//! every kernel that applies one takes (`ACT_*` of common.cuh: activation.cu, gated.cu, the
//! matmul epilogues of matmul.cu).

use crate::backend::CudaBackend;
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::activation::{Activation, ActivationBackwardIo, ActivationIo, ActivationKind};

const SRC: &str = "activation";

/// `kind`'s code in the kernels (ACT_GELU, ACT_RELU, ACT_SILU of common.cuh).
pub(crate) fn act_code(kind: ActivationKind) -> i32 {
    match kind {
        ActivationKind::Gelu => 0,
        ActivationKind::Relu => 1,
        ActivationKind::Silu => 2,
    }
}

impl CudaBackend {
    pub(crate) fn activation_forward(
        &mut self,
        call: &OpCall,
        a: &Activation,
    ) -> Result<(), BackendError> {
        let io: ActivationIo = call.operands(a)?;
        let n = a.numel as u64;
        let args = [
            self.arg(call, &io.x, n)?,
            self.arg(call, &io.y, n)?,
            Arg::I64(n as i64),
            Arg::I32(act_code(a.kind)),
        ];
        self.launch_1d(call, SRC, "activation_forward", n, &args)
    }

    pub(crate) fn activation_backward(
        &mut self,
        call: &OpCall,
        a: &Activation,
    ) -> Result<(), BackendError> {
        let io: ActivationBackwardIo = call.operands(a)?;
        let n = a.numel as u64;
        let args = [
            self.arg(call, &io.x, n)?,
            self.arg(call, &io.dy, n)?,
            self.arg(call, &io.dx, n)?,
            Arg::I64(n as i64),
            Arg::I32(act_code(a.kind)),
        ];
        self.launch_1d(call, SRC, "activation_backward", n, &args)
    }
}
