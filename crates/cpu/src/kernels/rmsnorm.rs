//! RMSNorm over rows in parallel.

use super::layernorm::{backward_tasks, forward_rows, residual_rows};
use crate::exec::Exec;
use tperf_core::backend::BackendError;
use tperf_core::ops::rmsnorm::{RmsNorm, RmsNormBackwardIo, RmsNormIo};

fn normalise_row(rn: &RmsNorm, x: &[f32], gamma: &[f32], y: &mut [f32], st: &mut [f32]) {
    let ms = x.iter().map(|&v| v * v).sum::<f32>() / rn.c as f32;
    let rstd = 1.0 / (ms + rn.eps as f32).sqrt();
    for j in 0..x.len() {
        y[j] = x[j] * rstd * gamma[j];
    }
    st[0] = rstd;
}

pub fn forward(rn: &RmsNorm, x: &[f32], gamma: &[f32], y: &mut [f32], stats: &mut [f32]) {
    forward_rows(rn.c, 1, x, y, stats, |x, y, st| {
        normalise_row(rn, x, gamma, y, st)
    });
}

#[allow(clippy::too_many_arguments)]
pub fn residual_forward(
    rn: &RmsNorm,
    a: &[f32],
    b: &[f32],
    gamma: &[f32],
    sum: &mut [f32],
    y: &mut [f32],
    stats: &mut [f32],
) {
    residual_rows(rn.c, 1, a, b, sum, y, stats, |s, y, st| {
        normalise_row(rn, s, gamma, y, st)
    });
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    rn: &RmsNorm,
    x: &[f32],
    stats: &[f32],
    gamma: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
) {
    let c = rn.c;
    let cf = c as f32;
    let partial = backward_tasks(c, 1, 1, x, dy, dx, stats, |x, dy, dx, st, sums| {
        let rstd = st[0];
        let mean_dn_xhat = (0..c).map(|j| gamma[j] * dy[j] * x[j] * rstd).sum::<f32>() / cf;
        for j in 0..c {
            let xhat = x[j] * rstd;
            let d = rstd * (gamma[j] * dy[j] - xhat * mean_dn_xhat);
            dx[j] = if rn.accumulate { dx[j] + d } else { d };
            sums[j] += dy[j] * xhat;
        }
    });
    dgamma.copy_from_slice(&partial);
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, rn: &RmsNorm) -> Result<(), BackendError> {
    let io: RmsNormIo = cx.call.operands(rn)?;
    let (x, gamma) = (&cx.f32(&io.x)?, &cx.f32(&io.gamma)?);
    match (&io.add, &io.sum) {
        (Some(add), Some(sum)) => {
            let add = &cx.f32(add)?;
            let [sum, y, rstd] = cx.outs.f32s([sum, &io.y, &io.rstd])?;
            residual_forward(rn, x, add, gamma, sum, y, rstd);
        }
        _ => {
            let [y, rstd] = cx.outs.f32s([&io.y, &io.rstd])?;
            forward(rn, x, gamma, y, rstd);
        }
    }
    Ok(())
}

pub(crate) fn exec_backward(cx: &mut Exec<'_>, rn: &RmsNorm) -> Result<(), BackendError> {
    let io: RmsNormBackwardIo = cx.call.operands(rn)?;
    let (x, rstd) = (&cx.f32(&io.x)?, &cx.f32(&io.rstd)?);
    let (gamma, dy) = (&cx.f32(&io.gamma)?, &cx.f32(&io.dy)?);
    let [dx, dg] = cx.outs.f32s([&io.dx, &io.dgamma])?;
    backward(rn, x, rstd, gamma, dy, dx, dg);
    Ok(())
}
