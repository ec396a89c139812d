//! LayerNorm over rows in parallel. Row statistics are accumulated in f32 with the two-pass
//! (mean, then squared deviations) form, which loses nothing to cancellation.

use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::ops::layernorm::{LayerNorm, LayerNormBackwardIo, LayerNormIo};

fn normalise_row(
    ln: &LayerNorm,
    x: &[f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    y: &mut [f32],
    st: &mut [f32],
) {
    let c = ln.c as f32;
    let mean = x.iter().sum::<f32>() / c;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / c;
    let rstd = 1.0 / (var + ln.eps as f32).sqrt();
    for j in 0..x.len() {
        y[j] = (x[j] - mean) * rstd * gamma[j] + beta.map_or(0.0, |b| b[j]);
    }
    st[0] = mean;
    st[1] = rstd;
}

pub fn forward(
    ln: &LayerNorm,
    x: &[f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    y: &mut [f32],
    stats: &mut [f32],
) {
    let c = ln.c;
    y.par_chunks_mut(c)
        .zip(stats.par_chunks_mut(2))
        .zip(x.par_chunks(c))
        .for_each(|((y, st), x)| normalise_row(ln, x, gamma, beta, y, st));
}

/// The fused form: sum = a + b, then the norm of sum, in one pass over each row.
#[allow(clippy::too_many_arguments)]
pub fn residual_forward(
    ln: &LayerNorm,
    a: &[f32],
    b: &[f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    sum: &mut [f32],
    y: &mut [f32],
    stats: &mut [f32],
) {
    let c = ln.c;
    sum.par_chunks_mut(c)
        .zip(y.par_chunks_mut(c))
        .zip(stats.par_chunks_mut(2))
        .zip(a.par_chunks(c).zip(b.par_chunks(c)))
        .for_each(|(((s, y), st), (a, b))| {
            for j in 0..c {
                s[j] = a[j] + b[j];
            }
            normalise_row(ln, s, gamma, beta, y, st);
        });
}

/// Rows per task in the backward: each task also sums its rows' dγ and dβ, and the per-task
/// partial sums (2C floats each) are added at the end.
const ROWS: usize = 64;

#[allow(clippy::too_many_arguments)]
pub fn backward(
    ln: &LayerNorm,
    x: &[f32],
    stats: &[f32],
    gamma: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: Option<&mut [f32]>,
) {
    let c = ln.c;
    let cf = c as f32;
    let partial = dx
        .par_chunks_mut(ROWS * c)
        .zip(x.par_chunks(ROWS * c).zip(dy.par_chunks(ROWS * c)))
        .zip(stats.par_chunks(ROWS * 2))
        .map(|((dx, (x, dy)), st)| {
            let mut sums = vec![0.0f32; 2 * c];
            for r in 0..dx.len() / c {
                let (mean, rstd) = (st[2 * r], st[2 * r + 1]);
                let (x, dy, dx) = (&x[r * c..][..c], &dy[r * c..][..c], &mut dx[r * c..][..c]);
                let (mut mean_dn, mut mean_dn_xhat) = (0.0f32, 0.0f32);
                for j in 0..c {
                    let dn = gamma[j] * dy[j];
                    mean_dn += dn;
                    mean_dn_xhat += dn * (x[j] - mean) * rstd;
                }
                mean_dn /= cf;
                mean_dn_xhat /= cf;
                for j in 0..c {
                    let xhat = (x[j] - mean) * rstd;
                    let d = rstd * (gamma[j] * dy[j] - mean_dn - xhat * mean_dn_xhat);
                    dx[j] = if ln.accumulate { dx[j] + d } else { d };
                    sums[j] += dy[j] * xhat;
                    sums[c + j] += dy[j];
                }
            }
            sums
        })
        .reduce(
            || vec![0.0f32; 2 * c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    dgamma.copy_from_slice(&partial[..c]);
    if let Some(db) = dbeta {
        db.copy_from_slice(&partial[c..]);
    }
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, ln: &LayerNorm) -> Result<(), BackendError> {
    let io: LayerNormIo = cx.call.operands(ln)?;
    let (x, gamma, beta) = (cx.f32(&io.x)?, cx.f32(&io.gamma)?, cx.f32_opt(&io.beta)?);
    match (&io.add, &io.sum) {
        (Some(add), Some(sum)) => {
            let add = cx.f32(add)?;
            let [sum, y, stats] = cx.outs.f32s([sum, &io.y, &io.stats])?;
            residual_forward(ln, x, add, gamma, beta, sum, y, stats);
        }
        _ => {
            let [y, stats] = cx.outs.f32s([&io.y, &io.stats])?;
            forward(ln, x, gamma, beta, y, stats);
        }
    }
    Ok(())
}

pub(crate) fn exec_backward(cx: &mut Exec<'_>, ln: &LayerNorm) -> Result<(), BackendError> {
    let io: LayerNormBackwardIo = cx.call.operands(ln)?;
    let (x, stats) = (cx.f32(&io.x)?, cx.f32(&io.stats)?);
    let (gamma, dy) = (cx.f32(&io.gamma)?, cx.f32(&io.dy)?);
    match &io.dbeta {
        Some(dbeta) => {
            let [dx, dg, db] = cx.outs.f32s([&io.dx, &io.dgamma, dbeta])?;
            backward(ln, x, stats, gamma, dy, dx, dg, Some(db));
        }
        None => {
            let [dx, dg] = cx.outs.f32s([&io.dx, &io.dgamma])?;
            backward(ln, x, stats, gamma, dy, dx, dg, None);
        }
    }
    Ok(())
}
