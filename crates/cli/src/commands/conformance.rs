//! `tperf conformance`: the CUDA backend checked against the CPU backend. Every op of every
//! scenario of the suite (model families × workloads × precisions × attention kernels, with
//! recomputation and the unfused schedule) is run on both from identical inputs and compared
//! with per-dtype tolerances; then each whole model runs on the GPU alone and is compared with
//! the CPU alone. Prints the worst error per op and exits non-zero on any failure.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use tperf_bench::device::Device;
use tperf_cuda::conformance::{self, Diff};
use tperf_cuda::CudaBackend;
use tperf_report::table::Table;

#[derive(clap::Args, Debug)]
pub struct ConformanceArgs {
    /// The GPU to check: cuda or cuda:N.
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Also write every comparison as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn diff_json(d: &Diff) -> serde_json::Value {
    serde_json::json!({
        "op": d.op, "label": d.label, "output": d.output, "dtype": d.dtype.name(),
        "numel": d.numel, "error": if d.error.is_finite() { serde_json::json!(d.error) } else { serde_json::json!("inf") },
        "tolerance": d.tolerance, "passed": d.passed(),
    })
}

pub fn run(args: ConformanceArgs) -> Result<()> {
    let ordinal = match args.device.parse::<Device>()? {
        Device::Cuda(i) => i,
        Device::Cpu => bail!("conformance checks a GPU against the CPU: use --device cuda:N"),
    };
    let n = tperf_cuda::device_count().map_err(|why| {
        anyhow::anyhow!(
            "skipped: {} (the conformance suite needs a CUDA device)",
            tperf_core::error::report(&why)
        )
    })?;
    if ordinal >= n {
        bail!("cuda:{ordinal} does not exist: this machine has {n} CUDA device(s)");
    }
    let mut gpu = CudaBackend::new(ordinal)?;
    let info = gpu.info().clone();
    println!(
        "tperf conformance on cuda:{ordinal}: {} (sm_{}{}, {} SMs, driver {}) against the CPU backend\n",
        info.name, info.cc.0, info.cc.1, info.sms, info.driver_version
    );
    let started = std::time::Instant::now();
    let results = conformance::suite(&mut gpu, |name| eprintln!("  {name}"));
    let mut worst: std::collections::BTreeMap<(String, &'static str), Diff> = Default::default();
    for d in results.iter().flat_map(|r| &r.diffs) {
        let key = (d.op.clone(), d.dtype.name());
        let score = |x: &Diff| x.error / x.tolerance.max(1e-30);
        if worst.get(&key).is_none_or(|w| score(w) < score(d)) {
            worst.insert(key, d.clone());
        }
    }
    let mut t = Table::new(&[
        "op",
        "dtype",
        "outputs compared",
        "worst error",
        "tolerance",
        "where",
        "ok",
    ])
    .titled("Every op against the CPU backend: max |gpu − cpu| / max |cpu| per output, worst case");
    for ((op, dtype), d) in &worst {
        let count = results
            .iter()
            .flat_map(|r| &r.diffs)
            .filter(|x| &x.op == op && x.dtype.name() == *dtype)
            .count();
        t.row(vec![
            op.clone(),
            dtype.to_string(),
            count.to_string(),
            format!("{:.2e}", d.error),
            format!("{:.0e}", d.tolerance),
            d.label.clone(),
            if d.passed() { "yes" } else { "NO" }.into(),
        ]);
    }
    print!("{}", t.render());
    let failed: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
    println!(
        "\n{} scenarios, {} op outputs compared, {} scenario(s) failed ({:.1} s)",
        results.len(),
        results.iter().map(|r| r.diffs.len()).sum::<usize>(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    for r in &failed {
        match &r.error {
            Some(e) => println!("  FAILED {} {}: {e}", r.model, r.scenario),
            None => {
                let bad: Vec<String> = r
                    .diffs
                    .iter()
                    .filter(|d| !d.passed())
                    .take(4)
                    .map(|d| format!("{} ({}) {:.2e}", d.op, d.label, d.error))
                    .collect();
                println!("  FAILED {} {}: {}", r.model, r.scenario, bad.join(", "));
            }
        }
    }

    let agreement = conformance::model_agreement(&mut gpu);
    let mut t = Table::new(&["model", "dtype", "loss cpu", "loss gpu", "logits error", "gradient error", "tolerance", "ok"])
        .titled("Whole models, GPU alone against CPU alone (one forward and backward; last-position logits)");
    let mut model_failed = false;
    match &agreement {
        Ok(rows) => {
            for a in rows {
                model_failed |= !a.passed();
                t.row(vec![
                    a.model.clone(),
                    a.precision.clone(),
                    format!("{:.6}", a.loss_cpu),
                    format!("{:.6}", a.loss_gpu),
                    format!("{:.2e}", a.logits_error),
                    format!("{:.2e}", a.grad_error),
                    format!("{:.0e}", a.tolerance),
                    if a.passed() { "yes" } else { "NO" }.into(),
                ]);
            }
            print!("\n{}", t.render());
        }
        Err(e) => {
            model_failed = true;
            println!("\nwhole-model comparison failed: {e}");
        }
    }

    if let Some(path) = &args.out {
        let json = serde_json::json!({
            "provenance": super::model::provenance(),
            "device": { "name": info.name, "cc": [info.cc.0, info.cc.1], "sms": info.sms, "driver": info.driver_version },
            "scenarios": results.iter().map(|r| serde_json::json!({
                "model": r.model, "scenario": r.scenario, "passed": r.passed(), "error": r.error,
                "diffs": r.diffs.iter().map(diff_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "models": agreement.as_ref().ok().map(|rows| rows.iter().map(|a| serde_json::json!({
                "model": a.model, "precision": a.precision, "loss_cpu": a.loss_cpu, "loss_gpu": a.loss_gpu,
                "logits_error": a.logits_error, "grad_error": a.grad_error, "tolerance": a.tolerance, "passed": a.passed(),
            })).collect::<Vec<_>>()),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !failed.is_empty() || model_failed {
        bail!("conformance failed: see the rows marked NO above");
    }
    println!("\nall ops and models agree with the CPU backend within tolerance");
    Ok(())
}
