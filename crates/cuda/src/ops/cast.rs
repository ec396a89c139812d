//! Casts between storage dtypes (kernels/cast.cu): each source tensor into its destination, one
//! launch a pair (the rounding happens in the kernel's store).

use crate::backend::CudaBackend;
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::cast::{Cast, CastIo};

const SRC: &str = "cast";

impl CudaBackend {
    pub(crate) fn cast(&mut self, call: &OpCall, c: &Cast) -> Result<(), BackendError> {
        let io: CastIo = call.operands(c)?;
        for (src, dst) in io.src.iter().zip(&io.dst) {
            let n = dst.numel();
            let args = [
                self.arg(call, src, n)?,
                self.arg(call, dst, n)?,
                Arg::I64(n as i64),
            ];
            self.launch_1d(call, SRC, "cast", n, &args)?;
        }
        Ok(())
    }
}
