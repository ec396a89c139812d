//! `tperf bench MODEL --ranks 1,2,4 --scaling weak|strong` (CPU processes, TCP collectives) and
//! `--gpus 1,2,4` (one process per GPU, NCCL): data-parallel training measured at each world
//! size N beside the model of the same step, the speedup and efficiency against N = 1, and the
//! communication the model says the backward does not hide.
//!
//! The measured side runs the real thing: for each N it starts `tperf train … --ranks N`
//! (`--gpus N`) as a child process, which launches its ranks through the ordinary launcher
//! (`launch.rs`), and reads the step times back from the run's CSV log. A child rather than
//! ranks driven from here: the launcher re-runs the binary with the arguments of the process
//! that launches it, so a bench that launched its own ranks would need a second rank role and a
//! second way of reporting times; through `train` the ranks, their data split, their loss
//! average and their failure handling are the ones a user's run has, and a run stays one fresh
//! set of processes per N (no state from the previous N, as a real job starts).
//!
//! The modelled side is the schedule `tperf model --gpus N` analyses: the DDP collectives are
//! ops of the step (`Options.data_parallel`), placed on the communication stream, so the step
//! time, the exposed communication and the overlap come from the same record, not a formula
//! beside it.

use super::bench::BenchArgs;
use crate::load;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tperf_bench::device::Device;
use tperf_bench::stats::Summary;
use tperf_core::config::ModelConfig;
use tperf_core::cost::analysis::{self, Scenario, Workload};
use tperf_core::cost::hardware::Hardware;
use tperf_core::schedule::{AttentionKernel, DataParallel, Options, Precision};
use tperf_report::table::Table;
use tperf_report::units;

/// How the batch grows with the world size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// --batch is per rank: the global batch is N × --batch, so ideal scaling keeps the step
    /// time constant.
    Weak,
    /// --batch is the global batch, split over the ranks: ideal scaling divides the step time
    /// by N.
    Strong,
}

impl Scaling {
    pub fn name(self) -> &'static str {
        match self {
            Scaling::Weak => "weak",
            Scaling::Strong => "strong",
        }
    }
}

/// Where the ranks run: CPU processes (`--ranks`) or one GPU each (`--gpus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ranks {
    Cpu,
    Gpu,
}

impl Ranks {
    fn flag(self) -> &'static str {
        match self {
            Ranks::Cpu => "--ranks",
            Ranks::Gpu => "--gpus",
        }
    }
}

/// One world size's measurement beside its model.
#[derive(Clone, Debug, Serialize)]
pub struct ScalingRow {
    /// N: ranks (processes, or GPUs).
    pub world: usize,
    /// B per rank.
    pub batch_per_rank: usize,
    /// N × B: the sequences of one optimizer step.
    pub global_batch: usize,
    pub seq: usize,
    /// Rank 0's wall time of each timed step (the log's dur_s), warm-up steps excluded.
    pub measured: Summary,
    /// The median of `measured`.
    pub measured_step_seconds: f64,
    /// The makespan of the data-parallel schedule over its compute and communication streams.
    pub modelled_step_seconds: f64,
    pub measured_tokens_per_s: f64,
    pub modelled_tokens_per_s: f64,
    /// tokens/s at N over tokens/s at N = 1: weak t1·N/tN, strong t1/tN.
    pub speedup: f64,
    pub modelled_speedup: f64,
    /// speedup / N: weak t1/tN, strong t1/(N·tN).
    pub efficiency: f64,
    pub modelled_efficiency: f64,
    /// Communication-stream busy time of the schedule (all buckets).
    pub modelled_comm_seconds: f64,
    /// The part of it the backward does not hide: makespan − compute stream.
    pub modelled_exposed_comm_seconds: f64,
    /// CPU ranks: the median over the timed steps of the seconds rank 0 spent inside
    /// collectives (`tperf train --comm-log`); they block, so all of it is exposed. None on GPUs,
    /// where NCCL runs them asynchronously and the host's time says nothing.
    pub measured_comm_seconds: Option<f64>,
}

/// One world size N and its batch per rank.
struct Planned {
    world: usize,
    batch_per_rank: usize,
}

/// The scaling settings read from the bench's flags, checked before anything runs.
struct Settings {
    ranks: Ranks,
    worlds: Vec<usize>,
    scaling: Scaling,
    model_spec: String,
    cfg: ModelConfig,
    batch: usize,
    seq: usize,
    warmup: usize,
    steps: usize,
    opts: Options,
    /// ZeRO-1 instead of DDP at N > 1 (`--zero1`).
    zero1: bool,
}

impl Settings {
    /// The data parallelism of one rank's step at world size `world`: none for a world of one
    /// (a single process, as `tperf train` without --ranks runs; ZeRO-1 of one rank shards
    /// nothing), else DDP or ZeRO-1 as asked.
    fn data_parallel(&self, world: usize) -> Option<DataParallel> {
        match (world, self.zero1) {
            (1, _) => None,
            (n, true) => Some(DataParallel::zero1(n)),
            (n, false) => Some(DataParallel::ddp(n)),
        }
    }

    /// The mode's name as the table and the JSON give it.
    fn mode(&self) -> &'static str {
        if self.zero1 {
            "ZeRO-1"
        } else {
            "DDP"
        }
    }
}

fn single<T: Copy>(values: &[T], flag: &str, default: T) -> Result<T> {
    match values {
        [] => Ok(default),
        [v] => Ok(*v),
        _ => bail!("{flag}: --scaling measures one setting at a time; give a single value"),
    }
}

fn settings(args: &BenchArgs) -> Result<Settings> {
    let (ranks, worlds) = match (args.ranks.is_empty(), args.gpus.is_empty()) {
        (false, true) => (Ranks::Cpu, args.ranks.clone()),
        (true, false) => (Ranks::Gpu, args.gpus.clone()),
        (true, true) => bail!(
            "--scaling needs the world sizes to measure: --ranks 1,2,4 (CPU processes) or --gpus 1,2,4 (one GPU each)"
        ),
        (false, false) => unreachable!("clap refuses --ranks with --gpus"),
    };
    let Some(scaling) = args.scaling else {
        bail!(
            "{} needs --scaling weak (--batch per rank) or --scaling strong (--batch is the global batch, split over the ranks)",
            ranks.flag()
        );
    };
    let mut worlds = worlds;
    worlds.sort_unstable();
    worlds.dedup();
    if worlds[0] != 1 {
        bail!(
            "{} {}: include 1 (e.g. {} 1,{}): speedup and efficiency are measured against one rank",
            ranks.flag(),
            join(&worlds),
            ranks.flag(),
            join(&worlds)
        );
    }
    if !args.sizes.is_empty() {
        bail!("--scaling measures one model: name it instead of --sizes");
    }
    let Some(model_spec) = args.model.clone() else {
        bail!("name a model (a preset or config.json) to measure its scaling");
    };
    let default_phases = [Workload::Forward, Workload::FwdBwd, Workload::Train];
    if args.phase != default_phases && args.phase != [Workload::Train] {
        bail!("--scaling measures data-parallel training steps: leave --phase out (or give --phase train)");
    }
    if args.no_fuse {
        bail!("--scaling runs `tperf train`, which always fuses: leave --no-fuse out");
    }
    if args.out.is_some() {
        bail!("--scaling writes its rows with --json PATH (or --csv); --out is for the step benchmark");
    }
    match (ranks, args.device.to_ascii_lowercase().as_str()) {
        (Ranks::Cpu, "cpu" | "auto") => {}
        (Ranks::Cpu, other) => bail!(
            "--ranks runs CPU processes, not --device {other}: use --gpus N for GPUs (or leave --device out)"
        ),
        (Ranks::Gpu, "auto" | "cuda") => {}
        (Ranks::Gpu, other) => bail!(
            "--gpus runs one process per GPU, cuda:0 … cuda:N−1, so --device {other} does not apply: leave --device out (or use --ranks N for CPU processes)"
        ),
    }
    let loaded = load::load(&model_spec)?;
    let batch = single(&args.batch, "--batch", loaded.default_batch)?;
    let seq = single(&args.seq, "--seq", loaded.default_seq)?;
    loaded
        .config
        .check_seq(seq)
        .with_context(|| format!("--seq {seq} for {}", loaded.config.name))?;
    let warmup = single(&args.warmup, "--warmup", 5)?;
    let precision = single(&args.dtype, "--dtype", Precision::Fp32)?;
    let attention = single(&args.attention, "--attention", AttentionKernel::Flash)?;
    // The options `tperf train` builds (kv cache off, fused), data parallelism added per N.
    let opts = Options {
        precision,
        attention,
        kv_cache: false,
        recompute: args.recompute,
        fused: true,
        data_parallel: None,
        grad_accum: 1,
    };
    Ok(Settings {
        ranks,
        worlds,
        scaling,
        model_spec,
        cfg: loaded.config,
        batch,
        seq,
        warmup,
        steps: args.steps,
        opts,
        zero1: args.zero1,
    })
}

fn join(worlds: &[usize]) -> String {
    worlds
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Each N's batch per rank; strong scaling refuses an N the global batch does not divide.
fn plan(s: &Settings) -> Result<Vec<Planned>> {
    s.worlds
        .iter()
        .map(|&world| {
            let batch_per_rank = match s.scaling {
                Scaling::Weak => s.batch,
                Scaling::Strong => {
                    if !s.batch.is_multiple_of(world) {
                        let fits = s.worlds.iter().copied().fold(1, lcm);
                        bail!(
                            "--scaling strong: the global batch --batch {} does not split over N = {world} ranks ({} / {world} is not whole); give a --batch that every N divides (e.g. {}), or leave {world} out of {}",
                            s.batch,
                            s.batch,
                            fits * s.batch.div_ceil(fits),
                            s.ranks.flag()
                        );
                    }
                    s.batch / world
                }
            };
            Ok(Planned {
                world,
                batch_per_rank,
            })
        })
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// The GPUs this machine has; an error naming the count when `largest` is more.
fn check_gpus(worlds: &[usize]) -> Result<()> {
    let largest = worlds.iter().copied().max().unwrap_or(1);
    let asked = join(worlds);
    match tperf_cuda::device_count() {
        Ok(n) if largest <= n => Ok(()),
        Ok(0) => bail!(
            "--gpus {asked} needs a CUDA device per rank, and this machine has no CUDA GPU (0 found); measure CPU processes with --ranks {asked} instead"
        ),
        Ok(n) => bail!(
            "--gpus {asked} needs a CUDA device per rank, and this machine has {n} CUDA GPU{} (cuda:0 … cuda:{}), fewer than {largest}; give world sizes up to {n}",
            if n == 1 { "" } else { "s" },
            n - 1
        ),
        Err(why) => bail!(
            "--gpus {asked} needs a CUDA device per rank, and no CUDA GPU can be used on this machine ({}); measure CPU processes with --ranks {asked} instead",
            tperf_core::error::report(&why)
        ),
    }
}

/// The hardware one rank runs on. A GPU rank has its GPU. CPU ranks share one host: each is
/// modelled on 1/N of the CPU entry's arithmetic rate and memory bandwidth (the bench gives each
/// rank 1/N of the cores, below), and exchanges at the entry's link bandwidth.
fn rank_hardware(host: &Hardware, ranks: Ranks, world: usize) -> Hardware {
    match ranks {
        Ranks::Gpu => host.clone(),
        Ranks::Cpu => {
            let share = 1.0 / world as f64;
            Hardware {
                peak_f32_flops: host.peak_f32_flops * share,
                peak_bf16_flops: host.peak_bf16_flops * share,
                peak_f16_flops: host.peak_f16_flops * share,
                mem_bw_bytes_per_s: host.mem_bw_bytes_per_s * share,
                ..host.clone()
            }
        }
    }
}

/// Rank 0's times of the timed steps of one run, in seconds.
struct Measured {
    step_seconds: Vec<f64>,
    /// Per step, the time inside collectives (CPU ranks only).
    comm_seconds: Option<Vec<f64>>,
}

/// Runs `tperf train` at world size `p.world` for warm-up + timed steps and returns rank 0's
/// times of the timed steps.
fn measure(s: &Settings, p: &Planned, dir: &Path) -> Result<Measured> {
    let log = dir.join(format!("n{}.csv", p.world));
    let comm_log = dir.join(format!("n{}-comm.csv", p.world));
    let total_steps = s.warmup + s.steps;
    let exe = std::env::current_exe().context("locating the tperf binary to run the ranks")?;
    let mut cmd = Command::new(exe);
    cmd.arg("train")
        .arg(&s.model_spec)
        .arg("--synthetic")
        .args(["--steps", &total_steps.to_string()])
        .args(["--batch", &p.batch_per_rank.to_string()])
        .args(["--seq", &s.seq.to_string()])
        .args(["--dtype", s.opts.precision.name()])
        .args(["--attention", s.opts.attention.name()])
        .args(["--recompute", s.opts.recompute.name()])
        .args(["--eval-every", "0"])
        .args(["--print-every", &total_steps.to_string()])
        .arg("--log")
        .arg(&log);
    match (s.ranks, p.world) {
        (Ranks::Cpu, n) => {
            // --ranks 1 is a single process, as without the flag; the flag lets every N log
            // its time in collectives (none at N = 1).
            // The launcher gives each of the N ranks cores/N threads (N = 1: all of them).
            cmd.args(["--device", "cpu", "--ranks", &n.to_string()])
                .arg("--comm-log")
                .arg(&comm_log);
        }
        (Ranks::Gpu, 1) => {
            cmd.args(["--device", "cuda:0"]);
        }
        (Ranks::Gpu, n) => {
            cmd.args(["--gpus", &n.to_string()]);
        }
    }
    if s.data_parallel(p.world).is_some_and(|dp| dp.zero1) {
        cmd.arg("--zero1");
    }
    // A bench started inside a launched job must not make its child a rank of that job.
    for var in tperf_runtime::comm::torchrun::ALL {
        cmd.env_remove(var);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `tperf train` for N = {}", p.world))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "the training run for N = {} ({} {}) failed ({}):\n{}",
            p.world,
            s.ranks.flag(),
            p.world,
            out.status,
            tail.join("\n")
        );
    }
    let timed = |path: &Path, column: &str| -> Result<Vec<f64>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the run's log {}", path.display()))?;
        let values = log_column(&text, column)
            .with_context(|| format!("the run's log {} for N = {}", path.display(), p.world))?;
        if values.len() != total_steps {
            bail!(
                "the training run for N = {} logged {} steps in {}, not the {total_steps} asked for",
                p.world,
                values.len(),
                path.display()
            );
        }
        Ok(values[s.warmup..].to_vec())
    };
    Ok(Measured {
        step_seconds: timed(&log, "dur_s")?,
        comm_seconds: match s.ranks {
            Ranks::Cpu => Some(timed(&comm_log, "comm_s")?),
            Ranks::Gpu => None,
        },
    })
}

/// A column of a `tperf train` log (`--log`'s dur_s, `--comm-log`'s comm_s), one value per
/// step in order.
fn log_column(csv: &str, name: &str) -> Result<Vec<f64>> {
    let mut lines = csv.lines();
    let header = lines.next().context("the log is empty")?;
    let column = header
        .split(',')
        .position(|c| c == name)
        .with_context(|| format!("no {name} column in its header '{header}'"))?;
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            line.split(',')
                .nth(column)
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("no {name} value in the row '{line}'"))
        })
        .collect()
}

/// The model of one rank's step at world size N, on the hardware that rank runs on.
struct Modelled {
    step_seconds: f64,
    comm_seconds: f64,
    exposed_comm_seconds: f64,
}

fn model(s: &Settings, p: &Planned, hw: &Hardware) -> Result<Modelled> {
    let sc = Scenario {
        workload: Workload::Train,
        batch: p.batch_per_rank,
        seq: s.seq,
        opts: Options {
            data_parallel: s.data_parallel(p.world),
            ..s.opts
        },
    };
    let a = analysis::analyze(&s.cfg, &sc, &rank_hardware(hw, s.ranks, p.world))?;
    Ok(Modelled {
        step_seconds: a.step_seconds(),
        comm_seconds: a.timing.comm_seconds,
        exposed_comm_seconds: a.timing.exposed_comm_seconds,
    })
}

/// A temporary folder for the runs' logs, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("tperf-scaling-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating a folder for the runs' logs, {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let s = settings(args)?;
    let planned = plan(&s)?;
    if s.ranks == Ranks::Gpu {
        check_gpus(&s.worlds)?;
    }
    if let Some(path) = args.json.as_deref().filter(|p| !super::bench::is_stdout(p)) {
        super::check_output_file(path, "--json")?;
    }
    let device = match s.ranks {
        Ranks::Cpu => Device::Cpu,
        Ranks::Gpu => Device::Cuda(0),
    };
    let hw = super::hardware_for(device, args.hw.as_deref())?;
    let scratch = Scratch::new()?;
    let mut rows: Vec<ScalingRow> = Vec::new();
    for p in &planned {
        let global_batch = p.batch_per_rank * p.world;
        eprintln!(
            "scaling: N = {} ({} {}), batch {} per rank, global {}: {} warm-up + {} timed steps",
            p.world,
            s.ranks.flag(),
            p.world,
            p.batch_per_rank,
            global_batch,
            s.warmup,
            s.steps
        );
        let m = model(&s, p, &hw)?;
        let times = measure(&s, p, &scratch.0)?;
        let measured = Summary::of(&times.step_seconds).context("no timed steps")?;
        let measured_comm = times
            .comm_seconds
            .as_deref()
            .and_then(Summary::of)
            .map(|c| c.median);
        let tokens = (global_batch * s.seq) as f64;
        let (measured_tps, modelled_tps) = (tokens / measured.median, tokens / m.step_seconds);
        let (base_tps, base_model_tps) = rows.first().map_or((measured_tps, modelled_tps), |r| {
            (r.measured_tokens_per_s, r.modelled_tokens_per_s)
        });
        let speedup = measured_tps / base_tps;
        let modelled_speedup = modelled_tps / base_model_tps;
        rows.push(ScalingRow {
            world: p.world,
            batch_per_rank: p.batch_per_rank,
            global_batch,
            seq: s.seq,
            measured,
            measured_step_seconds: measured.median,
            modelled_step_seconds: m.step_seconds,
            measured_tokens_per_s: measured_tps,
            modelled_tokens_per_s: modelled_tps,
            speedup,
            modelled_speedup,
            efficiency: speedup / p.world as f64,
            modelled_efficiency: modelled_speedup / p.world as f64,
            modelled_comm_seconds: m.comm_seconds,
            modelled_exposed_comm_seconds: m.exposed_comm_seconds,
            measured_comm_seconds: measured_comm,
        });
    }
    drop(scratch);
    let table = table(&s, &hw, &rows);
    match args.json.as_deref() {
        Some(path) => {
            // The command line too, which `tperf report --scaling` shows beside the run.
            let mut provenance = super::model::provenance();
            provenance["command_line"] = serde_json::json!(std::env::args().collect::<Vec<_>>());
            let doc = serde_json::json!({
                "provenance": provenance,
                "hardware": hw,
                "scaling": s.scaling,
                "mode": if s.zero1 { "zero1" } else { "ddp" },
                "ranks": match s.ranks { Ranks::Cpu => "cpu", Ranks::Gpu => "gpu" },
                "model": s.cfg.name,
                "warmup": s.warmup,
                "steps": s.steps,
                "rows": rows,
                "notes": table.notes,
            });
            let text = serde_json::to_string_pretty(&doc)?;
            if super::bench::is_stdout(path) {
                println!("{text}");
            } else {
                super::report::write_atomic(path, text.as_bytes())?;
                print!("{}", table.render());
                println!("rows written to {}", path.display());
            }
        }
        None if args.csv => print!("{}", table.to_csv()),
        None => print!("{}", table.render()),
    }
    Ok(())
}

const HEADER: [&str; 14] = [
    "N",
    "B/rank",
    "global B",
    "step ms",
    "model ms",
    "tokens/s",
    "model tokens/s",
    "speedup",
    "model speedup",
    "efficiency",
    "model eff.",
    "model comm ms",
    "model exposed ms",
    "comm ms",
];

fn table(s: &Settings, hw: &Hardware, rows: &[ScalingRow]) -> Table {
    let ms = |x: f64| format!("{:.2}", x * 1e3);
    let mut t = Table::new(&HEADER).titled(format!(
        "tperf bench --scaling {} — {} ({} params), {} over {} {}, T {}, {}; {} warm-up + {} timed steps per N (median); model = roofline on '{}' ({})",
        s.scaling.name(),
        s.cfg.name,
        units::params(s.cfg.param_count()),
        s.mode(),
        s.ranks.flag(),
        join(&s.worlds),
        s.seq,
        s.opts.precision.name(),
        s.warmup,
        s.steps,
        hw.key,
        hw.source
    ));
    for r in rows {
        t.row(vec![
            r.world.to_string(),
            r.batch_per_rank.to_string(),
            r.global_batch.to_string(),
            ms(r.measured_step_seconds),
            ms(r.modelled_step_seconds),
            format!("{:.0}", r.measured_tokens_per_s),
            format!("{:.0}", r.modelled_tokens_per_s),
            format!("{:.2}", r.speedup),
            format!("{:.2}", r.modelled_speedup),
            units::percent(r.efficiency),
            units::percent(r.modelled_efficiency),
            ms(r.modelled_comm_seconds),
            ms(r.modelled_exposed_comm_seconds),
            r.measured_comm_seconds.map_or("-".to_string(), ms),
        ]);
    }
    t.note(match s.scaling {
        Scaling::Weak => "weak scaling: --batch per rank; speedup = tokens/s over N = 1's = N·t1/tN; efficiency = t1/tN",
        Scaling::Strong => "strong scaling: --batch is the global batch, split over the ranks; speedup = t1/tN; efficiency = t1/(N·tN)",
    });
    t.note("step ms: rank 0's wall time per optimizer step in `tperf train`'s log (batch, forward, backward, gradient all-reduce, AdamW, the loss averaged over the ranks), warm-up steps excluded");
    t.note(if s.zero1 {
        "model comm ms: the communication stream's busy time in the schedule `tperf model --gpus N --zero1` analyses (each bucket's ring reduce-scatter, the norm's all-reduce, the weights' all-gathers); model exposed ms: the part the backward does not hide (step − compute stream)"
    } else {
        "model comm ms: the communication stream's busy time in the schedule `tperf model --gpus N` analyses (bucketed ring all-reduces); model exposed ms: the part the backward does not hide (step − compute stream)"
    });
    if s.zero1 {
        t.note("ZeRO-1 (--zero1): `tperf train --zero1` at N > 1; N = 1 is the plain step, which ZeRO-1 of one rank equals");
    }
    t.note(match s.ranks {
        Ranks::Cpu => "comm ms: the median per step of rank 0's wall time inside collectives (`tperf train --comm-log`: the gradient buckets and the loss average); the CPU backend runs them blocking, so it compares with model exposed ms; it includes waiting for the slower rank",
        Ranks::Gpu => "comm ms: not measured on GPUs (NCCL runs the all-reduces on their own stream; the host's time in them says nothing)",
    });
    if s.ranks == Ranks::Cpu {
        t.note(format!(
            "CPU ranks share this host: each runs with RAYON_NUM_THREADS = cores/N ({} core(s) here; the launcher's split, unless RAYON_NUM_THREADS was set) and is modelled on 1/N of '{}''s FLOP/s and memory bandwidth",
            super::launch::host_cores(),
            hw.key
        ));
        t.note(format!(
            "assumption: the model has no TCP link; communication is modelled as ring all-reduces at the link bandwidth of '{}', {} (not measured; the local CPU's entry sets it to half its estimated memory bandwidth, ranks on one host exchanging through DRAM). The ranks' TCP group is a star through rank 0 over loopback (2(N−1) messages of the whole bucket through rank 0, beside the ring's 2(N−1)/N per rank), whose cost the model does not see",
            hw.key,
            units::si(hw.link_bw_bytes_per_s, "B/s")
        ));
    } else {
        t.note(format!(
            "each GPU rank is modelled on '{}' with its link at {} per direction; NCCL's use of SMs and memory bandwidth is not modelled",
            hw.key,
            units::si(hw.link_bw_bytes_per_s, "B/s")
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_column_reads_a_column_by_name() {
        let log = "step,lr,loss,val_loss,tokens,dur_s,tokens_per_s,saved\n\
                   1,1e-4,5.5,,64,0.250000,256.0,false\n\
                   2,2e-4,5.4,,64,0.125000,512.0,false\n";
        assert_eq!(log_column(log, "dur_s").unwrap(), vec![0.25, 0.125]);
        assert_eq!(
            log_column("step,comm_s\n1,0.5\n", "comm_s").unwrap(),
            vec![0.5]
        );
        assert!(log_column("step,lr\n1,2\n", "dur_s").is_err());
        assert!(log_column("step,dur_s\n1,fast\n", "dur_s").is_err());
    }

    #[test]
    fn cpu_ranks_share_the_host_and_gpu_ranks_have_their_own() {
        let host = tperf_core::cost::hardware::find("h100-sxm").unwrap();
        let cpu4 = rank_hardware(&host, Ranks::Cpu, 4);
        assert_eq!(cpu4.peak_f32_flops, host.peak_f32_flops / 4.0);
        assert_eq!(cpu4.mem_bw_bytes_per_s, host.mem_bw_bytes_per_s / 4.0);
        assert_eq!(cpu4.link_bw_bytes_per_s, host.link_bw_bytes_per_s);
        assert_eq!(rank_hardware(&host, Ranks::Gpu, 4), host);
    }

    #[test]
    fn lcm_of_the_world_sizes_suggests_a_batch_that_every_n_divides() {
        assert_eq!([1, 2, 4].into_iter().fold(1, lcm), 4);
        assert_eq!([1, 2, 3].into_iter().fold(1, lcm), 6);
        assert_eq!(gcd(12, 18), 6);
    }
}
