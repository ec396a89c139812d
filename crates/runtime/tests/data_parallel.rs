//! Data-parallel training on the CPU backend with the ranks as threads: W ranks that each take
//! their 1/W of a global batch and all-reduce (average) their gradients in the schedule's
//! buckets take the same steps as one rank training on the whole batch — the equality DDP
//! rests on. Not bit-identical: the mean gradient is summed in another order (per rank, then
//! across ranks), so losses agree to f32 rounding, checked at a stated tolerance.
//!
//! What this can and cannot catch: leaving out a bucket's all-reduce fails it at step 2 (checked
//! by hand: 4.1448 vs 4.1407); summing instead of averaging does not, because AdamW's update
//! m/√v does not change when every gradient is scaled alike (the ε aside) and clipping rescales
//! to the threshold anyway. The average itself is tested in `tperf_core::comm`.

use std::sync::Arc;
use std::thread;
use std::time::Duration;
use tperf_core::comm::{Communicator, ThreadGroup};
use tperf_core::config::ModelConfig;
use tperf_core::presets;
use tperf_core::rng::Rng;
use tperf_core::schedule::options::DataParallel;
use tperf_core::schedule::{Options, Transformer};
use tperf_cpu::CpuBackend;
use tperf_runtime::data::Batch;
use tperf_runtime::stepper::ModelStepper;
use tperf_runtime::train::{StepParams, Stepper};

const B: usize = 2;
const T: usize = 8;
const STEPS: u64 = 6;

fn tiny() -> ModelConfig {
    let mut cfg = presets::find("small").expect("preset exists").config;
    cfg.vocab_size = 64;
    cfg.context = 16;
    cfg.d_model = 32;
    cfg.d_ff = 64;
    cfg.n_layers = 2;
    let cfg = cfg.with_heads(4, 2).expect("4 heads (2 KV) divide 32");
    cfg.validate().expect("tiny config is valid");
    cfg
}

/// The global batches of the run: `rows` sequences of T tokens each step, the same on every
/// rank (each rank takes its rows of it).
fn global_batches(rows: usize) -> Vec<Batch> {
    let mut rng = Rng::new(11);
    (0..STEPS)
        .map(|_| {
            let tokens: Vec<i32> = (0..rows * T)
                .map(|_| (rng.next_u64() % 64) as i32)
                .collect();
            let targets: Vec<i32> = (0..rows * T)
                .map(|_| (rng.next_u64() % 64) as i32)
                .collect();
            Batch {
                b: rows,
                t: T,
                tokens,
                targets,
            }
        })
        .collect()
}

fn rows_of(batch: &Batch, first: usize, n: usize) -> Batch {
    let span = first * T..(first + n) * T;
    Batch {
        b: n,
        t: T,
        tokens: batch.tokens[span.clone()].to_vec(),
        targets: batch.targets[span].to_vec(),
    }
}

fn params(step: u64) -> StepParams {
    StepParams {
        step,
        lr: 1e-2,
        weight_decay: 0.1,
        // Clipping reads the norm of the averaged gradient: the test covers its ordering too.
        grad_clip: 0.5,
    }
}

fn stepper(be: CpuBackend, opts: Options) -> ModelStepper<CpuBackend> {
    let mut be = be;
    let model = Transformer::new(&mut be, &tiny(), opts, true).expect("model");
    model.init_weights(&mut be, 5).expect("init");
    ModelStepper::new(be, model).expect("a training model")
}

/// Each step's loss over the global batch, trained by `world` ranks (world 1: one backend, no
/// collectives). Small buckets so a step issues several all-reduces.
fn losses(world: usize) -> Vec<f32> {
    let batches = Arc::new(global_batches(world * B));
    if world == 1 {
        let mut s = stepper(CpuBackend::new(), Options::default());
        return batches
            .iter()
            .enumerate()
            .map(|(i, b)| s.train_step(b, &params(i as u64 + 1)).expect("step"))
            .collect();
    }
    let dp = DataParallel {
        bucket_bytes: 16 << 10,
        first_bucket_bytes: 4 << 10,
        ..DataParallel::ddp(world)
    };
    let opts = Options {
        data_parallel: Some(dp),
        ..Options::default()
    };
    let ranks: Vec<_> = ThreadGroup::new(world, Duration::from_secs(60))
        .into_iter()
        .map(|group| {
            let batches = Arc::clone(&batches);
            thread::spawn(move || {
                let rank = group.rank();
                let mut s = stepper(CpuBackend::with_communicator(Arc::new(group)), opts);
                batches
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let mine = rows_of(b, rank * B, B);
                        s.train_step(&mine, &params(i as u64 + 1)).expect("step")
                    })
                    .collect::<Vec<f32>>()
            })
        })
        .collect();
    let per_rank: Vec<Vec<f32>> = ranks.into_iter().map(|h| h.join().expect("rank")).collect();
    // Equal token counts per rank: the global mean is the mean of the ranks' means.
    (0..STEPS as usize)
        .map(|i| per_rank.iter().map(|l| l[i]).sum::<f32>() / world as f32)
        .collect()
}

#[test]
fn two_and_four_ranks_take_the_steps_one_rank_takes_on_the_whole_batch() {
    for world in [2, 4] {
        let one = {
            // The reference: one rank, the same global batch (world × B rows).
            let batches = global_batches(world * B);
            let mut s = stepper(CpuBackend::new(), Options::default());
            batches
                .iter()
                .enumerate()
                .map(|(i, b)| s.train_step(b, &params(i as u64 + 1)).expect("step"))
                .collect::<Vec<f32>>()
        };
        let dp = losses(world);
        // The loss must move (else equality proves nothing), and the DP run must follow it.
        assert!((one[0] - one[STEPS as usize - 1]).abs() > 1e-3, "{one:?}");
        for (step, (a, b)) in one.iter().zip(&dp).enumerate() {
            assert!(
                (a - b).abs() <= 2e-5 * a.abs().max(1.0),
                "world {world}, step {}: one rank {a}, data-parallel {b}",
                step + 1
            );
        }
    }
}

#[test]
fn a_schedule_for_two_ranks_on_a_lone_backend_says_what_is_missing() {
    let opts = Options {
        data_parallel: Some(DataParallel::ddp(2)),
        ..Options::default()
    };
    let mut s = stepper(CpuBackend::new(), opts);
    let batch = rows_of(&global_batches(B)[0], 0, B);
    let err = s.train_step(&batch, &params(1)).unwrap_err().to_string();
    assert!(err.contains("rank group"), "{err}");
}
