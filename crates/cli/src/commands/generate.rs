//! `tperf generate`: text from a trained checkpoint (or a preset's random weights), prefill then
//! decode with the KV cache or without it, printed as it comes, then the timing: time to first
//! token (prefill included), time per output token (the first excluded), tokens/s.
//!
//! The text goes to stdout and everything else (notes, timing) to stderr, so
//! `tperf generate … > out.txt` keeps just the text.

use super::{parse_attention, parse_precision};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use tperf_bench::device::{Device, Instrumented};
use tperf_core::backend::{repeated_step, Backend};
use tperf_core::ops::sampling::Sampling;
use tperf_core::schedule::{alloc_step_tokens, AttentionKernel, Options, Precision, Transformer};
use tperf_cpu::CpuBackend;
use tperf_cuda::CudaBackend;
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
    /// a CUDA graph (graphs are on by default on GPUs).
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
    match super::resolve_device(&args.device)? {
        Device::Cpu => generate_on(CpuBackend::new(), &args, opts),
        Device::Cuda(i) => generate_on(CudaBackend::new(i)?, &args, opts),
    }
}

fn generate_on<B: Instrumented>(mut be: B, args: &GenerateArgs, opts: Options) -> Result<()> {
    let device = be.name();
    be.set_step_graphs(!args.no_graphs);

    let (model, tokenizer) = if hf::is_model_dir(Path::new(&args.model)) {
        load_hf(&mut be, args, opts)?
    } else if is_checkpoint(&args.model) {
        let path = Path::new(&args.model);
        let meta = checkpoint::read_metadata(path)?;
        let tokenizer =
            Tokenizer::from_name(args.tokenizer.as_deref().unwrap_or(&meta.run.tokenizer))?;
        tokenizer
            .check_model(&meta.config)
            .with_context(|| format!("{} and --tokenizer", path.display()))?;
        meta.config
            .validate()
            .with_context(|| format!("the config saved in {}", path.display()))?;
        let model = Transformer::new(&mut be, &meta.config, opts, false)?;
        // Checks every tensor's presence, shape and checksum before writing any value.
        checkpoint::load(path, &mut be, &model, Contents::Weights)?;
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
        let cfg = crate::load::load(&args.model)?.config;
        let tokenizer = match &args.tokenizer {
            Some(name) => Tokenizer::from_name(name)?,
            None => Tokenizer::default_for(&cfg),
        };
        tokenizer.check_model(&cfg)?;
        let model = Transformer::new(&mut be, &cfg, opts, false)?;
        model.init_weights(&mut be, args.seed)?;
        eprintln!(
            "note: {} ({} params) has random weights (no checkpoint given): expect noise; \
             the timing is still real",
            cfg.name,
            units::params(cfg.param_count())
        );
        (model, tokenizer)
    };

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

    let mut out = TextStream::new(&tokenizer, &args.prompt);
    let timing = decode(
        &mut be, &model, &prompt, max_new, sampling, &tokenizer, &mut out,
    )?;
    out.finish();

    let n = timing.tokens;
    eprintln!();
    let on = if device == "cpu" {
        format!(
            "cpu, {} threads",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )
    } else {
        device
    };
    eprintln!(
        "{} prompt tokens, {n} new ({}, {on}, {})",
        prompt.len(),
        if args.no_kv_cache {
            "no KV cache: every step recomputes the prefix"
        } else {
            "KV cache"
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

/// A Hugging Face model folder: its weights and its own tokenizer (or --tokenizer's).
fn load_hf<B: Backend>(
    be: &mut B,
    args: &GenerateArgs,
    opts: Options,
) -> Result<(Transformer, Tokenizer)> {
    let hf = hf::HfModel::open(Path::new(&args.model))?;
    let tokenizer = match (&args.tokenizer, &hf.tokenizer) {
        (Some(name), _) => Tokenizer::from_name(name)?,
        (None, Some(t)) => t.clone(),
        (None, None) => bail!(
            "{} has no tokenizer.json: give --tokenizer gpt2 or byte",
            args.model
        ),
    };
    tokenizer.check_model(&hf.config)?;
    let model = Transformer::new(be, &hf.config, opts, false)?;
    hf.load_weights(be, &model)?;
    eprintln!(
        "{}: {} ({} params, {}), tokenizer {}",
        args.model,
        hf.config.name,
        units::params(hf.config.param_count()),
        hf.family.name(),
        tokenizer.name()
    );
    Ok((model, tokenizer))
}

struct Timing {
    /// Generated tokens.
    tokens: usize,
    /// Prefill through the first token read back on the host.
    first: Option<Duration>,
    /// Every later token.
    rest: Duration,
}

/// Prefill and decode. With a KV cache the prefill fills it and each step feeds one token; without
/// one each step runs the whole sequence so far.
fn decode<B: Backend>(
    be: &mut B,
    model: &Transformer,
    prompt: &[u32],
    max_new: usize,
    sampling: Sampling,
    tokenizer: &Tokenizer,
    out: &mut TextStream,
) -> Result<Timing> {
    let mut timing = Timing {
        tokens: 0,
        first: None,
        rest: Duration::ZERO,
    };
    if max_new == 0 {
        return Ok(timing);
    }
    let mut cache = if model.opts.kv_cache {
        Some(model.alloc_kv_cache(be, 1, prompt.len() + max_new)?)
    } else {
        None
    };
    let mut seq: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let mut result = Ok(());
    for i in 0..max_new {
        let started = Instant::now();
        let step = (|| -> Result<i32> {
            let feed: &[i32] = match (&cache, i) {
                (Some(_), 0) | (None, _) => &seq,
                (Some(_), _) => &seq[seq.len() - 1..],
            };
            let tokens = alloc_step_tokens(be, 1, feed.len())?;
            be.write_i32(&tokens, feed)?;
            let logits = match &mut cache {
                // Decode steps with a cache repeat (one token in, the position in device
                // memory): a backend may capture one and replay it (CUDA graphs). Sampling reads
                // the logits on the host, so it stays outside.
                Some(cache) if i > 0 => repeated_step(be, "decode", |be| {
                    model.step_logits(be, tokens, Some(&mut *cache))
                })?,
                Some(cache) => model.step_logits(be, tokens, Some(cache))?,
                None => model.step_logits(be, tokens, None)?,
            };
            let next = model.sample(be, logits, sampling)?;
            let ids = be.read_f32(&next);
            be.free(next);
            Ok(ids?.first().copied().unwrap_or(0.0) as i32)
        })();
        let next = match step {
            Ok(t) => t,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let dt = started.elapsed();
        if i == 0 {
            timing.first = Some(dt);
        } else {
            timing.rest += dt;
        }
        timing.tokens += 1;
        if tokenizer.eot().is_some_and(|eot| eot as i32 == next) {
            break;
        }
        seq.push(next);
        out.push(next as u32);
    }
    if let Some(cache) = cache {
        model.free_kv_cache(be, cache);
    }
    result.map(|()| timing)
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
