//! `tperf plan`: sizing questions answered from the schedule's own record.

use super::{find_hw, parse_bytes, parse_count, parse_positive, ScheduleArgs};
use crate::load;
use anyhow::{bail, Result};
use tperf_core::cost::analysis::{Scenario, Workload};
use tperf_core::cost::plan::{self, Sharding};
use tperf_core::presets;
use tperf_core::schedule::DataParallel;
use tperf_report::table::Table;
use tperf_report::units;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    #[command(subcommand)]
    pub command: PlanCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum PlanCommand {
    /// The largest model that trains on N GPUs of a kind (replicated, and sharded ZeRO-3/FSDP).
    Fit {
        #[arg(long, default_value = "h100-sxm")]
        hw: String,
        /// GPU counts to answer for.
        #[arg(long, default_value = "1,4", value_delimiter = ',', value_parser = parse_positive)]
        gpus: Vec<usize>,
        /// Micro-batch per GPU.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 2048)]
        seq: usize,
        #[command(flatten)]
        schedule: ScheduleArgs,
    },
    /// Time and GPU-hours to train a model on D tokens at a given MFU.
    Train {
        model: String,
        /// Training tokens: 3e11, 300B, 2T.
        #[arg(long, value_parser = parse_count)]
        tokens: f64,
        #[arg(long, default_value_t = 8)]
        gpus: usize,
        /// Model FLOPs utilisation to assume (0 < MFU ≤ 1).
        #[arg(long, default_value_t = 0.4)]
        mfu: f64,
        #[arg(long, default_value = "h100-sxm")]
        hw: String,
        #[arg(long)]
        batch: Option<usize>,
        #[arg(long)]
        seq: Option<usize>,
        #[command(flatten)]
        schedule: ScheduleArgs,
    },
    /// How many sequences of each context length a KV-cache budget holds.
    Kv {
        model: String,
        /// Memory for the cache: 40GiB, 512MiB.
        #[arg(long, value_parser = parse_bytes)]
        budget: u64,
        /// Context lengths to answer for.
        #[arg(long, default_value = "512,1024,2048,4096,8192,32768,131072", value_delimiter = ',', value_parser = parse_positive)]
        contexts: Vec<usize>,
        #[command(flatten)]
        schedule: ScheduleArgs,
    },
    /// A continuous-batching server's saturation throughput and its latency at request rates,
    /// from the prefill and decode roofline and the KV blocks that fit.
    Serve(Box<super::serve_bench::PlanServeArgs>),
    /// The ring all-reduce cost of data-parallel training across GPU counts, from the schedule's
    /// bucketed all-reduces and their overlap with the backward.
    Dp {
        model: String,
        #[arg(long, default_value = "2,4,8,16,64", value_delimiter = ',', value_parser = parse_positive)]
        gpus: Vec<usize>,
        #[arg(long, default_value = "h100-sxm")]
        hw: String,
        #[arg(long)]
        batch: Option<usize>,
        #[arg(long)]
        seq: Option<usize>,
        #[command(flatten)]
        schedule: ScheduleArgs,
    },
}

pub fn run(args: PlanArgs) -> Result<()> {
    match args.command {
        PlanCommand::Serve(a) => super::serve_bench::plan(*a),
        PlanCommand::Fit {
            hw,
            gpus,
            batch,
            seq,
            schedule,
        } => fit(&hw, &gpus, batch, seq, &schedule),
        PlanCommand::Train {
            model,
            tokens,
            gpus,
            mfu,
            hw,
            batch,
            seq,
            schedule,
        } => {
            if !(mfu > 0.0 && mfu <= 1.0) {
                bail!("--mfu {mfu} is not a fraction in (0, 1]: e.g. --mfu 0.4");
            }
            if gpus == 0 {
                bail!("--gpus must be at least 1");
            }
            // The largest training runs published are ~1e14 tokens; beyond 1e16 the answer is
            // a number nobody can use, and soon no number at all (inf hours).
            if tokens > MAX_TOKENS {
                bail!(
                    "--tokens {tokens:e} is more than {MAX_TOKENS:e} (the largest training runs use about 1e14 tokens): give a count such as 300B or 15T"
                );
            }
            let m = load::load(&model)?;
            let hw = find_hw(&hw)?;
            let (b, t) = (
                batch.unwrap_or(m.default_batch),
                seq.unwrap_or(m.default_seq),
            );
            let step = Scenario {
                workload: Workload::Train,
                batch: b,
                seq: t,
                opts: schedule.options(),
            };
            let r = plan::training_time(&m.config, &hw, &step, tokens, gpus, mfu)?;
            let mut tab = Table::new(&["quantity", "value"]).titled(format!(
                "Training {} on {} tokens with {gpus} × {} at {} MFU",
                m.config.name,
                units::si(tokens, ""),
                hw.key,
                units::percent(mfu)
            ));
            tab.row(vec![
                "FLOPs per token (schedule)".into(),
                units::si(r.flops_per_token, "FLOP"),
            ]);
            tab.row(vec![
                "6N per token".into(),
                units::si(6.0 * m.config.param_count() as f64, "FLOP"),
            ]);
            tab.row(vec![
                "total FLOPs".into(),
                units::si(r.flops_per_token * tokens, "FLOP"),
            ]);
            tab.row(vec!["wall-clock time".into(), units::seconds(r.seconds)]);
            tab.row(vec!["GPU-hours".into(), format!("{:.0}", r.gpu_hours)]);
            tab.note(format!(
                "peak {} of {} ({}), batch {b} × seq {t} per step",
                units::si(hw.peak_flops(schedule.dtype.compute_dtype()), "FLOP/s"),
                hw.key,
                schedule.dtype.name()
            ));
            print!("{}", tab.render());
            Ok(())
        }
        PlanCommand::Kv {
            model,
            budget,
            contexts,
            schedule,
        } => {
            let m = load::load(&model)?;
            let width = schedule.dtype.compute_dtype().size_bytes();
            let mut tab = Table::new(&[
                "context",
                "KV bytes / sequence",
                "max batch",
                "max tokens in cache",
            ])
            .titled(format!(
                "KV cache of {} ({} layers, {} KV heads × {}, {}) in {}",
                m.config.name,
                m.config.n_layers,
                m.config.n_kv_heads,
                m.config.head_dim,
                schedule.dtype.name(),
                units::bytes(budget)
            ));
            for r in plan::kv_budget(&m.config, width, budget, &contexts) {
                tab.row(vec![
                    r.context.to_string(),
                    units::bytes(r.bytes_per_sequence),
                    r.max_batch.to_string(),
                    units::thousands(r.max_batch * r.context as u64),
                ]);
            }
            tab.note("KV bytes = 2 (K and V) · layers · context · KV heads · head_dim · bytes per element");
            print!("{}", tab.render());
            Ok(())
        }
        PlanCommand::Dp {
            model,
            gpus,
            hw,
            batch,
            seq,
            schedule,
        } => {
            let m = load::load(&model)?;
            let hw = find_hw(&hw)?;
            let (b, t) = (
                batch.unwrap_or(m.default_batch),
                seq.unwrap_or(m.default_seq),
            );
            let mut tab = Table::new(&[
                "GPUs",
                "link bytes/GPU",
                "all-reduce",
                "step (1 GPU)",
                "efficiency, no overlap",
                "buckets",
                "exposed",
                "step, overlapped",
                "efficiency",
            ])
            .titled(format!(
                "Data-parallel {} on {}: ring all-reduce of {} of fp32 gradients per step",
                m.config.name,
                hw.key,
                units::bytes(m.config.param_count() * 4)
            ));
            for g in gpus {
                let r = plan::data_parallel_cost(&m.config, &hw, schedule.options(), b, t, g)?;
                tab.row(vec![
                    g.to_string(),
                    units::bytes(r.link_bytes_per_gpu),
                    units::seconds(r.seconds),
                    units::seconds(r.step_seconds),
                    units::percent(r.efficiency_no_overlap),
                    r.buckets.to_string(),
                    units::seconds(r.exposed_seconds),
                    units::seconds(r.step_seconds_overlapped),
                    units::percent(r.efficiency),
                ]);
            }
            tab.note(format!(
                "ring: each GPU sends 2(W−1)/W of the buffer at {} per direction",
                units::si(hw.link_bw_bytes_per_s, "B/s")
            ));
            tab.note(format!(
                "the schedule's own all-reduces (tperf model --gpus N): buckets of {} (the first {}) issued on a communication stream as the backward completes their gradients, last layer first; exposed = the part the rest of the backward does not hide",
                units::bytes(DataParallel::BUCKET_BYTES),
                units::bytes(DataParallel::FIRST_BUCKET_BYTES)
            ));
            print!("{}", tab.render());
            Ok(())
        }
    }
}

/// The most tokens `plan train` accepts.
const MAX_TOKENS: f64 = 1e16;

fn fit(hw: &str, gpus: &[usize], batch: usize, seq: usize, schedule: &ScheduleArgs) -> Result<()> {
    let hw = find_hw(hw)?;
    let mut candidates: Vec<_> = presets::all()
        .into_iter()
        .filter(|p| !p.key.starts_with("gpt2") && p.key != "report")
        .map(|p| p.config)
        .collect();
    candidates.extend(plan::size_ladder());
    candidates.sort_by_key(|c| c.param_count());
    let opts = schedule.options();
    let mut header = vec!["model".to_string(), "params".to_string()];
    let mut columns = vec![];
    for &g in gpus {
        columns.push((g, Sharding::Replicated));
        if g > 1 {
            columns.push((g, Sharding::Sharded));
        }
    }
    for (g, s) in &columns {
        header.push(match s {
            Sharding::Replicated if *g == 1 => "1 GPU".to_string(),
            Sharding::Replicated => format!("{g} GPUs, replicated"),
            Sharding::Sharded => format!("{g} GPUs, sharded"),
        });
    }
    let mut tab =
        Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>()).titled(format!(
            "Training memory per GPU on {} ({}), micro-batch {batch} × seq {seq}, {}, recompute {}",
            hw.key,
            units::bytes(hw.memory_bytes),
            schedule.dtype.name(),
            opts.recompute.name()
        ));
    let mut largest = vec![None; columns.len()];
    for cfg in &candidates {
        let mut row = vec![cfg.name.clone(), units::params(cfg.param_count())];
        for (i, &(g, s)) in columns.iter().enumerate() {
            let mut c = cfg.clone();
            c.context = c.context.max(seq);
            let peak = plan::training_peak_per_gpu(&c, opts, batch, seq, g, s)?;
            let fits = peak <= hw.memory_bytes;
            if fits {
                largest[i] = Some(cfg.name.clone());
            }
            row.push(format!(
                "{}{}",
                units::bytes(peak),
                if fits { "" } else { " ✗" }
            ));
        }
        tab.row(row);
    }
    for (i, (g, s)) in columns.iter().enumerate() {
        tab.note(format!(
            "largest that trains on {g} × {} ({}): {}",
            hw.key,
            match s {
                Sharding::Replicated => "replicated",
                Sharding::Sharded => "weights, gradients and AdamW state sharded",
            },
            largest[i].clone().unwrap_or_else(|| "none of these".into())
        ));
    }
    tab.note("✗ = does not fit; peaks come from the schedule's memory timeline (weights, gradients, AdamW state, activations)");
    print!("{}", tab.render());
    Ok(())
}
