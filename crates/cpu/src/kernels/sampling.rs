//! Sampling's dispatch: the reference is O(V) per row (O(V + k log k) with top-k).

use crate::exec::Exec;
use tperf_core::backend::BackendError;
use tperf_core::ops::sampling::{sample, Sample, SampleIo};

pub(crate) fn exec(cx: &mut Exec<'_>, s: &Sample) -> Result<(), BackendError> {
    let io: SampleIo = cx.call.operands(s)?;
    let logits = &cx.f32(&io.logits)?;
    let calls = cx.sample_calls;
    let not_i32 = cx.unsupported("the sampled ids must be an i32 tensor");
    let ids = cx.outs.i32(&io.ids).map_err(|_| not_i32)?;
    sample(s, logits, calls, ids);
    Ok(())
}
