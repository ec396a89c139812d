//! The NCCL path of the CUDA backend's collectives on the one GPU a test machine has: a group of
//! one (NCCL cannot put two ranks of one communicator on the same GPU). An all-reduce over one
//! rank leaves the values as they were for both reductions, which proves the call reaches NCCL
//! with the right pointers, counts and types (a wrong count or type corrupts or errors); the
//! arithmetic across ranks is tested on the CPU (tperf_core::comm, tperf_runtime tests) and on the
//! multi-GPU machines. Needs a CUDA device and libnccl; where there is none each test says it
//! skipped.

use tperf_core::backend::{Backend, OpCall, Stream};
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
    // ZeRO-1's reduce-scatter (ncclReduce per shard) and all-gather (ncclBroadcast per shard)
    // over one rank are the identity too.
    let kinds = [
        CollectiveKind::AllReduce,
        CollectiveKind::ReduceScatter,
        CollectiveKind::AllGather,
    ];
    for (kind, reduce) in kinds
        .into_iter()
        .flat_map(|k| [(k, Reduce::Mean), (k, Reduce::Sum)])
    {
        // One call per dtype, as the schedule's buckets hold one dtype each.
        for group in [&tensors[..2], &tensors[2..]] {
            let op = Collective {
                kind,
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
            // As the schedule issues it: on the comm stream, after the compute stream's work
            // (the read below joins the streams).
            be.exec(call.on_stream(Stream::Comm, &[Stream::Compute]))
                .expect("the collective runs");
        }
        for (t, want) in tensors.iter().zip(&values) {
            assert_eq!(
                &be.read_f32(t).unwrap(),
                want,
                "{kind:?} {reduce:?} over one rank"
            );
        }
    }
}

/// ZeRO-1's optimizer share on the GPU: each rank of 3 measures Σg² over its shard of every
/// gradient (sizes 1000, 17 and 2, so the last shards are short or empty) and updates only its
/// shard of θ from shard-sized moments, against the reference on the host. No NCCL needed: the
/// backend is told which rank's share to run.
#[test]
fn a_zero1_rank_measures_and_updates_its_shard_only() {
    use tperf_core::comm::shard_range;
    use tperf_core::ops::adamw::{adamw_step, AdamW, AdamWIo, AdamWParams};
    use tperf_core::ops::grad_norm::{GradNorm, GradNormIo};
    use tperf_core::ops::operands::Operands;
    let Some(mut be) = gpu_or_skip() else {
        return;
    };
    let world = 3;
    let sizes = [1000usize, 17, 2];
    let wave = |n: usize, k: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + k) * 0.61).sin() * 0.3)
            .collect()
    };
    let total_sq: f64 = sizes
        .iter()
        .flat_map(|&n| wave(n, 1.0))
        .map(|x| f64::from(x) * f64::from(x))
        .sum();
    for rank in 0..world {
        be.run_optimizer_shard_of(rank, world);
        let mut alloc = |name: String, n: usize, cat| {
            be.alloc(TensorSpec::new(name, &[n], DType::F32, cat))
                .unwrap()
        };
        let mut io = AdamWIo {
            norm: alloc("norm".into(), 1, MemCategory::Io),
            theta: vec![],
            grads: vec![],
            m: vec![],
            v: vec![],
            copies: vec![],
        };
        for (i, &n) in sizes.iter().enumerate() {
            let per = n.div_ceil(world);
            io.theta
                .push(alloc(format!("w{i}"), n, MemCategory::Weights));
            io.grads
                .push(alloc(format!("g{i}"), n, MemCategory::Gradients));
            io.m.push(alloc(format!("m{i}"), per, MemCategory::OptimizerState));
            io.v.push(alloc(format!("v{i}"), per, MemCategory::OptimizerState));
        }
        let mut host = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let per = n.div_ceil(world);
            let (w, g) = (wave(n, 7.0), wave(n, 1.0));
            let (m, v) = (
                wave(per, 3.0),
                wave(per, 5.0).iter().map(|x| x * x).collect::<Vec<f32>>(),
            );
            be.write_f32(&io.theta[i], &w).unwrap();
            be.write_f32(&io.grads[i], &g).unwrap();
            be.write_f32(&io.m[i], &m).unwrap();
            be.write_f32(&io.v[i], &v).unwrap();
            host.push((w, g, m, v));
        }
        let numel: u64 = sizes
            .iter()
            .map(|&n| shard_range(n, rank, world).len() as u64)
            .sum();
        let gn = GradNorm {
            numel,
            shards: world,
        };
        let (inputs, outputs) = GradNormIo {
            grads: io.grads.clone(),
            norm: io.norm.clone(),
        }
        .into_lists(&gn);
        let call = OpCall::from_lists(
            Op::GradNorm(gn),
            inputs,
            outputs,
            "grad_norm",
            None,
            Phase::Optimizer,
        );
        be.exec(call).expect("the shard's norm runs");
        let got = f64::from(be.read_f32(&io.norm).unwrap()[0]);
        let want: f64 = sizes
            .iter()
            .flat_map(|&n| wave(n, 1.0)[shard_range(n, rank, world)].to_vec())
            .map(|x| f64::from(x) * f64::from(x))
            .sum();
        assert!(
            (got - want).abs() <= 1e-6 * want,
            "rank {rank}: Σg² of the shard {got} vs {want}"
        );
        // AdamW reads the all-reduced Σg² of every rank (here written by hand).
        be.write_f32(&io.norm, &[total_sq as f32]).unwrap();
        let adam = AdamW {
            numel,
            hyper: AdamWParams {
                max_grad_norm: Some(0.5),
                ..AdamWParams::default()
            },
            grad_scale: 1.0,
            shards: world,
        };
        let (inputs, outputs) = io.clone().into_lists(&adam);
        let call = OpCall::from_lists(
            Op::AdamW(adam),
            inputs,
            outputs,
            "adamw",
            None,
            Phase::Optimizer,
        );
        be.exec(call).expect("the shard's AdamW runs");
        for (i, &n) in sizes.iter().enumerate() {
            let shard = shard_range(n, rank, world);
            let (w, g, m, v) = &host[i];
            let (mut w2, mut m2, mut v2) = (w.clone(), m.clone(), v.clone());
            let own = shard.len();
            adamw_step(
                &adam,
                f64::from(total_sq as f32),
                false,
                &mut w2[shard.clone()],
                &g[shard.clone()],
                &mut m2[..own],
                &mut v2[..own],
            );
            let gw = be.read_f32(&io.theta[i]).unwrap();
            let gm = be.read_f32(&io.m[i]).unwrap();
            for k in 0..n {
                let tol = 1e-6 * w2[k].abs().max(1e-3);
                assert!(
                    (gw[k] - w2[k]).abs() <= tol,
                    "rank {rank} tensor {i} [{k}] (shard {shard:?}): {} vs {}",
                    gw[k],
                    w2[k]
                );
            }
            for k in 0..own {
                assert!((gm[k] - m2[k]).abs() <= 1e-6, "rank {rank} m{i}[{k}]");
            }
            assert_ne!(
                shard.is_empty(),
                gw != *w,
                "rank {rank} tensor {i}: only the shard moves"
            );
        }
        for t in io.theta.iter().chain(&io.grads).chain(&io.m).chain(&io.v) {
            be.free(t.clone());
        }
        be.free(io.norm);
    }
}
