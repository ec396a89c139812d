//! RMSNorm over the last dimension: y = x·rstd·γ, rstd = 1/√(mean(x²) + ε), saving rstd for the
//! backward pass. With `residual`, the fused "add then normalise" (see layernorm.rs).
//!
//! FLOPs per row of C: square C, sum C, rstd 3, scale C, γ C → 4C + 3; fused add C more.
//! Backward per row: dn = γ·dy C, dot(dn, x̂) 2C, dx = rstd·(dn − x̂·dot/C) 3C, added into
//! the residual gradient C (when accumulating), dγ += dy·x̂ 2C → 9C (8C when overwriting).
//! Bytes: the io rule.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RmsNorm {
    pub n: usize,
    pub c: usize,
    /// Fused residual add in front of the norm.
    pub residual: bool,
    /// Backward adds dx into the residual-stream gradient instead of overwriting it.
    pub accumulate: bool,
}

impl RmsNorm {
    pub fn name(&self) -> &'static str {
        if self.residual {
            "residual_rmsnorm"
        } else {
            "rmsnorm"
        }
    }

    pub fn forward_flops(&self) -> u64 {
        let add = u64::from(self.residual) * self.c as u64;
        self.n as u64 * (4 * self.c as u64 + 3 + add)
    }

    pub fn backward_flops(&self) -> u64 {
        self.n as u64 * (8 + u64::from(self.accumulate)) * self.c as u64
    }
}
