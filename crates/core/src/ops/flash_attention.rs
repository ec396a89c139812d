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

use super::attention::Attention;
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
pub fn forward_bytes(a: &Attention, inputs: &[Tensor], _outputs: &[Tensor]) -> u64 {
    let w = width(inputs);
    (2 * a.q_numel() + 2 * a.kv_numel()) * w + lse_bytes(a)
}

/// Reads Q, K, V, O, dO, L; writes dQ, dK, dV.
pub fn backward_bytes(a: &Attention, inputs: &[Tensor], _outputs: &[Tensor]) -> u64 {
    let w = width(inputs);
    (4 * a.q_numel() + 4 * a.kv_numel()) * w + lse_bytes(a)
}
