//! Rotary position embedding, applied in place to the query and key parts of the fused QKV
//! buffer (n × (H + 2H_kv)·D): each pair (x₂ᵢ, x₂ᵢ₊₁) of a head at position p is rotated by
//! p·θ^(−2i/D). The backward is the rotation by the opposite angle, applied to the gradient.
//!
//! FLOPs: per pair 4 multiplies and 2 adds = 3 per element, over n(H + H_kv)D elements, the same
//! forward and backward (the sin/cos table is precomputed per position and counted as bytes).
//! Bytes: the rotated elements read and written once, plus the table of T × D/2 (sin, cos) f32;
//! the V part of the buffer is not touched, so the io rule would overcount.

use crate::tensor::Tensor;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Rope {
    pub b: usize,
    pub t: usize,
    pub h_q: usize,
    pub h_kv: usize,
    pub d: usize,
    /// Position of the first token (non-zero when decoding after a prefix).
    pub pos_offset: usize,
    pub theta: f64,
}

impl Rope {
    fn rotated(&self) -> u64 {
        (self.b * self.t) as u64 * ((self.h_q + self.h_kv) * self.d) as u64
    }

    pub fn flops(&self) -> u64 {
        3 * self.rotated()
    }

    pub fn bytes(&self, inputs: &[Tensor]) -> u64 {
        let width = inputs.first().map_or(4, |t| t.dtype.size_bytes());
        let table = self.t as u64 * self.d as u64 * 4;
        2 * self.rotated() * width + table
    }
}
