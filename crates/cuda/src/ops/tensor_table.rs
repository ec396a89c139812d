//! The tensor tables of the optimizer ops (ops/grad_norm.rs, ops/adamw.rs; kernels/
//! tensor_table.cuh), which update every parameter in one launch and without a host
//! synchronisation, so that a whole training step can be captured in a CUDA graph.
//!
//! Both kernels read a *tensor table* in device memory: one descriptor per tensor (pointers,
//! dtypes, numel, its first work item of `NORM_CHUNK` or `ADAM_CHUNK` elements). The pointers of a model's
//! parameters, gradients and optimizer state do not change from step to step (the caching
//! allocator hands a step's gradients the same blocks every step), so a table is written once
//! and kept, keyed by its own words; a step whose pointers differ gets a new table. A captured
//! graph bakes the table's address into its launches, so tables are only created and dropped
//! outside a capture: a captured or replayed step that would need a new table finishes eagerly
//! first (`CudaBackend::optimizer_table_missing`), and dropping tables drops the graphs too.
//!
//! ZeRO-1 (`shards` = W > 1): a rank's shard of a tensor is a contiguous run
//! ([`tperf_core::comm::shard_range`]), so the tables point at its first element and count its
//! elements: the kernels see ordinary, shorter tensors (m and v are allocated as the shard).

use crate::alloc::Block;
use crate::backend::CudaBackend;
use crate::error::driver;
use cudarc::driver::result as cu;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::Op;

/// Threads per block of the optimizer kernels (a multiple of 32): `OPT_THREADS`.
pub(super) const THREADS: u32 = 256;

/// Blocks an SM of either kernel holds at once, by its launch bounds (`OPT_BLOCKS_PER_SM`): the
/// grid is one wave of that many a SM (tensor_table.cuh says why).
pub(super) const BLOCKS_PER_SM: u64 = 4;

/// Tables kept at once; past this every table (and every captured graph, which may address
/// one) is dropped. A training run needs two (its norm and its AdamW), a process that builds
/// many models a few more.
const MAX_TABLES: usize = 32;

/// The tensor tables kept on the device, each with the words it was written from.
#[derive(Default)]
pub(crate) struct TensorTables {
    entries: Vec<(Vec<u64>, Block)>,
}

impl TensorTables {
    fn find(&self, words: &[u64]) -> Option<u64> {
        self.entries
            .iter()
            .find(|(w, _)| w.as_slice() == words)
            .map(|(_, b)| b.ptr)
    }

    /// Every block, for the backend to give back to its allocator.
    pub(crate) fn drain(&mut self) -> Vec<Block> {
        self.entries.drain(..).map(|(_, b)| b).collect()
    }
}

/// A table's words, how many tensors and work items it describes, and the elements of an item.
pub(super) struct Table {
    pub(super) words: Vec<u64>,
    pub(super) count: usize,
    pub(super) items: u64,
    chunk: u64,
}

impl Table {
    /// An empty table of work items of `chunk` elements, with room for `tensors` descriptors of
    /// `ptrs` pointers each.
    pub(super) fn new(chunk: u64, tensors: usize, ptrs: usize) -> Table {
        Table {
            words: Vec::with_capacity(tensors * (ptrs + 3)),
            count: 0,
            items: 0,
            chunk,
        }
    }

    /// Appends one tensor of `n` elements: its pointers, then {n, its first work item,
    /// `packed`} (dtype codes and flags), the layout of `NormTensor` (grad_norm.cu) and
    /// `AdamTensor` (adamw.cu); its work items follow the ones before it.
    pub(super) fn push(&mut self, ptrs: &[u64], n: u64, packed: u64) {
        self.words.extend_from_slice(ptrs);
        self.words.extend([n, self.items, packed]);
        self.items += n.div_ceil(self.chunk);
        self.count += 1;
    }
}

impl CudaBackend {
    fn table_of(&self, call: &OpCall) -> Result<Option<Table>, BackendError> {
        match &call.op {
            Op::GradNorm(g) => Ok(Some(self.norm_table(call, &call.operands(g)?, g.shards)?)),
            Op::AdamW(a) => Ok(Some(self.adam_table(call, &call.operands(a)?, a.shards)?)),
            _ => Ok(None),
        }
    }

    /// Whether `call` is an optimizer op whose tensor table is not on the device yet: a captured
    /// or replayed step then finishes eagerly (see the module docs).
    pub(crate) fn optimizer_table_missing(&self, call: &OpCall) -> Result<bool, BackendError> {
        Ok(match self.table_of(call)? {
            Some(t) => t.count > 0 && self.tables.find(&t.words).is_none(),
            None => false,
        })
    }

    /// The device address of `table`, writing it first if it is new.
    pub(super) fn upload(&mut self, table: Table) -> Result<u64, BackendError> {
        if let Some(ptr) = self.tables.find(&table.words) {
            return Ok(ptr);
        }
        if self.tables.entries.len() >= MAX_TABLES {
            self.drop_graphs_and_tables();
        }
        let bytes = (table.words.len() * 8) as u64;
        let block = self
            .alloc
            .alloc(bytes)
            .map_err(driver("the optimizer's tensor table"))?;
        // SAFETY: `block` holds at least `bytes`; the words are pageable host memory, which the
        // driver stages before the call returns, and they stay alive in the cache anyway. Kernels
        // that read the table follow in stream order.
        let copied =
            unsafe { cu::memcpy_htod_async(block.ptr, &table.words, self.gpu.cu_stream()) };
        if let Err(e) = copied {
            self.alloc.free(block);
            return Err(driver("writing the optimizer's tensor table")(e).into());
        }
        self.tables.entries.push((table.words, block));
        Ok(block.ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words grad_norm.cu's `NormTensor` (32 bytes) and adamw.cu's `AdamTensor` (64) read.
    #[test]
    fn a_descriptor_is_its_pointers_then_n_first_item_and_packed_word() {
        let mut norm = Table::new(8192, 2, 1);
        norm.push(&[0x1000], 8193, 7);
        norm.push(&[0x2000], 5, 9);
        assert_eq!(norm.words, [0x1000, 8193, 0, 7, 0x2000, 5, 2, 9]);
        assert_eq!((norm.count, norm.items), (2, 3));
        let mut adam = Table::new(2048, 1, 5);
        adam.push(&[1, 2, 3, 4, 0], 2048, 0x3_0000_0000);
        assert_eq!(adam.words.len(), 8);
        assert_eq!(adam.words[5..], [2048, 0, 0x3_0000_0000]);
        assert_eq!((adam.count, adam.items), (1, 1));
    }
}
