//! Residual add: y = a + b, one FLOP per element; bytes by the io rule (two reads, one write).
//! Its backward needs no op of its own: the gradient passes through unchanged, and the branch's
//! gradient is added into the residual stream by the op that computes it (norm and matmul
//! backward accumulate), as llm.c does.

use super::Real;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ResidualAdd {
    pub numel: usize,
}

impl ResidualAdd {
    pub fn flops(&self) -> u64 {
        self.numel as u64
    }
}

// Reference implementation

pub fn residual_forward<F: Real>(a: &[F], b: &[F], y: &mut [F]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a + b;
    }
}

crate::operands! {
    /// sum = a + b. `sum` may be `a` itself (a += b in place: gradient accumulation adds a
    /// micro-step's gradient into its accumulator so); every backend allows that alias.
    pub struct ResidualAddIo for ResidualAdd as r {
        inputs { a, b }
        inplace {}
        outputs { sum }
    }
}
