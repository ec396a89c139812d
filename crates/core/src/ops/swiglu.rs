//! SwiGLU: y (n×F) = silu(g) ⊙ u where [g | u] = h (n×2F), the output of the fused gate-and-up
//! projection.
//!
//! FLOPs per output element: forward silu 4 + product 1 = 5. Backward: du = dy·silu(g) is
//! silu 4 + 1 = 5; dg = dy·u·silu'(g) is silu' 7 (σ 3, 1−σ 1, ·g 1, +1 1, ·σ 1) + 2 = 9; 14 in all.
//! Bytes: the io rule (h read, y written; backward reads h and dy, writes dh).

use super::activation::{act_derivative, act_forward, ActivationKind};
use super::Real;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SwiGlu {
    /// Rows (tokens).
    pub n: usize,
    /// F, the width of the output.
    pub f: usize,
}

impl SwiGlu {
    fn numel(&self) -> u64 {
        self.n as u64 * self.f as u64
    }

    pub fn forward_flops(&self) -> u64 {
        5 * self.numel()
    }

    pub fn backward_flops(&self) -> u64 {
        14 * self.numel()
    }
}

// Reference implementation

/// y[i][j] = silu(h[i][j])·h[i][F + j]: the gate is the first F columns of h, the up projection
/// the second F.
pub fn swiglu_forward<F: Real>(s: &SwiGlu, h: &[F], y: &mut [F]) {
    gated_forward(ActivationKind::Silu, s.n, s.f, h, y);
}

/// dh = [dy·u·silu'(g) | dy·silu(g)].
pub fn swiglu_backward<F: Real>(s: &SwiGlu, h: &[F], dy: &[F], dh: &mut [F]) {
    gated_backward(ActivationKind::Silu, s.n, s.f, h, dy, dh);
}

/// A gated linear unit over n rows: y[i][j] = act(g)·u with [g | u] = h[i] (2F wide). SwiGLU
/// and GeGLU (ops/geglu.rs) are this with SiLU and GELU.
pub fn gated_forward<F: Real>(kind: ActivationKind, n: usize, f: usize, h: &[F], y: &mut [F]) {
    for i in 0..n {
        for j in 0..f {
            let (g, u) = (h[i * 2 * f + j], h[i * 2 * f + f + j]);
            y[i * f + j] = act_forward(kind, g) * u;
        }
    }
}

/// The gated unit's backward: dh = [dy·u·act'(g) | dy·act(g)].
pub fn gated_backward<F: Real>(
    kind: ActivationKind,
    n: usize,
    f: usize,
    h: &[F],
    dy: &[F],
    dh: &mut [F],
) {
    for i in 0..n {
        for j in 0..f {
            let (g, u) = (h[i * 2 * f + j], h[i * 2 * f + f + j]);
            let d = dy[i * f + j];
            dh[i * 2 * f + j] = d * u * act_derivative(kind, g);
            dh[i * 2 * f + f + j] = d * act_forward(kind, g);
        }
    }
}

crate::operands! {
    /// g = silu(gate)·up, both halves of h (n, 2F).
    pub struct SwiGluIo for SwiGlu as s {
        inputs { h }
        inplace {}
        outputs { g }
    }
}

crate::operands! {
    /// dh (n, 2F) from h and dg.
    pub struct SwiGluBackwardIo for SwiGlu as s {
        inputs { h, dg }
        inplace {}
        outputs { dh }
    }
}
