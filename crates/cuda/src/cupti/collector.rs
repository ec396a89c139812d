//! The collector: CUPTI's activity buffers and callbacks, and a trace's start and stop.
//!
//! CUPTI hands records back in buffers it asks us for, through two C callbacks it calls from its
//! own thread (or from the thread that flushes). A C callback carries no state, so records land
//! in a process-wide collector, and so only one trace can run at a time.

use super::join::attribute_ops;
use super::{readable_name, ActivityKind, KernelRecord};
use cudarc::cupti::result::{self as cupti, activity, CuptiError};
use cudarc::cupti::sys;
use std::alloc::{self, Layout};
use std::collections::HashMap;
use std::ffi::CStr;
use std::ptr;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TraceError {
    #[error(
        "libcupti not found on the loader path (it ships with the CUDA toolkit, in \
         extras/CUPTI/lib64 or targets/*/lib)"
    )]
    LibraryMissing,
    /// A CUPTI call failed; `message` is CUPTI's text for the code, where it has one.
    #[error("{call}: {code:?}{}", message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Call {
        call: String,
        code: sys::CUptiResult,
        message: Option<String>,
    },
    #[error(
        "libcupti reports API version {0}; this build reads CUDA 13's record layouts (API 13xxxx)"
    )]
    Version(u32),
    #[error("a kernel trace is already running: finish it first")]
    AlreadyRunning,
    #[error("no kernel trace was started")]
    NotStarted,
    /// Tracing ran, but a failure along the way (flushing, walking a buffer, marking an op)
    /// means records may be missing or unattributed.
    #[error("the kernel trace is incomplete: {0}")]
    Incomplete(Box<TraceError>),
}

/// What a finished trace returns.
#[derive(Clone, Debug, Default)]
pub struct TraceOutput {
    /// Sorted by start time, each with the op that launched it where one did.
    pub records: Vec<KernelRecord>,
    /// Records CUPTI could not store for want of buffer space. Non-zero means the table and
    /// the utilisation figures undercount.
    pub dropped: u64,
    /// Records without an end time: the activity had not finished when the trace was flushed
    /// (the caller did not synchronise before `finish`). Left out of `records`.
    pub incomplete: u64,
}

/// The kinds every trace enables. CONCURRENT_KERNEL rather than KERNEL: the latter serialises
/// all kernels on the device, which would change what is being measured. EXTERNAL_CORRELATION
/// ties records to ops ([`OpScope`]); CUPTI writes its records only beside the records of API
/// calls, so those are enabled too, and read past. Both APIs: cuBLASLt launches its GEMM kernels
/// through the driver but its split-K reduction through the runtime, and with either kind alone
/// some kernels joined no op (seen on an H200, CUDA 13.0).
const KINDS: [sys::CUpti_ActivityKind; 6] = [
    sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
    sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_MEMCPY,
    sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_MEMSET,
    sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION,
    sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_DRIVER,
    sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_RUNTIME,
];

/// The external correlation kind the op indices are pushed under (CUSTOM0 is the first of those
/// CUPTI leaves to tools; OpenACC and the like have their own).
const OP_KIND: sys::CUpti_ExternalCorrelationKind =
    sys::CUpti_ExternalCorrelationKind::CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0;

/// Activity buffers: 8 MiB holds tens of thousands of kernel records (about 200 bytes each), so
/// a training step fills few of them. CUPTI requires 8-byte alignment.
const BUFFER_BYTES: usize = 8 << 20;
const BUFFER_LAYOUT: Layout = match Layout::from_size_align(BUFFER_BYTES, 8) {
    Ok(layout) => layout,
    Err(_) => panic!("8 MiB at 8-byte alignment is a valid layout"),
};

/// The records of the running trace, filled by the buffer-completed callback.
struct Collector {
    /// A trace is running; buffers completed while none is (late deliveries) are only freed.
    active: bool,
    records: Vec<KernelRecord>,
    /// (correlation id, op index) of every external correlation record of the op kind.
    op_of_call: Vec<(u32, u64)>,
    dropped: u64,
    incomplete: u64,
    /// The first failure to walk a buffer (the records after it in that buffer are lost) or to
    /// mark an op.
    error: Option<TraceError>,
}

static COLLECTOR: Mutex<Collector> = Mutex::new(Collector {
    active: false,
    records: Vec::new(),
    op_of_call: Vec::new(),
    dropped: 0,
    incomplete: 0,
    error: None,
});

/// The collector, even if a thread panicked while holding it: its contents stay consistent
/// (every update is a push or an add), and the callbacks must not panic across the C boundary.
fn collector() -> MutexGuard<'static, Collector> {
    COLLECTOR.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether libcupti can be loaded, probed once: `is_culib_present` opens the library each time
/// and [`now_ns`] may be called per step.
fn cupti_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen the candidate library names; calls nothing in them.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

fn require_cupti() -> Result<(), TraceError> {
    if cupti_present() {
        Ok(())
    } else {
        Err(TraceError::LibraryMissing)
    }
}

/// The error of a failed CUPTI call. cudarc's `Debug` for CuptiError unwraps the message
/// lookup; this does not.
fn call_failed(call: impl Into<String>) -> impl FnOnce(CuptiError) -> TraceError {
    move |e| TraceError::Call {
        call: call.into(),
        code: e.0,
        message: e
            .error_string()
            .ok()
            .map(|m| m.to_string_lossy().into_owned()),
    }
}

/// Now, in CUPTI's clock: the clock of every record's `start_ns` and `end_ns`.
pub fn now_ns() -> Result<u64, TraceError> {
    require_cupti()?;
    let mut t = 0u64;
    // SAFETY: `t` is a live u64 CUPTI writes the timestamp into.
    unsafe { cupti::get_timestamp(&mut t) }.map_err(call_failed("cuptiGetTimestamp"))?;
    Ok(t)
}

/// The record layouts read here (the common prefix of CUpti_ActivityKernel9 to 13,
/// CUpti_ActivityMemcpy6, CUpti_ActivityMemset4, CUpti_ActivityExternalCorrelation) are CUDA
/// 13's; another major version of libcupti could lay them out differently, and a misread record
/// is silent garbage.
fn check_version() -> Result<(), TraceError> {
    let mut version = 0u32;
    // SAFETY: `version` is a live u32 CUPTI writes into.
    unsafe { sys::cuptiGetVersion(&mut version) }
        .result()
        .map_err(call_failed("cuptiGetVersion"))?;
    // CUDA 13's CUPTI numbers its API as major·10000 + minor·100 + patch (130001 for 13.0).
    if (130_000..140_000).contains(&version) {
        Ok(())
    } else {
        Err(TraceError::Version(version))
    }
}

/// Hands CUPTI an empty buffer. A null buffer (allocation failed) makes CUPTI drop records,
/// which the dropped count then reports.
unsafe extern "C" fn buffer_requested(
    buffer: *mut *mut u8,
    size: *mut usize,
    max_records: *mut usize,
) {
    if buffer.is_null() || size.is_null() || max_records.is_null() {
        return;
    }
    // SAFETY: BUFFER_LAYOUT has a non-zero size.
    let p = unsafe { alloc::alloc(BUFFER_LAYOUT) };
    // SAFETY: CUPTI passes valid out-pointers, checked non-null above.
    unsafe {
        *buffer = p;
        *size = if p.is_null() { 0 } else { BUFFER_BYTES };
        // Zero: as many records as fit.
        *max_records = 0;
    }
}

/// Takes a filled buffer back: parses its records into the collector and frees it.
unsafe extern "C" fn buffer_completed(
    context: cudarc::driver::sys::CUcontext,
    stream_id: u32,
    buffer: *mut u8,
    _size: usize,
    valid_size: usize,
) {
    if buffer.is_null() {
        return;
    }
    let mut records = Vec::new();
    let mut op_of_call = Vec::new();
    let mut incomplete = 0u64;
    let mut error = None;
    let mut record: *mut sys::CUpti_Activity = ptr::null_mut();
    loop {
        // SAFETY: `buffer` is a buffer we allocated and CUPTI filled up to `valid_size`;
        // `record` is the cursor CUPTI advances (null to start).
        let status = unsafe { sys::cuptiActivityGetNextRecord(buffer, valid_size, &mut record) };
        match status {
            sys::CUptiResult::CUPTI_SUCCESS => {
                // SAFETY: CUPTI just returned `record` as a complete record inside `buffer`.
                match unsafe { parse(record) } {
                    Parsed::Record(r) => records.push(r),
                    Parsed::OpCall {
                        correlation_id,
                        op_index,
                    } => op_of_call.push((correlation_id, op_index)),
                    Parsed::Incomplete => incomplete += 1,
                    Parsed::Other => {}
                }
            }
            sys::CUptiResult::CUPTI_ERROR_MAX_LIMIT_REACHED => break,
            other => {
                error = Some(call_failed("cuptiActivityGetNextRecord")(CuptiError(other)));
                break;
            }
        }
    }
    let mut dropped = 0usize;
    // SAFETY: `context` and `stream_id` are the ones CUPTI passed for this buffer's queue;
    // `dropped` is a live usize. A failure leaves it at zero.
    let _ = unsafe { sys::cuptiActivityGetNumDroppedRecords(context, stream_id, &mut dropped) };
    // SAFETY: `buffer` came from `buffer_requested` with BUFFER_LAYOUT, and CUPTI is done with
    // it once this callback runs; the parsed records hold copies, not pointers into it.
    unsafe { alloc::dealloc(buffer, BUFFER_LAYOUT) };

    let mut c = collector();
    if c.active {
        c.records.append(&mut records);
        c.op_of_call.append(&mut op_of_call);
        c.incomplete += incomplete;
        c.dropped += dropped as u64;
        if c.error.is_none() {
            c.error = error;
        }
    }
}

enum Parsed {
    Record(KernelRecord),
    /// An external correlation record of [`OP_KIND`]: the API call `correlation_id` ran inside
    /// the op `op_index`.
    OpCall {
        correlation_id: u32,
        op_index: u64,
    },
    Incomplete,
    /// A kind not traced here.
    Other,
}

/// Reads a field of a packed CUPTI record without forming a reference to it (packed fields
/// may be unaligned) and without reading any other field.
macro_rules! field {
    ($p:expr, $f:ident) => {
        ptr::addr_of!((*$p).$f).read_unaligned()
    };
}

/// A memcpy or memset record as a [`KernelRecord`]: both carry the timing, placement and byte
/// count under the same field names, only their structs differ. Reads through `field!`, so it
/// expands inside the caller's `unsafe` block.
macro_rules! transfer_record {
    ($m:expr, $kind:expr, $raw_name:expr) => {{
        let (start, end) = (field!($m, start), field!($m, end));
        if start == 0 || end < start {
            Parsed::Incomplete
        } else {
            Parsed::Record(KernelRecord {
                kind: $kind,
                name: String::new(),
                raw_name: $raw_name.to_string(),
                start_ns: start,
                end_ns: end,
                device_id: field!($m, deviceId),
                context_id: field!($m, contextId),
                stream_id: field!($m, streamId),
                correlation_id: field!($m, correlationId),
                grid: [0; 3],
                block: [0; 3],
                registers: 0,
                shared_bytes: 0,
                bytes: field!($m, bytes),
                op_index: None,
            })
        }
    }};
}

/// # Safety
/// `record` points at a complete activity record in a buffer CUPTI returned.
unsafe fn parse(record: *const sys::CUpti_Activity) -> Parsed {
    // The kind is read as a plain u32: a kind newer than cudarc's enum would be an invalid
    // value of the Rust enum type.
    // SAFETY: every record starts with its 4-byte kind (caller's contract).
    let kind = unsafe { ptr::read_unaligned(record.cast::<u32>()) };
    use sys::CUpti_ActivityKind as K;
    if kind == K::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL as u32
        || kind == K::CUPTI_ACTIVITY_KIND_KERNEL as u32
    {
        // Kernel records grew fields at the end from version 9 (CUDA 12.0) to 13 (CUDA 13.4);
        // the fields read here sit in the prefix all of them share.
        let k = record.cast::<sys::CUpti_ActivityKernel10>();
        // SAFETY: a kernel record of this libcupti is at least the shared prefix long.
        let (start, end) = unsafe { (field!(k, start), field!(k, end)) };
        if start == 0 || end < start {
            return Parsed::Incomplete;
        }
        // SAFETY: as above; `name`, when not null, is a NUL-terminated string CUPTI owns and
        // keeps alive while the record is (it is copied here).
        unsafe {
            let name_ptr = field!(k, name);
            let raw_name = if name_ptr.is_null() {
                "<unnamed kernel>".to_string()
            } else {
                CStr::from_ptr(name_ptr).to_string_lossy().into_owned()
            };
            Parsed::Record(KernelRecord {
                kind: ActivityKind::Kernel,
                name: String::new(),
                raw_name,
                start_ns: start,
                end_ns: end,
                device_id: field!(k, deviceId),
                context_id: field!(k, contextId),
                stream_id: field!(k, streamId),
                correlation_id: field!(k, correlationId),
                grid: [field!(k, gridX), field!(k, gridY), field!(k, gridZ)],
                block: [field!(k, blockX), field!(k, blockY), field!(k, blockZ)],
                registers: field!(k, registersPerThread),
                shared_bytes: field!(k, staticSharedMemory)
                    .saturating_add(field!(k, dynamicSharedMemory)),
                bytes: 0,
                op_index: None,
            })
        }
    } else if kind == K::CUPTI_ACTIVITY_KIND_MEMCPY as u32 {
        let m = record.cast::<sys::CUpti_ActivityMemcpy6>();
        // SAFETY: a memcpy record is a CUpti_ActivityMemcpy6 in CUDA 13 (check_version).
        unsafe { transfer_record!(m, ActivityKind::Memcpy, memcpy_name(field!(m, copyKind))) }
    } else if kind == K::CUPTI_ACTIVITY_KIND_MEMSET as u32 {
        let m = record.cast::<sys::CUpti_ActivityMemset4>();
        // SAFETY: a memset record is a CUpti_ActivityMemset4 in CUDA 13 (check_version).
        unsafe { transfer_record!(m, ActivityKind::Memset, "memset") }
    } else if kind == K::CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION as u32 {
        let x = record.cast::<sys::CUpti_ActivityExternalCorrelation>();
        // SAFETY: an external correlation record is a CUpti_ActivityExternalCorrelation (its
        // layout has not changed since CUDA 8). The external kind is read as a u32, like the
        // record kind above.
        unsafe {
            let external_kind = ptr::addr_of!((*x).externalKind)
                .cast::<u32>()
                .read_unaligned();
            if external_kind != OP_KIND as u32 {
                return Parsed::Other;
            }
            Parsed::OpCall {
                correlation_id: field!(x, correlationId),
                op_index: field!(x, externalId),
            }
        }
    } else {
        Parsed::Other
    }
}

/// The copy direction, from CUpti_ActivityMemcpyKind's values (read as a byte in the record).
fn memcpy_name(copy_kind: u8) -> &'static str {
    match copy_kind {
        1 => "memcpy HtoD",
        2 => "memcpy DtoH",
        3 => "memcpy HtoA",
        4 => "memcpy AtoH",
        5 => "memcpy AtoA",
        6 => "memcpy AtoD",
        7 => "memcpy DtoA",
        8 => "memcpy DtoD",
        9 => "memcpy HtoH",
        10 => "memcpy PtoP",
        _ => "memcpy",
    }
}

/// Registers the buffer callbacks, once per process: they are the same functions every time.
fn register_callbacks() -> Result<(), TraceError> {
    static REGISTERED: Mutex<bool> = Mutex::new(false);
    let mut done = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
    if !*done {
        activity::register_callbacks(Some(buffer_requested), Some(buffer_completed))
            .map_err(call_failed("cuptiActivityRegisterCallbacks"))?;
        *done = true;
    }
    Ok(())
}

/// A running trace. Dropping it without [`finish`](Self::finish) stops tracing and discards the
/// records, so a failed run does not leave CUPTI collecting or block the next trace.
pub struct KernelTrace {
    /// The kinds enabled, to disable on finish.
    enabled: Vec<sys::CUpti_ActivityKind>,
    finished: bool,
}

impl KernelTrace {
    /// Starts tracing kernels, memcpys and memsets on every device. Only one trace runs at a
    /// time; a second `start` before the first finishes is an error.
    pub fn start() -> Result<KernelTrace, TraceError> {
        require_cupti()?;
        {
            let mut c = collector();
            if c.active {
                return Err(TraceError::AlreadyRunning);
            }
            c.active = true;
            c.records.clear();
            c.op_of_call.clear();
            c.dropped = 0;
            c.incomplete = 0;
            c.error = None;
        }
        let mut trace = KernelTrace {
            enabled: Vec::new(),
            finished: false,
        };
        match trace.enable() {
            Ok(()) => Ok(trace),
            Err(e) => {
                // Drop disables what was enabled and releases the collector.
                drop(trace);
                Err(e)
            }
        }
    }

    fn enable(&mut self) -> Result<(), TraceError> {
        check_version()?;
        register_callbacks()?;
        // Reading the dropped count resets it, so the count at finish is this trace's.
        let mut stale = 0usize;
        // SAFETY: null context and stream 0 name the global queue; `stale` is a live usize.
        let _ = unsafe { activity::get_num_dropped_records(ptr::null_mut(), 0, &mut stale) };
        for kind in KINDS {
            activity::enable(kind).map_err(call_failed(format!("enabling {kind:?}")))?;
            self.enabled.push(kind);
        }
        Ok(())
    }

    /// Stops tracing and returns the records, sorted by start time.
    ///
    /// CUPTI does not synchronise: synchronise the streams first, or activities still running
    /// come back without an end time and are only counted (`incomplete`).
    pub fn finish(mut self) -> Result<TraceOutput, TraceError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<TraceOutput, TraceError> {
        self.finished = true;
        let forced = sys::CUpti_ActivityFlag::CUPTI_ACTIVITY_FLAG_FLUSH_FORCED as u32;
        // Flush before disabling so nothing already recorded is lost, and again after, for
        // records completed in between. Forced: also buffers that are not full. Each flush
        // returns the buffers through `buffer_completed` before it returns, so no lock may be
        // held across it.
        let first = activity::flush_all(forced).map_err(call_failed("cuptiActivityFlushAll"));
        let mut failure = first.err();
        for kind in self.enabled.drain(..).rev() {
            if let Err(e) = activity::disable(kind) {
                failure.get_or_insert_with(|| call_failed("cuptiActivityDisable")(e));
            }
        }
        if let Err(e) = activity::flush_all(forced) {
            failure.get_or_insert_with(|| call_failed("cuptiActivityFlushAll")(e));
        }
        let mut global_dropped = 0usize;
        // SAFETY: null context and stream 0 name the global queue; `global_dropped` is a live
        // usize. A failure leaves it at zero.
        let _ =
            unsafe { activity::get_num_dropped_records(ptr::null_mut(), 0, &mut global_dropped) };

        let (mut out, op_of_call) = {
            let mut c = collector();
            c.active = false;
            if let Some(e) = c.error.take() {
                failure.get_or_insert(e);
            }
            let out = TraceOutput {
                records: std::mem::take(&mut c.records),
                dropped: std::mem::take(&mut c.dropped) + global_dropped as u64,
                incomplete: std::mem::take(&mut c.incomplete),
            };
            (out, std::mem::take(&mut c.op_of_call))
        };
        if let Some(e) = failure {
            return Err(TraceError::Incomplete(Box::new(e)));
        }
        attribute_ops(&mut out.records, &op_of_call.into_iter().collect());
        // Names are shortened here rather than in the callback, which runs on CUPTI's thread
        // beside the workload; a model launches few distinct kernels, so each is shortened once.
        let mut readable: HashMap<String, String> = HashMap::new();
        for r in &mut out.records {
            r.name = readable
                .entry(r.raw_name.clone())
                .or_insert_with(|| readable_name(&r.raw_name))
                .clone();
        }
        out.records
            .sort_by_key(|r| (r.start_ns, r.end_ns, r.correlation_id));
        Ok(out)
    }
}

impl Drop for KernelTrace {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.stop();
        }
    }
}

/// Marks the CUDA calls the calling thread makes while it lives as the op `index`'s: it pushes
/// the index on CUPTI's external correlation stack and pops it when dropped, so the records of
/// the kernels, copies and fills those calls issue carry `op_index: Some(index)`. Create one
/// only while a [`KernelTrace`] runs: without a trace it would load libcupti and pay for the
/// push and pop for nothing. A failed push or pop does not fail the op; it makes the trace's
/// `finish` report the trace incomplete.
pub struct OpScope {
    pushed: bool,
}

impl OpScope {
    pub fn enter(index: usize) -> OpScope {
        let pushed = match activity::push_external_correlation_id(OP_KIND, index as u64) {
            Ok(()) => true,
            Err(e) => {
                note_failure(call_failed("cuptiActivityPushExternalCorrelationId")(e));
                false
            }
        };
        OpScope { pushed }
    }
}

impl Drop for OpScope {
    fn drop(&mut self) {
        if !self.pushed {
            return;
        }
        let mut last = 0u64;
        // SAFETY: `last` is a live u64 CUPTI writes the popped id into.
        if let Err(e) = unsafe { activity::pop_external_correlation_id(OP_KIND, &mut last) } {
            note_failure(call_failed("cuptiActivityPopExternalCorrelationId")(e));
        }
    }
}

/// Keeps the first failure of the running trace, for its `finish` to report.
fn note_failure(e: TraceError) {
    let mut c = collector();
    if c.active && c.error.is_none() {
        c.error = Some(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cupti::{busy_fraction, kernels_by_op, launch_gaps, summarize};

    /// On a machine with a GPU and libcupti, traces real work: a fill, a copy, tperf's own
    /// kernel and a cuBLASLt matmul, the last two each inside an [`OpScope`]. Elsewhere it says
    /// it skipped.
    #[test]
    fn trace_on_the_gpu() {
        let trace = match KernelTrace::start() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        assert!(
            KernelTrace::start().is_err(),
            "a second trace must not start while one runs"
        );
        let out = match gpu_work() {
            Ok(Some(wall)) => {
                let out = trace.finish().expect("finishing the trace");
                Some((out, wall))
            }
            Ok(None) => {
                drop(trace);
                None
            }
            Err(e) => panic!("{e}"),
        };
        let Some((out, (t0, t1))) = out else {
            eprintln!("skipped: libcupti present but no GPU");
            return;
        };
        for r in &out.records {
            eprintln!(
                "{:>9} ns  {:?}  stream {}  grid {:?} block {:?} regs {} smem {}  {}  [{}]",
                r.duration_ns(),
                r.kind,
                r.stream_id,
                r.grid,
                r.block,
                r.registers,
                r.shared_bytes,
                r.name,
                r.raw_name
            );
        }
        for s in summarize(&out.records) {
            eprintln!(
                "{:>5} calls {:>10} ns {:>5.1}%  {}",
                s.calls,
                s.total_ns,
                100.0 * s.share,
                s.name
            );
        }
        let busy = busy_fraction(&out.records, t0, t1);
        let gaps = launch_gaps(&out.records);
        eprintln!(
            "dropped {} incomplete {} busy {:.3} gaps {:?}",
            out.dropped, out.incomplete, busy, gaps
        );
        assert_eq!(out.dropped, 0);
        assert!(out.records.iter().any(|r| r.name == "residual_add"));
        assert!(out.records.iter().any(|r| r.kind == ActivityKind::Memset));
        assert!(out.records.iter().any(|r| r.kind == ActivityKind::Memcpy));
        // The matmul: at least one kernel that is neither ours nor a copy.
        assert!(out
            .records
            .iter()
            .any(|r| r.is_kernel() && r.name != "residual_add"));
        // Records and `now_ns` share CUPTI's clock. The slack allows for the conversion of GPU
        // timestamps to it; a wrong clock or unit would miss by far more.
        let slack = 1_000_000;
        for r in &out.records {
            assert!(
                r.start_ns + slack >= t0 && r.end_ns <= t1 + slack,
                "{r:?} outside the wall span {t0}..{t1}"
            );
        }
        assert!(out
            .records
            .windows(2)
            .all(|w| w[0].start_ns <= w[1].start_ns));
        assert!(busy > 0.0 && busy <= 1.0);
        // Every record of the two scoped ops joins its op; the fill and the copy ran outside.
        for r in &out.records {
            let expected = if !r.is_kernel() {
                None
            } else if r.name == "residual_add" {
                Some(ADD_OP)
            } else {
                Some(MATMUL_OP)
            };
            assert_eq!(r.op_index, expected, "{r:?}");
        }
        let (by_op, outside) = kernels_by_op(&out.records);
        assert_eq!(
            by_op.iter().map(|o| o.op_index).collect::<Vec<_>>(),
            [ADD_OP, MATMUL_OP]
        );
        assert_eq!(by_op[0].kernels[0].calls, 3);
        assert_eq!(outside.len(), 2);
        // The collector is free again.
        KernelTrace::start()
            .expect("a trace starts after the last finished")
            .finish()
            .expect("finishing an empty trace");
    }

    /// The op indices `gpu_work` marks its launches with.
    const ADD_OP: usize = 41;
    const MATMUL_OP: usize = 1 << 40;

    /// Runs the work `trace_on_the_gpu` traces; None without a GPU. Returns the wall span.
    fn gpu_work() -> Result<Option<(u64, u64)>, String> {
        use crate::blas::{Blas, Gemm, WORKSPACE_BYTES};
        use crate::gpu::{device_count, Arg, Gpu};
        use cudarc::driver::result as cu;
        use tperf_core::dtype::DType;

        if device_count().unwrap_or(0) == 0 {
            return Ok(None);
        }
        let mut gpu = Gpu::open(0).map_err(|e| e.to_string())?;
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| format!("binding the context: {e:?}"))?;
        let n = 1usize << 20;
        let bytes = n * 4;
        let e = |what: &'static str| move |err| format!("{what}: {err:?}");
        // SAFETY: plain allocations of the sizes used below, freed at the end.
        let (a, b, c, ws) = unsafe {
            (
                cu::malloc_sync(bytes).map_err(e("malloc"))?,
                cu::malloc_sync(bytes).map_err(e("malloc"))?,
                cu::malloc_sync(bytes).map_err(e("malloc"))?,
                cu::malloc_sync(WORKSPACE_BYTES).map_err(e("malloc"))?,
            )
        };
        let mut blas = Blas::new(ws).map_err(|e| e.to_string())?;
        gpu.synchronize().map_err(|e| e.to_string())?;
        let t0 = now_ns().map_err(|e| e.to_string())?;
        let host = vec![1.0f32; n];
        // SAFETY: `a` holds `bytes` bytes; `host` outlives the synchronize below.
        unsafe {
            cu::memcpy_htod_async(a, &host, gpu.cu_stream()).map_err(e("memcpy"))?;
            cu::memset_d8_async(b, 0, bytes, gpu.cu_stream()).map_err(e("memset"))?;
        }
        let add = OpScope::enter(ADD_OP);
        for _ in 0..3 {
            gpu.launch_1d(
                "residual",
                "residual_add",
                n as u64,
                &[
                    Arg::Buf(a, 0),
                    Arg::Buf(b, 0),
                    Arg::Buf(c, 0),
                    Arg::I64(n as i64),
                ],
            )
            .map_err(|e| e.to_string())?;
        }
        drop(add);
        let g = Gemm {
            m: 512,
            n: 512,
            k: 512,
            trans_a: false,
            trans_b: true,
            ab_dtype: DType::F32,
            c_dtype: DType::F32,
            accumulate: false,
            bias: false,
            gelu_aux: false,
            ldc: None,
        };
        let matmul = OpScope::enter(MATMUL_OP);
        for _ in 0..3 {
            blas.gemm(&g, a, b, c, None, None, gpu.cu_stream())
                .map_err(|e| e.to_string())?;
        }
        drop(matmul);
        gpu.synchronize().map_err(|e| e.to_string())?;
        let t1 = now_ns().map_err(|e| e.to_string())?;
        drop(blas);
        // SAFETY: the allocations above; the stream is idle.
        unsafe {
            for p in [a, b, c, ws] {
                cu::free_sync(p).map_err(e("free"))?;
            }
        }
        Ok(Some((t0, t1)))
    }
}
