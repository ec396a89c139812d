//! Flash attention: one tiled op computing O = softmax(mask(Q·Kᵀ/√D))·V with an online softmax,
//! never materialising the score matrix. It keeps O and the per-row log-sum-exp L (B×H×Tq f32)
//! for the backward, which recomputes the scores tile by tile.
//!
//! FLOPs over the P attended pairs (see attention.rs): forward Q·Kᵀ 2DP, scale P, online
//! softmax 5P, P·V 2DP → 4DP + 6P, the same as the three naive ops.
//! Backward: Dᵢ = rowsum(dO ⊙ O) 2·B·H·Tq·D; recompute S 2DP + P; P = exp(S − L) 2P;
//! dV += Pᵀ·dO 2DP; dP = dO·Vᵀ 2DP; dS = P ⊙ (dP − Dᵢ) 2P; dQ += dS·K 2DP + P;
//! dK += dSᵀ·Q 2DP + P → 10DP + 7P + 2BHTqD: the recomputation costs 2DP more than naive.
//! Bytes: the minimum — Q, K, V read once and O, L written once; backward reads Q, K, V, O, dO,
//! L and writes dQ, dK, dV. No term grows with Tq×Tk.

use super::attention::{Attention, KvSource};
use super::Real;
use crate::tensor::Tensor;

fn width(tensors: &[Tensor]) -> u64 {
    tensors.first().map_or(4, |t| t.dtype.size_bytes())
}

fn lse_bytes(a: &Attention) -> u64 {
    (a.b * a.h * a.tq) as u64 * 4
}

pub fn forward_flops(a: &Attention) -> u64 {
    let p = a.pairs();
    4 * a.d as u64 * p + 6 * p
}

pub fn backward_flops(a: &Attention) -> u64 {
    let p = a.pairs();
    10 * a.d as u64 * p + 7 * p + 2 * a.q_numel()
}

/// inputs: [q/k/v source(s)]; outputs: [o, lse].
pub fn forward_bytes(a: &Attention, inputs: &[Tensor]) -> u64 {
    let w = width(inputs);
    (2 * a.q_numel() + 2 * a.kv_numel()) * w + lse_bytes(a)
}

/// Reads Q, K, V, O, dO, L; writes dQ, dK, dV.
pub fn backward_bytes(a: &Attention, inputs: &[Tensor]) -> u64 {
    let w = width(inputs);
    (4 * a.q_numel() + 4 * a.kv_numel()) * w + lse_bytes(a)
}

// Reference implementation

/// O = softmax(mask(Q·Kᵀ/√D))·V with the online softmax of flash attention, one key at a time
/// (a tile of 1: the tiling changes the speed, not the arithmetic), and lse = m + ln(l) per row.
pub fn flash_attention_forward<F: Real>(
    a: &Attention,
    qkv: &[F],
    src: KvSource<'_, F>,
    o: &mut [F],
    lse: &mut [F],
) {
    let (ks, vs) = match &src {
        KvSource::Qkv => (qkv, qkv),
        KvSource::Cache { k, v, .. } => (*k, *v),
    };
    let (d, scale) = (a.d, F::from_f64(a.scale()));
    let mut acc = vec![F::zero(); d];
    for b in 0..a.b {
        for h in 0..a.h {
            let g = a.kv_head(h);
            for i in 0..a.tq {
                let q = &qkv[a.q_index(b, h, i)..][..d];
                let (mut m, mut l) = (F::neg_infinity(), F::zero());
                acc.iter_mut().for_each(|x| *x = F::zero());
                for j in (0..a.tk).filter(|&j| a.visible(i, j)) {
                    let k = &ks[a.kv_index(&src, false, b, g, j)..][..d];
                    let v = &vs[a.kv_index(&src, true, b, g, j)..][..d];
                    let s: F = q.iter().zip(k).map(|(&x, &y)| x * y).sum::<F>() * scale;
                    let m_new = m.max(s);
                    // Rescale what was accumulated under the old maximum.
                    let correction = (m - m_new).exp();
                    let pj = (s - m_new).exp();
                    l = l * correction + pj;
                    for e in 0..d {
                        acc[e] = acc[e] * correction + pj * v[e];
                    }
                    m = m_new;
                }
                let oi = a.o_index(b, h, i);
                for e in 0..d {
                    o[oi + e] = acc[e] / l;
                }
                lse[a.row(b, h, i)] = m + l.ln();
            }
        }
    }
}

/// The backward from the saved lse: P = exp(S − lse) recomputed, Dᵢ = dOᵢ·Oᵢ, dS = P(dP − Dᵢ);
/// dQ, dK, dV written over the three parts of dqkv. Keys and values come from qkv.
pub fn flash_attention_backward<F: Real>(
    a: &Attention,
    qkv: &[F],
    o: &[F],
    dout: &[F],
    lse: &[F],
    dqkv: &mut [F],
) {
    let (d, scale, src) = (a.d, F::from_f64(a.scale()), KvSource::<F>::Qkv);
    dqkv.iter_mut().for_each(|x| *x = F::zero());
    for b in 0..a.b {
        for h in 0..a.h {
            let g = a.kv_head(h);
            for i in 0..a.tq {
                let (qi, oi) = (a.q_index(b, h, i), a.o_index(b, h, i));
                let di: F = (0..d).map(|e| dout[oi + e] * o[oi + e]).sum();
                for j in (0..a.tk).filter(|&j| a.visible(i, j)) {
                    let (k, v) = (
                        a.kv_index(&src, false, b, g, j),
                        a.kv_index(&src, true, b, g, j),
                    );
                    let s: F = (0..d).map(|e| qkv[qi + e] * qkv[k + e]).sum::<F>() * scale;
                    let p = (s - lse[a.row(b, h, i)]).exp();
                    let dp: F = (0..d).map(|e| dout[oi + e] * qkv[v + e]).sum();
                    let ds = p * (dp - di) * scale;
                    for e in 0..d {
                        dqkv[qi + e] += ds * qkv[k + e];
                        dqkv[k + e] += ds * qkv[qi + e];
                        dqkv[v + e] += p * dout[oi + e];
                    }
                }
            }
        }
    }
}

crate::operands! {
    /// O and the log-sum-exp per query row, keys and values from qkv or the caches.
    pub struct FlashAttentionIo for Attention as a {
        inputs { qkv, k_cache if a.kv_cache, v_cache if a.kv_cache }
        inplace {}
        outputs { out, lse }
    }
}

crate::operands! {
    /// dqkv, recomputing P from the saved log-sum-exp.
    pub struct FlashAttentionBackwardIo for Attention as a {
        inputs { qkv, out, dout, lse }
        inplace {}
        outputs { dqkv }
    }
}
