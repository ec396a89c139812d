//! Matmul: Y (m×n) = X (m×k) · Wᵀ + b, W stored as (n×k) — (out_features, in_features), the
//! layout of PyTorch's nn.Linear and of Hugging Face checkpoints — with an optional activation
//! fused into the epilogue.
//!
//! Forward FLOPs: 2mkn for the product, mn for the bias, and the activation's per-element count
//! when fused.
//! Backward FLOPs: dX = dY·W is 2mkn and dW = dYᵀ·X is 2mkn, so the product's backward is exactly
//! twice its forward; db = Σ_rows dY adds mn; a fused activation's backward runs first on dY.
//! Bytes: the io rule (X, W, b read; Y written; a fused activation also writes its
//! pre-activation input, which the backward needs).

use super::activation::{act_derivative, activation_forward, ActivationKind};
use super::Real;
use crate::dtype::DType;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Matmul {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub bias: bool,
    /// Activation applied in the epilogue (a fusion); its pre-activation is kept for backward.
    pub activation: Option<ActivationKind>,
    /// Backward adds dX into an existing gradient instead of overwriting it.
    pub accumulate_dx: bool,
}

impl Matmul {
    pub fn new(m: usize, k: usize, n: usize, bias: bool) -> Self {
        Matmul {
            m,
            k,
            n,
            bias,
            activation: None,
            accumulate_dx: false,
        }
    }

    pub fn name(&self) -> &'static str {
        match self.activation {
            None => "matmul",
            Some(ActivationKind::Gelu) => "matmul_gelu",
            Some(ActivationKind::Relu) => "matmul_relu",
            Some(ActivationKind::Silu) => "matmul_silu",
        }
    }

    pub fn backward_name(&self) -> &'static str {
        match self.activation {
            None => "matmul_backward",
            Some(ActivationKind::Gelu) => "matmul_gelu_backward",
            Some(ActivationKind::Relu) => "matmul_relu_backward",
            Some(ActivationKind::Silu) => "matmul_silu_backward",
        }
    }

    /// What sets this product's kernels apart from others of its name and roofline time, as a
    /// calibration keys them ("" for nothing; `backward` for the backward op):
    ///
    /// - "bias": a backward that also sums its bias gradient, db = Σ_rows dpre, a reduction over
    ///   the m rows run beside the two GEMMs (the CUDA backend's `column_sum`). On the H200
    ///   gpt2-124m's m = 1024 backward products took 77–89 µs (layer medians) where the seed
    ///   small's of the same k and n, without a bias, took 15–36 µs
    ///   (bench-results/2026-12-04-h200-session14/calibration), when `column_sum` ran a thread a
    ///   column looping over the rows; its rewrite (a block of 32 warps a 32 columns) should
    ///   shrink the variant's curve at the next calibration.
    /// - "unaligned": rows of k or n elements of `dtype` that are not 16-byte multiples. Vector
    ///   loads and the GEMM libraries' fast kernels need them (cuBLASLt falls back to
    ///   alignment-1 kernels): gpt2's lm_head, n = 50,257, ran its backward at 7.5× its
    ///   roofline where the seed's n = 10,000 lm_head ran at 2×.
    ///
    /// Both are facts of the op's shape that the roofline time cannot tell apart.
    pub fn calibration_variant(&self, backward: bool, dtype: DType) -> &'static str {
        let per_16_bytes = (16 / dtype.size_bytes().max(1)) as usize;
        let unaligned =
            !(self.k.is_multiple_of(per_16_bytes) && self.n.is_multiple_of(per_16_bytes));
        match (backward && self.bias, unaligned) {
            (true, true) => "bias+unaligned",
            (true, false) => "bias",
            (false, true) => "unaligned",
            (false, false) => "",
        }
    }

    fn mn(&self) -> u64 {
        self.m as u64 * self.n as u64
    }

    /// 2mkn: one multiply and one add per (row, column, inner index).
    pub fn product_flops(&self) -> u64 {
        2 * self.m as u64 * self.k as u64 * self.n as u64
    }

    pub fn forward_flops(&self) -> u64 {
        let bias = if self.bias { self.mn() } else { 0 };
        let act = self
            .activation
            .map_or(0, |a| a.forward_flops_per_element() * self.mn());
        self.product_flops() + bias + act
    }

    pub fn backward_flops(&self) -> u64 {
        let bias = if self.bias { self.mn() } else { 0 };
        let act = self
            .activation
            .map_or(0, |a| a.backward_flops_per_element() * self.mn());
        let accumulate = if self.accumulate_dx {
            self.m as u64 * self.k as u64
        } else {
            0
        };
        2 * self.product_flops() + bias + act + accumulate
    }
}

// Reference implementation

/// pre = x·Wᵀ + b (x: m×k, W: n×k, pre: m×n); with a fused activation, also act = act(pre).
pub fn matmul_forward<F: Real>(
    mm: &Matmul,
    x: &[F],
    w: &[F],
    bias: Option<&[F]>,
    pre: &mut [F],
    act: Option<&mut [F]>,
) {
    let (m, k, n) = (mm.m, mm.k, mm.n);
    for i in 0..m {
        for j in 0..n {
            let mut acc = bias.map_or(F::zero(), |b| b[j]);
            for p in 0..k {
                acc += x[i * k + p] * w[j * k + p];
            }
            pre[i * n + j] = acc;
        }
    }
    if let (Some(kind), Some(act)) = (mm.activation, act) {
        activation_forward(kind, pre, act);
    }
}

/// With a fused activation, `dy` is the gradient of act(pre) and `pre` is read to form
/// dpre = dy·act'(pre); otherwise dpre = dy. Then dx = dpre·W (added into dx when
/// `accumulate_dx`), dW = dpreᵀ·x and db = Σ_rows dpre, both overwritten.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<F: Real>(
    mm: &Matmul,
    x: &[F],
    w: &[F],
    dy: &[F],
    pre: Option<&[F]>,
    dx: &mut [F],
    dw: &mut [F],
    db: Option<&mut [F]>,
) {
    let (m, k, n) = (mm.m, mm.k, mm.n);
    let mut dpre = dy.to_vec();
    if let (Some(kind), Some(pre)) = (mm.activation, pre) {
        for (d, &h) in dpre.iter_mut().zip(pre) {
            *d *= act_derivative(kind, h);
        }
    }
    for i in 0..m {
        for p in 0..k {
            let mut acc = F::zero();
            for j in 0..n {
                acc += dpre[i * n + j] * w[j * k + p];
            }
            if mm.accumulate_dx {
                dx[i * k + p] += acc;
            } else {
                dx[i * k + p] = acc;
            }
        }
    }
    for j in 0..n {
        for p in 0..k {
            let mut acc = F::zero();
            for i in 0..m {
                acc += dpre[i * n + j] * x[i * k + p];
            }
            dw[j * k + p] = acc;
        }
    }
    if let Some(db) = db {
        for j in 0..n {
            db[j] = (0..m).map(|i| dpre[i * n + j]).sum();
        }
    }
}

crate::operands! {
    /// y = x·Wᵀ (+ b); with a fused activation, y is the pre-activation and act = act(y).
    pub struct MatmulIo for Matmul as mm {
        inputs { x, w, bias if mm.bias }
        inplace {}
        outputs { y, act if mm.activation.is_some() }
    }
}

crate::operands! {
    /// dx = dpre·W (added into dx_in's buffer when `accumulate_dx`), dW = dpreᵀ·x, db = Σ dpre,
    /// where dpre = dy, or act'(pre)·dy with a fused activation (pre is its saved input).
    pub struct MatmulBackwardIo for Matmul as mm {
        inputs { x, w, dy, pre if mm.activation.is_some(), dx_in if mm.accumulate_dx }
        inplace {}
        outputs { dx, dw, db if mm.bias }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibration_variant_names_a_bias_gradient_and_rows_off_16_bytes() {
        let plain = Matmul::new(1024, 768, 2304, false);
        assert_eq!(plain.calibration_variant(false, DType::Bf16), "");
        assert_eq!(plain.calibration_variant(true, DType::Bf16), "");
        // A bias is an epilogue of the forward product, a reduction of its own in the backward.
        let biased = Matmul::new(1024, 768, 768, true);
        assert_eq!(biased.calibration_variant(false, DType::Bf16), "");
        assert_eq!(biased.calibration_variant(true, DType::Bf16), "bias");
        // gpt2's lm_head: 50,257 bf16 logits a row are not a whole number of 16-byte words, and
        // neither is a K of 50,257 f32; 50,256 f32 (4 a word) are.
        let head = Matmul::new(1024, 768, 50257, false);
        assert_eq!(head.calibration_variant(false, DType::Bf16), "unaligned");
        assert_eq!(head.calibration_variant(true, DType::F32), "unaligned");
        assert_eq!(
            Matmul::new(8, 50257, 64, true).calibration_variant(true, DType::Bf16),
            "bias+unaligned"
        );
        assert_eq!(
            Matmul::new(8, 768, 50256, false).calibration_variant(false, DType::F32),
            ""
        );
    }
}
