//! Every kernel source compiles with NVRTC for Hopper (sm_90) and Ampere (sm_80). Needs only
//! libnvrtc, no GPU; where NVRTC is absent (CI) the test says it skipped.

use tperf_cuda::compile::{self, CompileError, SOURCES};

#[test]
fn every_kernel_source_compiles() {
    for arch in ["sm_90", "sm_80"] {
        for src in SOURCES {
            match compile::check(src, arch) {
                Ok(bytes) => {
                    assert!(bytes > 0, "{} compiled to an empty cubin", src.name);
                    eprintln!("compiled kernels/{}.cu for {arch}: {bytes} bytes", src.name);
                }
                Err(CompileError::NoNvrtc(why)) => {
                    eprintln!("skipped: {why}");
                    return;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}
