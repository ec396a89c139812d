//! Take-last's dispatch: a copy of one row per sequence, for which the reference is the fast path.

use crate::exec::Exec;
use tperf_core::backend::BackendError;
use tperf_core::ops::take_last::{take_last, TakeLast, TakeLastIo};

pub(crate) fn exec(cx: &mut Exec<'_>, t: &TakeLast) -> Result<(), BackendError> {
    let io: TakeLastIo = cx.call.operands(t)?;
    take_last(t, cx.f32(&io.x)?, cx.outs.f32(&io.last)?);
    Ok(())
}
