//! Embedding: out[i] = wte[token[i]]·s + pos[i], s = √C when the model scales its embedding
//! (else 1), pos from the learned table wpe, the sinusoidal formula, or nothing (RoPE models).
//!
//! FLOPs: C per token for the position add, C more for the scale: a gather is not arithmetic.
//! Bytes: the token ids, the n gathered rows of wte (not the whole table), the n rows of wpe
//! when learned, and the output; the io rule would count all of wte, which a gather never reads.
//! Backward: dwte[token[i]] += dout[i]·s (and dwpe[pos] += dout) — C adds per token (C more for
//! the scale); bytes are dout, the ids, a read-modify-write of n rows per table, plus zeroing
//! the whole gradient table first unless the gradient already holds another contribution
//! (tied embeddings: the output layer's backward wrote it).

use super::Real;
use crate::tensor::Tensor;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionTable {
    None,
    Learned,
    Sinusoidal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Embedding {
    /// Tokens (B·T).
    pub n: usize,
    pub c: usize,
    pub vocab: usize,
    /// Sequence length, for the position of token i: i mod t (+ pos_offset).
    pub t: usize,
    pub pos_offset: usize,
    /// Each row's position is read from a `positions` tensor (a ragged batch) rather than
    /// derived as row mod t + pos_offset.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub per_row: bool,
    pub positions: PositionTable,
    pub scale: bool,
    /// Backward adds into a token-table gradient that already holds a contribution.
    pub accumulate: bool,
}

impl Embedding {
    fn nc(&self) -> u64 {
        self.n as u64 * self.c as u64
    }

    pub fn forward_flops(&self) -> u64 {
        let pos = u64::from(self.positions != PositionTable::None);
        self.nc() * (pos + u64::from(self.scale))
    }

    /// The ids (and per-row positions), the n gathered rows of each table, the output.
    pub fn forward_bytes(&self, inputs: &[Tensor], outputs: &[Tensor]) -> u64 {
        let ids = inputs.first().map_or(0, Tensor::size_bytes);
        let tables = 1 + usize::from(self.positions == PositionTable::Learned);
        let rows: u64 = inputs
            .iter()
            .skip(1)
            .take(tables)
            .map(|table| self.nc() * table.dtype.size_bytes())
            .sum();
        let positions = if self.per_row { self.n as u64 * 4 } else { 0 };
        ids + positions + rows + outputs.iter().map(Tensor::size_bytes).sum::<u64>()
    }

    pub fn backward_flops(&self) -> u64 {
        let tables = 1 + u64::from(self.positions == PositionTable::Learned);
        self.nc() * (tables + u64::from(self.scale))
    }

    /// inputs: [tokens, dout]; outputs: [dwte, dwpe?].
    pub fn backward_bytes(&self, inputs: &[Tensor], outputs: &[Tensor]) -> u64 {
        let read: u64 = inputs.iter().map(Tensor::size_bytes).sum();
        let rmw: u64 = outputs
            .iter()
            .map(|g| 2 * self.nc() * g.dtype.size_bytes())
            .sum();
        let zero: u64 = if self.accumulate {
            outputs.iter().skip(1).map(Tensor::size_bytes).sum()
        } else {
            outputs.iter().map(Tensor::size_bytes).sum()
        };
        read + rmw + zero
    }
}

// Reference implementation

/// The sinusoidal table of "Attention is all you need" at position `pos`, column `j`:
/// sin(pos·10000^(−2i/C)) for j = 2i, cos of the same angle for j = 2i + 1.
pub fn sinusoid<F: Real>(pos: usize, j: usize, c: usize) -> F {
    let i = (j / 2) as f64;
    let angle = pos as f64 * (-(2.0 * i / c as f64) * 10_000f64.ln()).exp();
    F::from_f64(if j.is_multiple_of(2) {
        angle.sin()
    } else {
        angle.cos()
    })
}

impl Embedding {
    /// Absolute position of token row `i`.
    pub fn position(&self, i: usize) -> usize {
        i % self.t + self.pos_offset
    }

    /// The position of row `i`: from `positions` when the op reads them per row.
    pub fn row_position(&self, i: usize, positions: Option<&[i32]>) -> usize {
        positions.map_or_else(|| self.position(i), |p| p[i] as usize)
    }

    fn scale_factor<F: Real>(&self) -> F {
        if self.scale {
            F::from_f64((self.c as f64).sqrt())
        } else {
            F::one()
        }
    }
}

/// out[i] = wte[tokens[i]]·s + pos[i]. Token ids must be in 0..V and positions below the learned
/// table's length: the backend checks both where the ids enter.
pub fn embedding_forward<F: Real>(
    e: &Embedding,
    tokens: &[i32],
    wte: &[F],
    wpe: Option<&[F]>,
    out: &mut [F],
) {
    embedding_forward_rows(e, tokens, wte, wpe, None, out);
}

/// The same, row i at `positions[i]` when given (a ragged batch).
pub fn embedding_forward_rows<F: Real>(
    e: &Embedding,
    tokens: &[i32],
    wte: &[F],
    wpe: Option<&[F]>,
    positions: Option<&[i32]>,
    out: &mut [F],
) {
    let (c, s) = (e.c, e.scale_factor::<F>());
    for i in 0..e.n {
        let tok = tokens[i] as usize;
        let p = e.row_position(i, positions);
        for j in 0..c {
            let pos = match (e.positions, wpe) {
                (PositionTable::Learned, Some(wpe)) => wpe[p * c + j],
                (PositionTable::Sinusoidal, _) => sinusoid(p, j, c),
                _ => F::zero(),
            };
            out[i * c + j] = wte[tok * c + j] * s + pos;
        }
    }
}

/// dwte[tokens[i]] += dout[i]·s, dwpe[pos(i)] += dout[i]. dwte is zeroed first unless
/// `accumulate` (a tied output layer already wrote its part); dwpe is always zeroed first.
pub fn embedding_backward<F: Real>(
    e: &Embedding,
    tokens: &[i32],
    dout: &[F],
    dwte: &mut [F],
    mut dwpe: Option<&mut [F]>,
) {
    let (c, s) = (e.c, e.scale_factor::<F>());
    if !e.accumulate {
        dwte.iter_mut().for_each(|x| *x = F::zero());
    }
    if let Some(d) = dwpe.as_deref_mut() {
        d.iter_mut().for_each(|x| *x = F::zero());
    }
    for i in 0..e.n {
        let tok = tokens[i] as usize;
        let p = e.position(i);
        for j in 0..c {
            dwte[tok * c + j] += dout[i * c + j] * s;
            if let Some(d) = dwpe.as_deref_mut() {
                d[p * c + j] += dout[i * c + j];
            }
        }
    }
}

crate::operands! {
    /// x = wte[tokens] (+ wpe[positions] with a learned table; sinusoidal positions are computed).
    pub struct EmbeddingIo for Embedding as e {
        inputs { tokens, wte, wpe if e.positions == PositionTable::Learned, positions if e.per_row }
        inplace {}
        outputs { x }
    }
}

crate::operands! {
    /// dwte (added into when the head is tied) and dwpe from the stream's gradient dx.
    pub struct EmbeddingBackwardIo for Embedding as e {
        inputs { tokens, dx }
        inplace {}
        outputs { dwte, dwpe if e.positions == PositionTable::Learned }
    }
}
