//! KV append's dispatch: a copy, for which the reference is the fast path.

use crate::exec::Exec;
use tperf_core::backend::BackendError;
use tperf_core::ops::kv_cache::{
    kv_append, paged_kv_append, KvAppend, KvAppendIo, PagedKvAppend, PagedKvAppendIo,
};

pub(crate) fn exec(cx: &mut Exec<'_>, k: &KvAppend) -> Result<(), BackendError> {
    let io: KvAppendIo = cx.call.operands(k)?;
    let qkv = &cx.f32(&io.qkv)?;
    let capacity = io.k_cache.shape.get(2).copied().unwrap_or(0);
    if k.pos + k.t_new > capacity {
        return Err(cx.invalid(format!(
            "appending {} positions at {} overflows the KV cache of {capacity}: allocate a larger cache",
            k.t_new, k.pos
        )));
    }
    let width = qkv.len() / (k.b * k.t_new).max(1);
    let h_q = (width / k.d.max(1)).saturating_sub(2 * k.h_kv);
    let held = io.k_cache.numel().min(io.v_cache.numel()) as usize;
    cx.check_len("the KV cache", held, k.b * k.h_kv * capacity * k.d)?;
    let [kc, vc] = cx.outs.f32s([&io.k_cache, &io.v_cache])?;
    kv_append(k, h_q, capacity, qkv, kc, vc);
    Ok(())
}

pub(crate) fn exec_paged(cx: &mut Exec<'_>, k: &PagedKvAppend) -> Result<(), BackendError> {
    let io: PagedKvAppendIo = cx.call.operands(k)?;
    let (qkv, slots) = (&cx.f32(&io.qkv)?, cx.i32(&io.slots)?);
    cx.check_len("slots", slots.len(), k.n)?;
    cx.check_len("qkv", qkv.len(), k.n * (k.h_q + 2 * k.h_kv) * k.d)?;
    // The pools are (num_blocks, H_kv, block_size, D): a slot indexes num_blocks · block_size.
    let capacity = io.k_pool.shape.first().copied().unwrap_or(0) * k.block_size;
    if let Some(&bad) = slots
        .iter()
        .take(k.n)
        .find(|&&s| s < 0 || s as usize >= capacity)
    {
        return Err(cx.invalid(format!(
            "slot {bad} is outside the paged cache of {capacity} positions"
        )));
    }
    let [kp, vp] = cx.outs.f32s([&io.k_pool, &io.v_pool])?;
    paged_kv_append(k, qkv, slots, kp, vp);
    Ok(())
}
