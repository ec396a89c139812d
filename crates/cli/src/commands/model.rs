//! `tperf model`: the analytic model of one scenario, printed or as data.

use super::{find_hw, ScheduleArgs};
use crate::load;
use anyhow::{bail, Result};
use serde_json::json;
use tperf_core::cost::analysis::{self, Analysis, OpRow, Scenario, Workload};
use tperf_core::cost::{memory, plan};
use tperf_core::meta::MetaBackend;
use tperf_core::ops::{Op, OpClass, Phase};
use tperf_core::presets;
use tperf_core::schedule::DataParallel;
use tperf_core::tensor::MemCategory;
use tperf_report::results::TimelinePoint;
use tperf_report::table::Table;
use tperf_report::units;

#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// A preset (small, medium, large, xl, 2.7B, 10B, gpt2-124m … gpt2-1.5b, report) or a
    /// config.json (Hugging Face llama/mistral/qwen2/gpt2, or tperf's own).
    pub model: Option<String>,
    /// List the presets and exit.
    #[arg(long)]
    pub list: bool,
    /// Sequences per step (default: the preset's).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens per sequence; for decode, the context length including the new token.
    #[arg(long)]
    pub seq: Option<usize>,
    /// What a step does: train (forward, backward, AdamW), fwd_bwd, forward, prefill or decode.
    #[arg(long, default_value = "train", value_parser = parse_workload)]
    pub phase: Workload,
    /// Hardware to predict for (see `tperf hw list`); "cpu" is this machine; `measured:PATH` an
    /// entry saved by `tperf hw measure`.
    #[arg(long, default_value = "h100-sxm")]
    pub hw: String,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Data-parallel training over N GPUs: the schedule issues bucketed gradient all-reduces on
    /// a communication stream that overlap the backward (DDP); shows the collectives, the
    /// exposed communication and memory per GPU under DDP and ZeRO-1.
    #[arg(long, default_value_t = 1, value_parser = super::parse_positive)]
    pub gpus: usize,
    /// With --gpus: ZeRO-1 (gradients reduce-scattered, AdamW state sharded 1/N, weights
    /// all-gathered) instead of DDP.
    #[arg(long)]
    pub zero1: bool,
    /// Show every layer's ops, not just the first block's.
    #[arg(long)]
    pub all_layers: bool,
    /// Print the analysis as JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print the per-op table as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Predict each op's time with a calibration (`tperf calibrate`'s file) instead of the
    /// roofline; the roofline stays beside it.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<std::path::PathBuf>,
}

fn parse_workload(s: &str) -> Result<Workload, tperf_core::error::UnknownName> {
    s.parse()
}

pub const CONVENTIONS: [&str; 5] = [
    "FLOP = one add or one multiply; matmul (m×k)(k×n) = 2mkn; transcendentals count 1",
    "causal attention counts the unmasked (query, key) pairs, diagonal included (not the full T²)",
    "bytes = minimum traffic: each input read once, each output written once",
    "roofline time = max(FLOPs / peak, bytes / bandwidth); matrix ops at the dtype's matrix peak, others at the fp32 vector peak",
    "MFU = model FLOPs (recomputation excluded) / (time × matrix peak of the compute dtype)",
];

pub fn run(args: ModelArgs) -> Result<()> {
    if args.list {
        let mut t = Table::new(&["preset", "params", "description"]);
        for p in presets::all() {
            t.row(vec![
                p.key.to_string(),
                units::params(p.config.param_count()),
                p.description.to_string(),
            ]);
        }
        print!("{}", t.render());
        return Ok(());
    }
    let Some(spec) = args.model.as_deref() else {
        bail!("name a model: a preset (see `tperf model --list`) or a config.json path");
    };
    let loaded = load::load(spec)?;
    let hw = find_hw(&args.hw)?;
    let calibration = super::load_calibration(args.calibration.as_deref(), &hw)?;
    let mut opts = args.schedule.options();
    if args.gpus > 1 {
        if !args.phase.trains() {
            bail!("--gpus models data-parallel training: use --phase train or fwd_bwd");
        }
        opts.data_parallel = Some(if args.zero1 {
            DataParallel::zero1(args.gpus)
        } else {
            DataParallel::ddp(args.gpus)
        });
    } else if args.zero1 {
        bail!("--zero1 shards across GPUs: give --gpus N with N > 1");
    }
    let sc = Scenario {
        workload: args.phase,
        batch: args.batch.unwrap_or(loaded.default_batch),
        seq: args.seq.unwrap_or(loaded.default_seq),
        opts,
    };
    if args.json {
        let (a, timeline) =
            analyze_with_timeline_calibrated(&loaded.config, &sc, &hw, calibration.as_ref())?;
        let mut v = to_json(&loaded.config, &a, &timeline);
        if let (Some(dp), Some(obj)) = (opts.dp(), v.as_object_mut()) {
            obj.insert(
                "data_parallel".into(),
                data_parallel_json(&loaded.config, &a, dp)?,
            );
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let record = analysis::record(&loaded.config, &sc)?;
    let a = analysis::analyze_record_calibrated(
        &loaded.config,
        &sc,
        &hw,
        &record,
        calibration.as_ref(),
    );
    if args.csv {
        print!("{}", op_table(&a, true, false).to_csv());
    } else {
        print!("{}", render(&loaded, &a, args.all_layers)?);
        if let Some(dp) = opts.dp() {
            print!(
                "\n{}",
                data_parallel_section(&loaded.config, &a, &record, dp)?
            );
        }
    }
    Ok(())
}

/// One collective of the record: its buffer (elements × width) beside its ring link bytes.
struct CollectiveRow<'a> {
    row: &'a OpRow,
    buffer_bytes: u64,
}

fn collective_rows<'a>(a: &'a Analysis, record: &MetaBackend) -> Vec<CollectiveRow<'a>> {
    record
        .ops
        .iter()
        .zip(&a.rows)
        .filter_map(|(rec, row)| match &rec.call.op {
            Op::Collective(c) => Some(CollectiveRow {
                row,
                buffer_bytes: c.numel * c.width_bytes,
            }),
            _ => None,
        })
        .collect()
}

/// Memory per GPU of the same step under DDP and ZeRO-1 over `dp.world` GPUs.
fn memory_per_gpu(
    cfg: &tperf_core::config::ModelConfig,
    a: &Analysis,
    dp: DataParallel,
) -> Result<Vec<(&'static str, memory::MemorySummary)>> {
    [("DDP", false), ("ZeRO-1", true)]
        .into_iter()
        .map(|(name, zero1)| {
            let sc = Scenario {
                opts: tperf_core::schedule::Options {
                    data_parallel: Some(DataParallel { zero1, ..dp }),
                    ..a.scenario.opts
                },
                ..a.scenario
            };
            let rec = analysis::record(cfg, &sc)?;
            Ok((name, memory::summarize(rec.mem_events())))
        })
        .collect()
}

fn data_parallel_section(
    cfg: &tperf_core::config::ModelConfig,
    a: &Analysis,
    record: &MetaBackend,
    dp: DataParallel,
) -> Result<String> {
    let t = &a.timing;
    let mut c = Table::new(&[
        "#",
        "phase",
        "layer",
        "op",
        "label",
        "buffer",
        "link bytes",
        "µs",
        "starts µs",
        "ends µs",
    ])
    .titled(format!(
        "Collectives per GPU ({} over {} GPUs, ring, on the communication stream)",
        if dp.zero1 { "ZeRO-1" } else { "DDP" },
        dp.world
    ));
    for cr in collective_rows(a, record) {
        let r = cr.row;
        let start = t.start_seconds[r.index];
        c.row(vec![
            r.index.to_string(),
            r.phase.name().to_string(),
            layer_cell(r.layer),
            r.name.to_string(),
            r.label.to_string(),
            units::bytes(cr.buffer_bytes),
            units::bytes(r.bytes),
            us_cell(r.seconds),
            us_cell(start),
            us_cell(start + r.seconds),
        ]);
    }
    c.note(format!(
        "gradient buckets of {} (the first {}) close in the order the backward completes them; each waits on the op that completed its last gradient, the optimizer on every bucket",
        units::bytes(dp.bucket_bytes),
        units::bytes(dp.first_bucket_bytes)
    ));
    c.note(format!(
        "link bytes: all-reduce 2(W−1)/W, reduce-scatter and all-gather (W−1)/W of the buffer, at {}",
        units::si(a.hardware.link_bw_bytes_per_s, "B/s")
    ));
    let mut s = Table::new(&["quantity", "value"])
        .titled("Data-parallel step (critical path over streams)");
    s.row(vec![
        "compute stream".into(),
        units::seconds(t.compute_seconds),
    ]);
    s.row(vec![
        "communication stream".into(),
        units::seconds(t.comm_seconds),
    ]);
    s.row(vec![
        "exposed communication".into(),
        units::seconds(t.exposed_comm_seconds),
    ]);
    s.row(vec!["step time".into(), units::seconds(a.step_seconds())]);
    s.row(vec![
        "scaling efficiency".into(),
        units::percent(t.compute_seconds / a.step_seconds()),
    ]);
    s.row(vec![
        format!("tokens/s over {} GPUs", dp.world),
        format!("{:.0}", a.tokens_per_second() * dp.world as f64),
    ]);
    s.note("exposed = step − compute stream: the communication the rest of the backward does not hide (NCCL's use of SMs and memory bandwidth is not modelled)");
    let mut m = Table::new(&[
        "per GPU",
        "weights",
        "gradients",
        "optimizer state",
        "peak",
        "fits",
    ])
    .titled(format!("Memory per GPU over {} GPUs", dp.world));
    for (name, summary) in memory_per_gpu(cfg, a, dp)? {
        let get = |cat| summary.max_by_category.get(&cat).copied().unwrap_or(0);
        m.row(vec![
            name.to_string(),
            units::bytes(get(MemCategory::Weights)),
            units::bytes(get(MemCategory::Gradients)),
            units::bytes(get(MemCategory::OptimizerState)),
            units::bytes(summary.peak_bytes),
            if summary.peak_bytes <= a.hardware.memory_bytes {
                "yes"
            } else {
                "no"
            }
            .into(),
        ]);
    }
    m.note("ZeRO-1 holds AdamW's moments for a 1/W shard of every parameter; weights and gradients stay replicated");
    Ok(format!("{}\n{}\n{}", c.render(), s.render(), m.render()))
}

fn data_parallel_json(
    cfg: &tperf_core::config::ModelConfig,
    a: &Analysis,
    dp: DataParallel,
) -> Result<serde_json::Value> {
    let record = analysis::record(cfg, &a.scenario)?;
    let collectives: Vec<_> = collective_rows(a, &record)
        .iter()
        .map(|cr| {
            json!({
                "index": cr.row.index,
                "op": cr.row.name,
                "label": cr.row.label,
                "layer": cr.row.layer,
                "phase": cr.row.phase,
                "buffer_bytes": cr.buffer_bytes,
                "link_bytes": cr.row.bytes,
                "seconds": cr.row.seconds,
                "start_seconds": a.timing.start_seconds[cr.row.index],
            })
        })
        .collect();
    let memory: serde_json::Map<_, _> = memory_per_gpu(cfg, a, dp)?
        .into_iter()
        .map(|(name, m)| (name.to_ascii_lowercase().replace('-', ""), json!(m)))
        .collect();
    Ok(json!({
        "setting": dp,
        "compute_seconds": a.timing.compute_seconds,
        "comm_seconds": a.timing.comm_seconds,
        "exposed_comm_seconds": a.timing.exposed_comm_seconds,
        "step_seconds": a.step_seconds(),
        "collectives": collectives,
        "memory_per_gpu": memory,
    }))
}

pub fn provenance() -> serde_json::Value {
    json!({
        "tperf_version": env!("CARGO_PKG_VERSION"),
        "git_revision": env!("TPERF_GIT_REV"),
        "date_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

/// The analysis and its memory timeline thinned to one point per op index: the highest total
/// reached between the previous op and this one, so that a transient peak (an output allocated
/// before its inputs are freed) survives. A step has a few allocations per op; the thinning keeps
/// the JSON and the plot proportional to the ops.
pub fn analyze_with_timeline(
    cfg: &tperf_core::config::ModelConfig,
    sc: &Scenario,
    hw: &tperf_core::cost::hardware::Hardware,
) -> Result<(Analysis, Vec<TimelinePoint>)> {
    analyze_with_timeline_calibrated(cfg, sc, hw, None)
}

/// As [`analyze_with_timeline`], the op times from `calibration` where one is given.
pub fn analyze_with_timeline_calibrated(
    cfg: &tperf_core::config::ModelConfig,
    sc: &Scenario,
    hw: &tperf_core::cost::hardware::Hardware,
    calibration: Option<&tperf_core::cost::calibration::Calibration>,
) -> Result<(Analysis, Vec<TimelinePoint>)> {
    let record = analysis::record(cfg, sc)?;
    let a = analysis::analyze_record_calibrated(cfg, sc, hw, &record, calibration);
    let mut thinned: Vec<TimelinePoint> = Vec::new();
    for p in memory::timeline(record.mem_events()) {
        let point = TimelinePoint {
            op: p.ops_before,
            total_bytes: p.total_bytes,
            by_category: p
                .by_category
                .iter()
                .map(|(c, &b)| (c.name().to_string(), b))
                .collect(),
        };
        match thinned.last_mut() {
            Some(last) if last.op == point.op => {
                if point.total_bytes > last.total_bytes {
                    *last = point;
                }
            }
            _ => thinned.push(point),
        }
    }
    Ok((a, thinned))
}

/// The analysis as data; the field names are a stable interface for scripts.
pub fn to_json(
    cfg: &tperf_core::config::ModelConfig,
    a: &Analysis,
    timeline: &[TimelinePoint],
) -> serde_json::Value {
    let cat = |m: &std::collections::BTreeMap<MemCategory, u64>| {
        m.iter()
            .map(|(c, b)| (c.name().to_string(), json!(b)))
            .collect::<serde_json::Map<_, _>>()
    };
    let phase = |p| a.phase_flops(p);
    json!({
        "provenance": provenance(),
        "conventions": CONVENTIONS,
        "model": a.model,
        "config": cfg,
        "scenario": a.scenario,
        "hardware": a.hardware,
        "params": {
            "total": a.params,
            "by_component": cfg.param_breakdown().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "flops": {
            "forward": phase(Phase::Forward),
            "backward": phase(Phase::Backward),
            "recompute": phase(Phase::Recompute),
            "optimizer": phase(Phase::Optimizer),
            "total": a.total.flops,
            "per_token": a.total.flops as f64 / a.tokens_per_step as f64,
        },
        "bytes": { "total": a.total.bytes },
        "memory": {
            "peak_bytes": a.memory.peak_bytes,
            "peak_at_op": a.memory.peak_at_op,
            "at_peak": cat(&a.memory.at_peak),
            "max_by_category": cat(&a.memory.max_by_category),
            "capacity_bytes": a.hardware.memory_bytes,
            "fits": a.fits(),
            "weights": a.memory.at_peak.get(&MemCategory::Weights).copied().unwrap_or(0),
            "gradients": a.memory.at_peak.get(&MemCategory::Gradients).copied().unwrap_or(0),
            "optimizer_state": a.memory.at_peak.get(&MemCategory::OptimizerState).copied().unwrap_or(0),
            "activations": a.memory.at_peak.get(&MemCategory::Activations).copied().unwrap_or(0),
            "kv_cache": a.memory.at_peak.get(&MemCategory::KvCache).copied().unwrap_or(0),
            "timeline": timeline,
        },
        "predicted": {
            "step_seconds": a.step_seconds(),
            "tokens_per_step": a.tokens_per_step,
            "tokens_per_second": a.tokens_per_second(),
            "mfu": a.mfu,
        },
        "by_op": a.by_name,
        "by_phase": a.by_phase.iter().map(|(p, t)| (p.name().to_string(), json!(t))).collect::<serde_json::Map<_, _>>(),
        "ops": a.rows,
    })
}

fn flops_cell(f: u64) -> String {
    format!("{:.3}", f as f64 / 1e9)
}

fn mib_cell(b: u64) -> String {
    format!("{:.2}", b as f64 / (1u64 << 20) as f64)
}

fn us_cell(s: f64) -> String {
    format!("{:.2}", s * 1e6)
}

fn layer_cell(l: Option<usize>) -> String {
    l.map_or("-".to_string(), |l| l.to_string())
}

/// The per-op table: the first block in detail plus everything outside the blocks, or every op.
pub fn op_table(a: &Analysis, all_layers: bool, title: bool) -> Table {
    let mut t = Table::new(&[
        "#", "phase", "layer", "op", "label", "dtype", "GFLOP", "MiB", "FLOP/B", "bound", "µs",
        "% time", "dims",
    ]);
    if title {
        t.title = Some(if all_layers {
            "Per-op model (every op)".to_string()
        } else {
            "Per-op model (block 0 in detail; blocks 1.. repeat it; all ops with --all-layers)"
                .to_string()
        });
    }
    let shown = |r: &&OpRow| all_layers || r.layer.is_none_or(|l| l == 0);
    for r in a.rows.iter().filter(shown) {
        t.row(vec![
            r.index.to_string(),
            r.phase.name().to_string(),
            layer_cell(r.layer),
            r.name.to_string(),
            r.label.to_string(),
            r.dtype.to_string(),
            flops_cell(r.flops),
            mib_cell(r.bytes),
            format!("{:.1}", r.intensity),
            r.bound.name().to_string(),
            us_cell(r.seconds),
            format!("{:.2}", 100.0 * r.seconds / a.total.seconds),
            r.dims.clone(),
        ]);
    }
    t
}

fn render(loaded: &load::LoadedModel, a: &Analysis, all_layers: bool) -> Result<String> {
    let cfg = &loaded.config;
    let sc = &a.scenario;
    let o = &sc.opts;
    let mut out = String::new();
    out.push_str(&format!(
        "tperf model — {} ({}): {} parameters\n",
        cfg.name,
        loaded.description,
        units::thousands(a.params)
    ));
    out.push_str(&format!(
        "{} · batch {} × seq {} · {} · {} attention · recompute {} · {} · on {} ({}, {} ceilings)\n",
        sc.workload.name(),
        sc.batch,
        sc.seq,
        o.precision.name(),
        o.attention.name(),
        o.recompute.name(),
        if o.fused { "fused" } else { "unfused" },
        a.hardware.name,
        a.hardware.key,
        a.hardware.basis.name(),
    ));
    if let Some(label) = &a.calibration {
        out.push_str(&format!(
            "op times: {label} (the roofline's beside them; {} ops uncalibrated)\n",
            a.uncalibrated_ops
        ));
    }
    out.push_str("conventions:\n");
    for c in CONVENTIONS {
        out.push_str(&format!("  · {c}\n"));
    }
    out.push('\n');

    let mut p = Table::new(&["component", "params", "share"]).titled("Parameters");
    for (name, n) in cfg.param_breakdown() {
        p.row(vec![
            name.to_string(),
            units::thousands(n),
            units::percent(n as f64 / a.params as f64),
        ]);
    }
    p.row(vec![
        "total".into(),
        units::thousands(a.params),
        "100.0%".into(),
    ]);
    out.push_str(&p.render());
    out.push('\n');

    let dtype = sc.opts.precision.compute_dtype();
    out.push_str(&format!(
        "{}: ridge point {:.0} FLOP/B for {} matrix ops, {:.0} FLOP/B for vector ops; an op below it is memory-bound\n",
        a.hardware.key,
        a.hardware.ridge_point(dtype),
        dtype,
        a.hardware.ridge_point(tperf_core::dtype::DType::F32),
    ));
    out.push_str(&op_table(a, all_layers, true).render());
    out.push('\n');

    let mut k =
        Table::new(&["op", "calls", "GFLOP", "GiB moved", "time", "% time"]).titled("By op kind");
    let mut kinds: Vec<_> = a.by_name.iter().collect();
    kinds.sort_by(|x, y| y.1.seconds.total_cmp(&x.1.seconds));
    for (name, t) in kinds {
        k.row(vec![
            name.to_string(),
            t.count.to_string(),
            flops_cell(t.flops),
            format!("{:.3}", t.bytes as f64 / (1u64 << 30) as f64),
            units::seconds(t.seconds),
            format!("{:.1}", 100.0 * t.seconds / a.total.seconds),
        ]);
    }
    out.push_str(&k.render());
    out.push('\n');

    let mut ph =
        Table::new(&["phase", "ops", "FLOPs", "bytes", "time", "% time"]).titled("By phase");
    for (phase, t) in &a.by_phase {
        ph.row(vec![
            phase.name().to_string(),
            t.count.to_string(),
            units::si(t.flops as f64, "FLOP"),
            units::bytes(t.bytes),
            units::seconds(t.seconds),
            format!("{:.1}", 100.0 * t.seconds / a.total.seconds),
        ]);
    }
    let matmul_share =
        a.by_class.get(&OpClass::Matmul).map_or(0.0, |t| t.seconds) / a.total.seconds;
    ph.note(format!(
        "matrix-class ops (linear layers and attention products): {} of the predicted time",
        units::percent(matmul_share)
    ));
    out.push_str(&ph.render());
    out.push('\n');

    out.push_str(&layer_table(a, all_layers).render());
    out.push('\n');

    out.push_str(&memory_section(a));
    out.push('\n');
    out.push_str(&prediction_section(cfg, a)?);
    Ok(out)
}

/// By layer: every block with --all-layers; otherwise what lies outside the blocks, one block,
/// and all blocks together.
fn layer_table(a: &Analysis, all_layers: bool) -> Table {
    let mut t =
        Table::new(&["where", "ops", "FLOPs", "bytes", "time", "% time"]).titled("By layer");
    let row = |t: &mut Table, name: String, x: &tperf_core::cost::analysis::Totals| {
        t.row(vec![
            name,
            x.count.to_string(),
            units::si(x.flops as f64, "FLOP"),
            units::bytes(x.bytes),
            units::seconds(x.seconds),
            format!("{:.1}", 100.0 * x.seconds / a.total.seconds),
        ]);
    };
    if let Some(outside) = a.by_layer.get(&None) {
        row(&mut t, "outside the blocks".into(), outside);
    }
    let blocks: Vec<_> = a
        .by_layer
        .iter()
        .filter_map(|(l, x)| l.map(|l| (l, x)))
        .collect();
    if all_layers {
        for (l, x) in &blocks {
            row(&mut t, format!("block {l}"), x);
        }
    } else if let Some((_, first)) = blocks.first() {
        row(&mut t, "block 0".into(), first);
    }
    let mut all = tperf_core::cost::analysis::Totals::default();
    for (_, x) in &blocks {
        all.count += x.count;
        all.flops += x.flops;
        all.bytes += x.bytes;
        all.seconds += x.seconds;
    }
    row(&mut t, format!("all {} blocks", blocks.len()), &all);
    t
}

/// What could still make a step fit: only the options that are not already on.
pub fn fit_hint(sc: &tperf_core::cost::analysis::Scenario) -> String {
    use tperf_core::schedule::{AttentionKernel, Precision, Recompute};
    let mut left = Vec::new();
    if sc.batch > 1 {
        left.push("a smaller --batch".to_string());
    }
    if sc.seq > 1 {
        left.push("a smaller --seq".to_string());
    }
    if sc.opts.attention != AttentionKernel::Flash {
        left.push("--attention flash".to_string());
    }
    match sc.opts.recompute {
        Recompute::None => left.push("--recompute selective|full".to_string()),
        Recompute::Selective => left.push("--recompute full".to_string()),
        Recompute::Full => {}
    }
    if sc.opts.precision == Precision::Fp32 {
        left.push("--dtype bf16".to_string());
    }
    let more = "sharding over GPUs (--gpus N --zero1), or a GPU with more memory";
    if left.is_empty() {
        format!("to fit: every single-GPU option is already on; {more}")
    } else {
        format!("to fit: {}; else {more}", left.join(", "))
    }
}

fn memory_section(a: &Analysis) -> String {
    let at = a
        .rows
        .get(a.memory.peak_at_op.min(a.rows.len().saturating_sub(1)));
    let where_ = at.map_or(String::new(), |r| {
        format!(
            " (reached before op #{}: {} {} layer {})",
            r.index,
            r.phase.name(),
            r.label,
            layer_cell(r.layer)
        )
    });
    let mut m = Table::new(&["category", "at peak", "largest"]).titled(format!(
        "Memory: peak {}{where_}",
        units::bytes(a.memory.peak_bytes)
    ));
    for c in MemCategory::ALL {
        let at_peak = a.memory.at_peak.get(&c).copied().unwrap_or(0);
        let max = a.memory.max_by_category.get(&c).copied().unwrap_or(0);
        if max > 0 {
            m.row(vec![
                c.name().to_string(),
                units::bytes(at_peak),
                units::bytes(max),
            ]);
        }
    }
    let cap = a.hardware.memory_bytes;
    m.note(format!(
        "{} on {} ({}): {} of its memory",
        if a.fits() { "fits" } else { "DOES NOT FIT" },
        a.hardware.key,
        units::bytes(cap),
        units::percent(a.memory.peak_bytes as f64 / cap as f64)
    ));
    if !a.fits() {
        m.note(fit_hint(&a.scenario));
    }
    m.render()
}

fn prediction_section(cfg: &tperf_core::config::ModelConfig, a: &Analysis) -> Result<String> {
    let sc = &a.scenario;
    let peak = a.hardware.peak_flops(sc.opts.precision.compute_dtype());
    let mut t = Table::new(&["quantity", "value"]).titled(if a.calibration.is_some() {
        "Step prediction (calibrated)"
    } else {
        "Step prediction (roofline)"
    });
    t.row(vec!["step time".into(), units::seconds(a.step_seconds())]);
    if a.calibration.is_some() {
        t.row(vec![
            "  of which host overhead (calibrated)".into(),
            units::seconds(a.overhead_seconds),
        ]);
        t.row(vec![
            "step time at the roofline".into(),
            units::seconds(a.roofline_step_seconds()),
        ]);
    }
    let per_token = a.total.flops as f64 / a.tokens_per_step as f64;
    match sc.workload {
        Workload::Train | Workload::FwdBwd | Workload::Forward => {
            t.row(vec![
                "tokens/s".into(),
                format!("{:.0}", a.tokens_per_second()),
            ]);
            t.row(vec!["FLOPs per token".into(), units::si(per_token, "FLOP")]);
            let n = cfg.param_count() as f64;
            let k = if sc.workload.trains() { 6.0 } else { 2.0 };
            t.row(vec![
                format!("{k}N per token (N = all params)"),
                units::si(k * n, "FLOP"),
            ]);
        }
        Workload::Prefill => {
            t.row(vec![
                "time to first token".into(),
                units::seconds(a.step_seconds()),
            ]);
            t.row(vec![
                "prompt tokens/s".into(),
                format!("{:.0}", a.tokens_per_second()),
            ]);
        }
        Workload::Decode => {
            t.row(vec![
                "time per output token".into(),
                units::seconds(a.step_seconds()),
            ]);
            t.row(vec![
                "tokens/s (whole batch)".into(),
                format!("{:.0}", a.tokens_per_second()),
            ]);
        }
    }
    t.row(vec![
        "MFU".into(),
        format!("{} of {}", units::percent(a.mfu), units::si(peak, "FLOP/s")),
    ]);
    let mut out = t.render();
    if matches!(sc.workload, Workload::Decode | Workload::Prefill) {
        out.push('\n');
        out.push_str(&decode_sweep_table(cfg, a)?.render());
    }
    Ok(out)
}

/// Decode across batch sizes at this context: where the linear layers turn compute-bound.
pub fn decode_sweep_table(cfg: &tperf_core::config::ModelConfig, a: &Analysis) -> Result<Table> {
    let sc = &a.scenario;
    let batches: Vec<usize> = (0..13).map(|i| 1usize << i).collect();
    let points = plan::decode_sweep(cfg, &a.hardware, sc.opts, sc.seq, &batches)?;
    let mut t = Table::new(&[
        "batch",
        "ms/token",
        "tokens/s",
        "linear layers",
        "whole step",
        "peak memory",
        "fits",
    ])
    .titled(format!("Decode at context {} across batch sizes", sc.seq));
    let mut crossover = None;
    for p in &points {
        if crossover.is_none() && p.linear_compute_bound() {
            crossover = Some(p.batch);
        }
        t.row(vec![
            p.batch.to_string(),
            format!("{:.3}", p.step_seconds * 1e3),
            format!("{:.0}", p.tokens_per_second),
            if p.linear_compute_bound() {
                "compute-bound"
            } else {
                "memory-bound"
            }
            .into(),
            if p.compute_bound() {
                "compute-bound"
            } else {
                "memory-bound"
            }
            .into(),
            units::bytes(p.peak_bytes),
            if p.fits { "yes" } else { "no" }.into(),
        ]);
    }
    t.note(match crossover {
        Some(b) => format!("the linear layers turn compute-bound at batch {b} (ridge point {:.0} FLOP/B); attention reads each sequence's KV cache and stays memory-bound", a.hardware.ridge_point(sc.opts.precision.compute_dtype())),
        None => "the linear layers stay memory-bound up to batch 4096 at this precision".to_string(),
    });
    Ok(t)
}
