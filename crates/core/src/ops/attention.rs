//! Attention shapes, the count of attended (query, key) pairs, and the three ops of naive
//! attention, which materialises the B×H×Tq×Tk score matrix:
//!   scores  S = Q·Kᵀ·(1/√D)
//!   softmax P = softmax(mask(S)) row by row (the mask: causal and/or sliding window)
//!   value   O = P·V
//! Queries are the last Tq of the Tk positions (Tq = Tk in training and prefill, Tq = 1 when
//! decoding with a KV cache). Grouped-query attention: query head h reads key/value head
//! h / (H / H_kv).
//!
//! FLOPs count the attended pairs P only (DESIGN.md's convention: causal attention counts the
//! unmasked half, diagonal included); a dense kernel that computes the full square and masks
//! afterwards executes more than this, which the roofline time of naive attention does not show.
//!   scores  2DP + P (the scale)        backward dQ = dS·K, dK = dSᵀ·Q, scaled: 4DP + 2P
//!   softmax 5P (max, subtract, exp, sum, divide)
//!                                      backward dS = P ⊙ (dP − rowsum(dP ⊙ P)): 4P
//!   value   2DP                        backward dP = dO·Vᵀ, dV = Pᵀ·dO: 4DP
//! Bytes: each op reads its operands and writes its result once; the score-sized tensors are
//! full Tq×Tk buffers, so their bytes do not shrink with the mask.

use super::Real;
use crate::tensor::Tensor;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Attention {
    pub b: usize,
    pub h: usize,
    pub h_kv: usize,
    /// Query positions.
    pub tq: usize,
    /// Key positions (the cached prefix plus the new tokens).
    pub tk: usize,
    pub d: usize,
    pub causal: bool,
    pub window: Option<usize>,
    /// Keys and values are read from a KV cache (B, H_kv, T_cap, D) passed beside qkv, rather
    /// than from qkv itself (prefill and decode with a cache; Tq = Tk at a prefill from 0).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kv_cache: bool,
}

/// Σ_{x=lo}^{hi} min(x, w), in closed form.
fn sum_min(lo: u64, hi: u64, w: u64) -> u64 {
    if lo > hi {
        return 0;
    }
    let below_hi = hi.min(w.saturating_sub(1)); // the x < w part sums x itself
    let below = if lo <= below_hi {
        (lo + below_hi) * (below_hi - lo + 1) / 2
    } else {
        0
    };
    let capped_from = lo.max(w);
    let capped = if capped_from <= hi {
        (hi - capped_from + 1) * w
    } else {
        0
    };
    below + capped
}

impl Attention {
    /// Attended (query, key) pairs for one batch element and one head. A causal query at
    /// absolute position p sees keys 0..=p, at most `window` of them.
    pub fn pairs_per_head(&self) -> u64 {
        let (tq, tk) = (self.tq as u64, self.tk as u64);
        if !self.causal {
            return tq * tk;
        }
        let w = self.window.map_or(u64::MAX, |w| w as u64);
        // Query i (0-based among the last tq) is at position p = tk − tq + i and sees
        // min(p + 1, w) keys, so x = p + 1 runs from tk − tq + 1 to tk.
        sum_min(tk - tq + 1, tk, w)
    }

    /// P: attended pairs over all batch elements and query heads.
    pub fn pairs(&self) -> u64 {
        self.b as u64 * self.h as u64 * self.pairs_per_head()
    }

    fn dp(&self) -> u64 {
        self.d as u64 * self.pairs()
    }

    pub fn q_numel(&self) -> u64 {
        (self.b * self.tq) as u64 * (self.h * self.d) as u64
    }

    pub fn kv_numel(&self) -> u64 {
        (self.b * self.tk) as u64 * (self.h_kv * self.d) as u64
    }

    pub fn score_numel(&self) -> u64 {
        (self.b * self.h) as u64 * self.tq as u64 * self.tk as u64
    }

    pub fn scores_flops(&self) -> u64 {
        2 * self.dp() + self.pairs()
    }

    pub fn scores_backward_flops(&self) -> u64 {
        4 * self.dp() + 2 * self.pairs()
    }

    pub fn softmax_flops(&self) -> u64 {
        5 * self.pairs()
    }

    pub fn softmax_backward_flops(&self) -> u64 {
        4 * self.pairs()
    }

    pub fn value_flops(&self) -> u64 {
        2 * self.dp()
    }

    pub fn value_backward_flops(&self) -> u64 {
        4 * self.dp()
    }

    /// Width of the Q/K/V elements, taken from the first input; of score elements, from `s`.
    fn widths(inputs: &[Tensor], s: Option<&Tensor>) -> (u64, u64) {
        let w = inputs.first().map_or(4, |t| t.dtype.size_bytes());
        (w, s.map_or(w, |t| t.dtype.size_bytes()))
    }

    /// inputs: [q (and k) source, …]; outputs: [scores]. Reads Q and K, writes S.
    pub fn scores_bytes(&self, inputs: &[Tensor], outputs: &[Tensor]) -> u64 {
        let (w, ws) = Self::widths(inputs, outputs.first());
        (self.q_numel() + self.kv_numel()) * w + self.score_numel() * ws
    }

    /// Reads dS, Q, K; writes dQ, dK.
    pub fn scores_backward_bytes(&self, inputs: &[Tensor], outputs: &[Tensor]) -> u64 {
        let (w, ws) = Self::widths(outputs, inputs.first());
        2 * (self.q_numel() + self.kv_numel()) * w + self.score_numel() * ws
    }

    /// inputs: [probs, v source]; reads P and V, writes O.
    pub fn value_bytes(&self, inputs: &[Tensor], outputs: &[Tensor]) -> u64 {
        let (w, ws) = Self::widths(outputs, inputs.first());
        self.score_numel() * ws + (self.kv_numel() + self.q_numel()) * w
    }

    /// Reads dO, V, P; writes dP and dV.
    pub fn value_backward_bytes(&self, inputs: &[Tensor], outputs: &[Tensor]) -> u64 {
        let (w, ws) = Self::widths(inputs, outputs.first());
        2 * self.score_numel() * ws + (self.q_numel() + 2 * self.kv_numel()) * w
    }
}

// Reference implementation

/// Where keys and values are read: the fused qkv buffer of the same tokens (training, prefill
/// without a cache; then Tq = Tk), or the caches (B, H_kv, T_cap, D) after the new tokens were
/// appended.
#[derive(Clone, Copy, Debug)]
pub enum KvSource<'a, F> {
    Qkv,
    Cache {
        k: &'a [F],
        v: &'a [F],
        capacity: usize,
    },
}

impl Attention {
    /// Width of one qkv row: (H + 2H_kv)·D.
    pub fn qkv_width(&self) -> usize {
        (self.h + 2 * self.h_kv) * self.d
    }

    /// The key/value head query head `h` reads.
    pub fn kv_head(&self, h: usize) -> usize {
        h / (self.h / self.h_kv)
    }

    /// Whether query `i` (0-based among the last Tq) sees key `j`.
    pub fn visible(&self, i: usize, j: usize) -> bool {
        let p = self.tk - self.tq + i;
        !self.causal || (j <= p && self.window.is_none_or(|w| p - j < w))
    }

    pub fn scale(&self) -> f64 {
        1.0 / (self.d as f64).sqrt()
    }

    /// Index of q[b, h, i, 0] in the qkv buffer.
    pub fn q_index(&self, b: usize, h: usize, i: usize) -> usize {
        (b * self.tq + i) * self.qkv_width() + h * self.d
    }

    /// Index of element 0 of key (`value` false) or value (`value` true) head `g` at position `j`,
    /// in the qkv buffer or the cache.
    pub fn kv_index<F>(
        &self,
        src: &KvSource<'_, F>,
        value: bool,
        b: usize,
        g: usize,
        j: usize,
    ) -> usize {
        match src {
            KvSource::Qkv => {
                let head = self.h + usize::from(value) * self.h_kv + g;
                (b * self.tk + j) * self.qkv_width() + head * self.d
            }
            KvSource::Cache { capacity, .. } => ((b * self.h_kv + g) * capacity + j) * self.d,
        }
    }

    /// Index of o[b, i, h, 0] in the attention output (B·Tq, H·D).
    pub fn o_index(&self, b: usize, h: usize, i: usize) -> usize {
        (b * self.tq + i) * self.h * self.d + h * self.d
    }

    /// Index of row (b, h, i) of a (B, H, Tq, ·) buffer.
    pub fn row(&self, b: usize, h: usize, i: usize) -> usize {
        (b * self.h + h) * self.tq + i
    }
}

fn kv_slices<'a, F>(src: &KvSource<'a, F>, qkv: &'a [F]) -> (&'a [F], &'a [F]) {
    match src {
        KvSource::Qkv => (qkv, qkv),
        KvSource::Cache { k, v, .. } => (k, v),
    }
}

fn dot<F: Real>(a: &[F], b: &[F]) -> F {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

/// S[b, h, i, j] = q·k/√D for every (i, j); the mask is applied by the softmax.
pub fn attn_scores_forward<F: Real>(a: &Attention, qkv: &[F], src: KvSource<'_, F>, s: &mut [F]) {
    let (ks, _) = kv_slices(&src, qkv);
    let (d, scale) = (a.d, F::from_f64(a.scale()));
    for b in 0..a.b {
        for h in 0..a.h {
            for i in 0..a.tq {
                let q = &qkv[a.q_index(b, h, i)..][..d];
                for j in 0..a.tk {
                    let k = &ks[a.kv_index(&src, false, b, a.kv_head(h), j)..][..d];
                    s[a.row(b, h, i) * a.tk + j] = dot(q, k) * scale;
                }
            }
        }
    }
}

/// P = softmax over the visible keys of each row; masked entries are 0.
pub fn attn_softmax_forward<F: Real>(a: &Attention, s: &[F], p: &mut [F]) {
    for r in 0..a.b * a.h * a.tq {
        let i = r % a.tq;
        let row = &s[r * a.tk..][..a.tk];
        let max = (0..a.tk)
            .filter(|&j| a.visible(i, j))
            .fold(F::neg_infinity(), |m, j| m.max(row[j]));
        let sum: F = (0..a.tk)
            .filter(|&j| a.visible(i, j))
            .map(|j| (row[j] - max).exp())
            .sum();
        for j in 0..a.tk {
            p[r * a.tk + j] = if a.visible(i, j) {
                (row[j] - max).exp() / sum
            } else {
                F::zero()
            };
        }
    }
}

/// O[b, i, h] = Σ_j P[b, h, i, j]·v_j.
pub fn attn_value_forward<F: Real>(
    a: &Attention,
    p: &[F],
    qkv: &[F],
    src: KvSource<'_, F>,
    o: &mut [F],
) {
    let (_, vs) = kv_slices(&src, qkv);
    let d = a.d;
    for b in 0..a.b {
        for h in 0..a.h {
            for i in 0..a.tq {
                let oi = a.o_index(b, h, i);
                o[oi..oi + d].iter_mut().for_each(|x| *x = F::zero());
                for j in 0..a.tk {
                    let pij = p[a.row(b, h, i) * a.tk + j];
                    let v = a.kv_index(&src, true, b, a.kv_head(h), j);
                    for e in 0..d {
                        o[oi + e] += pij * vs[v + e];
                    }
                }
            }
        }
    }
}

/// dP = dO·Vᵀ; dV = Σ over the query heads of a group of Pᵀ·dO, written over the V part of
/// dqkv. Keys and values come from qkv (the backward runs in training only).
pub fn attn_value_backward<F: Real>(
    a: &Attention,
    dout: &[F],
    qkv: &[F],
    p: &[F],
    dp: &mut [F],
    dqkv: &mut [F],
) {
    let (d, src) = (a.d, KvSource::<F>::Qkv);
    for b in 0..a.b {
        for g in 0..a.h_kv {
            for j in 0..a.tk {
                let v = a.kv_index(&src, true, b, g, j);
                dqkv[v..v + d].iter_mut().for_each(|x| *x = F::zero());
            }
        }
        for h in 0..a.h {
            let g = a.kv_head(h);
            for i in 0..a.tq {
                let od = &dout[a.o_index(b, h, i)..][..d];
                for j in 0..a.tk {
                    let v = a.kv_index(&src, true, b, g, j);
                    let r = a.row(b, h, i) * a.tk + j;
                    dp[r] = dot(od, &qkv[v..v + d]);
                    for e in 0..d {
                        dqkv[v + e] += p[r] * od[e];
                    }
                }
            }
        }
    }
}

/// dS = P ⊙ (dP − Σ_j dP·P) row by row.
pub fn attn_softmax_backward<F: Real>(a: &Attention, p: &[F], dp: &[F], ds: &mut [F]) {
    let tk = a.tk;
    for r in 0..a.b * a.h * a.tq {
        let (pr, dpr) = (&p[r * tk..][..tk], &dp[r * tk..][..tk]);
        let inner = dot(pr, dpr);
        for j in 0..tk {
            ds[r * tk + j] = pr[j] * (dpr[j] - inner);
        }
    }
}

/// dQ = dS·K/√D and dK = Σ over the group's query heads of dSᵀ·Q/√D, written over the Q and K
/// parts of dqkv.
pub fn attn_scores_backward<F: Real>(a: &Attention, ds: &[F], qkv: &[F], dqkv: &mut [F]) {
    let (d, scale, src) = (a.d, F::from_f64(a.scale()), KvSource::<F>::Qkv);
    for b in 0..a.b {
        for g in 0..a.h_kv {
            for j in 0..a.tk {
                let k = a.kv_index(&src, false, b, g, j);
                dqkv[k..k + d].iter_mut().for_each(|x| *x = F::zero());
            }
        }
        for h in 0..a.h {
            let g = a.kv_head(h);
            for i in 0..a.tq {
                let q = a.q_index(b, h, i);
                dqkv[q..q + d].iter_mut().for_each(|x| *x = F::zero());
                for j in 0..a.tk {
                    let k = a.kv_index(&src, false, b, g, j);
                    let dsij = ds[a.row(b, h, i) * a.tk + j] * scale;
                    for e in 0..d {
                        dqkv[q + e] += dsij * qkv[k + e];
                        dqkv[k + e] += dsij * qkv[q + e];
                    }
                }
            }
        }
    }
}

crate::operands! {
    /// S = Q·Kᵀ/√D, keys from qkv or the key cache.
    pub struct AttnScoresIo for Attention as a {
        inputs { qkv, k_cache if a.kv_cache }
        inplace {}
        outputs { scores }
    }
}

crate::operands! {
    /// P = softmax(mask(S)).
    pub struct AttnSoftmaxIo for Attention as a {
        inputs { scores }
        inplace {}
        outputs { probs }
    }
}

crate::operands! {
    /// O = P·V, values from qkv or the value cache.
    pub struct AttnValueIo for Attention as a {
        inputs { probs, qkv, v_cache if a.kv_cache }
        inplace {}
        outputs { out }
    }
}

crate::operands! {
    /// dP = dO·Vᵀ and the V part of dqkv (dV = Pᵀ·dO).
    pub struct AttnValueBackwardIo for Attention as a {
        inputs { dout, qkv, probs }
        inplace {}
        outputs { dprobs, dqkv }
    }
}

crate::operands! {
    /// dS = P ⊙ (dP − rowsum(dP ⊙ P)).
    pub struct AttnSoftmaxBackwardIo for Attention as a {
        inputs { probs, dprobs }
        inplace {}
        outputs { dscores }
    }
}

crate::operands! {
    /// The Q and K parts of dqkv from dS.
    pub struct AttnScoresBackwardIo for Attention as a {
        inputs { dscores, qkv }
        inplace {}
        outputs { dqkv }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(tq: usize, tk: usize, causal: bool, window: Option<usize>) -> Attention {
        Attention {
            b: 1,
            h: 1,
            h_kv: 1,
            tq,
            tk,
            d: 8,
            causal,
            window,
            kv_cache: false,
        }
    }

    /// Brute-force count of the mask, the specification of `pairs_per_head`.
    fn brute(a: &Attention) -> u64 {
        let mut n = 0;
        for i in 0..a.tq {
            let p = a.tk - a.tq + i;
            for k in 0..a.tk {
                let visible = !a.causal || (k <= p && a.window.is_none_or(|w| p - k < w));
                n += u64::from(visible);
            }
        }
        n
    }

    #[test]
    fn pair_counts_match_the_mask() {
        for tk in [1, 2, 3, 7, 16, 33] {
            for tq in [1, tk / 2, tk].into_iter().filter(|&q| q >= 1) {
                for causal in [false, true] {
                    for window in [None, Some(1), Some(3), Some(8), Some(100)] {
                        let a = att(tq, tk, causal, window);
                        assert_eq!(a.pairs_per_head(), brute(&a), "{a:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn causal_counts_half_the_square_plus_the_diagonal() {
        assert_eq!(
            att(1024, 1024, true, None).pairs_per_head(),
            1024 * 1025 / 2
        );
        // Decoding one token after 99 cached ones sees all 100.
        assert_eq!(att(1, 100, true, None).pairs_per_head(), 100);
        assert_eq!(att(1, 100, true, Some(10)).pairs_per_head(), 10);
    }
}
