//! Take-last's dispatch: a copy of one row per sequence, for which the reference is the fast path.

use crate::exec::Exec;
use tperf_core::backend::BackendError;
use tperf_core::ops::take_last::{
    take_last, take_rows, TakeLast, TakeLastIo, TakeRows, TakeRowsIo,
};

pub(crate) fn exec(cx: &mut Exec<'_>, t: &TakeLast) -> Result<(), BackendError> {
    let io: TakeLastIo = cx.call.operands(t)?;
    take_last(t, &cx.f32(&io.x)?, cx.outs.f32(&io.last)?);
    Ok(())
}

pub(crate) fn exec_rows(cx: &mut Exec<'_>, t: &TakeRows) -> Result<(), BackendError> {
    let io: TakeRowsIo = cx.call.operands(t)?;
    let (x, rows) = (&cx.f32(&io.x)?, cx.i32(&io.rows)?);
    cx.check_len("rows", rows.len(), t.s)?;
    let n = x.len() / t.c.max(1);
    if let Some(&bad) = rows.iter().take(t.s).find(|&&r| r < 0 || r as usize >= n) {
        return Err(cx.invalid(format!("row {bad} is outside the {n} rows")));
    }
    take_rows(t, x, rows, cx.outs.f32(&io.out)?);
    Ok(())
}
