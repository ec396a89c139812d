//! The KV-cache appends (kernels/kv_cache.cu): the new tokens' keys and values out of qkv, into
//! the contiguous (B, H_kv, capacity, D) cache at the step's position (a replayed decode step
//! reads it from device memory), or into the paged pools at each packed row's slot.

use crate::backend::{invalid, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::kv_cache::{KvAppend, KvAppendIo, PagedKvAppend, PagedKvAppendIo};
use tperf_core::tensor::Tensor;

const SRC: &str = "kv_cache";

impl CudaBackend {
    pub(crate) fn kv_append(&mut self, call: &OpCall, k: &KvAppend) -> Result<(), BackendError> {
        let io: KvAppendIo = call.operands(k)?;
        let capacity = io.k_cache.shape.get(2).copied().unwrap_or(0);
        check_kv_room(call, k, &io.k_cache)?;
        let rows = (k.b * k.t_new) as u64;
        let width = io.qkv.numel() / rows.max(1);
        let h_q = (width / k.d.max(1) as u64).saturating_sub(2 * k.h_kv as u64) as usize;
        let cache = (k.b * k.h_kv * capacity * k.d) as u64;
        let args = [
            self.arg(call, &io.qkv, rows * width)?,
            self.arg(call, &io.k_cache, cache)?,
            self.arg(call, &io.v_cache, cache)?,
            Arg::I32(k.b as i32),
            Arg::I32(k.t_new as i32),
            Arg::I32(h_q as i32),
            Arg::I32(k.h_kv as i32),
            Arg::I32(k.d as i32),
            Arg::I32(k.pos as i32),
            Arg::I32(capacity as i32),
            Arg::Ptr(self.op_scalars),
        ];
        self.launch_1d(call, SRC, "kv_append", rows * (k.h_kv * k.d) as u64, &args)
    }

    /// Every host-written slot lies in the pools.
    pub(crate) fn check_paged_kv_append(
        &self,
        call: &OpCall,
        k: &PagedKvAppend,
        io: &PagedKvAppendIo,
    ) -> Result<(), BackendError> {
        let blocks = io.k_pool.shape.first().copied().unwrap_or(0);
        let capacity = (blocks * k.block_size) as i64;
        self.check_range(call, &io.slots, (0, capacity), "slot")
    }

    pub(crate) fn paged_kv_append(
        &mut self,
        call: &OpCall,
        k: &PagedKvAppend,
    ) -> Result<(), BackendError> {
        let io: PagedKvAppendIo = call.operands(k)?;
        self.check_paged_kv_append(call, k, &io)?;
        let n = k.n as u64;
        let width = ((k.h_q + 2 * k.h_kv) * k.d) as u64;
        let pool = io.k_pool.numel();
        let args = [
            self.arg(call, &io.qkv, n * width)?,
            self.arg(call, &io.slots, n)?,
            self.arg(call, &io.k_pool, pool)?,
            self.arg(call, &io.v_pool, pool)?,
            Arg::I64(n as i64),
            Arg::I32(k.h_q as i32),
            Arg::I32(k.h_kv as i32),
            Arg::I32(k.d as i32),
            Arg::I32(k.block_size as i32),
        ];
        self.launch_1d(
            call,
            SRC,
            "paged_kv_append",
            n * (k.h_kv * k.d) as u64,
            &args,
        )
    }
}

/// The KV cache (`k_cache`, shaped as its V twin) has room for the appended positions.
pub(crate) fn check_kv_room(
    call: &OpCall,
    k: &KvAppend,
    k_cache: &Tensor,
) -> Result<(), BackendError> {
    let capacity = k_cache.shape.get(2).copied().unwrap_or(0);
    if k.pos + k.t_new > capacity {
        return Err(invalid(call, format!(
            "appending {} positions at {} overflows the KV cache of {capacity}: allocate a larger cache",
            k.t_new, k.pos
        )));
    }
    Ok(())
}
