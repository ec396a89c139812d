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

use super::residual::residual_forward;
use super::Real;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LayerNorm {
    /// Rows (tokens).
    pub n: usize,
    pub c: usize,
    pub bias: bool,
    /// ε inside the square root.
    pub eps: f64,
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

// Reference implementation

/// y = (x − μ)·rstd·γ + β per row of C; stats (n, 2) receives (μ, rstd).
pub fn layernorm_forward<F: Real>(
    ln: &LayerNorm,
    x: &[F],
    gamma: &[F],
    beta: Option<&[F]>,
    y: &mut [F],
    stats: &mut [F],
) {
    let c = ln.c;
    for i in 0..ln.n {
        let row = &x[i * c..(i + 1) * c];
        let mean = row.iter().copied().sum::<F>() / F::from_f64(c as f64);
        let rstd = row_rstd(row, mean, ln.eps);
        for j in 0..c {
            let b = beta.map_or(F::zero(), |b| b[j]);
            y[i * c + j] = (row[j] - mean) * rstd * gamma[j] + b;
        }
        stats[2 * i] = mean;
        stats[2 * i + 1] = rstd;
    }
}

/// The fused form: sum = a + b, then the norm of sum.
#[allow(clippy::too_many_arguments)]
pub fn residual_layernorm_forward<F: Real>(
    ln: &LayerNorm,
    a: &[F],
    b: &[F],
    gamma: &[F],
    beta: Option<&[F]>,
    sum: &mut [F],
    y: &mut [F],
    stats: &mut [F],
) {
    residual_forward(a, b, sum);
    layernorm_forward(ln, sum, gamma, beta, y, stats);
}

/// dx = rstd·(dn − mean(dn) − x̂·mean(dn·x̂)) with dn = γ·dy (added into dx when `accumulate`);
/// dγ = Σ_rows dy·x̂ and dβ = Σ_rows dy, overwritten.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<F: Real>(
    ln: &LayerNorm,
    x: &[F],
    stats: &[F],
    gamma: &[F],
    dy: &[F],
    dx: &mut [F],
    dgamma: &mut [F],
    dbeta: Option<&mut [F]>,
) {
    let rows = NormRows {
        n: ln.n,
        c: ln.c,
        centred: true,
        accumulate: ln.accumulate,
    };
    let mean_rstd = |i: usize| (stats[2 * i], stats[2 * i + 1]);
    norm_backward(rows, mean_rstd, x, gamma, dy, dx, dgamma, dbeta);
}

// What LayerNorm and RMSNorm share. RMSNorm is LayerNorm without the centring (μ = 0) and
// without β; these are the steps that are the same computation for both.

/// 1/√(m + ε), m the mean square deviation of the row from `centre` (μ for LayerNorm, whose m is
/// the variance; 0 for RMSNorm, whose m is the mean square: x − 0 is x, bit for bit).
pub(super) fn row_rstd<F: Real>(row: &[F], centre: F, eps: f64) -> F {
    let m =
        row.iter().map(|&v| (v - centre) * (v - centre)).sum::<F>() / F::from_f64(row.len() as f64);
    F::one() / (m + F::from_f64(eps)).sqrt()
}

/// The shape of a norm's backward: n rows of c; `centred` when the forward subtracted the row
/// mean (LayerNorm), which puts −mean(dn) into dx.
#[derive(Clone, Copy)]
pub(super) struct NormRows {
    pub n: usize,
    pub c: usize,
    pub centred: bool,
    pub accumulate: bool,
}

/// The norms' backward, row i having been normalised as x̂ = (x − μᵢ)·rstdᵢ with
/// (μᵢ, rstdᵢ) = `mean_rstd(i)`: dx = rstd·(dn − mean(dn) − x̂·mean(dn·x̂)), dn = γ·dy, the
/// mean(dn) term only when centred (without centring μ = 0 and the term is absent: subtracting
/// 0 leaves dn as it is, bit for bit); dx is added into when `accumulate`; dγ = Σ_rows dy·x̂ and
/// dβ = Σ_rows dy (when given) are overwritten.
#[allow(clippy::too_many_arguments)]
pub(super) fn norm_backward<F: Real>(
    rows: NormRows,
    mean_rstd: impl Fn(usize) -> (F, F),
    x: &[F],
    gamma: &[F],
    dy: &[F],
    dx: &mut [F],
    dgamma: &mut [F],
    mut dbeta: Option<&mut [F]>,
) {
    let c = rows.c;
    dgamma.iter_mut().for_each(|v| *v = F::zero());
    if let Some(db) = dbeta.as_deref_mut() {
        db.iter_mut().for_each(|v| *v = F::zero());
    }
    let cf = F::from_f64(c as f64);
    for i in 0..rows.n {
        let (mean, rstd) = mean_rstd(i);
        let xhat = |j: usize| (x[i * c + j] - mean) * rstd;
        let dn = |j: usize| gamma[j] * dy[i * c + j];
        let mean_dn = if rows.centred {
            (0..c).map(dn).sum::<F>() / cf
        } else {
            F::zero()
        };
        let mean_dn_xhat = (0..c).map(|j| dn(j) * xhat(j)).sum::<F>() / cf;
        for j in 0..c {
            let d = rstd * (dn(j) - mean_dn - xhat(j) * mean_dn_xhat);
            if rows.accumulate {
                dx[i * c + j] += d;
            } else {
                dx[i * c + j] = d;
            }
            dgamma[j] += dy[i * c + j] * xhat(j);
            if let Some(db) = dbeta.as_deref_mut() {
                db[j] += dy[i * c + j];
            }
        }
    }
}

crate::operands! {
    /// y = (x − μ)·rstd·γ + β, stats = (μ, rstd) per row; with `residual`, x is first
    /// replaced by sum = x + add (written out: it is the next residual stream).
    pub struct LayerNormIo for LayerNorm as ln {
        inputs { x, add if ln.residual, gamma, beta if ln.bias }
        inplace {}
        outputs { sum if ln.residual, y, stats }
    }
}

crate::operands! {
    /// dx (added into dx_in's buffer when `accumulate`), dγ and dβ (overwritten).
    pub struct LayerNormBackwardIo for LayerNorm as ln {
        inputs { x, stats, gamma, dy, dx_in if ln.accumulate }
        inplace {}
        outputs { dx, dgamma, dbeta if ln.bias }
    }
}
