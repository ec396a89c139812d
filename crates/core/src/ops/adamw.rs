//! AdamW (decoupled weight decay), fused over a group of parameter tensors, with the gradient
//! clipping scale folded in:
//!   g ← g·clip;  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
//!   θ ← θ − lr·(m/(1−β₁ᵗ) / (√(v/(1−β₂ᵗ)) + ε) + λθ)
//! FLOPs per parameter: clip 1, m 3, v 4, the two bias corrections 2, √ 1, +ε 1, divide 1,
//! decay 2, the update 2 → 17.
//! Bytes: the io rule — θ, g, m, v read; θ, m, v written (and the low-precision copy of θ when
//! the policy keeps one): 28 bytes per fp32 parameter, 30 with a bf16 copy.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AdamW {
    pub numel: u64,
}

impl AdamW {
    pub const FLOPS_PER_PARAM: u64 = 17;

    pub fn flops(&self) -> u64 {
        Self::FLOPS_PER_PARAM * self.numel
    }
}
