//! `tperf train`: train a model for real on the CPU backend, with a progress bar, held-out
//! evaluation, atomic checkpoints, exact resumption and a Ctrl-C that saves before it exits.

use super::launch::{self, Role};
use super::{parse_attention, parse_precision, parse_recompute, Interrupted};
use crate::load;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tperf_bench::device::{Device, Instrumented};
use tperf_core::comm::{Communicator, Solo};
use tperf_core::config::ModelConfig;
use tperf_core::cost::analysis::{self, Scenario, Workload};
use tperf_core::schedule::{
    AttentionKernel, DataParallel, Options, Precision, Recompute, Transformer,
};
use tperf_cpu::CpuBackend;
use tperf_cuda::CudaBackend;
use tperf_report::plots::{line_plot, LinePlot, Series};
use tperf_report::units;
use tperf_runtime::checkpoint;
use tperf_runtime::data::{Corpus, Loader, SyntheticLoader, TextLoader};
use tperf_runtime::data_parallel::RankStepper;
use tperf_runtime::hf;
use tperf_runtime::stepper::ModelStepper;
use tperf_runtime::tokenizer::Tokenizer;
use tperf_runtime::train::{self as driver, RunPaths, StepRecord, StopFlag, TrainConfig};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// A preset (see `tperf model --list`), a config.json (Hugging Face or tperf's own), or a
    /// Hugging Face model folder, whose weights the run starts from (fine-tuning) and whose
    /// tokenizer.json it uses.
    pub model: String,
    /// A UTF-8 text file to train on; its last --val-fraction is held out for evaluation.
    #[arg(long, conflicts_with = "synthetic")]
    pub data: Option<PathBuf>,
    /// Train on uniformly random tokens (a speed run: nothing can be learned from them).
    #[arg(long)]
    pub synthetic: bool,
    /// Optimizer steps in the whole run (a resumed run counts the steps already taken).
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Sequences per step (B).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence (T); at most the model's context.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 6e-4)]
    pub lr: f64,
    /// Warm-up steps (default: a tenth of --steps, at most 100).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// The cosine decay's floor as a fraction of --lr.
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Evaluate the held-out loss every N steps and after the last; 0 never.
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Batches per evaluation.
    #[arg(long, default_value_t = 20)]
    pub eval_batches: usize,
    /// The fraction of the text held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Save a checkpoint here (atomically) every --checkpoint-every steps, at the end, and on
    /// Ctrl-C.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// 0 saves only at the end and on Ctrl-C.
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Continue the run saved in this checkpoint, exactly where it stopped (same data, order
    /// and optimizer state). Saves back to it unless --checkpoint says otherwise.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop after this step, saving a checkpoint, as if interrupted there: the learning rate
    /// follows the whole --steps schedule, so resuming later gives exactly the unbroken run.
    #[arg(long)]
    pub stop_at: Option<u64>,
    /// Also write the trained weights as a Hugging Face `save_pretrained` folder here (with the
    /// source folder's config and tokenizer), which transformers loads; the model must be a
    /// Hugging Face folder.
    #[arg(long)]
    pub save_hf: Option<PathBuf>,
    /// Replace an existing --checkpoint file that this run does not resume.
    #[arg(long)]
    pub overwrite: bool,
    /// With --resume: continue even though flags that change the run (batch, lr, schedule,
    /// seed, dtype, …) differ from the checkpoint's, saying which. Without it a difference is an
    /// error, since the run would no longer be the exact continuation.
    #[arg(long = "override", requires = "resume")]
    pub override_flags: bool,
    /// Per-step records as CSV (step, lr, loss, val_loss, tokens/s, …); default: beside the
    /// checkpoint, <checkpoint>.csv. A resumed run appends.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// With --ranks N: per step, the seconds rank 0 spent inside collectives, as CSV (step,
    /// comm_s): the gradient all-reduces and the loss average, on steps that evaluate or save
    /// their exchanges too. The CPU backend runs collectives blocking, so this is communication
    /// no compute hid, waiting for slower ranks included. (On GPUs NCCL runs them on its own
    /// stream, where host time says nothing: not available with --gpus.)
    #[arg(long, value_name = "PATH")]
    pub comm_log: Option<PathBuf>,
    /// gpt2 or byte (default: the checkpoint's when resuming, else gpt2 when the vocabulary
    /// holds it, else byte).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Precision policy: fp32, or bf16/fp16 compute with fp32 master weights.
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub dtype: Precision,
    /// Attention kernel: naive or flash.
    #[arg(long, default_value = "flash", value_parser = parse_attention)]
    pub attention: AttentionKernel,
    /// Activation recomputation: none, selective or full.
    #[arg(long, default_value = "none", value_parser = parse_recompute)]
    pub recompute: Recompute,
    /// Seeds the weights and the data order.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// cpu, cuda, cuda:N, or auto (the first GPU if there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print a plain progress line every N steps when stderr is not a terminal (default: about
    /// 50 lines per run).
    #[arg(long)]
    pub print_every: Option<u64>,
    /// Train data-parallel on N GPUs of this machine: one process per GPU, gradients averaged
    /// over NCCL (DDP). --batch is per GPU; the global batch is N × --batch.
    #[arg(long, conflicts_with = "ranks")]
    pub gpus: Option<usize>,
    /// Train data-parallel in N CPU processes, gradients averaged over TCP (DDP, to study it
    /// without GPUs). --batch is per rank. The ranks share the cores: each gets
    /// RAYON_NUM_THREADS = cores / N (at least 1) unless RAYON_NUM_THREADS is set.
    #[arg(long)]
    pub ranks: Option<usize>,
    /// With --gpus/--ranks: ZeRO-1 instead of DDP — gradients reduce-scattered, each rank's
    /// AdamW updating its 1/N shard of the optimizer state, the weights all-gathered. The same
    /// steps as DDP; AdamW's moments take 1/N of the memory per rank. Checkpoints hold the whole
    /// state and resume on any N.
    #[arg(long)]
    pub zero1: bool,
    /// Gradient accumulation: K forward/backward micro-steps of --batch sequences per
    /// optimizer step (the gradients reduced across ranks on the last only). The step's batch
    /// is K × --batch per rank; the same steps as --batch K×B without it, in the memory of B
    /// (plus an f32 accumulator per parameter).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub grad_accum: u64,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let mut args = args;
    let rank = match launch::role(args.gpus.or(args.ranks))? {
        Role::Launcher { world } => {
            if args.gpus.is_some() {
                if args.device == "cpu" {
                    bail!("--gpus trains on GPUs; use --ranks N for CPU processes");
                }
                // Every GPU must be there before any rank starts: the last one names the count.
                super::resolve_device(&format!("cuda:{}", world - 1))
                    .with_context(|| format!("--gpus {world}"))?;
            }
            let device = if args.gpus.is_some() {
                launch::RankDevice::Gpu
            } else {
                launch::RankDevice::Cpu
            };
            return launch::run(world, device);
        }
        Role::Rank(rv) => Some(rv),
        Role::Single => None,
    };
    let device = match &rank {
        // Each rank drives its own GPU (LOCAL_RANK), or the CPU.
        Some(rv) if args.ranks.is_none() && args.device != "cpu" => {
            super::resolve_device(&format!("cuda:{}", launch::local_rank(rv)))?
        }
        _ => super::resolve_device(&args.device)?,
    };
    // --batch is per rank; the loader and the loop see the global batch, of which each rank
    // trains its rows (RankStepper).
    let world = rank.as_ref().map_or(1, |rv| rv.world);
    let per_rank_batch = args.batch;
    let micro_steps = args.grad_accum as usize;
    // The loader's batch is the optimizer step's: every rank's K micro-batches.
    args.batch *= world * micro_steps;
    let mut cfg = load::load(&args.model)?.config;
    let hf_model = if hf::is_model_dir(Path::new(&args.model)) {
        let m = hf::HfModel::open(Path::new(&args.model))?;
        cfg = m.config.clone();
        Some(m)
    } else {
        if args.save_hf.is_some() {
            bail!("--save-hf needs a Hugging Face model folder as the model (its config and tokenizer are copied)");
        }
        None
    };
    // When resuming, the checkpoint's metadata says which model and tokenizer the run has; a
    // different model is refused by name of the first field that differs.
    let resume_meta = match &args.resume {
        Some(path) => Some(
            checkpoint::read_metadata(path)
                .with_context(|| format!("--resume {}", path.display()))?,
        ),
        None => None,
    };
    if let (Some(meta), Some(path)) = (&resume_meta, &args.resume) {
        // A preset's name and a config.json's name differ for the same architecture; only the
        // shape has to match.
        if let Some((field, saved, now)) = checkpoint::first_difference(&meta.config, &cfg) {
            bail!(
                "--resume {} holds {} ({} params), not {} ({} params): {field} is {saved} in the checkpoint but {now} in {}; resume with the checkpoint's model",
                path.display(),
                meta.config.name,
                units::params(meta.config.param_count()),
                cfg.name,
                units::params(cfg.param_count()),
                args.model
            );
        }
        cfg.name = meta.config.name.clone();
    }
    cfg.check_seq(args.seq)
        .with_context(|| format!("--seq {} for {}", args.seq, cfg.name))?;
    let tokenizer_name = match (&args.tokenizer, &resume_meta) {
        (Some(name), _) => name.clone(),
        (None, Some(meta)) => meta.run.tokenizer.clone(),
        (None, None) => Tokenizer::default_for(&cfg).name().to_string(),
    };
    // A folder's own tokenizer.json, unless --tokenizer names another.
    let tokenizer = match (
        &args.tokenizer,
        hf_model.as_ref().and_then(|m| m.tokenizer.clone()),
    ) {
        (None, Some(t)) => t,
        _ => Tokenizer::from_name(&tokenizer_name)?,
    };
    tokenizer.check_model(&cfg)?;

    let checkpoint_path = args.checkpoint.clone().or_else(|| args.resume.clone());
    // Every path the run will write is checked now, not after the last step.
    if let Some(path) = &args.checkpoint {
        super::check_output_file(path, "--checkpoint")?;
    }
    if let Some(path) = &args.resume {
        super::check_output_file(path, "--resume")?;
    }
    if let Some(path) = &checkpoint_path {
        let resumes_it = args.resume.as_deref() == Some(path.as_path());
        if path.exists() && !resumes_it && !args.overwrite {
            bail!(
                "{} already exists: pass --resume {} to continue that run, or --overwrite to replace it",
                path.display(),
                path.display()
            );
        }
    }
    let log_path = args
        .log
        .clone()
        .or_else(|| checkpoint_path.as_ref().map(|p| p.with_extension("csv")));
    if let Some(path) = &log_path {
        super::check_output_file(path, "--log")?;
    }
    if let Some(path) = &args.comm_log {
        if args.ranks.is_none() {
            bail!("--comm-log times the collectives of CPU ranks: give --ranks N (on GPUs NCCL runs them asynchronously, so the host's time in them says nothing)");
        }
        super::check_output_file(path, "--comm-log")?;
    }

    let warmup = args.warmup.unwrap_or_else(|| (args.steps / 10).min(100));
    let tcfg = TrainConfig {
        steps: args.steps,
        batch: args.batch,
        seq: args.seq,
        lr: args.lr,
        warmup_steps: warmup,
        min_lr_ratio: args.min_lr_ratio,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        checkpoint_every: args.checkpoint_every,
        seed: args.seed,
        stop_at: args.stop_at,
    };
    tcfg.validate()?;
    let flags = run_flags(&args, warmup, &tokenizer);
    if let (Some(meta), Some(path)) = (&resume_meta, &args.resume) {
        check_resume_flags(path, meta, &flags, args.override_flags)?;
    }

    let data = load_data(&args, &cfg, &tokenizer)?;
    let opts = Options {
        precision: args.dtype,
        attention: args.attention,
        kv_cache: false,
        recompute: args.recompute,
        fused: true,
        data_parallel: (world > 1).then(|| {
            if args.zero1 {
                DataParallel::zero1(world)
            } else {
                DataParallel::ddp(world)
            }
        }),
        grad_accum: micro_steps,
    };
    // The schedule's FLOPs per step, from the same op calls the backend will run, on every rank.
    let sc = Scenario {
        workload: Workload::Train,
        batch: per_rank_batch,
        seq: args.seq,
        opts,
    };
    super::check_fits(device, &cfg, &sc)?;
    let record = analysis::record(&cfg, &sc)?;
    let flops_per_step: u64 = record.ops.iter().map(|r| r.cost.flops).sum::<u64>() * world as u64;
    drop(record);

    let mut prepared = Prepared {
        hf_model,
        cfg,
        opts,
        tokenizer,
        data,
        flops_per_step,
        warmup,
        log_path,
        checkpoint_path,
        resume_meta,
        tcfg,
        flags,
        device,
        timed: None,
    };
    let comm: Arc<dyn Communicator> = match &rank {
        Some(rv) => launch::join(rv)?,
        None => Arc::new(Solo),
    };
    // Every exchange of the rank goes through the timer: the backend's and the loop's.
    let timed = args
        .comm_log
        .as_ref()
        .map(|_| Arc::new(launch::TimedGroup::new(Arc::clone(&comm))));
    let comm: Arc<dyn Communicator> = match &timed {
        Some(t) => Arc::clone(t) as Arc<dyn Communicator>,
        None => comm,
    };
    prepared.timed = timed;
    match device {
        Device::Cpu if world > 1 => train_on(
            CpuBackend::with_communicator(Arc::clone(&comm)),
            &args,
            prepared,
            comm,
        ),
        Device::Cpu => train_on(CpuBackend::new(), &args, prepared, comm),
        Device::Cuda(i) => {
            let mut be = CudaBackend::new(i)?;
            if world > 1 {
                be.join_nccl(&*comm)?;
            }
            train_on(be, &args, prepared, comm)
        }
    }
}

/// Everything a run needs besides the backend, checked before any device is touched.
struct Prepared {
    hf_model: Option<hf::HfModel>,
    cfg: ModelConfig,
    opts: Options,
    tokenizer: Tokenizer,
    data: Loader,
    flops_per_step: u64,
    warmup: u64,
    log_path: Option<std::path::PathBuf>,
    checkpoint_path: Option<std::path::PathBuf>,
    resume_meta: Option<checkpoint::Metadata>,
    tcfg: TrainConfig,
    flags: BTreeMap<String, String>,
    /// For NVML sampling during the run.
    device: Device,
    /// The rank's group behind its timer, with --comm-log.
    timed: Option<Arc<launch::TimedGroup>>,
}

/// The settings that change what a run computes, by flag name, as recorded in its checkpoints:
/// a resumed run with any of them different is no longer the run it continues. (Evaluation,
/// checkpointing, logging and the device change nothing that is learned.)
fn run_flags(args: &TrainArgs, warmup: u64, tokenizer: &Tokenizer) -> BTreeMap<String, String> {
    [
        ("--steps", args.steps.to_string()),
        ("--batch", args.batch.to_string()),
        ("--seq", args.seq.to_string()),
        ("--lr", args.lr.to_string()),
        ("--warmup", warmup.to_string()),
        ("--min-lr-ratio", args.min_lr_ratio.to_string()),
        ("--weight-decay", args.weight_decay.to_string()),
        ("--grad-clip", args.grad_clip.to_string()),
        ("--seed", args.seed.to_string()),
        ("--dtype", args.dtype.name().to_string()),
        ("--attention", args.attention.name().to_string()),
        ("--recompute", args.recompute.name().to_string()),
        ("--tokenizer", tokenizer.name().to_string()),
        (
            "--data",
            match (&args.data, args.synthetic) {
                (Some(p), _) => p.display().to_string(),
                (None, _) => "--synthetic".to_string(),
            },
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Refuses a resumed run whose flags differ from its checkpoint's, naming each with both values;
/// with `--override`, says what changed and continues.
fn check_resume_flags(
    path: &Path,
    meta: &checkpoint::Metadata,
    now: &BTreeMap<String, String>,
    allow: bool,
) -> Result<()> {
    let mut saved = meta.run.flags.clone();
    // Older checkpoints record no flags but always their precision.
    saved
        .entry("--dtype".to_string())
        .or_insert_with(|| meta.precision.clone());
    let changed: Vec<String> = now
        .iter()
        .filter_map(|(flag, value)| {
            let was = saved.get(flag)?;
            // --data is compared by the loader's checksum of the tokens, not by the path's
            // spelling; only a switch between a file and --synthetic is a flag difference.
            if flag == "--data" && was != "--synthetic" && value != "--synthetic" {
                return None;
            }
            (was != value).then(|| format!("{flag} {was} in the checkpoint, {value} now"))
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    if allow {
        eprintln!(
            "note: --override: resuming {} with changed flags (no longer an exact continuation): {}",
            path.display(),
            changed.join("; ")
        );
        return Ok(());
    }
    bail!(
        "--resume {}: {} flag(s) differ from the checkpoint's run: {}. An exact continuation needs the checkpoint's values; pass them, or add --override to continue with the new ones",
        path.display(),
        changed.len(),
        changed.join("; ")
    )
}

/// The run on `be`: the same driver on the CPU and on a GPU (the stepper reads each step's loss
/// back, so step times include the device's work).
fn train_on<B: Instrumented>(
    mut be: B,
    args: &TrainArgs,
    p: Prepared,
    comm: Arc<dyn Communicator>,
) -> Result<()> {
    let Prepared {
        hf_model,
        cfg,
        opts,
        tokenizer,
        mut data,
        flops_per_step,
        warmup,
        log_path,
        checkpoint_path,
        resume_meta,
        tcfg,
        flags,
        device,
        timed,
    } = p;
    let model = Transformer::new(&mut be, &cfg, opts, true)?;
    if args.resume.is_none() {
        match &hf_model {
            Some(m) => m.load_weights(&mut be, &model)?,
            None => model.init_weights(&mut be, args.seed)?,
        }
    }
    // Rank 0 speaks for a data-parallel run: the others print and log nothing.
    let speaks = comm.rank() == 0;
    let stop = StopFlag::new();
    let mut inner = ModelStepper::new(be, model)?.in_group(Arc::clone(&comm));
    inner.flags = flags;
    let device_name = inner.be.name();
    let mut stepper = RankStepper::new(inner, comm, stop.clone());

    if speaks {
        print_header(
            args,
            &device_name,
            &cfg,
            &tokenizer,
            &data,
            flops_per_step,
            warmup,
        );
    }
    let start_step = resume_meta.as_ref().map_or(0, |m| m.run.step);
    let mut log = match &log_path {
        Some(p) if speaks => Some(CsvLog::open(
            p,
            args.resume.is_some().then_some(start_step),
        )?),
        _ => None,
    };

    stop.install_handler_saying(if checkpoint_path.is_some() {
        "stopping after this step and saving a checkpoint (Ctrl-C again to quit now)"
    } else {
        "stopping after this step; nothing is saved without --checkpoint (Ctrl-C again to quit now)"
    })?;
    if let Some(at) = args.stop_at.filter(|&at| at <= start_step) {
        bail!("--stop-at {at} is not after the checkpoint's step {start_step}");
    }
    let mut comm_log = match (&args.comm_log, &timed) {
        (Some(path), Some(t)) if speaks => {
            // Setup's exchanges (joining, NCCL ids) are not a step's.
            t.take_seconds();
            let mut file = File::create(path)
                .with_context(|| format!("creating the --comm-log {}", path.display()))?;
            writeln!(file, "step,comm_s")?;
            Some((file, Arc::clone(t)))
        }
        _ => None,
    };
    let progress = Progress::new(args.steps, start_step, args.print_every, speaks);
    let mut log_err: Option<anyhow::Error> = None;
    let started = Instant::now();
    let mut on_record = |r: &StepRecord| {
        if speaks {
            progress.update(r);
        }
        if let Some(log) = &mut log {
            if let Err(e) = log.write(r) {
                log_err.get_or_insert(e);
            }
        }
        if let Some((file, t)) = &mut comm_log {
            let line =
                writeln!(file, "{},{:.6}", r.step, t.take_seconds()).and_then(|()| file.flush());
            if let Err(e) = line {
                log_err.get_or_insert(anyhow::Error::from(e).context("writing --comm-log"));
            }
        }
    };
    let paths = RunPaths {
        checkpoint: checkpoint_path.clone(),
        resume: args.resume.clone(),
    };
    let sampler = tperf_bench::utilisation::start_for(device);
    let result = driver::train(
        &tcfg,
        &mut stepper,
        &mut data,
        &paths,
        tokenizer.name(),
        &stop,
        &mut on_record,
    );
    progress.finish();
    let utilisation = tperf_bench::utilisation::finish(sampler);
    let summary = result?;
    if !speaks {
        return if summary.stopped && args.stop_at != Some(summary.end_step) {
            Err(Interrupted {
                step: summary.end_step,
                checkpoint: checkpoint_path,
            }
            .into())
        } else {
            Ok(())
        };
    }
    if let (Some(m), Some(dir)) = (&hf_model, &args.save_hf) {
        let inner = stepper.inner_mut();
        m.save_pretrained(&mut inner.be, &inner.model, dir)?;
        println!("saved a Hugging Face folder: {}", dir.display());
    }
    let wall_s = started.elapsed().as_secs_f64();
    if let Some(e) = log_err {
        eprintln!("warning: the log could not be written: {e:#}");
    }

    let plot_path = log_path.as_deref().and_then(|p| match write_loss_plot(p) {
        Ok(svg) => Some(svg),
        Err(e) => {
            eprintln!("warning: no loss plot: {e:#}");
            None
        }
    });
    print_summary(
        &summary,
        wall_s,
        flops_per_step,
        stepper.inner().be.ledger().peak_bytes(),
        checkpoint_path.as_deref(),
        log_path.as_deref(),
        plot_path.as_deref(),
    );
    if let Some(g) = stepper.inner().be.step_graphs() {
        println!("  {}", g.summary());
    }
    println!("  {}", utilisation.line());
    // The timeline is the run's record beside its log: <log>.utilisation.json.
    if let Some(log) = &log_path {
        let file = log.with_extension("utilisation.json");
        match serde_json::to_string(&utilisation)
            .map_err(anyhow::Error::from)
            .and_then(|t| std::fs::write(&file, t).map_err(anyhow::Error::from))
        {
            Ok(()) => println!("  utilisation: {}", file.display()),
            Err(e) => eprintln!("warning: the utilisation timeline could not be written: {e:#}"),
        }
    }
    let asked_to_stop = args.stop_at == Some(summary.end_step);
    if summary.stopped && asked_to_stop {
        if let Some(p) = &checkpoint_path {
            println!(
                "stopped at step {} as --stop-at asked; continue with --resume {}",
                summary.end_step,
                p.display()
            );
        }
    } else if summary.stopped {
        // The checkpoint holds the run only if this session saved one or resumed from it.
        let holds = !summary.checkpoints.is_empty()
            || (args.resume.is_some() && checkpoint_path == args.resume);
        return Err(Interrupted {
            step: summary.end_step,
            checkpoint: checkpoint_path.filter(|_| holds),
        }
        .into());
    }
    Ok(())
}

fn load_data(args: &TrainArgs, cfg: &ModelConfig, tokenizer: &Tokenizer) -> Result<Loader> {
    match (&args.data, args.synthetic) {
        (Some(path), _) => {
            let corpus = Corpus::load(path, tokenizer, args.val_fraction)?;
            corpus.check_seq(args.seq)?;
            let loader = TextLoader::new(Arc::new(corpus), args.batch, args.seq, args.seed)?;
            Ok(Loader::Text(loader))
        }
        (None, true) => Ok(Loader::Synthetic(SyntheticLoader::new(
            args.batch,
            args.seq,
            // Ids the tokenizer could produce: a byte model trains on bytes, not on the padding
            // rows of a larger embedding.
            tokenizer.vocab_size().min(cfg.vocab_size),
            args.seed,
        )?)),
        (None, false) => bail!("give the text to train on with --data FILE.txt, or --synthetic"),
    }
}

fn print_header(
    args: &TrainArgs,
    device: &str,
    cfg: &ModelConfig,
    tokenizer: &Tokenizer,
    data: &Loader,
    flops_per_step: u64,
    warmup: u64,
) {
    let source = match data {
        Loader::Text(t) => format!(
            "{} ({} training / {} held-out {} tokens)",
            t.corpus().source_name,
            t.corpus().train.len(),
            t.corpus().val.len(),
            tokenizer.name()
        ),
        Loader::Synthetic(_) => "synthetic uniform tokens".to_string(),
    };
    let on = if device == "cpu" {
        tperf_cpu::device_label()
    } else {
        device.to_string()
    };
    println!(
        "tperf train: {} ({} params), {} on {on}",
        cfg.name,
        units::params(cfg.param_count()),
        args.dtype.name()
    );
    println!("  data:   {source}");
    println!(
        "  build:  tperf {} ({})",
        env!("CARGO_PKG_VERSION"),
        env!("TPERF_GIT_REV")
    );
    println!(
        "  run:    {} steps × B {} × T {} = {} tokens/step; lr {} (warm-up {warmup}, cosine to {}×), seed {}",
        args.steps,
        args.batch,
        args.seq,
        args.batch * args.seq,
        args.lr,
        args.min_lr_ratio,
        args.seed
    );
    println!(
        "  model:  {} per step (schedule count: forward + backward + AdamW)",
        units::si(flops_per_step as f64, "FLOP")
    );
    if let Some(r) = &args.resume {
        println!("  resume: {}", r.display());
    }
}

fn print_summary(
    s: &driver::TrainSummary,
    wall_s: f64,
    flops_per_step: u64,
    peak_bytes: u64,
    checkpoint: Option<&Path>,
    log: Option<&Path>,
    plot: Option<&Path>,
) {
    let steps = s.records.len() as u64;
    let tokens: u64 = s.records.iter().map(|r| r.tokens).sum();
    let step_s: f64 = s.records.iter().map(|r| r.dur_s).sum();
    // The first step of a process pays one-time costs (kernels compiled or loaded, matmul plans,
    // the allocator's first allocations from the driver): on a GPU seconds, beside milliseconds
    // for a step. The throughput is that of the steps after it, when there are any.
    let steady = if s.records.len() > 1 {
        &s.records[1..]
    } else {
        &s.records[..]
    };
    let steady_s: f64 = steady.iter().map(|r| r.dur_s).sum();
    let steady_tokens: u64 = steady.iter().map(|r| r.tokens).sum();
    let rate = |x: f64| if steady_s > 0.0 { x / steady_s } else { 0.0 };
    println!();
    println!(
        "summary: steps {}→{} ({steps} this run{}), {} tokens",
        s.start_step,
        s.end_step,
        if s.stopped { ", interrupted" } else { "" },
        tokens
    );
    if steps == 0 {
        println!(
            "  nothing to train: the run was already at step {}",
            s.end_step
        );
        if let Some(p) = plot {
            // Still useful: a run finished by an older build gets its plot this way.
            println!("  loss plot:  {}", p.display());
        }
        return;
    }
    println!(
        "  time:       {wall_s:.1} s wall, {step_s:.1} s in training steps (evaluation and saving excluded)"
    );
    let first_note = if steady.len() < s.records.len() {
        format!(
            " over steps {}→{}; the first took {:.2} s (one-time setup: kernels, plans, memory)",
            steady[0].step, s.end_step, s.records[0].dur_s
        )
    } else {
        String::new()
    };
    println!(
        "  throughput: {:.0} tokens/s, {:.2} GFLOP/s achieved (schedule FLOPs / step time){first_note}",
        rate(steady_tokens as f64),
        rate((steady.len() as u64 * flops_per_step) as f64) / 1e9
    );
    if let (Some(first), Some(last)) = (s.records.first(), s.records.last()) {
        println!(
            "  loss:       {:.4} (step {}) → {:.4} (step {})",
            first.loss, first.step, last.loss, last.step
        );
    }
    let vals: Vec<&StepRecord> = s.records.iter().filter(|r| r.val_loss.is_some()).collect();
    if let (Some(first), Some(last)) = (vals.first(), vals.last()) {
        println!(
            "  val loss:   {:.4} (step {}) → {:.4} (step {})",
            first.val_loss.unwrap_or(f32::NAN),
            first.step,
            last.val_loss.unwrap_or(f32::NAN),
            last.step
        );
    }
    println!(
        "  peak memory: {} (the backend's tensors at their dtype widths)",
        units::bytes(peak_bytes)
    );
    if let Some(p) = checkpoint {
        if let Some(step) = s.checkpoints.last() {
            println!("  checkpoint: {} (step {step})", p.display());
        }
    }
    if let Some(p) = log {
        println!("  log:        {}", p.display());
    }
    if let Some(p) = plot {
        println!("  loss plot:  {}", p.display());
    }
}

/// Plots the training and validation loss of the whole log (every session of a resumed run)
/// as an SVG beside it: <log>.svg.
fn write_loss_plot(log: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(log)?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    // Columns as CsvLog writes them: step, lr, loss, val_loss, …
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
        if let (Some(step), Some(loss)) = (num(0), num(2)) {
            train.push((step, loss));
            if let Some(v) = num(3) {
                val.push((step, v));
            }
        }
    }
    let plot = LinePlot {
        title: "training loss".into(),
        x_label: "step".into(),
        y_label: "loss (nats/token)".into(),
        series: vec![
            Series {
                name: "train (batch)".into(),
                points: train,
                dashed: false,
            },
            Series {
                name: "validation".into(),
                points: val,
                dashed: true,
            },
        ],
        ..LinePlot::default()
    };
    // The plots are made to be inlined in the HTML report, which drops the namespace; a
    // stand-alone .svg file needs it back to open in a browser or an image viewer.
    let svg = line_plot(&plot)?.replacen("<svg ", "<svg xmlns=\"http://www.w3.org/2000/svg\" ", 1);
    let path = log.with_extension("svg");
    std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The progress display: a bar on a terminal, plain lines otherwise (a log file, CI, a pipe).
struct Progress {
    bar: Option<ProgressBar>,
    print_every: u64,
    started: Instant,
    start_step: u64,
    steps: u64,
}

impl Progress {
    /// `shown` false: a rank other than 0, which draws nothing.
    fn new(steps: u64, start_step: u64, print_every: Option<u64>, shown: bool) -> Self {
        let bar = (shown && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
            // A template that fails to parse would be a bug in this literal; fall back to
            // the default style rather than abort a run over a progress bar.
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  elapsed {elapsed_precise}  ETA {eta}",
            ) {
                bar.set_style(style);
            }
            bar.set_position(start_step);
            bar.reset_eta();
            bar
        });
        Progress {
            bar,
            print_every: print_every.unwrap_or((steps / 50).max(1)),
            started: Instant::now(),
            start_step,
            steps,
        }
    }

    fn update(&self, r: &StepRecord) {
        let msg = format!("loss {:.4}  {:.0} tok/s", r.loss, r.tokens_per_s);
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step);
                bar.set_message(msg);
                if let Some(v) = r.val_loss {
                    bar.println(format!("step {}: val loss {v:.4}", r.step));
                }
            }
            None => {
                if r.step.is_multiple_of(self.print_every)
                    || r.val_loss.is_some()
                    || r.step == self.steps
                {
                    let done = (r.step - self.start_step) as f64;
                    let elapsed = self.started.elapsed().as_secs_f64();
                    let eta = elapsed / done.max(1.0) * (self.steps - r.step) as f64;
                    let val = r
                        .val_loss
                        .map_or(String::new(), |v| format!("  val {v:.4}"));
                    eprintln!(
                        "step {}/{}  {msg}{val}  lr {:.2e}  ETA {eta:.0}s",
                        r.step, self.steps, r.lr
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// The per-step records as CSV, flushed every line so a run in the background can be watched
/// and a crash loses nothing already written.
struct CsvLog {
    file: File,
}

impl CsvLog {
    /// `resumed_at`: the checkpoint's step when resuming. A resumed run continues its log
    /// without the rows of steps after the checkpoint (a session that ran on past its last save
    /// before it was stopped), which it is about to run again; a new run starts one (its
    /// checkpoint refused to overwrite an existing run unless asked to, and the log follows it).
    fn open(path: &Path, resumed_at: Option<u64>) -> Result<Self> {
        let append = resumed_at.is_some() && path.exists();
        if let (Some(step), true) = (resumed_at, append) {
            drop_rows_after(path, step)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .with_context(|| format!("opening the log {}", path.display()))?;
        let mut log = CsvLog { file };
        if !append {
            writeln!(
                log.file,
                "step,lr,loss,val_loss,tokens,dur_s,tokens_per_s,saved"
            )?;
        }
        Ok(log)
    }

    fn write(&mut self, r: &StepRecord) -> Result<()> {
        writeln!(
            self.file,
            "{},{:e},{},{},{},{:.6},{:.1},{}",
            r.step,
            r.lr,
            r.loss,
            r.val_loss.map_or(String::new(), |v| v.to_string()),
            r.tokens,
            r.dur_s,
            r.tokens_per_s,
            r.saved
        )?;
        self.file.flush()?;
        Ok(())
    }
}

/// Rewrites the CSV log at `path` without the rows of steps after `step`, atomically; leaves it
/// untouched when there are none.
fn drop_rows_after(path: &Path, step: u64) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the log {}", path.display()))?;
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for (i, line) in text.lines().enumerate() {
        let row_step = line.split(',').next().and_then(|f| f.parse::<u64>().ok());
        match row_step {
            Some(s) if i > 0 && s > step => dropped += 1,
            _ => {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    if dropped > 0 {
        super::report::write_atomic(path, kept.as_bytes())?;
        eprintln!(
            "note: the log {} had {dropped} row(s) after the checkpoint's step {step}; they are replaced by this run's",
            path.display()
        );
    }
    Ok(())
}
