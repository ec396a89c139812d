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
pub mod geglu;
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

/// How an op writes its outputs, which a backend that hands out uninitialised memory must know:
/// an output written in part, or added into, has to read as zero where the op leaves it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputWrite {
    /// Every element of every output is written (the default).
    Whole,
    /// Some elements of an output are written and the rest left as they were: a cache's one
    /// row or slot per token, naive attention's backwards writing the Q, K and V thirds of dqkv
    /// in separate ops.
    Part,
    /// The op adds into its first output without listing it among its inputs (a tied
    /// embedding's gradient accumulating into the LM head's).
    AddsIntoFirst,
}

/// Declares the `Op` enum and, for each op in one row, its name in tables, its class and its
/// cost: `Variant(Descriptor) as d => name, Class, flops, bytes;`, and, where the op does not
/// write every element of its outputs, `, writes: OutputWrite` after the bytes. Registering an
/// op in core is its row here (besides `pub mod`); the name, class, cost and write rule cannot
/// drift apart in separate matches. `inputs`, `outputs` and `io` (their default byte count) are
/// named by the caller so that the rows' expressions can use them.
macro_rules! op_table {
    (
        ($inputs:ident, $outputs:ident, $io:ident)
        $( $(#[$m:meta])* $variant:ident($desc:ty) as $d:ident =>
            $name:expr, $class:ident, $flops:expr, $bytes:expr $(, writes: $write:expr)?; )*
    ) => {
        /// One op with its dimensions. Backward ops are ops of their own because their cost,
        /// inputs and outputs differ from the forward's; both share a descriptor.
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum Op {
            $( $(#[$m])* $variant($desc), )*
        }

        impl Op {
            /// The op's name in tables and traces.
            #[allow(unused_variables)]
            pub fn name(&self) -> &'static str {
                match self {
                    $( Op::$variant($d) => $name, )*
                }
            }

            pub fn class(&self) -> OpClass {
                match self {
                    $( Op::$variant(_) => OpClass::$class, )*
                }
            }

            /// FLOPs and minimum bytes of this op reading `inputs` and writing `outputs`.
            #[allow(unused_variables)]
            pub fn cost(&self, $inputs: &[Tensor], $outputs: &[Tensor]) -> Cost {
                let $io = io_bytes($inputs, $outputs);
                match self {
                    $( Op::$variant($d) => Cost { flops: $flops, bytes: $bytes }, )*
                }
            }

            /// How this call writes its outputs (see [`OutputWrite`]).
            #[allow(unused_variables)]
            pub fn output_write(&self) -> OutputWrite {
                match self {
                    $( Op::$variant($d) => {
                        #[allow(unused_mut, unused_assignments)]
                        let mut write = OutputWrite::Whole;
                        $( write = $write; )?
                        write
                    } )*
                }
            }
        }
    };
}

op_table! {
    (inputs, outputs, io)
    Embedding(embedding::Embedding) as e =>
        "embedding", Elementwise, e.forward_flops(), e.forward_bytes(inputs, outputs);
    EmbeddingBackward(embedding::Embedding) as e =>
        "embedding_backward", Elementwise, e.backward_flops(), e.backward_bytes(inputs, outputs),
        writes: if e.accumulate { OutputWrite::AddsIntoFirst } else { OutputWrite::Whole };
    Matmul(matmul::Matmul) as m => m.name(), Matmul, m.forward_flops(), io;
    MatmulBackward(matmul::Matmul) as m => m.backward_name(), Matmul, m.backward_flops(), io;
    LayerNorm(layernorm::LayerNorm) as n => n.name(), Elementwise, n.forward_flops(), io;
    LayerNormBackward(layernorm::LayerNorm) as n =>
        "layernorm_backward", Elementwise, n.backward_flops(), io;
    RmsNorm(rmsnorm::RmsNorm) as n => n.name(), Elementwise, n.forward_flops(), io;
    RmsNormBackward(rmsnorm::RmsNorm) as n =>
        "rmsnorm_backward", Elementwise, n.backward_flops(), io;
    Rope(rope::Rope) as r => "rope", Elementwise, r.flops(), r.bytes(inputs);
    RopeBackward(rope::Rope) as r => "rope_backward", Elementwise, r.flops(), r.bytes(inputs);
    Activation(activation::Activation) as a =>
        a.kind.name(), Elementwise, a.forward_flops(), io;
    ActivationBackward(activation::Activation) as a =>
        a.kind.backward_name(), Elementwise, a.backward_flops(), io;
    SwiGlu(swiglu::SwiGlu) as s => "swiglu", Elementwise, s.forward_flops(), io;
    SwiGluBackward(swiglu::SwiGlu) as s =>
        "swiglu_backward", Elementwise, s.backward_flops(), io;
    GeGlu(geglu::GeGlu) as s => "geglu", Elementwise, s.forward_flops(), io;
    GeGluBackward(geglu::GeGlu) as s => "geglu_backward", Elementwise, s.backward_flops(), io;
    ResidualAdd(residual::ResidualAdd) as r => "residual_add", Elementwise, r.flops(), io;
    AttnScores(attention::Attention) as a =>
        "attn_scores", Matmul, a.scores_flops(), a.scores_bytes(inputs, outputs);
    AttnScoresBackward(attention::Attention) as a => "attn_scores_backward", Matmul,
        a.scores_backward_flops(), a.scores_backward_bytes(inputs, outputs),
        writes: OutputWrite::Part;
    AttnSoftmax(attention::Attention) as a =>
        "attn_softmax", Elementwise, a.softmax_flops(), io;
    AttnSoftmaxBackward(attention::Attention) as a =>
        "attn_softmax_backward", Elementwise, a.softmax_backward_flops(), io;
    AttnValue(attention::Attention) as a =>
        "attn_value", Matmul, a.value_flops(), a.value_bytes(inputs, outputs);
    AttnValueBackward(attention::Attention) as a => "attn_value_backward", Matmul,
        a.value_backward_flops(), a.value_backward_bytes(inputs, outputs),
        writes: OutputWrite::Part;
    FlashAttention(attention::Attention) as a => "flash_attention", Matmul,
        flash_attention::forward_flops(a), flash_attention::forward_bytes(a, inputs);
    FlashAttentionBackward(attention::Attention) as a => "flash_attention_backward", Matmul,
        flash_attention::backward_flops(a), flash_attention::backward_bytes(a, inputs);
    CrossEntropy(cross_entropy::CrossEntropy) as c =>
        "cross_entropy", Elementwise, c.forward_flops(), io;
    CrossEntropyBackward(cross_entropy::CrossEntropy) as c =>
        "cross_entropy_backward", Elementwise, c.backward_flops(), io;
    AdamW(adamw::AdamW) as a => "adamw", Optimizer, a.flops(), a.bytes(inputs, outputs);
    GradNorm(grad_norm::GradNorm) as g =>
        "grad_norm", Optimizer, g.flops(), g.bytes(inputs, outputs);
    Cast(cast::Cast) as c => "cast", Elementwise, 0, c.bytes(inputs, outputs);
    KvAppend(kv_cache::KvAppend) as k =>
        "kv_append", Elementwise, 0, k.bytes(inputs), writes: OutputWrite::Part;
    PagedKvAppend(kv_cache::PagedKvAppend) as k =>
        "paged_kv_append", Elementwise, 0, k.bytes(inputs), writes: OutputWrite::Part;
    PagedAttention(paged_attention::PagedAttention) as a =>
        "paged_attention", Matmul, a.flops(), a.bytes(inputs);
    TakeLast(take_last::TakeLast) as t => "take_last", Elementwise, 0, t.bytes(inputs);
    TakeRows(take_last::TakeRows) as t => "take_rows", Elementwise, 0, t.bytes(inputs);
    Sample(sampling::Sample) as s => "sample", Elementwise, s.flops(), io;
    Collective(collective::Collective) as c =>
        c.kind.name(), Communication, c.flops(), c.link_bytes();
}

impl Op {
    /// What a calibration tells apart within the op's name ("" for nothing): see
    /// [`matmul::Matmul::calibration_variant`], the only op with variants. `dtype` is the one
    /// the op computes in.
    pub fn calibration_variant(&self, dtype: crate::dtype::DType) -> &'static str {
        match self {
            Op::Matmul(m) => m.calibration_variant(false, dtype),
            Op::MatmulBackward(m) => m.calibration_variant(true, dtype),
            _ => "",
        }
    }
}
