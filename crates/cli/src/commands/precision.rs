//! `tperf precision`: mixed precision with numbers. The numerics live in
//! `tperf_core::precision`; this command prints them, or emits them as JSON.

use crate::load;
use anyhow::Result;
use serde_json::json;
use std::collections::BTreeMap;
use tperf_core::precision::{
    self, Float, NormStatsCase, PolicyDtypes, NORM_MAGNITUDES, NORM_WIDTHS,
};
use tperf_core::schedule::Precision;
use tperf_core::tensor::MemCategory;
use tperf_report::table::Table;

#[derive(clap::Args, Debug)]
pub struct PrecisionArgs {
    /// The model whose schedule the dtype table is read from (a preset or a config.json).
    #[arg(long, default_value = "small")]
    pub model: String,
    /// Print everything as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Small shapes suffice: the dtypes do not depend on batch or sequence length.
const POLICY_BATCH: usize = 1;
const POLICY_SEQ: usize = 16;

pub const POLICIES: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Fp16];

/// The six (precision, training?) schedules, training first.
pub fn policies(cfg: &tperf_core::config::ModelConfig) -> Result<Vec<PolicyDtypes>> {
    let mut out = Vec::new();
    for training in [true, false] {
        for p in POLICIES {
            out.push(precision::policy_dtypes(
                cfg,
                p,
                training,
                POLICY_BATCH,
                POLICY_SEQ.min(cfg.context),
            )?);
        }
    }
    Ok(out)
}

/// Everything the command shows, as data: also the `precision` section of a results document.
pub fn to_json(model: &str, policies: &[PolicyDtypes]) -> serde_json::Value {
    json!({
        "accumulation": precision::accumulation_experiment(),
        "policies": { "model": model, "schedules": policies },
        "norm_statistics": {
            "eps": precision::NORM_EPS,
            "fp16_max": Float::F16.max_finite(),
            "cases": precision::norm_stats_experiment(&NORM_WIDTHS, &NORM_MAGNITUDES),
        },
    })
}

pub fn run(args: PrecisionArgs) -> Result<()> {
    let loaded = load::load(&args.model)?;
    let pol = policies(&loaded.config)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&loaded.config.name, &pol))?
        );
        return Ok(());
    }
    print!("{}", accumulation_table().render());
    println!();
    print!("{}", policy_table(&loaded.config.name, &pol).render());
    println!();
    print!("{}", norm_table().render());
    Ok(())
}

pub fn accumulation_table() -> Table {
    let mut t = Table::new(&[
        "PyTorch",
        "values",
        "sum in",
        "prints",
        "result",
        "error vs 10",
    ])
    .titled("Summing 0.01 a thousand times (the seed's mixed_precision_accumulation)");
    for c in precision::accumulation_experiment() {
        t.row(vec![
            c.code.to_string(),
            c.value_dtype.name().to_string(),
            c.accumulator.name().to_string(),
            c.torch_repr.clone(),
            format!("{:.9}", c.result),
            format!("{:+.3e}", c.error),
        ]);
    }
    t.note("every addition rounds to the accumulator's format (round to nearest even), as the hardware does");
    t.note("a 16-bit sum stalls once half its spacing exceeds the term: fp16 above 8 adds 2^-7 per step, bf16 above 4 adds nothing");
    t.note("16-bit values into an fp32 sum err only by the value's own rounding (fp16 0.01 = 0.0100021…, bf16 0.01 = 0.0100098…)");
    t
}

fn dtype_cell(p: &PolicyDtypes, category: MemCategory, role: &str) -> String {
    let d = p.dtypes_of(category, role);
    if d.is_empty() {
        "-".to_string()
    } else {
        d.iter().map(|d| d.name()).collect::<Vec<_>>().join("/")
    }
}

pub fn policy_table(model: &str, pol: &[PolicyDtypes]) -> Table {
    let mut header = vec!["category".to_string(), "tensor".to_string()];
    for p in pol {
        header.push(format!(
            "{} {}",
            p.precision.name(),
            if p.training { "train" } else { "infer" }
        ));
    }
    let mut t = Table {
        header,
        ..Table::default()
    }
    .titled(format!(
        "Dtype of every tensor by precision policy, read from the schedule of {model} on the Meta backend (train: one step; infer: one prefill)"
    ));
    // Every (category, role) that any schedule allocates, in category order.
    let mut roles: BTreeMap<(MemCategory, String), ()> = BTreeMap::new();
    for p in pol {
        for r in &p.roles {
            roles.insert((r.category, r.role.clone()), ());
        }
    }
    for (category, role) in roles.keys() {
        let mut row = vec![category.name().to_string(), role.clone()];
        row.extend(pol.iter().map(|p| dtype_cell(p, *category, role)));
        t.row(row);
    }
    let mut bpp = vec![
        "".to_string(),
        "bytes per parameter (weights + gradients + AdamW)".to_string(),
    ];
    bpp.extend(pol.iter().map(|p| format!("{}", p.bytes_per_param)));
    t.row(bpp);
    t.note("h*.<name>: that buffer in every block; .stats are the norms' mean/rstd, .lse attention's log-sum-exp: fp32 under every policy");
    t.note("mixed training: fp32 master weights, gradients and AdamW moments plus a 16-bit copy the passes read: 4 + 2 + 4 + 8 = 18 B/param");
    t.note(format!(
        "fp16 training scales the loss gradient by S = {} (gradients carry S; AdamW divides it out and skips a step whose gradient norm overflowed); fp32 and bf16 use S = 1",
        tperf_core::schedule::FP16_LOSS_SCALE
    ));
    t
}

/// A relative error; an overflowed statistic shows what the kernel would have produced.
fn err_cell(c: &NormStatsCase, v: f64) -> String {
    if !v.is_finite() {
        "inf (overflow)".to_string()
    } else if c.overflow && v == 1.0 {
        "1.0e0 (rstd = 0)".to_string()
    } else {
        format!("{v:.1e}")
    }
}

pub fn norm_table() -> Table {
    let mut t = Table::new(&[
        "C",
        "|x| ~",
        "stored",
        "sums in",
        "mean rel err",
        "var rel err",
        "rstd rel err",
        "RMSNorm rstd rel err",
        "overflow",
    ])
    .titled("LayerNorm / RMSNorm statistics of one activation row, against an f64 reference");
    for c in precision::norm_stats_experiment(&NORM_WIDTHS, &NORM_MAGNITUDES) {
        t.row(vec![
            c.width.to_string(),
            format!("{:.0e}", c.magnitude),
            c.input.name().to_string(),
            c.accumulator.name().to_string(),
            err_cell(&c, c.mean.rel_error),
            err_cell(&c, c.variance.rel_error),
            err_cell(&c, c.rstd.rel_error),
            err_cell(&c, c.rms_rstd.rel_error),
            if c.overflow { "yes" } else { "" }.to_string(),
        ]);
    }
    t.note(format!(
        "x = |x|·(0.25 + z), z ~ N(0,1); sequential sums, two-pass variance, every operation rounded to the accumulator; fp16's largest value is {}",
        Float::F16.max_finite()
    ));
    t.note("fp16 sums of squares overflow (768 · 100² > 65504) and 1/√∞ = 0; bf16 has fp32's range but an 8-bit significand: tens of percent off at C = 4096");
    t.note("16-bit storage with fp32 sums (what autocast does for norms) stays within a few 1e-6: the reason norms run in fp32");
    t
}
