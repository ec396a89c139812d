//! Kernel tracing through CUPTI's activity API: every kernel, memcpy and memset the GPU ran
//! between [`KernelTrace::start`] and [`KernelTrace::finish`], with its GPU start and end times,
//! name, stream and launch shape.
//!
//! CUDA events (`timing`) time an op as the stream saw it, launch gaps included; CUPTI reports
//! each kernel's own execution interval, including the kernels a library launches behind one
//! call (cuBLASLt's split-K reductions, for one). From those intervals come the kernel table
//! ([`summarize`]), the share of wall time the GPU ran a kernel ([`busy_fraction`]) and the idle
//! time between kernels on a stream ([`launch_gaps`]).
//!
//! CUPTI hands records back in buffers it asks us for, through two C callbacks it calls from its
//! own thread (or from the thread that flushes). A C callback carries no state, so records land
//! in a process-wide collector, and so only one trace can run at a time.
//!
//! Timestamps are CUPTI's nanosecond clock; [`now_ns`] reads the same clock, for marking the wall
//! span a trace is measured against.

use cudarc::cupti::result::{self as cupti, activity, CuptiError};
use cudarc::cupti::sys;
use std::alloc::{self, Layout};
use std::collections::HashMap;
use std::ffi::CStr;
use std::ptr;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

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

/// What a finished trace returns.
#[derive(Clone, Debug, Default)]
pub struct TraceOutput {
    /// Sorted by start time.
    pub records: Vec<KernelRecord>,
    /// Records CUPTI could not store for want of buffer space. Non-zero means the table and
    /// the utilisation figures undercount.
    pub dropped: u64,
    /// Records without an end time: the activity had not finished when the trace was flushed
    /// (the caller did not synchronise before `finish`). Left out of `records`.
    pub incomplete: u64,
}

/// The kinds every trace enables. CONCURRENT_KERNEL rather than KERNEL: the latter serialises
/// all kernels on the device, which would change what is being measured.
const KINDS: [sys::CUpti_ActivityKind; 3] = [
    sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
    sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_MEMCPY,
    sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_MEMSET,
];

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
    dropped: u64,
    incomplete: u64,
    /// The first failure to walk a buffer (the records after it in that buffer are lost).
    error: Option<String>,
}

static COLLECTOR: Mutex<Collector> = Mutex::new(Collector {
    active: false,
    records: Vec::new(),
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

fn require_cupti() -> Result<(), String> {
    if cupti_present() {
        Ok(())
    } else {
        Err(
            "libcupti not found on the loader path (it ships with the CUDA toolkit, in \
             extras/CUPTI/lib64 or targets/*/lib)"
                .into(),
        )
    }
}

/// cudarc's `Debug` for CuptiError unwraps the message lookup; this one does not.
fn describe(what: &str) -> impl Fn(CuptiError) -> String + '_ {
    move |e| match e.error_string() {
        Ok(msg) => format!("{what}: {:?} ({})", e.0, msg.to_string_lossy()),
        Err(_) => format!("{what}: {:?}", e.0),
    }
}

/// Now, in CUPTI's clock: the clock of every record's `start_ns` and `end_ns`.
pub fn now_ns() -> Result<u64, String> {
    require_cupti()?;
    let mut t = 0u64;
    // SAFETY: `t` is a live u64 CUPTI writes the timestamp into.
    unsafe { cupti::get_timestamp(&mut t) }.map_err(describe("cuptiGetTimestamp"))?;
    Ok(t)
}

/// The record layouts read here (the common prefix of CUpti_ActivityKernel9 to 13,
/// CUpti_ActivityMemcpy6, CUpti_ActivityMemset4) are CUDA 13's; another major version of
/// libcupti could lay them out differently, and a misread record is silent garbage.
fn check_version() -> Result<(), String> {
    let mut version = 0u32;
    // SAFETY: `version` is a live u32 CUPTI writes into.
    unsafe { sys::cuptiGetVersion(&mut version) }
        .result()
        .map_err(describe("cuptiGetVersion"))?;
    // CUDA 13's CUPTI numbers its API as major·10000 + minor·100 + patch (130001 for 13.0).
    if (130_000..140_000).contains(&version) {
        Ok(())
    } else {
        Err(format!(
            "libcupti reports API version {version}; this build reads CUDA 13's record layouts \
             (API 13xxxx)"
        ))
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
                    Parsed::Incomplete => incomplete += 1,
                    Parsed::Other => {}
                }
            }
            sys::CUptiResult::CUPTI_ERROR_MAX_LIMIT_REACHED => break,
            other => {
                error = Some(format!("cuptiActivityGetNextRecord: {other:?}"));
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
        c.incomplete += incomplete;
        c.dropped += dropped as u64;
        if c.error.is_none() {
            c.error = error;
        }
    }
}

enum Parsed {
    Record(KernelRecord),
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
            })
        }
    } else if kind == K::CUPTI_ACTIVITY_KIND_MEMCPY as u32 {
        let m = record.cast::<sys::CUpti_ActivityMemcpy6>();
        // SAFETY: a memcpy record is a CUpti_ActivityMemcpy6 in CUDA 13 (check_version).
        unsafe {
            let (start, end) = (field!(m, start), field!(m, end));
            if start == 0 || end < start {
                return Parsed::Incomplete;
            }
            Parsed::Record(KernelRecord {
                kind: ActivityKind::Memcpy,
                name: String::new(),
                raw_name: memcpy_name(field!(m, copyKind)).to_string(),
                start_ns: start,
                end_ns: end,
                device_id: field!(m, deviceId),
                context_id: field!(m, contextId),
                stream_id: field!(m, streamId),
                correlation_id: field!(m, correlationId),
                grid: [0; 3],
                block: [0; 3],
                registers: 0,
                shared_bytes: 0,
                bytes: field!(m, bytes),
            })
        }
    } else if kind == K::CUPTI_ACTIVITY_KIND_MEMSET as u32 {
        let m = record.cast::<sys::CUpti_ActivityMemset4>();
        // SAFETY: a memset record is a CUpti_ActivityMemset4 in CUDA 13 (check_version).
        unsafe {
            let (start, end) = (field!(m, start), field!(m, end));
            if start == 0 || end < start {
                return Parsed::Incomplete;
            }
            Parsed::Record(KernelRecord {
                kind: ActivityKind::Memset,
                name: String::new(),
                raw_name: "memset".to_string(),
                start_ns: start,
                end_ns: end,
                device_id: field!(m, deviceId),
                context_id: field!(m, contextId),
                stream_id: field!(m, streamId),
                correlation_id: field!(m, correlationId),
                grid: [0; 3],
                block: [0; 3],
                registers: 0,
                shared_bytes: 0,
                bytes: field!(m, bytes),
            })
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
fn register_callbacks() -> Result<(), String> {
    static REGISTERED: Mutex<bool> = Mutex::new(false);
    let mut done = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
    if !*done {
        activity::register_callbacks(Some(buffer_requested), Some(buffer_completed))
            .map_err(describe("cuptiActivityRegisterCallbacks"))?;
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
    pub fn start() -> Result<KernelTrace, String> {
        require_cupti()?;
        {
            let mut c = collector();
            if c.active {
                return Err("a kernel trace is already running: finish it first".into());
            }
            c.active = true;
            c.records.clear();
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

    fn enable(&mut self) -> Result<(), String> {
        check_version()?;
        register_callbacks()?;
        // Reading the dropped count resets it, so the count at finish is this trace's.
        let mut stale = 0usize;
        // SAFETY: null context and stream 0 name the global queue; `stale` is a live usize.
        let _ = unsafe { activity::get_num_dropped_records(ptr::null_mut(), 0, &mut stale) };
        for kind in KINDS {
            activity::enable(kind).map_err(describe(&format!("enabling {kind:?}")))?;
            self.enabled.push(kind);
        }
        Ok(())
    }

    /// Stops tracing and returns the records, sorted by start time.
    ///
    /// CUPTI does not synchronise: synchronise the streams first, or activities still running
    /// come back without an end time and are only counted (`incomplete`).
    pub fn finish(mut self) -> Result<TraceOutput, String> {
        self.stop()
    }

    fn stop(&mut self) -> Result<TraceOutput, String> {
        self.finished = true;
        let forced = sys::CUpti_ActivityFlag::CUPTI_ACTIVITY_FLAG_FLUSH_FORCED as u32;
        // Flush before disabling so nothing already recorded is lost, and again after, for
        // records completed in between. Forced: also buffers that are not full. Each flush
        // returns the buffers through `buffer_completed` before it returns, so no lock may be
        // held across it.
        let first = activity::flush_all(forced).map_err(describe("cuptiActivityFlushAll"));
        let mut failure = first.err();
        for kind in self.enabled.drain(..).rev() {
            if let Err(e) = activity::disable(kind) {
                failure.get_or_insert_with(|| describe("cuptiActivityDisable")(e));
            }
        }
        if let Err(e) = activity::flush_all(forced) {
            failure.get_or_insert_with(|| describe("cuptiActivityFlushAll")(e));
        }
        let mut global_dropped = 0usize;
        // SAFETY: null context and stream 0 name the global queue; `global_dropped` is a live
        // usize. A failure leaves it at zero.
        let _ =
            unsafe { activity::get_num_dropped_records(ptr::null_mut(), 0, &mut global_dropped) };

        let mut out = {
            let mut c = collector();
            c.active = false;
            if let Some(e) = c.error.take() {
                failure.get_or_insert(e);
            }
            TraceOutput {
                records: std::mem::take(&mut c.records),
                dropped: std::mem::take(&mut c.dropped) + global_dropped as u64,
                incomplete: std::mem::take(&mut c.incomplete),
            }
        };
        if let Some(e) = failure {
            return Err(format!("the kernel trace is incomplete: {e}"));
        }
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

/// One line of a kernel table: every record of one kernel (one raw name) added up.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSummary {
    pub name: String,
    pub raw_name: String,
    pub kind: ActivityKind,
    pub calls: u64,
    pub total_ns: u64,
    pub mean_ns: f64,
    /// Of the summed durations of all the records summarised (copies and fills included).
    pub share: f64,
}

/// The kernel table: one line per distinct raw name (and kind), longest total first.
pub fn summarize(records: &[KernelRecord]) -> Vec<KernelSummary> {
    let mut by_kernel: HashMap<(ActivityKind, &str), (&str, u64, u64)> = HashMap::new();
    let mut all_ns = 0u64;
    for r in records {
        let d = r.duration_ns();
        all_ns += d;
        let line =
            by_kernel
                .entry((r.kind, r.raw_name.as_str()))
                .or_insert((r.name.as_str(), 0, 0));
        line.1 += 1;
        line.2 += d;
    }
    let mut table: Vec<KernelSummary> = by_kernel
        .into_iter()
        .map(
            |((kind, raw_name), (name, calls, total_ns))| KernelSummary {
                name: name.to_string(),
                raw_name: raw_name.to_string(),
                kind,
                calls,
                total_ns,
                mean_ns: total_ns as f64 / calls as f64,
                share: if all_ns == 0 {
                    0.0
                } else {
                    total_ns as f64 / all_ns as f64
                },
            },
        )
        .collect();
    // Ties by name, so the table is the same from run to run.
    table.sort_by(|a, b| {
        b.total_ns
            .cmp(&a.total_ns)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.raw_name.cmp(&b.raw_name))
    });
    table
}

/// The fraction of the wall span [`wall_start_ns`, `wall_end_ns`) in which at least one kernel
/// ran: the union of the kernel intervals, clipped to the span, over the span. Overlapping
/// kernels (concurrent streams, programmatic dependent launch) count once. Copies and fills are
/// left out: they run on copy engines, not the SMs. Zero for an empty or inverted span.
pub fn busy_fraction(records: &[KernelRecord], wall_start_ns: u64, wall_end_ns: u64) -> f64 {
    if wall_end_ns <= wall_start_ns {
        return 0.0;
    }
    let mut spans: Vec<(u64, u64)> = records
        .iter()
        .filter(|r| r.is_kernel())
        .map(|r| (r.start_ns.max(wall_start_ns), r.end_ns.min(wall_end_ns)))
        .filter(|(s, e)| e > s)
        .collect();
    spans.sort_unstable();
    let mut busy = 0u64;
    let mut current: Option<(u64, u64)> = None;
    for (s, e) in spans {
        current = match current {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                busy += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = current {
        busy += ce - cs;
    }
    busy as f64 / (wall_end_ns - wall_start_ns) as f64
}

/// Idle time between consecutive activities on each stream: (median gap, total gap), in ns.
/// A gap is the time from the latest end so far on the stream to the next start, zero where
/// the next one started first (programmatic dependent launch lets a kernel start before its
/// predecessor ends). Copies and fills occupy a stream like kernels do, so they count as
/// activities. With one stream, the total is the time the GPU waited on the host to launch.
/// (0, 0) with fewer than two activities on every stream.
pub fn launch_gaps(records: &[KernelRecord]) -> (u64, u64) {
    let mut by_stream: HashMap<(u32, u32, u32), Vec<(u64, u64)>> = HashMap::new();
    for r in records {
        by_stream
            .entry((r.device_id, r.context_id, r.stream_id))
            .or_default()
            .push((r.start_ns, r.end_ns));
    }
    let mut gaps = Vec::new();
    for spans in by_stream.values_mut() {
        spans.sort_unstable();
        let mut latest_end = spans[0].1;
        for &(s, e) in &spans[1..] {
            gaps.push(s.saturating_sub(latest_end));
            latest_end = latest_end.max(e);
        }
    }
    if gaps.is_empty() {
        return (0, 0);
    }
    let total = gaps.iter().sum();
    gaps.sort_unstable();
    let mid = gaps.len() / 2;
    let median = if gaps.len() % 2 == 1 {
        gaps[mid]
    } else {
        // The mean of the two middle gaps, without overflowing.
        gaps[mid - 1] / 2 + gaps[mid] / 2 + (gaps[mid - 1] % 2 + gaps[mid] % 2) / 2
    };
    (median, total)
}

/// A readable name for a kernel. C++ kernels come from CUPTI as Itanium-mangled names
/// (`_ZN8cublasLt19splitKreduce_kernelILi32E…`); this gives their qualified name with template
/// arguments one level deep and deeper ones as `<…>`, without the return and parameter types:
/// `cublasLt::splitKreduce_kernel<32, 16, int, float, false>`. Names that are not mangled
/// (extern "C" kernels) and the rare forms this does not parse (local names, operators,
/// expressions in template arguments) come back as they are.
pub fn readable_name(raw: &str) -> String {
    let Some(rest) = raw.strip_prefix("_Z") else {
        return raw.to_string();
    };
    let mut d = Demangler {
        s: rest.as_bytes(),
        pos: 0,
        depth: 0,
        subs: Vec::new(),
    };
    match d.name() {
        Some(name) if !name.is_empty() => name,
        _ => raw.to_string(),
    }
}

/// Just enough of the Itanium C++ ABI's mangling grammar to read a function's qualified name
/// and its template arguments. Substitutions (`S_`, `S0_`, …) refer back to earlier names and
/// types, so every substitutable component is recorded in `subs` in the order the grammar
/// numbers them, even where it is displayed shortened.
struct Demangler<'a> {
    s: &'a [u8],
    pos: usize,
    /// Template-argument nesting: arguments deeper than one level are shown as `<…>`.
    depth: usize,
    subs: Vec<String>,
}

impl Demangler<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn peek_at(&self, k: usize) -> Option<u8> {
        self.s.get(self.pos + k).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    fn number(&mut self) -> Option<usize> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        std::str::from_utf8(&self.s[start..self.pos])
            .ok()?
            .parse()
            .ok()
    }

    /// `<source-name> ::= <length> <identifier>`, plus any ABI tags (`B5cxx11`), dropped.
    fn source_name(&mut self) -> Option<String> {
        let n = self.number()?;
        let bytes = self.s.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        let id = std::str::from_utf8(bytes).ok()?;
        let id = if id.starts_with("_GLOBAL__N") {
            "(anonymous namespace)".to_string()
        } else {
            id.to_string()
        };
        while self.peek() == Some(b'B') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.number().and_then(|n| {
                self.pos = self.pos.checked_add(n)?;
                Some(())
            })?;
        }
        Some(id)
    }

    /// `<seq-id> _` after an `S` or `T`: `_` is 0, then base-36 digits plus one.
    fn seq_id(&mut self) -> Option<usize> {
        if self.eat(b'_') {
            return Some(0);
        }
        let mut v = 0usize;
        while let Some(c) = self.peek() {
            let digit = match c {
                b'0'..=b'9' => c - b'0',
                b'A'..=b'Z' => c - b'A' + 10,
                _ => break,
            };
            v = v.checked_mul(36)?.checked_add(digit as usize)?;
            self.pos += 1;
        }
        self.expect(b'_')?;
        v.checked_add(1)
    }

    /// `<substitution>`: an earlier component, or one of the std abbreviations.
    fn substitution(&mut self) -> Option<String> {
        self.expect(b'S')?;
        let abbrev = match self.peek()? {
            b'a' => Some("std::allocator"),
            b'b' => Some("std::basic_string"),
            b's' => Some("std::string"),
            b'i' => Some("std::istream"),
            b'o' => Some("std::ostream"),
            b'd' => Some("std::iostream"),
            _ => None,
        };
        if let Some(a) = abbrev {
            self.pos += 1;
            return Some(a.to_string());
        }
        let i = self.seq_id()?;
        self.subs.get(i).cloned()
    }

    /// `<template-param>` (`T_`, `T0_`, …): shown as `…`, since the arguments it refers to
    /// belong to the enclosing template and are not tracked.
    fn template_param(&mut self) -> Option<String> {
        self.expect(b'T')?;
        self.seq_id()?;
        Some("…".to_string())
    }

    /// `<name>`: the function's (or a class type's) possibly qualified, possibly templated name.
    fn name(&mut self) -> Option<String> {
        match self.peek()? {
            b'N' => self.nested_name(),
            b'Z' => None,
            b'S' if self.peek_at(1) == Some(b't') => {
                self.pos += 2;
                let n = format!("std::{}", self.unqualified_name()?);
                self.maybe_template(n)
            }
            b'S' => {
                let n = self.substitution()?;
                if self.peek() == Some(b'I') {
                    // A substitution is not recorded again, but the template-id it heads is.
                    let full = format!("{n}{}", self.template_args()?);
                    Some(full)
                } else {
                    Some(n)
                }
            }
            _ => {
                let n = self.unqualified_name()?;
                self.maybe_template(n)
            }
        }
    }

    /// An unscoped template name followed by its arguments: the name is substitutable.
    fn maybe_template(&mut self, name: String) -> Option<String> {
        if self.peek() == Some(b'I') {
            self.subs.push(name.clone());
            Some(format!("{name}{}", self.template_args()?))
        } else {
            Some(name)
        }
    }

    fn unqualified_name(&mut self) -> Option<String> {
        // `L`: internal linkage (a `static` function), nothing to show.
        self.eat(b'L');
        match self.peek()? {
            c if c.is_ascii_digit() => self.source_name(),
            b'U' if self.peek_at(1) == Some(b'l') => {
                // A lambda's closure type: `Ul <parameter types> E [<number>] _`.
                self.pos += 2;
                while !self.eat(b'E') {
                    self.type_()?;
                }
                let n = if self.peek() == Some(b'_') {
                    1
                } else {
                    self.number()? + 2
                };
                self.expect(b'_')?;
                Some(format!("{{lambda#{n}}}"))
            }
            b'U' if self.peek_at(1) == Some(b't') => {
                self.pos += 2;
                if self.peek() != Some(b'_') {
                    self.number()?;
                }
                self.expect(b'_')?;
                Some("{unnamed type}".to_string())
            }
            _ => None,
        }
    }

    /// `N [<CV-qualifiers>] [<ref-qualifier>] <prefix> <unqualified-name> E`. Each prefix is
    /// substitutable when something follows it; the whole name is not (a caller that parses it
    /// as a type records it as one).
    fn nested_name(&mut self) -> Option<String> {
        self.expect(b'N')?;
        while matches!(self.peek(), Some(b'r' | b'V' | b'K')) {
            self.pos += 1;
        }
        if matches!(self.peek(), Some(b'R' | b'O')) {
            self.pos += 1;
        }
        let mut acc: Option<String> = None;
        // Whether `acc` is already in `subs` (substitutions and `std` are never added).
        let mut recorded = true;
        loop {
            let c = self.peek()?;
            if c == b'E' {
                self.pos += 1;
                break;
            }
            if let (Some(a), false) = (&acc, recorded) {
                self.subs.push(a.clone());
            }
            let join = |acc: &Option<String>, part: &str| match acc {
                Some(a) => format!("{a}::{part}"),
                None => part.to_string(),
            };
            match c {
                b'I' => {
                    let args = self.template_args()?;
                    acc = Some(format!("{}{args}", acc?));
                    recorded = false;
                }
                b'S' if self.peek_at(1) == Some(b't') => {
                    self.pos += 2;
                    acc = Some(join(&acc, "std"));
                    recorded = true;
                }
                b'S' => {
                    let s = self.substitution()?;
                    acc = Some(join(&acc, &s));
                    recorded = true;
                }
                b'T' => {
                    let t = self.template_param()?;
                    acc = Some(join(&acc, &t));
                    recorded = false;
                }
                b'M' => {
                    // A data-member prefix (lambdas in member initialisers): no name of its own.
                    self.pos += 1;
                    recorded = true;
                }
                _ => {
                    let n = self.unqualified_name()?;
                    acc = Some(join(&acc, &n));
                    recorded = false;
                }
            }
        }
        acc
    }

    /// `I <template-arg>+ E`, shown in full at the first level and as `<…>` below it.
    fn template_args(&mut self) -> Option<String> {
        self.expect(b'I')?;
        self.depth += 1;
        let mut args = Vec::new();
        while !self.eat(b'E') {
            args.push(self.template_arg()?);
        }
        self.depth -= 1;
        if self.depth > 0 {
            Some("<…>".to_string())
        } else {
            Some(format!("<{}>", args.join(", ")))
        }
    }

    fn template_arg(&mut self) -> Option<String> {
        match self.peek()? {
            b'L' => self.literal(),
            b'J' => {
                // An argument pack.
                self.pos += 1;
                let mut args = Vec::new();
                while !self.eat(b'E') {
                    args.push(self.template_arg()?);
                }
                Some(args.join(", "))
            }
            b'X' => None,
            _ => self.type_(),
        }
    }

    /// `L <type> <value> E`: an integer, bool or enum constant (`Li128E`, `Lb0E`).
    fn literal(&mut self) -> Option<String> {
        self.expect(b'L')?;
        if self.peek() == Some(b'_') {
            // `L_Z <encoding> E`: a pointer to a function or object; its encoding includes
            // parameter types, which this does not parse.
            return None;
        }
        let ty = self.type_()?;
        let negative = self.eat(b'n');
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() && c != b'E')
        {
            self.pos += 1;
        }
        let value = std::str::from_utf8(&self.s[start..self.pos])
            .ok()?
            .to_string();
        self.expect(b'E')?;
        Some(match (ty.as_str(), value.as_str()) {
            ("bool", "0") => "false".to_string(),
            ("bool", "1") => "true".to_string(),
            _ if negative => format!("-{value}"),
            _ => value,
        })
    }

    /// `<type>`, as far as kernel template arguments use it. Every type but the builtin ones
    /// and bare substitutions is substitutable.
    fn type_(&mut self) -> Option<String> {
        let c = self.peek()?;
        if let Some(b) = builtin(c) {
            self.pos += 1;
            return Some(b.to_string());
        }
        let t = match c {
            b'P' | b'R' | b'O' => {
                self.pos += 1;
                let inner = self.type_()?;
                let sigil = match c {
                    b'P' => "*",
                    b'R' => "&",
                    _ => "&&",
                };
                format!("{inner}{sigil}")
            }
            b'K' | b'V' | b'r' => {
                self.pos += 1;
                let inner = self.type_()?;
                match c {
                    b'K' => format!("const {inner}"),
                    b'V' => format!("volatile {inner}"),
                    _ => inner,
                }
            }
            b'D' => {
                let n = self.d_type()?;
                if n.ends_with("...") {
                    n
                } else {
                    // The two-letter builtins are not substitutable.
                    return Some(n);
                }
            }
            b'A' => {
                self.pos += 1;
                let n = self.number()?;
                self.expect(b'_')?;
                let t = self.type_()?;
                format!("{t}[{n}]")
            }
            b'T' => {
                let t = self.template_param()?;
                if self.peek() == Some(b'I') {
                    self.subs.push(t.clone());
                    format!("{t}{}", self.template_args()?)
                } else {
                    t
                }
            }
            b'S' if self.peek_at(1) != Some(b't') => {
                let s = self.substitution()?;
                if self.peek() == Some(b'I') {
                    format!("{s}{}", self.template_args()?)
                } else {
                    // A bare substitution is not recorded again.
                    return Some(s);
                }
            }
            b'u' => {
                // A vendor-extended type.
                self.pos += 1;
                self.source_name()?
            }
            _ => self.name()?,
        };
        self.subs.push(t.clone());
        Some(t)
    }

    /// The `D`-prefixed types: two-letter builtins, `DF16_` and friends, and pack expansions.
    fn d_type(&mut self) -> Option<String> {
        self.expect(b'D')?;
        let c = self.peek()?;
        self.pos += 1;
        Some(match c {
            b'h' => "half".to_string(),
            b'f' => "decimal32".to_string(),
            b'd' => "decimal64".to_string(),
            b'e' => "decimal128".to_string(),
            b'n' => "decltype(nullptr)".to_string(),
            b'a' => "auto".to_string(),
            b'c' => "decltype(auto)".to_string(),
            b's' => "char16_t".to_string(),
            b'i' => "char32_t".to_string(),
            b'u' => "char8_t".to_string(),
            b'F' => {
                let bits = self.number()?;
                if self.eat(b'b') {
                    format!("std::bfloat{bits}_t")
                } else {
                    self.expect(b'_')?;
                    format!("_Float{bits}")
                }
            }
            b'p' => format!("{}...", self.type_()?),
            _ => return None,
        })
    }
}

/// The one-letter builtin types.
fn builtin(c: u8) -> Option<&'static str> {
    Some(match c {
        b'v' => "void",
        b'w' => "wchar_t",
        b'b' => "bool",
        b'c' => "char",
        b'a' => "signed char",
        b'h' => "unsigned char",
        b's' => "short",
        b't' => "unsigned short",
        b'i' => "int",
        b'j' => "unsigned int",
        b'l' => "long",
        b'm' => "unsigned long",
        b'x' => "long long",
        b'y' => "unsigned long long",
        b'n' => "__int128",
        b'o' => "unsigned __int128",
        b'f' => "float",
        b'd' => "double",
        b'e' => "long double",
        b'g' => "__float128",
        b'z' => "...",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, stream: u32, start: u64, end: u64) -> KernelRecord {
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
            grid: [1, 1, 1],
            block: [128, 1, 1],
            registers: 32,
            shared_bytes: 0,
            bytes: 0,
        }
    }

    fn copy(stream: u32, start: u64, end: u64) -> KernelRecord {
        KernelRecord {
            kind: ActivityKind::Memcpy,
            bytes: 4096,
            ..rec("memcpy HtoD", stream, start, end)
        }
    }

    #[test]
    fn summarize_adds_up_per_kernel_longest_first() {
        let records = [
            rec("gemm", 7, 0, 100),
            rec("norm", 7, 100, 110),
            rec("gemm", 7, 120, 220),
            rec("norm", 7, 220, 250),
            rec("softmax", 7, 250, 310),
        ];
        let table = summarize(&records);
        let names: Vec<&str> = table.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["gemm", "softmax", "norm"]);
        assert_eq!(table[0].calls, 2);
        assert_eq!(table[0].total_ns, 200);
        assert_eq!(table[0].mean_ns, 100.0);
        assert_eq!(table[2].calls, 2);
        assert_eq!(table[2].total_ns, 40);
        assert_eq!(table[2].mean_ns, 20.0);
        // 200 + 60 + 40 = 300 ns in all.
        assert!((table[0].share - 200.0 / 300.0).abs() < 1e-12);
        assert!((table.iter().map(|s| s.share).sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn summarize_keeps_kernels_with_one_readable_name_apart() {
        let mut a = rec("cutlass::Kernel<…>", 7, 0, 10);
        a.raw_name = "_ZN7cutlass6KernelIiEEvv".into();
        let mut b = rec("cutlass::Kernel<…>", 7, 10, 40);
        b.raw_name = "_ZN7cutlass6KernelIfEEvv".into();
        let table = summarize(&[a, b, copy(7, 40, 50)]);
        assert_eq!(table.len(), 3);
        assert_eq!(table[0].raw_name, "_ZN7cutlass6KernelIfEEvv");
        assert_eq!(table[2].kind, ActivityKind::Memcpy);
        assert!(summarize(&[]).is_empty());
    }

    #[test]
    fn summarize_ties_are_ordered_by_name() {
        let table = summarize(&[rec("b", 0, 0, 5), rec("a", 0, 5, 10)]);
        assert_eq!(table[0].name, "a");
        assert_eq!(table[1].name, "b");
    }

    #[test]
    fn busy_fraction_with_gaps() {
        // Busy 0..20 and 50..80 of 0..100.
        let records = [rec("a", 0, 0, 20), rec("b", 0, 50, 80)];
        assert!((busy_fraction(&records, 0, 100) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn busy_fraction_counts_overlaps_once() {
        // Two streams: 10..40 and 30..60 overlap, 60..70 touches the union's end; 90..95 apart.
        let records = [
            rec("a", 1, 10, 40),
            rec("b", 2, 30, 60),
            rec("c", 1, 60, 70),
            rec("d", 2, 90, 95),
            // Contained entirely in a: adds nothing.
            rec("e", 3, 15, 25),
        ];
        assert!((busy_fraction(&records, 0, 100) - 0.65).abs() < 1e-12);
    }

    #[test]
    fn busy_fraction_clips_to_the_wall_span_and_ignores_copies() {
        let records = [rec("a", 0, 0, 50), rec("b", 0, 90, 200), copy(0, 50, 90)];
        // Within 40..100: 40..50 and 90..100.
        assert!((busy_fraction(&records, 40, 100) - 20.0 / 60.0).abs() < 1e-12);
        let whole = [rec("a", 0, 0, 1000)];
        assert_eq!(busy_fraction(&whole, 100, 200), 1.0);
    }

    #[test]
    fn busy_fraction_empty() {
        assert_eq!(busy_fraction(&[], 0, 100), 0.0);
        assert_eq!(busy_fraction(&[rec("a", 0, 0, 10)], 100, 100), 0.0);
        assert_eq!(busy_fraction(&[rec("a", 0, 0, 10)], 100, 50), 0.0);
        // Entirely outside the span.
        assert_eq!(busy_fraction(&[rec("a", 0, 0, 10)], 20, 30), 0.0);
    }

    #[test]
    fn launch_gaps_per_stream() {
        // Stream 1: gaps 5 and 20. Stream 2: gap 0 (back to back), then 10.
        // Interleaved in time with stream 1, which must not create gaps across streams.
        let records = [
            rec("a", 1, 0, 10),
            rec("b", 1, 15, 30),
            rec("c", 1, 50, 60),
            rec("d", 2, 12, 20),
            rec("e", 2, 20, 25),
            rec("f", 2, 35, 40),
        ];
        let (median, total) = launch_gaps(&records);
        assert_eq!(total, 35);
        // Gaps 0, 5, 10, 20: the median is between 5 and 10.
        assert_eq!(median, 7);
    }

    #[test]
    fn launch_gaps_overlap_is_no_gap_and_copies_occupy_the_stream() {
        // b starts before a ends (programmatic dependent launch); c ends before b does, so the
        // gap to d is measured from b's end.
        let records = [
            rec("a", 1, 0, 10),
            rec("b", 1, 8, 40),
            rec("c", 1, 12, 20),
            rec("d", 1, 45, 50),
        ];
        assert_eq!(launch_gaps(&records), (0, 5));
        // A copy between two kernels fills part of the gap.
        let records = [rec("a", 1, 0, 10), copy(1, 14, 20), rec("b", 1, 30, 40)];
        assert_eq!(launch_gaps(&records), (7, 14));
    }

    #[test]
    fn launch_gaps_empty_and_single() {
        assert_eq!(launch_gaps(&[]), (0, 0));
        assert_eq!(launch_gaps(&[rec("a", 0, 0, 10)]), (0, 0));
        assert_eq!(
            launch_gaps(&[rec("a", 0, 0, 10), rec("b", 1, 50, 60)]),
            (0, 0)
        );
    }

    #[test]
    fn readable_names() {
        // extern "C" kernels, and names that are not mangled, stay as they are.
        assert_eq!(readable_name("residual_add"), "residual_add");
        assert_eq!(
            readable_name("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNT"),
            "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNT"
        );
        assert_eq!(readable_name("_Z9my_kernelPfi"), "my_kernel");
        // Literals, bools and types in template arguments.
        assert_eq!(
            readable_name("_ZN8cublasLt19splitKreduce_kernelILi32ELi16EifLb0EEEvPKT1_"),
            "cublasLt::splitKreduce_kernel<32, 16, int, float, false>"
        );
        // A class template argument, its own arguments elided.
        assert_eq!(
            readable_name("_ZN7cutlass6KernelINS_4gemm6kernel4GemmIfLi2EEEEEvNT_6ParamsE"),
            "cutlass::Kernel<cutlass::gemm::kernel::Gemm<…>>"
        );
        // S_ is the first recorded prefix (cutlass), S1_ the third (cutlass::gemm).
        assert_eq!(
            readable_name("_ZN7cutlass6KernelINS_4gemm6kernel4GemmIfEENS1_5ShapeEEEvv"),
            "cutlass::Kernel<cutlass::gemm::kernel::Gemm<…>, cutlass::gemm::Shape>"
        );
        // Pointers, const, std and anonymous namespaces, negative literals.
        assert_eq!(
            readable_name("_ZN12_GLOBAL__N_13fooIPKfSt7complexIdELin3EEEvv"),
            "(anonymous namespace)::foo<const float*, std::complex<…>, -3>"
        );
        // Unparsed forms come back whole.
        assert_eq!(readable_name("_ZZ4mainE1x"), "_ZZ4mainE1x");
        assert_eq!(readable_name("_ZN3foo"), "_ZN3foo");
        assert_eq!(readable_name("_Z999x"), "_Z999x");
    }

    /// On a machine with a GPU and libcupti, traces real work: a fill, a copy, tperf's own
    /// kernel and a cuBLASLt matmul. Elsewhere it says it skipped.
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
        // The collector is free again.
        KernelTrace::start()
            .expect("a trace starts after the last finished")
            .finish()
            .expect("finishing an empty trace");
    }

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
        let t0 = now_ns()?;
        let host = vec![1.0f32; n];
        // SAFETY: `a` holds `bytes` bytes; `host` outlives the synchronize below.
        unsafe {
            cu::memcpy_htod_async(a, &host, gpu.cu_stream()).map_err(e("memcpy"))?;
            cu::memset_d8_async(b, 0, bytes, gpu.cu_stream()).map_err(e("memset"))?;
        }
        for _ in 0..3 {
            gpu.launch_1d(
                "elementwise",
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
        };
        for _ in 0..3 {
            blas.gemm(&g, a, b, c, None, None, gpu.cu_stream())
                .map_err(|e| e.to_string())?;
        }
        gpu.synchronize().map_err(|e| e.to_string())?;
        let t1 = now_ns()?;
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
