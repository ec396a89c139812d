//! `tperf bench`: the seed's benchmark script in one command — warm-up, timed steps, mean, std,
//! median, min, max — for the forward pass, forward + backward, and the full training step, with
//! the model's prediction of the same schedule beside every measurement.

use super::{parse_positive, resolve_device};
use crate::load;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use tperf_bench::device::Device;
use tperf_bench::model::{self, BenchRow, Repeats};
use tperf_core::cost::analysis::{Scenario, Workload};
use tperf_core::ops::sampling::Sampling;
use tperf_core::schedule::{AttentionKernel, Options, Precision, Recompute};
use tperf_report::table::Table;
use tperf_report::units;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// A preset or config.json; or use --sizes for several presets.
    pub model: Option<String>,
    /// Several presets, one table: small,medium,large,xl,2.7B (instead of a model argument).
    #[arg(long, value_delimiter = ',', conflicts_with = "model")]
    pub sizes: Vec<String>,
    /// Passes to time: train (forward, backward, AdamW), fwd_bwd, forward, prefill, decode.
    #[arg(long, value_delimiter = ',', default_value = "forward,fwd_bwd,train", value_parser = parse_workload)]
    pub phase: Vec<Workload>,
    /// Batch sizes to sweep (default: the preset's).
    #[arg(long, value_delimiter = ',', value_parser = parse_positive)]
    pub batch: Vec<usize>,
    /// Sequence lengths to sweep (default: the preset's).
    #[arg(long, value_delimiter = ',', value_parser = parse_positive)]
    pub seq: Vec<usize>,
    /// Precision policies to sweep: fp32, bf16, fp16 (a list: fp32,bf16).
    #[arg(long, value_delimiter = ',', default_value = "fp32", value_parser = parse_precision)]
    pub dtype: Vec<Precision>,
    /// Attention kernels to sweep: naive, flash (a list: naive,flash).
    #[arg(long, value_delimiter = ',', default_value = "flash", value_parser = parse_attention)]
    pub attention: Vec<AttentionKernel>,
    /// Activation recomputation: none, selective or full.
    #[arg(long, default_value = "none", value_parser = parse_recompute)]
    pub recompute: Recompute,
    /// Run every op unfused.
    #[arg(long)]
    pub no_fuse: bool,
    /// Untimed warm-up steps; a list (0,1,2) answers how much warm-up matters.
    #[arg(long, value_delimiter = ',', default_value = "5")]
    pub warmup: Vec<usize>,
    /// Timed steps per row.
    #[arg(long, default_value_t = 10, value_parser = parse_positive)]
    pub steps: usize,
    /// cpu, cuda, cuda:N, or auto (the first GPU if there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// The hardware entry for the roofline (default: detected from the device).
    #[arg(long)]
    pub hw: Option<String>,
    /// Launch every op from the host in every step, instead of replaying each step from a CUDA
    /// graph captured after one warm-up step (graphs are on by default on GPUs).
    #[arg(long)]
    pub no_graphs: bool,
    /// Issue the timed steps back to back and synchronise once after the last, instead of after
    /// each: the host then issues a step while the device runs the one before (a pipelined
    /// generation loop; how the PyTorch decode peer times its CUDA-graph replays). Each step's
    /// time is the span over the steps, so std, min and max are not measured.
    #[arg(long)]
    pub back_to_back: bool,
    /// How prefill and decode steps draw their token: 0 is greedy (argmax, as the PyTorch decode
    /// peer does); above 0 a draw at that temperature over the whole vocabulary.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Append each finished row to this JSON-lines file as it completes (an interrupted run
    /// keeps the rows it finished).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Print the rows and their provenance as JSON; `--json PATH` writes them to PATH instead
    /// (atomically), as `bench serve --json PATH` does.
    #[arg(long, conflicts_with = "csv", num_args = 0..=1, default_missing_value = STDOUT, value_name = "PATH")]
    pub json: Option<std::path::PathBuf>,
    #[arg(long)]
    pub csv: bool,
    /// Data-parallel scaling over N CPU processes (collectives over TCP): runs `tperf train
    /// --ranks N` for each N of the list (1 included) and prints step time, tokens/s, speedup
    /// and efficiency against N = 1 beside the model's. Needs --scaling.
    #[arg(long, value_delimiter = ',', value_parser = parse_positive, conflicts_with = "gpus")]
    pub ranks: Vec<usize>,
    /// As --ranks, one process per GPU (NCCL): `tperf train --gpus N` for each N of the list;
    /// every N must be at most the GPUs this machine has.
    #[arg(long, value_delimiter = ',', value_parser = parse_positive)]
    pub gpus: Vec<usize>,
    /// With --ranks/--gpus: weak (--batch per rank, the global batch grows with N) or strong
    /// (--batch is the global batch, split over the ranks; every N must divide it).
    #[arg(long, value_enum)]
    pub scaling: Option<super::scaling::Scaling>,
    /// With --scaling: ZeRO-1 instead of DDP (`tperf train --zero1`: gradients
    /// reduce-scattered, each rank updating its 1/N shard of AdamW's state, the weights
    /// all-gathered), measured and modelled. N = 1 runs the plain step.
    #[arg(long, requires = "scaling")]
    pub zero1: bool,
}

/// The `--json` value that means "print to standard output" (what `--json` alone gives).
const STDOUT: &str = "-";

/// Whether a `--json` value asks for standard output rather than a file.
pub fn is_stdout(path: &std::path::Path) -> bool {
    path.as_os_str() == STDOUT
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Benchmark an OpenAI-compatible server (vLLM's `bench serve`): TTFT, TPOT, ITL, E2EL,
    /// throughput, goodput, per-client fairness; with --model-config, the prediction beside it.
    Serve(Box<super::serve_bench::ServeBenchArgs>),
}

fn parse_workload(s: &str) -> Result<Workload, tperf_core::error::UnknownName> {
    s.parse()
}
fn parse_precision(s: &str) -> Result<Precision, tperf_core::error::UnknownName> {
    s.parse()
}
fn parse_attention(s: &str) -> Result<AttentionKernel, tperf_core::error::UnknownName> {
    s.parse()
}
fn parse_recompute(s: &str) -> Result<Recompute, tperf_core::error::UnknownName> {
    s.parse()
}

pub struct Planned {
    pub cfg: tperf_core::config::ModelConfig,
    pub sc: Scenario,
    pub warmup: usize,
}

pub fn plan(args: &BenchArgs) -> Result<Vec<Planned>> {
    let specs: Vec<String> = if !args.sizes.is_empty() {
        args.sizes.clone()
    } else if let Some(m) = &args.model {
        vec![m.clone()]
    } else {
        bail!("name a model (a preset or config.json) or give --sizes small,medium,…");
    };
    let base = Options {
        recompute: args.recompute,
        fused: !args.no_fuse,
        ..Options::default()
    };
    let (dtypes, attentions) = (args.dtype.clone(), args.attention.clone());
    let mut out = Vec::new();
    for spec in &specs {
        let m = load::load(spec)?;
        let batches = if args.batch.is_empty() {
            vec![m.default_batch]
        } else {
            args.batch.clone()
        };
        let seqs = if args.seq.is_empty() {
            vec![m.default_seq]
        } else {
            args.seq.clone()
        };
        for &seq in &seqs {
            m.config
                .check_seq(seq)
                .with_context(|| m.config.name.clone())?;
            for &batch in &batches {
                for &precision in &dtypes {
                    for &attention in &attentions {
                        for &workload in &args.phase {
                            for &warmup in &args.warmup {
                                let opts = Options {
                                    precision,
                                    attention,
                                    ..base
                                };
                                out.push(Planned {
                                    cfg: m.config.clone(),
                                    sc: Scenario {
                                        workload,
                                        batch,
                                        seq,
                                        opts,
                                    },
                                    warmup,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

pub fn row_cells(r: &BenchRow) -> Vec<String> {
    let ms = |s: f64| format!("{:.2}", s * 1e3);
    let sc = &r.scenario;
    vec![
        r.model.clone(),
        sc.workload.name().to_string(),
        sc.batch.to_string(),
        sc.seq.to_string(),
        sc.opts.precision.name().to_string(),
        sc.opts.attention.name().to_string(),
        r.repeats.warmup.to_string(),
        ms(r.measured.mean),
        ms(r.measured.std),
        ms(r.measured.median),
        r.replay_host_seconds.map_or("-".to_string(), ms),
        ms(r.measured.min),
        ms(r.measured.max),
        ms(r.modelled_seconds),
        format!("{:.1}", r.ratio_to_model()),
        format!("{:.1}", r.achieved_flops_per_s / 1e9),
        units::percent(r.mfu),
        format!("{:.0}", r.tokens_per_s),
        units::bytes(r.peak_bytes_measured),
        units::bytes(r.peak_bytes_modelled),
    ]
}

pub const HEADER: [&str; 20] = [
    "model",
    "phase",
    "B",
    "T",
    "dtype",
    "attn",
    "warmup",
    "mean ms",
    "std ms",
    "median ms",
    "host ms",
    "min ms",
    "max ms",
    "model ms",
    "×model",
    "GFLOP/s",
    "MFU",
    "tokens/s",
    "peak",
    "peak (model)",
];

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(BenchCommand::Serve(serve)) = args.command {
        return super::serve_bench::run(*serve, std::env::args().collect());
    }
    if !args.ranks.is_empty() || !args.gpus.is_empty() || args.scaling.is_some() {
        return super::scaling::run(&args);
    }
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!(
            "--temperature {} is not valid: use 0 (greedy) or a positive number",
            args.temperature
        );
    }
    let device = resolve_device(&args.device)?;
    let hw = super::hardware_for(device, args.hw.as_deref())?;
    let planned = plan(&args)?;
    let method = model::Method {
        graphs: !args.no_graphs,
        timing: if args.back_to_back {
            model::Timing::BackToBack
        } else {
            model::Timing::Synced
        },
        sampling: Sampling {
            temperature: args.temperature,
            ..Sampling::default()
        },
    };
    if let Some(path) = &args.out {
        super::check_output_file(path, "--out")?;
    }
    if let Some(path) = args.json.as_deref().filter(|p| !is_stdout(p)) {
        super::check_output_file(path, "--json")?;
    }
    let repeats_total: u64 = planned.iter().map(|p| (p.warmup + args.steps) as u64).sum();
    let mut out_file = match &args.out {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| {
                    format!(
                        "cannot open {} for writing (choose another --out)",
                        path.display()
                    )
                })?,
        ),
        None => None,
    };
    let bar = ProgressBar::new(repeats_total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut table = Table::new(&HEADER).titled(format!(
        "tperf bench on {} — {} warm-up, {} timed steps per row; model = roofline on '{}' ({})",
        device,
        args.warmup
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        args.steps,
        hw.key,
        hw.source
    ));
    // A step of a larger model can take minutes: the spinner and clock keep moving between
    // steps on a terminal; elsewhere (a log, CI, a pipe) each row prints a line.
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    let plain = !std::io::stderr().is_terminal();
    let mut rows = Vec::new();
    let sampler = tperf_bench::utilisation::start_for(device);
    let mut skipped = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        let what = format!(
            "{} {} B{} T{} {} warm-up {}",
            p.cfg.name,
            p.sc.workload.name(),
            p.sc.batch,
            p.sc.seq,
            p.sc.opts.precision.name(),
            p.warmup
        );
        if plain {
            eprintln!(
                "bench row {}/{}: {what} ({} steps)",
                i + 1,
                planned.len(),
                p.warmup + args.steps
            );
        }
        bar.set_message(what);
        if let Err(e) = super::check_fits(device, &p.cfg, &p.sc) {
            let why = format!("skipped: {e:#}");
            bar.println(&why);
            table.note(why);
            skipped.push(format!("{e:#}"));
            bar.inc((p.warmup + args.steps) as u64);
            continue;
        }
        let repeats = Repeats {
            warmup: p.warmup,
            steps: args.steps,
        };
        let row = model::run_with(device, method, &p.cfg, &p.sc, &hw, repeats, |_| bar.inc(1))?;
        if let Some(f) = &mut out_file {
            writeln!(f, "{}", serde_json::to_string(&row)?).context("writing --out")?;
            f.flush().context("writing --out")?;
        }
        table.row(row_cells(&row));
        rows.push(row);
    }
    bar.finish_and_clear();
    // A sweep keeps the rows that fit; a bench of which nothing fits is refused.
    if rows.is_empty() && !skipped.is_empty() {
        bail!("{}", skipped.join("\n"));
    }
    let utilisation = tperf_bench::utilisation::finish(sampler);
    if let Some(note) = graphs_note(&rows) {
        table.note(note);
    }
    if planned
        .iter()
        .any(|p| matches!(p.sc.workload, Workload::Prefill | Workload::Decode))
    {
        table.note(if args.temperature == 0.0 {
            "prefill and decode steps sample greedily (argmax)".to_string()
        } else {
            format!(
                "prefill and decode steps sample at temperature {} over the whole vocabulary (--temperature 0: greedy)",
                args.temperature
            )
        });
    }
    if args.back_to_back {
        table.note("back to back: the timed steps of a row ran with one synchronisation after the last, each step's time their span over their number (std, min and max are not measured); the host issued each step while the device ran the one before".to_string());
    }
    table.note(match device {
        Device::Cpu => "×model = measured median / modelled roofline time; host ms is for CUDA graph replays only; peak = bytes in use at the tensors' dtype widths (on the CPU, bf16 weights are held in 16 bits and other bf16 tensors in f32)",
        Device::Cuda(_) if args.back_to_back => "×model = measured median / modelled roofline time; host ms = median host time of a graph-replayed step, begin_step to the return of cuGraphLaunch (back to back, the device runs the step before meanwhile; - where no step was replayed); peak = bytes of live tensors at their dtype widths (the caching allocator's reserve is larger)",
        Device::Cuda(_) => "×model = measured median / modelled roofline time; each step is timed with the device synchronised after it; host ms = median host time of a graph-replayed step, begin_step to the return of cuGraphLaunch (the device idles meanwhile; - where no step was replayed); peak = bytes of live tensors at their dtype widths (the caching allocator's reserve is larger)",
    });
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "provenance": super::model::provenance(),
            "hardware": hw,
            "rows": rows,
            "utilisation": utilisation,
        }))?;
        if is_stdout(path) {
            println!("{text}");
        } else {
            super::report::write_atomic(path, text.as_bytes())?;
            print!("{}", table.render());
            println!("{}", utilisation.line());
            println!("rows written to {}", path.display());
        }
    } else if args.csv {
        print!("{}", table.to_csv());
    } else {
        print!("{}", table.render());
        println!("{}", utilisation.line());
    }
    Ok(())
}

/// What CUDA graphs did over all rows: how many steps were replayed, and why any step kind was
/// not captured. None on the CPU.
pub fn graphs_note(rows: &[BenchRow]) -> Option<String> {
    let mut graphs = rows.iter().filter_map(|r| r.graphs.as_ref()).peekable();
    graphs.peek()?;
    let mut total = tperf_cuda::GraphStats::default();
    graphs.for_each(|g| total.add(g));
    Some(total.summary())
}
