//! CudaBackend: the one schedule on an NVIDIA GPU. Storage per tensor id from the caching
//! allocator, op dispatch to cuBLASLt and to the NVRTC kernels of `kernels/`, memory accounting
//! by category, CUDA events per op, NVTX ranges per op.
//!
//! Every op is issued on one stream, in the schedule's order, without host synchronisation: the
//! host runs ahead and the GPU drains the queue. Only reads to the host, the sampling op and the
//! end of a timed region wait for the device.

use crate::alloc::{Block, CachingAllocator};
use crate::blas::{Blas, Gemm, WORKSPACE_BYTES};
use crate::error::{driver, CudaError};
use crate::gpu::{Arg, DeviceInfo, Gpu};
use crate::graph::{self, Action, Begin, GraphStats, Graphs, Mode, Pending, SCALAR_WORDS};
use crate::timing::EventTimer;
use cudarc::driver::{result as cu, sys};
use half::{bf16, f16};
use std::time::Instant;
use tperf_core::backend::{Backend, BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ledger::Ledger;
use tperf_core::ops::{Op, OutputWrite};
use tperf_core::tensor::{Tensor, TensorId, TensorName, TensorSpec};

pub(crate) const BACKEND: &str = "cuda";

pub(crate) struct DevBuf {
    pub block: Block,
    pub name: TensorName,
    pub dtype: DType,
    pub numel: u64,
    /// (min, max) of the ids last written by the host, for i32 tensors.
    pub id_range: Option<(i32, i32)>,
    /// Nothing has written the buffer since it was allocated. A fresh tensor reads as zero (the
    /// Backend contract), but it is zeroed only when something reads it first (`exec`), not at
    /// allocation: most tensors are written by the op that produces them before anything reads
    /// them, and zeroing every one cost a memset each (781 per 2.7B training step).
    pub fresh: bool,
}

/// The tensor map is looked up several times per operand of every op, a replayed step's
/// included; SipHash, HashMap's default, is built against keys an adversary picks and cost more
/// than the rest of each lookup. The ids are this backend's own (a u32 handed out in sequence),
/// so rustc's Fx hash (one multiplication a word) does.
pub(crate) type TensorMap<V> = rustc_hash::FxHashMap<TensorId, V>;

/// The dtype code kernels switch on (common.cuh).
pub(crate) fn dt_code(d: DType) -> i32 {
    match d {
        DType::F32 => 0,
        DType::Bf16 => 1,
        DType::F16 => 2,
        DType::I32 => 3,
    }
}

pub struct CudaBackend {
    // Field order is drop order: buffers go back to the allocator, the allocator to the driver,
    // then the library handles and last the context (inside `gpu`).
    buffers: TensorMap<DevBuf>,
    /// Tensors freed inside a captured or replayed step: their blocks are back in the allocator,
    /// but a fallback may still have to run the step's earlier ops on them.
    retired: TensorMap<DevBuf>,
    /// Captured steps; dropped before any memory they point into.
    graphs: Graphs,
    /// The optimizer's tensor tables (ops/tensor_table.rs); captured graphs address them.
    pub(crate) tables: crate::ops::tensor_table::TensorTables,
    pub(crate) alloc: CachingAllocator,
    /// Tensors' bytes at their dtype widths by category (the Meta backend's rule); what the
    /// driver reserved is the allocator's count.
    ledger: Ledger,
    /// Device words the step's dynamic scalars are copied to (see graph.rs).
    scalars: Block,
    /// The device pointers of an op's inputs then outputs, as a replayed step compares them;
    /// kept so that no op allocates the list.
    replay_ptrs: Vec<u64>,
    /// Matmuls followed by GELU use cuBLASLt's GELU_AUX epilogue where it applies
    /// (`TPERF_GELU_EPILOGUE=0` turns it off, to measure what it saves).
    pub(crate) gelu_epilogue: bool,
    /// Prefill chunks of paged attention on the tensor-core kernel (flash_mma.cu's
    /// paged_mma_fwd; ops/paged_attention.rs). Off unless `TPERF_PAGED_MMA=1` or
    /// [`CudaBackend::set_paged_mma`]: the kernel is tested (tests/ops_paged.rs) but has not yet
    /// run on a GPU, so it is not the default until those tests have passed there.
    pub(crate) paged_mma: bool,
    /// `TPERF_POISON_ALLOC=1`: fresh allocations are filled with 0xFF bytes (NaN in every float
    /// dtype) instead of being left as the allocator found them, so that an op that reads part of
    /// a buffer nothing wrote, relying on a zero it never asked for, shows up as a NaN in
    /// `tperf conformance`. Graphs are off in this mode (the fill is not a graph action).
    poison: bool,
    /// Where the op being dispatched finds its dynamic scalars in device memory: set while a
    /// step is captured, 0 (null: use the arguments) when ops run eagerly.
    pub(crate) op_scalars: u64,
    pub(crate) blas: Blas,
    workspace: Block,
    pub(crate) timer: Option<EventTimer>,
    /// The NCCL group of a data-parallel run (dropped before the GPU's context).
    pub(crate) nccl: Option<crate::ops::collective::Nccl>,
    /// Without an NCCL group: the (rank, world) whose ZeRO-1 optimizer share this backend runs
    /// (`CudaBackend::run_optimizer_shard_of`), so the per-shard kernels are testable on one GPU.
    pub(crate) shard_of: Option<(usize, usize)>,
    pub(crate) gpu: Gpu,
    next_id: u32,
    ops_run: usize,
    /// The sampling kernel's call counter and its finished-block count (two u64): the `call`
    /// of the reference's random stream, advanced on the device (ops/sampling.rs).
    pub(crate) sample_state: Block,
    /// Eager sampling calls' settings (ops/sampling.rs); empty until the first.
    pub(crate) sample_params: Block,
    /// Flash-decoding's split counters, one u32 per unit and KV head, zero between launches
    /// (ops/decode.rs); empty until a decode first splits its keys.
    pub(crate) decode_arrivals: Block,
    nvtx: bool,
    /// A CUPTI trace in progress and its wall start on CUPTI's clock.
    kernel_trace: Option<(crate::cupti::KernelTrace, u64)>,
}

pub(crate) fn device_err(message: impl Into<String>) -> BackendError {
    BackendError::Device {
        backend: BACKEND,
        message: message.into(),
    }
}

pub(crate) fn unsupported(call: &OpCall, why: impl Into<String>) -> BackendError {
    BackendError::Unsupported {
        op: call.op.name(),
        label: call.label,
        backend: BACKEND,
        why: why.into(),
    }
}

pub(crate) fn invalid(call: &OpCall, why: impl Into<String>) -> BackendError {
    BackendError::InvalidInput {
        op: call.op.name(),
        label: call.label,
        backend: BACKEND,
        why: why.into(),
    }
}

impl CudaBackend {
    /// Opens `cuda:ordinal`: the context, the stream, cuBLASLt and its workspace. Kernels are
    /// compiled (or loaded from the disk cache) when an op first needs them.
    pub fn new(ordinal: usize) -> Result<Self, BackendError> {
        let gpu = Gpu::open(ordinal)?;
        let mut alloc = CachingAllocator::default();
        let workspace = alloc
            .alloc(WORKSPACE_BYTES as u64)
            .map_err(driver("allocating the cuBLASLt workspace"))?;
        let blas = Blas::new(workspace.ptr)?;
        let scalars = alloc
            .alloc((SCALAR_WORDS * 4) as u64)
            .map_err(driver("allocating the step scalars"))?;
        let sample_state = alloc
            .alloc(16)
            .map_err(driver("allocating the sampling counter"))?;
        // SAFETY: `sample_state` was just allocated with at least 16 bytes; the synchronous
        // memset completes before any kernel can read it.
        unsafe { cu::memset_d8_sync(sample_state.ptr, 0, 16) }
            .map_err(driver("zeroing the sampling counter"))?;
        let poison = std::env::var_os("TPERF_POISON_ALLOC").is_some_and(|v| v == "1");
        let graphs = !poison && std::env::var_os("TPERF_CUDA_GRAPHS").is_none_or(|v| v != "0");
        let gelu_epilogue = std::env::var_os("TPERF_GELU_EPILOGUE").is_none_or(|v| v != "0");
        let paged_mma = std::env::var_os("TPERF_PAGED_MMA").is_some_and(|v| v == "1");
        Ok(CudaBackend {
            buffers: TensorMap::default(),
            retired: TensorMap::default(),
            graphs: Graphs::new(graphs),
            tables: Default::default(),
            alloc,
            ledger: Ledger::new(),
            scalars,
            replay_ptrs: Vec::new(),
            poison,
            op_scalars: 0,
            gelu_epilogue,
            paged_mma,
            blas,
            workspace,
            timer: None,
            nccl: None,
            shard_of: None,
            gpu,
            next_id: 0,
            ops_run: 0,
            sample_state,
            sample_params: Block { ptr: 0, bytes: 0 },
            decode_arrivals: Block { ptr: 0, bytes: 0 },
            nvtx: crate::nvtx::wanted(),
            kernel_trace: None,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.gpu.info
    }

    /// The device's free memory now (cuMemGetInfo), what a new step can still allocate.
    pub fn free_bytes(&self) -> Result<u64, BackendError> {
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(driver("binding the context"))?;
        let (free, _total) =
            cudarc::driver::result::mem_get_info().map_err(driver("cuMemGetInfo"))?;
        Ok(free as u64)
    }

    /// Kernel modules loaded so far: (source, compiled or cached, seconds).
    pub fn compile_log(&self) -> &[(&'static str, crate::compile::Origin, std::time::Duration)] {
        &self.gpu.compile_log
    }

    /// Waits for every op issued so far; a kernel fault surfaces here, and so does a
    /// collective the NCCL watchdog aborted (its error, naming the rank and the timeout, comes
    /// first: the CUDA error an aborted kernel may leave says less).
    pub fn synchronize(&self) -> Result<(), BackendError> {
        let synced = self.gpu.synchronize();
        self.check_watchdog()?;
        synced.map_err(Into::into)
    }

    /// Bytes in use by category at the tensors' dtype widths (the Meta backend's rule), their
    /// peak, and the event log.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// To reset the peak or turn the event log on or off.
    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// Bytes obtained from the driver (cached blocks and rounding included; the cuBLASLt
    /// workspace too).
    pub fn reserved_bytes(&self) -> u64 {
        self.alloc.reserved_bytes
    }

    /// Bytes the allocator holds free for reuse.
    pub fn cached_bytes(&self) -> u64 {
        self.alloc.cached_bytes()
    }

    pub fn peak_reserved_bytes(&self) -> u64 {
        self.alloc.peak_reserved_bytes
    }

    /// Opens an NVTX range around what follows, when ranges are being made (a tool is
    /// attached, or `TPERF_NVTX=1`); [`pop_range`](Self::pop_range) closes it.
    pub fn push_range(&self, name: &str) {
        if self.nvtx {
            crate::nvtx::push_named(name);
        }
    }

    pub fn pop_range(&self) {
        if self.nvtx {
            crate::nvtx::pop();
        }
    }

    pub fn ops_run(&self) -> usize {
        self.ops_run
    }

    /// Starts a CUPTI trace of every kernel, copy and fill from now on (the caller has
    /// synchronised, so the wall span starts with the step).
    pub fn start_kernel_trace(&mut self) -> Result<(), CudaError> {
        let trace = crate::cupti::KernelTrace::start()?;
        let start = crate::cupti::now_ns()?;
        self.kernel_trace = Some((trace, start));
        Ok(())
    }

    /// Ends the trace (the caller has synchronised): the records and the wall span on CUPTI's
    /// clock.
    pub fn finish_kernel_trace(
        &mut self,
    ) -> Result<(crate::cupti::TraceOutput, u64, u64), CudaError> {
        let (trace, start) = self
            .kernel_trace
            .take()
            .ok_or(crate::cupti::TraceError::NotStarted)?;
        let end = crate::cupti::now_ns()?;
        Ok((trace.finish()?, start, end))
    }

    /// Records CUDA events around every op from now on.
    pub fn enable_timing(&mut self) -> Result<(), BackendError> {
        if self.timer.is_none() {
            self.timer = Some(EventTimer::new());
        }
        Ok(())
    }

    /// Waits for the device and returns (op index, start, duration) in GPU milliseconds of every
    /// op timed since the last call, starts measured from the first of them.
    pub fn take_timings(&mut self) -> Result<Vec<(usize, f64, f64)>, BackendError> {
        self.synchronize()?;
        match &mut self.timer {
            Some(t) => t.drain().map_err(Into::into),
            None => Ok(Vec::new()),
        }
    }

    pub(crate) fn buf(&self, t: &Tensor) -> Result<&DevBuf, BackendError> {
        self.buffers
            .get(&t.id)
            .or_else(|| self.retired.get(&t.id))
            .ok_or_else(|| device_err(format!("tensor #{} is not allocated", t.id.0)))
    }

    /// The kernel argument for tensor `t`, after checking it holds at least `numel` elements.
    pub(crate) fn arg(&self, call: &OpCall, t: &Tensor, numel: u64) -> Result<Arg, BackendError> {
        let b = self.buf(t)?;
        if b.numel < numel {
            return Err(unsupported(
                call,
                format!(
                    "'{}' holds {} elements where the op reads {numel}",
                    b.name, b.numel
                ),
            ));
        }
        Ok(Arg::Buf(b.block.ptr, dt_code(b.dtype)))
    }

    /// [`Self::arg`] for an optional operand; an absent one is the null buffer, which the
    /// kernels test for.
    pub(crate) fn arg_opt(
        &self,
        call: &OpCall,
        t: Option<&Tensor>,
        numel: u64,
    ) -> Result<Arg, BackendError> {
        match t {
            Some(t) => self.arg(call, t, numel),
            None => Ok(Arg::Buf(0, 0)),
        }
    }

    /// Records that the i32 tensor `t` holds ids in `range` (a kernel wrote them), for the
    /// range checks of ops that read them.
    pub(crate) fn set_id_range(&mut self, t: &Tensor, range: (i32, i32)) {
        if let Some(b) = self.buffers.get_mut(&t.id) {
            b.id_range = Some(range);
        }
    }

    pub(crate) fn ptr(&self, t: &Tensor) -> Result<u64, BackendError> {
        Ok(self.buf(t)?.block.ptr)
    }

    /// Launches a kernel for `call`; a launch failure names the op.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch(
        &mut self,
        call: &OpCall,
        source: &'static str,
        kernel: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        args: &[Arg],
    ) -> Result<(), BackendError> {
        self.gpu
            .launch(source, kernel, grid, block, shared_bytes, args)
            .map_err(|e| op_error(call, e))
    }

    /// Launches an elementwise kernel over `n` elements (grid-stride).
    pub(crate) fn launch_1d(
        &mut self,
        call: &OpCall,
        source: &'static str,
        kernel: &'static str,
        n: u64,
        args: &[Arg],
    ) -> Result<(), BackendError> {
        self.gpu
            .launch_1d(source, kernel, n, args)
            .map_err(|e| op_error(call, e))
    }

    /// Sets `t` to zero (asynchronously, on the stream).
    pub(crate) fn zero(&self, t: &Tensor) -> Result<(), BackendError> {
        self.fill(t, 0)
    }

    /// Sets every byte of `t` to `value` (asynchronously, on the stream).
    fn fill(&self, t: &Tensor, value: u8) -> Result<(), BackendError> {
        let b = self.buf(t)?;
        let bytes = b.numel * b.dtype.size_bytes();
        if bytes > 0 {
            // SAFETY: `b.block` holds at least `bytes` (numel × dtype width ≤ the block's rounded
            // size) and stays allocated until the tensor is freed, which the in-order stream orders
            // after this memset.
            unsafe {
                cu::memset_d8_async(b.block.ptr, value, bytes as usize, self.gpu.cu_stream())
            }
            .map_err(|source| CudaError::Tensor {
                during: "zeroing",
                tensor: b.name.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        &mut self,
        call: &OpCall,
        g: &Gemm,
        a: u64,
        b: u64,
        c: u64,
        bias: Option<u64>,
        aux: Option<u64>,
    ) -> Result<(), BackendError> {
        let stream = self.gpu.cu_stream();
        self.blas
            .gemm(g, a, b, c, bias, aux, stream)
            .map_err(|e| op_error(call, e))
    }

    fn read_bytes(&self, t: &Tensor) -> Result<Vec<u8>, BackendError> {
        let b = self.buf(t)?;
        let mut host = vec![0u8; (b.numel * b.dtype.size_bytes()) as usize];
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(driver("binding the context"))?;
        // SAFETY: `host` is exactly the tensor's byte size, which the block holds, and outlives the
        // copy: the synchronize below waits for it before `host` is returned.
        unsafe { cu::memcpy_dtoh_async(&mut host, b.block.ptr, self.gpu.cu_stream()) }.map_err(
            |source| CudaError::Tensor {
                during: "reading",
                tensor: b.name.to_string(),
                source,
            },
        )?;
        self.synchronize()?;
        Ok(host)
    }

    /// Copies `host` (plain values: bytes, i32s) into `t`'s block, as laid out in memory (the
    /// device is little-endian like every host tperf runs on).
    fn write_bytes<T: Copy>(&self, t: &Tensor, host: &[T]) -> Result<(), BackendError> {
        let b = self.buf(t)?;
        self.gpu
            .ctx
            .bind_to_thread()
            .map_err(driver("binding the context"))?;
        // No synchronisation after it: the copy is ordered on the stream before every op issued
        // later, and a steady decode loop (the engine's, the bench's) writes its ids or block
        // tables every step, so waiting here made the host idle for the device's whole step and
        // the device for the host's, where they can overlap. A fault in the copy surfaces at
        // the next synchronisation, as a kernel's does.
        // SAFETY: the block holds `size_of_val(host)` bytes (the caller checked numel and
        // dtype); `host` is pageable host memory, which the driver stages before the call
        // returns, so the caller may drop or change it afterwards.
        unsafe { cu::memcpy_htod_async(b.block.ptr, host, self.gpu.cu_stream()) }
            .map_err(|source| CudaError::Tensor {
                during: "writing",
                tensor: b.name.to_string(),
                source,
            })
            .map_err(Into::into)
    }
}

/// Names the op in a launch failure (a missing kernel, an NVRTC error with its log).
fn op_error(call: &OpCall, e: CudaError) -> BackendError {
    device_err(format!(
        "{} ({}): {}",
        call.op.name(),
        call.label,
        tperf_core::error::report(&e)
    ))
}

fn encode(dtype: DType, data: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::Bf16 => data
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect(),
        DType::F16 => data
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        DType::I32 => data
            .iter()
            .flat_map(|&x| (x as i32).to_le_bytes())
            .collect(),
    }
}

fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("cuda:{}", self.gpu.info.ordinal)
    }

    fn alloc(&mut self, spec: TensorSpec) -> Result<Tensor, BackendError> {
        let bytes = spec.size_bytes();
        let block = self
            .alloc
            .alloc(bytes)
            .map_err(|_| BackendError::OutOfMemory {
                name: spec.name.to_string(),
                requested_bytes: bytes,
                in_use_bytes: self.alloc.reserved_bytes,
                capacity_bytes: self.gpu.info.total_bytes,
            })?;
        let id = TensorId(self.next_id);
        self.next_id += 1;
        let tensor = spec.tensor(id);
        let numel = spec.numel();
        self.buffers.insert(
            id,
            DevBuf {
                block,
                name: spec.name,
                dtype: spec.dtype,
                numel,
                id_range: None,
                fresh: true,
            },
        );
        if self.poison {
            self.fill(&tensor, 0xff)?;
        }
        let name = &self.buffers[&id].name;
        self.ledger.alloc(self.ops_run, name, &tensor);
        Ok(tensor)
    }

    fn free(&mut self, tensor: Tensor) {
        if let Some(buf) = self.buffers.remove(&tensor.id) {
            self.ledger.free(self.ops_run, &buf.name, &tensor);
            self.alloc.free(buf.block);
            if self.graphs.in_step_graph() {
                self.retired.insert(tensor.id, buf);
            }
        }
    }

    fn exec(&mut self, call: OpCall) -> Result<(), BackendError> {
        self.zero_fresh_operands(&call)?;
        if self.graphs.in_step_graph() {
            return self.exec_in_graph(call);
        }
        self.exec_eager(call)
    }

    fn replays_repeated_steps(&self) -> bool {
        self.graphs.enabled
    }

    fn begin_step(&mut self, key: &str) -> Result<(), BackendError> {
        let began = Instant::now();
        if self.graphs.in_step_graph() {
            // The previous step ended with an error before `end_step`.
            self.leave_graph_mode("the step ended with an error", false)?;
        }
        let allowed = self.timer.is_none();
        if let Begin::Capture = self.graphs.begin(key, allowed, began) {
            self.gpu
                .ctx
                .bind_to_thread()
                .map_err(driver("binding the context"))?;
            let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
            // SAFETY: the stream is ours and idle of other captures; capture ends in `finish_step`
            // or `discard_capture` on every path.
            if let Err(e) = unsafe { cu::stream::begin_capture(self.gpu.cu_stream(), mode) } {
                let pending = self
                    .graphs
                    .fall_back(&format!("the stream cannot be captured: {e:?}"), true);
                self.run_pending(pending)?;
            }
        }
        Ok(())
    }

    fn end_step(&mut self) -> Result<(), BackendError> {
        // A captured step must end joined; an eager one leaves nothing behind on the comm stream.
        let result = self.join_comm().and_then(|()| self.finish_step());
        self.retired.clear();
        result
    }

    fn write_f32(&mut self, tensor: &Tensor, data: &[f32]) -> Result<(), BackendError> {
        self.leave_graph_for_host()?;
        let numel = self.buf(tensor)?.numel;
        if numel != data.len() as u64 {
            return Err(device_err(format!(
                "write of {} values into a tensor of {numel}",
                data.len()
            )));
        }
        self.write_bytes(tensor, &encode(tensor.dtype, data))?;
        self.mark_written(tensor);
        Ok(())
    }

    fn write_i32(&mut self, tensor: &Tensor, data: &[i32]) -> Result<(), BackendError> {
        self.leave_graph_for_host()?;
        let b = self.buf(tensor)?;
        if b.dtype != DType::I32 || b.numel != data.len() as u64 {
            return Err(device_err(format!(
                "write of {} ids into '{}' ({} × {})",
                data.len(),
                b.name,
                b.numel,
                b.dtype
            )));
        }
        // Straight from the caller's slice: a serving step's block table is 16K ids, and
        // re-encoding it byte by byte cost the host tens of microseconds every step.
        self.write_bytes(tensor, data)?;
        let range = data.iter().fold(None, |r: Option<(i32, i32)>, &x| match r {
            None => Some((x, x)),
            Some((lo, hi)) => Some((lo.min(x), hi.max(x))),
        });
        if let Some(b) = self.buffers.get_mut(&tensor.id) {
            b.id_range = range;
            b.fresh = false;
        }
        Ok(())
    }

    fn read_f32(&mut self, tensor: &Tensor) -> Result<Vec<f32>, BackendError> {
        self.leave_graph_for_host()?;
        if self.buf(tensor)?.fresh {
            self.zero(tensor)?;
            self.mark_written(tensor);
        }
        let bytes = self.read_bytes(tensor)?;
        Ok(decode(self.buf(tensor)?.dtype, &bytes))
    }
}

/// CUDA graphs of repeated steps (graph.rs has the design).
impl CudaBackend {
    /// Turns graph capture of steps on or off (on by default; `TPERF_CUDA_GRAPHS=0` turns it
    /// off for a whole run).
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs.enabled = on && !self.poison;
    }

    /// Runs paged attention's prefill chunks on the tensor-core kernel, or not (see the
    /// field's note; `TPERF_PAGED_MMA=1` sets it for a whole run).
    pub fn set_paged_mma(&mut self, on: bool) {
        self.paged_mma = on;
    }

    pub fn graphs_enabled(&self) -> bool {
        self.graphs.enabled
    }

    /// How the steps so far ran: captured, replayed, eagerly, and why not captured.
    pub fn graph_stats(&self) -> GraphStats {
        self.graphs.stats.clone()
    }

    /// An op inside a captured or replayed step. A replayed op is compared with the captured
    /// one and logged for a fallback, nothing more: its dynamic scalars are staged in place, its
    /// pointers resolved into a list kept across ops, and the call moved into the log.
    fn exec_in_graph(&mut self, call: OpCall) -> Result<(), BackendError> {
        if self.optimizer_table_missing(&call)? {
            // A new table cannot be written inside a capture; the next capture finds it.
            self.leave_graph_mode("the optimizer's tensor table is new", false)?;
            return self.exec_eager(call);
        }
        let replaying = matches!(self.graphs.mode, Mode::Replay { .. });
        if replaying {
            // The checks a launch would have made on this step's data (token ids, positions).
            self.check_replayed(&call)?;
        }
        let mut ptrs = std::mem::take(&mut self.replay_ptrs);
        ptrs.clear();
        for t in call.inputs.iter().chain(&call.outputs) {
            match self.ptr(t) {
                Ok(p) => ptrs.push(p),
                Err(e) => {
                    self.replay_ptrs = ptrs;
                    return Err(e);
                }
            }
        }
        let (inputs, outputs) = ptrs.split_at(call.inputs.len());
        let at = self.graphs.scalars.len();
        let op = graph::split_dynamic(&call.op, &mut self.graphs.scalars);
        let staged = self.graphs.scalars.len() > at;
        let (matched, action) = if replaying {
            let matched = self.graphs.replay_matches_exec(&op, inputs, outputs);
            (matched, None)
        } else {
            let action = Action::Exec {
                op: op.into_owned(),
                inputs: inputs.to_vec(),
                outputs: outputs.to_vec(),
            };
            (true, Some(action))
        };
        self.replay_ptrs = ptrs;
        if !matched {
            self.leave_graph_mode("an op differs from the captured step", false)?;
            return self.exec_eager(call);
        }
        if self.graphs.scalars.len() > SCALAR_WORDS {
            let why = "the step has more dynamic scalars than the buffer holds";
            self.leave_graph_mode(why, true)?;
            return self.exec_eager(call);
        }
        // Kernels read this op's scalars from the step buffer (null: none, use the arguments).
        self.op_scalars = if staged {
            self.scalars.ptr + 4 * at as u64
        } else {
            0
        };
        self.ops_run += 1;
        if replaying {
            self.graphs.push(None, Pending::Exec(call));
            return Ok(());
        }
        // Capturing: the launches are recorded into the graph, not run.
        let dispatched = self.dispatch(&call);
        let name = call.op.name();
        self.graphs.push(action, Pending::Exec(call));
        if let Err(e) = dispatched {
            // Whether the op cannot be captured or is wrong in itself, running the step so far
            // eagerly (this op included) tells: a wrong op fails again, with its own error.
            self.leave_graph_mode(&format!("{name} could not be captured: {e}"), true)?;
        }
        Ok(())
    }

    /// Drops every captured graph, then every optimizer table (which graphs may address); only
    /// outside a captured or replayed step.
    pub(crate) fn drop_graphs_and_tables(&mut self) {
        debug_assert!(!self.graphs.in_step_graph());
        self.graphs.clear();
        for b in self.tables.drain() {
            self.alloc.free(b);
        }
    }

    fn mark_written(&mut self, t: &Tensor) {
        if let Some(b) = self.buffers.get_mut(&t.id) {
            b.fresh = false;
        }
    }

    /// Keeps the contract that a fresh tensor reads as zero, lazily: before `call` runs, every
    /// fresh tensor it reads is zeroed (an in-place operand is both read and written, so the
    /// optimizer's first moments and an accumulated dx are among its inputs), and so is every
    /// fresh output the op writes only in part or adds into (the op table's `OutputWrite`).
    /// Then everything the call touches counts as written: an op writes every element of its
    /// outputs otherwise, or zeroes first what it adds into (flash attention's dQ scratch);
    /// `TPERF_POISON_ALLOC=1` tests that promise.
    fn zero_fresh_operands(&mut self, call: &OpCall) -> Result<(), BackendError> {
        let outputs_read = match call.op.output_write() {
            OutputWrite::Whole => 0,
            OutputWrite::AddsIntoFirst => 1,
            OutputWrite::Part => call.outputs.len(),
        };
        let read = call
            .inputs
            .iter()
            .chain(call.outputs.iter().take(outputs_read));
        let fresh: Vec<Tensor> = read
            .filter(|t| self.buffers.get(&t.id).is_some_and(|b| b.fresh))
            .cloned()
            .collect();
        for t in &fresh {
            self.zero_fresh(t)?;
        }
        for t in call.inputs.iter().chain(&call.outputs) {
            self.mark_written(t);
        }
        Ok(())
    }

    /// Zeroes a fresh tensor, as the step's mode wants it.
    fn zero_fresh(&mut self, t: &Tensor) -> Result<(), BackendError> {
        let (ptr, bytes) = {
            let b = self.buf(t)?;
            (b.block.ptr, b.numel * b.dtype.size_bytes())
        };
        if bytes == 0 || !self.graphs.in_step_graph() {
            return self.zero(t);
        }
        if matches!(self.graphs.mode, Mode::Replay { .. }) {
            if !self.graphs.replay_matches_zero(ptr, bytes) {
                self.leave_graph_mode("an allocation differs from the captured step", false)?;
                return self.zero(t);
            }
        } else {
            // Capturing: the memset becomes a node of the graph.
            self.zero(t)?;
        }
        self.graphs.push(
            Some(Action::Zero { ptr, bytes }),
            Pending::Zero { ptr, bytes },
        );
        Ok(())
    }

    /// Host memory is read or written: a captured or replayed step cannot contain that, so it
    /// finishes eagerly, and its kind is not captured again.
    fn leave_graph_for_host(&mut self) -> Result<(), BackendError> {
        if self.graphs.in_step_graph() {
            self.leave_graph_mode("the step reads or writes host memory", true)?;
        }
        self.join_comm()
    }

    /// Ends a capture or replay in the middle of a step: the capture (if any) is discarded and
    /// the step's actions so far run eagerly; the rest of the step runs eagerly too.
    fn leave_graph_mode(&mut self, why: &str, refuse: bool) -> Result<(), BackendError> {
        if matches!(self.graphs.mode, Mode::Capture { .. }) {
            self.discard_capture();
        }
        let pending = self.graphs.fall_back(why, refuse);
        let result = self.run_pending(pending);
        self.retired.clear();
        result
    }

    fn discard_capture(&mut self) {
        // SAFETY: ends the capture this backend began on its own stream; a returned graph is
        // destroyed here, never used.
        if let Ok(g) = unsafe { cu::stream::end_capture(self.gpu.cu_stream()) } {
            if !g.is_null() {
                // SAFETY: `g` is the graph just returned by end_capture, owned by nobody else.
                let _ = unsafe { cu::graph::destroy(g) };
            }
        }
    }

    fn run_pending(&mut self, pending: Vec<Pending>) -> Result<(), BackendError> {
        for p in pending {
            match p {
                Pending::Zero { ptr, bytes } => {
                    // SAFETY: `ptr` and `bytes` were recorded from a live tensor's block by the
                    // graph code, and the block stays allocated until that tensor is freed (after
                    // this, in stream order).
                    unsafe { cu::memset_d8_async(ptr, 0, bytes as usize, self.gpu.cu_stream()) }
                        .map_err(driver("zeroing a tensor"))?
                }
                Pending::Exec(call) => {
                    self.op_scalars = 0;
                    self.dispatch(&call)?;
                }
            }
        }
        Ok(())
    }

    fn finish_step(&mut self) -> Result<(), BackendError> {
        match self.graphs.mode {
            Mode::Eager => Ok(()),
            Mode::Capture { .. } => {
                let stream = self.gpu.cu_stream();
                // SAFETY: ends the capture begun in `begin_step` on this stream; the graph is owned
                // here.
                let captured = unsafe { cu::stream::end_capture(stream) }.and_then(|g| {
                    let flags = sys::CUgraphInstantiate_flags(0);
                    // SAFETY: `g` is the graph just captured; instantiating it reads it, and it is
                    // kept or destroyed below.
                    match unsafe { cu::graph::instantiate(g, flags) } {
                        Ok(exec) => Ok((g, exec)),
                        Err(e) => {
                            // SAFETY: `g` failed to instantiate and is referenced by nothing else.
                            let _ = unsafe { cu::graph::destroy(g) };
                            Err(e)
                        }
                    }
                });
                match captured {
                    Ok((g, exec)) => {
                        self.graphs.finish_capture(g, exec);
                        self.launch_graph(exec)
                    }
                    Err(e) => {
                        let why = format!("the capture failed: {e:?}");
                        let pending = self.graphs.fall_back(&why, true);
                        self.run_pending(pending)
                    }
                }
            }
            Mode::Replay { .. } => match self.graphs.finish_replay() {
                Ok(exec) => {
                    let launched = self.launch_graph(exec);
                    self.graphs.replay_launched();
                    launched
                }
                Err(why) => {
                    let pending = self.graphs.fall_back(why, false);
                    self.run_pending(pending)
                }
            },
        }
    }

    /// Whether a step is being captured into a graph (nothing runs on the device meanwhile).
    pub(crate) fn capturing(&self) -> bool {
        matches!(self.graphs.mode, Mode::Capture { .. })
    }

    /// Copies the step's dynamic scalars, then launches its graph (both on the stream, after
    /// whatever ran before).
    fn launch_graph(&mut self, exec: sys::CUgraphExec) -> Result<(), BackendError> {
        let stream = self.gpu.cu_stream();
        if !self.graphs.scalars.is_empty() {
            // The words as they lie in host memory: the host and the device are little-endian.
            let words: &[u32] = &self.graphs.scalars;
            // SAFETY: `self.scalars` holds SCALAR_WORDS words and `words` at most that many
            // (`exec_in_graph` refuses more). `words` is pageable host memory, which the driver
            // stages before the call returns, so changing it afterwards (the next step stages
            // its own) is sound; the graph launched next reads the words in stream order.
            unsafe { cu::memcpy_htod_async(self.scalars.ptr, words, stream) }
                .map_err(driver("copying the step's scalars"))?;
        }
        self.push_range("step graph");
        // SAFETY: `exec` is an instantiated graph owned by `self.graphs`. It is launched only after
        // a capture, or after a replayed step whose every action matched the captured one with
        // the same device pointers (graph.rs), so the blocks its kernels address are this step's
        // live tensors and scratch.
        let launched: Result<(), BackendError> = unsafe { cu::graph::launch(exec, stream) }
            .map_err(|e| driver("launching the step's graph")(e).into());
        self.pop_range();
        launched?;
        // A replayed step may hold collectives that a dead peer never completes.
        self.watch_collectives(stream)
    }
}

impl CudaBackend {
    fn exec_eager(&mut self, call: OpCall) -> Result<(), BackendError> {
        let index = self.ops_run;
        if self.nvtx {
            crate::nvtx::push(call.op.name(), call.label, call.layer, index);
        }
        if let Some(t) = &mut self.timer {
            t.start(index, self.gpu.cu_stream())?;
        }
        // Eagerly, kernels take their dynamic scalars as arguments (a null pointer says so).
        self.op_scalars = 0;
        // While a kernel trace runs, the records of what the op launches carry its index.
        let op_scope = self
            .kernel_trace
            .as_ref()
            .map(|_| crate::cupti::OpScope::enter(index));
        let result = self.dispatch(&call);
        drop(op_scope);
        if let Some(t) = &mut self.timer {
            t.stop(self.gpu.cu_stream())?;
        }
        if self.nvtx {
            crate::nvtx::pop();
        }
        result?;
        self.ops_run += 1;
        Ok(())
    }
}

impl CudaBackend {
    fn dispatch(&mut self, call: &OpCall) -> Result<(), BackendError> {
        self.join_comm_for(call)?;
        match &call.op {
            Op::Matmul(mm) => self.matmul_forward(call, mm),
            Op::MatmulBackward(mm) => self.matmul_backward(call, mm),
            Op::Embedding(e) => self.embedding_forward(call, e),
            Op::EmbeddingBackward(e) => self.embedding_backward(call, e),
            Op::LayerNorm(ln) => self.layernorm_forward(call, ln),
            Op::LayerNormBackward(ln) => self.layernorm_backward(call, ln),
            Op::RmsNorm(rn) => self.rmsnorm_forward(call, rn),
            Op::RmsNormBackward(rn) => self.rmsnorm_backward(call, rn),
            Op::Rope(r) => self.rope(call, r, false),
            Op::RopeBackward(r) => self.rope(call, r, true),
            Op::Activation(a) => self.activation_forward(call, a),
            Op::ActivationBackward(a) => self.activation_backward(call, a),
            Op::SwiGlu(s) => self.swiglu_forward(call, s),
            Op::SwiGluBackward(s) => self.swiglu_backward(call, s),
            Op::GeGlu(s) => self.geglu_forward(call, s),
            Op::GeGluBackward(s) => self.geglu_backward(call, s),
            Op::ResidualAdd(r) => self.residual_add(call, r),
            Op::AttnScores(a) => self.attn_scores(call, a),
            Op::AttnSoftmax(a) => self.attn_softmax(call, a),
            Op::AttnValue(a) => self.attn_value(call, a),
            Op::AttnValueBackward(a) => self.attn_value_backward(call, a),
            Op::AttnSoftmaxBackward(a) => self.attn_softmax_backward(call, a),
            Op::AttnScoresBackward(a) => self.attn_scores_backward(call, a),
            Op::FlashAttention(a) => self.flash_attention_forward(call, a),
            Op::FlashAttentionBackward(a) => self.flash_attention_backward(call, a),
            Op::CrossEntropy(ce) => self.cross_entropy_forward(call, ce),
            Op::CrossEntropyBackward(ce) => self.cross_entropy_backward(call, ce),
            Op::AdamW(adam) => self.adamw(call, adam),
            Op::GradNorm(g) => self.grad_norm(call, g),
            Op::Cast(c) => self.cast(call, c),
            Op::KvAppend(k) => self.kv_append(call, k),
            Op::TakeLast(t) => self.take_last(call, t),
            Op::TakeRows(t) => self.take_rows(call, t),
            Op::PagedKvAppend(k) => self.paged_kv_append(call, k),
            Op::PagedAttention(a) => self.paged_attention(call, a),
            Op::Sample(s) => self.sample(call, s),
            Op::Collective(c) => self.collective(call, c),
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if matches!(self.graphs.mode, Mode::Capture { .. }) {
            self.discard_capture();
        }
        let _ = self.gpu.synchronize();
        self.graphs.clear();
        for b in self.tables.drain() {
            self.alloc.free(b);
        }
        self.alloc.free(self.scalars);
        self.alloc.free(self.sample_state);
        if self.sample_params.bytes > 0 {
            self.alloc.free(self.sample_params);
        }
        if self.decode_arrivals.bytes > 0 {
            self.alloc.free(self.decode_arrivals);
        }
        for (_, b) in self.buffers.drain() {
            self.alloc.free(b.block);
        }
        self.alloc.free(self.workspace);
    }
}
