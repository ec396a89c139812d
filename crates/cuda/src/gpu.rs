//! The device: a CUDA context and the stream every op is issued on, the kernel modules (compiled
//! on first use), and the launch call.

use crate::compile::{self, Origin};
use crate::error::{driver, CudaError};
use crate::signatures::{self, ArgKind};
use cudarc::driver::{result as cu, sys, CudaContext, CudaStream};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `tperf` prints about a GPU, read off the device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    pub sms: i32,
    pub total_bytes: u64,
    pub driver_version: i32,
}

impl DeviceInfo {
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.cc.0, self.cc.1)
    }
}

/// Number of CUDA devices, or why there are none (no driver library, no device).
pub fn device_count() -> Result<usize, CudaError> {
    // SAFETY: only asks the loader whether libcuda was found.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    cu::init().map_err(driver("the CUDA driver did not initialise"))?;
    let n = cu::device::get_count().map_err(driver("cuDeviceGetCount"))?;
    Ok(n.max(0) as usize)
}

/// A kernel argument as the kernel sees it: the `Buf` struct of common.cuh (pointer and dtype
/// code), or a scalar.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Buf(u64, i32),
    I64(i64),
    I32(i32),
    F32(f32),
    F64(f64),
    /// A raw device pointer (`float*` and friends).
    Ptr(u64),
}

/// Parameter storage for one launch: each value in its own 16-byte, 8-aligned slot (the largest
/// parameter is the 16-byte Buf), and the pointer array cuLaunchKernel reads them through.
struct Params {
    slots: Vec<[u64; 2]>,
}

impl Params {
    fn new(args: &[Arg]) -> Self {
        let slots = args
            .iter()
            .map(|a| match *a {
                Arg::Buf(p, dt) => [p, dt as u32 as u64],
                Arg::I64(v) => [v as u64, 0],
                Arg::I32(v) => [v as u32 as u64, 0],
                Arg::F32(v) => [v.to_bits() as u64, 0],
                Arg::F64(v) => [v.to_bits(), 0],
                Arg::Ptr(p) => [p, 0],
            })
            .collect();
        Params { slots }
    }
}

/// A loaded kernel, its parameters, and whether it is launched early.
#[derive(Clone, Copy)]
struct Kernel {
    f: sys::CUfunction,
    params: &'static [ArgKind],
    early: bool,
    /// Its static shared memory: with the dynamic bytes of a launch, what decides whether the
    /// launch must raise the 48 KB default limit.
    static_shared: u32,
}

pub struct Gpu {
    pub info: DeviceInfo,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    modules: HashMap<&'static str, sys::CUmodule>,
    /// Each kernel loaded so far, with its parameters from `signatures::KERNELS` and whether
    /// it is launched early (`early_launch` and `signatures::EARLY_LAUNCH`).
    functions: HashMap<(&'static str, &'static str), Kernel>,
    /// (source, how it was obtained, time) for each module loaded, for the run's log.
    pub compile_log: Vec<(&'static str, Origin, Duration)>,
    /// Whether kernels that wait for their predecessors themselves (`signatures::EARLY_LAUNCH`)
    /// are launched early: on Hopper and later unless `TPERF_PDL=0`.
    early_launch: bool,
}

impl Gpu {
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoSuchDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("creating the context"))?;
        // tperf issues everything on one stream and owns its memory through its own allocator
        // (raw pointers), so cudarc's per-buffer event tracking would only add work.
        // SAFETY: no buffer of cudarc's is in use: tperf allocates raw device pointers, orders all
        // work on one stream, and so never relies on cudarc's per-buffer events.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver("creating a stream"))?;
        let attr = |a| {
            ctx.attribute(a)
                .map_err(driver("reading a device attribute"))
        };
        let cc = (
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let sms = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let mut driver_version = 0;
        // SAFETY: writes one int into the local passed by reference.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(driver("cuDriverGetVersion"))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(driver("reading the device name"))?,
            cc,
            sms,
            total_bytes: ctx.total_mem().map_err(driver("reading the memory size"))? as u64,
            driver_version,
        };
        Ok(Gpu {
            info,
            ctx,
            stream,
            modules: HashMap::new(),
            functions: HashMap::new(),
            compile_log: Vec::new(),
            early_launch: cc.0 >= 9 && std::env::var("TPERF_PDL").map_or(true, |v| v != "0"),
        })
    }

    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// The kernel `kernel` of source `source` and its parameters, loading (and if need be
    /// compiling) the module. A kernel the signature table does not list is refused, so that
    /// every launch can be checked.
    fn kernel(&mut self, source: &'static str, kernel: &'static str) -> Result<Kernel, CudaError> {
        if let Some(&found) = self.functions.get(&(source, kernel)) {
            return Ok(found);
        }
        let params = signatures::signature(source, kernel).ok_or(CudaError::UnlistedKernel {
            module: source,
            kernel,
        })?;
        let module = match self.modules.get(source) {
            Some(&m) => m,
            None => {
                let src = compile::source(source).ok_or(CudaError::NoSource(source))?;
                let start = Instant::now();
                let arch = self.info.arch();
                let target = compile::target(&src, &arch).ok_or(CudaError::NoTarget {
                    module: source,
                    arch,
                })?;
                let (cubin, origin) = compile::cubin(&src, &target, self.info.driver_version)?;
                self.ctx
                    .bind_to_thread()
                    .map_err(driver("binding the context"))?;
                // SAFETY: `cubin` is a complete cubin image from NVRTC or the cache (keyed by the
                // source hash, architecture and versions) and outlives the call; the context is
                // bound to this thread just above.
                let m = unsafe { cu::module::load_data(cubin.as_ptr().cast()) }
                    .map_err(driver("loading a compiled module"))?;
                self.compile_log.push((source, origin, start.elapsed()));
                self.modules.insert(source, m);
                m
            }
        };
        let name = CString::new(kernel).expect("kernel names hold no NUL");
        // SAFETY: `module` is loaded and stays loaded until `Gpu` drops; `name` is a
        // NUL-terminated C string.
        let f =
            unsafe { cu::module::get_function(module, name) }.map_err(|e| CudaError::NoKernel {
                module: source,
                kernel,
                source: e,
            })?;
        // SAFETY: `f` is the live function just loaded; the attribute is an int byte count.
        let static_shared = unsafe {
            cu::function::get_function_attribute(
                f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
            )
        }
        .map_err(driver("reading a kernel's static shared memory"))?;
        let found = Kernel {
            f,
            params,
            early: self.early_launch && signatures::launches_early(source, kernel),
            static_shared: static_shared.max(0) as u32,
        };
        self.functions.insert((source, kernel), found);
        Ok(found)
    }

    /// Launches `kernel` of `source` on the stream.
    pub fn launch(
        &mut self,
        source: &'static str,
        kernel: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let Kernel {
            f,
            params,
            early,
            static_shared,
        } = self.kernel(source, kernel)?;
        // Always on, not a debug_assert: the tests run in release, and a wrong argument list
        // would corrupt the device silently. It compares a handful of enum tags per launch.
        if !signatures::matches(params, args) {
            return Err(CudaError::LaunchArgs {
                module: source,
                kernel,
                expected: params,
                got: args.iter().map(Arg::kind).collect(),
            });
        }
        // The default limit is 48 KB of static and dynamic shared memory together (gemv_rows_split
        // at 8 rows of K = 3072 stages exactly 48 KB of X beside its 256 static bytes).
        if shared_bytes + static_shared > 48 * 1024 {
            // SAFETY: `f` is a live function of a loaded module; the attribute takes an int byte
            // count.
            unsafe {
                cu::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared_bytes as i32,
                )
            }
            .map_err(|e| CudaError::SharedMemory {
                module: source,
                kernel,
                shared_bytes,
                source: e,
            })?;
        }
        let mut params = Params::new(args);
        let mut ptrs: Vec<*mut c_void> = params
            .slots
            .iter_mut()
            .map(|s| s.as_mut_ptr().cast())
            .collect();
        let launched = if early {
            self.launch_early(f, grid, block, shared_bytes, &mut ptrs)
        } else {
            // SAFETY: `f` is a loaded kernel and `args` matched its parameters in number and kind (the
            // check above, against the table that tests check against the .cu signatures); `ptrs`
            // points into `params`, one 16-byte slot per argument, both alive for the call
            // (cuLaunchKernel copies the values); device pointers in the arguments are live blocks the
            // caller checked hold the sizes the kernel reads.
            unsafe { cu::launch_kernel(f, grid, block, shared_bytes, self.cu_stream(), &mut ptrs) }
        };
        launched.map_err(|e| CudaError::Launch {
            module: source,
            kernel,
            source: e,
        })
    }

    /// cuLaunchKernelEx with programmatic stream serialisation: the driver may start this grid
    /// before the one ahead of it on the stream has finished (its blocks are scheduled once that
    /// grid's blocks have all passed PDL_ENTRY's trigger), and the kernel's own
    /// `griddepcontrol.wait` holds it until that grid's writes are visible. Under stream
    /// capture the dependency becomes a programmatic edge of the CUDA graph, so a replayed
    /// decode step keeps the overlap.
    fn launch_early(
        &self,
        f: sys::CUfunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        ptrs: &mut [*mut c_void],
    ) -> Result<(), cu::DriverError> {
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block.0,
            blockDimY: block.1,
            blockDimZ: block.2,
            sharedMemBytes: shared_bytes,
            hStream: self.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: `f` is a loaded kernel whose arguments the caller checked against its
        // signature; `ptrs` holds one pointer per parameter into storage alive for the call
        // (the driver copies the values); `config` and `attr` live across the call. The kernel
        // begins with PDL_ENTRY() (signatures::EARLY_LAUNCH, checked against the sources), so
        // an early start reads and writes nothing before its predecessors are done.
        unsafe { sys::cuLaunchKernelEx(&config, f, ptrs.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
    }

    /// A 1-D launch covering `n` elements with 256 threads a block (capped; kernels stride).
    pub fn launch_1d(
        &mut self,
        source: &'static str,
        kernel: &'static str,
        n: u64,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let blocks = n.div_ceil(256).min(self.info.sms as u64 * 32) as u32;
        self.launch(source, kernel, (blocks, 1, 1), (256, 1, 1), 0, args)
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(CudaError::Kernel)
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        for (_, m) in self.modules.drain() {
            // SAFETY: the stream was synchronised above, so no kernel of `m` is running; functions
            // of `m` are not used after this.
            let _ = unsafe { cu::module::unload(m) };
        }
    }
}
