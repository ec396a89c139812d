use crate::backend::{unsupported, CudaBackend};
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::adamw::AdamW;
use tperf_core::ops::grad_norm::GradNorm;

impl CudaBackend {
    pub(crate) fn adamw(&mut self, call: &OpCall, _adam: &AdamW) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn grad_norm(&mut self, call: &OpCall, _g: &GradNorm) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
}
