//! The NCCL path of the CUDA backend's collectives on the one GPU a test machine has: a group of
//! one (NCCL cannot put two ranks of one communicator on the same GPU). An all-reduce over one
//! rank leaves the values as they were for both reductions, which proves the call reaches NCCL
//! with the right pointers, counts and types (a wrong count or type corrupts or errors); the
//! arithmetic across ranks is tested on the CPU (tperf_core::comm, tperf_runtime tests) and on the
//! multi-GPU machines. Needs a CUDA device and libnccl; where there is none each test says it
//! skipped.

use tperf_core::backend::{Backend, OpCall};
use tperf_core::comm::{Reduce, Solo};
use tperf_core::dtype::DType;
use tperf_core::ops::collective::{Collective, CollectiveKind};
use tperf_core::ops::{Op, Phase};
use tperf_core::tensor::{MemCategory, TensorSpec};
use tperf_cuda::conformance::gpu_or_skip;

#[test]
fn an_all_reduce_over_a_group_of_one_leaves_a_bucket_unchanged() {
    let Some(mut be) = gpu_or_skip() else {
        return;
    };
    if let Err(e) = be.join_nccl(&Solo) {
        eprintln!("skipped: {e}");
        return;
    }
    let mut tensors = Vec::new();
    let mut values = Vec::new();
    for (i, (n, dtype)) in [(1000usize, DType::F32), (17, DType::F32), (64, DType::Bf16)]
        .into_iter()
        .enumerate()
    {
        let t = be
            .alloc(TensorSpec::new(
                format!("g{i}"),
                &[n],
                dtype,
                MemCategory::Gradients,
            ))
            .unwrap();
        let v: Vec<f32> = (0..n).map(|k| (k as f32 * 0.37 + i as f32).sin()).collect();
        be.write_f32(&t, &v).unwrap();
        values.push(be.read_f32(&t).unwrap());
        tensors.push(t);
    }
    for reduce in [Reduce::Mean, Reduce::Sum] {
        // One call per dtype, as the schedule's buckets hold one dtype each.
        for group in [&tensors[..2], &tensors[2..]] {
            let op = Collective {
                kind: CollectiveKind::AllReduce,
                reduce,
                numel: group.iter().map(|t| t.numel()).sum(),
                width_bytes: group[0].dtype.size_bytes(),
                world: 1,
            };
            let call = OpCall::from_lists(
                Op::Collective(op),
                group.to_vec(),
                group.to_vec(),
                "dp.grads",
                None,
                Phase::Backward,
            );
            be.exec(call).expect("the all-reduce runs");
        }
        for (t, want) in tensors.iter().zip(&values) {
            assert_eq!(&be.read_f32(t).unwrap(), want, "{reduce:?} over one rank");
        }
    }
}
