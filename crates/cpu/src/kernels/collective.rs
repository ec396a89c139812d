//! Collectives of a data-parallel step over the rank group the backend was given
//! ([`crate::CpuBackend::with_communicator`]). A bucket's tensors travel as one message, as
//! NCCL and DDP do: one exchange per bucket, not per tensor. ZeRO-1's reduce-scatter and
//! all-gather send the bucket rank-major (every rank's shard of each tensor together,
//! [`tperf_core::comm::pack_shards`]), so each rank's part is contiguous.

use crate::exec::Exec;
use tperf_core::backend::BackendError;
use tperf_core::comm::{pack_shards, shard_counts, unpack_shards, Communicator};
use tperf_core::ops::collective::{Collective, CollectiveKind};

/// The rank group of a call that needs `world` ranks.
fn group<'a>(cx: &Exec<'a>, world: usize) -> Result<&'a dyn Communicator, BackendError> {
    let Some(comm) = cx.comm else {
        return Err(cx.unsupported(
            "this backend runs one rank alone; a data-parallel step needs the rank group \
             (CpuBackend::with_communicator, or `tperf train --ranks N`)",
        ));
    };
    if comm.world() != world {
        return Err(cx.invalid(format!(
            "the schedule was built for {world} ranks but the group has {}",
            comm.world()
        )));
    }
    Ok(comm)
}

/// This rank's index among the `shards` an optimizer op is split over (0 when it is not).
pub(crate) fn shard_rank(cx: &Exec<'_>, shards: usize) -> Result<usize, BackendError> {
    if shards <= 1 {
        return Ok(0);
    }
    Ok(group(cx, shards)?.rank())
}

/// The op's dispatch, in place over the call's tensors (its outputs, which are its inputs):
/// an all-reduce of the whole bucket; a reduce-scatter that leaves each rank its shard of
/// every gradient reduced (the rest as it was); an all-gather that brings every rank the
/// others' shards.
pub(crate) fn exec(cx: &mut Exec<'_>, c: &Collective) -> Result<(), BackendError> {
    let comm = group(cx, c.world)?;
    let world = c.world;
    let tensors = cx.call.outputs.clone();
    let mut message = Vec::with_capacity(c.numel as usize);
    let mut numels = Vec::with_capacity(tensors.len());
    if c.kind == CollectiveKind::AllReduce {
        for t in &tensors {
            message.extend_from_slice(cx.outs.f32(t)?);
        }
    } else {
        let mut parts = Vec::with_capacity(tensors.len());
        for t in &tensors {
            let v = cx.outs.f32(t)?.to_vec();
            numels.push(v.len());
            parts.push(v);
        }
        let views: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        message = pack_shards(&views, world);
    }
    let counts = shard_counts(&numels, world);
    let done = match c.kind {
        CollectiveKind::AllReduce => comm.all_reduce(&mut message, c.reduce),
        CollectiveKind::ReduceScatter => comm.reduce_scatter(&mut message, &counts, c.reduce),
        CollectiveKind::AllGather => comm.all_gather(&mut message, &counts),
    };
    done.map_err(|e| cx.invalid(e.to_string()))?;
    if c.kind == CollectiveKind::AllReduce {
        let mut at = 0;
        for t in &tensors {
            let out = cx.outs.f32(t)?;
            out.copy_from_slice(&message[at..at + out.len()]);
            at += out.len();
        }
        return Ok(());
    }
    let mut parts: Vec<Vec<f32>> = numels.iter().map(|&n| vec![0.0; n]).collect();
    {
        let mut views: Vec<&mut [f32]> = parts.iter_mut().map(Vec::as_mut_slice).collect();
        unpack_shards(&message, &mut views, world);
    }
    for (t, part) in tensors.iter().zip(parts) {
        cx.outs.f32(t)?.copy_from_slice(&part);
    }
    Ok(())
}
