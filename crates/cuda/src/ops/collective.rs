//! Collectives over NCCL: the data plane of a data-parallel run on GPUs. The rank group's host
//! channel (`tperf_core::comm::Communicator`, TCP between processes) only hands rank 0's NCCL
//! unique id to the others; gradients move GPU to GPU through NCCL's rings.
//!
//! A bucket is one NCCL group call: one all-reduce per tensor of the bucket between
//! `ncclGroupStart` and `ncclGroupEnd`, which NCCL fuses into one launch.
//!
//! Streams: a collective the schedule issues on `Stream::Comm` runs on a second CUDA stream
//! ([`CommStream`]), after an event recorded on the compute stream when it is issued (so after
//! the op that completed its bucket's last gradient), while the backward goes on; an op whose
//! `waits` name `Stream::Comm` (the optimizer's norm, AdamW after the norm's all-reduce) makes
//! the compute stream wait on an event recorded on the comm stream. The step's end and every
//! host transfer join the comm stream too, so a captured graph is joined (the fork/join of
//! events is how stream capture follows a second stream) and the host never reads a tensor a
//! collective is still writing. Collectives touch only persistent tensors (gradients, weights)
//! and the norm scalar the optimizer frees after waiting, so the caching allocator, which orders
//! reuse on the compute stream, never hands out a block the comm stream still uses. While ops
//! are timed one by one (`tperf profile`) collectives stay on the compute stream, where an
//! op's events bracket its work.
//!
//! ZeRO-1 shards a tensor into contiguous runs of ⌈n/W⌉ ([`tperf_core::comm::shard_range`]),
//! which NCCL's reduce-scatter and all-gather cannot take in place when W does not divide n
//! (they want W equal parts of one buffer). So a tensor's reduce-scatter is W `ncclReduce`s,
//! rank r's run rooted at rank r, and its all-gather W `ncclBroadcast`s, rank r's run from
//! rank r, all in place and in the bucket's one group call: each moves the bytes a ring
//! reduce-scatter (all-gather) would, (W−1)/W of the tensor per rank, in W launches' worth of
//! latency where the ring needs one — negligible beside the 25 MiB buckets.

use crate::backend::{device_err, unsupported, CudaBackend};
use crate::ops::watchdog::{Watchdog, WatchdogError};
use cudarc::driver::{result as cu, sys};
use cudarc::nccl::{result as nccl, sys as nccl_sys};
use std::sync::Arc;
use tperf_core::backend::{BackendError, OpCall, Stream};
use tperf_core::comm::{shard_range, Communicator, Reduce};
use tperf_core::dtype::DType;
use tperf_core::ops::collective::{Collective, CollectiveKind};

/// The communication stream and the two events that order it against the compute stream.
pub(crate) struct CommStream {
    stream: sys::CUstream,
    /// Recorded on the compute stream before a collective; the comm stream waits on it.
    fork: sys::CUevent,
    /// Recorded on the comm stream; the compute stream waits on it.
    join: sys::CUevent,
    /// Collectives issued since the compute stream last waited for the comm stream.
    pending: bool,
}

impl CommStream {
    fn new() -> Result<Self, BackendError> {
        let err = |what: &'static str| move |e| device_err(format!("{what}: {e:?}"));
        let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking)
            .map_err(err("creating the communication stream"))?;
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
        let fork = cu::event::create(flags).map_err(err("creating an event"))?;
        let join = cu::event::create(flags).map_err(err("creating an event"))?;
        Ok(CommStream {
            stream,
            fork,
            join,
            pending: false,
        })
    }
}

impl Drop for CommStream {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; the backend synchronises its GPU before
        // dropping its NCCL state.
        unsafe {
            let _ = cu::stream::synchronize(self.stream);
            let _ = cu::event::destroy(self.fork);
            let _ = cu::event::destroy(self.join);
            let _ = cu::stream::destroy(self.stream);
        }
    }
}

/// An NCCL communicator of this process's GPU in a group of `world` ranks.
pub struct Nccl {
    comm: nccl_sys::ncclComm_t,
    rank: usize,
    world: usize,
    /// Dropped before the communicator (declared after it would drop after).
    streams: Option<CommStream>,
    /// Aborts the communicator when a collective hangs (a world of more than one).
    watchdog: Option<Watchdog>,
}

// SAFETY: an ncclComm_t may be used from any thread as long as calls on it are not concurrent;
// the backend that owns it is used by one thread at a time (`&mut self`).
unsafe impl Send for Nccl {}

impl Drop for Nccl {
    fn drop(&mut self) {
        self.streams = None;
        let aborted = self.watchdog.as_ref().is_some_and(Watchdog::aborted);
        self.watchdog = None;
        if aborted {
            // ncclCommAbort freed it.
            return;
        }
        // SAFETY: `comm` came from ncclCommInitRank and is destroyed once, here, after the
        // watchdog thread that could abort it has ended.
        let _ = unsafe { nccl::comm_destroy(self.comm) };
    }
}

fn watchdog_err(e: WatchdogError) -> BackendError {
    device_err(e.to_string())
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
        // The comm stream overlaps the collectives with the compute, and the watchdog aborts a
        // collective a dead peer never completes (made for a world of one too, which issues no
        // collectives in a schedule but lets one GPU test both).
        let watchdog = Watchdog::for_nccl(Arc::clone(&self.gpu.ctx), comm, group.rank())
            .map_err(watchdog_err)?;
        let (streams, watchdog) = (Some(CommStream::new()?), Some(watchdog));
        self.nccl = Some(Nccl {
            comm,
            rank: group.rank(),
            world: group.world(),
            streams,
            watchdog,
        });
        Ok(())
    }

    fn watchdog(&self) -> Option<&Watchdog> {
        self.nccl.as_ref().and_then(|n| n.watchdog.as_ref())
    }

    /// Work that may wait on the peers was launched on `stream` (a replayed step holding
    /// collectives; the launch itself does not block): the watchdog times it until it finishes.
    /// Not while a step is being captured (nothing runs then; the captured graph's launch is
    /// watched).
    pub(crate) fn watch_collectives(&self, stream: sys::CUstream) -> Result<(), BackendError> {
        match self.watchdog() {
            Some(dog) if !self.capturing() => dog
                .arm()
                .and_then(|armed| armed.issued(stream))
                .map_err(watchdog_err),
            _ => Ok(()),
        }
    }

    /// An error naming the rank and the timeout when the watchdog aborted the NCCL group: what
    /// the device computed since (a collective cut short) must not be read as a result.
    pub(crate) fn check_watchdog(&self) -> Result<(), BackendError> {
        self.watchdog()
            .map_or(Ok(()), |dog| dog.check().map_err(watchdog_err))
    }

    /// The compute stream waits for every collective issued so far (nothing when none is
    /// pending): before an op that `waits` on `Stream::Comm`, at a step's end, before a host
    /// transfer.
    pub(crate) fn join_comm(&mut self) -> Result<(), BackendError> {
        let compute = self.gpu.cu_stream();
        let Some(cs) = self.nccl.as_mut().and_then(|n| n.streams.as_mut()) else {
            return Ok(());
        };
        if !cs.pending {
            return Ok(());
        }
        // SAFETY: both streams and the event belong to this context; recording and waiting
        // only enqueue.
        unsafe {
            cu::event::record(cs.join, cs.stream)
                .and_then(|()| {
                    cu::stream::wait_event(
                        compute,
                        cs.join,
                        sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                    )
                })
                .map_err(|e| device_err(format!("joining the communication stream: {e:?}")))?;
        }
        cs.pending = false;
        Ok(())
    }

    /// Joins the comm stream when `call` waits on it.
    pub(crate) fn join_comm_for(&mut self, call: &OpCall) -> Result<(), BackendError> {
        if call.waits.contains(&Stream::Comm) {
            self.join_comm()?;
        }
        Ok(())
    }

    /// The stream `call`'s collective runs on: the comm stream (after the compute stream's
    /// work so far) when the schedule puts it there and ops are not being timed one by one.
    fn collective_stream(&mut self, call: &OpCall) -> Result<sys::CUstream, BackendError> {
        let compute = self.gpu.cu_stream();
        let timed = self.timer.is_some();
        let Some(cs) = self.nccl.as_mut().and_then(|n| n.streams.as_mut()) else {
            return Ok(compute);
        };
        if call.stream != Stream::Comm || timed {
            return Ok(compute);
        }
        // SAFETY: as in `join_comm`, the other way round.
        unsafe {
            cu::event::record(cs.fork, compute)
                .and_then(|()| {
                    cu::stream::wait_event(
                        cs.stream,
                        cs.fork,
                        sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                    )
                })
                .map_err(|e| device_err(format!("forking the communication stream: {e:?}")))?;
        }
        cs.pending = true;
        Ok(cs.stream)
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
        let stream = self.collective_stream(call)? as nccl_sys::cudaStream_t;
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
        // Armed before the group starts: the host can block on the peers inside the group (the
        // enqueue calls, and ncclGroupEnd, which connects to them on the first collectives),
        // where no stream event shows it. The guard disarms on every way out of this function.
        let capturing = self.capturing();
        let armed = match self.watchdog() {
            Some(dog) => Some(dog.arm().map_err(watchdog_err)?),
            None => None,
        };
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
        if let Err(e) = result.and(ended.map(|_| ())) {
            // A call the watchdog aborted fails with NCCL's error; the watchdog's says why.
            drop(armed);
            self.check_watchdog()?;
            return Err(e);
        }
        match armed {
            // The kernels it enqueued are timed from the arming on; a step being captured runs
            // nothing now (its replay is watched).
            Some(armed) if !capturing => {
                armed.issued(stream as sys::CUstream).map_err(watchdog_err)
            }
            _ => Ok(()),
        }
    }
}
