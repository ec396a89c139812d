//! AdamW (decoupled weight decay), fused over a group of parameter tensors, with the loss scale
//! and the gradient clipping scale folded in:
//!   g ← g·clip/S;  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
//!   θ ← θ − lr·(m/(1−β₁ᵗ) / (√(v/(1−β₂ᵗ)) + ε) + λθ)
//! S is the loss scale the gradients were computed under (`AdamW::grad_scale`, 1 = none): the
//! stored gradients are S times the true ones, so the update uses g/S, and the clip compares the
//! true norm ‖g‖/S with the maximum (the GradNorm op measures the scaled gradients). clip/S is
//! one factor per step, computed in f64 and rounded once, so it costs the same one multiply as
//! the clip alone. When S > 1 and the measured norm is not finite, some gradient overflowed the
//! 16-bit storage and the step is skipped: θ, m, v and the low-precision copies keep their values.
//!
//! FLOPs per parameter: the clip/S factor 1, m 3, v 4, the two bias corrections 2, √ 1, +ε 1,
//! divide 1, decay 2, the update 2 → 17 (a skipped step does none, which the model ignores).
//! Bytes: the io rule — θ, g, m, v read; θ, m, v written (and the low-precision copy of θ when
//! the policy keeps one): 28 bytes per fp32 parameter, 30 with a bf16 copy. Under ZeRO-1 a rank
//! updates only its 1/W shard: `numel` counts the shard, m and v are allocated as the shard, and
//! the replicated θ, g and copies are touched over the shard alone ([`AdamW::bytes`]): the
//! rank's [`crate::comm::shard_range`] of each (its rank known to the backend), and the norm
//! input is then the all-reduced Σg² of the shards, whose root is the global norm.

use super::operands::{Cursor, OperandError, Operands};
use super::Real;
use crate::tensor::{MemCategory, Tensor};
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
    /// S, the loss scale the gradients carry (1.0 = none): the update divides it out, and with
    /// S > 1 a non-finite gradient norm skips the step.
    pub grad_scale: f64,
    /// 1: every element of each tensor, the norm input ‖g‖; W > 1: this rank's ZeRO-1 shard of
    /// each θ, g and copy (m and v are the shard), the norm input Σg² over all ranks.
    pub shards: usize,
}

impl AdamW {
    pub const FLOPS_PER_PARAM: u64 = 17;

    pub fn flops(&self) -> u64 {
        Self::FLOPS_PER_PARAM * self.numel
    }

    /// Minimum bytes of a call over `inputs` [norm, θ…, g…, m…, v…] and `outputs`. When `numel`
    /// covers every gradient element this is the io rule exactly; when it is a ZeRO-1 shard, the
    /// replicated tensors (everything but the moments and the norm) count the shard's share of
    /// their bytes, and the moments, allocated as the shard, count whole.
    pub fn bytes(&self, inputs: &[Tensor], outputs: &[Tensor]) -> u64 {
        let full: u64 = inputs
            .iter()
            .filter(|t| t.category == MemCategory::Gradients)
            .map(Tensor::numel)
            .sum();
        if full == 0 || self.numel >= full {
            return super::io_bytes(inputs, outputs);
        }
        let whole =
            |t: &&Tensor| matches!(t.category, MemCategory::OptimizerState | MemCategory::Io);
        let all = || inputs.iter().chain(outputs);
        let own: u64 = all().filter(whole).map(Tensor::size_bytes).sum();
        let replicated: u64 = all().filter(|t| !whole(t)).map(Tensor::size_bytes).sum();
        own + (replicated as u128 * self.numel as u128 / full as u128) as u64
    }

    /// The global norm from the norm input: itself, or the root of the ranks' summed squares.
    pub fn norm_of(&self, input: f64) -> f64 {
        if self.shards > 1 {
            input.sqrt()
        } else {
            input
        }
    }

    /// Whether a step whose (scaled) gradients have global norm `grad_norm` is skipped: under
    /// loss scaling a non-finite norm means a gradient overflowed.
    pub fn skips(&self, grad_norm: f64) -> bool {
        self.grad_scale > 1.0 && !grad_norm.is_finite()
    }

    /// The factor every stored gradient is multiplied by, clip(‖g‖/S)/S, given the global norm
    /// ‖g‖ of the stored (scaled) gradients; `None` when the step is skipped. For S = 1 it is
    /// exactly [`AdamWParams::clip_scale`].
    pub fn grad_factor(&self, grad_norm: f64) -> Option<f64> {
        let grad_norm = self.norm_of(grad_norm);
        if self.skips(grad_norm) {
            return None;
        }
        let s = self.grad_scale;
        Some(self.hyper.clip_scale(grad_norm / s) / s)
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

/// One AdamW update of one parameter tensor; `decay` says whether weight decay applies to it and
/// every gradient is multiplied by `clip` first (the clipping scale, or [`AdamW::grad_factor`]'s
/// clip/S under loss scaling).
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

/// One AdamW step of an op over one parameter tensor, given the global norm of the stored
/// gradients: unscales and clips them, or leaves θ, m and v unchanged when the step is skipped.
/// Returns whether the update was applied.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step<F: Real>(
    op: &AdamW,
    grad_norm: f64,
    decay: bool,
    theta: &mut [F],
    g: &[F],
    m: &mut [F],
    v: &mut [F],
) -> bool {
    match op.grad_factor(grad_norm) {
        Some(factor) => {
            adamw_update(&op.hyper, decay, F::from_f64(factor), theta, g, m, v);
            true
        }
        None => false,
    }
}

/// AdamW's operands over one group of P parameters: the gradient norm (for the clip), and per
/// parameter its f32 master θ, gradient g and moments m, v, all updated in place; with `copies`
/// (the fused refresh of a mixed policy's low-precision copies) each θ's copy is rewritten too.
///   lists: inputs [norm, θ…, g…, m…, v…] → outputs [θ…, m…, v…, copies…]
#[derive(Clone, Debug)]
pub struct AdamWIo {
    pub norm: Tensor,
    pub theta: Vec<Tensor>,
    pub grads: Vec<Tensor>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Empty, or one per θ.
    pub copies: Vec<Tensor>,
}

impl Operands<AdamW> for AdamWIo {
    fn into_lists(self, _: &AdamW) -> (Vec<Tensor>, Vec<Tensor>) {
        let p = self.theta.len();
        debug_assert!(self.grads.len() == p && self.m.len() == p && self.v.len() == p);
        debug_assert!(self.copies.is_empty() || self.copies.len() == p);
        let mut inputs = vec![self.norm];
        inputs.extend(self.theta.iter().cloned());
        inputs.extend(self.grads);
        inputs.extend(self.m.iter().cloned());
        inputs.extend(self.v.iter().cloned());
        let mut outputs = self.theta;
        outputs.extend(self.m);
        outputs.extend(self.v);
        outputs.extend(self.copies);
        (inputs, outputs)
    }

    fn from_lists(_: &AdamW, inputs: &[Tensor], outputs: &[Tensor]) -> Result<Self, OperandError> {
        let p = inputs.len().saturating_sub(1) / 4;
        if p == 0 || inputs.len() != 1 + 4 * p {
            return Err(OperandError::Shape(format!(
                "AdamW takes [norm, θ…, g…, m…, v…] (1 + 4P inputs), not {}",
                inputs.len()
            )));
        }
        let copies = outputs
            .len()
            .checked_sub(3 * p)
            .filter(|&c| c == 0 || c == p);
        let Some(copies) = copies else {
            return Err(OperandError::Shape(format!(
                "AdamW over {p} parameters writes [θ…, m…, v…] and perhaps their copies (3P or 4P outputs), not {}",
                outputs.len()
            )));
        };
        let mut ins = Cursor::new(inputs, "input");
        let mut outs = Cursor::new(outputs, "output");
        let io = AdamWIo {
            norm: ins.take("norm")?,
            theta: ins.take_many(p, "θ")?,
            grads: ins.take_many(p, "g")?,
            m: ins.take_many(p, "m")?,
            v: ins.take_many(p, "v")?,
            copies: Vec::new(),
        };
        for (list, name) in [(&io.theta, "θ"), (&io.m, "m"), (&io.v, "v")] {
            for t in list {
                if outs.take(name)?.id != t.id {
                    return Err(OperandError::NotInPlace { name });
                }
            }
        }
        let copies = outs.take_many(copies, "copy")?;
        outs.finish()?;
        ins.finish()?;
        Ok(AdamWIo { copies, ..io })
    }
}
