//! Take the last position of each sequence: (B·T × C) → (B × C), so that prefill computes
//! logits for the one position it samples from instead of all T. No arithmetic; bytes are the
//! B rows read and written.

use super::Real;
use crate::tensor::Tensor;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TakeLast {
    pub b: usize,
    pub t: usize,
    pub c: usize,
}

impl TakeLast {
    pub fn bytes(&self, inputs: &[Tensor]) -> u64 {
        let width = inputs.first().map_or(4, |t| t.dtype.size_bytes());
        2 * (self.b * self.c) as u64 * width
    }
}

// Reference implementation

/// out[b] = x[b·T + T − 1].
pub fn take_last<F: Real>(tl: &TakeLast, x: &[F], out: &mut [F]) {
    let c = tl.c;
    for b in 0..tl.b {
        let src = (b * tl.t + tl.t - 1) * c;
        out[b * c..(b + 1) * c].copy_from_slice(&x[src..src + c]);
    }
}

crate::operands! {
    /// The last position's row of each sequence.
    pub struct TakeLastIo for TakeLast as t {
        inputs { x }
        inplace {}
        outputs { last }
    }
}

/// Gather the given rows: (N × C) → (S × C), row s of the output being row `rows[s]` of the input
/// (in a ragged batch, the last token of each sequence). No arithmetic; bytes are the S row
/// indices, the S rows read and written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TakeRows {
    /// Rows gathered.
    pub s: usize,
    pub c: usize,
}

impl TakeRows {
    pub fn bytes(&self, inputs: &[Tensor]) -> u64 {
        let width = inputs.first().map_or(4, |t| t.dtype.size_bytes());
        2 * (self.s * self.c) as u64 * width + self.s as u64 * 4
    }
}

/// out[s] = x[rows[s]]; the rows are in range (the schedule builds them).
pub fn take_rows<F: Real>(tr: &TakeRows, x: &[F], rows: &[i32], out: &mut [F]) {
    let c = tr.c;
    for (s, &r) in rows.iter().enumerate().take(tr.s) {
        let src = r as usize * c;
        out[s * c..(s + 1) * c].copy_from_slice(&x[src..src + c]);
    }
}

crate::operands! {
    /// The rows `rows` of x.
    pub struct TakeRowsIo for TakeRows as t {
        inputs { x, rows }
        inplace {}
        outputs { out }
    }
}
