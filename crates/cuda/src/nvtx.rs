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

/// Opens the range of one op: "op label", the layer and the op's index among the ops this
/// backend ran, e.g. "matmul attn.qkv h3 #57". The index is what lets a counter row from Nsight
/// Compute join the schedule's op (`tperf profile --counters`): names alone repeat, and an op
/// that launches no kernel would shift any join by order.
pub(crate) fn push(op: &str, label: &str, layer: Option<usize>, index: usize) {
    match layer {
        Some(l) => nvtx::range_push!("{op} {label} h{l} #{index}"),
        None => nvtx::range_push!("{op} {label} #{index}"),
    };
}

/// Opens a range with a name of the caller's (a step around the op ranges).
pub(crate) fn push_named(name: &str) {
    nvtx::range_push!("{name}");
}

pub(crate) fn pop() {
    nvtx::range_pop!();
}
