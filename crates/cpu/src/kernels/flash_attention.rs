//! Flash attention on the CPU, every product a single-threaded gemm on a tile.
//!
//! Forward: parallel over (batch, head, query tile). A task takes BQ query rows, walks the key
//! range those rows can see (causal / sliding window: nothing outside it is computed) in blocks
//! of BK keys, and per block does S = Q·Kᵀ/√D (gemm), masks the diagonal / window edge, updates
//! the online softmax (row max m, row sum l, rescale of the accumulator) and accumulates
//! O += P·V (gemm). It writes O = acc/l and lse = m + ln l.
//!
//! Backward: parallel over (batch, kv head), so that dK and dV of a head — summed over the
//! query tiles and over the query heads of its group — are written by one task, without atomics
//! or partial buffers. Per (query head, query tile, key block) it recomputes P = exp(S − lse)
//! from the saved lse and issues five gemms: dV += Pᵀ·dO, dP = dO·Vᵀ, then with
//! dS = P ⊙ (dP − Dᵢ), Dᵢ = rowsum(dO ⊙ O): dQ += dS·K/√D and dK += dSᵀ·Q/√D.
//!
//! Memory: a worker holds two BQ×BK score tiles and a BQ×D accumulator; nothing grows with T²
//! (nor even with T). Q, K, V, O, dO and dQKV are read and written in place through gemm's
//! strides (rows of the fused qkv buffer or of the caches), never gathered: gemm packs its
//! operands into its own cache-friendly panels anyway, so a copy here would be a second packing.
//!
//! Why gemm with `Parallelism::None`: the parallelism is over tiles and heads (B·H·T/BQ forward
//! tasks, B·H_kv backward tasks), which keeps every core busy with no synchronisation inside a
//! product; a multithreaded gemm on a 64×128 tile would spend more time splitting than computing.
//!
//! Tile sizes from the caches (32–64 KiB L1d and 512 KiB – 1 MiB L2 per core on current x86;
//! a sweep of {32, 64, 128}×{64, 128, 256} on a 2-core EPYC was flat within noise): BQ = 64 query rows and BK = 128 keys give a 32 KiB score
//! tile S and 32 KiB for dP, while the Q tile, the K/V block and the accumulator are 16–32 KiB
//! each at D = 64, so one task's working set (~150 KiB) stays in L2 through its five products
//! and the elementwise passes between them, and each gemm is large enough (64·128·64 multiply–
//! adds) for gemm's micro-kernel to run at speed rather than in its edge handling. Causal
//! attention wastes only the upper half of the BQ×BQ diagonal block per tile (a fraction BQ/T).
//!
//! Limit: the backward has B·H_kv tasks, so multi-query attention at batch 1 runs on one core
//! (per-head dK/dV partials and a reduction would lift that, at O(H·T·D) extra memory).

use super::attention::{cache_source, check_no_cache, check_shape};
use super::{serial_gemm, SyncPtr};
use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::ops::attention::{Attention, KvSource};
use tperf_core::ops::flash_attention::{FlashAttentionBackwardIo, FlashAttentionIo};

const BQ: usize = 64;
const BK: usize = 128;

/// eˣ in f32 without a libm call, so that the loops over a score tile vectorise (the libm expf
/// is a scalar call; at D = 64 there is one exp per 4D = 256 gemm flops, and even vectorised
/// at SSE2 width the exp pass took as long as the gemms). Cephes' expf: x = n·ln2 + r with
/// |r| ≤ ln2/2, eʳ by a degree-7 polynomial (relative error ≈ 1e-7, as libm's), 2ⁿ built in the
/// exponent bits. Arguments below −87 (including −∞) give 0.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LO: f32 = -87.0;
    const HI: f32 = 88.0;
    // Adding 1.5·2²³ rounds to an integer, held in the low mantissa bits of the sum.
    const SHIFT: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let t = xc * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let pow2n = f32::from_bits(((t.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32);
    if x < LO {
        0.0
    } else {
        y * pow2n
    }
}

/// Lanes for the reductions below: independent accumulators so that they vectorise (a single
/// f32 sum is a serial chain under strict FP ordering); 16 = two AVX2 registers, which also
/// hides the add latency.
const LANES: usize = 16;

/// The elementwise passes over a score tile, compiled twice: for the build's baseline (SSE2 on
/// x86-64 unless RUSTFLAGS say more) and, chosen at run time, for AVX2 + FMA, which doubles
/// the width of the exp — the largest cost outside the gemms (gemm dispatches on the CPU
/// itself, so the products are fast either way).
macro_rules! multiversion {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block)*) => {$(
        fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn generic($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    )*};
}

multiversion! {
    fn max_of(xs: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = xs.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a = if x > *a { x } else { *a };
            }
        }
        let mut m = tail.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        for a in acc {
            m = m.max(a);
        }
        m
    }

    // xs ← exp(xs − sub), returning the sum.
    fn exp_sub_sum(xs: &mut [f32], sub: f32) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut chunks = xs.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (a, x) in acc.iter_mut().zip(c) {
                *x = exp(*x - sub);
                *a += *x;
            }
        }
        let mut s: f32 = 0.0;
        for x in chunks.into_remainder() {
            *x = exp(*x - sub);
            s += *x;
        }
        s + acc.iter().sum::<f32>()
    }

    // dS = P ⊙ (dP − Dᵢ), in place over dP.
    fn softmax_grad(ds: &mut [f32], p: &[f32], di: f32) -> () {
        ds.iter_mut().zip(p).for_each(|(x, &p)| *x = p * (*x - di));
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(&x, &y)| x * y)
            .sum();
        for (x, y) in ca.zip(cb) {
            for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
                *a += x * y;
            }
        }
        tail + acc.iter().sum::<f32>()
    }
}

/// Keys visible to query row i: a contiguous range lo..hi.
fn row_keys(a: &Attention, i: usize) -> (usize, usize) {
    if !a.causal {
        return (0, a.tk);
    }
    let p = a.tk - a.tq + i;
    (a.window.map_or(0, |w| (p + 1).saturating_sub(w)), p + 1)
}

/// Keys visible to any query row in i0..i1: a contiguous range.
fn key_range(a: &Attention, i0: usize, i1: usize) -> (usize, usize) {
    (row_keys(a, i0).0, row_keys(a, i1 - 1).1)
}

/// Row i's visible keys as columns c0..c1 of the key block j0..j1 (empty when c0 ≥ c1).
fn visible_cols(a: &Attention, i: usize, j0: usize, j1: usize) -> (usize, usize) {
    let (lo, hi) = row_keys(a, i);
    (lo.clamp(j0, j1) - j0, hi.clamp(j0, j1) - j0)
}

/// Row stride of the key/value rows in their source.
fn kv_stride(a: &Attention, src: &KvSource<'_, f32>) -> usize {
    match src {
        KvSource::Qkv => a.qkv_width(),
        KvSource::Cache { .. } => a.d,
    }
}

struct Scratch {
    s: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

pub fn forward(a: &Attention, qkv: &[f32], src: KvSource<'_, f32>, o: &mut [f32], lse: &mut [f32]) {
    let (ks, vs) = match &src {
        KvSource::Qkv => (qkv, qkv),
        KvSource::Cache { k, v, .. } => (*k, *v),
    };
    let (d, scale, w, kvs) = (a.d, a.scale() as f32, a.qkv_width(), kv_stride(a, &src));
    let tiles = a.tq.div_ceil(BQ);
    let (optr, lptr) = (SyncPtr(o.as_mut_ptr()), SyncPtr(lse.as_mut_ptr()));
    let scratch = || Scratch {
        s: vec![0.0; BQ * BK],
        m: vec![0.0; BQ],
        l: vec![0.0; BQ],
        acc: vec![0.0; BQ * d],
    };
    (0..a.b * a.h * tiles)
        .into_par_iter()
        .for_each_init(scratch, |sc, task| {
            let (bh, tile) = (task / tiles, task % tiles);
            let (b, h) = (bh / a.h, bh % a.h);
            let g = a.kv_head(h);
            let (i0, i1) = (tile * BQ, (tile * BQ + BQ).min(a.tq));
            let m = i1 - i0;
            sc.m[..m].fill(f32::NEG_INFINITY);
            sc.l[..m].fill(0.0);
            sc.acc[..m * d].fill(0.0);
            let q = qkv[a.q_index(b, h, i0)..].as_ptr();
            let (lo, hi) = key_range(a, i0, i1);
            for j0 in (lo..hi).step_by(BK) {
                let j1 = (j0 + BK).min(hi);
                let n = j1 - j0;
                let s = &mut sc.s[..m * n];
                // SAFETY: m query rows of stride W from q_index(b, h, i0) lie in qkv; n key rows
                // of stride kvs from key j0 lie in the key source; s is m×n.
                unsafe {
                    serial_gemm(
                        (m, n, d),
                        s.as_mut_ptr(),
                        n,
                        false,
                        (q, 1, w),
                        (ks[a.kv_index(&src, false, b, g, j0)..].as_ptr(), kvs, 1),
                        scale,
                    );
                }
                for (r, row) in s.chunks_exact_mut(n).enumerate() {
                    let (c0, c1) = visible_cols(a, i0 + r, j0, j1);
                    if c0 >= c1 {
                        row.fill(0.0);
                        continue;
                    }
                    let m_old = sc.m[r];
                    let m_new = m_old.max(max_of(&row[c0..c1]));
                    row[..c0].fill(0.0);
                    row[c1..].fill(0.0);
                    let sum = exp_sub_sum(&mut row[c0..c1], m_new);
                    // Rescale what was accumulated under the old maximum (0 on the first block).
                    let correction = exp(m_old - m_new);
                    sc.l[r] = sc.l[r] * correction + sum;
                    sc.m[r] = m_new;
                    if correction != 1.0 {
                        sc.acc[r * d..][..d]
                            .iter_mut()
                            .for_each(|x| *x *= correction);
                    }
                }
                // SAFETY: P is m×n in scratch; n value rows of stride kvs from j0 lie in the value
                // source; acc is m×d.
                unsafe {
                    serial_gemm(
                        (m, d, n),
                        sc.acc.as_mut_ptr(),
                        d,
                        true,
                        (s.as_ptr(), 1, n),
                        (vs[a.kv_index(&src, true, b, g, j0)..].as_ptr(), 1, kvs),
                        1.0,
                    );
                }
            }
            for r in 0..m {
                let i = i0 + r;
                let inv = 1.0 / sc.l[r];
                // SAFETY: task (b, h, tile) writes only head h's D columns of batch b's rows
                // i0..i1, and lse rows (b, h, i0..i1); no other task touches those elements.
                let (out, l) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(optr.get().add(a.o_index(b, h, i)), d),
                        &mut *lptr.get().add(a.row(b, h, i)),
                    )
                };
                out.iter_mut()
                    .zip(&sc.acc[r * d..][..d])
                    .for_each(|(o, &x)| *o = x * inv);
                *l = sc.m[r] + sc.l[r].ln();
            }
        });
}

struct BackScratch {
    p: Vec<f32>,
    ds: Vec<f32>,
    di: Vec<f32>,
}

/// The backward from the saved lse, recomputing P tile by tile; writes all of dqkv.
pub fn backward(
    a: &Attention,
    qkv: &[f32],
    o: &[f32],
    dout: &[f32],
    lse: &[f32],
    dqkv: &mut [f32],
) {
    let (d, scale, src) = (a.d, a.scale() as f32, KvSource::<f32>::Qkv);
    let (w, hd) = (a.qkv_width(), a.h * a.d);
    dqkv.par_iter_mut().for_each(|x| *x = 0.0);
    let dptr = SyncPtr(dqkv.as_mut_ptr());
    let group = a.h / a.h_kv;
    let scratch = || BackScratch {
        p: vec![0.0; BQ * BK],
        ds: vec![0.0; BQ * BK],
        di: vec![0.0; BQ],
    };
    (0..a.b * a.h_kv)
        .into_par_iter()
        .for_each_init(scratch, |sc, bg| {
            let (b, g) = (bg / a.h_kv, bg % a.h_kv);
            let (kj, vj) = (
                a.kv_index(&src, false, b, g, 0),
                a.kv_index(&src, true, b, g, 0),
            );
            for h in g * group..(g + 1) * group {
                for i0 in (0..a.tq).step_by(BQ) {
                    let i1 = (i0 + BQ).min(a.tq);
                    let m = i1 - i0;
                    let (qi, oi) = (a.q_index(b, h, i0), a.o_index(b, h, i0));
                    let lse = &lse[a.row(b, h, i0)..][..m];
                    // Dᵢ = dOᵢ·Oᵢ, once per query row.
                    for (r, di) in sc.di[..m].iter_mut().enumerate() {
                        let e = oi + r * hd;
                        *di = dot(&dout[e..][..d], &o[e..][..d]);
                    }
                    let (lo, hi) = key_range(a, i0, i1);
                    for j0 in (lo..hi).step_by(BK) {
                        let j1 = (j0 + BK).min(hi);
                        let n = j1 - j0;
                        let (p, ds) = (&mut sc.p[..m * n], &mut sc.ds[..m * n]);
                        let (k, v) = (&qkv[kj + j0 * w..], &qkv[vj + j0 * w..]);
                        // SAFETY (all five products): Q, dO and the key/value rows are read
                        // through their row strides (W, H·D, W) from the first row of the tile or
                        // block, inside qkv and dout; P and dS are m×n scratch. The destinations
                        // are the dQ rows of head h (rows i0..i1) and the dK/dV rows of kv head g
                        // (keys j0..j1) of batch b in dqkv, which only task (b, g) writes, and
                        // which overlap no operand.
                        unsafe {
                            // S = Q·Kᵀ/√D, then P = exp(S − lse) on the visible keys.
                            serial_gemm(
                                (m, n, d),
                                p.as_mut_ptr(),
                                n,
                                false,
                                (qkv[qi..].as_ptr(), 1, w),
                                (k.as_ptr(), w, 1),
                                scale,
                            );
                        }
                        for (r, row) in p.chunks_exact_mut(n).enumerate() {
                            // c0 ≤ c1 always: a row's visible range is never reversed.
                            let (c0, c1) = visible_cols(a, i0 + r, j0, j1);
                            row[..c0].fill(0.0);
                            row[c1..].fill(0.0);
                            exp_sub_sum(&mut row[c0..c1], lse[r]);
                        }
                        unsafe {
                            // dV += Pᵀ·dO (Pᵀ read from P with the strides swapped).
                            serial_gemm(
                                (n, d, m),
                                dptr.get().add(vj + j0 * w),
                                w,
                                true,
                                (p.as_ptr(), n, 1),
                                (dout[oi..].as_ptr(), 1, hd),
                                1.0,
                            );
                            // dP = dO·Vᵀ.
                            serial_gemm(
                                (m, n, d),
                                ds.as_mut_ptr(),
                                n,
                                false,
                                (dout[oi..].as_ptr(), 1, hd),
                                (v.as_ptr(), w, 1),
                                1.0,
                            );
                        }
                        // dS = P ⊙ (dP − Dᵢ); zero wherever P is (the masked keys).
                        for ((dsr, pr), &di) in ds
                            .chunks_exact_mut(n)
                            .zip(p.chunks_exact(n))
                            .zip(&sc.di[..m])
                        {
                            softmax_grad(dsr, pr, di);
                        }
                        unsafe {
                            // dQ += dS·K/√D.
                            serial_gemm(
                                (m, d, n),
                                dptr.get().add(qi),
                                w,
                                true,
                                (ds.as_ptr(), 1, n),
                                (k.as_ptr(), 1, w),
                                scale,
                            );
                            // dK += dSᵀ·Q/√D.
                            serial_gemm(
                                (n, d, m),
                                dptr.get().add(kj + j0 * w),
                                w,
                                true,
                                (ds.as_ptr(), n, 1),
                                (qkv[qi..].as_ptr(), 1, w),
                                scale,
                            );
                        }
                    }
                }
            }
        });
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, a: &Attention) -> Result<(), BackendError> {
    let io: FlashAttentionIo = cx.call.operands(a)?;
    check_shape(cx, a)?;
    let (k_data, v_data) = (cx.f32_opt(&io.k_cache)?, cx.f32_opt(&io.v_cache)?);
    let src = match (&io.k_cache, &k_data, &v_data) {
        (Some(k), Some(k_data), Some(v_data)) => cache_source(cx, a, k, k_data, v_data)?,
        _ => KvSource::Qkv,
    };
    let qkv = &cx.f32(&io.qkv)?;
    let [o, lse] = cx.outs.f32s([&io.out, &io.lse])?;
    forward(a, qkv, src, o, lse);
    Ok(())
}

pub(crate) fn exec_backward(cx: &mut Exec<'_>, a: &Attention) -> Result<(), BackendError> {
    let io: FlashAttentionBackwardIo = cx.call.operands(a)?;
    check_no_cache(cx, a)?;
    let (qkv, o) = (&cx.f32(&io.qkv)?, &cx.f32(&io.out)?);
    let (dout, lse) = (&cx.f32(&io.dout)?, &cx.f32(&io.lse)?);
    backward(a, qkv, o, dout, lse, cx.outs.f32(&io.dqkv)?);
    Ok(())
}
