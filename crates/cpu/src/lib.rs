//! tperf's CPU backend: the one schedule computed for real.
//!
//! Storage precision is emulated: host memory is always f32, and a tensor whose dtype is bf16 or
//! f16 holds f32 values rounded to that dtype at every write (by `write_f32` and after every op
//! that outputs it). Arithmetic is f32 throughout, which is what mixed-precision hardware does
//! inside its accumulators; the memory accounting counts each tensor at its dtype's width, as the
//! Meta backend does, so the two timelines compare.
//!
//! Fast kernels live in `kernels/<op>.rs`, named after the op file in `tperf_core::ops` whose
//! reference implementation they are tested against: matmuls through the `gemm` crate, row-wise
//! ops in parallel with rayon, flash attention tiled and parallel over (batch, head).

mod backend;
mod exec;
pub mod kernels;

pub use backend::CpuBackend;
