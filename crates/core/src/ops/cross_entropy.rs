//! Cross-entropy fused with softmax: loss[i] = logsumexp(z[i]) − z[i][target[i]] over logits z
//! (n×V), averaged over the n tokens by the caller's 1/n in the backward. Fusing means the
//! probabilities are never stored: the backward recomputes them from the logits.
//!
//! FLOPs per row: forward max V, subtract V, exp V, sum V, log 1, pick 1 → 4V + 2.
//! Backward dz = (softmax(z) − onehot(target))·dloss/n: max V, subtract V, exp V, sum V,
//! normalise V, scale V, the one-hot 1 → 6V + 1.
//! Bytes: the io rule (forward reads z and targets, writes losses; backward reads z and targets,
//! writes dz — in place over z when fusions are on).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CrossEntropy {
    pub n: usize,
    pub v: usize,
}

impl CrossEntropy {
    pub fn forward_flops(&self) -> u64 {
        self.n as u64 * (4 * self.v as u64 + 2)
    }

    pub fn backward_flops(&self) -> u64 {
        self.n as u64 * (6 * self.v as u64 + 1)
    }
}
