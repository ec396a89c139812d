use crate::backend::{unsupported, CudaBackend};
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::layernorm::LayerNorm;
use tperf_core::ops::rmsnorm::RmsNorm;

impl CudaBackend {
    pub(crate) fn layernorm_forward(&mut self, call: &OpCall, _ln: &LayerNorm) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn layernorm_backward(&mut self, call: &OpCall, _ln: &LayerNorm) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn rmsnorm_forward(&mut self, call: &OpCall, _rn: &RmsNorm) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn rmsnorm_backward(&mut self, call: &OpCall, _rn: &RmsNorm) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
}
