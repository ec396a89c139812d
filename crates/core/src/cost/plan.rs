//! Planning: the seed's sizing questions answered from the schedule's own record.
//!   - the largest model a number of GPUs can train (replicated data parallel, or with weights,
//!     gradients and optimizer state sharded across them as ZeRO-3/FSDP does);
//!   - the time and GPU-hours to train on D tokens at a given MFU;
//!   - the largest batch × context a KV-cache budget allows;
//!   - the ring all-reduce cost of data-parallel training, from the schedule's own buckets;
//!   - the decode batch at which generation turns compute-bound.

use super::analysis::{self, AnalysisError, Scenario, Workload};
use super::hardware::Hardware;
use crate::config::{Biases, Mlp, ModelConfig, Norm, NormPlacement, Positions};
use crate::ops::collective::CollectiveKind;
use crate::ops::Op;
use crate::schedule::{DataParallel, Options};
use crate::tensor::MemCategory;
use serde::Serialize;

/// A ladder of Llama-style shapes (d_model, layers) following GPT-3's table and its successors,
/// with d_ff = 8/3·C rounded to 256 (SwiGLU at the parameter count of a 4C GELU MLP), head
/// dimension 128 and vocabulary 32,000.
pub fn size_ladder() -> Vec<ModelConfig> {
    let shapes: [(&str, usize, usize); 13] = [
        ("125M", 768, 12),
        ("350M", 1024, 24),
        ("760M", 1536, 24),
        ("1.3B", 2048, 24),
        ("2.7B", 2560, 32),
        ("6.7B", 4096, 32),
        ("13B", 5120, 40),
        ("30B", 6656, 60),
        ("65B", 8192, 80),
        ("175B", 12288, 96),
        ("405B", 16384, 126),
        ("1T", 25600, 128),
        ("2T", 32768, 160),
    ];
    shapes
        .iter()
        .map(|&(name, d, l)| {
            let heads = (d / 128).max(1);
            let d_ff = (8 * d / 3).div_ceil(256) * 256;
            ModelConfig {
                name: format!("llama-{name}"),
                vocab_size: 32_000,
                context: 8192,
                d_model: d,
                d_ff,
                n_layers: l,
                n_heads: heads,
                n_kv_heads: heads,
                head_dim: d / heads,
                norm: Norm::RmsNorm,
                norm_eps: 1e-5,
                mlp: Mlp::SwiGlu,
                positions: Positions::Rope {
                    theta: 10_000.0,
                    scaling: crate::config::RopeScaling::None,
                },
                biases: Biases::NONE,
                tied_embeddings: false,
                causal: true,
                norm_placement: NormPlacement::Pre,
                final_norm: true,
                scale_embedding: false,
                sliding_window: None,
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharding {
    /// Every GPU holds all weights, gradients and optimizer state.
    Replicated,
    /// Weights, gradients and optimizer state divided across the GPUs (ZeRO-3 / FSDP);
    /// activations stay per GPU, and one layer's gathered weights are transient (ignored).
    Sharded,
}

#[derive(Clone, Debug, Serialize)]
pub struct FitRow {
    pub model: String,
    pub params: u64,
    /// Bytes per GPU at the training step's peak.
    pub peak_bytes_per_gpu: u64,
    pub fits: bool,
}

/// Per-GPU peak training memory of `cfg` at micro-batch `batch` × `seq`.
pub fn training_peak_per_gpu(
    cfg: &ModelConfig,
    opts: Options,
    batch: usize,
    seq: usize,
    gpus: usize,
    sharding: Sharding,
) -> Result<u64, AnalysisError> {
    let sc = Scenario {
        workload: Workload::Train,
        batch,
        seq,
        opts,
    };
    let rec = analysis::record(cfg, &sc)?;
    let summary = super::memory::summarize(rec.mem_events());
    let state: u64 = [
        MemCategory::Weights,
        MemCategory::Gradients,
        MemCategory::OptimizerState,
    ]
    .iter()
    .map(|c| summary.at_peak.get(c).copied().unwrap_or(0))
    .sum();
    Ok(match sharding {
        Sharding::Replicated => summary.peak_bytes,
        Sharding::Sharded => summary.peak_bytes - state + state.div_ceil(gpus.max(1) as u64),
    })
}

/// Which rungs of the ladder (and extra candidates) fit in `gpus` × `hw` for training.
pub fn largest_trainable(
    candidates: &[ModelConfig],
    hw: &Hardware,
    opts: Options,
    batch: usize,
    seq: usize,
    gpus: usize,
    sharding: Sharding,
) -> Result<Vec<FitRow>, AnalysisError> {
    candidates
        .iter()
        .map(|cfg| {
            let mut cfg = cfg.clone();
            cfg.context = cfg.context.max(seq);
            let peak = training_peak_per_gpu(&cfg, opts, batch, seq, gpus, sharding)?;
            Ok(FitRow {
                model: cfg.name.clone(),
                params: cfg.param_count(),
                peak_bytes_per_gpu: peak,
                fits: peak <= hw.memory_bytes,
            })
        })
        .collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainingTime {
    /// FLOPs per trained token, from the schedule's record (forward + backward + optimizer,
    /// recomputation included).
    pub flops_per_token: f64,
    pub tokens: f64,
    pub gpus: usize,
    pub mfu: f64,
    pub seconds: f64,
    pub gpu_hours: f64,
}

/// `step` must be a training scenario: its schedule gives the FLOPs per token.
pub fn training_time(
    cfg: &ModelConfig,
    hw: &Hardware,
    step: &Scenario,
    tokens: f64,
    gpus: usize,
    mfu: f64,
) -> Result<TrainingTime, AnalysisError> {
    debug_assert_eq!(step.workload, Workload::Train);
    let opts = step.opts;
    let a = analysis::analyze(cfg, step, hw)?;
    let flops_per_token = a.total.flops as f64 / a.tokens_per_step as f64;
    let peak = hw.peak_flops(opts.precision.compute_dtype());
    let seconds = tokens * flops_per_token / (gpus as f64 * peak * mfu);
    Ok(TrainingTime {
        flops_per_token,
        tokens,
        gpus,
        mfu,
        seconds,
        gpu_hours: seconds * gpus as f64 / 3600.0,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct KvBudgetRow {
    pub context: usize,
    /// The most sequences of this context the budget holds.
    pub max_batch: u64,
    pub bytes_per_sequence: u64,
}

/// For each context length, how many sequences' KV caches fit in `budget_bytes`.
pub fn kv_budget(
    cfg: &ModelConfig,
    width_bytes: u64,
    budget_bytes: u64,
    contexts: &[usize],
) -> Vec<KvBudgetRow> {
    contexts
        .iter()
        .map(|&context| {
            let per_seq = crate::ops::kv_cache::cache_bytes(
                cfg.n_layers,
                1,
                context,
                cfg.n_kv_heads,
                cfg.head_dim,
                width_bytes,
            );
            KvBudgetRow {
                context,
                max_batch: budget_bytes / per_seq.max(1),
                bytes_per_sequence: per_seq,
            }
        })
        .collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct AllReduceCost {
    pub gpus: usize,
    pub gradient_bytes: u64,
    /// Bytes each GPU sends over its link, summed over the schedule's bucket all-reduces:
    /// 2(W−1)/W of the gradients.
    pub link_bytes_per_gpu: u64,
    /// The all-reduces' time on the communication stream.
    pub seconds: f64,
    /// How many bucket all-reduces the backward issues.
    pub buckets: usize,
    /// The training step's compute-stream time, what one GPU takes for its micro-batch.
    pub step_seconds: f64,
    /// Scaling efficiency if the all-reduce does not overlap the backward:
    /// step / (step + all-reduce).
    pub efficiency_no_overlap: f64,
    /// The part of the all-reduces the backward does not hide (the critical path over the
    /// streams minus the compute stream's time).
    pub exposed_seconds: f64,
    /// The data-parallel step: the critical path over the compute and communication streams.
    pub step_seconds_overlapped: f64,
    /// step / overlapped step.
    pub efficiency: f64,
}

/// DDP's ring all-reduce of the gradients (fp32 under every policy tperf models), as the
/// schedule issues it: in buckets on the communication stream as the backward completes them,
/// overlapping the rest of the backward ([`crate::schedule::DataParallel`]).
pub fn data_parallel_cost(
    cfg: &ModelConfig,
    hw: &Hardware,
    opts: Options,
    batch: usize,
    seq: usize,
    gpus: usize,
) -> Result<AllReduceCost, AnalysisError> {
    let sc = Scenario {
        workload: Workload::Train,
        batch,
        seq,
        opts: Options {
            data_parallel: Some(DataParallel::ddp(gpus)),
            ..opts
        },
    };
    let record = analysis::record(cfg, &sc)?;
    let a = analysis::analyze_record(cfg, &sc, hw, &record);
    let (mut link_bytes, mut seconds, mut buckets) = (0, 0.0, 0);
    for (rec, row) in record.ops.iter().zip(&a.rows) {
        if let Op::Collective(c) = &rec.call.op {
            debug_assert_eq!(c.kind, CollectiveKind::AllReduce);
            link_bytes += row.bytes;
            seconds += row.seconds;
            buckets += 1;
        }
    }
    let gradient_bytes = a
        .memory
        .max_by_category
        .get(&MemCategory::Gradients)
        .copied()
        .unwrap_or(0);
    let step = a.timing.compute_seconds;
    let overlapped = a.step_seconds();
    Ok(AllReduceCost {
        gpus,
        gradient_bytes,
        link_bytes_per_gpu: link_bytes,
        seconds,
        buckets,
        step_seconds: step,
        efficiency_no_overlap: step / (step + seconds),
        exposed_seconds: a.timing.exposed_comm_seconds,
        step_seconds_overlapped: overlapped,
        efficiency: step / overlapped,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct DecodePoint {
    pub batch: usize,
    pub step_seconds: f64,
    pub tokens_per_second: f64,
    pub compute_seconds: f64,
    pub memory_seconds: f64,
    /// The same sums over the linear layers alone (weights read once per step, shared by the
    /// batch), which turn compute-bound near the ridge point; attention reads each sequence's
    /// own KV cache and stays memory-bound at any batch.
    pub linear_compute_seconds: f64,
    pub linear_memory_seconds: f64,
    pub peak_bytes: u64,
    pub fits: bool,
}

impl DecodePoint {
    pub fn compute_bound(&self) -> bool {
        self.compute_seconds >= self.memory_seconds
    }

    pub fn linear_compute_bound(&self) -> bool {
        self.linear_compute_seconds >= self.linear_memory_seconds
    }
}

/// Decode steps at context `seq` across batch sizes: latency per token, throughput, and the
/// sums of the ops' compute and memory times (compute-bound once the first passes the second).
pub fn decode_sweep(
    cfg: &ModelConfig,
    hw: &Hardware,
    opts: Options,
    seq: usize,
    batches: &[usize],
) -> Result<Vec<DecodePoint>, AnalysisError> {
    batches
        .iter()
        .map(|&batch| {
            let sc = Scenario {
                workload: Workload::Decode,
                batch,
                seq,
                opts,
            };
            let a = analysis::analyze(cfg, &sc, hw)?;
            let linear = || a.rows.iter().filter(|r| r.name.starts_with("matmul"));
            Ok(DecodePoint {
                batch,
                linear_compute_seconds: linear().map(|r| r.compute_seconds).sum(),
                linear_memory_seconds: linear().map(|r| r.memory_seconds).sum(),
                step_seconds: a.step_seconds(),
                tokens_per_second: a.tokens_per_second(),
                compute_seconds: a.rows.iter().map(|r| r.compute_seconds).sum(),
                memory_seconds: a.rows.iter().map(|r| r.memory_seconds).sum(),
                peak_bytes: a.memory.peak_bytes,
                fits: a.fits(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::hardware;

    #[test]
    fn ladder_sizes_are_what_their_names_say() {
        for cfg in size_ladder() {
            cfg.validate().unwrap();
            let label = cfg.name.trim_start_matches("llama-");
            let (num, unit) = label.split_at(label.len() - 1);
            let nominal: f64 = num.parse::<f64>().unwrap()
                * if unit == "B" {
                    1e9
                } else if unit == "T" {
                    1e12
                } else {
                    1e6
                };
            let ratio = cfg.param_count() as f64 / nominal;
            assert!(
                (0.8..1.3).contains(&ratio),
                "{}: {} params",
                cfg.name,
                cfg.param_count()
            );
        }
    }

    #[test]
    fn sharding_across_four_gpus_fits_a_larger_model() {
        let hw = hardware::find("h100-sxm").unwrap();
        let ladder = size_ladder();
        let largest = |gpus, sharding| {
            largest_trainable(&ladder, &hw, Options::default(), 1, 2048, gpus, sharding)
                .unwrap()
                .iter()
                .filter(|r| r.fits)
                .map(|r| r.params)
                .max()
                .unwrap_or(0)
        };
        let one = largest(1, Sharding::Replicated);
        let four = largest(4, Sharding::Sharded);
        // 16 bytes per parameter before activations: one 80 GiB GPU trains a few billion.
        assert!(one > 1_000_000_000 && one < 6_000_000_000, "{one}");
        assert!(four > one);
        assert_eq!(
            largest(4, Sharding::Replicated),
            one,
            "replication does not add room"
        );
    }

    #[test]
    fn kv_budget_scales_with_gqa() {
        let mut cfg = size_ladder()[5].clone(); // 6.7B: 32 layers, 32 heads of 128
        let rows = kv_budget(&cfg, 2, 80 << 30, &[4096]);
        // 2 · 32 · 4096 · 32 · 128 · 2 bytes = 2 GiB per sequence → 40 fit in 80 GiB.
        assert_eq!(rows[0].bytes_per_sequence, 2 << 30);
        assert_eq!(rows[0].max_batch, 40);
        cfg.n_kv_heads = 8;
        assert_eq!(kv_budget(&cfg, 2, 80 << 30, &[4096])[0].max_batch, 160);
    }

    #[test]
    fn decode_linear_layers_turn_compute_bound_at_large_batch() {
        let cfg = crate::presets::find("gpt2-124m").unwrap().config;
        let hw = hardware::find("h100-sxm").unwrap();
        let opts = Options {
            precision: crate::schedule::Precision::Bf16,
            ..Options::default()
        };
        let points = decode_sweep(&cfg, &hw, opts, 128, &[1, 4096]).unwrap();
        assert!(!points[0].compute_bound() && !points[0].linear_compute_bound());
        assert!(points[1].linear_compute_bound());
        assert!(
            !points[1].compute_bound(),
            "the KV-cache reads keep the whole step memory-bound"
        );
        assert!(points[1].tokens_per_second > 30.0 * points[0].tokens_per_second);
    }

    #[test]
    fn all_reduce_of_one_gpu_is_free_and_grows_toward_twice_the_gradients() {
        let cfg = crate::presets::find("gpt2-124m").unwrap().config;
        let hw = hardware::find("h100-sxm").unwrap();
        let one = data_parallel_cost(&cfg, &hw, Options::default(), 8, 1024, 1).unwrap();
        assert_eq!(one.link_bytes_per_gpu, 0);
        let eight = data_parallel_cost(&cfg, &hw, Options::default(), 8, 1024, 8).unwrap();
        assert_eq!(eight.link_bytes_per_gpu, 2 * eight.gradient_bytes * 7 / 8);
        assert!(eight.efficiency_no_overlap < 1.0 && eight.efficiency_no_overlap > 0.0);
        assert_eq!(one.step_seconds, one.step_seconds_overlapped);
        assert_eq!(
            (one.buckets, one.exposed_seconds, one.efficiency),
            (0, 0.0, 1.0)
        );
        assert_eq!(eight.step_seconds, one.step_seconds, "DDP adds no compute");
        // The buckets overlap the backward: only part of the all-reduce time is exposed.
        assert!(eight.buckets > 3);
        assert!(eight.exposed_seconds > 0.0 && eight.exposed_seconds < eight.seconds);
        assert!(eight.efficiency > eight.efficiency_no_overlap);
    }
}
