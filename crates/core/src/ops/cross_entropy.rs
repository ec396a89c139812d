//! Cross-entropy fused with softmax: loss[i] = logsumexp(z[i]) − z[i][target[i]] over logits z
//! (n×V), averaged over the n tokens by the caller's 1/n in the backward. Fusing means the
//! probabilities are never stored: the backward recomputes them from the logits.
//!
//! FLOPs per row: forward max V, subtract V, exp V, sum V, log 1, pick 1 → 4V + 2.
//! Backward dz = S·(softmax(z) − onehot(target))/n: max V, subtract V, exp V, sum V,
//! normalise V, scale V (by the one factor S/n), the one-hot 1 → 6V + 1.
//!
//! S is the loss scale (`grad_scale`): the backward returns the gradient of S times the mean
//! loss, so that the fp16 policy's activation gradients stay above f16's smallest normal; the
//! optimizer divides it out again (`AdamW::grad_scale`). The forward ignores it: the losses are
//! always the unscaled ones.
//! Bytes: the io rule (forward reads z and targets, writes losses; backward reads z and targets,
//! writes dz — in place over z when fusions are on).

use super::Real;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CrossEntropy {
    pub n: usize,
    pub v: usize,
    /// S, the factor the backward multiplies the gradient by (1.0 = no loss scaling).
    pub grad_scale: f64,
}

impl CrossEntropy {
    pub fn forward_flops(&self) -> u64 {
        self.n as u64 * (4 * self.v as u64 + 2)
    }

    pub fn backward_flops(&self) -> u64 {
        self.n as u64 * (6 * self.v as u64 + 1)
    }
}

// Reference implementation

/// logsumexp of one row, shifted by its maximum so that exp never overflows.
fn logsumexp<F: Real>(z: &[F]) -> F {
    let max = z.iter().fold(F::neg_infinity(), |m, &x| m.max(x));
    max + z.iter().map(|&x| (x - max).exp()).sum::<F>().ln()
}

/// loss[i] = logsumexp(z[i]) − z[i][target[i]]. Targets must be in 0..V (checked where they
/// enter the backend).
pub fn cross_entropy_forward<F: Real>(
    ce: &CrossEntropy,
    z: &[F],
    targets: &[i32],
    losses: &mut [F],
) {
    for i in 0..ce.n {
        let row = &z[i * ce.v..][..ce.v];
        losses[i] = logsumexp(row) - row[targets[i] as usize];
    }
}

/// One row of the backward: dz = S·(softmax(z) − onehot(target))/n, written over the row in
/// place (the fused schedule writes the gradient over the logits).
pub fn cross_entropy_backward_row<F: Real>(ce: &CrossEntropy, row: &mut [F], target: usize) {
    let lse = logsumexp(row);
    // S/n in f64, rounded once to F: for S = 1 this is 1/n exactly as before.
    let scale = F::from_f64(ce.grad_scale / ce.n as f64);
    for (j, z) in row.iter_mut().enumerate() {
        let onehot = if j == target { F::one() } else { F::zero() };
        *z = ((*z - lse).exp() - onehot) * scale;
    }
}

/// dz = S·(softmax(z) − onehot)/n: the gradient of S times the mean loss over the n tokens.
pub fn cross_entropy_backward<F: Real>(ce: &CrossEntropy, z: &[F], targets: &[i32], dz: &mut [F]) {
    dz.copy_from_slice(&z[..ce.n * ce.v]);
    for i in 0..ce.n {
        cross_entropy_backward_row(ce, &mut dz[i * ce.v..][..ce.v], targets[i] as usize);
    }
}

crate::operands! {
    /// Per-row losses of the logits against the targets.
    pub struct CrossEntropyIo for CrossEntropy as ce {
        inputs { logits, targets }
        inplace {}
        outputs { losses }
    }
}

crate::operands! {
    /// dlogits = S·(softmax − onehot)/n; dlogits may be the logits' own buffer (fused, in
    /// place), in which case the logits are not readable after the op.
    pub struct CrossEntropyBackwardIo for CrossEntropy as ce {
        inputs { logits, targets }
        inplace {}
        outputs { dlogits }
    }
}
