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
    forward_rows(ln.c, 2, x, y, stats, |x, y, st| {
        normalise_row(ln, x, gamma, beta, y, st)
    });
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
    residual_rows(ln.c, 2, a, b, sum, y, stats, |s, y, st| {
        normalise_row(ln, s, gamma, beta, y, st)
    });
}

/// Rows per task in the backward: each task also sums its rows' dγ (and dβ), and the per-task
/// partial sums are added at the end.
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
    let partial = backward_tasks(c, 2, 2, x, dy, dx, stats, |x, dy, dx, st, sums| {
        let (mean, rstd) = (st[0], st[1]);
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
    });
    dgamma.copy_from_slice(&partial[..c]);
    if let Some(db) = dbeta {
        db.copy_from_slice(&partial[c..]);
    }
}

// The parallel skeleton LayerNorm and RMSNorm share; each norm supplies its row's arithmetic.

/// The forward's row loop: `norm(x, y, stats)` on each row of c and its `width` statistics,
/// rows in parallel.
pub(super) fn forward_rows(
    c: usize,
    width: usize,
    x: &[f32],
    y: &mut [f32],
    stats: &mut [f32],
    norm: impl Fn(&[f32], &mut [f32], &mut [f32]) + Sync + Send,
) {
    y.par_chunks_mut(c)
        .zip(stats.par_chunks_mut(width))
        .zip(x.par_chunks(c))
        .for_each(|((y, st), x)| norm(x, y, st));
}

/// The fused form's row loop: each row's sum = a + b is written, then normalised by `norm` as
/// in `forward_rows`, in one pass over the row.
#[allow(clippy::too_many_arguments)]
pub(super) fn residual_rows(
    c: usize,
    width: usize,
    a: &[f32],
    b: &[f32],
    sum: &mut [f32],
    y: &mut [f32],
    stats: &mut [f32],
    norm: impl Fn(&[f32], &mut [f32], &mut [f32]) + Sync + Send,
) {
    sum.par_chunks_mut(c)
        .zip(y.par_chunks_mut(c))
        .zip(stats.par_chunks_mut(width))
        .zip(a.par_chunks(c).zip(b.par_chunks(c)))
        .for_each(|(((s, y), st), (a, b))| {
            for j in 0..c {
                s[j] = a[j] + b[j];
            }
            norm(s, y, st);
        });
}

/// The backward's tasks of ROWS rows: `row(x, dy, dx, stats, sums)` on each row of c (its
/// `width` statistics), adding the row's parameter gradients into its task's `sums` (`per_c`
/// vectors of c: dγ, then dβ for LayerNorm); returns the tasks' sums added together.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_tasks(
    c: usize,
    width: usize,
    per_c: usize,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    stats: &[f32],
    row: impl Fn(&[f32], &[f32], &mut [f32], &[f32], &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    dx.par_chunks_mut(ROWS * c)
        .zip(x.par_chunks(ROWS * c).zip(dy.par_chunks(ROWS * c)))
        .zip(stats.par_chunks(ROWS * width))
        .map(|((dx, (x, dy)), st)| {
            let mut sums = vec![0.0f32; per_c * c];
            for r in 0..dx.len() / c {
                let (x, dy, dx) = (&x[r * c..][..c], &dy[r * c..][..c], &mut dx[r * c..][..c]);
                row(x, dy, dx, &st[r * width..][..width], &mut sums);
            }
            sums
        })
        .reduce(
            || vec![0.0f32; per_c * c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, ln: &LayerNorm) -> Result<(), BackendError> {
    let io: LayerNormIo = cx.call.operands(ln)?;
    let (x, gamma, beta_data) = (&cx.f32(&io.x)?, &cx.f32(&io.gamma)?, cx.f32_opt(&io.beta)?);
    let beta = beta_data.as_deref();
    match (&io.add, &io.sum) {
        (Some(add), Some(sum)) => {
            let add = &cx.f32(add)?;
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
    let (x, stats) = (&cx.f32(&io.x)?, &cx.f32(&io.stats)?);
    let (gamma, dy) = (&cx.f32(&io.gamma)?, &cx.f32(&io.dy)?);
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
