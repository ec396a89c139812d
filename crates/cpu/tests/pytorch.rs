//! The whole model on the CPU backend against PyTorch fixtures (the checks: pytorch_fixture.rs).

#[path = "common/pytorch_fixture.rs"]
mod fixture;

use fixture::check_family;
use tperf_core::schedule::AttentionKernel;
use tperf_cpu::CpuBackend;

#[test]
fn llama_style_matches_pytorch() {
    check_family("llama", AttentionKernel::Flash, CpuBackend::new);
    check_family("llama", AttentionKernel::Naive, CpuBackend::new);
}

#[test]
fn gpt2_style_matches_pytorch() {
    check_family("gpt2", AttentionKernel::Flash, CpuBackend::new);
    check_family("gpt2", AttentionKernel::Naive, CpuBackend::new);
}

#[test]
fn report_style_matches_pytorch() {
    check_family("report", AttentionKernel::Flash, CpuBackend::new);
    check_family("report", AttentionKernel::Naive, CpuBackend::new);
}
