//! Cast's dispatch: the reference (a rounding pass) is already the fast path.

use crate::exec::Exec;
use tperf_core::backend::BackendError;
use tperf_core::ops::cast::{cast_forward, Cast, CastIo};

pub(crate) fn exec(cx: &mut Exec<'_>, c: &Cast) -> Result<(), BackendError> {
    let io: CastIo = cx.call.operands(c)?;
    for (src, dst) in io.src.iter().zip(&io.dst) {
        cast_forward(dst.dtype, &cx.f32(src)?, cx.outs.f32(dst)?);
    }
    Ok(())
}
