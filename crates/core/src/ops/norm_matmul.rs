//! A pre-norm and the product that reads it, as one op of an inference step:
//! y = norm(x [+ add])·Wᵀ (+ b), and act(y) when an activation is fused, with the norm's
//! residual sum written out as the LayerNorm or RMSNorm op writes it. The normalised rows never
//! leave the kernel: in a decode step a product is one pass over W shared by a few rows, the
//! norm in front of it is a kernel of its own that reads and writes a few KB, and at one row
//! that launch costs about as much as the product (gpt2-124m B1 on the H200: 25 norm launches of
//! ~3 µs against 49 products of ~4 µs; bench-results/2026-12-03-h200-session12/final).
//!
//! Forward only: a step that trains keeps the norm's output and statistics for the backward and
//! runs the two ops. The schedule issues this op where nothing else reads the normalised rows.
//!
//! FLOPs: the norm's (layernorm.rs, rmsnorm.rs) plus the product's (matmul.rs).
//! Bytes: the io rule — x (and add), γ (and β), W (and b) read once; sum, y (and act) written
//! once; the normalised rows are not traffic. A kernel that recomputes the norm in every block
//! rereads x from L2, not from memory.

use super::layernorm::{layernorm_forward, LayerNorm};
use super::matmul::{matmul_forward, Matmul};
use super::residual::residual_forward;
use super::rmsnorm::{rmsnorm_forward, RmsNorm};
use super::Real;
use serde::Serialize;

/// The norm in front of the product.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreNorm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct NormMatmul {
    pub norm: PreNorm,
    /// The product: its m is the norm's rows and its k the norm's width.
    pub mm: Matmul,
}

impl NormMatmul {
    /// Panics when the norm's rows and width are not the product's m and k (a schedule bug).
    pub fn new(norm: PreNorm, mm: Matmul) -> Self {
        let op = NormMatmul { norm, mm };
        assert_eq!(
            (op.rows(), op.width()),
            (mm.m, mm.k),
            "the norm's rows and width must be the product's m and k"
        );
        assert!(!mm.accumulate_dx, "the fused op has no backward");
        op
    }

    pub fn rows(&self) -> usize {
        match self.norm {
            PreNorm::Layer(ln) => ln.n,
            PreNorm::Rms(rn) => rn.n,
        }
    }

    /// C, the norm's width.
    pub fn width(&self) -> usize {
        match self.norm {
            PreNorm::Layer(ln) => ln.c,
            PreNorm::Rms(rn) => rn.c,
        }
    }

    /// Whether the residual add is fused in front of the norm (then `add` and `sum` are
    /// operands).
    pub fn residual(&self) -> bool {
        match self.norm {
            PreNorm::Layer(ln) => ln.residual,
            PreNorm::Rms(rn) => rn.residual,
        }
    }

    /// Whether the norm has a β (LayerNorm with a bias).
    pub fn has_beta(&self) -> bool {
        matches!(self.norm, PreNorm::Layer(ln) if ln.bias)
    }

    pub fn eps(&self) -> f64 {
        match self.norm {
            PreNorm::Layer(ln) => ln.eps,
            PreNorm::Rms(rn) => rn.eps,
        }
    }

    pub fn name(&self) -> &'static str {
        match (self.norm, self.residual()) {
            (PreNorm::Layer(_), false) => "layernorm_matmul",
            (PreNorm::Layer(_), true) => "residual_layernorm_matmul",
            (PreNorm::Rms(_), false) => "rmsnorm_matmul",
            (PreNorm::Rms(_), true) => "residual_rmsnorm_matmul",
        }
    }

    pub fn forward_flops(&self) -> u64 {
        let norm = match self.norm {
            PreNorm::Layer(ln) => ln.forward_flops(),
            PreNorm::Rms(rn) => rn.forward_flops(),
        };
        norm + self.mm.forward_flops()
    }
}

// Reference implementation

/// The norm's output rows as the unfused LayerNorm or RMSNorm op computes them: of x, or of
/// sum = x + add (written out) when the residual add is fused. Statistics are computed and
/// dropped.
pub fn norm_rows<F: Real>(
    op: &NormMatmul,
    x: &[F],
    add: Option<&[F]>,
    gamma: &[F],
    beta: Option<&[F]>,
    sum: Option<&mut [F]>,
) -> Vec<F> {
    let normalised_input = match (add, sum) {
        (Some(add), Some(sum)) => {
            residual_forward(x, add, sum);
            sum.to_vec()
        }
        _ => x.to_vec(),
    };
    let mut y = vec![F::zero(); normalised_input.len()];
    match op.norm {
        PreNorm::Layer(ln) => {
            let mut stats = vec![F::zero(); 2 * ln.n];
            layernorm_forward(&ln, &normalised_input, gamma, beta, &mut y, &mut stats);
        }
        PreNorm::Rms(rn) => {
            let mut stats = vec![F::zero(); rn.n];
            rmsnorm_forward(&rn, &normalised_input, gamma, &mut y, &mut stats);
        }
    }
    y
}

/// y = norm(x [+ add])·Wᵀ (+ b) (and act = act(y) with a fused activation); sum = x + add
/// when the residual add is fused.
#[allow(clippy::too_many_arguments)]
pub fn norm_matmul_forward<F: Real>(
    op: &NormMatmul,
    x: &[F],
    add: Option<&[F]>,
    gamma: &[F],
    beta: Option<&[F]>,
    w: &[F],
    bias: Option<&[F]>,
    sum: Option<&mut [F]>,
    y: &mut [F],
    act: Option<&mut [F]>,
) {
    let normed = norm_rows(op, x, add, gamma, beta, sum);
    matmul_forward(&op.mm, &normed, w, bias, y, act);
}

crate::operands! {
    /// y = norm(x [+ add])·Wᵀ (+ b), act = act(y) with a fused activation; sum = x + add with
    /// the fused residual add.
    pub struct NormMatmulIo for NormMatmul as op {
        inputs { x, add if op.residual(), gamma, beta if op.has_beta(), w, bias if op.mm.bias }
        inplace {}
        outputs { sum if op.residual(), y, act if op.mm.activation.is_some() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::activation::ActivationKind;

    fn layer(n: usize, c: usize, residual: bool) -> PreNorm {
        PreNorm::Layer(LayerNorm {
            n,
            c,
            bias: true,
            eps: 1e-5,
            residual,
            accumulate: false,
        })
    }

    #[test]
    fn the_cost_is_the_two_ops_cost() {
        let mut mm = Matmul::new(2, 768, 2304, true);
        mm.activation = Some(ActivationKind::Gelu);
        let op = NormMatmul::new(layer(2, 768, true), mm);
        let PreNorm::Layer(ln) = op.norm else {
            unreachable!()
        };
        assert_eq!(op.forward_flops(), ln.forward_flops() + mm.forward_flops());
        assert_eq!(op.name(), "residual_layernorm_matmul");
    }

    #[test]
    #[should_panic(expected = "the product's m and k")]
    fn a_norm_of_another_width_is_refused() {
        NormMatmul::new(layer(2, 64, false), Matmul::new(2, 768, 16, false));
    }

    /// A hand-sized case: one row [1, 3] (mean 2, variance 1), γ = [1, 2], β = [0, 1], so
    /// the normalised row is [−1·rstd, 2·rstd + 1] with rstd = 1/√(1 + ε); W = [[1, 1]], b = 0.5.
    #[test]
    fn the_reference_normalises_then_multiplies() {
        let op = NormMatmul::new(layer(1, 2, true), Matmul::new(1, 2, 1, true));
        let (x, add) = ([0.5f64, 1.0], [0.5f64, 2.0]);
        let (mut sum, mut y) = ([0.0f64; 2], [0.0f64; 1]);
        norm_matmul_forward(
            &op,
            &x,
            Some(&add),
            &[1.0, 2.0],
            Some(&[0.0, 1.0]),
            &[1.0, 1.0],
            Some(&[0.5]),
            Some(&mut sum),
            &mut y,
            None,
        );
        let rstd = 1.0 / (1.0f64 + 1e-5).sqrt();
        assert_eq!(sum, [1.0, 3.0]);
        assert!(
            (y[0] - (-rstd + 2.0 * rstd + 1.0 + 0.5)).abs() < 1e-12,
            "{y:?}"
        );
    }
}
