//! tperf's CPU backend: the one schedule computed for real.
//!
//! Arithmetic is f32 throughout, which is what mixed-precision hardware does inside its
//! accumulators. A bf16/f16 weight is stored in 16 bits and widened to f32 when an op reads it
//! (an op that writes one, such as a mixed-precision copy's cast, writes an f32 temporary that
//! is rounded into the storage when the op finishes); every other bf16/f16 tensor is stored in
//! f32 holding values rounded to its dtype at every write (by `write_f32` and after every op
//! that outputs it). Both hold the same values, so results do not depend on the storage
//! (`tests/storage_16bit.rs`). The memory accounting counts each tensor at its dtype's width, as
//! the Meta backend does, so the two timelines compare; for weights it is also what is held.
//!
//! Fast kernels live in `kernels/<op>.rs`, named after the op file in `tperf_core::ops` whose
//! reference implementation they are tested against: matmuls through the `gemm` crate, row-wise
//! ops in parallel with rayon, flash attention tiled and parallel over (batch, head).

mod backend;
mod exec;
pub mod kernels;

pub use backend::CpuBackend;

/// The threads the kernels run on: rayon's global pool, one per core unless
/// `RAYON_NUM_THREADS` says otherwise (the launcher sets it for each CPU rank of `--ranks N`).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// "cpu (N threads)", as the commands name the CPU device they ran on.
pub fn device_label() -> String {
    match threads() {
        1 => "cpu (1 thread)".to_string(),
        n => format!("cpu ({n} threads)"),
    }
}
