//! NVTX ranges, one per op, so the schedule reads by name in Nsight Systems (and Nsight Compute
//! can filter by it). The `nvtx` crate compiles NVTX3's header-only implementation into the
//! binary: the first call looks for a tool through `NVTX_INJECTION64_PATH` (which nsys and ncu
//! set) and, where there is none, every later call is a no-op through a null function pointer.
//! Formatting a range's name still costs a little, so ranges are only made when a tool is
//! attached or `TPERF_NVTX=1` asks for them.

/// Whether to emit ranges in this process.
pub(crate) fn wanted() -> bool {
    let asked = std::env::var_os("TPERF_NVTX");
    match asked {
        Some(v) => v != "0",
        None => std::env::var_os("NVTX_INJECTION64_PATH").is_some(),
    }
}

/// Opens the range of one op: "op label" and the layer, e.g. "matmul attn.qkv h3".
pub(crate) fn push(op: &str, label: &str, layer: Option<usize>) {
    match layer {
        Some(l) => nvtx::range_push!("{op} {label} h{l}"),
        None => nvtx::range_push!("{op} {label}"),
    };
}

pub(crate) fn pop() {
    nvtx::range_pop!();
}
