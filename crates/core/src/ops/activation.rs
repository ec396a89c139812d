//! Elementwise activations: GELU (tanh approximation, as GPT-2 uses), ReLU, SiLU.
//!
//! FLOPs per element, counting a transcendental as one:
//!   GELU forward  y = ½x(1 + tanh(√(2/π)(x + 0.044715x³))): x³ 2, ·0.044715 1, +x 1, ·√(2/π) 1,
//!     tanh 1, +1 1, ·x 1, ·½ 1 = 9.
//!   GELU backward dy·(½(1+t) + ½x(1−t²)·√(2/π)(1 + 3·0.044715x²)): the tanh argument again 6,
//!     tanh 1, 1−t² 2, the polynomial 3, the two halves 4, the product with dy 1 = 17.
//!   ReLU forward max(x, 0) = 1; backward dy·[x > 0] = 1.
//!   SiLU forward x·σ(x): exp 1, +1 1, divide 1, ·x 1 = 4; backward dy·σ(1 + x(1−σ)): σ 3,
//!     1−σ 1, ·x 1, +1 1, ·σ 1, ·dy 1 = 8.
//! Bytes: the io rule (forward reads x, writes y; backward reads x and dy, writes dx).

use super::Real;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationKind {
    Gelu,
    Relu,
    Silu,
}

impl ActivationKind {
    pub const fn name(self) -> &'static str {
        match self {
            ActivationKind::Gelu => "gelu",
            ActivationKind::Relu => "relu",
            ActivationKind::Silu => "silu",
        }
    }

    pub const fn backward_name(self) -> &'static str {
        match self {
            ActivationKind::Gelu => "gelu_backward",
            ActivationKind::Relu => "relu_backward",
            ActivationKind::Silu => "silu_backward",
        }
    }

    pub const fn forward_flops_per_element(self) -> u64 {
        match self {
            ActivationKind::Gelu => 9,
            ActivationKind::Relu => 1,
            ActivationKind::Silu => 4,
        }
    }

    pub const fn backward_flops_per_element(self) -> u64 {
        match self {
            ActivationKind::Gelu => 17,
            ActivationKind::Relu => 1,
            ActivationKind::Silu => 8,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Activation {
    pub numel: usize,
    pub kind: ActivationKind,
}

impl Activation {
    pub fn forward_flops(&self) -> u64 {
        self.kind.forward_flops_per_element() * self.numel as u64
    }

    pub fn backward_flops(&self) -> u64 {
        self.kind.backward_flops_per_element() * self.numel as u64
    }
}

// Reference implementation

/// √(2/π), the GELU tanh approximation's constant.
const GELU_K: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

pub fn sigmoid<F: Real>(x: F) -> F {
    F::one() / (F::one() + (-x).exp())
}

/// act(x) for one element.
pub fn act_forward<F: Real>(kind: ActivationKind, x: F) -> F {
    match kind {
        ActivationKind::Gelu => {
            let inner = F::from_f64(GELU_K) * (x + F::from_f64(GELU_C) * x * x * x);
            F::from_f64(0.5) * x * (F::one() + inner.tanh())
        }
        ActivationKind::Relu => x.max(F::zero()),
        ActivationKind::Silu => x * sigmoid(x),
    }
}

/// act'(x) for one element.
pub fn act_derivative<F: Real>(kind: ActivationKind, x: F) -> F {
    match kind {
        ActivationKind::Gelu => {
            let half = F::from_f64(0.5);
            let inner = F::from_f64(GELU_K) * (x + F::from_f64(GELU_C) * x * x * x);
            let t = inner.tanh();
            let dinner = F::from_f64(GELU_K) * (F::one() + F::from_f64(3.0 * GELU_C) * x * x);
            half * (F::one() + t) + half * x * (F::one() - t * t) * dinner
        }
        // The derivative at 0 is taken as 0, as PyTorch does.
        ActivationKind::Relu => {
            if x > F::zero() {
                F::one()
            } else {
                F::zero()
            }
        }
        ActivationKind::Silu => {
            let s = sigmoid(x);
            s * (F::one() + x * (F::one() - s))
        }
    }
}

/// y = act(x), elementwise.
pub fn activation_forward<F: Real>(kind: ActivationKind, x: &[F], y: &mut [F]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = act_forward(kind, x);
    }
}

/// dx = dy·act'(x), elementwise.
pub fn activation_backward<F: Real>(kind: ActivationKind, x: &[F], dy: &[F], dx: &mut [F]) {
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        *dx = dy * act_derivative(kind, x);
    }
}

crate::operands! {
    /// y = act(x).
    pub struct ActivationIo for Activation as a {
        inputs { x }
        inplace {}
        outputs { y }
    }
}

crate::operands! {
    /// dx = act'(x)·dy.
    pub struct ActivationBackwardIo for Activation as a {
        inputs { x, dy }
        inplace {}
        outputs { dx }
    }
}
