//! Elementwise activations in parallel chunks.

use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::ops::activation::{
    act_derivative, act_forward, Activation, ActivationBackwardIo, ActivationIo, ActivationKind,
};

/// Elements per rayon task: big enough that scheduling costs nothing beside the arithmetic.
const CHUNK: usize = 1 << 14;

pub fn forward(kind: ActivationKind, x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            y.iter_mut()
                .zip(x)
                .for_each(|(y, &x)| *y = act_forward(kind, x))
        });
}

pub fn backward(kind: ActivationKind, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| {
            for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                *d = g * act_derivative(kind, x);
            }
        });
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, a: &Activation) -> Result<(), BackendError> {
    let io: ActivationIo = cx.call.operands(a)?;
    forward(a.kind, &cx.f32(&io.x)?, cx.outs.f32(&io.y)?);
    Ok(())
}

pub(crate) fn exec_backward(cx: &mut Exec<'_>, a: &Activation) -> Result<(), BackendError> {
    let io: ActivationBackwardIo = cx.call.operands(a)?;
    backward(
        a.kind,
        &cx.f32(&io.x)?,
        &cx.f32(&io.dy)?,
        cx.outs.f32(&io.dx)?,
    );
    Ok(())
}
