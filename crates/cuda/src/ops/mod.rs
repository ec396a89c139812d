//! Dispatch of each op (or op family) to cuBLASLt or to its kernels in `kernels/<op>.cu`. Each file
//! adds methods to [`crate::CudaBackend`]; the CPU reference of the same op (in
//! `tperf_core::ops`) is the spec each kernel is tested against.

mod activation;
mod adamw;
mod attention;
mod cast;
mod checks;
pub(crate) mod collective;
mod cross_entropy;
mod decode;
mod embedding;
mod gated;
mod geglu;
mod grad_norm;
mod kv_cache;
mod matmul;
mod norm_matmul;
mod norms;
mod paged_attention;
mod residual;
mod rope;
mod sampling;
mod swiglu;
mod take_last;
pub(crate) mod tensor_table;
pub(crate) mod watchdog;

pub(crate) use sampling::sample_words;

/// `act_code` where ops/matmul.rs imports it from (`super::elementwise`), until that file, which
/// is being edited on another branch, imports `super::activation::act_code`; then delete this.
mod elementwise {
    pub(crate) use super::activation::act_code;
}

/// Threads per block of the row-wise kernels (one block per row): a multiple of 32 for the
/// warp reductions.
pub(crate) const ROW_THREADS: u32 = 256;

/// One block per item along x (rows of a row-wise kernel), capped at the grid's limit.
pub(crate) fn grid_1d(n: u64) -> (u32, u32, u32) {
    (n.min(u32::MAX as u64) as u32, 1, 1)
}
