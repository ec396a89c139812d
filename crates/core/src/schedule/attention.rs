//! The attention core — naive (scores, mask + softmax, value) or flash (one tiled op) — from the
//! fused qkv buffer (and the KV caches) to the attention output, and back to dqkv. A block issues
//! it between its qkv and output projections; the attention-only benchmark issues it alone. Both
//! go through here, so the benchmark measures exactly the calls a model makes.

use super::{AttentionKernel, Emit};
use crate::backend::{Backend, BackendError};
use crate::dtype::DType;
use crate::ops::attention::{
    Attention, AttnScoresBackwardIo, AttnScoresIo, AttnSoftmaxBackwardIo, AttnSoftmaxIo,
    AttnValueBackwardIo, AttnValueIo,
};
use crate::ops::flash_attention::{FlashAttentionBackwardIo, FlashAttentionIo};
use crate::ops::{Op, Phase};
use crate::tensor::{MemCategory, Tensor, TensorName};

/// One attention core: which kernel, on which shape, in which dtype.
pub(super) struct AttentionCore {
    pub kernel: AttentionKernel,
    pub shape: Attention,
    pub dtype: DType,
    /// The block whose buffers these are ("h3.scores"); None alone ("scores").
    pub layer: Option<usize>,
}

impl AttentionCore {
    fn name(&self, what: &'static str) -> TensorName {
        match self.layer {
            Some(l) => TensorName::layer(l, what),
            None => TensorName::fixed(what),
        }
    }

    fn score_dims(&self) -> [usize; 4] {
        let a = &self.shape;
        [a.b, a.h, a.tq, a.tk]
    }

    /// Naive attention's first two ops, scores then mask + softmax; returns the probabilities.
    pub fn probs(
        &self,
        e: &mut Emit<'_, impl Backend>,
        qkv: &Tensor,
        k_cache: Option<&Tensor>,
    ) -> Result<Tensor, BackendError> {
        let dims = self.score_dims();
        let scores = e.alloc(
            self.name("scores"),
            &dims,
            self.dtype,
            MemCategory::Activations,
        )?;
        let io = AttnScoresIo {
            qkv: qkv.clone(),
            k_cache: k_cache.cloned(),
            scores: scores.clone(),
        };
        e.run(self.shape, Op::AttnScores, io, "attn.scores")?;
        let probs = e.alloc(
            self.name("probs"),
            &dims,
            self.dtype,
            MemCategory::Activations,
        )?;
        let io = AttnSoftmaxIo {
            scores: scores.clone(),
            probs: probs.clone(),
        };
        e.run(self.shape, Op::AttnSoftmax, io, "attn.softmax")?;
        e.be.free(scores);
        Ok(probs)
    }

    /// Writes the attention output `out` (B·Tq, H·D) from qkv, keys and values from `cache`
    /// (k, v) when given. Returns what the backward reads besides qkv and out: the
    /// probabilities (naive) or the log-sum-exp (B, H, Tq) f32 (flash).
    pub fn forward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        qkv: &Tensor,
        cache: Option<(&Tensor, &Tensor)>,
        out: &Tensor,
    ) -> Result<Tensor, BackendError> {
        debug_assert_eq!(cache.is_some(), self.shape.kv_cache);
        let (k_cache, v_cache) = (cache.map(|c| c.0), cache.map(|c| c.1));
        match self.kernel {
            AttentionKernel::Naive => {
                let probs = self.probs(e, qkv, k_cache)?;
                let io = AttnValueIo {
                    probs: probs.clone(),
                    qkv: qkv.clone(),
                    v_cache: v_cache.cloned(),
                    out: out.clone(),
                };
                e.run(self.shape, Op::AttnValue, io, "attn.value")?;
                Ok(probs)
            }
            AttentionKernel::Flash => {
                let a = &self.shape;
                let lse = e.alloc(
                    self.name("lse"),
                    &[a.b, a.h, a.tq],
                    DType::F32,
                    MemCategory::Activations,
                )?;
                let io = FlashAttentionIo {
                    qkv: qkv.clone(),
                    k_cache: k_cache.cloned(),
                    v_cache: v_cache.cloned(),
                    out: out.clone(),
                    lse: lse.clone(),
                };
                e.run(self.shape, Op::FlashAttention, io, "attn.flash")?;
                Ok(lse)
            }
        }
    }

    /// Writes dqkv from the output's gradient `dout`. `saved` is what the forward returned;
    /// None when the policy dropped the probabilities, which are then recomputed (phase
    /// `recompute`). Frees `saved` and every intermediate.
    pub fn backward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        qkv: &Tensor,
        out: &Tensor,
        dout: &Tensor,
        saved: Option<Tensor>,
        dqkv: &Tensor,
    ) -> Result<(), BackendError> {
        debug_assert!(!self.shape.kv_cache, "training reads keys from qkv");
        match self.kernel {
            AttentionKernel::Naive => {
                let probs = match saved {
                    Some(p) => p,
                    None => {
                        let phase = std::mem::replace(&mut e.phase, Phase::Recompute);
                        let p = self.probs(e, qkv, None);
                        e.phase = phase;
                        p?
                    }
                };
                let dims = self.score_dims();
                let grads = MemCategory::ActivationGradients;
                let dprobs = e.alloc(self.name("d_probs"), &dims, self.dtype, grads)?;
                let io = AttnValueBackwardIo {
                    dout: dout.clone(),
                    qkv: qkv.clone(),
                    probs: probs.clone(),
                    dprobs: dprobs.clone(),
                    dqkv: dqkv.clone(),
                };
                e.run(self.shape, Op::AttnValueBackward, io, "attn.value")?;
                let dscores = e.alloc(self.name("d_scores"), &dims, self.dtype, grads)?;
                let io = AttnSoftmaxBackwardIo {
                    probs: probs.clone(),
                    dprobs: dprobs.clone(),
                    dscores: dscores.clone(),
                };
                e.run(self.shape, Op::AttnSoftmaxBackward, io, "attn.softmax")?;
                e.be.free(dprobs);
                e.be.free(probs);
                let io = AttnScoresBackwardIo {
                    dscores: dscores.clone(),
                    qkv: qkv.clone(),
                    dqkv: dqkv.clone(),
                };
                e.run(self.shape, Op::AttnScoresBackward, io, "attn.scores")?;
                e.be.free(dscores);
            }
            AttentionKernel::Flash => {
                let lse = saved.expect("the flash forward's log-sum-exp is always kept");
                let io = FlashAttentionBackwardIo {
                    qkv: qkv.clone(),
                    out: out.clone(),
                    dout: dout.clone(),
                    lse: lse.clone(),
                    dqkv: dqkv.clone(),
                };
                e.run(self.shape, Op::FlashAttentionBackward, io, "attn.flash")?;
                e.be.free(lse);
            }
        }
        Ok(())
    }
}
