//! Every kernel source compiles with NVRTC for Hopper (sm_90, or sm_90a for the sources that use
//! its wgmma) and Ampere (sm_80, except those). Needs only
//! libnvrtc, no GPU; where NVRTC is absent (CI) the test says it skipped. With
//! `TPERF_DUMP_CUBIN=DIR` it also writes each cubin as `DIR/<source>-<arch>.cubin`, for reading the
//! SASS (`cuobjdump -sass`, `cuobjdump -res-usage`) without a GPU. `TPERF_COMPILE_ONLY=NAME`
//! compiles only kernels/NAME.cu, while a kernel is being written.

use tperf_cuda::compile::{self, CompileError, SOURCES};

#[test]
fn every_kernel_source_compiles() {
    let dump = std::env::var_os("TPERF_DUMP_CUBIN").map(std::path::PathBuf::from);
    let only = std::env::var("TPERF_COMPILE_ONLY").ok();
    for arch in ["sm_90", "sm_80"] {
        for src in SOURCES
            .iter()
            .filter(|s| only.as_deref().is_none_or(|o| o == s.name))
        {
            // A Hopper-only source builds for sm_90a, and for nothing on Ampere.
            let Some(arch) = compile::target(src, arch) else {
                continue;
            };
            let arch = arch.as_str();
            match compile::check(src, arch) {
                Ok(cubin) => {
                    assert!(!cubin.is_empty(), "{} compiled to an empty cubin", src.name);
                    let bytes = cubin.len();
                    eprintln!("compiled kernels/{}.cu for {arch}: {bytes} bytes", src.name);
                    if let Some(dir) = &dump {
                        std::fs::create_dir_all(dir)
                            .expect("TPERF_DUMP_CUBIN is a writable folder");
                        let file = dir.join(format!("{}-{arch}.cubin", src.name));
                        std::fs::write(&file, &cubin).expect("the cubin is written");
                    }
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
