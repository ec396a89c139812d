//! `tperf study`: the main job. Until the measurement side lands, the study is the analytic
//! model of the seed's model sizes on this machine's CPU and on an H100, the sizing question,
//! and the hardware table.

use super::model::{analyze_with_timeline, decode_sweep_table, op_table, to_json};
use super::{precision, report};
use anyhow::Result;
use std::path::PathBuf;
use tperf_core::cost::analysis::{self, Scenario, Workload};
use tperf_core::cost::hardware;
use tperf_core::presets;
use tperf_core::schedule::{Options, Precision};
use tperf_report::results::{Results, SCHEMA_VERSION};
use tperf_report::table::Table;
use tperf_report::units;

#[derive(clap::Args, Debug)]
pub struct StudyArgs {
    /// Reference GPU to model beside this machine.
    #[arg(long, default_value = "h100-sxm")]
    pub hw: String,
    /// Where the run's folder (report.html, results.json, per-op CSVs) is written.
    #[arg(long, default_value = "tperf-out")]
    pub out: PathBuf,
}

pub fn run(args: StudyArgs) -> Result<()> {
    let gpu = hardware::find(&args.hw)?;
    let cpu = hardware::detect_local_cpu();
    // Fail on an unwritable --out before any work, with the folder named.
    report::create_dir(&args.out)?;
    println!("tperf study — analytic model (measurement arrives with the CPU and CUDA backends)");
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
    let mut analyses = Vec::new();
    for (cfg, sc, hw) in [
        (&small.config, train(Options::default()), &cpu),
        (&small.config, train(bf16), &gpu),
        (&gpt2.config, sc, &gpu),
    ] {
        let (a, timeline) = analyze_with_timeline(cfg, &sc, hw)?;
        analyses.push(to_json(cfg, &a, &timeline));
    }
    let prov = report::provenance("meta (analytic model; nothing measured yet)");
    let run_id = format!(
        "study-{}",
        prov.date.replace(['-', ':'], "").trim_end_matches('Z')
    );
    let results = Results {
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
    };
    let dir = report::write_run(&args.out, &results)?;
    println!("report: {}", dir.join("report.html").display());
    Ok(())
}
