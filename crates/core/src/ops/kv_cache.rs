//! KV-cache append: copy the new tokens' keys and values (from the fused QKV buffer, after RoPE)
//! into the cache at positions pos..pos + t_new. A cache holds, per layer, K and V of
//! B × H_kv × T_max × D, so its size is 2·L·B·T_max·H_kv·D·width: grouped-query attention
//! shrinks it by H / H_kv.
//!
//! No arithmetic. Bytes: the new K and V read and written, 2 × 2·B·t_new·H_kv·D·width; the io
//! rule would count the whole cache, which an append does not touch.

use super::Real;
use crate::tensor::Tensor;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KvAppend {
    pub b: usize,
    pub t_new: usize,
    pub h_kv: usize,
    pub d: usize,
    pub pos: usize,
}

impl KvAppend {
    pub fn bytes(&self, inputs: &[Tensor]) -> u64 {
        let width = inputs.first().map_or(4, |t| t.dtype.size_bytes());
        let new = 2 * (self.b * self.t_new) as u64 * (self.h_kv * self.d) as u64;
        2 * new * width
    }
}

/// Bytes of a KV cache for `tokens` positions of `batch` sequences.
pub fn cache_bytes(
    n_layers: usize,
    batch: usize,
    tokens: usize,
    n_kv_heads: usize,
    head_dim: usize,
    width_bytes: u64,
) -> u64 {
    2 * n_layers as u64
        * batch as u64
        * tokens as u64
        * (n_kv_heads * head_dim) as u64
        * width_bytes
}

// Reference implementation

/// Copies the keys and values of the new tokens from qkv (B·t_new, (H + 2H_kv)·D) into the
/// caches (B, H_kv, T_cap, D) at positions pos..pos + t_new. `h_q` is H, which the descriptor
/// does not carry (the qkv row width gives it); pos + t_new ≤ T_cap is checked by the caller.
pub fn kv_append<F: Real>(
    k: &KvAppend,
    h_q: usize,
    capacity: usize,
    qkv: &[F],
    k_cache: &mut [F],
    v_cache: &mut [F],
) {
    let (d, width) = (k.d, (h_q + 2 * k.h_kv) * k.d);
    for b in 0..k.b {
        for i in 0..k.t_new {
            let row = (b * k.t_new + i) * width;
            for g in 0..k.h_kv {
                let dst = ((b * k.h_kv + g) * capacity + k.pos + i) * d;
                let (ks, vs) = (row + (h_q + g) * d, row + (h_q + k.h_kv + g) * d);
                k_cache[dst..dst + d].copy_from_slice(&qkv[ks..ks + d]);
                v_cache[dst..dst + d].copy_from_slice(&qkv[vs..vs + d]);
            }
        }
    }
}

crate::operands! {
    /// Copies the new tokens' keys and values out of qkv into the caches at `pos`.
    pub struct KvAppendIo for KvAppend as k {
        inputs { qkv }
        inplace {}
        outputs { k_cache, v_cache }
    }
}
