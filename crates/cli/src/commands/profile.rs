//! `tperf profile`: where one step's time goes, op by op — measured on this machine beside the
//! model of the same op, rolled up by op kind (as nsys's stats do), by phase and by layer — with
//! a Chrome/Perfetto trace and the memory timeline of the step.

use super::resolve_device;
use super::{parse_positive, ScheduleArgs};
use crate::load;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use tperf_bench::kernels::{KernelRow, KernelTable};
use tperf_bench::profile::{self, Profile};
use tperf_bench::stats::Summary;
use tperf_core::cost::analysis::{Scenario, Workload};
use tperf_core::cost::memory;
use tperf_core::ops::{OpClass, Phase};
use tperf_core::tensor::MemCategory;
use tperf_report::table::Table;
use tperf_report::units;

#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    /// A preset or config.json.
    pub model: String,
    /// The step to profile: train, fwd_bwd, forward, prefill, decode.
    #[arg(long, default_value = "train", value_parser = parse_workload)]
    pub phase: Workload,
    #[arg(long, value_parser = parse_positive)]
    pub batch: Option<usize>,
    #[arg(long, value_parser = parse_positive)]
    pub seq: Option<usize>,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Profiled steps (each op's median over them is reported).
    #[arg(long, default_value_t = 3, value_parser = parse_positive)]
    pub steps: usize,
    /// cpu, cuda, cuda:N, or auto (the first GPU if there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// The hardware entry for the roofline (default: detected from the device); `measured:PATH`
    /// takes the ceilings `tperf hw measure` saved.
    #[arg(long)]
    pub hw: Option<String>,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Write the last step as a Chrome trace (open it in ui.perfetto.dev or chrome://tracing).
    #[arg(long)]
    pub trace: Option<std::path::PathBuf>,
    /// Show every op, not only block 0 and the ops outside the blocks.
    #[arg(long)]
    pub all_layers: bool,
    #[arg(long)]
    pub json: bool,
    /// Also count each op's FLOPs, DRAM and L2 bytes, occupancy and throughput with Nsight
    /// Compute (CUDA; `ncu` on the PATH or in TPERF_NCU): one more step, run eagerly after the
    /// warm-up in a child process under `ncu`, joined to the schedule's ops (docs/counters.md).
    #[arg(long)]
    pub counters: bool,
    /// Internal: the child that `--counters` runs under ncu (warm-up, then one eager step).
    #[arg(long, hide = true)]
    pub counted_step: bool,
    /// Predict each op with a calibration (`tperf calibrate`'s file): the "model" columns are
    /// then calibrated and "% roofline" stays the roofline's.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<std::path::PathBuf>,
}

fn parse_workload(s: &str) -> Result<Workload, tperf_core::error::UnknownName> {
    s.parse()
}

pub fn run(args: ProfileArgs) -> Result<()> {
    if args.counted_step {
        return run_counted_step(&args);
    }
    let device = resolve_device(&args.device)?;
    let hw = super::hardware_for(device, args.hw.as_deref())?;
    let calibration = super::load_calibration(args.calibration.as_deref(), &hw)?;
    let m = load::load(&args.model)?;
    let sc = Scenario {
        workload: args.phase,
        batch: args.batch.unwrap_or(m.default_batch),
        seq: args.seq.unwrap_or(m.default_seq),
        opts: args.schedule.options(),
    };
    let bar = ProgressBar::new((args.warmup + args.steps) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  profiling",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if let Some(path) = &args.trace {
        super::check_output_file(path, "--trace")?;
    }
    super::check_fits(device, &m.config, &sc)?;
    let mut p = profile::profile(device, &m.config, &sc, &hw, args.warmup, args.steps, |_| {
        bar.inc(1)
    })?;
    bar.finish_and_clear();
    if let Some(cal) = &calibration {
        // The same schedule, costed again with the curves: its rows join by index as before.
        p.analysis =
            tperf_core::cost::analysis::analyze_calibrated(&m.config, &sc, &hw, Some(cal))?;
    }
    if let Some(path) = &args.trace {
        let text = serde_json::to_string(&profile::chrome_trace(&p))?;
        write_atomically(path, &text)?;
        eprintln!(
            "wrote the trace of the last step to {} (open it in ui.perfetto.dev)",
            path.display()
        );
    }
    // The counted step runs after the profile's backend is gone, so the child has the GPU's
    // memory to itself.
    let counted = args
        .counters
        .then(|| super::counters::after_profile(device, &p.analysis, args.all_layers));
    if args.json {
        let counters = counted.as_ref().map(|(text, report)| match report {
            Some(r) => serde_json::to_value(r).unwrap_or_default(),
            None => serde_json::json!({ "not_collected": text.trim() }),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "provenance": super::model::provenance(),
                "profile": p,
                "counters": counters,
            }))?
        );
        return Ok(());
    }
    print!("{}", render(&m.config.name, &p, args.all_layers));
    if let Some((text, _)) = counted {
        println!();
        print!("{text}");
    }
    Ok(())
}

/// The child of `--counters`: nothing on stdout (ncu's CSV goes there), just the step.
fn run_counted_step(args: &ProfileArgs) -> Result<()> {
    let device = resolve_device(&args.device)?;
    let m = load::load(&args.model)?;
    let sc = Scenario {
        workload: args.phase,
        batch: args.batch.unwrap_or(m.default_batch),
        seq: args.seq.unwrap_or(m.default_seq),
        opts: args.schedule.options(),
    };
    super::check_fits(device, &m.config, &sc)?;
    profile::counted_step(device, &m.config, &sc, args.warmup)?;
    Ok(())
}

/// Write to a temporary name in the same folder, then rename: a reader never sees half a file.
pub fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp-tperf");
    std::fs::write(&tmp, text)
        .with_context(|| format!("cannot write {} (choose another path)", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Statistics over every instance of a group of ops across the profiled steps.
struct Group {
    instances: usize,
    samples: Vec<f64>,
    modelled: f64,
    median_sum: f64,
}

fn rollup<K: Ord>(p: &Profile, key: impl Fn(usize) -> K) -> BTreeMap<K, Group> {
    let mut out: BTreeMap<K, Group> = BTreeMap::new();
    for o in &p.ops {
        let g = out.entry(key(o.index)).or_insert(Group {
            instances: 0,
            samples: vec![],
            modelled: 0.0,
            median_sum: 0.0,
        });
        g.instances += 1;
        g.samples.extend(&o.seconds);
        g.modelled += p.analysis.rows[o.index].seconds;
        g.median_sum += o.median;
    }
    out
}

fn render(model: &str, p: &Profile, all_layers: bool) -> String {
    let a = &p.analysis;
    let sc = &a.scenario;
    let total: f64 = p.ops.iter().map(|o| o.median).sum();
    let mut out = format!(
        "tperf profile — {model}: {} · batch {} × seq {} · {} · {} attention, on {} ({} profiled steps)\n",
        sc.workload.name(), sc.batch, sc.seq, sc.opts.precision.name(), sc.opts.attention.name(), p.device, p.step_seconds.n
    );
    // The arithmetic peak of the step's compute dtype (a bf16 step's matmuls run at the bf16
    // peak, not the f32 one).
    let compute = sc.opts.precision.compute_dtype();
    out.push_str(&format!(
        "roofline: {} ({} ceilings: {} in {}, memory {})\n",
        a.hardware.name,
        a.hardware.basis.name(),
        units::si(a.hardware.peak_flops(compute), "FLOP/s"),
        compute.name(),
        units::si(a.hardware.mem_bw_bytes_per_s, "B/s"),
    ));
    match &a.calibration {
        Some(label) => out.push_str(&format!(
            "model columns: {label}; % roofline is against the roofline\n\n"
        )),
        None => out.push_str("model columns: the roofline\n\n"),
    }

    let us = |s: f64| format!("{:.1}", s * 1e6);
    let mut k = Table::new(&[
        "time %",
        "total µs",
        "instances",
        "avg µs",
        "med µs",
        "min µs",
        "max µs",
        "std µs",
        "model µs",
        "×model",
        "op",
    ])
    .titled("By op kind (per step; statistics over every instance in every profiled step)");
    let mut kinds: Vec<_> = rollup(p, |i| a.rows[i].name).into_iter().collect();
    kinds.sort_by(|x, y| y.1.median_sum.total_cmp(&x.1.median_sum));
    for (name, g) in kinds {
        let s = Summary::of(&g.samples).expect("every op has samples");
        k.row(vec![
            format!("{:.1}", 100.0 * g.median_sum / total),
            us(g.median_sum),
            g.instances.to_string(),
            us(s.mean),
            us(s.median),
            us(s.min),
            us(s.max),
            us(s.std),
            us(g.modelled),
            format!("{:.1}", g.median_sum / g.modelled),
            name.to_string(),
        ]);
    }
    out.push_str(&k.render());
    out.push('\n');

    let mut ph =
        Table::new(&["phase", "measured", "% time", "modelled", "×model"]).titled("By phase");
    for (phase, g) in rollup(p, |i| a.rows[i].phase) {
        ph.row(vec![
            phase.name().into(),
            units::seconds(g.median_sum),
            format!("{:.1}", 100.0 * g.median_sum / total),
            units::seconds(g.modelled),
            format!("{:.1}", g.median_sum / g.modelled),
        ]);
    }
    let matmul: f64 = p
        .ops
        .iter()
        .filter(|o| a.rows[o.index].class == OpClass::Matmul)
        .map(|o| o.median)
        .sum();
    ph.note(format!(
        "matrix-class ops (linear layers, attention products): {} of the measured time ({} modelled)",
        units::percent(matmul / total),
        units::percent(a.by_class.get(&OpClass::Matmul).map_or(0.0, |t| t.seconds) / a.total.seconds)
    ));
    out.push_str(&ph.render());
    out.push('\n');

    let mut ly = Table::new(&["where", "measured", "% time", "modelled"]).titled("By layer");
    for (layer, g) in rollup(p, |i| a.rows[i].layer) {
        if all_layers || layer.is_none_or(|l| l == 0) {
            ly.row(vec![
                layer.map_or("outside the blocks".into(), |l| format!("block {l}")),
                units::seconds(g.median_sum),
                format!("{:.1}", 100.0 * g.median_sum / total),
                units::seconds(g.modelled),
            ]);
        }
    }
    out.push_str(&ly.render());
    out.push('\n');

    let mut ops = Table::new(&[
        "#",
        "phase",
        "layer",
        "op",
        "label",
        "measured µs",
        "model µs",
        "×model",
        "GFLOP/s",
        "GB/s",
        "% roofline",
        "bound",
    ])
    .titled(if all_layers {
        "Per op (median over the profiled steps)"
    } else {
        "Per op (block 0 and the ops outside the blocks; --all-layers for all)"
    });
    for o in &p.ops {
        let r = &a.rows[o.index];
        if !(all_layers || r.layer.is_none_or(|l| l == 0)) {
            continue;
        }
        ops.row(vec![
            r.index.to_string(),
            r.phase.name().into(),
            r.layer.map_or("-".into(), |l| l.to_string()),
            r.name.into(),
            r.label.into(),
            us(o.median),
            us(r.seconds),
            format!("{:.1}", o.median / r.seconds),
            format!("{:.1}", r.flops as f64 / o.median / 1e9),
            format!("{:.1}", r.bytes as f64 / o.median / 1e9),
            roofline_cell(r.roofline_seconds, o.median),
            r.bound.name().into(),
        ]);
    }
    let above: Vec<&str> = p
        .ops
        .iter()
        .map(|o| &a.rows[o.index])
        .zip(&p.ops)
        .filter(|(r, o)| r.roofline_seconds > o.median)
        .map(|(r, _)| r.name)
        .collect();
    if !above.is_empty() {
        ops.note(above_roof_note(&above, &a.hardware));
    }
    out.push_str(&ops.render());
    out.push('\n');

    let mut t = Table::new(&["quantity", "value"]).titled("Totals");
    let last = &p.last_step;
    let rows: [(&str, String); 7] = [
        (
            "step wall time (median of the profiled steps)",
            units::seconds(p.step_seconds.median),
        ),
        (
            "sum of the ops' times (median)",
            units::seconds(p.op_sum_seconds.median),
        ),
        ("last step: wall time", units::seconds(last.step_seconds)),
        ("  = its ops", units::seconds(last.ops_seconds)),
        (
            "  + host work between ops (allocation, frees)",
            units::seconds(last.between_ops_seconds),
        ),
        (
            "  + before the first op and after the last (inputs)",
            units::seconds(last.outside_ops_seconds),
        ),
        (
            "timer overhead (per op × ops)",
            format!(
                "{} × {} = {}",
                units::seconds(p.timer_overhead_seconds),
                p.ops.len(),
                units::seconds(p.timer_overhead_seconds * p.ops.len() as f64)
            ),
        ),
    ];
    for (k, v) in rows {
        t.row(vec![k.to_string(), v]);
    }
    t.row(vec![
        "modelled step (roofline)".into(),
        units::seconds(a.roofline_step_seconds()),
    ]);
    if a.calibration.is_some() {
        t.row(vec![
            "modelled step (calibrated: ops + host overhead)".into(),
            format!(
                "{} (of which host {})",
                units::seconds(a.step_seconds()),
                units::seconds(a.overhead_seconds)
            ),
        ]);
    }
    let fwd = p.phase_seconds(Phase::Forward);
    t.row(vec![
        "forward ops / all ops".into(),
        units::percent(fwd / total),
    ]);
    out.push_str(&t.render());
    out.push('\n');

    if let Some(kt) = &p.kernels {
        let mut kt_table = Table::new(&["time %", "total µs", "calls", "avg µs", "kind", "kernel"])
            .titled(format!(
                "GPU kernels of the last step (CUPTI): {} launched, GPU busy {} of the step's {}, launch gaps median {} (total {}){}",
                kt.kernels_launched,
                units::percent(kt.busy_fraction),
                units::seconds(kt.step_wall_seconds),
                units::seconds(kt.launch_gap_median_seconds),
                units::seconds(kt.launch_gap_total_seconds),
                if kt.dropped > 0 { format!("; {} records dropped", kt.dropped) } else { String::new() }
            ));
        for r in kt
            .rows
            .iter()
            .take(if all_layers { usize::MAX } else { 25 })
        {
            kt_table.row(vec![
                format!("{:.1}", 100.0 * r.share),
                us(r.total_seconds),
                r.calls.to_string(),
                us(r.mean_seconds),
                r.kind.clone(),
                r.name.chars().take(90).collect(),
            ]);
        }
        out.push_str(&kt_table.render());
        out.push('\n');
        out.push_str(&op_kernels(p, kt, all_layers).render());
        out.push('\n');
    } else if let Some(why) = &p.kernel_trace_note {
        if p.device != "cpu" {
            out.push_str(&format!("no kernel table: {why}\n\n"));
        }
    }

    let timeline = memory::timeline(&p.memory_events);
    let forward_end = a
        .rows
        .iter()
        .position(|r| r.phase != Phase::Forward)
        .unwrap_or(a.rows.len());
    let peak_in = |upto: usize| {
        timeline
            .iter()
            .filter(|pt| pt.ops_before <= upto)
            .map(|pt| pt.total_bytes)
            .max()
            .unwrap_or(0)
    };
    let persistent: u64 = [
        MemCategory::Weights,
        MemCategory::Gradients,
        MemCategory::OptimizerState,
        MemCategory::KvCache,
    ]
    .iter()
    .map(|c| a.memory.at_peak.get(c).copied().unwrap_or(0))
    .sum();
    let mut mm = Table::new(&["quantity", "measured", "modelled"])
        .titled("Memory of the step (allocated within it, at dtype widths)");
    mm.row(vec![
        "peak during the forward".into(),
        units::bytes(peak_in(forward_end)),
        "".into(),
    ]);
    mm.row(vec![
        "peak of the whole step".into(),
        units::bytes(peak_in(usize::MAX)),
        units::bytes(a.memory.peak_bytes.saturating_sub(persistent)),
    ]);
    mm.note(format!(
        "plus {} held across steps (weights, gradients, AdamW state, KV cache)",
        units::bytes(persistent)
    ));
    out.push_str(&mm.render());
    out
}

/// "% roofline" of one op, marked † above 100% (the note under the table says why that can be).
fn roofline_cell(roofline_seconds: f64, measured_seconds: f64) -> String {
    let share = 100.0 * roofline_seconds / measured_seconds;
    if share > 100.0 {
        format!("{share:.1} †")
    } else {
        format!("{share:.1}")
    }
}

/// Why an op can run faster than its roofline, for the ops that did.
fn above_roof_note(names: &[&str], hw: &tperf_core::cost::hardware::Hardware) -> String {
    let mut kinds: Vec<&str> = names.to_vec();
    kinds.sort_unstable();
    kinds.dedup();
    let why = match hw.basis {
        tperf_core::cost::hardware::Basis::Measured => "the roofline counts every byte from memory at the measured bandwidth, so either these ops' operands were still in cache (faster than memory), or the ceilings were measured while the machine was busier than now (measure again: TPERF_CPU_CEILINGS=remeasure on the CPU, `tperf hw measure` on a GPU)",
        _ => "the roofline's ceilings are an estimate or a datasheet's, not what this machine reaches (measured ceilings: the default on the CPU, `tperf hw measure` on a GPU), or the operands were in cache, which the roofline's memory bandwidth does not count",
    };
    format!(
        "† {} op instances ran faster than their roofline ({}): {why}",
        names.len(),
        kinds.join(", ")
    )
}

/// Each op of the last step with the kernels, copies and fills it launched (CUPTI's records
/// joined to the op through the external correlation id the backend pushes around it), then what
/// ran outside every op.
fn op_kernels(p: &Profile, kt: &KernelTable, all_layers: bool) -> Table {
    let us = |s: f64| format!("{:.1}", s * 1e6);
    let mut t = Table::new(&["#", "op / kernel", "label", "op µs", "GPU µs", "calls", "kind"])
        .titled(if all_layers {
            "GPU kernels of each op, last step (CUPTI)"
        } else {
            "GPU kernels of each op, last step (CUPTI; block 0 and the ops outside the blocks; --all-layers for all)"
        });
    let kernel_rows = |t: &mut Table, rows: &[KernelRow]| {
        for k in rows {
            t.row(vec![
                String::new(),
                format!("  {}", k.name.chars().take(90).collect::<String>()),
                String::new(),
                String::new(),
                us(k.total_seconds),
                k.calls.to_string(),
                k.kind.clone(),
            ]);
        }
    };
    let median = |index: usize| p.ops.get(index).map_or(0.0, |o| o.median);
    for o in &kt.by_op {
        let Some(r) = p.analysis.rows.get(o.index) else {
            continue;
        };
        if !(all_layers || r.layer.is_none_or(|l| l == 0)) {
            continue;
        }
        t.row(vec![
            r.index.to_string(),
            r.name.into(),
            r.label.into(),
            us(median(o.index)),
            us(o.gpu_seconds),
            String::new(),
            String::new(),
        ]);
        kernel_rows(&mut t, &o.kernels);
    }
    if !kt.outside_ops.is_empty() {
        let outside: f64 = kt.outside_ops.iter().map(|k| k.total_seconds).sum();
        t.row(vec![
            "-".into(),
            "outside every op (fills of fresh tensors, input copies)".into(),
            String::new(),
            String::new(),
            us(outside),
            String::new(),
            String::new(),
        ]);
        kernel_rows(&mut t, &kt.outside_ops);
    }
    t.note("op µs: the op's time on CUDA events (median of the profiled steps); GPU µs: the summed execution of its kernels, copies and fills in the last step");
    if kt.by_op.is_empty() && !kt.rows.is_empty() {
        t.note("no kernel was attributed to an op: CUPTI gave no external correlation records");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use tperf_core::cost::hardware;
    use tperf_core::schedule::Options;

    fn row(name: &str, micros: f64) -> KernelRow {
        KernelRow {
            name: name.into(),
            kind: "kernel".into(),
            calls: 1,
            total_seconds: micros * 1e-6,
            mean_seconds: micros * 1e-6,
            share: 1.0,
        }
    }

    /// The per-op kernel table lists each op's kernels under it, by the op's schedule index,
    /// then what ran outside every op. The kernels are made up; the profile is a real CPU one.
    #[test]
    fn kernels_are_listed_under_the_op_that_launched_them() {
        let mut cfg = tperf_core::presets::find("small").unwrap().config;
        cfg.vocab_size = 61;
        cfg.n_layers = 1;
        cfg.d_model = 32;
        cfg.d_ff = 64;
        let cfg = cfg.with_heads(4, 2).unwrap();
        let sc = Scenario {
            workload: Workload::Forward,
            batch: 1,
            seq: 4,
            opts: Options::default(),
        };
        let hw = hardware::detect_local_cpu();
        let mut p = profile::profile_cpu(&cfg, &sc, &hw, 0, 1, |_| {}).unwrap();
        let (first, second) = (&p.analysis.rows[0], &p.analysis.rows[1]);
        let (first_name, second_name) = (first.name, second.name);
        p.kernels = Some(KernelTable {
            rows: vec![],
            kernels_launched: 3,
            busy_fraction: 0.5,
            step_wall_seconds: 1e-3,
            launch_gap_median_seconds: 0.0,
            launch_gap_total_seconds: 0.0,
            dropped: 0,
            by_op: vec![
                tperf_bench::kernels::OpKernelRows {
                    index: 0,
                    kernels: vec![row("embedding_forward", 12.0)],
                    gpu_seconds: 12e-6,
                },
                tperf_bench::kernels::OpKernelRows {
                    index: 1,
                    kernels: vec![row("gemm_a", 30.0), row("gemm_reduce", 5.0)],
                    gpu_seconds: 35e-6,
                },
            ],
            outside_ops: vec![row("memset", 1.0)],
        });
        let text = render("tiny", &p, true);
        let table = &text[text
            .find("GPU kernels of each op")
            .expect("the per-op kernel table")..];
        let lines: Vec<&str> = table.lines().collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in\n{table}"))
        };
        let op_line = |index: &str, name: &str| {
            lines
                .iter()
                .position(|l| l.split_whitespace().take(2).eq([index, name]))
                .unwrap_or_else(|| panic!("op {index} {name} in\n{table}"))
        };
        // Op 0, then its kernel; op 1, then its two; then the fill outside every op.
        let op0 = op_line("0", first_name);
        assert_eq!(at("  embedding_forward"), op0 + 1);
        let op1 = op_line("1", second_name);
        assert!(op1 > op0 + 1);
        assert_eq!(at("  gemm_a"), op1 + 1);
        assert_eq!(at("  gemm_reduce"), op1 + 2);
        assert!(lines[op1].contains("35.0"), "{}", lines[op1]);
        assert!(at("outside every op") > op1 + 2);
        assert!(at("  memset") > at("outside every op"));
    }
}
