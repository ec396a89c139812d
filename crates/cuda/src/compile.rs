//! Kernel sources compiled by NVRTC for the GPU present, cached on disk.
//!
//! Each source in `kernels/` is embedded in the binary, prefixed with `common.cuh`, and compiled
//! to a cubin for the device's exact architecture (`sm_90` on an H100), so the driver loads
//! machine code and JIT-compiles nothing. NVRTC takes about 0.3 s per source, so the cubin is kept
//! under the cache directory, keyed by a hash of the full source text, the architecture, the
//! NVRTC version and the driver version: a second run compiles nothing, and any change to any of
//! them compiles afresh.

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use std::ffi::{CStr, CString};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

const COMMON: &str = include_str!("../kernels/common.cuh");

/// One kernel source file and the kernels it defines.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub name: &'static str,
    pub text: &'static str,
    /// Headers of `kernels/` placed between common.cuh and the text, as (file name, text).
    pub headers: &'static [(&'static str, &'static str)],
    /// The source uses instructions only an architecture-specific target has (`sm_90a`: Hopper's
    /// wgmma), so it is compiled for that target (see `target`) and loaded on no other device.
    pub arch_specific: bool,
}

macro_rules! source {
    ($name:literal) => {
        source!($name, [], false)
    };
    ($name:literal, [$($header:literal),*], $arch_specific:expr) => {
        Source {
            name: $name,
            text: include_str!(concat!("../kernels/", $name, ".cu")),
            headers: &[$(($header, include_str!(concat!("../kernels/", $header)))),*],
            arch_specific: $arch_specific,
        }
    };
}

/// Every kernel source tperf ships.
pub const SOURCES: &[Source] = &[
    source!("activation"),
    source!("gated"),
    source!("residual"),
    source!("cast"),
    source!("kv_cache"),
    source!("take_last"),
    source!("matmul"),
    source!("norms"),
    source!("rope"),
    source!("embedding"),
    source!("cross_entropy"),
    source!("grad_norm", ["tensor_table.cuh"], false),
    source!("adamw", ["tensor_table.cuh"], false),
    source!("attention"),
    source!("flash_attention"),
    source!("flash_mma", ["tensor_core.cuh"], false),
    source!("flash_wgmma", ["tensor_core.cuh"], true),
    source!("paged_attention"),
    source!("sampling"),
    source!("decode_attention"),
    source!("ceilings"),
];

pub fn source(name: &str) -> Option<Source> {
    SOURCES.iter().copied().find(|s| s.name == name)
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("NVRTC (libnvrtc) could not be loaded: {0}")]
    NoNvrtc(String),
    #[error("NVRTC failed to compile kernels/{file}.cu for {arch}:\n{log}")]
    Failed {
        file: &'static str,
        arch: String,
        log: String,
    },
    #[error("NVRTC {during}")]
    Nvrtc {
        during: &'static str,
        #[source]
        source: nvrtc::NvrtcError,
    },
    #[error("kernels/{file}.cu holds a NUL byte")]
    NulInSource { file: &'static str },
}

/// An NVRTC failure in `during`, for `map_err`.
fn nvrtc_err(during: &'static str) -> impl Fn(nvrtc::NvrtcError) -> CompileError {
    move |source| CompileError::Nvrtc { during, source }
}

/// The full text NVRTC compiles for `src`: common.cuh, its headers, then the source, each with
/// a `#line` so that NVRTC's messages name the right file and line.
fn full_text(src: &Source) -> String {
    let mut text = String::from(COMMON);
    for (name, header) in src.headers {
        text.push_str(&format!("\n#line 1 \"{name}\"\n{header}"));
    }
    text.push_str(&format!("\n#line 1 \"{}.cu\"\n{}", src.name, src.text));
    text
}

/// The architecture `src` is compiled for on a device of `arch` ("sm_90"): the device's own, or
/// for a source that needs them its architecture-specific features ("sm_90a"). None when the
/// device has no target `src` can be built for (an arch-specific source on a non-Hopper GPU).
pub fn target(src: &Source, arch: &str) -> Option<String> {
    match (src.arch_specific, arch) {
        (false, _) => Some(arch.to_string()),
        (true, "sm_90") => Some("sm_90a".to_string()),
        (true, _) => None,
    }
}

pub fn nvrtc_version() -> Result<(i32, i32), CompileError> {
    // SAFETY: only asks the loader whether libnvrtc was found.
    if !unsafe { nvrtc_sys::is_culib_present() } {
        return Err(CompileError::NoNvrtc(
            "libnvrtc.so was not found on the loader path".into(),
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints into the locals passed by reference.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(nvrtc_err("version"))?;
    Ok((major, minor))
}

/// Where cubins are kept: `$TPERF_KERNEL_CACHE`, else `$XDG_CACHE_HOME/tperf/kernels`, else
/// `~/.cache/tperf/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TPERF_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tperf").join("kernels"))
}

/// How a cubin was obtained, for the log line a profile prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cached,
}

/// The cubin of `src` for `arch` (e.g. "sm_90"), from the disk cache or freshly compiled (then
/// stored). `driver` is the driver version, part of the cache key.
pub fn cubin(src: &Source, arch: &str, driver: i32) -> Result<(Vec<u8>, Origin), CompileError> {
    let text = full_text(src);
    let nvrtc_ver = nvrtc_version()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&text, arch, nvrtc_ver, driver).hash(&mut h);
    let file =
        cache_dir().map(|d| d.join(format!("{}-{arch}-{:016x}.cubin", src.name, h.finish())));
    if let Some(bytes) = file.as_ref().and_then(|f| std::fs::read(f).ok()) {
        if !bytes.is_empty() {
            return Ok((bytes, Origin::Cached));
        }
    }
    let (bytes, _log) = compile(src, &text, arch)?;
    if let Some(file) = file {
        // Write to a temporary name and rename, so a concurrent or interrupted run never sees a
        // half-written cubin. A cache that cannot be written costs only the next compile.
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    Ok((bytes, Origin::Compiled))
}

/// The cubin and NVRTC's log (its warnings, ptxas's among them; empty when there are none).
fn compile(src: &Source, text: &str, arch: &str) -> Result<(Vec<u8>, String), CompileError> {
    let code = CString::new(text).map_err(|_| CompileError::NulInSource { file: src.name })?;
    let name = CString::new(format!("{}.cu", src.name)).expect("source names hold no NUL");
    let prog = nvrtc::create_program(&code, Some(&name)).map_err(nvrtc_err("create program"))?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
        "--extra-device-vectorization".to_string(),
    ];
    // SAFETY: `prog` was created above from a NUL-terminated source; the options are valid C
    // strings for the call's duration.
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    // SAFETY: `prog` is live; the log is copied out before the program is destroyed.
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| {
            // SAFETY: cudarc returns the log as a NUL-terminated buffer that lives in `l` during
            // this borrow.
            unsafe { CStr::from_ptr(l.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    if compiled.is_err() {
        // SAFETY: `prog` is not used after this.
        let _ = unsafe { nvrtc::destroy_program(prog) };
        return Err(CompileError::Failed {
            file: src.name,
            arch: arch.to_string(),
            log,
        });
    }
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; `buf` is exactly the size NVRTC reported for the cubin
    // it writes.
    let bytes = unsafe {
        nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size)
            .result()
            .map_err(nvrtc_err("cubin size"))?;
        let mut buf = vec![0u8; size];
        nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
            .result()
            .map_err(nvrtc_err("cubin"))?;
        buf
    };
    // SAFETY: the cubin has been copied out; `prog` is not used after this.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    Ok((bytes, log))
}

/// The cubin of `src` for `arch`, compiled without the cache: the compile check and SASS
/// inspection need no GPU, only NVRTC. NVRTC's warnings (ptxas's too, such as C7508 for an
/// ignored setmaxnreg) go to stderr.
pub fn check(src: &Source, arch: &str) -> Result<Vec<u8>, CompileError> {
    nvrtc_version()?;
    let (bytes, log) = compile(src, &full_text(src), arch)?;
    let log = log.trim();
    if !log.is_empty() {
        eprintln!("NVRTC log for kernels/{}.cu ({arch}):\n{log}", src.name);
    }
    Ok(bytes)
}
