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

use super::activation::ActivationKind;
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
