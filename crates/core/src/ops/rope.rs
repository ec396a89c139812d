//! Rotary position embedding, applied in place to the query and key parts of the fused QKV
//! buffer (n × (H + 2H_kv)·D): each pair (x₂ᵢ, x₂ᵢ₊₁) of a head at position p is rotated by
//! p·θ^(−2i/D) (that frequency rescaled where the model asks, `RopeScaling`). The backward is the rotation by the opposite angle, applied to the gradient.
//!
//! FLOPs: per pair 4 multiplies and 2 adds = 3 per element, over n(H + H_kv)D elements, the same
//! forward and backward (the sin/cos table is precomputed per position and counted as bytes).
//! Bytes: the rotated elements read and written once, plus the table of T × D/2 (sin, cos) f32;
//! the V part of the buffer is not touched, so the io rule would overcount.

use super::Real;
use crate::config::RopeScaling;
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
    /// Each row's position is read from a `positions` tensor (a ragged batch, whose sequences
    /// start at different positions) rather than derived as row mod t + pos_offset.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub per_row: bool,
    pub theta: f64,
    #[serde(skip_serializing_if = "RopeScaling::is_none")]
    pub scaling: RopeScaling,
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
        // Per-row positions: one i32 per row instead of a shared table per position.
        let table = if self.per_row {
            (self.b * self.t) as u64 * 4
        } else {
            table
        };
        2 * self.rotated() * width + table
    }
}

// Reference implementation

impl Rope {
    /// Width of one qkv row: (H + 2H_kv)·D.
    pub fn row_width(&self) -> usize {
        (self.h_q + 2 * self.h_kv) * self.d
    }

    /// The frequency of pair `i` (elements 2i, 2i + 1 of a head): radians per position.
    pub fn inv_freq(&self, i: usize) -> f64 {
        let f = self.theta.powf(-2.0 * i as f64 / self.d as f64);
        match self.scaling {
            RopeScaling::None => f,
            s => s.bands().apply(f),
        }
    }

    /// The rotation angle of pair `i` at position `pos`.
    pub fn angle(&self, pos: usize, i: usize) -> f64 {
        pos as f64 * self.inv_freq(i)
    }
}

impl Rope {
    /// The position of `row`: from `positions` when the op reads them per row.
    pub fn row_position(&self, row: usize, positions: Option<&[i32]>) -> usize {
        match positions {
            Some(p) => p[row] as usize,
            None => row % self.t + self.pos_offset,
        }
    }
}

/// Rotates the query and key heads of every row of `qkv` by +angle (`sign` = 1) or −angle
/// (`sign` = −1, the backward: a rotation's transpose is its inverse).
fn rope_rotate<F: Real>(r: &Rope, qkv: &mut [F], positions: Option<&[i32]>, sign: f64) {
    let w = r.row_width();
    for row in 0..r.b * r.t {
        let pos = r.row_position(row, positions);
        for head in 0..r.h_q + r.h_kv {
            let base = row * w + head * r.d;
            for i in 0..r.d / 2 {
                let a = sign * r.angle(pos, i);
                let (cos, sin) = (F::from_f64(a.cos()), F::from_f64(a.sin()));
                let (x0, x1) = (qkv[base + 2 * i], qkv[base + 2 * i + 1]);
                qkv[base + 2 * i] = x0 * cos - x1 * sin;
                qkv[base + 2 * i + 1] = x0 * sin + x1 * cos;
            }
        }
    }
}

/// In place on the query and key parts of qkv (n, (H + 2H_kv)·D); V is untouched.
pub fn rope_forward<F: Real>(r: &Rope, qkv: &mut [F]) {
    rope_rotate(r, qkv, None, 1.0);
}

/// In place, each row at its own position (a ragged batch).
pub fn rope_forward_rows<F: Real>(r: &Rope, qkv: &mut [F], positions: &[i32]) {
    rope_rotate(r, qkv, Some(positions), 1.0);
}

/// In place on the gradient of qkv: the inverse rotation.
pub fn rope_backward<F: Real>(r: &Rope, dqkv: &mut [F]) {
    rope_rotate(r, dqkv, None, -1.0);
}

crate::operands! {
    /// Rotates the q and k columns of qkv in place (the backward rotates their gradients back).
    pub struct RopeIo for Rope as r {
        inputs { positions if r.per_row }
        inplace { qkv }
        outputs {}
    }
}
