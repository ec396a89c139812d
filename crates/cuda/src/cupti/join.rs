//! Which op call launched each record. While an op's CUDA calls are issued, the backend holds an
//! [`OpScope`](super::OpScope): CUPTI's external correlation stack carries the op's index, and
//! every driver or runtime call made under it gets an external correlation record that pairs the
//! call's correlation id with that index. Kernel, memcpy and memset records carry the
//! correlation id of the call that issued them, so the two records join on it.

use super::stats::summarize_records;
use super::{KernelRecord, KernelSummary};
use std::collections::{BTreeMap, HashMap};

/// Sets each record's `op_index` from `external`, CUPTI's correlation id → external id (the op
/// index pushed while the call ran). Records whose call ran outside any op get None.
pub fn attribute_ops(records: &mut [KernelRecord], external: &HashMap<u32, u64>) {
    for r in records {
        r.op_index = external
            .get(&r.correlation_id)
            .and_then(|&id| usize::try_from(id).ok());
    }
}

/// The records of one op call.
#[derive(Clone, Debug, PartialEq)]
pub struct OpKernels {
    pub op_index: usize,
    /// Its kernel table: shares are of this op's summed durations.
    pub kernels: Vec<KernelSummary>,
    /// The summed durations of its records.
    pub total_ns: u64,
}

/// The records grouped by the op that launched them, in op order, and the table of those
/// launched outside any op.
pub fn kernels_by_op(records: &[KernelRecord]) -> (Vec<OpKernels>, Vec<KernelSummary>) {
    let mut by_op: BTreeMap<usize, Vec<&KernelRecord>> = BTreeMap::new();
    let mut outside = Vec::new();
    for r in records {
        match r.op_index {
            Some(i) => by_op.entry(i).or_default().push(r),
            None => outside.push(r),
        }
    }
    let ops = by_op
        .into_iter()
        .map(|(op_index, rs)| OpKernels {
            op_index,
            total_ns: rs.iter().map(|r| r.duration_ns()).sum(),
            kernels: summarize_records(rs),
        })
        .collect();
    (ops, summarize_records(outside))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cupti::test_records::{copy, rec};
    use crate::cupti::ActivityKind;

    fn launched(name: &str, correlation_id: u32, start: u64, end: u64) -> KernelRecord {
        KernelRecord {
            correlation_id,
            ..rec(name, 7, start, end)
        }
    }

    /// Op 10 is a matmul whose library call launched two kernels (one API call each); op 11 a
    /// norm and a fill issued inside it; correlation 5's call ran outside any op (a fresh
    /// tensor's fill), and correlation 9 has no external record at all.
    #[test]
    fn records_join_their_op_through_the_correlation_id() {
        let mut records = vec![
            launched("gemm", 1, 0, 100),
            launched("splitK_reduce", 2, 100, 110),
            KernelRecord {
                kind: ActivityKind::Memset,
                correlation_id: 3,
                ..copy(7, 110, 115)
            },
            launched("layernorm", 4, 115, 135),
            launched("zero", 5, 135, 136),
            launched("layernorm", 6, 140, 160),
            launched("stray", 9, 160, 170),
        ];
        let external = HashMap::from([(1, 10), (2, 10), (3, 11), (4, 11), (6, 12)]);
        attribute_ops(&mut records, &external);
        let ops: Vec<Option<usize>> = records.iter().map(|r| r.op_index).collect();
        assert_eq!(
            ops,
            [Some(10), Some(10), Some(11), Some(11), None, Some(12), None]
        );

        let (by_op, outside) = kernels_by_op(&records);
        let index: Vec<usize> = by_op.iter().map(|o| o.op_index).collect();
        assert_eq!(index, [10, 11, 12]);

        let matmul = &by_op[0];
        assert_eq!(matmul.total_ns, 110);
        let names: Vec<&str> = matmul.kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["gemm", "splitK_reduce"]);
        assert!((matmul.kernels[0].share - 100.0 / 110.0).abs() < 1e-12);

        let norm = &by_op[1];
        assert_eq!(norm.total_ns, 25);
        assert_eq!(norm.kernels.len(), 2);
        assert_eq!(norm.kernels[0].name, "layernorm");
        assert_eq!(norm.kernels[1].kind, ActivityKind::Memset);

        assert_eq!(by_op[2].kernels[0].calls, 1);
        assert_eq!(by_op[2].total_ns, 20);

        let stray: Vec<&str> = outside.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(stray, ["stray", "zero"]);
    }

    #[test]
    fn no_external_records_leaves_every_record_outside() {
        let mut records = vec![launched("a", 1, 0, 10), launched("a", 2, 10, 30)];
        attribute_ops(&mut records, &HashMap::new());
        let (by_op, outside) = kernels_by_op(&records);
        assert!(by_op.is_empty());
        assert_eq!(outside.len(), 1);
        assert_eq!(outside[0].calls, 2);
        assert_eq!(outside[0].total_ns, 30);
        assert_eq!(kernels_by_op(&[]), (vec![], vec![]));
    }
}
