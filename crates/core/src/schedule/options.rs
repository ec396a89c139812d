//! Options that change the schedule for every backend at once.

use crate::dtype::DType;
use serde::Serialize;
use std::str::FromStr;

/// How numbers are stored and computed.
///
/// Mixed policies keep fp32 master weights, fp32 weight gradients and fp32 AdamW state, plus a
/// low-precision copy of every weight that the forward and backward read (refreshed by the
/// optimizer step); activations and their gradients are stored in the low-precision dtype while
/// norms, softmax and the loss accumulate in fp32. Per parameter in training that is
/// 4 (master) + 2 (copy) + 4 (gradient) + 8 (moments) = 18 bytes, against 16 for fp32. For
/// inference the weights are held in the compute dtype alone. fp16 additionally needs loss
/// scaling, which costs no memory traffic worth modelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
}

impl Precision {
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::Fp32 => DType::F32,
            Precision::Bf16 => DType::Bf16,
            Precision::Fp16 => DType::F16,
        }
    }

    pub fn is_mixed(self) -> bool {
        self != Precision::Fp32
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<DType>() {
            Ok(DType::F32) => Ok(Precision::Fp32),
            Ok(DType::Bf16) => Ok(Precision::Bf16),
            Ok(DType::F16) => Ok(Precision::Fp16),
            _ => Err(format!("unknown dtype '{s}': use one of fp32, bf16, fp16")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// Scores, softmax and PV as three ops; the B×H×T×T matrices live in memory.
    Naive,
    /// One tiled online-softmax op; nothing of size T×T is stored.
    Flash,
}

impl AttentionKernel {
    pub fn name(self) -> &'static str {
        match self {
            AttentionKernel::Naive => "naive",
            AttentionKernel::Flash => "flash",
        }
    }
}

impl FromStr for AttentionKernel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "naive" => Ok(AttentionKernel::Naive),
            "flash" => Ok(AttentionKernel::Flash),
            other => Err(format!(
                "unknown attention kernel '{other}': use naive or flash"
            )),
        }
    }
}

/// Activation recomputation: trade FLOPs in the backward for memory between the passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Keep every activation the backward needs.
    None,
    /// Keep the matmul inputs, recompute the cheap and large ones: the attention probabilities
    /// (naive) and the MLP activation output (Korthikanti et al.'s "selective" idea).
    Selective,
    /// Keep only each block's input; re-run the block's forward during the backward.
    Full,
}

impl Recompute {
    pub fn name(self) -> &'static str {
        match self {
            Recompute::None => "none",
            Recompute::Selective => "selective",
            Recompute::Full => "full",
        }
    }
}

impl FromStr for Recompute {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Recompute::None),
            "selective" => Ok(Recompute::Selective),
            "full" => Ok(Recompute::Full),
            other => Err(format!(
                "unknown recompute policy '{other}': use none, selective or full"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Options {
    pub precision: Precision,
    pub attention: AttentionKernel,
    pub kv_cache: bool,
    pub recompute: Recompute,
    /// Fused kernels: residual add + norm, activation in the matmul epilogue, cross-entropy
    /// gradient written over the logits, AdamW writing the low-precision weight copy.
    pub fused: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            precision: Precision::Fp32,
            attention: AttentionKernel::Flash,
            kv_cache: true,
            recompute: Recompute::None,
            fused: true,
        }
    }
}
