//! The GPU kernels of a traced step as the harness reports them: the kernel table, how busy the
//! GPU was, and each op's own kernels (CUPTI's records joined to the op that launched them).

use serde::Serialize;
use tperf_cuda::cupti::{self, KernelSummary, TraceOutput};

/// One kernel name's share of a traced step (or of one op's kernels).
#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    /// Readable (demangled, shortened) name; cuBLAS's kernels under their own names.
    pub name: String,
    pub kind: String,
    pub calls: u64,
    pub total_seconds: f64,
    pub mean_seconds: f64,
    pub share: f64,
}

impl From<KernelSummary> for KernelRow {
    fn from(k: KernelSummary) -> Self {
        KernelRow {
            name: k.name,
            kind: format!("{:?}", k.kind).to_lowercase(),
            calls: k.calls,
            total_seconds: ns(k.total_ns),
            mean_seconds: k.mean_ns * 1e-9,
            share: k.share,
        }
    }
}

/// The kernels, copies and fills one op call launched.
#[derive(Clone, Debug, Serialize)]
pub struct OpKernelRows {
    /// The op's position in the schedule: the index of its row in the per-op table.
    pub index: usize,
    /// Shares are of this op's GPU time.
    pub kernels: Vec<KernelRow>,
    /// The summed durations of its kernels, copies and fills.
    pub gpu_seconds: f64,
}

/// The kernels of one traced step: what ran, for how long, and how busy the GPU was.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTable {
    pub rows: Vec<KernelRow>,
    pub kernels_launched: usize,
    /// The union of kernel intervals over the step's wall span: the fraction of the step a
    /// kernel runs on the GPU (GPU utilisation in nvidia-smi's sense, measured).
    pub busy_fraction: f64,
    pub step_wall_seconds: f64,
    /// Idle time between consecutive kernels of a stream: median and total.
    pub launch_gap_median_seconds: f64,
    pub launch_gap_total_seconds: f64,
    /// Records CUPTI dropped (its buffers full); non-zero means the table is incomplete.
    pub dropped: u64,
    /// Each op's kernels, in schedule order; ops that launched nothing are left out.
    pub by_op: Vec<OpKernelRows>,
    /// What ran outside every op: fills of fresh tensors, copies of the step's inputs, and
    /// whatever a CUDA graph replay ran.
    pub outside_ops: Vec<KernelRow>,
}

fn ns(x: u64) -> f64 {
    x as f64 * 1e-9
}

impl KernelTable {
    /// The table of a finished trace whose wall span is `wall_start_ns..wall_end_ns` on CUPTI's
    /// clock. `first_op` is the backend's op count when the step began: the op a record carries
    /// is counted from it, which makes it the op's index in the schedule.
    pub fn of_trace(
        mut out: TraceOutput,
        wall_start_ns: u64,
        wall_end_ns: u64,
        first_op: usize,
    ) -> KernelTable {
        for r in &mut out.records {
            r.op_index = r.op_index.and_then(|i| i.checked_sub(first_op));
        }
        let (gap_median, gap_total) = cupti::launch_gaps(&out.records);
        let (by_op, outside_ops) = cupti::kernels_by_op(&out.records);
        let rows = |table: Vec<KernelSummary>| table.into_iter().map(KernelRow::from).collect();
        KernelTable {
            rows: rows(cupti::summarize(&out.records)),
            kernels_launched: out.records.iter().filter(|r| r.is_kernel()).count(),
            busy_fraction: cupti::busy_fraction(&out.records, wall_start_ns, wall_end_ns),
            step_wall_seconds: ns(wall_end_ns.saturating_sub(wall_start_ns)),
            launch_gap_median_seconds: ns(gap_median),
            launch_gap_total_seconds: ns(gap_total),
            dropped: out.dropped,
            by_op: by_op
                .into_iter()
                .map(|o| OpKernelRows {
                    index: o.op_index,
                    gpu_seconds: ns(o.total_ns),
                    kernels: rows(o.kernels),
                })
                .collect(),
            outside_ops: rows(outside_ops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tperf_cuda::cupti::{ActivityKind, KernelRecord};

    fn record(name: &str, start_ns: u64, end_ns: u64, op_index: Option<usize>) -> KernelRecord {
        KernelRecord {
            kind: ActivityKind::Kernel,
            name: name.into(),
            raw_name: name.into(),
            start_ns,
            end_ns,
            device_id: 0,
            context_id: 1,
            stream_id: 7,
            correlation_id: 0,
            op_index,
            grid: [1, 1, 1],
            block: [256, 1, 1],
            registers: 32,
            shared_bytes: 0,
            bytes: 0,
        }
    }

    /// The backend numbers ops across steps; the table numbers them from the step's first op,
    /// as the schedule (and the per-op table) does.
    #[test]
    fn ops_are_numbered_from_the_step_start() {
        let out = TraceOutput {
            records: vec![
                record("zero", 0, 1_000, None),
                record("embedding", 1_000, 3_000, Some(500)),
                record("gemm", 3_000, 7_000, Some(502)),
                record("reduce", 7_000, 8_000, Some(502)),
            ],
            dropped: 0,
            incomplete: 0,
        };
        let t = KernelTable::of_trace(out, 0, 10_000, 500);
        assert_eq!(t.kernels_launched, 4);
        assert!((t.busy_fraction - 0.8).abs() < 1e-12);
        let index: Vec<usize> = t.by_op.iter().map(|o| o.index).collect();
        assert_eq!(index, [0, 2]);
        assert!((t.by_op[1].gpu_seconds - 5e-6).abs() < 1e-15);
        let names: Vec<&str> = t.by_op[1].kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["gemm", "reduce"]);
        assert_eq!(t.by_op[1].kernels[0].kind, "kernel");
        assert_eq!(t.outside_ops.len(), 1);
        assert_eq!(t.outside_ops[0].name, "zero");
    }
}
