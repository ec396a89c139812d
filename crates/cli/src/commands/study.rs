//! `tperf study`: the main job. The analytic model of the seed's model sizes on the measured
//! device and on a reference GPU, the sizing and decoding questions, then measurements on the
//! device (the first GPU if there is one, else this machine's CPU): benchmarks, a per-op profile
//! of inference and training, the attention sweep, serving (saturation, a rate sweep of
//! continuous against static batching, VTC against FCFS), and the HTML report.

use super::model::{analyze_with_timeline, decode_sweep_table, op_table, to_json};
use super::{precision, report};
use anyhow::Result;
use std::path::PathBuf;
use tperf_bench::device::Device;
use tperf_core::cost::analysis::{self, Scenario, Workload};
use tperf_core::cost::hardware;
use tperf_core::presets;
use tperf_core::schedule::{Options, Precision};
use tperf_report::results::{Results, SCHEMA_VERSION};
use tperf_report::table::Table;
use tperf_report::units;
use tperf_runtime::train::StopFlag;

#[derive(clap::Args, Debug)]
pub struct StudyArgs {
    /// Reference GPU to model beside this machine.
    #[arg(long, default_value = "h100-sxm")]
    pub hw: String,
    /// Where the run's folder (report.html, results.json, per-op CSVs) is written.
    #[arg(long, default_value = "tperf-out")]
    pub out: PathBuf,
    /// Only the analytic model: measure nothing.
    #[arg(long)]
    pub model_only: bool,
    /// Where to measure: cpu, cuda, cuda:N, or auto (the first GPU if there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(args: StudyArgs) -> Result<()> {
    let gpu = super::find_hw(&args.hw)?;
    let cpu = hardware::detect_local_cpu();
    // Fail on an unwritable --out before any work, with the folder named.
    report::create_dir(&args.out)?;
    let device = if args.model_only {
        Device::Cpu
    } else {
        super::resolve_device(&args.device)?
    };
    // The measured device's own roofline entry: the detected CPU, or the catalogue's GPU.
    let measured_hw = super::hardware_for(device, None)?;
    println!(
        "tperf study — the analytic model, then measurements on {}",
        if args.model_only {
            "nothing (--model-only)".to_string()
        } else {
            format!("{device} ({})", measured_hw.name)
        }
    );
    println!("this machine: {}\n", cpu.source);

    let mut t = Table::new(&[
        "model",
        "params",
        "dtype",
        "GFLOP/step",
        "peak memory",
        "fits",
        "predicted step",
        "tokens/s",
        "MFU",
    ])
    .titled(format!(
        "The seed's model sizes: one training step, batch 4 × seq 256, on {} ({})",
        gpu.name, gpu.key
    ));
    for key in ["small", "medium", "large", "xl", "2.7B", "10B"] {
        let p = presets::find(key)?;
        for precision in [Precision::Fp32, Precision::Bf16] {
            let sc = Scenario {
                workload: Workload::Train,
                batch: 4,
                seq: 256,
                opts: Options {
                    precision,
                    ..Options::default()
                },
            };
            let a = analysis::analyze(&p.config, &sc, &gpu)?;
            t.row(vec![
                key.to_string(),
                units::params(a.params),
                precision.name().to_string(),
                format!("{:.0}", a.total.flops as f64 / 1e9),
                units::bytes(a.memory.peak_bytes),
                if a.fits() { "yes" } else { "no" }.to_string(),
                units::seconds(a.step_seconds()),
                format!("{:.0}", a.tokens_per_second()),
                units::percent(a.mfu),
            ]);
        }
    }
    t.note("roofline predictions: each op at max(FLOPs/peak, bytes/bandwidth); real kernels reach a fraction of it");
    print!("{}", t.render());
    println!();

    let small = presets::find("small")?;
    let sc = Scenario {
        workload: Workload::Train,
        batch: 4,
        seq: 256,
        opts: Options::default(),
    };
    let on_cpu = analysis::analyze(&small.config, &sc, &cpu)?;
    println!(
        "seed small on this CPU ({}): predicted training step {} ({} tokens/s), peak memory {}\n",
        cpu.key,
        units::seconds(on_cpu.step_seconds()),
        units::thousands(on_cpu.tokens_per_second() as u64),
        units::bytes(on_cpu.memory.peak_bytes)
    );
    print!("{}", op_table(&on_cpu, false, true).render());
    println!();

    let gpt2 = presets::find("gpt2-124m")?;
    let sc = Scenario {
        workload: Workload::Decode,
        batch: 1,
        seq: 256,
        opts: Options {
            precision: Precision::Bf16,
            ..Options::default()
        },
    };
    let decode = analysis::analyze(&gpt2.config, &sc, &gpu)?;
    print!("{}", decode_sweep_table(&gpt2.config, &decode)?.render());
    println!();

    // The report: the seed's small model training on this CPU and (bf16) on the GPU, and GPT-2
    // decoding, each with its memory timeline; the precision experiment beside them.
    let bf16 = Options {
        precision: Precision::Bf16,
        ..Options::default()
    };
    let train = |opts| Scenario {
        workload: Workload::Train,
        batch: 4,
        seq: 256,
        opts,
    };
    let profiled = profiled_scenario(device);
    let mut analyses = Vec::new();
    for (cfg, sc, hw) in [
        (&small.config, profiled, &measured_hw),
        (&small.config, train(bf16), &gpu),
        (&gpt2.config, sc, &gpu),
    ] {
        let (a, timeline) = analyze_with_timeline(cfg, &sc, hw)?;
        let mut json = to_json(cfg, &a, &timeline);
        json["what_if"] = serde_json::Value::Array(what_if(cfg, &sc, hw)?);
        analyses.push(json);
    }
    let measured_on = format!("{device} (measured) and the analytic model");
    let prov = report::provenance(if args.model_only {
        "meta (analytic model only)"
    } else {
        &measured_on
    });
    let run_id = format!(
        "study-{}",
        prov.date.replace(['-', ':'], "").trim_end_matches('Z')
    );
    let mut results = Results {
        schema_version: SCHEMA_VERSION,
        run_id,
        provenance: prov,
        analyses,
        bench: None,
        attention: None,
        precision: Some(precision::to_json(
            &small.config.name,
            &precision::policies(&small.config)?,
        )),
        counters: None,
        serving: None,
    };
    // Each finished section is written at once (results.json and the report re-rendered), so an
    // interrupted or failed study keeps everything it finished.
    let stop = StopFlag::new();
    stop.install_handler_saying(
        "stopping after the measurement in progress; every finished section stays in results.json (Ctrl-C again to quit now)",
    )?;
    let dir = report::write_run(&args.out, &results, &[])?;
    let results_path = dir.join("results.json");
    let mut kept = vec!["the model".to_string()];
    let stopped = |kept: &[String]| -> anyhow::Error {
        super::Stopped(format!(
            "interrupted: kept {} in {} (report.html beside it shows them; rerun the study for the rest)",
            kept.join(", "),
            results_path.display()
        ))
        .into()
    };
    if !args.model_only {
        let (bench, utilisation) = measure_bench(&small.config, device, &measured_hw, &stop)?;
        results.bench = Some(serde_json::json!({ "rows": bench, "utilisation": utilisation }));
        report::write_run(&args.out, &results, &[])?;
        kept.push(format!("the benchmarks ({} rows)", bench.len()));
        if stop.is_requested() {
            return Err(stopped(&kept));
        }
        let profile = measure_profile(&small.config, device, &measured_hw)?;
        // The first analysis is the profiled scenario: each op carries its measured time.
        if let Some(ops) = results.analyses[0]["ops"].as_array_mut() {
            for (op, measured) in ops.iter_mut().zip(&profile.ops) {
                op["measured_seconds"] = serde_json::json!(measured.median);
            }
        }
        let trace = vec![(
            "trace.json".to_string(),
            serde_json::to_string(&tperf_bench::profile::chrome_trace(&profile))?,
        )];
        report::write_run(&args.out, &results, &trace)?;
        kept.push("the profile".to_string());
        println!(
            "trace of the profiled step: {} (open it in ui.perfetto.dev)",
            dir.join("trace.json").display()
        );
        if stop.is_requested() {
            return Err(stopped(&kept));
        }
        let (attention, attention_grid) = measure_attention(device, &measured_hw, &stop)?;
        results.attention =
            Some(serde_json::json!({ "rows": attention, "predicted_only": attention_grid }));
        report::write_run(&args.out, &results, &trace)?;
        kept.push(format!("the attention sweep ({} cases)", attention.len()));
        if stop.is_requested() {
            return Err(stopped(&kept));
        }
        results.counters = Some(measure_counters(device, &dir));
        report::write_run(&args.out, &results, &trace)?;
        kept.push("the counters experiment".to_string());
        let serving = super::study_serving::measure_serving(device, &measured_hw, &stop)?;
        print!("{}", super::study_serving::render(&serving));
        println!();
        results.serving = Some(serde_json::to_value(&serving)?);
        report::write_run(&args.out, &results, &trace)?;
        kept.push(format!(
            "the serving runs ({} runs, {} fairness runs)",
            serving.runs.len(),
            serving.fairness.len()
        ));
        if stop.is_requested() {
            return Err(stopped(&kept));
        }
    }
    println!("report: {}", dir.join("report.html").display());
    Ok(())
}

/// The student report's experiment under Nsight Compute where counters can be read, else why
/// not (the study carries on either way).
fn measure_counters(device: Device, dir: &std::path::Path) -> serde_json::Value {
    use super::counters::{experiment, not_collected, render_experiment, CountersArgs};
    println!("\nHardware counters: the student report's experiment (tperf counters)");
    let args = CountersArgs::for_study(device, dir.join("counters"));
    let why = match device {
        Device::Cpu => tperf_bench::counters::CountersError::NotCuda,
        Device::Cuda(_) => match crate::load::load(&args.model).map(|m| {
            experiment(&args, device, &m.config, |b| {
                eprintln!("counting batch {b} under ncu …")
            })
        }) {
            Ok(Ok(e)) => {
                print!("{}", render_experiment(&e));
                return serde_json::to_value(&e).unwrap_or_default();
            }
            Ok(Err(why)) => why,
            Err(e) => {
                println!("counters: not run: {e:#}");
                return serde_json::json!({ "not_collected": format!("{e:#}") });
            }
        },
    };
    let line = not_collected(&why);
    print!("{line}");
    serde_json::json!({ "not_collected": line.trim() })
}

/// The one-change alternatives the model evaluates beside a scenario, for the report's "would
/// help most" finding: each as {change, step_seconds, tokens_per_second, fits}.
fn what_if(
    cfg: &tperf_core::config::ModelConfig,
    sc: &Scenario,
    hw: &tperf_core::cost::hardware::Hardware,
) -> Result<Vec<serde_json::Value>> {
    use tperf_core::schedule::{AttentionKernel, Recompute};
    let o = sc.opts;
    let mut changes: Vec<(String, Scenario)> = Vec::new();
    let with = |opts: Options| Scenario { opts, ..*sc };
    if o.precision == Precision::Fp32 {
        let opts = Options {
            precision: Precision::Bf16,
            ..o
        };
        changes.push(("bf16 mixed precision".into(), with(opts)));
    }
    let other = match o.attention {
        AttentionKernel::Naive => AttentionKernel::Flash,
        AttentionKernel::Flash => AttentionKernel::Naive,
    };
    let opts = Options {
        attention: other,
        ..o
    };
    changes.push((format!("{} attention", other.name()), with(opts)));
    let opts = Options {
        fused: !o.fused,
        ..o
    };
    let fused = if o.fused { "unfused" } else { "fused" };
    changes.push((format!("{fused} kernels"), with(opts)));
    if sc.workload != Workload::Decode && o.recompute != Recompute::None {
        let opts = Options {
            recompute: Recompute::None,
            ..o
        };
        changes.push(("no activation recomputation".into(), with(opts)));
    }
    for factor in [2, 4] {
        let batch = sc.batch * factor;
        changes.push((format!("batch {batch}"), Scenario { batch, ..*sc }));
    }
    let mut out = Vec::new();
    for (change, alt) in changes {
        let a = analysis::analyze(cfg, &alt, hw)?;
        out.push(serde_json::json!({
            "change": change,
            "step_seconds": a.step_seconds(),
            "tokens_per_second": a.tokens_per_second(),
            "fits": a.fits(),
        }));
    }
    Ok(out)
}

/// The scenario the study profiles on the CPU (and models beside it): one training step of the
/// seed's small model at a size that takes about a second on two cores.
const PROFILED: Scenario = Scenario {
    workload: Workload::Train,
    batch: 1,
    seq: 128,
    opts: Options {
        precision: Precision::Fp32,
        attention: tperf_core::schedule::AttentionKernel::Flash,
        kv_cache: true,
        recompute: tperf_core::schedule::Recompute::None,
        fused: true,
        data_parallel: None,
        grad_accum: 1,
    },
};

/// The step the study profiles: on the CPU one that takes about a second on two cores; on a GPU
/// the seed's own training step (batch 4 × 256 tokens, bf16).
fn profiled_scenario(device: Device) -> Scenario {
    match device {
        Device::Cpu => PROFILED,
        Device::Cuda(_) => Scenario {
            workload: Workload::Train,
            batch: 4,
            seq: 256,
            opts: Options {
                precision: Precision::Bf16,
                ..PROFILED.opts
            },
        },
    }
}

fn style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

/// The benchmarks. On the CPU, sizes chosen to finish in a minute or two on 2 cores; on a GPU,
/// the seed's model table (small to xl, fp32 and bf16, batch 4 × 256). A stop request ends the
/// sweep after the row in progress; the rows finished are returned.
fn measure_bench(
    small: &tperf_core::config::ModelConfig,
    device: Device,
    hw: &hardware::Hardware,
    stop: &StopFlag,
) -> Result<(
    Vec<tperf_bench::model::BenchRow>,
    tperf_bench::utilisation::Utilisation,
)> {
    use indicatif::ProgressBar;
    use tperf_bench::model::Repeats;
    let cpu = hw.clone();
    let sc = |workload, batch, seq| Scenario {
        workload,
        batch,
        seq,
        ..PROFILED
    };
    let mut plan: Vec<(tperf_core::config::ModelConfig, Scenario)> = Vec::new();
    let repeats = match device {
        Device::Cpu => {
            let mut cpu_plan = vec![
                sc(Workload::Forward, 1, 128),
                sc(Workload::FwdBwd, 1, 128),
                sc(Workload::Train, 1, 128),
            ];
            cpu_plan.extend([2, 4].map(|b| sc(Workload::FwdBwd, b, 64)));
            cpu_plan.push(sc(Workload::FwdBwd, 1, 64));
            cpu_plan.extend([32, 256].map(|t| sc(Workload::FwdBwd, 1, t)));
            plan.extend(cpu_plan.into_iter().map(|s| (small.clone(), s)));
            Repeats {
                warmup: 1,
                steps: 3,
            }
        }
        Device::Cuda(_) => {
            // The seed's table, as bench/pytorch/bench_seed.py runs it in PyTorch.
            for key in ["small", "medium", "large", "xl"] {
                let cfg = presets::find(key)?.config;
                for precision in [Precision::Fp32, Precision::Bf16] {
                    for workload in [Workload::Forward, Workload::FwdBwd, Workload::Train] {
                        let mut s = sc(workload, 4, 256);
                        s.opts.precision = precision;
                        plan.push((cfg.clone(), s));
                    }
                }
            }
            Repeats {
                warmup: 3,
                steps: 10,
            }
        }
    };
    let bar = ProgressBar::new(plan.len() as u64)
        .with_style(style())
        .with_message("benchmarks");
    let mut bench = Vec::new();
    let sampler = tperf_bench::utilisation::start_for(device);
    for (cfg, s) in &plan {
        if stop.is_requested() {
            break;
        }
        match super::check_fits(device, cfg, s) {
            Err(e) => bar.println(format!("{e:#}")),
            Ok(_) => bench.push(tperf_bench::model::run(
                device,
                cfg,
                s,
                &cpu,
                repeats,
                |_| {},
            )?),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let utilisation = tperf_bench::utilisation::finish(sampler);
    let mut t = Table::new(&super::bench::HEADER).titled(format!(
        "Measured on {device} ({}), {} warm-up + {} timed steps; model = roofline on its peaks",
        cpu.key, repeats.warmup, repeats.steps
    ));
    for r in &bench {
        t.row(super::bench::row_cells(r));
    }
    if let Some(note) = super::bench::graphs_note(&bench) {
        t.note(note);
    }
    print!("{}", t.render());
    println!("{}", utilisation.line());
    println!();
    Ok((bench, utilisation))
}

/// A per-op profile of inference and of a training step; returns the training step's.
fn measure_profile(
    small: &tperf_core::config::ModelConfig,
    device: Device,
    hw: &hardware::Hardware,
) -> Result<tperf_bench::profile::Profile> {
    use indicatif::ProgressBar;
    let cpu = hw.clone();
    let bar = ProgressBar::new(8)
        .with_style(style())
        .with_message("profile");
    let profiled = profiled_scenario(device);
    let inference = Scenario {
        workload: Workload::Forward,
        ..profiled
    };
    super::check_fits(device, small, &profiled)?;
    let forward =
        tperf_bench::profile::profile(device, small, &inference, &cpu, 1, 3, |_| bar.inc(1))?;
    let profile =
        tperf_bench::profile::profile(device, small, &profiled, &cpu, 1, 3, |_| bar.inc(1))?;
    bar.finish_and_clear();
    let mut t = Table::new(&[
        "step (small)",
        "in ops",
        "matrix-class ops",
        "step wall",
        "modelled",
    ])
    .titled(format!(
        "Where the time goes: inference against training (measured per op on {device})"
    ));
    for (name, p) in [
        ("forward (inference)", &forward),
        ("training step", &profile),
    ] {
        let total: f64 = p.ops.iter().map(|o| o.median).sum();
        let matmul: f64 = p
            .ops
            .iter()
            .filter(|o| p.analysis.rows[o.index].class == tperf_core::ops::OpClass::Matmul)
            .map(|o| o.median)
            .sum();
        t.row(vec![
            name.to_string(),
            units::seconds(total),
            units::percent(matmul / total),
            units::seconds(p.step_seconds.median),
            units::seconds(p.analysis.step_seconds()),
        ]);
    }
    print!("{}", t.render());
    println!();
    Ok(profile)
}

type AttentionRows = Vec<tperf_bench::attention::AttentionRow>;

/// The attention sweep measured (naive against flash), and the seed's whole grid predicted. A
/// stop request ends the measured sweep after the case in progress.
fn measure_attention(
    device: Device,
    hw: &hardware::Hardware,
    stop: &StopFlag,
) -> Result<(AttentionRows, AttentionRows)> {
    use indicatif::ProgressBar;
    let cpu = hw.clone();
    use tperf_core::ops::attention::Attention;
    use tperf_core::schedule::attention_only::AttentionOnly;
    use tperf_core::schedule::AttentionKernel;
    // The CPU sweep: batch 8, one head, fp32; the GPU sweep: the seed's (batch 1, 16 heads, bf16).
    let (ab, ah, adt) = match device {
        Device::Cpu => (8, 1, tperf_core::dtype::DType::F32),
        Device::Cuda(_) => (1, 16, tperf_core::dtype::DType::Bf16),
    };
    let case = |d, t, kernel| AttentionOnly {
        shape: Attention {
            b: ab,
            h: ah,
            h_kv: ah,
            tq: t,
            tk: t,
            d,
            causal: true,
            window: None,
            kv_cache: false,
        },
        kernel,
        dtype: adt,
    };
    let kernels = [AttentionKernel::Naive, AttentionKernel::Flash];
    let (dims, seqs): (Vec<usize>, Vec<usize>) = match device {
        Device::Cpu => (vec![16, 64], vec![256, 1024, 2048]),
        Device::Cuda(_) => (vec![64, 128], vec![1024, 4096, 16384]),
    };
    let measured_cases: Vec<_> = dims
        .iter()
        .flat_map(|&d| {
            seqs.clone()
                .into_iter()
                .flat_map(move |t| kernels.map(|k| case(d, t, k)))
        })
        .collect();
    let bar = ProgressBar::new(measured_cases.len() as u64)
        .with_style(style())
        .with_message("attention");
    let mut attention = Vec::new();
    for c in &measured_cases {
        if stop.is_requested() {
            break;
        }
        attention.push(tperf_bench::attention::run(device, c, &cpu, 1, 2, || {})?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    // The seed's whole grid, predicted only: what would fit, and what naive attention costs.
    let mut attention_grid = Vec::new();
    for d in [16, 32, 64, 128] {
        for t in [256, 1024, 4096, 8192, 16384] {
            for k in kernels {
                let c = case(d, t, k);
                let predicted = tperf_bench::attention::predict(&c, &cpu)?;
                let needed = predicted.peak_bytes;
                let skipped = if needed > cpu.memory_bytes {
                    format!(
                        "out of memory: predicted peak {}, the machine has {}",
                        units::bytes(needed),
                        units::bytes(cpu.memory_bytes)
                    )
                } else {
                    "predicted only".to_string()
                };
                attention_grid.push(tperf_bench::attention::AttentionRow {
                    case: c,
                    predicted,
                    measured: None,
                    skipped: Some(skipped),
                });
            }
        }
    }
    print!(
        "{}",
        super::attention::table(&attention, format!("Attention on {device}: batch {ab}, {ah} head(s), causal, {adt} (median of 2 steps after 1 warm-up)")).render()
    );
    println!();
    Ok((attention, attention_grid))
}
