//! Tensor handles. A backend owns the storage; the schedule holds handles that carry what the
//! cost model needs (shape, dtype, what the memory is for) so that every backend, the Meta one
//! included, sees the same description of every buffer.

use crate::dtype::DType;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a buffer is for: the categories of the memory breakdown and timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemCategory {
    /// Parameters: fp32 master weights and, under a mixed policy, their low-precision copy.
    Weights,
    Gradients,
    /// AdamW's first and second moments.
    OptimizerState,
    /// Everything the forward pass produces, kept for the backward pass or not.
    Activations,
    /// Gradients of activations during the backward pass.
    ActivationGradients,
    KvCache,
    /// Token ids, targets, losses: the step's inputs and small outputs.
    Io,
    Workspace,
}

impl MemCategory {
    pub const ALL: [MemCategory; 8] = [
        MemCategory::Weights,
        MemCategory::Gradients,
        MemCategory::OptimizerState,
        MemCategory::Activations,
        MemCategory::ActivationGradients,
        MemCategory::KvCache,
        MemCategory::Io,
        MemCategory::Workspace,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            MemCategory::Weights => "weights",
            MemCategory::Gradients => "gradients",
            MemCategory::OptimizerState => "optimizer_state",
            MemCategory::Activations => "activations",
            MemCategory::ActivationGradients => "activation_gradients",
            MemCategory::KvCache => "kv_cache",
            MemCategory::Io => "io",
            MemCategory::Workspace => "workspace",
        }
    }
}

impl fmt::Display for MemCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend-assigned identifier, unique for the life of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TensorId(pub u32);

/// A handle to a buffer a backend allocated. Cheap to clone; the storage stays in the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub id: TensorId,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub category: MemCategory,
}

impl Tensor {
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    pub fn size_bytes(&self) -> u64 {
        self.numel() * self.dtype.size_bytes()
    }

    /// The handle a backend returns for this spec once it has stored it under `id`.
    pub fn tensor(&self, id: TensorId) -> Tensor {
        Tensor {
            id,
            shape: self.shape.clone(),
            dtype: self.dtype,
            category: self.category,
        }
    }
}

/// What the schedule asks a backend to allocate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub category: MemCategory,
}

impl TensorSpec {
    pub fn new(
        name: impl Into<String>,
        shape: &[usize],
        dtype: DType,
        category: MemCategory,
    ) -> Self {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            category,
        }
    }

    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    pub fn size_bytes(&self) -> u64 {
        self.numel() * self.dtype.size_bytes()
    }

    /// The handle a backend returns for this spec once it has stored it under `id`.
    pub fn tensor(&self, id: TensorId) -> Tensor {
        Tensor {
            id,
            shape: self.shape.clone(),
            dtype: self.dtype,
            category: self.category,
        }
    }
}
