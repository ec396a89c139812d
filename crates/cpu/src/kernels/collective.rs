//! Collectives of a data-parallel step over the rank group the backend was given
//! ([`crate::CpuBackend::with_communicator`]). A bucket's gradients are reduced as one
//! message, as NCCL and DDP do: one exchange per bucket, not per tensor.

use crate::exec::Exec;
use tperf_core::backend::BackendError;
use tperf_core::ops::collective::{Collective, CollectiveKind};

/// The op's dispatch: an all-reduce in place over the call's tensors (its outputs, which are its
/// inputs). ZeRO-1's reduce-scatter and all-gather are modelled, not yet run.
pub(crate) fn exec(cx: &mut Exec<'_>, c: &Collective) -> Result<(), BackendError> {
    let Some(comm) = cx.comm else {
        return Err(cx.unsupported(
            "this backend runs one rank alone; a data-parallel step needs the rank group \
             (CpuBackend::with_communicator, or `tperf train --ranks N`)",
        ));
    };
    if comm.world() != c.world {
        return Err(cx.invalid(format!(
            "the schedule was built for {} ranks but the group has {}",
            c.world,
            comm.world()
        )));
    }
    if c.kind != CollectiveKind::AllReduce {
        return Err(cx.unsupported(format!(
            "{} (ZeRO-1) is modelled but not yet executed; train with DDP (no --zero1)",
            c.kind.name()
        )));
    }
    let tensors = cx.call.outputs.clone();
    let mut message = Vec::with_capacity(c.numel as usize);
    for t in &tensors {
        message.extend_from_slice(cx.outs.f32(t)?);
    }
    comm.all_reduce(&mut message, c.reduce)
        .map_err(|e| cx.invalid(e.to_string()))?;
    let mut at = 0;
    for t in &tensors {
        let out = cx.outs.f32(t)?;
        out.copy_from_slice(&message[at..at + out.len()]);
        at += out.len();
    }
    Ok(())
}
