//! The op catalogue. Each op lives in one file holding its descriptor, its shape rule, and its
//! cost: FLOPs derived in a comment, and the minimum bytes (each input read once, each output
//! written once). The reference implementations that fast kernels are tested against live in
//! the same files.
//!
//! Conventions (DESIGN.md): a FLOP is one add or one multiply, so a multiply-accumulate is 2 and
//! a matmul (m×k)(k×n) is 2mkn; a transcendental (exp, tanh, rsqrt) counts as one FLOP, so
//! elementwise counts are approximate and say so; backward FLOPs come from each op's real
//! backward computation, not "2× forward"; causal attention counts the unmasked pairs only.

pub mod activation;
pub mod adamw;
pub mod attention;
pub mod cast;
pub mod collective;
pub mod cross_entropy;
pub mod embedding;
pub mod flash_attention;
pub mod grad_norm;
#[cfg(test)]
mod gradcheck;
pub mod kv_cache;
pub mod layernorm;
pub mod matmul;
pub mod operands;
pub mod paged_attention;
pub mod real;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
pub mod swiglu;
pub mod take_last;

pub use real::Real;

use crate::tensor::Tensor;
use serde::Serialize;

/// Where in a step an op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Forward,
    /// Forward ops re-run during the backward pass (activation recomputation).
    Recompute,
    Backward,
    Optimizer,
}

impl Phase {
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Recompute => "recompute",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
        }
    }
}

/// Arithmetic and minimum memory traffic of one op call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    pub flops: u64,
    pub bytes: u64,
}

impl Cost {
    /// FLOP per byte; zero for ops that move no bytes.
    pub fn intensity(&self) -> f64 {
        if self.bytes == 0 {
            0.0
        } else {
            self.flops as f64 / self.bytes as f64
        }
    }
}

/// The common byte rule: every input read once, every output written once. A tensor that is
/// both read and written (an accumulation, an in-place update) appears in both lists.
pub fn io_bytes(inputs: &[Tensor], outputs: &[Tensor]) -> u64 {
    inputs.iter().chain(outputs).map(Tensor::size_bytes).sum()
}

/// Which matrix-unit-friendly class an op belongs to, for "fraction of time in matmuls".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpClass {
    /// Dense matrix products: linear layers, attention's QKᵀ and PV, flash attention.
    Matmul,
    /// Elementwise and reductions: norms, activations, softmax, embedding, losses.
    Elementwise,
    Optimizer,
    Communication,
}

/// One op with its dimensions. Backward ops are ops of their own because their cost, inputs and
/// outputs differ from the forward's; both share a descriptor.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Embedding(embedding::Embedding),
    EmbeddingBackward(embedding::Embedding),
    Matmul(matmul::Matmul),
    MatmulBackward(matmul::Matmul),
    LayerNorm(layernorm::LayerNorm),
    LayerNormBackward(layernorm::LayerNorm),
    RmsNorm(rmsnorm::RmsNorm),
    RmsNormBackward(rmsnorm::RmsNorm),
    Rope(rope::Rope),
    RopeBackward(rope::Rope),
    Activation(activation::Activation),
    ActivationBackward(activation::Activation),
    SwiGlu(swiglu::SwiGlu),
    SwiGluBackward(swiglu::SwiGlu),
    ResidualAdd(residual::ResidualAdd),
    AttnScores(attention::Attention),
    AttnScoresBackward(attention::Attention),
    AttnSoftmax(attention::Attention),
    AttnSoftmaxBackward(attention::Attention),
    AttnValue(attention::Attention),
    AttnValueBackward(attention::Attention),
    FlashAttention(attention::Attention),
    FlashAttentionBackward(attention::Attention),
    CrossEntropy(cross_entropy::CrossEntropy),
    CrossEntropyBackward(cross_entropy::CrossEntropy),
    AdamW(adamw::AdamW),
    GradNorm(grad_norm::GradNorm),
    Cast(cast::Cast),
    KvAppend(kv_cache::KvAppend),
    PagedKvAppend(kv_cache::PagedKvAppend),
    PagedAttention(paged_attention::PagedAttention),
    TakeLast(take_last::TakeLast),
    TakeRows(take_last::TakeRows),
    Sample(sampling::Sample),
    Collective(collective::Collective),
}

impl Op {
    /// The op's name in tables and traces.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Embedding(_) => "embedding",
            Op::EmbeddingBackward(_) => "embedding_backward",
            Op::Matmul(m) => m.name(),
            Op::MatmulBackward(m) => m.backward_name(),
            Op::LayerNorm(n) => n.name(),
            Op::LayerNormBackward(_) => "layernorm_backward",
            Op::RmsNorm(n) => n.name(),
            Op::RmsNormBackward(_) => "rmsnorm_backward",
            Op::Rope(_) => "rope",
            Op::RopeBackward(_) => "rope_backward",
            Op::Activation(a) => a.kind.name(),
            Op::ActivationBackward(a) => a.kind.backward_name(),
            Op::SwiGlu(_) => "swiglu",
            Op::SwiGluBackward(_) => "swiglu_backward",
            Op::ResidualAdd(_) => "residual_add",
            Op::AttnScores(_) => "attn_scores",
            Op::AttnScoresBackward(_) => "attn_scores_backward",
            Op::AttnSoftmax(_) => "attn_softmax",
            Op::AttnSoftmaxBackward(_) => "attn_softmax_backward",
            Op::AttnValue(_) => "attn_value",
            Op::AttnValueBackward(_) => "attn_value_backward",
            Op::FlashAttention(_) => "flash_attention",
            Op::FlashAttentionBackward(_) => "flash_attention_backward",
            Op::CrossEntropy(_) => "cross_entropy",
            Op::CrossEntropyBackward(_) => "cross_entropy_backward",
            Op::AdamW(_) => "adamw",
            Op::GradNorm(_) => "grad_norm",
            Op::Cast(_) => "cast",
            Op::KvAppend(_) => "kv_append",
            Op::PagedKvAppend(_) => "paged_kv_append",
            Op::PagedAttention(_) => "paged_attention",
            Op::TakeLast(_) => "take_last",
            Op::TakeRows(_) => "take_rows",
            Op::Sample(_) => "sample",
            Op::Collective(c) => c.kind.name(),
        }
    }

    pub fn class(&self) -> OpClass {
        match self {
            Op::Matmul(_)
            | Op::MatmulBackward(_)
            | Op::AttnScores(_)
            | Op::AttnScoresBackward(_)
            | Op::AttnValue(_)
            | Op::AttnValueBackward(_)
            | Op::FlashAttention(_)
            | Op::FlashAttentionBackward(_)
            | Op::PagedAttention(_) => OpClass::Matmul,
            Op::AdamW(_) | Op::GradNorm(_) => OpClass::Optimizer,
            Op::Collective(_) => OpClass::Communication,
            _ => OpClass::Elementwise,
        }
    }

    /// FLOPs and minimum bytes of this op reading `inputs` and writing `outputs`.
    pub fn cost(&self, inputs: &[Tensor], outputs: &[Tensor]) -> Cost {
        let io = io_bytes(inputs, outputs);
        match self {
            Op::Embedding(e) => Cost {
                flops: e.forward_flops(),
                bytes: e.forward_bytes(inputs, outputs),
            },
            Op::EmbeddingBackward(e) => Cost {
                flops: e.backward_flops(),
                bytes: e.backward_bytes(inputs, outputs),
            },
            Op::Matmul(m) => Cost {
                flops: m.forward_flops(),
                bytes: io,
            },
            Op::MatmulBackward(m) => Cost {
                flops: m.backward_flops(),
                bytes: io,
            },
            Op::LayerNorm(n) => Cost {
                flops: n.forward_flops(),
                bytes: io,
            },
            Op::LayerNormBackward(n) => Cost {
                flops: n.backward_flops(),
                bytes: io,
            },
            Op::RmsNorm(n) => Cost {
                flops: n.forward_flops(),
                bytes: io,
            },
            Op::RmsNormBackward(n) => Cost {
                flops: n.backward_flops(),
                bytes: io,
            },
            Op::Rope(r) | Op::RopeBackward(r) => Cost {
                flops: r.flops(),
                bytes: r.bytes(inputs),
            },
            Op::Activation(a) => Cost {
                flops: a.forward_flops(),
                bytes: io,
            },
            Op::ActivationBackward(a) => Cost {
                flops: a.backward_flops(),
                bytes: io,
            },
            Op::SwiGlu(s) => Cost {
                flops: s.forward_flops(),
                bytes: io,
            },
            Op::SwiGluBackward(s) => Cost {
                flops: s.backward_flops(),
                bytes: io,
            },
            Op::ResidualAdd(r) => Cost {
                flops: r.flops(),
                bytes: io,
            },
            Op::AttnScores(a) => Cost {
                flops: a.scores_flops(),
                bytes: a.scores_bytes(inputs, outputs),
            },
            Op::AttnScoresBackward(a) => Cost {
                flops: a.scores_backward_flops(),
                bytes: a.scores_backward_bytes(inputs, outputs),
            },
            Op::AttnSoftmax(a) => Cost {
                flops: a.softmax_flops(),
                bytes: io,
            },
            Op::AttnSoftmaxBackward(a) => Cost {
                flops: a.softmax_backward_flops(),
                bytes: io,
            },
            Op::AttnValue(a) => Cost {
                flops: a.value_flops(),
                bytes: a.value_bytes(inputs, outputs),
            },
            Op::AttnValueBackward(a) => Cost {
                flops: a.value_backward_flops(),
                bytes: a.value_backward_bytes(inputs, outputs),
            },
            Op::FlashAttention(a) => Cost {
                flops: flash_attention::forward_flops(a),
                bytes: flash_attention::forward_bytes(a, inputs),
            },
            Op::FlashAttentionBackward(a) => Cost {
                flops: flash_attention::backward_flops(a),
                bytes: flash_attention::backward_bytes(a, inputs),
            },
            Op::CrossEntropy(c) => Cost {
                flops: c.forward_flops(),
                bytes: io,
            },
            Op::CrossEntropyBackward(c) => Cost {
                flops: c.backward_flops(),
                bytes: io,
            },
            Op::AdamW(a) => Cost {
                flops: a.flops(),
                bytes: a.bytes(inputs, outputs),
            },
            Op::GradNorm(g) => Cost {
                flops: g.flops(),
                bytes: g.bytes(inputs, outputs),
            },
            Op::Cast(c) => Cost {
                flops: 0,
                bytes: c.bytes(inputs, outputs),
            },
            Op::KvAppend(k) => Cost {
                flops: 0,
                bytes: k.bytes(inputs),
            },
            Op::PagedKvAppend(k) => Cost {
                flops: 0,
                bytes: k.bytes(inputs),
            },
            Op::PagedAttention(a) => Cost {
                flops: a.flops(),
                bytes: a.bytes(inputs),
            },
            Op::TakeLast(t) => Cost {
                flops: 0,
                bytes: t.bytes(inputs),
            },
            Op::TakeRows(t) => Cost {
                flops: 0,
                bytes: t.bytes(inputs),
            },
            Op::Sample(s) => Cost {
                flops: s.flops(),
                bytes: io,
            },
            Op::Collective(c) => Cost {
                flops: c.flops(),
                bytes: c.link_bytes(),
            },
        }
    }
}
