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

/// A buffer's name, as the memory timeline, `tperf precision` and error messages show it
/// ("h3.ln_1.sum"). The schedule names every buffer it allocates, a decode step's included,
/// while most backends never read a name (only the Meta backend's event log and errors do),
/// so the schedule's names are kept as their parts and formatted when read: formatting them
/// at every allocation was a quarter of a decode step's host time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TensorName {
    /// `h{layer}.{what}{suffix}` for a block's buffer, `{what}{suffix}` outside the blocks.
    Parts {
        layer: Option<u32>,
        what: &'static str,
        suffix: &'static str,
    },
    /// A name made at run time (parameters, tests).
    Owned(String),
}

impl TensorName {
    /// A name outside the blocks: "logits".
    pub const fn fixed(what: &'static str) -> Self {
        TensorName::Parts {
            layer: None,
            what,
            suffix: "",
        }
    }

    /// Block `layer`'s buffer `what`: "h3.qkv".
    pub const fn layer(layer: usize, what: &'static str) -> Self {
        TensorName::Parts {
            layer: Some(layer as u32),
            what,
            suffix: "",
        }
    }

    /// This name followed by `suffix`: "h3.ln_1" then ".sum".
    pub fn with_suffix(&self, suffix: &'static str) -> Self {
        match *self {
            TensorName::Parts {
                layer,
                what,
                suffix: "",
            } => TensorName::Parts {
                layer,
                what,
                suffix,
            },
            _ => TensorName::Owned(format!("{self}{suffix}")),
        }
    }
}

impl fmt::Display for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorName::Parts {
                layer,
                what,
                suffix,
            } => {
                if let Some(l) = layer {
                    write!(f, "h{l}.")?;
                }
                write!(f, "{what}{suffix}")
            }
            TensorName::Owned(s) => f.write_str(s),
        }
    }
}

/// Any string, copied: for callers off the hot path (a `&'static str` does not copy through
/// [`TensorName::fixed`]).
impl From<&str> for TensorName {
    fn from(name: &str) -> Self {
        TensorName::Owned(name.to_string())
    }
}

impl From<String> for TensorName {
    fn from(name: String) -> Self {
        TensorName::Owned(name)
    }
}

/// What the schedule asks a backend to allocate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: TensorName,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub category: MemCategory,
}

impl TensorSpec {
    pub fn new(
        name: impl Into<TensorName>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_the_strings_they_stand_for() {
        assert_eq!(TensorName::fixed("logits").to_string(), "logits");
        assert_eq!(TensorName::layer(3, "qkv").to_string(), "h3.qkv");
        let norm = TensorName::layer(11, "ln_1");
        assert_eq!(norm.with_suffix(".sum").to_string(), "h11.ln_1.sum");
        assert_eq!(
            TensorName::fixed("ln_f").with_suffix(".out").to_string(),
            "ln_f.out"
        );
        // A suffix on a suffixed or run-time name appends to its text.
        let twice = norm.with_suffix(".sum").with_suffix(".x");
        assert_eq!(twice.to_string(), "h11.ln_1.sum.x");
        let owned = TensorName::from(String::from("wte.weight"));
        assert_eq!(owned.with_suffix(".bf16").to_string(), "wte.weight.bf16");
    }
}
