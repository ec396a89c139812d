//! The whole model on the CUDA backend against the PyTorch fixtures, with the CPU backend's
//! checks and tolerances (crates/cpu/tests/common/pytorch_fixture.rs). Needs a CUDA device;
//! where there is none (CI) each test says it skipped.

#[path = "../../cpu/tests/common/pytorch_fixture.rs"]
mod fixture;

use fixture::check_family;
use tperf_core::schedule::AttentionKernel;
use tperf_cuda::CudaBackend;

fn has_gpu() -> bool {
    match tperf_cuda::device_count() {
        Ok(n) if n > 0 => true,
        Ok(_) => {
            eprintln!("skipped: no CUDA device");
            false
        }
        Err(why) => {
            eprintln!("skipped: {}", tperf_core::error::report(&why));
            false
        }
    }
}

fn gpu() -> CudaBackend {
    CudaBackend::new(0).expect("the CUDA device opens")
}

#[test]
fn llama_style_matches_pytorch_on_the_gpu() {
    if has_gpu() {
        check_family("llama", AttentionKernel::Flash, gpu);
        check_family("llama", AttentionKernel::Naive, gpu);
    }
}

#[test]
fn gpt2_style_matches_pytorch_on_the_gpu() {
    if has_gpu() {
        check_family("gpt2", AttentionKernel::Flash, gpu);
        check_family("gpt2", AttentionKernel::Naive, gpu);
    }
}

#[test]
fn report_style_matches_pytorch_on_the_gpu() {
    if has_gpu() {
        check_family("report", AttentionKernel::Flash, gpu);
        check_family("report", AttentionKernel::Naive, gpu);
    }
}
