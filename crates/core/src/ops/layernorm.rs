//! LayerNorm over the last dimension: y = (x − μ)·rstd·γ + β, rstd = 1/√(σ² + ε), saving μ and
//! rstd (n floats each) for the backward pass. With `residual`, the op is the fused
//! "add then normalise": s = a + b is written out (the residual stream) and normalised.
//!
//! FLOPs per row of C: mean C, x − μ C, square C, variance sum C, rstd 3, normalise C, γ C,
//! β C → 7C + 3 (6C + 3 without β); the fused residual add is C more.
//! Backward per row (llm.c's form): dn = γ·dy C, mean(dn) C, mean(dn·x̂) 2C,
//! dx = rstd·(dn − mean − x̂·mean₂) 4C, added into the residual gradient C (when
//! accumulating), dγ += dy·x̂ 2C, dβ += dy C → 12C (11C without β, 1C less when overwriting).
//! Bytes: the io rule.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LayerNorm {
    /// Rows (tokens).
    pub n: usize,
    pub c: usize,
    pub bias: bool,
    /// Fused residual add in front of the norm.
    pub residual: bool,
    /// Backward adds dx into the residual-stream gradient instead of overwriting it.
    pub accumulate: bool,
}

impl LayerNorm {
    pub fn name(&self) -> &'static str {
        if self.residual {
            "residual_layernorm"
        } else {
            "layernorm"
        }
    }

    pub fn forward_flops(&self) -> u64 {
        let per_row = 6 * self.c as u64 + 3 + u64::from(self.bias) * self.c as u64;
        let add = u64::from(self.residual) * self.c as u64;
        self.n as u64 * (per_row + add)
    }

    pub fn backward_flops(&self) -> u64 {
        let c = self.c as u64;
        let per_row = 10 * c + u64::from(self.accumulate) * c + u64::from(self.bias) * c;
        self.n as u64 * per_row
    }
}
