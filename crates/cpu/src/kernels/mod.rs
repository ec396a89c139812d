//! Fast kernels, one file per op. Each takes the same slices as the op's reference
//! implementation in `tperf_core::ops` and must agree with it within the tolerances the tests
//! state. Beside its kernel, each file holds the op's dispatch (`exec`): the call's operands
//! read by name, checked, and handed to the kernel.

pub mod activation;
pub mod adamw;
pub mod attention;
pub(crate) mod cast;
pub mod collective;
pub mod cross_entropy;
pub mod embedding;
pub mod flash_attention;
pub mod geglu;
pub mod grad_norm;
pub(crate) mod kv_cache;
pub mod layernorm;
pub mod matmul;
pub(crate) mod paged_attention;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub(crate) mod sampling;
pub mod swiglu;
pub(crate) mod take_last;

/// A raw pointer that rayon tasks may share, for kernels whose tasks write disjoint but
/// interleaved parts of one buffer (one attention head's columns of every row), which safe
/// slices cannot express.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);

// SAFETY: the kernels that use SyncPtr give every task a disjoint set of elements to write and
// read nothing that another task writes.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer. A method rather than field access so that closures capture the whole
    /// `SyncPtr` (which is Sync), not the bare pointer field (which is not).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Threads for gemm: all of rayon's.
pub(crate) fn gemm_parallelism() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(rayon::current_num_threads())
}

/// The one gemm call of the CPU kernels: dst (m×n, column stride 1, row stride dst_rs) =
/// beta·lhs·rhs (+ dst when `accumulate`), all strides in elements (column stride, then row
/// stride for each operand), on `par`'s threads.
///
/// # Safety
/// Every pointer must cover the elements its strides reach, and dst must not overlap the others.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn strided_gemm(
    par: gemm::Parallelism,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    (lhs, lhs_cs, lhs_rs): (*const f32, usize, usize),
    (rhs, rhs_cs, rhs_rs): (*const f32, usize, usize),
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        beta,
        false,
        false,
        false,
        par,
    );
}

/// The attention kernels' gemm call, `strided_gemm` on the calling thread because they run
/// inside rayon tasks.
///
/// # Safety
/// As `strided_gemm`.
pub(crate) unsafe fn serial_gemm(
    shape: (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
) {
    strided_gemm(
        gemm::Parallelism::None,
        shape,
        dst,
        dst_rs,
        accumulate,
        lhs,
        rhs,
        beta,
    );
}
