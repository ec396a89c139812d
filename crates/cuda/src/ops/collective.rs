//! Collectives over NCCL: the data plane of a data-parallel run on GPUs. The rank group's host
//! channel (`tperf_core::comm::Communicator`, TCP between processes) only hands rank 0's NCCL
//! unique id to the others; gradients move GPU to GPU through NCCL's rings.
//!
//! A bucket is one NCCL group call: one all-reduce per tensor of the bucket between
//! `ncclGroupStart` and `ncclGroupEnd`, which NCCL fuses into one launch. The collectives run
//! on the backend's one stream, in order with the compute: correct, but the backward does not
//! overlap them yet (the schedule already issues them on `Stream::Comm` with the waits a second
//! stream needs).
//!
//! ZeRO-1 shards a tensor into contiguous runs of ⌈n/W⌉ ([`tperf_core::comm::shard_range`]),
//! which NCCL's reduce-scatter and all-gather cannot take in place when W does not divide n
//! (they want W equal parts of one buffer). So a tensor's reduce-scatter is W `ncclReduce`s,
//! rank r's run rooted at rank r, and its all-gather W `ncclBroadcast`s, rank r's run from
//! rank r, all in place and in the bucket's one group call: each moves the bytes a ring
//! reduce-scatter (all-gather) would, (W−1)/W of the tensor per rank, in W launches' worth of
//! latency where the ring needs one — negligible beside the 25 MiB buckets.

use crate::backend::{device_err, unsupported, CudaBackend};
use cudarc::nccl::{result as nccl, sys as nccl_sys};
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::comm::{shard_range, Communicator, Reduce};
use tperf_core::dtype::DType;
use tperf_core::ops::collective::{Collective, CollectiveKind};

/// An NCCL communicator of this process's GPU in a group of `world` ranks.
pub struct Nccl {
    comm: nccl_sys::ncclComm_t,
    rank: usize,
    world: usize,
}

// SAFETY: an ncclComm_t may be used from any thread as long as calls on it are not concurrent;
// the backend that owns it is used by one thread at a time (`&mut self`).
unsafe impl Send for Nccl {}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: `comm` came from ncclCommInitRank and is destroyed once, here.
        let _ = unsafe { nccl::comm_destroy(self.comm) };
    }
}

fn nccl_err(during: &str) -> impl Fn(nccl::NcclError) -> BackendError + '_ {
    move |e| {
        device_err(format!(
            "NCCL {during}: {e:?} (is libnccl.so.2 on the loader path?)"
        ))
    }
}

impl CudaBackend {
    /// Joins this backend's GPU to the NCCL group of `group`'s ranks: rank 0 creates the unique
    /// id and `group` broadcasts it, then every rank initialises its communicator (a collective
    /// call: it returns once all ranks have joined).
    pub fn join_nccl(&mut self, group: &dyn Communicator) -> Result<(), BackendError> {
        let mut id = [0u8; 128];
        if group.rank() == 0 {
            let uid = nccl::get_uniqueid().map_err(nccl_err("creating the unique id"))?;
            for (b, c) in id.iter_mut().zip(uid.internal.iter()) {
                *b = *c as u8;
            }
        }
        group
            .broadcast(&mut id)
            .map_err(|e| device_err(format!("handing out the NCCL id: {e}")))?;
        let mut uid = nccl_sys::ncclUniqueId { internal: [0; 128] };
        for (c, b) in uid.internal.iter_mut().zip(id.iter()) {
            *c = *b as ::core::ffi::c_char;
        }
        let mut comm = std::ptr::null_mut();
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(|e| device_err(format!("binding the context for NCCL: {e:?}")))?;
        // SAFETY: `comm` is written by NCCL; the id is the one every rank received.
        unsafe { nccl::comm_init_rank(&mut comm, group.world() as i32, uid, group.rank() as i32) }
            .map_err(nccl_err("joining the group"))?;
        self.nccl = Some(Nccl {
            comm,
            rank: group.rank(),
            world: group.world(),
        });
        Ok(())
    }

    /// Runs the optimizer ops of a ZeRO-1 schedule (GradNorm, AdamW) as rank `rank` of `world`
    /// would, without an NCCL group: the per-shard kernels on one GPU, for tests (the
    /// collectives still need the group, and refuse without it).
    pub fn run_optimizer_shard_of(&mut self, rank: usize, world: usize) {
        self.shard_of = Some((rank, world));
    }

    /// This GPU's rank among the `shards` an optimizer op is split over (0 when it is not).
    pub(crate) fn shard_rank(&self, call: &OpCall, shards: usize) -> Result<usize, BackendError> {
        if shards <= 1 {
            return Ok(0);
        }
        if let (None, Some((rank, world))) = (&self.nccl, self.shard_of) {
            if world == shards && rank < world {
                return Ok(rank);
            }
        }
        match &self.nccl {
            Some(n) if n.world == shards => Ok(n.rank),
            Some(n) => Err(unsupported(
                call,
                format!(
                    "the schedule shards the optimizer over {shards} ranks but NCCL has {}",
                    n.world
                ),
            )),
            None => Err(unsupported(
                call,
                "a ZeRO-1 optimizer step needs its NCCL group (`tperf train --gpus N --zero1`)",
            )),
        }
    }

    pub(crate) fn collective(&mut self, call: &OpCall, c: &Collective) -> Result<(), BackendError> {
        let Some(n) = &self.nccl else {
            return Err(unsupported(
                call,
                "this backend runs one rank alone; a data-parallel step needs its NCCL group \
                 (`tperf train --gpus N`)",
            ));
        };
        if n.world != c.world {
            return Err(unsupported(
                call,
                format!(
                    "the schedule was built for {} ranks but NCCL has {}",
                    c.world, n.world
                ),
            ));
        }
        let op = match c.reduce {
            Reduce::Sum => nccl_sys::ncclRedOp_t::ncclSum,
            Reduce::Mean => nccl_sys::ncclRedOp_t::ncclAvg,
        };
        let (comm, world) = (n.comm, n.world);
        let stream = self.gpu.cu_stream() as nccl_sys::cudaStream_t;
        let mut parts = Vec::with_capacity(call.outputs.len());
        for t in &call.outputs {
            let b = self.buf(t)?;
            let dt = match b.dtype {
                DType::F32 => nccl_sys::ncclDataType_t::ncclFloat32,
                DType::Bf16 => nccl_sys::ncclDataType_t::ncclBfloat16,
                DType::F16 => nccl_sys::ncclDataType_t::ncclFloat16,
                DType::I32 => nccl_sys::ncclDataType_t::ncclInt32,
            };
            parts.push((b.block.ptr, b.numel as usize, dt, b.dtype.size_bytes()));
        }
        nccl::group_start().map_err(nccl_err("group start"))?;
        let mut result = Ok(());
        'tensors: for (ptr, count, dt, width) in parts {
            if c.kind == CollectiveKind::AllReduce {
                let p = ptr as *mut ::core::ffi::c_void;
                // SAFETY: `p` is a live device buffer of `count` elements of `dt` on this GPU;
                // the reduction is in place, which NCCL allows; `comm` and `stream` belong to
                // this GPU.
                let r = unsafe { nccl::all_reduce(p, p, count, dt, op, comm, stream) };
                if let Err(e) = r {
                    result = Err(nccl_err("all_reduce")(e));
                    break;
                }
                continue;
            }
            for root in 0..world {
                let shard = shard_range(count, root, world);
                if shard.is_empty() {
                    continue;
                }
                let p = (ptr + shard.start as u64 * width) as *mut ::core::ffi::c_void;
                // SAFETY: `p` points at `shard.len()` elements of `dt` inside the live device
                // buffer of `count` elements; every rank computes the same runs, so the roots
                // and counts match across the group; in place, which NCCL allows.
                let r = unsafe {
                    if c.kind == CollectiveKind::ReduceScatter {
                        nccl::reduce(p, p, shard.len(), dt, op, root as i32, comm, stream)
                    } else {
                        nccl::broadcast(p, p, shard.len(), dt, root as i32, comm, stream)
                    }
                };
                if let Err(e) = r {
                    result = Err(nccl_err(c.kind.name())(e));
                    break 'tensors;
                }
            }
        }
        // The group is closed even after a failed enqueue, so NCCL's state stays consistent.
        let ended = nccl::group_end().map_err(nccl_err("group end"));
        result.and(ended.map(|_| ()))
    }
}
