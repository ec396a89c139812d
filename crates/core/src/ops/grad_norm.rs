//! Global gradient norm, ‖g‖₂ over all parameters, for clipping: a square and an add per
//! element (2 FLOPs); bytes by the io rule (every gradient read once, one scalar written). Under
//! ZeRO-1 (`shards` = W > 1) a rank measures its 1/W shard of every gradient
//! ([`crate::comm::shard_range`], its rank known to the backend) and writes the shard's Σg², not
//! its root: norms do not add, squares do, so the all-reduce that follows sums the ranks'
//! squares and AdamW (told the same `shards`) takes the root. The call still lists the whole
//! gradients, and reads only the shard's share of them (`numel` counts the shard).

use super::operands::{OperandError, Operands};
use super::Real;
use crate::tensor::Tensor;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GradNorm {
    pub numel: u64,
    /// 1: ‖g‖ over the whole gradients; W > 1: Σg² over this rank's ZeRO-1 shard of each.
    pub shards: usize,
}

impl GradNorm {
    pub fn flops(&self) -> u64 {
        2 * self.numel
    }

    /// The io rule over the `numel` gradient elements read (all of them, or a ZeRO-1 shard).
    pub fn bytes(&self, inputs: &[Tensor], outputs: &[Tensor]) -> u64 {
        let listed: u64 = inputs.iter().map(Tensor::numel).sum();
        if listed == 0 || self.numel >= listed {
            return super::io_bytes(inputs, outputs);
        }
        let read: u64 = inputs.iter().map(Tensor::size_bytes).sum();
        let read = (read as u128 * self.numel as u128 / listed as u128) as u64;
        read + outputs.iter().map(Tensor::size_bytes).sum::<u64>()
    }
}

// Reference implementation

/// ‖g‖₂ over all the tensors, accumulated in f64 so that the sum of millions of squares keeps
/// its precision.
pub fn grad_norm<F: Real>(grads: &[&[F]]) -> f64 {
    grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&x| x.to_f64() * x.to_f64())
        .sum::<f64>()
        .sqrt()
}

impl GradNorm {
    /// What the op writes given Σg² over the elements it reads: the root on one device, the
    /// sum itself for a ZeRO-1 shard (the all-reduce adds the ranks' sums).
    pub fn finish(&self, sum_of_squares: f64) -> f64 {
        if self.shards > 1 {
            sum_of_squares
        } else {
            sum_of_squares.sqrt()
        }
    }
}

/// ‖g‖ over every gradient, into a one-element f32 tensor.
#[derive(Clone, Debug)]
pub struct GradNormIo {
    pub grads: Vec<Tensor>,
    pub norm: Tensor,
}

impl Operands<GradNorm> for GradNormIo {
    fn into_lists(self, _: &GradNorm) -> (Vec<Tensor>, Vec<Tensor>) {
        (self.grads, vec![self.norm])
    }

    fn from_lists(
        _: &GradNorm,
        inputs: &[Tensor],
        outputs: &[Tensor],
    ) -> Result<Self, OperandError> {
        match outputs {
            [norm] => Ok(GradNormIo {
                grads: inputs.to_vec(),
                norm: norm.clone(),
            }),
            _ => Err(OperandError::Extra {
                side: "output",
                got: outputs.len(),
                expected: 1,
            }),
        }
    }
}
