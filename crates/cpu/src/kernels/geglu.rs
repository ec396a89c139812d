//! GeGLU over rows in parallel: the gated-unit kernel of kernels/swiglu.rs with GELU.

use super::swiglu::{gated_backward, gated_forward};
use crate::exec::Exec;
use tperf_core::backend::BackendError;
use tperf_core::ops::activation::ActivationKind;
use tperf_core::ops::geglu::{GeGlu, GeGluBackwardIo, GeGluIo};

pub fn forward(s: &GeGlu, h: &[f32], y: &mut [f32]) {
    gated_forward(ActivationKind::Gelu, s.f, h, y);
}

pub fn backward(s: &GeGlu, h: &[f32], dy: &[f32], dh: &mut [f32]) {
    gated_backward(ActivationKind::Gelu, s.f, h, dy, dh);
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, s: &GeGlu) -> Result<(), BackendError> {
    let io: GeGluIo = cx.call.operands(s)?;
    forward(s, &cx.f32(&io.h)?, cx.outs.f32(&io.g)?);
    Ok(())
}

pub(crate) fn exec_backward(cx: &mut Exec<'_>, s: &GeGlu) -> Result<(), BackendError> {
    let io: GeGluBackwardIo = cx.call.operands(s)?;
    backward(s, &cx.f32(&io.h)?, &cx.f32(&io.dg)?, cx.outs.f32(&io.dh)?);
    Ok(())
}
