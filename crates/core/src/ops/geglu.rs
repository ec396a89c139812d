//! GeGLU (Shazeer 2020, "GLU Variants Improve Transformer"; the MLP of Gemma and T5 v1.1):
//! y (n×F) = gelu(g) ⊙ u where [g | u] = h (n×2F), the output of the fused gate-and-up
//! projection. GELU is the tanh approximation (ops/activation.rs), as Gemma's
//! gelu_pytorch_tanh.
//!
//! FLOPs per output element: forward gelu 9 + product 1 = 10. Backward: du = dy·gelu(g) is
//! 9 + 1 = 10; dg = dy·u·gelu'(g) is gelu' 17 (ops/activation.rs, its product with dy included)
//! and 1 for u, 18; 28 in all.
//! Bytes: the io rule (h read, y written; backward reads h and dy, writes dh).

use super::activation::ActivationKind;
use super::swiglu::{gated_backward, gated_forward};
use super::Real;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GeGlu {
    /// Rows (tokens).
    pub n: usize,
    /// F, the width of the output.
    pub f: usize,
}

impl GeGlu {
    fn numel(&self) -> u64 {
        self.n as u64 * self.f as u64
    }

    pub fn forward_flops(&self) -> u64 {
        10 * self.numel()
    }

    pub fn backward_flops(&self) -> u64 {
        28 * self.numel()
    }
}

// Reference implementation

/// y[i][j] = gelu(h[i][j])·h[i][F + j]: the gate is the first F columns of h, the up
/// projection the second F.
pub fn geglu_forward<F: Real>(s: &GeGlu, h: &[F], y: &mut [F]) {
    gated_forward(ActivationKind::Gelu, s.n, s.f, h, y);
}

/// dh = [dy·u·gelu'(g) | dy·gelu(g)].
pub fn geglu_backward<F: Real>(s: &GeGlu, h: &[F], dy: &[F], dh: &mut [F]) {
    gated_backward(ActivationKind::Gelu, s.n, s.f, h, dy, dh);
}

crate::operands! {
    /// g = gelu(gate)·up, both halves of h (n, 2F).
    pub struct GeGluIo for GeGlu as s {
        inputs { h }
        inplace {}
        outputs { g }
    }
}

crate::operands! {
    /// dh (n, 2F) from h and dg.
    pub struct GeGluBackwardIo for GeGlu as s {
        inputs { h, dg }
        inplace {}
        outputs { dh }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::activation::act_forward;

    #[test]
    fn geglu_gates_the_up_half_with_gelu_of_the_gate_half() {
        let s = GeGlu { n: 2, f: 3 };
        let h: Vec<f64> = (0..12).map(|i| (i as f64 - 5.0) * 0.4).collect();
        let mut y = vec![0.0; 6];
        geglu_forward(&s, &h, &mut y);
        for i in 0..2 {
            for j in 0..3 {
                let want = act_forward(ActivationKind::Gelu, h[i * 6 + j]) * h[i * 6 + 3 + j];
                assert_eq!(y[i * 3 + j], want);
            }
        }
    }
}
