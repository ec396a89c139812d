//! tperf's CUDA backend: the one schedule on NVIDIA GPUs.
//!
//! Nothing here needs the CUDA toolkit to build: cudarc loads libcuda, libnvrtc, libcublasLt,
//! and libcupti at run time (NVTX3 is compiled in), so one binary runs on machines with and without a
//! GPU, and [`device_count`] says which it is on.
//!
//! - `compile`: kernel sources (`kernels/*.cu`) embedded in the binary, compiled by NVRTC for the
//!   GPU present and cached on disk.
//! - `alloc`: the caching allocator and what it reserved from the driver.
//! - `blas`: matmuls through cuBLASLt.
//! - `ceilings`: what the GPU reaches (GEMM rates, bandwidths, launch cost), for `hw measure`.
//! - `backend`: [`CudaBackend`], the Backend trait over all of it; `ops/` holds the dispatch of
//!   each op family to its kernels.
//! - `timing`: CUDA events per op; `nvtx`: NVTX ranges per op.
//! - `graph`: CUDA graph capture and replay of repeated steps.
//! - `signatures`: every kernel's parameter list, checked at each launch.
//! - `error`: [`CudaError`], what failed and during what.

mod alloc;
mod backend;
pub mod blas;
pub mod ceilings;
pub mod compile;
pub mod conformance;
pub mod cupti;
pub mod error;
mod gpu;
mod graph;
mod nvtx;
mod ops;
mod signatures;
mod timing;

pub use backend::CudaBackend;
pub use error::CudaError;
pub use gpu::{device_count, DeviceInfo};
pub use graph::GraphStats;
