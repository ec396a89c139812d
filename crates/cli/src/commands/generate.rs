//! `tperf generate`: text from a trained checkpoint (or a preset's random weights), prefill then
//! decode, printed as it comes, then the timing: time to first token (prefill included), time
//! per output token (the first excluded), tokens/s. It is the serving engine's one-request
//! client (the paged KV cache, as `tperf serve` runs); `--contiguous-kv` runs the one-prompt
//! loop over the contiguous cache instead (whose decode steps a GPU replays from a CUDA graph),
//! and `--no-kv-cache` the loop that recomputes the prefix every step.
//!
//! The text goes to stdout and everything else (notes, timing) to stderr, so
//! `tperf generate … > out.txt` keeps just the text.

use super::{parse_attention, parse_precision};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;
use tperf_bench::device::{Device, Instrumented};
use tperf_core::backend::Backend;
use tperf_core::ops::sampling::Sampling;
use tperf_core::schedule::ragged::DEFAULT_BLOCK_SIZE;
use tperf_core::schedule::{AttentionKernel, Options, Precision, Transformer};
use tperf_cpu::CpuBackend;
use tperf_cuda::CudaBackend;
use tperf_engine::contiguous::{self, Timing};
use tperf_engine::{EngineConfig, EngineCore, Event, FinishReason, Request};
use tperf_report::units;
use tperf_runtime::checkpoint::{self, Contents};
use tperf_runtime::hf;
use tperf_runtime::tokenizer::Tokenizer;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A Hugging Face model folder (config.json, model.safetensors, tokenizer.json), a
    /// checkpoint (.safetensors, written by `tperf train`), or a preset / config.json, which
    /// runs with random weights.
    pub model: String,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate (fewer if the context fills up first).
    #[arg(long, default_value_t = 100)]
    pub max_new: usize,
    /// 0 is greedy (argmax); higher is more varied.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample only from the most likely tokens whose probability adds up to p (nucleus).
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Recompute the whole prefix for every token instead of caching keys and values.
    #[arg(long)]
    pub no_kv_cache: bool,
    /// Decode over the contiguous KV cache, one prompt at a time, instead of the serving
    /// engine's paged cache (the GPU replays its decode steps from a CUDA graph).
    #[arg(long, conflicts_with = "no_kv_cache")]
    pub contiguous_kv: bool,
    /// gpt2 or byte (default: the checkpoint's; for a preset, gpt2 when the vocabulary holds
    /// it, else byte).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Compute precision: fp32, bf16 or fp16.
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub dtype: Precision,
    /// Attention kernel: naive or flash.
    #[arg(long, default_value = "flash", value_parser = parse_attention)]
    pub attention: AttentionKernel,
    /// cpu, cuda, cuda:N, or auto (the first GPU if there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Launch every op of every decode step from the host, instead of replaying the step from
    /// a CUDA graph (graphs are on by default on GPUs; only the contiguous loops repeat a step
    /// exactly, so this matters with --contiguous-kv or --no-kv-cache).
    #[arg(long)]
    pub no_graphs: bool,
}

fn is_checkpoint(spec: &str) -> bool {
    spec.ends_with(".safetensors") || (!spec.ends_with(".json") && Path::new(spec).is_file())
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!(
            "--temperature {} is not valid: use 0 (greedy) or a positive number",
            args.temperature
        );
    }
    // Before anything is loaded: a 124M-parameter model is not built to learn the prompt was empty.
    if args.prompt.is_empty() {
        bail!("the prompt is empty: give some text with --prompt");
    }
    if args.top_k == Some(0) {
        bail!("--top-k 0 keeps no token: use at least 1, or leave it out");
    }
    if let Some(p) = args.top_p {
        if !(p > 0.0 && p <= 1.0) {
            bail!("--top-p {p} is not a probability in (0, 1]: use e.g. 0.9, or leave it out");
        }
    }
    let opts = Options {
        precision: args.dtype,
        attention: args.attention,
        kv_cache: !args.no_kv_cache,
        ..Options::default()
    };
    let device = super::resolve_device(&args.device)?;
    match device {
        Device::Cpu => generate_on(CpuBackend::new(), device, &args, opts),
        Device::Cuda(i) => generate_on(CudaBackend::new(i)?, device, &args, opts),
    }
}

/// Refuses a generation the model predicts will not fit, before the weights are allocated: the
/// weights and a KV cache for the prompt and every new token (or, without the cache, the
/// forward over the longest sequence).
fn check_fits(
    device: Device,
    cfg: &tperf_core::config::ModelConfig,
    opts: Options,
    tokenizer: &Tokenizer,
    args: &GenerateArgs,
) -> Result<()> {
    use tperf_core::cost::analysis::{Scenario, Workload};
    let tokens = tokenizer.encode(&args.prompt).len() + args.max_new;
    let sc = Scenario {
        workload: if opts.kv_cache {
            Workload::Prefill
        } else {
            Workload::Forward
        },
        batch: 1,
        seq: tokens.clamp(1, cfg.context.max(1)),
        opts,
    };
    super::check_fits(device, cfg, &sc).map(drop)
}

fn generate_on<B: Instrumented>(
    mut be: B,
    device_id: Device,
    args: &GenerateArgs,
    opts: Options,
) -> Result<()> {
    let device = be.name();
    be.set_step_graphs(!args.no_graphs);

    let (model, tokenizer) = load_model(
        &mut be,
        &args.model,
        args.tokenizer.as_deref(),
        opts,
        args.seed,
        &|cfg, tokenizer| check_fits(device_id, cfg, opts, tokenizer, args),
    )?;

    let prompt: Vec<u32> = tokenizer.encode(&args.prompt);
    let context = model.cfg.context;
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens: give some text with --prompt");
    }
    if prompt.len() > context {
        bail!(
            "the prompt has {} tokens; the model's context is {context}",
            prompt.len()
        );
    }
    let room = context - prompt.len();
    let max_new = if args.max_new > room {
        eprintln!(
            "note: the context holds {context} tokens and the prompt {}, so at most {room} new tokens",
            prompt.len()
        );
        room
    } else {
        args.max_new
    };
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };

    let timing = if args.no_kv_cache || args.contiguous_kv {
        let mut out = TextStream::new(&tokenizer, &args.prompt);
        let t = contiguous::generate(
            &mut be,
            &model,
            &prompt,
            max_new,
            sampling,
            tokenizer.eot(),
            |id| out.push(id),
        )?;
        out.finish();
        t
    } else {
        let (t, back) = paged(
            be,
            model,
            tokenizer,
            &args.prompt,
            prompt.clone(),
            max_new,
            sampling,
        )?;
        be = back;
        t
    };
    let n = timing.tokens;
    eprintln!();
    let on = if device == "cpu" {
        tperf_cpu::device_label()
    } else {
        device
    };
    eprintln!(
        "{} prompt tokens, {n} new ({}, {on}, {})",
        prompt.len(),
        if args.no_kv_cache {
            "no KV cache: every step recomputes the prefix"
        } else if args.contiguous_kv {
            "contiguous KV cache"
        } else {
            "paged KV cache"
        },
        args.dtype.name()
    );
    if let Some(ttft) = timing.first {
        eprintln!(
            "time to first token: {} (prefill of {} tokens included)",
            units::seconds(ttft.as_secs_f64()),
            prompt.len()
        );
    }
    if n > 1 {
        let tpot = timing.rest.as_secs_f64() / (n - 1) as f64;
        eprintln!(
            "time per output token: {} ({:.1} tokens/s, the first token excluded)",
            units::seconds(tpot),
            1.0 / tpot
        );
    }
    if let Some(g) = be.step_graphs() {
        eprintln!("{}", g.summary());
    }
    let total = timing.first.unwrap_or_default() + timing.rest;
    if n > 0 && total.as_secs_f64() > 0.0 {
        eprintln!(
            "overall: {n} tokens in {} ({:.1} tokens/s)",
            units::seconds(total.as_secs_f64()),
            n as f64 / total.as_secs_f64()
        );
    }
    Ok(())
}

/// The model of `spec` (a checkpoint, or a preset / config.json with random weights of `seed`)
/// on `be`, and its tokenizer (`tokenizer` names one, else the checkpoint's or the default for
/// the vocabulary); says on stderr what was loaded. `fits` refuses, before anything is
/// allocated, what the model predicts will not fit the device.
pub(crate) fn load_model<B: Backend>(
    be: &mut B,
    spec: &str,
    tokenizer: Option<&str>,
    opts: Options,
    seed: u64,
    fits: &dyn Fn(&tperf_core::config::ModelConfig, &Tokenizer) -> Result<()>,
) -> Result<(Transformer, Tokenizer)> {
    if hf::is_model_dir(Path::new(spec)) {
        return load_hf(be, spec, tokenizer, opts, fits);
    }
    Ok(if is_checkpoint(spec) {
        let path = Path::new(spec);
        let meta = checkpoint::read_metadata(path)?;
        if let Some(asked) = tokenizer {
            // A tokenizer too large for the vocabulary is refused for that first.
            Tokenizer::from_name(asked)?
                .check_model(&meta.config)
                .with_context(|| format!("{} and --tokenizer", path.display()))?;
            if asked != meta.run.tokenizer {
                bail!(
                    "{} was trained with the {} tokenizer; --tokenizer {asked} would read its tokens as other text: leave --tokenizer out (or pass --tokenizer {})",
                    path.display(),
                    meta.run.tokenizer,
                    meta.run.tokenizer
                );
            }
        }
        let tokenizer = Tokenizer::from_name(&meta.run.tokenizer)?;
        tokenizer
            .check_model(&meta.config)
            .with_context(|| format!("{} and --tokenizer", path.display()))?;
        meta.config
            .validate()
            .with_context(|| format!("the config saved in {}", path.display()))?;
        fits(&meta.config, &tokenizer)?;
        let model = Transformer::new(be, &meta.config, opts, false)?;
        // Checks every tensor's presence, shape and checksum before writing any value.
        checkpoint::load(path, be, &model, Contents::Weights)?;
        eprintln!(
            "{}: {} ({} params) after {} training steps, tokenizer {}",
            path.display(),
            meta.config.name,
            units::params(meta.config.param_count()),
            meta.run.step,
            tokenizer.name()
        );
        (model, tokenizer)
    } else {
        let cfg = crate::load::load(spec)?.config;
        let tokenizer = match tokenizer {
            Some(name) => Tokenizer::from_name(name)?,
            None => Tokenizer::default_for(&cfg),
        };
        tokenizer.check_model(&cfg)?;
        fits(&cfg, &tokenizer)?;
        let model = Transformer::new(be, &cfg, opts, false)?;
        model.init_weights(be, seed)?;
        eprintln!(
            "note: {} ({} params) has random weights (no checkpoint given): expect noise; \
             the timing is still real",
            cfg.name,
            units::params(cfg.param_count())
        );
        (model, tokenizer)
    })
}

/// A Hugging Face model folder: its weights and its own tokenizer (or `tokenizer`'s).
fn load_hf<B: Backend>(
    be: &mut B,
    spec: &str,
    tokenizer: Option<&str>,
    opts: Options,
    fits: &dyn Fn(&tperf_core::config::ModelConfig, &Tokenizer) -> Result<()>,
) -> Result<(Transformer, Tokenizer)> {
    let hf = hf::HfModel::open(Path::new(spec))?;
    let tokenizer = match (tokenizer, &hf.tokenizer) {
        (Some(name), _) => Tokenizer::from_name(name)?,
        (None, Some(t)) => t.clone(),
        (None, None) => bail!("{spec} has no tokenizer.json: give --tokenizer gpt2 or byte"),
    };
    tokenizer.check_model(&hf.config)?;
    fits(&hf.config, &tokenizer)?;
    let model = Transformer::new(be, &hf.config, opts, false)?;
    hf.load_weights(be, &model)?;
    eprintln!(
        "{spec}: {} ({} params, {}), tokenizer {}",
        hf.config.name,
        units::params(hf.config.param_count()),
        hf.family.name(),
        tokenizer.name()
    );
    Ok((model, tokenizer))
}

/// The request through the serving engine, alone: one sequence over a paged cache just large
/// enough for it. Hands the backend back (its graph summary is printed after).
fn paged<B: Backend>(
    be: B,
    model: Transformer,
    tokenizer: Tokenizer,
    prompt_text: &str,
    prompt: Vec<u32>,
    max_new: usize,
    sampling: Sampling,
) -> Result<(Timing, B)> {
    print!("{prompt_text}");
    let _ = std::io::stdout().flush();
    if max_new == 0 {
        println!();
        return Ok((Timing::default(), be));
    }
    let cfg = EngineConfig {
        max_num_seqs: 1,
        kv_blocks: (prompt.len() + max_new).div_ceil(DEFAULT_BLOCK_SIZE),
        ..EngineConfig::default()
    };
    let mut engine = EngineCore::new(be, model, tokenizer, cfg)?;
    let (tx, rx) = mpsc::channel();
    let req = Request {
        prompt,
        max_tokens: max_new,
        sampling,
        stop: Vec::new(),
        client: String::new(),
        ignore_eos: false,
    };
    engine.add(0, req, Box::new(tx))?;
    let mut timing = Timing::default();
    let started = Instant::now();
    let mut last = started;
    let mut failed = None;
    while !engine.is_idle() {
        if let Err(e) = engine.step() {
            failed = Some(e);
        }
        for event in rx.try_iter() {
            let (text, token) = match event {
                Event::Token { text, .. } => (text, true),
                // The end-of-text token ends the request without an event of its own.
                Event::Finished { text, reason, .. } => {
                    if let FinishReason::Error(e) = &reason {
                        failed.get_or_insert(tperf_engine::EngineError::Config(e.clone()));
                    }
                    (text, reason == FinishReason::Stop)
                }
            };
            if token {
                let now = Instant::now();
                match timing.first {
                    None => timing.first = Some(now - started),
                    Some(_) => timing.rest += now - last,
                }
                last = now;
                timing.tokens += 1;
            }
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    }
    println!();
    let (be, _model) = engine.into_parts();
    match failed {
        Some(e) => Err(e.into()),
        None => Ok((timing, be)),
    }
}

/// Prints generated text as it comes. A byte-level token can be half of a UTF-8 character, so
/// the whole generation is decoded each time and only what is complete is printed.
struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    fn new(tokenizer: &'a Tokenizer, prompt: &str) -> Self {
        print!("{prompt}");
        let _ = std::io::stdout().flush();
        TextStream {
            tokenizer,
            ids: Vec::new(),
            printed: 0,
        }
    }

    fn push(&mut self, id: u32) {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids);
        // A trailing replacement character may be a character still arriving.
        let complete = text.trim_end_matches('\u{FFFD}');
        // `get`: were an earlier byte to decode differently now, print nothing rather than
        // slice inside a character.
        if let Some(new) = complete.get(self.printed..).filter(|s| !s.is_empty()) {
            print!("{new}");
            let _ = std::io::stdout().flush();
            self.printed = complete.len();
        }
    }

    fn finish(&mut self) {
        let text = self.tokenizer.decode(&self.ids);
        if let Some(rest) = text.get(self.printed..) {
            print!("{rest}");
        }
        println!();
    }
}
