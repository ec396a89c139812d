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
    stepper_of(&tiny(), be, opts)
}

fn stepper_of(cfg: &ModelConfig, be: CpuBackend, opts: Options) -> ModelStepper<CpuBackend> {
    let mut be = be;
    let model = Transformer::new(&mut be, cfg, opts, true).expect("model");
    model.init_weights(&mut be, 5).expect("init");
    ModelStepper::new(be, model).expect("a training model")
}

/// Each step's loss over the global batch, trained by `world` ranks (world 1: one backend, no
/// collectives). Small buckets so a step issues several all-reduces.
fn losses(world: usize) -> Vec<f32> {
    losses_of(&tiny(), world, world, false, Options::default())
}

/// [`losses`] for `cfg` on global batches of `shares` × B rows split over `world` ranks,
/// under DDP or (`zero1`) ZeRO-1, with `base`'s precision.
fn losses_of(
    cfg: &ModelConfig,
    shares: usize,
    world: usize,
    zero1: bool,
    base: Options,
) -> Vec<f32> {
    let batches = Arc::new(global_batches(shares * B));
    let b = shares * B / world;
    if world == 1 {
        let mut s = stepper_of(cfg, CpuBackend::new(), base);
        return batches
            .iter()
            .enumerate()
            .map(|(i, b)| s.train_step(b, &params(i as u64 + 1)).expect("step"))
            .collect();
    }
    let dp = DataParallel {
        bucket_bytes: 16 << 10,
        first_bucket_bytes: 4 << 10,
        zero1,
        ..DataParallel::ddp(world)
    };
    let opts = Options {
        data_parallel: Some(dp),
        ..base
    };
    let cfg = cfg.clone();
    let ranks: Vec<_> = ThreadGroup::new(world, Duration::from_secs(60))
        .into_iter()
        .map(|group| {
            let batches = Arc::clone(&batches);
            let cfg = cfg.clone();
            thread::spawn(move || {
                let rank = group.rank();
                let mut s = stepper_of(&cfg, CpuBackend::with_communicator(Arc::new(group)), opts);
                batches
                    .iter()
                    .enumerate()
                    .map(|(i, batch)| {
                        let mine = rows_of(batch, rank * b, b);
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

/// A model whose tensors mostly do not split evenly over 2 or 4 ranks (the embedding 67 × 30,
/// gains of 30, MLP biases of 75, QKV biases of 50), so ZeRO-1's uneven last shards are used.
fn odd() -> ModelConfig {
    let mut cfg = tiny();
    cfg.vocab_size = 67;
    cfg.d_model = 30;
    cfg.d_ff = 75;
    let cfg = cfg.with_heads(3, 1).expect("3 heads divide 30");
    cfg.validate().expect("odd config is valid");
    cfg
}

/// ZeRO-1 (reduce-scatter, a sharded AdamW, the squared partial norms all-reduced, all-gather)
/// takes the steps one rank takes on the whole batch, as DDP does. Same tolerance as DDP: the
/// reduction order is DDP's; the norm's partial squares are rounded to f32 once per rank.
/// Clipping is active (the norm exceeds 0.5 at every step here), so a norm summed as roots
/// instead of squares, or measured over the whole gradient instead of the shard, diverges.
#[test]
fn zero1_on_two_and_four_ranks_takes_the_steps_one_rank_takes() {
    let cfg = odd();
    for world in [2, 4] {
        let one = losses_of(&cfg, world, 1, false, Options::default());
        let zero = losses_of(&cfg, world, world, true, Options::default());
        assert!((one[0] - one[STEPS as usize - 1]).abs() > 1e-3, "{one:?}");
        for (step, (a, b)) in one.iter().zip(&zero).enumerate() {
            assert!(
                (a - b).abs() <= 2e-5 * a.abs().max(1.0),
                "world {world}, step {}: one rank {a}, ZeRO-1 {b}",
                step + 1
            );
        }
    }
}

/// Under bf16 the ranks all-gather the low-precision copies AdamW wrote over their shards (the
/// fp32 masters off the shard are stale, and nothing reads them). bf16 rounding of the forward
/// makes the per-rank micro-batches round differently from the whole batch, hence the looser
/// bound (bf16 has 8 significant bits: 2⁻⁸ relative).
#[test]
fn zero1_under_bf16_gathers_the_copies() {
    let cfg = odd();
    let bf16 = Options {
        precision: tperf_core::schedule::Precision::Bf16,
        ..Options::default()
    };
    let one = losses_of(&cfg, 2, 1, false, bf16);
    let zero = losses_of(&cfg, 2, 2, true, bf16);
    for (step, (a, b)) in one.iter().zip(&zero).enumerate() {
        assert!(
            (a - b).abs() <= 4e-3 * a.abs().max(1.0),
            "step {}: one rank {a}, ZeRO-1 {b}",
            step + 1
        );
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

mod through_the_training_loop {
    //! The same equality through `train`, the loop `tperf train` runs, with the ranks connected
    //! over loopback TCP as the processes of `tperf train --ranks N` are, and every rank's
    //! stepper wrapped in a RankStepper: validation losses agree too, and a stop asked on one
    //! rank stops every rank after the same step.

    use super::*;
    use std::net::TcpListener;
    use tperf_core::comm::Communicator;
    use tperf_runtime::comm::{Rendezvous, TcpGroup};
    use tperf_runtime::data::{Corpus, Loader, TextLoader};
    use tperf_runtime::data_parallel::RankStepper;
    use tperf_runtime::tokenizer::Tokenizer;
    use tperf_runtime::train::{train, RunPaths, StepRecord, StopFlag, TrainConfig};

    fn loader(rows: usize) -> Loader {
        let text = "Where there is a will there is a way. A stitch in time saves nine. ".repeat(30);
        let corpus = Corpus::from_text("test", &text, &Tokenizer::byte(), 0.2).expect("corpus");
        Loader::Text(TextLoader::new(Arc::new(corpus), rows, T, 3).expect("loader"))
    }

    fn cfg(rows: usize) -> TrainConfig {
        TrainConfig {
            steps: 6,
            batch: rows,
            seq: T,
            lr: 1e-2,
            warmup_steps: 2,
            eval_every: 3,
            eval_batches: 2,
            checkpoint_every: 0,
            ..TrainConfig::default()
        }
    }

    fn byte_model() -> ModelConfig {
        let mut c = tiny();
        c.vocab_size = 256;
        c
    }

    fn model_stepper(be: CpuBackend, opts: Options) -> ModelStepper<CpuBackend> {
        let mut be = be;
        let model = Transformer::new(&mut be, &byte_model(), opts, true).expect("model");
        model.init_weights(&mut be, 5).expect("init");
        ModelStepper::new(be, model).expect("a training model")
    }

    /// Every rank's records; `stop_on` = (rank, step) asks that rank alone to stop after it.
    fn run_ranks(world: usize, stop_on: Option<(usize, u64)>) -> Vec<Vec<StepRecord>> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let mut listener = Some(listener);
        let timeout = Duration::from_secs(30);
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let listener = if rank == 0 { listener.take() } else { None };
                thread::spawn(move || {
                    let group = match listener {
                        Some(l) => TcpGroup::serve(l, world, timeout),
                        None => TcpGroup::join(&Rendezvous {
                            rank,
                            world,
                            addr,
                            timeout,
                        }),
                    }
                    .expect("the group forms");
                    let comm: Arc<dyn Communicator> = Arc::new(group);
                    let opts = Options {
                        data_parallel: Some(DataParallel::ddp(world)),
                        ..Options::default()
                    };
                    let inner =
                        model_stepper(CpuBackend::with_communicator(Arc::clone(&comm)), opts);
                    let stop = StopFlag::new();
                    let mut s = RankStepper::new(inner, comm, stop.clone());
                    let mut data = loader(world * B);
                    let mut on_record = |r: &StepRecord| {
                        if stop_on == Some((rank, r.step)) {
                            stop.request();
                        }
                    };
                    let summary = train(
                        &cfg(world * B),
                        &mut s,
                        &mut data,
                        &RunPaths::default(),
                        "byte",
                        &stop,
                        &mut on_record,
                    )
                    .expect("train");
                    summary.records
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank"))
            .collect()
    }

    #[test]
    fn two_ranks_through_train_log_what_one_rank_logs() {
        let one = {
            let mut s = model_stepper(CpuBackend::new(), Options::default());
            let stop = StopFlag::new();
            let mut data = loader(2 * B);
            train(
                &cfg(2 * B),
                &mut s,
                &mut data,
                &RunPaths::default(),
                "byte",
                &stop,
                &mut |_| {},
            )
            .expect("train")
            .records
        };
        let ranks = run_ranks(2, None);
        for records in &ranks {
            assert_eq!(records.len(), one.len());
            for (a, b) in one.iter().zip(records) {
                assert!(
                    (a.loss - b.loss).abs() <= 2e-5 * a.loss.abs(),
                    "step {}: {} vs {}",
                    a.step,
                    a.loss,
                    b.loss
                );
                match (a.val_loss, b.val_loss) {
                    (Some(x), Some(y)) => {
                        assert!((x - y).abs() <= 2e-5 * x.abs(), "val {x} vs {y}")
                    }
                    (None, None) => {}
                    other => panic!("step {}: validation {other:?}", a.step),
                }
            }
        }
        assert_eq!(
            ranks[0].iter().map(|r| r.loss).collect::<Vec<_>>(),
            ranks[1].iter().map(|r| r.loss).collect::<Vec<_>>(),
            "both ranks log the same global loss"
        );
    }

    /// Every rank's records of a run of `steps` on `world` thread ranks (ZeRO-1 when `zero1`
    /// and world > 1), global batch `rows`, stopping after `stop_at`, with `paths`.
    fn run_threads(
        world: usize,
        zero1: bool,
        rows: usize,
        stop_at: Option<u64>,
        paths: RunPaths,
    ) -> Vec<Vec<StepRecord>> {
        let handles: Vec<_> = ThreadGroup::new(world, Duration::from_secs(60))
            .into_iter()
            .map(|group| {
                let paths = paths.clone();
                thread::spawn(move || {
                    let comm: Arc<dyn Communicator> = Arc::new(group);
                    let dp = DataParallel {
                        zero1,
                        ..DataParallel::ddp(world)
                    };
                    let opts = Options {
                        data_parallel: (world > 1).then_some(dp),
                        ..Options::default()
                    };
                    let be = if world > 1 {
                        CpuBackend::with_communicator(Arc::clone(&comm))
                    } else {
                        CpuBackend::new()
                    };
                    let inner = model_stepper(be, opts).in_group(Arc::clone(&comm));
                    let stop = StopFlag::new();
                    let mut s = RankStepper::new(inner, comm, stop.clone());
                    let mut data = loader(rows);
                    let cfg = TrainConfig {
                        stop_at,
                        ..cfg(rows)
                    };
                    train(&cfg, &mut s, &mut data, &paths, "byte", &stop, &mut |_| {})
                        .expect("train")
                        .records
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank"))
            .collect()
    }

    /// A ZeRO-1 checkpoint holds the whole state (the shards gathered): 3 steps on 2 ranks,
    /// then the rest of the run on 2 (bit-identical to the unbroken 2-rank run), on 1 and on 4
    /// ranks (equal to the unbroken 1-rank run within the data-parallel tolerance: the
    /// reduction order differs with N). 4 rows split over 1, 2 or 4 ranks.
    #[test]
    fn a_zero1_checkpoint_resumes_exactly_on_the_same_or_another_number_of_ranks() {
        let rows = 4;
        let dir = std::env::temp_dir().join(format!("tperf-zero1-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let whole_one = run_threads(1, false, rows, None, RunPaths::default()).remove(0);
        let whole_two = run_threads(2, true, rows, None, RunPaths::default()).remove(0);
        let saved = dir.join("two.safetensors");
        let first = run_threads(
            2,
            true,
            rows,
            Some(3),
            RunPaths {
                checkpoint: Some(saved.clone()),
                resume: None,
            },
        );
        assert_eq!(first[0].len(), 3);
        for (world, zero1) in [(2, true), (1, false), (4, true)] {
            let copy = dir.join(format!("resume-{world}.safetensors"));
            std::fs::copy(&saved, &copy).expect("copy the checkpoint");
            let rest = run_threads(
                world,
                zero1,
                rows,
                None,
                RunPaths {
                    checkpoint: Some(copy.clone()),
                    resume: Some(copy),
                },
            )
            .remove(0);
            assert_eq!(rest.first().map(|r| r.step), Some(4), "{rest:?}");
            let want = if world == 2 { &whole_two } else { &whole_one };
            for r in &rest {
                let w = &want[r.step as usize - 1];
                if world == 2 {
                    assert_eq!(r.loss, w.loss, "step {}: resumed on 2 ranks", r.step);
                } else {
                    assert!(
                        (r.loss - w.loss).abs() <= 2e-5 * w.loss.abs(),
                        "step {}: resumed on {world} ranks {}, unbroken {}",
                        r.step,
                        r.loss,
                        w.loss
                    );
                }
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_stop_on_one_rank_stops_every_rank_after_the_same_step() {
        let ranks = run_ranks(2, Some((1, 2)));
        for records in &ranks {
            assert_eq!(records.last().map(|r| r.step), Some(3), "{records:?}");
        }
    }
}

/// Memory per rank under ZeRO-1: the CPU backend's ledger of a real step on each of W thread
/// ranks peaks where the Meta record of the same scenario does, byte for byte, and AdamW's state is the ⌈n/W⌉ shard of every parameter (8 bytes each), not
/// the 8 bytes per parameter DDP holds.
#[test]
fn zero1_memory_per_rank_is_what_the_model_predicts() {
    use tperf_core::cost::{analysis, memory};
    use tperf_core::ops::adamw::AdamWParams;
    use tperf_core::schedule::scenario::{Scenario, StepRunner, Workload};
    use tperf_core::tensor::MemCategory;
    let cfg = odd();
    for world in [2, 4] {
        let sc = Scenario {
            workload: Workload::Train,
            batch: B,
            seq: T,
            opts: Options {
                data_parallel: Some(DataParallel::zero1(world)),
                ..Options::default()
            },
        };
        let meta = analysis::record(&cfg, &sc).expect("the model records");
        let predicted = memory::summarize(meta.mem_events());
        let moments: u64 = {
            let mut be = tperf_core::meta::MetaBackend::new();
            let m = Transformer::new(&mut be, &cfg, Options::default(), true).expect("model");
            let w = m.weights.all_params();
            w.iter().map(|p| 8 * p.numel().div_ceil(world as u64)).sum()
        };
        let measured: Vec<(u64, u64)> = ThreadGroup::new(world, Duration::from_secs(60))
            .into_iter()
            .map(|group| {
                let cfg = cfg.clone();
                thread::spawn(move || {
                    let mut be = CpuBackend::with_communicator(Arc::new(group));
                    let mut runner = StepRunner::new(&mut be, &cfg, sc).expect("runner");
                    runner.model.init_weights(&mut be, 5).expect("init");
                    be.ledger_mut().reset_peak();
                    runner.step(&mut be, AdamWParams::default()).expect("step");
                    let state = be.ledger().bytes_in_use(MemCategory::OptimizerState);
                    (be.ledger().peak_bytes(), state)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("rank"))
            .collect();
        for (rank, (peak, state)) in measured.into_iter().enumerate() {
            assert_eq!(
                peak, predicted.peak_bytes,
                "world {world} rank {rank}: peak"
            );
            assert_eq!(state, moments, "world {world} rank {rank}: AdamW state");
        }
    }
}

/// Gradient accumulation: K micro-steps of B rows take the step one step of K·B rows takes,
/// alone (K = 2, 3) and on 2 ranks under DDP and ZeRO-1 (K = 2); and the schedule reduces the
/// gradients once per optimizer step (on the last micro-step), not once per micro-step.
#[test]
fn k_micro_steps_take_the_step_of_k_times_the_batch() {
    use tperf_core::cost::analysis;
    use tperf_core::ops::Op;
    use tperf_core::schedule::scenario::{Scenario, Workload};
    let cfg = odd();
    let with_k = |k: usize| Options {
        grad_accum: k,
        ..Options::default()
    };
    for (world, k, zero1) in [(1, 2, false), (1, 3, false), (2, 2, false), (2, 2, true)] {
        let one = losses_of(&cfg, world * k, 1, false, Options::default());
        let accum = losses_of(&cfg, world * k, world, zero1, with_k(k));
        assert!((one[0] - one[STEPS as usize - 1]).abs() > 1e-3, "{one:?}");
        for (step, (a, b)) in one.iter().zip(&accum).enumerate() {
            assert!(
                (a - b).abs() <= 2e-5 * a.abs().max(1.0),
                "{world} rank(s), K = {k}, ZeRO-1 {zero1}, step {}: one step {a}, accumulated {b}",
                step + 1
            );
        }
    }
    let collectives = |k: usize| {
        let sc = Scenario {
            workload: Workload::Train,
            batch: B,
            seq: T,
            opts: Options {
                data_parallel: Some(DataParallel::ddp(2)),
                ..with_k(k)
            },
        };
        let meta = analysis::record(&cfg, &sc).expect("the model records");
        let ops = &meta.ops;
        let reduce = ops
            .iter()
            .filter(|r| matches!(r.call.op, Op::Collective(_)))
            .count();
        let losses = ops
            .iter()
            .filter(|r| matches!(r.call.op, Op::CrossEntropy(_)))
            .count();
        (reduce, losses)
    };
    let (once, one_fwd) = collectives(1);
    let (thrice, three_fwd) = collectives(3);
    assert!(once > 0);
    assert_eq!(
        thrice, once,
        "the gradients are reduced once per optimizer step"
    );
    assert_eq!(
        three_fwd,
        3 * one_fwd,
        "three micro-steps, each with its loss"
    );
}

/// What the loss comparison above cannot see (AdamW's m/√v does not change when every gradient
/// is scaled alike, and clipping rescales to the threshold): after K = 2 micro-steps the
/// gradients hold the sum of the micro-batches' mean gradients — 2× the mean gradient of the
/// whole batch — and AdamW is told to divide by S·K.
#[test]
fn accumulated_gradients_are_the_sum_and_adamw_divides_by_k() {
    use tperf_core::backend::Backend;
    let cfg = odd();
    let batch = &global_batches(2 * B)[0];
    let grads = |k: usize| {
        let opts = Options {
            grad_accum: k,
            ..Options::default()
        };
        let mut be = CpuBackend::new();
        let model = Transformer::new(&mut be, &cfg, opts, true).expect("model");
        model.init_weights(&mut be, 5).expect("init");
        let rows = 2 * B / k;
        for i in 0..k {
            let part = rows_of(batch, i * rows, rows);
            let (tk, tg) = model.alloc_inputs(&mut be, rows, T, true).expect("inputs");
            let tg = tg.expect("targets");
            be.write_i32(&tk, &part.tokens).expect("tokens");
            be.write_i32(&tg, &part.targets).expect("targets");
            let state = model.forward_train(&mut be, tk, tg).expect("forward");
            let losses = model.backward_micro(&mut be, state, i).expect("backward");
            be.free(losses);
        }
        model
            .weights
            .all_params()
            .iter()
            .map(|p| be.read_f32(p.grad()).expect("grad"))
            .collect::<Vec<_>>()
    };
    let (whole, summed) = (grads(1), grads(2));
    for (w, s) in whole.iter().zip(&summed) {
        for (a, b) in w.iter().zip(s) {
            assert!(
                (2.0 * a - b).abs() <= 1e-5 * a.abs().max(1e-3),
                "{b} vs 2 × {a}"
            );
        }
    }
    let sc = tperf_core::schedule::scenario::Scenario {
        workload: tperf_core::schedule::scenario::Workload::Train,
        batch: B,
        seq: T,
        opts: Options {
            grad_accum: 2,
            ..Options::default()
        },
    };
    let meta = tperf_core::cost::analysis::record(&cfg, &sc).expect("record");
    let scales: Vec<f64> = meta
        .ops
        .iter()
        .filter_map(|r| match &r.call.op {
            tperf_core::ops::Op::AdamW(a) => Some(a.grad_scale),
            _ => None,
        })
        .collect();
    assert!(
        !scales.is_empty() && scales.iter().all(|&s| s == 2.0),
        "{scales:?}"
    );
}
