use crate::backend::{unsupported, CudaBackend};
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::cross_entropy::CrossEntropy;

impl CudaBackend {
    pub(crate) fn cross_entropy_forward(&mut self, call: &OpCall, _ce: &CrossEntropy) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn cross_entropy_backward(&mut self, call: &OpCall, _ce: &CrossEntropy) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
}
