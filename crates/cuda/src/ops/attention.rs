use crate::backend::{unsupported, CudaBackend};
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::attention::Attention;

impl CudaBackend {
    pub(crate) fn attn_scores(
        &mut self,
        call: &OpCall,
        _a: &Attention,
    ) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn attn_softmax(
        &mut self,
        call: &OpCall,
        _a: &Attention,
    ) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn attn_value(&mut self, call: &OpCall, _a: &Attention) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn attn_value_backward(
        &mut self,
        call: &OpCall,
        _a: &Attention,
    ) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn attn_softmax_backward(
        &mut self,
        call: &OpCall,
        _a: &Attention,
    ) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn attn_scores_backward(
        &mut self,
        call: &OpCall,
        _a: &Attention,
    ) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn flash_attention_forward(
        &mut self,
        call: &OpCall,
        _a: &Attention,
    ) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
    pub(crate) fn flash_attention_backward(
        &mut self,
        call: &OpCall,
        _a: &Attention,
    ) -> Result<(), BackendError> {
        Err(unsupported(call, "not yet written"))
    }
}
