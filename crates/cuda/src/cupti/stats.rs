//! The statistics of a trace: the kernel table, the share of the wall span the GPU ran a kernel,
//! and the idle time between activities on a stream.

use super::{ActivityKind, KernelRecord};
use std::collections::HashMap;

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
    summarize_records(records)
}

/// [`summarize`] over any selection of records (one op's, say) without copying them.
pub(crate) fn summarize_records<'a>(
    records: impl IntoIterator<Item = &'a KernelRecord>,
) -> Vec<KernelSummary> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cupti::test_records::{copy, rec};

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
}
