//! What can fail in the CUDA backend, by the library that failed and what tperf was doing.
//!
//! Each variant keeps the library's own error as `source()` and says in its Display only what
//! was being done, so an error chain prints each part once; where the Backend trait needs a
//! [`BackendError`] the chain becomes its message (`From<CudaError>`).

use crate::blas::Gemm;
use crate::compile::CompileError;
use crate::signatures::ArgKind;
use cudarc::cublaslt::result::CublasError;
use cudarc::driver::DriverError;
use tperf_core::backend::BackendError;
use tperf_core::error::report;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no NVIDIA driver (libcuda.so) on this machine")]
    NoDriver,
    #[error("cuda:{ordinal} does not exist: this machine has {count} CUDA device(s)")]
    NoSuchDevice { ordinal: usize, count: usize },
    /// A driver call failed; `during` says what it was for.
    #[error("{during}")]
    Driver {
        during: &'static str,
        #[source]
        source: DriverError,
    },
    /// A driver call on one tensor failed (zeroing, reading or writing it).
    #[error("{during} '{tensor}'")]
    Tensor {
        during: &'static str,
        tensor: String,
        #[source]
        source: DriverError,
    },
    #[error("no kernel source named '{0}'")]
    NoSource(&'static str),
    #[error("kernel '{kernel}' is not in {module}.cu")]
    NoKernel {
        module: &'static str,
        kernel: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("allowing {module}::{kernel} {shared_bytes} bytes of shared memory")]
    SharedMemory {
        module: &'static str,
        kernel: &'static str,
        shared_bytes: u32,
        #[source]
        source: DriverError,
    },
    #[error("launching {module}::{kernel}")]
    Launch {
        module: &'static str,
        kernel: &'static str,
        #[source]
        source: DriverError,
    },
    /// A launch whose arguments do not match the kernel's parameters (signatures.rs).
    #[error("launching {module}::{kernel} with arguments {got:?} where it takes {expected:?}")]
    LaunchArgs {
        module: &'static str,
        kernel: &'static str,
        expected: &'static [ArgKind],
        got: Vec<ArgKind>,
    },
    /// A source built only for an architecture-specific target (compile::target) asked for on
    /// a device without it; the host picks those kernels only on such devices.
    #[error("kernels/{module}.cu needs Hopper's sm_90a features; this GPU is {arch}")]
    NoTarget { module: &'static str, arch: String },
    #[error("{module}::{kernel} is not in signatures::KERNELS")]
    UnlistedKernel {
        module: &'static str,
        kernel: &'static str,
    },
    #[error("a kernel failed")]
    Kernel(#[source] DriverError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("libcublasLt.so was not found on the loader path")]
    NoCublasLt,
    /// A cuBLASLt call failed; `during` says which.
    #[error("cuBLASLt {during}")]
    Blas {
        during: &'static str,
        #[source]
        source: CublasError,
    },
    #[error("cuBLASLt has no algorithm for {gemm:?}")]
    NoAlgorithm {
        gemm: Gemm,
        #[source]
        source: CublasError,
    },
    #[error("the GELU epilogue needs its auxiliary output, and only it")]
    GeluAuxMismatch,
    #[error("the GELU epilogue needs N a multiple of 8, not {n}")]
    GeluAuxN { n: u64 },
    /// CUPTI's collector (cupti/collector.rs).
    #[error(transparent)]
    Trace(#[from] crate::cupti::TraceError),
}

/// A driver failure while doing `during`, for `map_err`.
pub(crate) fn driver(during: &'static str) -> impl Fn(DriverError) -> CudaError {
    move |source| CudaError::Driver { during, source }
}

/// A cuBLASLt failure in `during`, for `map_err`.
pub(crate) fn blas(during: &'static str) -> impl Fn(CublasError) -> CudaError {
    move |source| CudaError::Blas { during, source }
}

impl From<CudaError> for BackendError {
    fn from(e: CudaError) -> Self {
        crate::backend::device_err(report(&e))
    }
}
