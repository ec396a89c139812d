//! Options that change the schedule for every backend at once.

use crate::dtype::DType;
use crate::error::UnknownName;
use serde::Serialize;
use std::str::FromStr;

/// The static loss scale S = 2¹⁰ of the fp16 policy.
///
/// f16's smallest normal is 2⁻¹⁴ ≈ 6.1e-5 (below it subnormals lose precision bit by bit, and
/// below 6e-8 everything is zero). The loss gradient is (p − onehot)/n over n = B·T tokens, so a
/// batch of a few thousand tokens gives entries of (p − 1)/n ~ 1e-4 at the targets and far less
/// elsewhere, and the gradients deeper in the network are smaller still: unscaled, most of them
/// would be subnormal or zero in f16. Multiplying by 2¹⁰ lifts 1e-4 to ~0.1 and keeps gradients
/// a thousand times smaller than that normal. It stays far from f16's largest finite value,
/// 65504: every logit gradient is at most 1/n in magnitude, so at most S/n once scaled (0.25 at
/// n = 4096, 64 even at n = 16), and activation gradients would have to grow by a further factor
/// of a thousand or more through the network to overflow (when one does, the step is skipped).
/// A power of two scales without rounding, so scaling and unscaling change no significand bits.
pub const FP16_LOSS_SCALE: f64 = 1024.0;

/// How numbers are stored and computed.
///
/// Mixed policies keep fp32 master weights, fp32 weight gradients and fp32 AdamW state, plus a
/// low-precision copy of every weight that the forward and backward read (refreshed by the
/// optimizer step); activations and their gradients are stored in the low-precision dtype while
/// norms, softmax and the loss accumulate in fp32. Per parameter in training that is
/// 4 (master) + 2 (copy) + 4 (gradient) + 8 (moments) = 18 bytes, against 16 for fp32. For
/// inference the weights are held in the compute dtype alone.
///
/// fp16 additionally trains with static loss scaling: the loss gradient is multiplied by
/// [`FP16_LOSS_SCALE`] (S) in the cross-entropy backward, so every activation gradient and the
/// fp32 weight gradients carry the factor S; AdamW divides it out (using g/S, and ‖g‖/S for the
/// clip) and skips the step, leaving weights, moments and copies unchanged, when the gradient
/// norm is not finite because some f16 gradient overflowed. Both scalings fold into factors the
/// ops already apply, so they cost no FLOPs or memory traffic. bf16 has fp32's exponent range
/// and fp32 needs nothing, so S = 1 for them ([`Precision::loss_scale`]).
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

    /// The static loss scale S of this policy's training step: [`FP16_LOSS_SCALE`] for fp16,
    /// 1 (none) otherwise.
    pub fn loss_scale(self) -> f64 {
        match self {
            Precision::Fp16 => FP16_LOSS_SCALE,
            Precision::Fp32 | Precision::Bf16 => 1.0,
        }
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
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s.parse::<DType>() {
            Ok(DType::F32) => Ok(Precision::Fp32),
            Ok(DType::Bf16) => Ok(Precision::Bf16),
            Ok(DType::F16) => Ok(Precision::Fp16),
            _ => Err(UnknownName::new("dtype", s, "one of fp32, bf16, fp16")),
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
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s.to_ascii_lowercase().as_str() {
            "naive" => Ok(AttentionKernel::Naive),
            "flash" => Ok(AttentionKernel::Flash),
            other => Err(UnknownName::new(
                "attention kernel",
                other,
                "naive or flash",
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
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Recompute::None),
            "selective" => Ok(Recompute::Selective),
            "full" => Ok(Recompute::Full),
            other => Err(UnknownName::new(
                "recompute policy",
                other,
                "none, selective or full",
            )),
        }
    }
}

/// Data-parallel training over `world` devices, each holding a replica and a 1/W slice of the
/// batch (the step's batch is one device's micro-batch). The schedule itself issues the
/// collectives, on [`crate::backend::Stream::Comm`], so the Meta record models one rank:
///
/// - DDP (PyTorch `DistributedDataParallel`, llm.c): as the backward completes gradients they
///   fill buckets in that order (last layer first); a bucket closes once it holds
///   `bucket_bytes` (the first one `first_bucket_bytes`, small so communication starts early,
///   as DDP's 1 MiB first bucket) and its ring all-reduce is issued, waiting on the op that
///   completed its last gradient; the optimizer waits for every bucket.
/// - ZeRO-1 (`zero1`, Rajbhandari et al.): the same buckets are reduce-scattered instead; each
///   rank holds AdamW's moments for its 1/W shard of every parameter, measures the gradient
///   norm of its shard (an all-reduce of the scalar sums them) and updates its shard; an
///   all-gather per parameter group then brings every rank the updated weights (the
///   low-precision copies under a mixed policy, the fp32 weights otherwise). The fp32 master
///   weights of a mixed policy stay replicated in this model (ZeRO's stage 1 shards them too).
///
/// `world` = 1 issues nothing: the schedule is the single-device one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DataParallel {
    pub world: usize,
    pub bucket_bytes: u64,
    pub first_bucket_bytes: u64,
    pub zero1: bool,
}

impl DataParallel {
    /// PyTorch DDP's `bucket_cap_mb` default.
    pub const BUCKET_BYTES: u64 = 25 << 20;
    /// DDP's first bucket (`dist._DEFAULT_FIRST_BUCKET_BYTES`).
    pub const FIRST_BUCKET_BYTES: u64 = 1 << 20;

    /// DDP over `world` devices with the default buckets.
    pub const fn ddp(world: usize) -> Self {
        DataParallel {
            world,
            bucket_bytes: Self::BUCKET_BYTES,
            first_bucket_bytes: Self::FIRST_BUCKET_BYTES,
            zero1: false,
        }
    }

    /// ZeRO-1 over `world` devices with the default buckets.
    pub const fn zero1(world: usize) -> Self {
        DataParallel {
            zero1: true,
            ..Self::ddp(world)
        }
    }

    /// The elements of a tensor of `numel` that one rank's shard holds.
    pub fn shard(&self, numel: u64) -> u64 {
        numel.div_ceil(self.world.max(1) as u64)
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
    /// Data-parallel training: None (or a world of 1) is one device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_parallel: Option<DataParallel>,
    /// Gradient accumulation: K micro-steps per optimizer step (1 = none). Each micro-step's
    /// backward overwrites the gradients, as always; the first copies them into an f32
    /// accumulator per parameter (4 bytes per parameter more), the middle ones add into it, and
    /// the last adds the accumulator into the gradients as it completes each, so the buckets'
    /// collectives (issued on the last micro-step only) reduce the sum. AdamW divides the sum
    /// by K with the loss scale (`grad_scale` = S·K), which also makes a non-finite norm skip
    /// the step, as under loss scaling.
    #[serde(skip_serializing_if = "is_one")]
    pub grad_accum: usize,
}

fn is_one(k: &usize) -> bool {
    *k <= 1
}

impl Options {
    /// The data-parallel setting when it spans more than one device.
    pub fn dp(&self) -> Option<DataParallel> {
        self.data_parallel.filter(|d| d.world > 1)
    }

    /// Micro-steps per optimizer step (at least 1).
    pub fn micro_steps(&self) -> usize {
        self.grad_accum.max(1)
    }

    /// The ZeRO-1 setting when the optimizer state is sharded across more than one device.
    pub fn zero1(&self) -> Option<DataParallel> {
        self.dp().filter(|d| d.zero1)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            precision: Precision::Fp32,
            attention: AttentionKernel::Flash,
            kv_cache: true,
            recompute: Recompute::None,
            fused: true,
            data_parallel: None,
            grad_accum: 1,
        }
    }
}
