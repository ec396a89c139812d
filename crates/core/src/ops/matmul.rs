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
