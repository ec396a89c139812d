//! Cast between dtypes (the fp32 master weights to their bf16/fp16 compute copy): no
//! arithmetic; bytes by the io rule (4 read + 2 written per element for fp32 → bf16), over the
//! `numel` elements cast: all of them, or a ZeRO-1 rank's shard of the listed tensors.

use super::operands::{OperandError, Operands};
use crate::dtype::DType;
use crate::tensor::Tensor;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cast {
    pub numel: u64,
}

impl Cast {
    /// The io rule over the `numel` of the listed elements cast.
    pub fn bytes(&self, inputs: &[Tensor], outputs: &[Tensor]) -> u64 {
        let io = super::io_bytes(inputs, outputs);
        let listed: u64 = inputs.iter().map(Tensor::numel).sum();
        if listed == 0 || self.numel >= listed {
            return io;
        }
        (io as u128 * self.numel as u128 / listed as u128) as u64
    }
}

// Reference implementation

/// The f32 nearest to `x` that `dtype` can hold (round to nearest even, as the hardware
/// conversions do); f32 and i32 values pass through.
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::Bf16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        DType::F32 | DType::I32 => x,
    }
}

/// dst = src rounded to `dtype`.
pub fn cast_forward(dtype: DType, src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = round_to(dtype, s);
    }
}

/// dst[i] = src[i] rounded to dst[i]'s dtype, pairwise.
#[derive(Clone, Debug)]
pub struct CastIo {
    pub src: Vec<Tensor>,
    pub dst: Vec<Tensor>,
}

impl Operands<Cast> for CastIo {
    fn into_lists(self, _: &Cast) -> (Vec<Tensor>, Vec<Tensor>) {
        debug_assert_eq!(self.src.len(), self.dst.len());
        (self.src, self.dst)
    }

    fn from_lists(_: &Cast, inputs: &[Tensor], outputs: &[Tensor]) -> Result<Self, OperandError> {
        if inputs.len() != outputs.len() {
            return Err(OperandError::Shape(format!(
                "a cast pairs each source with a destination: {} sources, {} destinations",
                inputs.len(),
                outputs.len()
            )));
        }
        Ok(CastIo {
            src: inputs.to_vec(),
            dst: outputs.to_vec(),
        })
    }
}
