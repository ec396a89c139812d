//! What this GPU reaches, measured: dense GEMM rates through cuBLASLt, DRAM and L2 bandwidth,
//! kernel launch cost eager and in a graph, and host↔device bandwidth. `tperf hw measure
//! --device cuda` prints these beside the datasheet and saves them as a hardware entry.
//!
//! Method, the same for every measurement: a warm-up (which also compiles the kernels, picks the
//! cuBLASLt algorithm and faults pages in), then `repeats` timed repetitions, each bracketed by
//! its own pair of CUDA events on the stream and synchronised, and the median taken. Where the
//! L2 cache would serve data a real step reads from DRAM (GEMM operands, the copy's buffers), a
//! 256 MiB memset (five times the 50 MB L2 of an H100/H200) runs before each repetition, outside
//! its events.

use crate::blas::{Blas, Compute, Gemm, WORKSPACE_BYTES};
use crate::error::{driver, CudaError};
use crate::gpu::{Arg, DeviceInfo, Gpu};
use cudarc::driver::{result as cu, sys};
use std::time::Instant;
use tperf_core::dtype::DType;

const SRC: &str = "ceilings";

/// Bytes written between repetitions to evict the L2: well above any current L2 (50 MB on
/// H100/H200, 40 MB on A100, 126 MB on B200), so nothing of the previous repetition survives.
pub const FLUSH_BYTES: u64 = 256 << 20;

/// The operand types a GEMM ceiling is measured in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmType {
    /// bf16 inputs and output, fp32 accumulation (tensor cores).
    Bf16,
    /// fp16 inputs and output, fp32 accumulation (tensor cores).
    F16,
    /// fp32 inputs and output, rounded to TF32 on the tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32).
    Tf32,
    /// fp32 in full precision (CUBLAS_COMPUTE_32F: CUDA-core FFMA), as tperf's fp32 matmuls run.
    F32,
}

impl GemmType {
    pub const ALL: [GemmType; 4] = [GemmType::Bf16, GemmType::F16, GemmType::Tf32, GemmType::F32];

    pub const fn name(self) -> &'static str {
        match self {
            GemmType::Bf16 => "bf16",
            GemmType::F16 => "fp16",
            GemmType::Tf32 => "tf32",
            GemmType::F32 => "fp32",
        }
    }

    fn storage(self) -> DType {
        match self {
            GemmType::Bf16 => DType::Bf16,
            GemmType::F16 => DType::F16,
            GemmType::Tf32 | GemmType::F32 => DType::F32,
        }
    }

    fn compute(self) -> Compute {
        match self {
            GemmType::Tf32 => Compute::Tf32,
            _ => Compute::F32,
        }
    }
}

/// What to measure. The defaults keep the whole run under about 30 s on an H100/H200.
#[derive(Clone, Debug)]
pub struct Options {
    pub repeats: usize,
    pub warmup: usize,
    /// n of the n×n×n GEMMs.
    pub squares: Vec<u64>,
    /// m of the decode-like m×n×k GEMMs (one weight matrix against a few rows).
    pub skinny_m: Vec<u64>,
    /// n = k of the decode-like GEMMs.
    pub skinny_nk: u64,
    pub gemm_types: Vec<GemmType>,
    /// Bytes of each of the copy's two buffers (source and destination).
    pub copy_bytes: u64,
    /// The working set of the L2 read: it must fit in the L2.
    pub l2_bytes: u64,
    /// Bytes of each host↔device transfer.
    pub host_bytes: u64,
    /// Empty kernels per launch-latency measurement.
    pub launches: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            repeats: 10,
            warmup: 3,
            squares: vec![1024, 2048, 4096, 8192],
            skinny_m: vec![1, 8, 32, 128],
            skinny_nk: 4096,
            gemm_types: GemmType::ALL.to_vec(),
            copy_bytes: 1 << 30,
            // A third of a 50 MB L2: Hopper's L2 is two partitions, and a set that fits one
            // stays resident wherever the hashing puts it.
            l2_bytes: 16 << 20,
            host_bytes: 256 << 20,
            launches: 2000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GemmPoint {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub dtype: GemmType,
    pub median_s: f64,
    /// 2mnk over the median time.
    pub flops_per_s: f64,
}

/// A transfer's rate. `bytes` is what one repetition counts (for a device copy, read plus
/// written).
#[derive(Clone, Debug)]
pub struct Rate {
    pub name: &'static str,
    pub bytes: u64,
    pub median_s: f64,
    pub bytes_per_s: f64,
    /// How it was timed and what was counted.
    pub method: String,
}

#[derive(Clone, Debug)]
pub struct Launch {
    /// GPU time per empty kernel when `launches` of them are issued back to back (events around
    /// the batch): the floor a step of many small kernels pays per kernel.
    pub eager_s: f64,
    /// Host time per cuLaunchKernel call in that batch.
    pub eager_host_s: f64,
    /// One launch then a synchronise, wall clock: what a lone kernel costs end to end.
    pub roundtrip_s: f64,
    /// GPU time per node of a captured graph of `launches` empty kernels.
    pub graph_node_s: f64,
    pub launches: usize,
}

#[derive(Clone, Debug)]
pub struct GpuCeilings {
    pub info: DeviceInfo,
    pub repeats: usize,
    pub warmup: usize,
    pub gemm: Vec<GemmPoint>,
    /// The copy kernel and cuMemcpyDtoD.
    pub dram: Vec<Rate>,
    pub l2: Rate,
    /// Host to device and device to host, pinned and pageable.
    pub host: Vec<Rate>,
    pub launch: Launch,
    /// What could not be measured, and why (a GEMM type cuBLASLt refused, say).
    pub skipped: Vec<String>,
}

/// A device allocation freed on drop.
struct DevBuf(u64);

impl DevBuf {
    fn new(bytes: u64) -> Result<Self, CudaError> {
        // SAFETY: cuMemAlloc takes a size and returns a fresh device pointer or an error; the
        // context is current (bound by `Gpu::open` and `Meter::new`).
        unsafe { cu::malloc_sync(bytes as usize) }
            .map(DevBuf)
            .map_err(driver("allocating a measurement buffer"))
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from cuMemAlloc and is freed once; cuMemFree waits for the work
        // that uses it.
        let _ = unsafe { cu::free_sync(self.0) };
    }
}

/// Page-locked host memory, freed on drop.
struct Pinned {
    ptr: *mut u8,
    len: usize,
}

impl Pinned {
    fn new(len: usize) -> Result<Self, CudaError> {
        // SAFETY: cuMemHostAlloc returns `len` bytes of page-locked host memory or an error.
        let ptr = unsafe { cu::malloc_host(len, 0) }.map_err(driver("allocating pinned memory"))?;
        // SAFETY: `ptr` holds `len` bytes just allocated; writing them touches every page.
        unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 1, len) };
        Ok(Pinned {
            ptr: ptr.cast(),
            len,
        })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` holds `len` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc and freed once; every transfer from it has been
        // synchronised before the measurement returns.
        let _ = unsafe { cu::free_host(self.ptr.cast()) };
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

struct Meter {
    gpu: Gpu,
    start: sys::CUevent,
    stop: sys::CUevent,
    flush: DevBuf,
    repeats: usize,
    warmup: usize,
}

impl Drop for Meter {
    fn drop(&mut self) {
        let _ = self.gpu.synchronize();
        // SAFETY: both events were created in `new` and the stream is synchronised.
        unsafe {
            let _ = cu::event::destroy(self.start);
            let _ = cu::event::destroy(self.stop);
        }
    }
}

impl Meter {
    fn new(ordinal: usize, opts: &Options) -> Result<Self, CudaError> {
        let gpu = Gpu::open(ordinal)?;
        gpu.ctx
            .bind_to_thread()
            .map_err(driver("binding the context"))?;
        let event = || {
            cu::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(driver("creating a CUDA event"))
        };
        let (start, stop) = (event()?, event()?);
        let flush = DevBuf::new(FLUSH_BYTES)?;
        Ok(Meter {
            gpu,
            start,
            stop,
            flush,
            repeats: opts.repeats.max(1),
            warmup: opts.warmup,
        })
    }

    fn stream(&self) -> sys::CUstream {
        self.gpu.cu_stream()
    }

    /// Launches one of this module's kernels; `what` names the measurement in errors.
    fn launch(
        &mut self,
        what: &'static str,
        source: &'static str,
        kernel: &'static str,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        self.gpu
            .launch(source, kernel, (grid, 1, 1), (block, 1, 1), 0, args)
            .map_err(|e| match e {
                CudaError::Launch { source, .. } => CudaError::Driver {
                    during: what,
                    source,
                },
                other => other,
            })
    }

    fn flush_l2(&self) -> Result<(), CudaError> {
        // SAFETY: `flush` is a live FLUSH_BYTES device buffer owned by the meter.
        unsafe { cu::memset_d8_async(self.flush.0, 0, FLUSH_BYTES as usize, self.stream()) }
            .map_err(driver("flushing the L2"))
    }

    fn record(&self, e: sys::CUevent) -> Result<(), CudaError> {
        // SAFETY: `e` is one of the meter's live events; the stream is the GPU's live stream.
        unsafe { cu::event::record(e, self.stream()) }.map_err(driver("recording an event"))
    }

    fn elapsed_s(&self) -> Result<f64, CudaError> {
        // SAFETY: `stop` was recorded after `start` on the stream; waiting on it completes both.
        unsafe { cu::event::synchronize(self.stop) }.map_err(CudaError::Kernel)?;
        // SAFETY: both events have completed (above).
        let ms = unsafe { cu::event::elapsed(self.start, self.stop) }
            .map_err(driver("reading an event"))?;
        Ok(f64::from(ms) * 1e-3)
    }

    /// The median GPU time of `body` over the repetitions, after the warm-up; the L2 is flushed
    /// before each run when `flush` says so.
    fn time(
        &mut self,
        flush: bool,
        mut body: impl FnMut(&mut Self) -> Result<(), CudaError>,
    ) -> Result<f64, CudaError> {
        let mut times = Vec::with_capacity(self.repeats);
        for i in 0..self.warmup + self.repeats {
            if flush {
                self.flush_l2()?;
            }
            self.record(self.start)?;
            body(self)?;
            self.record(self.stop)?;
            let t = self.elapsed_s()?;
            if i >= self.warmup {
                times.push(t);
            }
        }
        Ok(median(times))
    }

    fn fill(&mut self, ptr: u64, dtype: DType, n: u64, seed: i32) -> Result<(), CudaError> {
        let args = [
            Arg::Buf(ptr, crate::backend::dt_code(dtype)),
            Arg::I64(n as i64),
            Arg::I32(seed),
        ];
        let grid = (self.gpu.info.sms as u32) * 8;
        self.launch(
            "filling a GEMM operand",
            SRC,
            "fill_random",
            grid,
            256,
            &args,
        )
    }

    fn gemm(
        &mut self,
        blas: &mut Blas,
        (m, n, k): (u64, u64, u64),
        t: GemmType,
    ) -> Result<GemmPoint, CudaError> {
        let dt = t.storage();
        let size = dt.size_bytes();
        let (a, b, c) = (
            DevBuf::new(m * k * size)?,
            DevBuf::new(n * k * size)?,
            DevBuf::new(m * n * size)?,
        );
        self.fill(a.0, dt, m * k, 1)?;
        self.fill(b.0, dt, n * k, 2)?;
        // x·Wᵀ, the layout of every linear layer: activations m×k, weights n×k.
        let g = Gemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: true,
            ab_dtype: dt,
            c_dtype: dt,
            accumulate: false,
            bias: false,
            gelu_aux: false,
            ldc: None,
        };
        let stream = self.stream();
        let median_s = self.time(true, |_| {
            blas.gemm_with(&g, t.compute(), a.0, b.0, c.0, None, None, stream)
        })?;
        Ok(GemmPoint {
            m,
            n,
            k,
            dtype: t,
            median_s,
            flops_per_s: 2.0 * (m * n * k) as f64 / median_s,
        })
    }

    fn dram(&mut self, bytes: u64) -> Result<Vec<Rate>, CudaError> {
        let n16 = bytes / 16;
        let bytes = n16 * 16;
        let (src, dst) = (DevBuf::new(bytes)?, DevBuf::new(bytes)?);
        self.fill(src.0, DType::F32, bytes / 4, 3)?;
        let moved = 2 * bytes;
        // Enough blocks to fill every SM several times over; each thread then strides.
        let grid = (self.gpu.info.sms as u32) * 16;
        let kernel = self.time(true, |me| {
            let args = [Arg::Ptr(src.0), Arg::Ptr(dst.0), Arg::I64(n16 as i64)];
            me.launch("the copy kernel", SRC, "copy_words", grid, 256, &args)
        })?;
        let stream = self.stream();
        let memcpy = self.time(true, |_| {
            // SAFETY: both buffers are live and `bytes` long.
            unsafe { cu::memcpy_dtod_async(dst.0, src.0, bytes as usize, stream) }
                .map_err(driver("cuMemcpyDtoDAsync"))
        })?;
        let method = format!(
            "{} MiB copied, read + written bytes counted ({} MiB), L2 flushed before each",
            bytes >> 20,
            moved >> 20
        );
        Ok(vec![
            Rate {
                name: "copy kernel",
                bytes: moved,
                median_s: kernel,
                bytes_per_s: moved as f64 / kernel,
                method: format!("{method}; 16-byte loads and stores, grid-strided"),
            },
            Rate {
                name: "cuMemcpyDtoD",
                bytes: moved,
                median_s: memcpy,
                bytes_per_s: moved as f64 / memcpy,
                method,
            },
        ])
    }

    fn l2(&mut self, bytes: u64) -> Result<Rate, CudaError> {
        let n16 = bytes / 16;
        let bytes = n16 * 16;
        let (src, sink) = (DevBuf::new(bytes)?, DevBuf::new(16)?);
        self.fill(src.0, DType::F32, bytes / 4, 4)?;
        // Enough passes that the first (from DRAM) is a small part of the total.
        let passes: i32 = 64;
        let grid = (self.gpu.info.sms as u32) * 8;
        let median_s = self.time(false, |me| {
            let args = [
                Arg::Ptr(src.0),
                Arg::I64(n16 as i64),
                Arg::I32(passes),
                Arg::Ptr(sink.0),
            ];
            me.launch("the L2 read", SRC, "l2_read", grid, 512, &args)
        })?;
        let read = bytes * passes as u64;
        Ok(Rate {
            name: "L2 read",
            bytes: read,
            median_s,
            bytes_per_s: read as f64 / median_s,
            method: format!(
                "a {} MiB working set read {passes} times per launch with ld.global.cg (L2, not \
                 L1); bytes read counted; not flushed (the point is that it stays in L2)",
                bytes >> 20
            ),
        })
    }

    fn host(&mut self, bytes: u64) -> Result<Vec<Rate>, CudaError> {
        let len = bytes as usize;
        let dev = DevBuf::new(bytes)?;
        let mut pinned = Pinned::new(len)?;
        let mut pageable = vec![1u8; len];
        let stream = self.stream();
        let h2d_pinned = self.time(false, |_| {
            // SAFETY: `dev` holds `len` bytes; `pinned` is page-locked and outlives the
            // synchronised repetition.
            unsafe { cu::memcpy_htod_async(dev.0, pinned.as_mut_slice(), stream) }
                .map_err(driver("copying pinned memory to the device"))
        })?;
        let d2h_pinned = self.time(false, |_| {
            // SAFETY: as above, the other way.
            unsafe { cu::memcpy_dtoh_async(pinned.as_mut_slice(), dev.0, stream) }
                .map_err(driver("copying device memory to pinned memory"))
        })?;
        // Pageable copies are staged by the driver through its own pinned buffers while the
        // calling thread waits, so they are timed by the wall clock around a synchronous copy.
        let mut wall = |to_device: bool| -> Result<f64, CudaError> {
            let mut times = Vec::new();
            for i in 0..self.warmup + self.repeats {
                let t0 = Instant::now();
                // SAFETY: `dev` and `pageable` are both `len` bytes; the copies are synchronous.
                if to_device {
                    unsafe { cu::memcpy_htod_sync(dev.0, &pageable) }
                        .map_err(driver("copying pageable memory to the device"))?;
                } else {
                    unsafe { cu::memcpy_dtoh_sync(&mut pageable, dev.0) }
                        .map_err(driver("copying device memory to pageable memory"))?;
                }
                if i >= self.warmup {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
            Ok(median(times))
        };
        let h2d_pageable = wall(true)?;
        let d2h_pageable = wall(false)?;
        let mib = bytes >> 20;
        let rate = |name, s: f64, method: String| Rate {
            name,
            bytes,
            median_s: s,
            bytes_per_s: bytes as f64 / s,
            method,
        };
        let events = format!("{mib} MiB, CUDA events around cuMemcpyAsync");
        let clock = format!("{mib} MiB, wall clock around a synchronous cuMemcpy");
        Ok(vec![
            rate("host→device pinned", h2d_pinned, events.clone()),
            rate("device→host pinned", d2h_pinned, events),
            rate("host→device pageable", h2d_pageable, clock.clone()),
            rate("device→host pageable", d2h_pageable, clock),
        ])
    }

    fn launch_latency(&mut self, launches: usize) -> Result<Launch, CudaError> {
        let launches = launches.max(1);
        let empty = |me: &mut Self| me.launch("an empty kernel", SRC, "empty", 1, 32, &[]);
        empty(self)?;
        self.gpu.synchronize()?;

        let mut host = Vec::new();
        let batch = self.time(false, |me| {
            let t0 = Instant::now();
            for _ in 0..launches {
                empty(me)?;
            }
            host.push(t0.elapsed().as_secs_f64());
            Ok(())
        })?;

        let mut roundtrips = Vec::new();
        for i in 0..self.warmup + self.repeats * 20 {
            let t0 = Instant::now();
            empty(self)?;
            self.gpu.synchronize()?;
            if i >= self.warmup {
                roundtrips.push(t0.elapsed().as_secs_f64());
            }
        }

        let stream = self.stream();
        // SAFETY: the stream is the meter's own and no capture is in progress on it; the capture
        // ends below on every path.
        unsafe {
            cu::stream::begin_capture(
                stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .map_err(driver("beginning a graph capture"))?;
        let mut captured = Ok(());
        for _ in 0..launches {
            captured = empty(self);
            if captured.is_err() {
                break;
            }
        }
        // SAFETY: ends the capture begun above, on the same stream.
        let graph =
            unsafe { cu::stream::end_capture(stream) }.map_err(driver("ending a graph capture"))?;
        let graph_s = (|| {
            captured?;
            // SAFETY: `graph` is the graph just captured; the executable is destroyed below.
            let exec = unsafe { cu::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) }
                .map_err(driver("instantiating the graph"))?;
            let timed = self.time(false, |me| {
                // SAFETY: `exec` is live; its nodes are empty kernels that touch no memory.
                unsafe { cu::graph::launch(exec, me.stream()) }
                    .map_err(driver("launching the graph"))
            });
            // SAFETY: the repetitions synchronised on their stop events, so the graph is idle.
            let _ = unsafe { cu::graph::exec_destroy(exec) };
            timed
        })();
        // SAFETY: captured above and used by nothing else now.
        let _ = unsafe { cu::graph::destroy(graph) };
        let n = launches as f64;
        Ok(Launch {
            eager_s: batch / n,
            eager_host_s: median(host) / n,
            roundtrip_s: median(roundtrips),
            graph_node_s: graph_s? / n,
            launches,
        })
    }
}

/// Measures cuda:`ordinal`'s ceilings; `progress` is told each step as it starts.
pub fn measure(
    ordinal: usize,
    opts: &Options,
    mut progress: impl FnMut(&str),
) -> Result<GpuCeilings, CudaError> {
    let mut meter = Meter::new(ordinal, opts)?;
    let workspace = DevBuf::new(WORKSPACE_BYTES as u64)?;
    let mut blas = Blas::new(workspace.0)?;
    let mut shapes: Vec<(u64, u64, u64)> = opts.squares.iter().map(|&n| (n, n, n)).collect();
    let nk = opts.skinny_nk;
    shapes.extend(opts.skinny_m.iter().map(|&m| (m, nk, nk)));
    let mut gemm = Vec::new();
    let mut skipped = Vec::new();
    for &t in &opts.gemm_types {
        progress(&format!("GEMM {} ({} shapes)", t.name(), shapes.len()));
        for &shape in &shapes {
            match meter.gemm(&mut blas, shape, t) {
                Ok(p) => gemm.push(p),
                // A type this GPU or cuBLASLt cannot run is reported, not fatal.
                Err(e @ CudaError::NoAlgorithm { .. }) => skipped.push(format!(
                    "GEMM {} {}×{}×{}: {e}",
                    t.name(),
                    shape.0,
                    shape.1,
                    shape.2
                )),
                Err(e) => return Err(e),
            }
        }
    }
    progress("DRAM copy bandwidth");
    let dram = meter.dram(opts.copy_bytes)?;
    progress("L2 read bandwidth");
    let l2 = meter.l2(opts.l2_bytes)?;
    progress("host↔device bandwidth");
    let host = meter.host(opts.host_bytes)?;
    progress("kernel launch latency");
    let launch = meter.launch_latency(opts.launches)?;
    drop(blas);
    Ok(GpuCeilings {
        info: meter.gpu.info.clone(),
        repeats: meter.repeats,
        warmup: meter.warmup,
        gemm,
        dram,
        l2,
        host,
        launch,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn the_default_gemm_shapes_are_the_issue_s() {
        let o = Options::default();
        assert_eq!(o.squares, [1024, 2048, 4096, 8192]);
        assert_eq!(o.skinny_m, [1, 8, 32, 128]);
        assert_eq!(o.gemm_types.len(), 4);
        // The L2 working set must fit a 50 MB L2 with room to spare, and the copy must not.
        assert!(o.l2_bytes * 2 < 50_000_000);
        assert!(o.copy_bytes > 10 * 50_000_000);
    }
}
