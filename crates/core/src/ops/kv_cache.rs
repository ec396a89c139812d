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

/// Paged KV append: each of the n new rows writes its keys and values into its slot of the
/// block pools (num_blocks, H_kv, block_size, D), slot = block · block_size + offset as the
/// sequence's block table maps its position (vLLM's slot mapping, computed by the host). A
/// contiguous cache is the special case of one block of T_cap positions per sequence.
/// Bytes: the new K and V read and written, and one i32 slot per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PagedKvAppend {
    /// New rows (tokens of all sequences, packed).
    pub n: usize,
    pub h_q: usize,
    pub h_kv: usize,
    pub d: usize,
    pub block_size: usize,
}

impl PagedKvAppend {
    pub fn bytes(&self, inputs: &[Tensor]) -> u64 {
        let width = inputs.first().map_or(4, |t| t.dtype.size_bytes());
        let new = 2 * self.n as u64 * (self.h_kv * self.d) as u64;
        2 * new * width + self.n as u64 * 4
    }
}

/// Element offset of (slot, kv head `g`) in a pool of (num_blocks, H_kv, block_size, D).
pub fn pool_offset(slot: usize, g: usize, h_kv: usize, block_size: usize, d: usize) -> usize {
    let (block, off) = (slot / block_size, slot % block_size);
    ((block * h_kv + g) * block_size + off) * d
}

/// Copies row r's keys and values from qkv (n, (H + 2H_kv)·D) to slot `slots[r]` of the pools.
/// Slots are in range (the host's block manager gives them).
pub fn paged_kv_append<F: Real>(
    k: &PagedKvAppend,
    qkv: &[F],
    slots: &[i32],
    k_pool: &mut [F],
    v_pool: &mut [F],
) {
    let (d, width) = (k.d, (k.h_q + 2 * k.h_kv) * k.d);
    for (r, &slot) in slots.iter().enumerate().take(k.n) {
        let row = r * width;
        for g in 0..k.h_kv {
            let dst = pool_offset(slot as usize, g, k.h_kv, k.block_size, d);
            let (ks, vs) = (row + (k.h_q + g) * d, row + (k.h_q + k.h_kv + g) * d);
            k_pool[dst..dst + d].copy_from_slice(&qkv[ks..ks + d]);
            v_pool[dst..dst + d].copy_from_slice(&qkv[vs..vs + d]);
        }
    }
}

crate::operands! {
    /// The new rows' keys and values into their slots of the block pools.
    pub struct PagedKvAppendIo for PagedKvAppend as k {
        inputs { qkv, slots }
        inplace {}
        outputs { k_pool, v_pool }
    }
}
