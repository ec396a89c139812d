//! AdamW (decoupled weight decay), fused over a group of parameter tensors, with the gradient
//! clipping scale folded in:
//!   g ← g·clip;  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
//!   θ ← θ − lr·(m/(1−β₁ᵗ) / (√(v/(1−β₂ᵗ)) + ε) + λθ)
//! FLOPs per parameter: clip 1, m 3, v 4, the two bias corrections 2, √ 1, +ε 1, divide 1,
//! decay 2, the update 2 → 17.
//! Bytes: the io rule — θ, g, m, v read; θ, m, v written (and the low-precision copy of θ when
//! the policy keeps one): 28 bytes per fp32 parameter, 30 with a bf16 copy.

use super::Real;
use serde::Serialize;

/// The optimizer's hyperparameters for one step. The schedule passes them with every AdamW call
/// because lr and the step count change from step to step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// λ, applied to 2-D weights (matrices and embedding tables) only: decaying gains and biases
    /// pulls norms and offsets toward zero for no regularising benefit (GPT-2 and nanoGPT's rule).
    pub weight_decay: f64,
    /// t, 1-based: the bias corrections divide by 1 − βᵗ.
    pub step: u64,
    /// Gradients are scaled by max/‖g‖ when their global norm exceeds it.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 1,
            max_grad_norm: Some(1.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AdamW {
    pub numel: u64,
    pub hyper: AdamWParams,
}

impl AdamW {
    pub const FLOPS_PER_PARAM: u64 = 17;

    pub fn flops(&self) -> u64 {
        Self::FLOPS_PER_PARAM * self.numel
    }
}

// Reference implementation

impl AdamWParams {
    /// The factor every gradient is multiplied by, given the global norm.
    pub fn clip_scale(&self, grad_norm: f64) -> f64 {
        match self.max_grad_norm {
            // The 1e-6 keeps the scale finite when the norm is 0 (then nothing is clipped anyway).
            Some(max) if grad_norm > max => max / (grad_norm + 1e-6),
            _ => 1.0,
        }
    }
}

/// One AdamW update of one parameter tensor; `decay` says whether weight decay applies to it.
pub fn adamw_update<F: Real>(
    p: &AdamWParams,
    decay: bool,
    clip: F,
    theta: &mut [F],
    g: &[F],
    m: &mut [F],
    v: &mut [F],
) {
    let t = p.step.max(1) as i32;
    let (b1, b2) = (F::from_f64(p.beta1), F::from_f64(p.beta2));
    let c1 = F::from_f64(1.0 - p.beta1.powi(t));
    let c2 = F::from_f64(1.0 - p.beta2.powi(t));
    let (lr, eps) = (F::from_f64(p.lr), F::from_f64(p.eps));
    let wd = F::from_f64(if decay { p.weight_decay } else { 0.0 });
    for i in 0..theta.len() {
        let gi = g[i] * clip;
        m[i] = b1 * m[i] + (F::one() - b1) * gi;
        v[i] = b2 * v[i] + (F::one() - b2) * gi * gi;
        let mhat = m[i] / c1;
        let vhat = v[i] / c2;
        theta[i] -= lr * (mhat / (vhat.sqrt() + eps) + wd * theta[i]);
    }
}
