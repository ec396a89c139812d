//! Ragged batches over a paged KV cache on the CUDA backend: the CPU's contract test
//! (crates/cpu/tests/common/ragged.rs) run on the GPU, in f32 and bf16. Needs a CUDA device;
//! where there is none (CI) it says it skipped.
//!
//! Tolerances (the ragged path against the contiguous one, both on the GPU): f32 1e-4 absolute
//! (the paged kernel and flash attention reduce in different orders); bf16 2e-2, a few bf16 ulps
//! of logits of order 1 (a one-ulp difference in an intermediate can flip a later rounding).

#[path = "../../cpu/tests/common/ragged.rs"]
mod ragged;

use ragged::{check_ragged_matches_alone, families};
use tperf_core::schedule::Precision;
use tperf_cuda::conformance::gpu_or_skip;

#[test]
fn a_ragged_batch_gives_each_sequence_its_own_logits_on_the_gpu() {
    let Some(mut gpu) = gpu_or_skip() else { return };
    for (name, cfg) in families() {
        check_ragged_matches_alone(&mut gpu, name, &cfg, Precision::Fp32, 1e-4);
        check_ragged_matches_alone(&mut gpu, name, &cfg, Precision::Bf16, 2e-2);
    }
}
