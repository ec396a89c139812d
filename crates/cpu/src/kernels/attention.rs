//! Naive attention: the three forward ops and their backwards, each (batch, head) product a
//! single-threaded gemm and the (batch, head) pairs spread over rayon. Q, K and V are read in
//! place from the qkv buffer or the caches through gemm's strides, never copied.

use super::{serial_gemm, SyncPtr};
use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::ops::attention::{
    Attention, AttnScoresBackwardIo, AttnScoresIo, AttnSoftmaxBackwardIo, AttnSoftmaxIo,
    AttnValueBackwardIo, AttnValueIo, KvSource,
};
use tperf_core::tensor::Tensor;

/// (index of element 0, row stride) of key or value head `g` of batch element `b`.
fn kv_view(
    a: &Attention,
    src: &KvSource<'_, f32>,
    value: bool,
    b: usize,
    g: usize,
) -> (usize, usize) {
    let stride = match src {
        KvSource::Qkv => a.qkv_width(),
        KvSource::Cache { .. } => a.d,
    };
    (a.kv_index(src, value, b, g, 0), stride)
}

fn kv_slices<'a>(src: &KvSource<'a, f32>, qkv: &'a [f32]) -> (&'a [f32], &'a [f32]) {
    match src {
        KvSource::Qkv => (qkv, qkv),
        KvSource::Cache { k, v, .. } => (k, v),
    }
}

/// A strided operand: the slice from its element 0, its column stride and its row stride.
type Strided<'a> = (&'a [f32], usize, usize);

/// block (b, h) of `out` (Tq × Tk, one per (b, h)) = beta·lhs(b, h)·rhs(b, h), a task a block.
///
/// # Safety
/// Each operand's slice must cover the elements its strides reach for that product.
unsafe fn block_products<'a>(
    a: &Attention,
    out: &mut [f32],
    lhs: impl Fn(usize, usize) -> Strided<'a> + Sync,
    rhs: impl Fn(usize, usize) -> Strided<'a> + Sync,
    beta: f32,
) {
    out.par_chunks_mut(a.tq * a.tk)
        .enumerate()
        .for_each(|(bh, block)| {
            let (b, h) = (bh / a.h, bh % a.h);
            let ((l, l_cs, l_rs), (r, r_cs, r_rs)) = (lhs(b, h), rhs(b, h));
            serial_gemm(
                (a.tq, a.tk, a.d),
                block.as_mut_ptr(),
                a.tk,
                false,
                (l.as_ptr(), l_cs, l_rs),
                (r.as_ptr(), r_cs, r_rs),
                beta,
            );
        });
}

/// Output head o's columns of batch b's rows of dst, from element dst0(b, o) with row stride
/// dst_rs, = beta·Σ over h of op(block(b, h))·rhs(b, h), block (b, h) the (Tq × Tk) of
/// `blocks`; a task an (b, o). Plain: o a query head, h = o alone, op the block itself
/// (Tq × D). Transposed: o a KV head, h its group's query heads, op the transpose (Tk × D).
///
/// # Safety
/// rhs must cover what its strides reach; dst the elements every task writes, and different
/// (b, o) must write disjoint elements that no operand reads.
unsafe fn head_products<'a>(
    a: &Attention,
    blocks: &[f32],
    transposed: bool,
    (dst, dst_rs): (SyncPtr, usize),
    dst0: impl Fn(usize, usize) -> usize + Sync,
    rhs: impl Fn(usize, usize) -> Strided<'a> + Sync,
    beta: f32,
) {
    let (heads, group) = if transposed {
        (a.h_kv, a.h / a.h_kv)
    } else {
        (a.h, 1)
    };
    let (rows, inner, l_cs, l_rs) = if transposed {
        (a.tk, a.tq, a.tk, 1)
    } else {
        (a.tq, a.tk, 1, a.tk)
    };
    (0..a.b * heads).into_par_iter().for_each(|bo| {
        let (b, o) = (bo / heads, bo % heads);
        let d0 = dst0(b, o);
        for (n, h) in (o * group..(o + 1) * group).enumerate() {
            let (r, r_cs, r_rs) = rhs(b, h);
            serial_gemm(
                (rows, a.d, inner),
                dst.get().add(d0),
                dst_rs,
                n > 0,
                (blocks[(b * a.h + h) * a.tq * a.tk..].as_ptr(), l_cs, l_rs),
                (r.as_ptr(), r_cs, r_rs),
                beta,
            );
        }
    });
}

/// S = Q·Kᵀ/√D for each (b, h): (Tq × Tk) blocks of `s`.
pub fn scores_forward(a: &Attention, qkv: &[f32], src: KvSource<'_, f32>, s: &mut [f32]) {
    let (ks, _) = kv_slices(&src, qkv);
    let (w, scale) = (a.qkv_width(), a.scale() as f32);
    let q = |b, h| (&qkv[a.q_index(b, h, 0)..], 1, w);
    let kt = |b, h| {
        let (k0, kst) = kv_view(a, &src, false, b, a.kv_head(h));
        (&ks[k0..], kst, 1)
    };
    // SAFETY: the query rows (Tq of them, stride W) and key rows (Tk, stride kst) lie inside
    // qkv and the key source, as the descriptor and the checked buffer lengths guarantee.
    unsafe { block_products(a, s, q, kt, scale) }
}

/// Row-wise masked softmax; masked entries become 0.
pub fn softmax_forward(a: &Attention, s: &[f32], p: &mut [f32]) {
    p.par_chunks_mut(a.tk)
        .zip(s.par_chunks(a.tk))
        .enumerate()
        .for_each(|(r, (p, s))| {
            let i = r % a.tq;
            let mut max = f32::NEG_INFINITY;
            for (j, &x) in s.iter().enumerate() {
                if a.visible(i, j) {
                    max = max.max(x);
                }
            }
            let mut sum = 0.0;
            for (j, (p, &x)) in p.iter_mut().zip(s).enumerate() {
                *p = if a.visible(i, j) {
                    (x - max).exp()
                } else {
                    0.0
                };
                sum += *p;
            }
            let inv = 1.0 / sum;
            p.iter_mut().for_each(|p| *p *= inv);
        });
}

/// O = P·V per (b, h), written into that head's columns of the output rows.
pub fn value_forward(a: &Attention, p: &[f32], qkv: &[f32], src: KvSource<'_, f32>, o: &mut [f32]) {
    let (_, vs) = kv_slices(&src, qkv);
    let v = |b, h| {
        let (v0, vst) = kv_view(a, &src, true, b, a.kv_head(h));
        (&vs[v0..], 1, vst)
    };
    let dst = (SyncPtr(o.as_mut_ptr()), a.h * a.d);
    // SAFETY: task (b, h) writes only head h's D columns of batch b's Tq output rows.
    unsafe { head_products(a, p, false, dst, |b, h| a.o_index(b, h, 0), v, 1.0) }
}

/// dP = dO·Vᵀ per (b, h); dV = Σ over a group's heads of Pᵀ·dO, per (b, kv head), into the V
/// part of dqkv.
pub fn value_backward(
    a: &Attention,
    dout: &[f32],
    qkv: &[f32],
    p: &[f32],
    dp: &mut [f32],
    dqkv: &mut [f32],
) {
    let (w, hd, src) = (a.qkv_width(), a.h * a.d, KvSource::<f32>::Qkv);
    let v0 = |b, g| kv_view(a, &src, true, b, g).0;
    let d_o = |b, h| (&dout[a.o_index(b, h, 0)..], 1, hd);
    let vt = |b, h| (&qkv[v0(b, a.kv_head(h))..], w, 1);
    // SAFETY: dO rows of head h (stride H·D) and V rows (stride W) lie in their buffers.
    unsafe { block_products(a, dp, d_o, vt, 1.0) }
    let dst = (SyncPtr(dqkv.as_mut_ptr()), w);
    // SAFETY: task (b, g) writes only V head g's columns of batch b's rows.
    unsafe { head_products(a, p, true, dst, v0, d_o, 1.0) }
}

/// dS = P ⊙ (dP − rowsum(dP ⊙ P)).
pub fn softmax_backward(a: &Attention, p: &[f32], dp: &[f32], ds: &mut [f32]) {
    ds.par_chunks_mut(a.tk)
        .zip(p.par_chunks(a.tk).zip(dp.par_chunks(a.tk)))
        .for_each(|(ds, (p, dp))| {
            let inner: f32 = p.iter().zip(dp).map(|(&x, &y)| x * y).sum();
            for ((d, &p), &g) in ds.iter_mut().zip(p).zip(dp) {
                *d = p * (g - inner);
            }
        });
}

/// dQ = dS·K/√D per (b, h) and dK = Σ over a group's heads of dSᵀ·Q/√D per (b, kv head), into
/// the Q and K parts of dqkv.
pub fn scores_backward(a: &Attention, ds: &[f32], qkv: &[f32], dqkv: &mut [f32]) {
    let (w, scale, src) = (a.qkv_width(), a.scale() as f32, KvSource::<f32>::Qkv);
    let k0 = |b, g| kv_view(a, &src, false, b, g).0;
    let k = |b, h| (&qkv[k0(b, a.kv_head(h))..], 1, w);
    let q = |b, h| (&qkv[a.q_index(b, h, 0)..], 1, w);
    let dst = (SyncPtr(dqkv.as_mut_ptr()), w);
    // SAFETY: task (b, h) writes only query head h's columns of batch b's rows.
    unsafe { head_products(a, ds, false, dst, |b, h| a.q_index(b, h, 0), k, scale) }
    // SAFETY: task (b, g) writes only key head g's columns of batch b's rows.
    unsafe { head_products(a, ds, true, dst, k0, q, scale) }
}

// The ops' dispatch: named operands in, kernels out.

/// Keys (and values) from a cache after checking that it covers the Tk positions attention
/// reads; `k` or `v` is empty when the op reads only the other.
pub(crate) fn cache_source<'a>(
    cx: &Exec<'_>,
    a: &Attention,
    cache: &Tensor,
    k: &'a [f32],
    v: &'a [f32],
) -> Result<KvSource<'a, f32>, BackendError> {
    match cache.shape[..] {
        [b, h_kv, capacity, d] if b == a.b && h_kv == a.h_kv && d == a.d && capacity >= a.tk => {
            Ok(KvSource::Cache { k, v, capacity })
        }
        _ => Err(cx.unsupported(format!(
            "KV cache of shape {:?} does not hold {} positions of {a:?}",
            cache.shape, a.tk
        ))),
    }
}

/// Attention reading keys from qkv needs the queries and keys to be the same tokens, and the
/// query heads must group evenly over the key heads.
pub(crate) fn check_shape(cx: &Exec<'_>, a: &Attention) -> Result<(), BackendError> {
    if !a.kv_cache && a.tq != a.tk {
        return Err(cx.unsupported(format!("Tq = {} ≠ Tk = {} needs a KV cache", a.tq, a.tk)));
    }
    if a.h_kv == 0 || !a.h.is_multiple_of(a.h_kv) {
        return Err(cx.unsupported(format!(
            "H = {} is not a multiple of H_kv = {}",
            a.h, a.h_kv
        )));
    }
    Ok(())
}

/// Training's backward reads keys and values from qkv only.
pub(crate) fn check_no_cache(cx: &Exec<'_>, a: &Attention) -> Result<(), BackendError> {
    if a.kv_cache || a.tq != a.tk {
        return Err(
            cx.unsupported("attention backward through a KV cache (training reads qkv only)")
        );
    }
    Ok(())
}

pub(crate) fn exec_scores(cx: &mut Exec<'_>, a: &Attention) -> Result<(), BackendError> {
    let io: AttnScoresIo = cx.call.operands(a)?;
    check_shape(cx, a)?;
    let k_data = cx.f32_opt(&io.k_cache)?;
    let src = match (&io.k_cache, &k_data) {
        (Some(k), Some(k_data)) => cache_source(cx, a, k, k_data, &[])?,
        _ => KvSource::Qkv,
    };
    scores_forward(a, &cx.f32(&io.qkv)?, src, cx.outs.f32(&io.scores)?);
    Ok(())
}

pub(crate) fn exec_softmax(cx: &mut Exec<'_>, a: &Attention) -> Result<(), BackendError> {
    let io: AttnSoftmaxIo = cx.call.operands(a)?;
    softmax_forward(a, &cx.f32(&io.scores)?, cx.outs.f32(&io.probs)?);
    Ok(())
}

pub(crate) fn exec_value(cx: &mut Exec<'_>, a: &Attention) -> Result<(), BackendError> {
    let io: AttnValueIo = cx.call.operands(a)?;
    check_shape(cx, a)?;
    let v_data = cx.f32_opt(&io.v_cache)?;
    let src = match (&io.v_cache, &v_data) {
        (Some(v), Some(v_data)) => cache_source(cx, a, v, &[], v_data)?,
        _ => KvSource::Qkv,
    };
    let (p, qkv) = (&cx.f32(&io.probs)?, &cx.f32(&io.qkv)?);
    value_forward(a, p, qkv, src, cx.outs.f32(&io.out)?);
    Ok(())
}

pub(crate) fn exec_value_backward(cx: &mut Exec<'_>, a: &Attention) -> Result<(), BackendError> {
    let io: AttnValueBackwardIo = cx.call.operands(a)?;
    check_no_cache(cx, a)?;
    let (dout, qkv, p) = (&cx.f32(&io.dout)?, &cx.f32(&io.qkv)?, &cx.f32(&io.probs)?);
    let [dp, dqkv] = cx.outs.f32s([&io.dprobs, &io.dqkv])?;
    value_backward(a, dout, qkv, p, dp, dqkv);
    Ok(())
}

pub(crate) fn exec_softmax_backward(cx: &mut Exec<'_>, a: &Attention) -> Result<(), BackendError> {
    let io: AttnSoftmaxBackwardIo = cx.call.operands(a)?;
    let (p, dp) = (&cx.f32(&io.probs)?, &cx.f32(&io.dprobs)?);
    softmax_backward(a, p, dp, cx.outs.f32(&io.dscores)?);
    Ok(())
}

pub(crate) fn exec_scores_backward(cx: &mut Exec<'_>, a: &Attention) -> Result<(), BackendError> {
    let io: AttnScoresBackwardIo = cx.call.operands(a)?;
    check_no_cache(cx, a)?;
    let (ds, qkv) = (&cx.f32(&io.dscores)?, &cx.f32(&io.qkv)?);
    scores_backward(a, ds, qkv, cx.outs.f32(&io.dqkv)?);
    Ok(())
}
