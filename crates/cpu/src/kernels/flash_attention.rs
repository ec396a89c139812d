//! Flash attention on the CPU: parallel over (batch, head) in the forward and over (batch, kv
//! head) in the backward (so that a group's dK and dV are summed by one task, without atomics).
//!
//! Tiles: BQ query rows against BK keys at a time. A key tile of BK·D floats (16 KiB at
//! BK = 64, D = 64) stays in L1/L2 while the BQ rows of a query tile read it, and tiles that the
//! causal or window mask hides entirely are skipped, which is where the causal half is saved.

use super::SyncPtr;
use rayon::prelude::*;
use tperf_core::ops::attention::{Attention, KvSource};

const BQ: usize = 32;
const BK: usize = 64;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

/// Keys visible to any query row in i0..i1: a contiguous range.
fn key_range(a: &Attention, i0: usize, i1: usize) -> (usize, usize) {
    if !a.causal {
        return (0, a.tk);
    }
    let (p0, p1) = (a.tk - a.tq + i0, a.tk - a.tq + i1 - 1);
    let lo = a.window.map_or(0, |w| (p0 + 1).saturating_sub(w));
    (lo, p1 + 1)
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
    let (d, scale) = (a.d, a.scale() as f32);
    let optr = SyncPtr(o.as_mut_ptr());
    let scratch = || Scratch {
        s: vec![0.0; BK],
        m: vec![0.0; BQ],
        l: vec![0.0; BQ],
        acc: vec![0.0; BQ * d],
    };
    lse.par_chunks_mut(a.tq)
        .enumerate()
        .for_each_init(scratch, |sc, (bh, lse)| {
            let (b, h) = (bh / a.h, bh % a.h);
            let g = a.kv_head(h);
            for i0 in (0..a.tq).step_by(BQ) {
                let i1 = (i0 + BQ).min(a.tq);
                sc.m.fill(f32::NEG_INFINITY);
                sc.l.fill(0.0);
                sc.acc.fill(0.0);
                let (lo, hi) = key_range(a, i0, i1);
                for j0 in (lo..hi).step_by(BK) {
                    let j1 = (j0 + BK).min(hi);
                    for i in i0..i1 {
                        let r = i - i0;
                        let q = &qkv[a.q_index(b, h, i)..][..d];
                        let mut tile_max = f32::NEG_INFINITY;
                        for j in j0..j1 {
                            let s = if a.visible(i, j) {
                                dot(q, &ks[a.kv_index(&src, false, b, g, j)..][..d]) * scale
                            } else {
                                f32::NEG_INFINITY
                            };
                            sc.s[j - j0] = s;
                            tile_max = tile_max.max(s);
                        }
                        if tile_max == f32::NEG_INFINITY {
                            continue;
                        }
                        let m_new = sc.m[r].max(tile_max);
                        // Rescale what was accumulated under the old maximum.
                        let correction = (sc.m[r] - m_new).exp();
                        let acc = &mut sc.acc[r * d..][..d];
                        acc.iter_mut().for_each(|x| *x *= correction);
                        let mut l = sc.l[r] * correction;
                        for j in j0..j1 {
                            let p = (sc.s[j - j0] - m_new).exp();
                            if p == 0.0 {
                                continue;
                            }
                            l += p;
                            let v = &vs[a.kv_index(&src, true, b, g, j)..][..d];
                            acc.iter_mut().zip(v).for_each(|(x, &v)| *x += p * v);
                        }
                        sc.l[r] = l;
                        sc.m[r] = m_new;
                    }
                }
                for (r, lse) in lse[i0..i1].iter_mut().enumerate() {
                    let i = i0 + r;
                    let inv = 1.0 / sc.l[r];
                    // SAFETY: task (b, h) writes only head h's D columns of batch b's rows.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(optr.get().add(a.o_index(b, h, i)), d)
                    };
                    out.iter_mut()
                        .zip(&sc.acc[r * d..][..d])
                        .for_each(|(o, &x)| *o = x * inv);
                    *lse = sc.m[r] + sc.l[r].ln();
                }
            }
        });
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
    dqkv.par_iter_mut().for_each(|x| *x = 0.0);
    let dptr = SyncPtr(dqkv.as_mut_ptr());
    let group = a.h / a.h_kv;
    (0..a.b * a.h_kv)
        .into_par_iter()
        .for_each_init(Vec::new, |di: &mut Vec<f32>, bg| {
            let (b, g) = (bg / a.h_kv, bg % a.h_kv);
            // SAFETY: task (b, g) writes key and value head g and the query heads of group g, in
            // batch b's rows only; no other task touches those elements.
            let row =
                |idx: usize| unsafe { std::slice::from_raw_parts_mut(dptr.get().add(idx), d) };
            for h in g * group..(g + 1) * group {
                // Dᵢ = dOᵢ·Oᵢ, once per query row of this head.
                di.clear();
                di.extend((0..a.tq).map(|i| {
                    dot(
                        &dout[a.o_index(b, h, i)..][..d],
                        &o[a.o_index(b, h, i)..][..d],
                    )
                }));
                for i0 in (0..a.tq).step_by(BQ) {
                    let i1 = (i0 + BQ).min(a.tq);
                    let (lo, hi) = key_range(a, i0, i1);
                    for j0 in (lo..hi).step_by(BK) {
                        let j1 = (j0 + BK).min(hi);
                        for i in i0..i1 {
                            let (qi, oi) = (a.q_index(b, h, i), a.o_index(b, h, i));
                            let (q, dq) = (&qkv[qi..][..d], row(qi));
                            let do_i = &dout[oi..][..d];
                            let l = lse[a.row(b, h, i)];
                            for j in (j0..j1).filter(|&j| a.visible(i, j)) {
                                let (kj, vj) = (
                                    a.kv_index(&src, false, b, g, j),
                                    a.kv_index(&src, true, b, g, j),
                                );
                                let (k, v) = (&qkv[kj..][..d], &qkv[vj..][..d]);
                                let p = (dot(q, k) * scale - l).exp();
                                let ds = p * (dot(do_i, v) - di[i]) * scale;
                                dq.iter_mut().zip(k).for_each(|(x, &k)| *x += ds * k);
                                row(kj).iter_mut().zip(q).for_each(|(x, &q)| *x += ds * q);
                                row(vj).iter_mut().zip(do_i).for_each(|(x, &g)| *x += p * g);
                            }
                        }
                    }
                }
            }
        });
}
