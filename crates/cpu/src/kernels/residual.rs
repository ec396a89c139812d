//! y = a + b in parallel chunks.

use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::ops::residual::{ResidualAdd, ResidualAddIo};

const CHUNK: usize = 1 << 14;

pub fn forward(a: &[f32], b: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                *y = a + b;
            }
        });
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, r: &ResidualAdd) -> Result<(), BackendError> {
    let io: ResidualAddIo = cx.call.operands(r)?;
    if io.sum.id == io.a.id {
        // In place (a += b): `a` is the output buffer.
        let b = &cx.f32(&io.b)?;
        cx.check_len("b", b.len(), io.sum.numel() as usize)?;
        let sum = cx.outs.f32(&io.sum)?;
        sum.par_iter_mut()
            .zip(b.par_iter())
            .for_each(|(s, &b)| *s += b);
        return Ok(());
    }
    forward(&cx.f32(&io.a)?, &cx.f32(&io.b)?, cx.outs.f32(&io.sum)?);
    Ok(())
}
