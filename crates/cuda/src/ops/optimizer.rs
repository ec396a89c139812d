//! The optimizer step (kernels/optimizer.cu), issued without a host synchronisation so that a
//! whole training step can be captured in a CUDA graph, and over every parameter in one launch.
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
//! GradNorm: Σ g² over every gradient in f64, block b writing slot b of a scratch buffer (so no
//! zeroing and no atomics), then a one-block kernel adds the slots in a fixed order and writes
//! √Σ (under ZeRO-1, Σ itself: the ranks' squares are summed by an all-reduce and AdamW takes
//! the root). Deterministic: two launches in all.
//!
//! ZeRO-1 (`shards` = W > 1): a rank's shard of a tensor is a contiguous run
//! ([`tperf_core::comm::shard_range`]), so the tables point at its first element and count its
//! elements: the kernels see ordinary, shorter tensors (m and v are allocated as the shard).
//!
//! AdamW: one launch, in place on θ, m and v as the CPU backend updates them. The gradient factor
//! clip(‖g‖/S)/S (S = the op's loss scale, `grad_scale`) is derived on the device from the norm
//! tensor, and so is the decision to skip the step when S > 1 and the norm is not finite: no host
//! synchronisation. Weight decay applies to 2-D tensors only; the optional copies receive θ
//! rounded to their dtype.

use crate::alloc::Block;
use crate::backend::{dt_code, unsupported, CudaBackend};
use crate::error::driver;
use crate::gpu::Arg;
use cudarc::driver::result as cu;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::comm::shard_range;
use tperf_core::dtype::DType;
use tperf_core::ops::adamw::{AdamW, AdamWIo};
use tperf_core::ops::grad_norm::{GradNorm, GradNormIo};
use tperf_core::ops::Op;
use tperf_core::tensor::Tensor;

const SRC: &str = "optimizer";

/// Elements per work item: `NORM_CHUNK` and `ADAM_CHUNK` of optimizer.cu.
const NORM_CHUNK: u64 = 8192;
const ADAM_CHUNK: u64 = 2048;

/// Threads per block of the optimizer kernels (a multiple of 32): `OPT_THREADS`.
const THREADS: u32 = 256;

/// Blocks an SM of either kernel holds at once, by its launch bounds (`OPT_BLOCKS_PER_SM`): the
/// grid is one wave of that many a SM (optimizer.cu says why).
const BLOCKS_PER_SM: u64 = 4;

/// Tables kept at once; past this every table (and every captured graph, which may address
/// one) is dropped. A training run needs two (its norm and its AdamW), a process that builds
/// many models a few more.
const MAX_TABLES: usize = 32;

/// u64 words of one descriptor: `NormTensor` (32 bytes) and `AdamTensor` (64 bytes).
const NORM_WORDS: usize = 4;
const ADAM_WORDS: usize = 8;

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

/// A table's words and how many work items it describes.
struct Table {
    words: Vec<u64>,
    count: usize,
    items: u64,
}

fn aligned(ptrs: &[u64]) -> bool {
    ptrs.iter().all(|p| p % 16 == 0)
}

impl CudaBackend {
    /// GradNorm's table: per gradient {g, n, first item, dtype | aligned << 32}.
    fn norm_table(
        &self,
        call: &OpCall,
        io: &GradNormIo,
        shards: usize,
    ) -> Result<Table, BackendError> {
        let rank = self.shard_rank(call, shards)?;
        let mut words = Vec::with_capacity(NORM_WORDS * io.grads.len());
        let mut items = 0u64;
        for t in &io.grads {
            if t.dtype == DType::I32 {
                return Err(unsupported(call, "gradients are floating-point tensors"));
            }
            let shard = shard_range(t.numel() as usize, rank, shards);
            let n = shard.len() as u64;
            if n == 0 {
                continue;
            }
            let Arg::Buf(ptr, dt) = self.arg(call, t, t.numel())? else {
                unreachable!("arg returns a Buf")
            };
            let ptr = ptr + shard.start as u64 * t.dtype.size_bytes();
            let vec = u64::from(aligned(&[ptr]));
            words.extend([ptr, n, items, dt as u32 as u64 | vec << 32]);
            items += n.div_ceil(NORM_CHUNK);
        }
        let count = words.len() / NORM_WORDS;
        Ok(Table {
            words,
            count,
            items,
        })
    }

    /// AdamW's table: per parameter {θ, g, m, v, copy, n, first item, dtypes | flags << 32},
    /// the dtype codes 4 bits each (θ, g, m, v, copy from the low end), flags bit 0 weight
    /// decay, bit 1 every pointer 16-byte aligned and floating-point (the vector path).
    /// Under ZeRO-1 θ, g and the copy point at this rank's shard and n counts it.
    fn adam_table(
        &self,
        call: &OpCall,
        io: &AdamWIo,
        shards: usize,
    ) -> Result<Table, BackendError> {
        let rank = self.shard_rank(call, shards)?;
        let mut words = Vec::with_capacity(ADAM_WORDS * io.theta.len());
        let mut items = 0u64;
        for (i, theta) in io.theta.iter().enumerate() {
            let (g, m, v) = (&io.grads[i], &io.m[i], &io.v[i]);
            if [theta, m, v].iter().any(|t| t.dtype == DType::I32) {
                return Err(unsupported(call, "AdamW state must be floating-point"));
            }
            let whole = theta.numel();
            let shard = shard_range(whole as usize, rank, shards);
            let n = shard.len() as u64;
            if n == 0 {
                continue;
            }
            // The replicated tensors from the shard's first element; m and v are the shard.
            let from = |a: Arg, t: &Tensor| match a {
                Arg::Buf(p, dt) if p != 0 => {
                    Arg::Buf(p + shard.start as u64 * t.dtype.size_bytes(), dt)
                }
                other => other,
            };
            let copy = match io.copies.get(i) {
                Some(c) if c.dtype != DType::I32 => from(self.arg(call, c, whole)?, c),
                _ => Arg::Buf(0, 0),
            };
            let mut ptrs = [0u64; 5];
            let mut dts = 0u64;
            let mut float = true;
            let args = [
                from(self.arg(call, theta, whole)?, theta),
                from(self.arg(call, g, whole)?, g),
                self.arg(call, m, n)?,
                self.arg(call, v, n)?,
                copy,
            ];
            for (k, a) in args.iter().enumerate() {
                let Arg::Buf(p, dt) = *a else {
                    unreachable!("arg returns a Buf")
                };
                ptrs[k] = p;
                dts |= (dt as u32 as u64 & 15) << (4 * k);
                float &= p == 0 || dt != dt_code(DType::I32);
            }
            let decay = u64::from(theta.shape.len() == 2);
            let vec = u64::from(float && aligned(&ptrs));
            words.extend(ptrs);
            words.extend([n, items, dts | (decay | vec << 1) << 32]);
            items += n.div_ceil(ADAM_CHUNK);
        }
        let count = words.len() / ADAM_WORDS;
        Ok(Table {
            words,
            count,
            items,
        })
    }

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
    fn upload(&mut self, table: Table) -> Result<u64, BackendError> {
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

    pub(crate) fn grad_norm(&mut self, call: &OpCall, g: &GradNorm) -> Result<(), BackendError> {
        let io: GradNormIo = call.operands(g)?;
        let norm = self.arg(call, &io.norm, 1)?;
        let table = self.norm_table(call, &io, g.shards)?;
        let (count, items) = (table.count, table.items);
        // One f64 slot per block, each written by its block.
        let blocks = items.clamp(
            1,
            (BLOCKS_PER_SM * self.gpu.info.sms.max(1) as u64).min(1024),
        );
        let scratch = self
            .alloc
            .alloc(blocks * 8)
            .map_err(driver("scratch for the gradient norm"))?;
        let result = (|| {
            if count > 0 {
                let ptr = self.upload(table)?;
                let args = [
                    Arg::Ptr(ptr),
                    Arg::I32(count as i32),
                    Arg::I64(items as i64),
                    Arg::Ptr(scratch.ptr),
                ];
                let grid = (blocks as u32, 1, 1);
                self.launch(
                    call,
                    SRC,
                    "grad_sum_sq_multi",
                    grid,
                    (THREADS, 1, 1),
                    0,
                    &args,
                )?;
            }
            // No gradient elements: no block wrote, so the finish reads none of the slots.
            let written = if count > 0 { blocks as i32 } else { 0 };
            let squared = Arg::I32(i32::from(g.shards > 1));
            let args = [Arg::Ptr(scratch.ptr), Arg::I32(written), squared, norm];
            self.launch(
                call,
                SRC,
                "grad_norm_finish",
                (1, 1, 1),
                (THREADS, 1, 1),
                0,
                &args,
            )
        })();
        // The stream orders the block's next user after the kernels above.
        self.alloc.free(scratch);
        result
    }

    pub(crate) fn adamw(&mut self, call: &OpCall, adam: &AdamW) -> Result<(), BackendError> {
        // The reader checks the counts: P of each of θ, g, m and v, and none or P copies.
        let io: AdamWIo = call.operands(adam)?;
        let h = &adam.hyper;
        let t = h.step.max(1) as i32;
        let c1 = (1.0 - h.beta1.powi(t)) as f32;
        let c2 = (1.0 - h.beta2.powi(t)) as f32;
        // In a captured step the kernel reads lr, c1 and c2 from here instead (graph.rs).
        let step_scalars = Arg::Ptr(self.op_scalars);
        let norm = self.arg(call, &io.norm, 1)?;
        let table = self.adam_table(call, &io, adam.shards)?;
        let (count, items) = (table.count, table.items);
        if count == 0 {
            return Ok(());
        }
        let ptr = self.upload(table)?;
        let args = [
            Arg::Ptr(ptr),
            Arg::I32(count as i32),
            Arg::I64(items as i64),
            norm,
            Arg::F32(h.beta1 as f32),
            Arg::F32(h.beta2 as f32),
            Arg::F32(c1),
            Arg::F32(c2),
            Arg::F32(h.lr as f32),
            Arg::F32(h.eps as f32),
            Arg::F32(h.weight_decay as f32),
            Arg::I32(i32::from(h.max_grad_norm.is_some())),
            Arg::F64(h.max_grad_norm.unwrap_or(0.0)),
            Arg::F64(adam.grad_scale),
            Arg::I32(i32::from(adam.shards > 1)),
            step_scalars,
        ];
        // One wave of resident blocks; the items go grid-stride.
        let blocks = items.min(BLOCKS_PER_SM * self.gpu.info.sms.max(1) as u64) as u32;
        self.launch(
            call,
            SRC,
            "adamw_update_multi",
            (blocks, 1, 1),
            (THREADS, 1, 1),
            0,
            &args,
        )
    }
}
