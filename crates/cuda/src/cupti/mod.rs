//! Kernel tracing through CUPTI's activity API: every kernel, memcpy and memset the GPU ran
//! between [`KernelTrace::start`] and [`KernelTrace::finish`], with its GPU start and end times,
//! name, stream and launch shape, and the op call that launched it.
//!
//! CUDA events (`timing`) time an op as the stream saw it, launch gaps included; CUPTI reports
//! each kernel's own execution interval, including the kernels a library launches behind one
//! call (cuBLASLt's split-K reductions, for one). From those intervals come the kernel table
//! ([`summarize`]), the share of wall time the GPU ran a kernel ([`busy_fraction`]), the idle
//! time between kernels on a stream ([`launch_gaps`]) and each op's own kernels
//! ([`kernels_by_op`]).
//!
//! - `collector`: the FFI side: activity buffers, CUPTI's callbacks, starting and stopping a
//!   trace, and [`OpScope`], which marks the CUDA calls of one op.
//! - `join`: which op each record belongs to, from CUPTI's external correlation records.
//! - `stats`: the kernel table, the busy fraction and the launch gaps.
//! - `names`: readable kernel names from mangled C++ ones.
//!
//! Timestamps are CUPTI's nanosecond clock; [`now_ns`] reads the same clock, for marking the wall
//! span a trace is measured against.

mod collector;
mod join;
mod names;
mod stats;

pub use collector::{now_ns, KernelTrace, OpScope, TraceError, TraceOutput};
pub use join::{attribute_ops, kernels_by_op, OpKernels};
pub use names::readable_name;
pub use stats::{busy_fraction, launch_gaps, summarize, KernelSummary};

/// One activity the GPU ran: a kernel, or a copy or fill, which a kernel table lists too.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelRecord {
    pub kind: ActivityKind,
    /// Readable name: for C++ kernels (cuBLASLt's, CUTLASS's) the qualified name with template
    /// arguments shown one level deep (see [`readable_name`]); extern "C" kernels (tperf's own)
    /// as they are; copies and fills as "memcpy HtoD", "memset".
    pub name: String,
    /// The name as CUPTI reported it: mangled for C++ kernels. Two kernels that differ only in
    /// deeply nested template arguments share a `name` but not a `raw_name`.
    pub raw_name: String,
    /// GPU timestamps in CUPTI's clock ([`now_ns`]).
    pub start_ns: u64,
    pub end_ns: u64,
    pub device_id: u32,
    pub context_id: u32,
    /// CUPTI's stream id (unique within a context), not the `CUstream` handle.
    pub stream_id: u32,
    /// Ties the record to the API call that launched it.
    pub correlation_id: u32,
    /// The op call that launched it: the index the backend gave the op when it issued it (an
    /// [`OpScope`] around the op's CUDA calls). None for work issued outside any op (fills of
    /// fresh tensors, input copies, a CUDA graph's replay).
    pub op_index: Option<usize>,
    /// Zero for copies and fills.
    pub grid: [i32; 3],
    pub block: [i32; 3],
    pub registers: u16,
    /// Static plus dynamic shared memory per block.
    pub shared_bytes: i32,
    /// Bytes copied or filled; zero for kernels.
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActivityKind {
    Kernel,
    Memcpy,
    Memset,
}

impl KernelRecord {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    pub fn is_kernel(&self) -> bool {
        self.kind == ActivityKind::Kernel
    }
}

/// Records for the tests of the statistics and the join.
#[cfg(test)]
pub(crate) mod test_records {
    use super::{ActivityKind, KernelRecord};

    pub fn rec(name: &str, stream: u32, start: u64, end: u64) -> KernelRecord {
        KernelRecord {
            kind: ActivityKind::Kernel,
            name: name.to_string(),
            raw_name: name.to_string(),
            start_ns: start,
            end_ns: end,
            device_id: 0,
            context_id: 1,
            stream_id: stream,
            correlation_id: 0,
            op_index: None,
            grid: [1, 1, 1],
            block: [128, 1, 1],
            registers: 32,
            shared_bytes: 0,
            bytes: 0,
        }
    }

    pub fn copy(stream: u32, start: u64, end: u64) -> KernelRecord {
        KernelRecord {
            kind: ActivityKind::Memcpy,
            bytes: 4096,
            ..rec("memcpy HtoD", stream, start, end)
        }
    }
}
