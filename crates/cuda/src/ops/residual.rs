//! The residual add (kernels/residual.cu): sum = a + b, elementwise.

use crate::backend::CudaBackend;
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::residual::{ResidualAdd, ResidualAddIo};

const SRC: &str = "residual";

impl CudaBackend {
    pub(crate) fn residual_add(
        &mut self,
        call: &OpCall,
        r: &ResidualAdd,
    ) -> Result<(), BackendError> {
        let io: ResidualAddIo = call.operands(r)?;
        let n = r.numel as u64;
        let args = [
            self.arg(call, &io.a, n)?,
            self.arg(call, &io.b, n)?,
            self.arg(call, &io.sum, n)?,
            Arg::I64(n as i64),
        ];
        self.launch_1d(call, SRC, "residual_add", n, &args)
    }
}
