//! RMSNorm over the last dimension: y = x·rstd·γ, rstd = 1/√(mean(x²) + ε), saving rstd for the
//! backward pass. With `residual`, the fused "add then normalise" (see layernorm.rs).
//!
//! FLOPs per row of C: square C, sum C, rstd 3, scale C, γ C → 4C + 3; fused add C more.
//! Backward per row: dn = γ·dy C, dot(dn, x̂) 2C, dx = rstd·(dn − x̂·dot/C) 3C, added into
//! the residual gradient C (when accumulating), dγ += dy·x̂ 2C → 9C (8C when overwriting).
//! Bytes: the io rule.

use super::layernorm::{norm_backward, row_rstd, NormRows};
use super::residual::residual_forward;
use super::Real;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RmsNorm {
    pub n: usize,
    pub c: usize,
    /// ε inside the square root.
    pub eps: f64,
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

// Reference implementation

/// y = x·rstd·γ per row of C; stats (n, 1) receives rstd.
pub fn rmsnorm_forward<F: Real>(rn: &RmsNorm, x: &[F], gamma: &[F], y: &mut [F], stats: &mut [F]) {
    let c = rn.c;
    for i in 0..rn.n {
        let row = &x[i * c..(i + 1) * c];
        let rstd = row_rstd(row, F::zero(), rn.eps);
        for j in 0..c {
            y[i * c + j] = row[j] * rstd * gamma[j];
        }
        stats[i] = rstd;
    }
}

/// The fused form: sum = a + b, then the norm of sum.
#[allow(clippy::too_many_arguments)]
pub fn residual_rmsnorm_forward<F: Real>(
    rn: &RmsNorm,
    a: &[F],
    b: &[F],
    gamma: &[F],
    sum: &mut [F],
    y: &mut [F],
    stats: &mut [F],
) {
    residual_forward(a, b, sum);
    rmsnorm_forward(rn, sum, gamma, y, stats);
}

/// dx = rstd·(dn − x̂·mean(dn·x̂)) with dn = γ·dy (added into dx when `accumulate`);
/// dγ = Σ_rows dy·x̂, overwritten.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<F: Real>(
    rn: &RmsNorm,
    x: &[F],
    stats: &[F],
    gamma: &[F],
    dy: &[F],
    dx: &mut [F],
    dgamma: &mut [F],
) {
    let rows = NormRows {
        n: rn.n,
        c: rn.c,
        centred: false,
        accumulate: rn.accumulate,
    };
    let mean_rstd = |i: usize| (F::zero(), stats[i]);
    norm_backward(rows, mean_rstd, x, gamma, dy, dx, dgamma, None);
}

crate::operands! {
    /// y = x·rstd·γ, rstd per row; with `residual`, x is first replaced by sum = x + add.
    pub struct RmsNormIo for RmsNorm as rn {
        inputs { x, add if rn.residual, gamma }
        inplace {}
        outputs { sum if rn.residual, y, rstd }
    }
}

crate::operands! {
    /// dx (added into dx_in's buffer when `accumulate`) and dγ (overwritten).
    pub struct RmsNormBackwardIo for RmsNorm as rn {
        inputs { x, rstd, gamma, dy, dx_in if rn.accumulate }
        inplace {}
        outputs { dx, dgamma }
    }
}
