//! SwiGLU over rows in parallel: g is the first F columns of a row of h, u the second F.

use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::ops::activation::{act_derivative, act_forward, ActivationKind};
use tperf_core::ops::swiglu::{SwiGlu, SwiGluBackwardIo, SwiGluIo};

pub fn forward(s: &SwiGlu, h: &[f32], y: &mut [f32]) {
    gated_forward(ActivationKind::Silu, s.f, h, y);
}

pub fn backward(s: &SwiGlu, h: &[f32], dy: &[f32], dh: &mut [f32]) {
    gated_backward(ActivationKind::Silu, s.f, h, dy, dh);
}

/// A gated linear unit over rows of h (2F wide: gate, then up) in parallel; SwiGLU and GeGLU
/// (kernels/geglu.rs) are this with SiLU and GELU.
pub(crate) fn gated_forward(kind: ActivationKind, f: usize, h: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(f)
        .zip(h.par_chunks(2 * f))
        .for_each(|(y, h)| {
            let (g, u) = h.split_at(f);
            for j in 0..f {
                y[j] = act_forward(kind, g[j]) * u[j];
            }
        });
}

pub(crate) fn gated_backward(
    kind: ActivationKind,
    f: usize,
    h: &[f32],
    dy: &[f32],
    dh: &mut [f32],
) {
    dh.par_chunks_mut(2 * f)
        .zip(h.par_chunks(2 * f).zip(dy.par_chunks(f)))
        .for_each(|(dh, (h, dy))| {
            let (g, u) = h.split_at(f);
            let (dg, du) = dh.split_at_mut(f);
            for j in 0..f {
                dg[j] = dy[j] * u[j] * act_derivative(kind, g[j]);
                du[j] = dy[j] * act_forward(kind, g[j]);
            }
        });
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, s: &SwiGlu) -> Result<(), BackendError> {
    let io: SwiGluIo = cx.call.operands(s)?;
    forward(s, &cx.f32(&io.h)?, cx.outs.f32(&io.g)?);
    Ok(())
}

pub(crate) fn exec_backward(cx: &mut Exec<'_>, s: &SwiGlu) -> Result<(), BackendError> {
    let io: SwiGluBackwardIo = cx.call.operands(s)?;
    backward(s, &cx.f32(&io.h)?, &cx.f32(&io.dg)?, cx.outs.f32(&io.dh)?);
    Ok(())
}
