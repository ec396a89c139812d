//! `tperf attention`: the seed's naive-versus-flash benchmark. For each head dimension and
//! sequence length: forward and backward time and the memory the forward leaves for the
//! backward, modelled and measured; a size the model predicts will not fit is reported as out of
//! memory with the predicted bytes instead of being run into a crash.

use super::parse_positive;
use super::resolve_device;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use tperf_bench::attention::{self, AttentionRow};
use tperf_core::ops::attention::Attention;
use tperf_core::schedule::attention_only::AttentionOnly;
use tperf_core::schedule::{AttentionKernel, Precision};
use tperf_report::table::Table;
use tperf_report::units;

#[derive(clap::Args, Debug)]
pub struct AttentionArgs {
    #[arg(long, default_value_t = 8, value_parser = parse_positive)]
    pub batch: usize,
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    pub heads: usize,
    /// Head dimensions to sweep.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128", value_parser = parse_positive)]
    pub dims: Vec<usize>,
    /// Sequence lengths to sweep.
    #[arg(long, value_delimiter = ',', default_value = "256,1024,4096,8192,16384", value_parser = parse_positive)]
    pub seqs: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "naive,flash", value_parser = parse_attention)]
    pub kernels: Vec<AttentionKernel>,
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub dtype: Precision,
    /// Attend to every position instead of the causal prefix.
    #[arg(long)]
    pub bidirectional: bool,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 3, value_parser = parse_positive)]
    pub steps: usize,
    /// Predict only: no measurement.
    #[arg(long)]
    pub model_only: bool,
    /// cpu, cuda, cuda:N, or auto (the first GPU if there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// The hardware entry for the roofline (default: detected from the device).
    #[arg(long)]
    pub hw: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn parse_attention(s: &str) -> Result<AttentionKernel, tperf_core::error::UnknownName> {
    s.parse()
}
fn parse_precision(s: &str) -> Result<Precision, tperf_core::error::UnknownName> {
    s.parse()
}

pub fn cases(args: &AttentionArgs) -> Vec<AttentionOnly> {
    let mut out = Vec::new();
    for &d in &args.dims {
        for &t in &args.seqs {
            for &kernel in &args.kernels {
                out.push(AttentionOnly {
                    shape: Attention {
                        b: args.batch,
                        h: args.heads,
                        h_kv: args.heads,
                        tq: t,
                        tk: t,
                        d,
                        causal: !args.bidirectional,
                        window: None,
                        kv_cache: false,
                    },
                    kernel,
                    dtype: args.dtype.compute_dtype(),
                });
            }
        }
    }
    out
}

pub fn measure(args: &AttentionArgs) -> Result<Vec<AttentionRow>> {
    let device = if args.model_only {
        tperf_bench::device::Device::Cpu
    } else {
        resolve_device(&args.device)?
    };
    let hw = super::hardware_for(device, args.hw.as_deref())?;
    let cases = cases(args);
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cases  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for case in &cases {
        let a = case.shape;
        bar.set_message(format!("{} d={} T={}", case.kernel.name(), a.d, a.tq));
        let row = if args.model_only {
            AttentionRow {
                case: *case,
                predicted: attention::predict(case, &hw)?,
                measured: None,
                skipped: Some("--model-only".into()),
            }
        } else {
            attention::run(device, case, &hw, args.warmup, args.steps, || {})?
        };
        if let Some(why) = &row.skipped {
            if !args.model_only {
                bar.println(format!(
                    "{} d={} T={}: {why}",
                    case.kernel.name(),
                    a.d,
                    a.tq
                ));
            }
        }
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(rows)
}

pub fn table(rows: &[AttentionRow], title: String) -> Table {
    let ms = |s: f64| format!("{:.2}", s * 1e3);
    let mut t = Table::new(&[
        "kernel",
        "d",
        "T",
        "fwd ms",
        "fwd model",
        "bwd ms",
        "bwd model",
        "mem before bwd",
        "mem (model)",
        "status",
    ])
    .titled(title);
    for r in rows {
        let a = r.case.shape;
        let p = &r.predicted;
        let (f, b, mem) = match &r.measured {
            Some(m) => (
                ms(m.forward.median),
                ms(m.backward.median),
                units::bytes(m.memory_before_backward_bytes),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        t.row(vec![
            r.case.kernel.name().into(),
            a.d.to_string(),
            a.tq.to_string(),
            f,
            ms(p.forward_seconds),
            b,
            ms(p.backward_seconds),
            mem,
            units::bytes(p.memory_before_backward_bytes),
            r.skipped.clone().unwrap_or_else(|| "ran".into()),
        ]);
    }
    t.note("memory before bwd = bytes the forward leaves for the backward (output and probabilities or log-sum-exp), inputs excluded; model = Meta backend + roofline on this machine's detected peaks");
    t
}

pub fn run(args: AttentionArgs) -> Result<()> {
    let rows = measure(&args)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "provenance": super::model::provenance(),
                "rows": rows,
            }))?
        );
        return Ok(());
    }
    let title = format!(
        "Attention, batch {} × {} head(s), {}, {}; median of {} steps after {} warm-up",
        args.batch,
        args.heads,
        if args.bidirectional {
            "bidirectional"
        } else {
            "causal"
        },
        args.dtype.name(),
        args.steps,
        args.warmup
    );
    print!("{}", table(&rows, title).render());
    Ok(())
}
