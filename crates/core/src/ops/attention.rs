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
