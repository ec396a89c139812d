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
mod norms;
mod paged_attention;
mod residual;
mod rope;
mod sampling;
mod swiglu;
mod take_last;
pub(crate) mod tensor_table;
pub(crate) mod watchdog;

use crate::gpu::Arg;
pub(crate) use sampling::sample_words;

/// Threads per block of the row-wise kernels (one block per row): a multiple of 32 for the
/// warp reductions.
pub(crate) const ROW_THREADS: u32 = 256;

/// Whether device address `ptr` is 16-byte aligned: the condition of every kernel's vector path
/// (16-byte loads and stores: common.cuh's ld8/st8 and f32 ld4/st4, cp.async, uint4 words).
/// Null, an absent operand's address, is aligned: the kernel does not read it.
pub(crate) fn aligned_16(ptr: u64) -> bool {
    ptr.is_multiple_of(16)
}

/// Whether every argument is a buffer or pointer at a 16-byte aligned address (`aligned_16`).
pub(crate) fn all_aligned_16(args: &[&Arg]) -> bool {
    args.iter()
        .all(|a| matches!(a, Arg::Buf(p, _) | Arg::Ptr(p) if aligned_16(*p)))
}

/// One block per item along x (rows of a row-wise kernel), capped at the grid's limit.
pub(crate) fn grid_1d(n: u64) -> (u32, u32, u32) {
    (n.min(u32::MAX as u64) as u32, 1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_path_needs_16_byte_addresses_and_a_null_operand_has_one() {
        assert!(aligned_16(0) && aligned_16(0x7f00_0000_0010));
        assert!(!aligned_16(0x7f00_0000_0008));
        let (at_16, at_8) = (Arg::Buf(0x1000, 1), Arg::Buf(0x1008, 1));
        assert!(all_aligned_16(&[
            &at_16,
            &Arg::Buf(0, 0),
            &Arg::Ptr(0x2000)
        ]));
        assert!(!all_aligned_16(&[&at_16, &at_8]));
        assert!(!all_aligned_16(&[&Arg::I64(16)]), "a scalar is no address");
    }
}
