//! The caching allocator: device memory comes from cuMemAlloc once and is handed out again from
//! a free list, so a training step that allocates and frees the same activation shapes every
//! step calls the driver only in its first step (cuMemAlloc and cuMemFree synchronise the device
//! and cost tens of microseconds each).
//!
//! The allocator counts *reserved* bytes: what the driver gave us, including blocks cached for
//! reuse and the rounding to 512 bytes — what `nvidia-smi` would show, less the context. The
//! tensors' bytes at their dtype widths, which compare byte for byte with the Meta backend's
//! prediction, are the backend's [`tperf_core::ledger::Ledger`], not this.

use cudarc::driver::{result as cu, sys, DriverError};
use std::collections::BTreeMap;

/// Requests round up to this, so that every block is aligned for 16-byte vector access and
/// near-equal sizes share cached blocks.
const ROUND_BYTES: u64 = 512;

/// A cached block is reused for a request at most this many times its size, so a small tensor
/// never pins a huge block.
const MAX_REUSE_WASTE: u64 = 2;

#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub ptr: sys::CUdeviceptr,
    pub bytes: u64,
}

#[derive(Default)]
pub struct CachingAllocator {
    /// Free blocks by (size, pointer): best fit is the first at or above the request.
    free: BTreeMap<(u64, sys::CUdeviceptr), ()>,
    pub reserved_bytes: u64,
    pub peak_reserved_bytes: u64,
    pub driver_allocs: u64,
    pub driver_frees: u64,
}

impl CachingAllocator {
    pub fn round(bytes: u64) -> u64 {
        bytes.max(1).div_ceil(ROUND_BYTES) * ROUND_BYTES
    }

    /// A block of at least `bytes` (the tensor's size), from the cache or the driver. On a
    /// driver out-of-memory the cache is released and the allocation tried once more.
    pub fn alloc(&mut self, bytes: u64) -> Result<Block, DriverError> {
        let want = Self::round(bytes);
        let hit = self
            .free
            .range((want, 0)..)
            .next()
            .map(|(&k, _)| k)
            .filter(|&(size, _)| size <= want * MAX_REUSE_WASTE);
        if let Some(key) = hit {
            self.free.remove(&key);
            return Ok(Block {
                ptr: key.1,
                bytes: key.0,
            });
        }
        // SAFETY: cuMemAlloc takes only a size and hands back a fresh device pointer (or an error);
        // the block is owned by this allocator from here until `release_cache` frees it.
        let ptr = match unsafe { cu::malloc_sync(want as usize) } {
            Ok(p) => p,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                self.release_cache();
                // SAFETY: as above: a second plain allocation after the cache went back to the
                // driver.
                unsafe { cu::malloc_sync(want as usize) }?
            }
            Err(e) => return Err(e),
        };
        self.driver_allocs += 1;
        self.reserved_bytes += want;
        self.peak_reserved_bytes = self.peak_reserved_bytes.max(self.reserved_bytes);
        Ok(Block { ptr, bytes: want })
    }

    /// Returns a block to the cache. The stream is in order, so a later kernel that receives
    /// this block runs after every kernel that used it.
    pub fn free(&mut self, block: Block) {
        self.free.insert((block.bytes, block.ptr), ());
    }

    /// Gives every cached block back to the driver.
    pub fn release_cache(&mut self) {
        for ((bytes, ptr), ()) in std::mem::take(&mut self.free) {
            // SAFETY: `ptr` came from cuMemAlloc and is in the free list, so no live tensor or
            // queued kernel can still use it: a block is only in the list after `free`, and
            // cuMemFree synchronises the device first.
            if unsafe { cu::free_sync(ptr) }.is_ok() {
                self.reserved_bytes -= bytes;
                self.driver_frees += 1;
            }
        }
    }

    pub fn cached_bytes(&self) -> u64 {
        self.free.keys().map(|(b, _)| b).sum()
    }
}

impl Drop for CachingAllocator {
    fn drop(&mut self) {
        self.release_cache();
    }
}
