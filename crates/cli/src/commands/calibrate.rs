//! `tperf calibrate`: fit the model to this machine. Profiles a training set of workloads op by
//! op, fits per op kind a curve from roofline time to measured time (and the host's gap per op),
//! and reports the error on held-out workloads before and after; `--check FILE` measures the
//! error of a saved calibration without fitting. The method: docs/calibration.md.

use super::parse_positive;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use tperf_bench::calibrate::{self, RunOptions, Split, Suite};
use tperf_core::cost::calibration::{Calibration, ErrorReport, ErrorStats, MeasuredSamples};
use tperf_report::table::Table;
use tperf_report::units;

#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// cpu, cuda, cuda:N, or auto (the first GPU if there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// The roofline the curves map from (default: the device's: the CPU's measured ceilings, or
    /// the GPU's catalogue entry; `measured:PATH` for a GPU's measured ceilings).
    #[arg(long)]
    pub hw: Option<String>,
    /// Where to save the calibration (default: ~/.cache/tperf/calibration/<hw key>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Measure the error of an existing calibration on this device (training and held-out
    /// workloads); fits and saves nothing.
    #[arg(long, value_name = "FILE", conflicts_with = "out")]
    pub check: Option<PathBuf>,
    /// Fit again, with this tperf's fit, on the measurements an earlier calibration kept, and
    /// save the result to --out (measures nothing; needs no device): for trying a fit on a
    /// GPU's measurements on any machine.
    #[arg(long, value_name = "FILE", conflicts_with = "check", requires = "out")]
    pub refit: Option<PathBuf>,
    /// Warm-up steps per workload.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Profiled steps per workload (each op's median over them is its time).
    #[arg(long, default_value_t = 3, value_parser = parse_positive)]
    pub steps: usize,
    /// Start no workload after this many seconds: the rest are skipped (and listed), and the
    /// calibration is fitted on what was measured.
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// The model whose serving-engine steps are measured for `tperf plan serve` (default:
    /// gpt2-124m on a GPU; none on the CPU, where a 124M-parameter engine step takes seconds);
    /// `none` skips it.
    #[arg(long, value_name = "MODEL")]
    pub serving_model: Option<String>,
    /// Print the calibration (or with --check the error reports) as JSON.
    #[arg(long)]
    pub json: bool,
}

fn default_out(key: &str) -> Option<PathBuf> {
    let hw = tperf_core::cost::measured::default_path(key)?;
    // …/tperf/hardware/<key>.json → …/tperf/calibration/<key>.json
    let base = hw.parent()?.parent()?;
    Some(base.join("calibration").join(format!("{key}.json")))
}

pub fn run(args: CalibrateArgs) -> Result<()> {
    // Checked before anything is measured: a zero or negative limit used to be dropped
    // silently, and the run then had no deadline at all.
    if let Some(limit) = args.time_limit {
        if !(limit.is_finite() && limit > 0.0) {
            bail!("--time-limit {limit}: give a positive number of seconds, or leave the flag out for no limit");
        }
    }
    if let Some(from) = &args.refit {
        return refit(from, &args);
    }
    let device = super::resolve_device(&args.device)?;
    let checked = args.check.as_deref().map(Calibration::load).transpose()?;
    let hw = match &checked {
        // The curves map from the roofline of the entry they were fitted against.
        Some(cal) => cal.hardware.clone(),
        None => super::hardware_for(device, args.hw.as_deref())?,
    };
    let out = match (&checked, &args.out) {
        (Some(_), _) => None,
        (None, Some(p)) => Some(p.clone()),
        (None, None) => Some(default_out(&hw.key).context(
            "no cache folder (neither XDG_CACHE_HOME nor HOME is set): pass --out FILE",
        )?),
    };
    if let Some(path) = &out {
        super::check_output_file(path, "--out")?;
    }
    let suite = Suite::for_device(device);
    let specs = suite.specs();
    let bar = ProgressBar::new(specs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let run = RunOptions {
        warmup: args.warmup,
        steps: args.steps,
        deadline: args
            .time_limit
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| started + std::time::Duration::from_secs_f64(s)),
    };
    // Skipped workloads (errors and the deadline's) are listed once, after the tables.
    let measured = calibrate::measure(device, &hw, &specs, run, |_, spec, _| {
        bar.set_message(spec.label());
        bar.inc(1);
    });
    bar.finish_and_clear();
    let took = started.elapsed().as_secs_f64();
    let training = measured.of(Split::Training);
    let held_out = measured.of(Split::HeldOut);
    let device_name = format!("{device} ({})", hw.name);

    if let Some(cal) = checked {
        if cal.device != device_name {
            eprintln!(
                "note: the calibration was fitted on {}; checking it on {device_name}",
                cal.device
            );
        }
        let on_training = cal.evaluate(&training);
        let on_held_out = cal.evaluate(&held_out);
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "provenance": super::model::provenance(),
                    "calibration": args.check,
                    "device": device_name,
                    "training": on_training,
                    "held_out": on_held_out,
                    "skipped": measured.skipped,
                }))?
            );
            return Ok(());
        }
        println!(
            "tperf calibrate --check {} — {} on {device_name}: {} workloads measured in {took:.1} s\n",
            args.check.as_deref().map_or("".into(), |p| p.display().to_string()),
            cal.label(),
            measured.workloads.len()
        );
        print!("{}", error_section("held-out workloads", &on_held_out));
        print!("{}", error_section("training workloads", &on_training));
        if let Some(t) = split_table(&[
            ("held out", Some(&on_held_out)),
            ("training", Some(&on_training)),
        ]) {
            print!("{}", t.render());
            println!();
        }
        print_skipped(&measured.skipped);
        return Ok(());
    }

    if training.is_empty() {
        print_skipped(&measured.skipped);
        bail!(
            "no training workload could be measured on {device_name} (see the skipped lines above)"
        );
    }
    let mut provenance = super::model::provenance();
    if let Some(obj) = provenance.as_object_mut() {
        obj.insert(
            "command".into(),
            std::env::args().collect::<Vec<_>>().join(" ").into(),
        );
        obj.insert("measured_seconds".into(), took.into());
        obj.insert("warmup".into(), args.warmup.into());
        obj.insert("steps".into(), args.steps.into());
        obj.insert(
            "skipped".into(),
            serde_json::to_value(&measured.skipped).unwrap_or_default(),
        );
    }
    let (training_count, held_out_count) = (training.len(), held_out.len());
    let mut cal = Calibration::fit_and_evaluate(
        device_name.clone(),
        hw.clone(),
        suite.precision().name().to_string(),
        MeasuredSamples { training, held_out },
        provenance,
    )?;
    let serving_model = match (&args.serving_model, device) {
        (Some(m), _) if m == "none" => None,
        (Some(m), _) => Some(m.clone()),
        (None, tperf_bench::device::Device::Cuda(_)) => Some("gpt2-124m".to_string()),
        (None, tperf_bench::device::Device::Cpu) => None,
    };
    let mut serving_note = None;
    if let Some(model) = &serving_model {
        let out_of_time = args
            .time_limit
            .is_some_and(|s| started.elapsed().as_secs_f64() >= s + 15.0);
        if out_of_time {
            serving_note = Some("not measured: past the time limit".to_string());
        } else {
            eprintln!("measuring the serving engine's steps ({model})…");
            match engine::measure(device, model, suite.precision(), &cal) {
                Ok(o) => cal.serving = Some(o),
                Err(e) => serving_note = Some(format!("not measured: {e:#}")),
            }
        }
    }
    let path = out.expect("set when not checking");
    cal.save(&path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cal)?);
        return Ok(());
    }
    println!(
        "tperf calibrate — {device_name}, roofline of {} ({} ceilings): {} training and {} held-out workloads measured in {took:.1} s\n",
        hw.key,
        hw.basis.name(),
        training_count,
        held_out_count
    );
    print_fit(&cal);
    if let Some(o) = &cal.serving {
        print!("{}", engine::table(o).render());
        println!();
    }
    if let Some(n) = serving_note {
        println!("serving engine steps: {n}");
    }
    print_skipped(&measured.skipped);
    println!("{}", saved_line(&path));
    Ok(())
}

/// The fitted curves and the errors on the held-out and training workloads.
fn print_fit(cal: &Calibration) {
    print!("{}", curves_table(cal).render());
    println!();
    if let Some(e) = &cal.error_held_out {
        print!("{}", error_section("held-out workloads", e));
    }
    if let Some(e) = &cal.error_training {
        print!("{}", error_section("training workloads (in-sample)", e));
    }
    if let Some(e) = &cal.error_leave_one_out {
        print!(
            "{}",
            error_section(
                "training workloads, each predicted by the fit on the others (leave-one-out)",
                e
            )
        );
    }
    let sets = [
        ("held out", cal.error_held_out.as_ref()),
        ("leave-one-out", cal.error_leave_one_out.as_ref()),
    ];
    if let Some(t) = split_table(&sets) {
        print!("{}", t.render());
        println!();
    }
}

/// Where each calibrated step's error comes from: the op curves (Σ calibrated ops against Σ
/// measured ops) or the host gap (predicted against measured step − Σ measured ops). None when
/// no report carries the sums (files saved before they were kept).
fn split_table(sets: &[(&str, Option<&ErrorReport>)]) -> Option<Table> {
    let mut t = Table::new(&[
        "set",
        "workload",
        "measured step",
        "Σ ops measured → calibrated",
        "host gap measured → predicted",
        "step err",
        "from ops",
        "from host gap",
    ])
    .titled("Where the calibrated step's error comes from: the op curves or the host gap");
    let signed = |e: f64| format!("{:+.1}%", e * 100.0);
    let mut any = false;
    for (set, report) in sets {
        for w in report.iter().flat_map(|r| &r.workloads) {
            let (Some(split), Some((gap, gap_pred))) = (w.split(), w.host_gap_seconds()) else {
                continue;
            };
            any = true;
            t.row(vec![
                set.to_string(),
                w.label.clone(),
                units::seconds(w.measured_step_seconds),
                format!(
                    "{} → {}",
                    units::seconds(w.measured_op_seconds.unwrap_or_default()),
                    units::seconds(w.calibrated_op_seconds.unwrap_or_default())
                ),
                format!("{} → {}", units::seconds(gap), units::seconds(gap_pred)),
                signed(split.step),
                signed(split.ops),
                signed(split.host_gap),
            ]);
        }
    }
    t.note("step err = (calibrated − measured) / measured step = from ops + from host gap, where from ops = (Σ calibrated − Σ measured op times) / measured step and from host gap = (predicted − measured gap) / measured step");
    any.then_some(t)
}

/// `--refit FROM --out FILE`: the fit again on FROM's kept samples, saved to FILE, with the
/// errors before (as FROM recorded them) and after.
fn refit(from: &Path, args: &CalibrateArgs) -> Result<()> {
    let old = Calibration::load(from)?;
    let out = args.out.as_ref().expect("clap requires --out with --refit");
    super::check_output_file(out, "--out")?;
    let mut provenance = super::model::provenance();
    if let Some(obj) = provenance.as_object_mut() {
        obj.insert(
            "command".into(),
            std::env::args().collect::<Vec<_>>().join(" ").into(),
        );
        obj.insert("refit_of".into(), from.display().to_string().into());
        obj.insert("measured_by".into(), old.provenance.clone());
    }
    // Files saved before op variants were kept get them from this tperf's schedule of each
    // workload, so that the refit tells a biased or unaligned product from a plain one.
    let mut old = old;
    let derived = old
        .samples
        .as_mut()
        .map(|samples| calibrate::derive_variants(samples, &old.hardware));
    let cal = old.refit(from, provenance)?;
    cal.save(out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cal)?);
        return Ok(());
    }
    println!(
        "tperf calibrate --refit {} — {} ({} training and {} held-out workloads kept)\n",
        from.display(),
        cal.device,
        cal.training.len(),
        cal.held_out.len()
    );
    if let Some(d) = derived.filter(|d| d.ops > 0 || !d.unmatched.is_empty()) {
        println!(
            "op variants (docs/calibration.md) the file's samples did not say, derived from this tperf's schedule of each workload: {} op instances in {} workloads",
            d.ops, d.matched
        );
        if !d.unmatched.is_empty() {
            println!(
                "  not matched (no suite workload of the label, or its ops no longer line up), their ops keep no variant: {}",
                d.unmatched.join(", ")
            );
        }
    }
    if let (Some(before), Some(after)) = (&old.error_held_out, &cal.error_held_out) {
        println!(
            "held-out error, before → after the refit: {}",
            before_after(before, after)
        );
    }
    match (&old.error_leave_one_out, &cal.error_leave_one_out) {
        (Some(before), Some(after)) => println!(
            "leave-one-out over the training workloads, before → after: {}",
            before_after(before, after)
        ),
        (None, Some(after)) => println!(
            "leave-one-out over the training workloads: per op median {}, p90 {}; whole step median {}, p90 {} (the file has no leave-one-out error to compare with)",
            pct(after.op_calibrated.median),
            pct(after.op_calibrated.p90),
            pct(after.step_calibrated.median),
            pct(after.step_calibrated.p90),
        ),
        _ => {}
    }
    println!();
    print_fit(&cal);
    println!("{}", saved_line(out));
    Ok(())
}

/// "per op median 15.0% → 12.1%, p90 …; whole step median …, p90 …".
fn before_after(before: &ErrorReport, after: &ErrorReport) -> String {
    format!(
        "per op median {} → {}, p90 {} → {}; whole step median {} → {}, p90 {} → {}",
        pct(before.op_calibrated.median),
        pct(after.op_calibrated.median),
        pct(before.op_calibrated.p90),
        pct(after.op_calibrated.p90),
        pct(before.step_calibrated.median),
        pct(after.step_calibrated.median),
        pct(before.step_calibrated.p90),
        pct(after.step_calibrated.p90),
    )
}

fn saved_line(path: &Path) -> String {
    format!(
        "saved the calibration to {0}; predict with it: tperf model|profile … --calibration {0}, tperf plan serve … --calibration {0}",
        path.display()
    )
}

fn print_skipped(skipped: &[(String, String)]) {
    for (label, why) in skipped {
        println!("skipped {label}: {why}");
    }
}

fn pct(e: f64) -> String {
    units::percent(e)
}

fn stats(s: &ErrorStats) -> String {
    format!("{} / {}", pct(s.median), pct(s.p90))
}

/// The error of one set: per workload, then pooled, before (roofline) and after.
pub fn error_section(title: &str, e: &ErrorReport) -> String {
    let mut t = Table::new(&[
        "workload",
        "ops",
        "measured step",
        "roofline step",
        "err",
        "calibrated step",
        "err",
        "op err roofline (med / p90)",
        "op err calibrated (med / p90)",
    ])
    .titled(format!("Error on the {title}"));
    for w in &e.workloads {
        t.row(vec![
            w.label.clone(),
            w.ops.to_string(),
            units::seconds(w.measured_step_seconds),
            units::seconds(w.roofline_step_seconds),
            pct(tperf_core::cost::calibration::relative_error(
                w.roofline_step_seconds,
                w.measured_step_seconds,
            )),
            units::seconds(w.calibrated_step_seconds),
            pct(tperf_core::cost::calibration::relative_error(
                w.calibrated_step_seconds,
                w.measured_step_seconds,
            )),
            stats(&w.op_error_roofline),
            stats(&w.op_error_calibrated),
        ]);
    }
    t.note(format!(
        "per op (|predicted − measured| / measured over {} op instances): median {} → {}, p90 {} → {} (roofline → calibrated)",
        e.op_calibrated.count,
        pct(e.op_roofline.median),
        pct(e.op_calibrated.median),
        pct(e.op_roofline.p90),
        pct(e.op_calibrated.p90),
    ));
    t.note(format!(
        "whole step (over {} workloads, against the step's wall time): median {} → {}, p90 {} → {}, max {} → {}",
        e.step_calibrated.count,
        pct(e.step_roofline.median),
        pct(e.step_calibrated.median),
        pct(e.step_roofline.p90),
        pct(e.step_calibrated.p90),
        pct(e.step_roofline.max),
        pct(e.step_calibrated.max),
    ));
    let uncal: usize = e.workloads.iter().map(|w| w.uncalibrated_ops).sum();
    if uncal > 0 {
        t.note(format!(
            "{uncal} op instances had no curve (an op kind and class the training set never ran) and kept their roofline time"
        ));
    }
    let mut s = t.render();
    s.push('\n');
    s
}

/// The fitted curves, as a launch floor and a saturated efficiency.
fn curves_table(cal: &Calibration) -> Table {
    let mut t = Table::new(&[
        "curve",
        "step",
        "dtype",
        "bound",
        "points",
        "knots",
        "smallest op",
        "efficiency at the largest",
    ])
    .titled("Fitted curves (roofline time → measured time, monotone piecewise-linear in log–log)");
    for g in &cal.groups {
        use tperf_core::cost::calibration::Level;
        let level = match g.key.level {
            Level::KindBoundStep | Level::KindBound | Level::Kind => g.key.name.clone(),
            Level::Class => format!("class {}", g.key.name),
        };
        if matches!(g.key.level, Level::Kind | Level::KindBound) {
            // The per-step curves say the same at finer grain; these are the fallbacks for a
            // step kind or bound the training never saw.
            continue;
        }
        t.row(vec![
            level,
            if g.key.step.is_empty() {
                "any".into()
            } else {
                g.key.step.clone()
            },
            g.key.dtype.clone(),
            if g.key.bound.is_empty() {
                "any".into()
            } else {
                g.key.bound.clone()
            },
            g.curve.points.to_string(),
            g.curve.knots.len().to_string(),
            units::seconds(g.curve.floor_seconds()),
            pct(g.curve.saturated_efficiency()),
        ]);
    }
    t.note(format!(
        "host gap of a step (wall time − Σ ops, fitted on the training workloads): {} per op + {} of the ops' time",
        units::seconds(cal.overhead.gap_per_op_seconds),
        pct(cal.overhead.gap_per_op_second)
    ));
    t.note("efficiency = roofline time / predicted time; the smallest op's time is the curve's floor (launch and fixed costs)");
    t
}

/// The serving engine's steps beside the calibrated schedule's, for `tperf plan serve`.
mod engine {
    use anyhow::{Context, Result};
    use tperf_bench::device::Device;
    use tperf_core::backend::Backend;
    use tperf_core::cost::analysis::{self, Scenario, Workload};
    use tperf_core::cost::calibration::{
        relative_error, Calibration, ServingOverhead, ServingPoint,
    };
    use tperf_core::rng::Rng;
    use tperf_core::schedule::{Options, Precision};
    use tperf_engine::{EngineConfig, EngineCore, Event, EventSink, Request};
    use tperf_report::table::Table;
    use tperf_report::units;

    /// Prompt and output lengths of the measured requests: the serving benchmark's prompt, and
    /// enough decode steps for a stable median.
    const PROMPT: usize = 128;
    const OUTPUT: usize = 24;
    /// Batch sizes fitted on, and held out (the saturation batch of the serving benchmark).
    const FIT: [usize; 4] = [8, 32, 64, 128];
    const HELD_OUT: [usize; 2] = [16, 256];

    struct Discard;
    impl EventSink for Discard {
        fn send(&mut self, _: Event) -> bool {
            true
        }
    }

    pub fn measure(
        device: Device,
        model: &str,
        precision: Precision,
        cal: &Calibration,
    ) -> Result<ServingOverhead> {
        match device {
            Device::Cpu => measure_on(tperf_cpu::CpuBackend::new(), model, precision, cal),
            Device::Cuda(i) => measure_on(tperf_cuda::CudaBackend::new(i)?, model, precision, cal),
        }
    }

    fn measure_on<B: Backend>(
        mut be: B,
        model: &str,
        precision: Precision,
        cal: &Calibration,
    ) -> Result<ServingOverhead> {
        let opts = Options {
            precision,
            ..Options::default()
        };
        let (mut net, tok) =
            super::super::generate::load_model(&mut be, model, None, opts, 0, &|_, _| Ok(()))?;
        let cfg = net.cfg.clone();
        let mut points = Vec::new();
        let mut held_out = Vec::new();
        let mut rng = Rng::new(7);
        for (batch, fit) in FIT
            .iter()
            .map(|&b| (b, true))
            .chain(HELD_OUT.iter().map(|&b| (b, false)))
        {
            let blocks_each = (PROMPT + OUTPUT).div_ceil(16) + 1;
            let ecfg = EngineConfig {
                max_num_seqs: batch,
                max_num_batched_tokens: 8192,
                kv_blocks: batch * blocks_each,
                ..EngineConfig::default()
            };
            let mut core = EngineCore::new(be, net, tok.clone(), ecfg)?;
            for id in 0..batch {
                let prompt: Vec<u32> = (0..PROMPT)
                    .map(|_| (rng.next_u64() % cfg.vocab_size as u64) as u32)
                    .collect();
                let mut req = Request::greedy(prompt, OUTPUT);
                req.ignore_eos = true;
                core.add(id as u64, req, Box::new(Discard))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let mut decode_steps = Vec::new();
            while !core.is_idle() {
                let t0 = std::time::Instant::now();
                let report = core.step()?;
                let dt = t0.elapsed().as_secs_f64();
                let full_decode = report.scheduled.len() == batch
                    && report.scheduled.iter().all(|&(_, n)| n == 1);
                if full_decode {
                    decode_steps.push(dt);
                }
            }
            (be, net) = core.into_parts();
            // The first decode steps after a prefill warm the step's allocations (and a GPU's
            // graphs): the median of the rest.
            let skip = decode_steps.len().min(2);
            let mut steady = decode_steps[skip..].to_vec();
            if steady.is_empty() {
                continue;
            }
            steady.sort_by(f64::total_cmp);
            let measured = steady[steady.len() / 2];
            let context = PROMPT + OUTPUT / 2;
            let sc = Scenario {
                workload: Workload::Decode,
                batch,
                seq: context,
                opts,
            };
            let calibrated = analysis::analyze_calibrated(&cfg, &sc, &cal.hardware, Some(cal))
                .context("the calibrated decode step")?
                .step_seconds();
            let p = ServingPoint {
                batch,
                context,
                measured_seconds: measured,
                calibrated_seconds: calibrated,
            };
            if fit {
                points.push(p);
            } else {
                held_out.push(p);
            }
        }
        net.free(&mut be);
        Ok(ServingOverhead::fit(model.to_string(), points, held_out))
    }

    pub fn table(o: &ServingOverhead) -> Table {
        let mut t = Table::new(&[
            "batch",
            "set",
            "engine decode step",
            "calibrated schedule step",
            "+ engine overhead",
            "err",
        ])
        .titled(format!(
            "Serving engine decode steps ({}, {PROMPT} in / {OUTPUT} out, EngineCore::step wall clock, median)",
            o.model
        ));
        for (p, set) in o
            .points
            .iter()
            .map(|p| (p, "fit"))
            .chain(o.held_out.iter().map(|p| (p, "held out")))
        {
            let predicted = o.predict(p);
            t.row(vec![
                p.batch.to_string(),
                set.into(),
                units::seconds(p.measured_seconds),
                units::seconds(p.calibrated_seconds),
                units::seconds(predicted),
                units::percent(relative_error(predicted, p.measured_seconds)),
            ]);
        }
        t.note(format!(
            "engine overhead per step = {} + {} × running sequences (fitted, ≥ 0): what `tperf plan serve --calibration` adds to each step",
            units::seconds(o.per_step_seconds),
            units::seconds(o.per_sequence_seconds)
        ));
        t
    }
}
