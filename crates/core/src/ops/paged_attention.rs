//! Attention over a ragged batch and a paged KV cache (vLLM's PagedAttention): S sequences,
//! sequence s bringing q_len new query rows (packed, n = Σ q_len) whose keys and values have
//! just been appended, and attending to its ctx_len keys read from fixed-size blocks of the
//! pools (num_blocks, H_kv, block_size, D) through its row of the block table. Row r's position
//! and sequence come from device tensors (`positions`, `row_seq`), as do the context lengths, so
//! one launch serves any mix of prefill chunks and decode rows.
//!
//! The mask: a causal query at position p sees keys 0..=p (the last `window` of them with a
//! sliding window); a non-causal one sees all ctx_len keys. FLOPs count the attended pairs as
//! flash attention does (scores 2D + 1, softmax 5, value 2D per pair: 4DP + 6P). Bytes: the
//! queries and the output once, each sequence's ctx_len keys and values once, the block table
//! and the per-row metadata.

use super::attention::Attention;
use super::kv_cache::pool_offset;
use super::Real;
use crate::tensor::Tensor;
use serde::Serialize;

/// One sequence of a ragged batch: its new query rows, and its keys once they are appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SeqLens {
    pub q_len: usize,
    pub ctx_len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PagedAttention {
    pub h: usize,
    pub h_kv: usize,
    pub d: usize,
    pub causal: bool,
    pub window: Option<usize>,
    pub block_size: usize,
    /// Width of the block table: blocks per sequence at most.
    pub max_blocks: usize,
    /// The batch's sequences, in the order their rows are packed. The kernels read lengths and
    /// positions from the device tensors; these give the cost.
    pub seqs: Vec<SeqLens>,
}

impl PagedAttention {
    /// Query rows: Σ q_len.
    pub fn rows(&self) -> usize {
        self.seqs.iter().map(|s| s.q_len).sum()
    }

    /// Sequence s as the dense attention shape of its own rows (the cost of each sequence alone).
    pub fn dense(&self, s: &SeqLens) -> Attention {
        Attention {
            b: 1,
            h: self.h,
            h_kv: self.h_kv,
            tq: s.q_len,
            tk: s.ctx_len,
            d: self.d,
            causal: self.causal,
            window: self.window,
            kv_cache: true,
        }
    }

    /// Attended (query, key) pairs over all sequences and query heads.
    pub fn pairs(&self) -> u64 {
        self.seqs.iter().map(|s| self.dense(s).pairs()).sum()
    }

    pub fn flops(&self) -> u64 {
        let p = self.pairs();
        4 * self.d as u64 * p + 6 * p
    }

    pub fn bytes(&self, inputs: &[Tensor]) -> u64 {
        let w = inputs.first().map_or(4, |t| t.dtype.size_bytes());
        let q_and_out = 2 * (self.rows() * self.h * self.d) as u64;
        let keys: u64 = self.seqs.iter().map(|s| s.ctx_len as u64).sum();
        let kv = 2 * keys * (self.h_kv * self.d) as u64;
        let meta = 4 * (2 * self.rows() + self.seqs.len() * (1 + self.max_blocks)) as u64;
        (q_and_out + kv) * w + meta
    }

    /// The keys query row at position `pos` of a sequence with `ctx_len` keys sees: lo..hi.
    pub fn visible(&self, pos: usize, ctx_len: usize) -> (usize, usize) {
        if !self.causal {
            return (0, ctx_len);
        }
        let hi = (pos + 1).min(ctx_len);
        let lo = self.window.map_or(0, |w| hi.saturating_sub(w));
        (lo, hi)
    }
}

// Reference implementation

/// The device tensors a paged attention reads besides qkv and the pools.
pub struct PagedLayout<'a> {
    /// Per row: its absolute position and its sequence.
    pub positions: &'a [i32],
    pub row_seq: &'a [i32],
    /// Per sequence: keys after the append, and its block table row (max_blocks entries).
    pub ctx_lens: &'a [i32],
    pub block_table: &'a [i32],
}

/// out (n, H·D) from the queries in qkv (n, (H + 2H_kv)·D) and the pools. Exact softmax per row
/// (max-subtracted), in the precision of F.
pub fn paged_attention_forward<F: Real>(
    a: &PagedAttention,
    qkv: &[F],
    k_pool: &[F],
    v_pool: &[F],
    layout: &PagedLayout<'_>,
    out: &mut [F],
) {
    let width = (a.h + 2 * a.h_kv) * a.d;
    let row_out = a.h * a.d;
    for r in 0..a.rows() {
        let q = &qkv[r * width..(r + 1) * width];
        let o = &mut out[r * row_out..(r + 1) * row_out];
        paged_attention_row(a, r, q, k_pool, v_pool, layout, o);
    }
}

/// Row r alone: `qkv_row` is its (H + 2H_kv)·D values, `out_row` its H·D outputs. Rows are
/// independent, so a backend may run them in parallel.
pub fn paged_attention_row<F: Real>(
    a: &PagedAttention,
    r: usize,
    qkv_row: &[F],
    k_pool: &[F],
    v_pool: &[F],
    layout: &PagedLayout<'_>,
    out_row: &mut [F],
) {
    let (h, h_kv, d, bs) = (a.h, a.h_kv, a.d, a.block_size);
    let group = h / h_kv.max(1);
    let scale = F::from_f64(1.0 / (d as f64).sqrt());
    let s = layout.row_seq[r] as usize;
    let pos = layout.positions[r] as usize;
    let (lo, hi) = a.visible(pos, layout.ctx_lens[s] as usize);
    let table = &layout.block_table[s * a.max_blocks..(s + 1) * a.max_blocks];
    let slot = |j: usize| table[j / bs] as usize * bs + j % bs;
    let mut scores = Vec::with_capacity(hi - lo);
    for head in 0..h {
        let g = head / group;
        let q = &qkv_row[head * d..(head + 1) * d];
        scores.clear();
        for j in lo..hi {
            let k = &k_pool[pool_offset(slot(j), g, h_kv, bs, d)..][..d];
            let dot = q.iter().zip(k).fold(F::zero(), |acc, (&x, &y)| acc + x * y);
            scores.push(dot * scale);
        }
        let o = &mut out_row[head * d..(head + 1) * d];
        o.iter_mut().for_each(|x| *x = F::zero());
        if scores.is_empty() {
            continue;
        }
        let max = scores.iter().copied().fold(scores[0], F::max);
        let mut total = F::zero();
        for sc in scores.iter_mut() {
            *sc = (*sc - max).exp();
            total += *sc;
        }
        for (i, j) in (lo..hi).enumerate() {
            let v = &v_pool[pool_offset(slot(j), g, h_kv, bs, d)..][..d];
            let p = scores[i] / total;
            for (x, &y) in o.iter_mut().zip(v) {
                *x += p * y;
            }
        }
    }
}

crate::operands! {
    /// out from qkv's queries and the paged pools, row by row.
    pub struct PagedAttentionIo for PagedAttention as a {
        inputs { qkv, k_pool, v_pool, positions, row_seq, ctx_lens, block_table }
        inplace {}
        outputs { out }
    }
}
