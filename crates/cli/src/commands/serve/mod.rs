//! `tperf serve`: the engine behind an OpenAI-compatible HTTP API (axum on tokio). The HTTP
//! layer only parses, tokenizes, checks and relays: every scheduling decision is the engine's
//! (crates/engine), which runs on its own thread; each request's events come back through an
//! unbounded channel, written out as one JSON body or as server-sent events.

mod api;

use super::generate::load_model;
use super::{parse_attention, parse_bytes, parse_precision};
use anyhow::{bail, Context, Result};
use api::{ChatRequest, Common, CompletionRequest, Prompt, UsageJson};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tperf_bench::device::Device;
use tperf_core::ops::sampling::Sampling;
use tperf_core::schedule::{AttentionKernel, Options, Precision, Transformer};
use tperf_cpu::CpuBackend;
use tperf_cuda::CudaBackend;
use tperf_engine::{
    Batching, BuildError, Engine, EngineConfig, Event, EventSink, FinishReason, Limits, Policy,
    Request, RequestId, SubmitError, VtcWeights,
};
use tperf_runtime::tokenizer::Tokenizer;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A checkpoint (.safetensors, written by `tperf train`), or a preset / config.json, which
    /// serves random weights.
    pub model: String,
    /// cpu, cuda, cuda:N, or auto (the first GPU if there is one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Address to bind: 127.0.0.1 serves this machine only; 0.0.0.0 every interface.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed on stderr).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The name clients give as `model` (default: the MODEL argument as written).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Admission order: fcfs, or vtc (fair: per-client virtual token counters).
    #[arg(long, default_value = "fcfs")]
    pub policy: Policy,
    /// continuous: requests join the running batch at every step; static: only an empty one
    /// (the batch runs until all of it has finished), the baseline to compare against.
    #[arg(long, default_value = "continuous")]
    pub batching: Batching,
    /// VTC's charge per prompt token.
    #[arg(long, default_value_t = 1.0)]
    pub vtc_input_weight: f64,
    /// VTC's charge per generated token.
    #[arg(long, default_value_t = 2.0)]
    pub vtc_output_weight: f64,
    /// Sequences in the running batch at most.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Tokens one engine step runs at most (decode rows plus prefill chunks).
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Blocks of 16 positions in the paged KV cache (default: what --kv-memory holds, at most
    /// a full context for each of --max-num-seqs).
    #[arg(long)]
    pub kv_blocks: Option<usize>,
    /// Memory for the KV cache when --kv-blocks is not given (default 1GiB on the CPU, 16GiB on
    /// a GPU).
    #[arg(long, value_parser = parse_bytes)]
    pub kv_memory: Option<u64>,
    /// Decode steps an engine iteration may run back to back when it only decodes (vLLM's
    /// multi-step scheduling): each step's tokens the step before's sampled ids, on the device,
    /// so the host's part of an iteration and its wait for the ids come once per that many
    /// tokens. Requests join and leave at iteration boundaries; their tokens stream in groups.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub decode_steps: u64,
    /// Waiting requests at most; past it a request is answered 429.
    #[arg(long, default_value_t = 1024)]
    pub max_queue: usize,
    /// Request bodies larger than this are refused (413).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
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
    /// Seed of the random weights of a preset.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Milliseconds to pause after every engine step (tests of disconnects and shutdown).
    #[arg(long, default_value_t = 0, hide = true)]
    pub debug_step_delay_ms: u64,
}

struct AppState {
    engine: Engine,
    tokenizer: Tokenizer,
    /// A Hugging Face folder with a chat template: /v1/chat/completions renders messages with
    /// it (ChatML, Llama 3, [INST]) instead of tperf's plain-text `User:`/`Assistant:` turns.
    hf_chat: Option<tperf_runtime::hf::HfModel>,
    limits: Limits,
    name: String,
    created: u64,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every connection holds a file descriptor: raises the soft limit on open files to the hard
/// one (often 1024 against far more), so that a thousand concurrent streams are not refused by
/// the kernel. Returns the limit now in force.
#[cfg(unix)]
// rlim_t is u64 on 64-bit Linux, not on every unix: the casts are for the others.
#[allow(clippy::unnecessary_cast)]
fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(raised.rlim_cur as u64);
        }
    }
    Some(lim.rlim_cur as u64)
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> Option<u64> {
    None
}

pub fn run(args: ServeArgs) -> Result<()> {
    let open_files = raise_open_file_limit();
    let policy = match args.policy {
        Policy::Fcfs => Policy::Fcfs,
        Policy::Vtc(_) => {
            let w = VtcWeights {
                input: args.vtc_input_weight,
                output: args.vtc_output_weight,
            };
            if !(w.input.is_finite() && w.output.is_finite() && w.input >= 0.0 && w.output >= 0.0) {
                bail!("the VTC weights must be numbers ≥ 0");
            }
            Policy::Vtc(w)
        }
    };
    if args.max_num_seqs == 0 || args.max_num_batched_tokens == 0 || args.max_queue == 0 {
        bail!("--max-num-seqs, --max-num-batched-tokens and --max-queue must be at least 1");
    }
    let opts = Options {
        precision: args.dtype,
        attention: args.attention,
        ..Options::default()
    };
    let device = super::resolve_device(&args.device)?;
    let kv_memory = args.kv_memory.unwrap_or(match device {
        Device::Cpu => 1 << 30,
        Device::Cuda(_) => 16 << 30,
    });
    let mcfg = model_config(&args.model)?;
    // The weights and the largest step the scheduler forms (a prefill of the token budget) must
    // fit before anything is allocated; the KV cache is sized separately (--kv-memory).
    let largest_step = tperf_core::cost::analysis::Scenario {
        workload: tperf_core::cost::analysis::Workload::Prefill,
        batch: 1,
        seq: args.max_num_batched_tokens.clamp(1, mcfg.context.max(1)),
        opts,
    };
    super::check_fits(device, &mcfg, &largest_step)?;
    let kv_blocks = match args.kv_blocks {
        Some(0) => bail!("--kv-blocks 0 holds nothing: give at least 1"),
        Some(n) => n,
        None => default_kv_blocks(&mcfg, args.dtype, args.max_num_seqs, kv_memory),
    };
    let cfg = EngineConfig {
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        kv_blocks,
        max_queue: args.max_queue,
        policy,
        batching: args.batching,
        decode_steps: args.decode_steps as usize,
        step_delay: std::time::Duration::from_millis(args.debug_step_delay_ms),
        ..EngineConfig::default()
    };
    let (spec, tok, seed) = (args.model.clone(), args.tokenizer.clone(), args.seed);
    let engine = match device {
        Device::Cpu => start(|| Ok(CpuBackend::new()), spec, tok, opts, seed, cfg)?,
        Device::Cuda(i) => start(move || Ok(CudaBackend::new(i)?), spec, tok, opts, seed, cfg)?,
    };
    let limits = engine.limits();
    eprintln!(
        "engine: {} batching, {} policy, ≤ {} sequences and ≤ {} tokens a step, {} KV blocks of {} ({} positions), queue ≤ {}, open files ≤ {}",
        args.batching.name(),
        args.policy.name(),
        args.max_num_seqs,
        args.max_num_batched_tokens,
        limits.kv_blocks,
        limits.block_size,
        limits.kv_blocks * limits.block_size,
        args.max_queue,
        open_files.map_or("?".to_string(), |n| n.to_string())
    );
    let folder = std::path::Path::new(&args.model);
    let hf_chat = if folder.is_dir() {
        let hf = tperf_runtime::hf::HfModel::open(folder)?;
        match &hf.chat_template {
            Some(_) => {
                // The format is checked now, so a template tperf cannot render fails at start.
                hf.apply_chat_template(&[], true)?;
                eprintln!("chat: the folder's chat template");
                Some(hf)
            }
            None => None,
        }
    } else {
        None
    };
    let state = Arc::new(AppState {
        hf_chat,
        tokenizer: engine.tokenizer(),
        engine,
        limits,
        name: args.served_model_name.clone().unwrap_or(args.model.clone()),
        created: now_s(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(state.clone(), &args))?;
    // Every connection has closed: what was in flight has finished or been cancelled.
    state.engine.shutdown(false);
    eprintln!("tperf serve: stopped");
    Ok(())
}

/// The config of `spec` without loading its weights (for sizing the cache).
fn model_config(spec: &str) -> Result<tperf_core::config::ModelConfig> {
    let p = std::path::Path::new(spec);
    if spec.ends_with(".safetensors") || (!spec.ends_with(".json") && p.is_file()) {
        Ok(tperf_runtime::checkpoint::read_metadata(p)?.config)
    } else {
        Ok(crate::load::load(spec)?.config)
    }
}

/// KV blocks that fit in `memory`: each holds K and V of 16 positions in every layer,
/// 2 · L · H_kv · D · 16 values of the compute dtype; no more than a full context for each of
/// `max_seqs` sequences, and no fewer than one context.
fn default_kv_blocks(
    cfg: &tperf_core::config::ModelConfig,
    precision: Precision,
    max_seqs: usize,
    memory: u64,
) -> usize {
    let bs = tperf_core::schedule::ragged::DEFAULT_BLOCK_SIZE;
    let value_bytes = if precision == Precision::Fp32 { 4 } else { 2 };
    let block_bytes = (2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * bs * value_bytes) as u64;
    let per_context = cfg.context.div_ceil(bs);
    let fit = (memory / block_bytes.max(1)) as usize;
    fit.min(max_seqs * per_context).max(per_context)
}

/// Starts the engine, building the backend and the model on its worker thread.
fn start<B: tperf_core::backend::Backend + 'static>(
    new_backend: impl FnOnce() -> Result<B, BuildError> + Send + 'static,
    spec: String,
    tokenizer: Option<String>,
    opts: Options,
    seed: u64,
    cfg: EngineConfig,
) -> Result<Engine> {
    let build = move || -> Result<(B, Transformer, Tokenizer), BuildError> {
        let mut be = new_backend()?;
        // The fit was checked before the engine started (`run`).
        let (model, tok) =
            load_model(&mut be, &spec, tokenizer.as_deref(), opts, seed, &|_, _| {
                Ok(())
            })?;
        Ok((be, model, tok))
    };
    Ok(Engine::start(build, cfg)?)
}

async fn serve(state: Arc<AppState>, args: &ServeArgs) -> Result<()> {
    let app = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint",
                "invalid_request_error",
                None,
                None,
            )
        })
        .layer(DefaultBodyLimit::max(args.max_body_bytes))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "tperf serve: {} on http://{addr}/v1 (Ctrl-C stops)",
        state.name
    );
    let closing = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!("tperf serve: stopping: no new requests; finishing those in flight (a second signal cancels them)");
            closing.engine.close(false);
            let again = closing.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                eprintln!("tperf serve: cancelling the requests in flight");
                again.engine.close(true);
            });
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// An answer in OpenAI's error shape (kept small: a `Response` is too large to return as an `Err`).
struct ApiError {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> ApiError {
    ApiError {
        status,
        body: api::error_body(message, kind, param, code),
    }
}

fn bad_request(message: &str, param: Option<&str>) -> ApiError {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        None,
    )
}

async fn models(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": s.name,
            "object": "model",
            "created": s.created,
            "owned_by": "tperf",
            "max_model_len": s.limits.context,
        }]
    }))
    .into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.engine.metrics().prometheus(&s.name),
    )
        .into_response()
}

/// An engine sink on tokio's channel: `send` never blocks the engine's thread.
struct Sink(UnboundedSender<Event>);

impl EventSink for Sink {
    fn send(&mut self, event: Event) -> bool {
        self.0.send(event).is_ok()
    }
}

/// Cancels the request when the response is dropped before it finished: a client that hung up
/// (its stream or its waiting handler dropped) frees its blocks at once.
struct CancelOnDrop {
    state: Arc<AppState>,
    id: RequestId,
    done: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done {
            self.state.engine.cancel(self.id);
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        let status = r.status();
        error(status, &r.body_text(), "invalid_request_error", None, None)
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        let message = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("the body is not valid JSON: {e}")
            }
            _ => format!("the request does not match the API: {e}"),
        };
        bad_request(&message, None)
    })
}

/// Whose request this is, for the fair scheduler: the `user` field, else the X-Client-Id or
/// X-User-Id header, else anonymous.
fn client_of(common: &Common, headers: &HeaderMap) -> String {
    common
        .user
        .clone()
        .or_else(|| {
            ["x-client-id", "x-user-id"].iter().find_map(|h| {
                headers
                    .get(*h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
        })
        .unwrap_or_default()
}

/// Checks the shared fields and builds the engine's request for `prompt`.
fn request(
    s: &AppState,
    common: Common,
    prompt: Vec<u32>,
    default_max: Option<usize>,
    extra_stop: Option<&str>,
    headers: &HeaderMap,
) -> Result<Request, ApiError> {
    if let Some(m) = &common.model {
        if m != &s.name {
            return Err(error(
                StatusCode::NOT_FOUND,
                &format!(
                    "the model `{m}` does not exist: this server serves `{}`",
                    s.name
                ),
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ));
        }
    }
    if common.n.is_some_and(|n| n != 1) {
        return Err(bad_request(
            "tperf serves one choice per request: n must be 1",
            Some("n"),
        ));
    }
    let max_tokens = match common.max_tokens.or(common.max_completion_tokens) {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => default_max.unwrap_or_else(|| s.limits.room(prompt.len()).max(1)),
    };
    let top_k = match common.top_k {
        None | Some(-1) | Some(0) => None,
        Some(k) if k > 0 => Some(k as usize),
        Some(_) => {
            return Err(bad_request(
                "top_k must be -1 (no cut) or at least 1",
                Some("top_k"),
            ))
        }
    };
    let client = client_of(&common, headers);
    let mut stop = common.stop.map(api::Stop::into_vec).unwrap_or_default();
    if stop.len() > 16 {
        return Err(bad_request("at most 16 stop strings", Some("stop")));
    }
    stop.extend(extra_stop.map(str::to_string));
    let req = Request {
        prompt,
        max_tokens,
        sampling: Sampling {
            temperature: common.temperature.unwrap_or(1.0),
            top_k,
            top_p: common.top_p,
            // Without a seed every request draws differently.
            seed: common.seed.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
        },
        stop,
        client,
        ignore_eos: common.ignore_eos,
    };
    s.limits.validate(&req).map_err(submit_error)?;
    Ok(req)
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Invalid { param, message } => bad_request(&message, Some(param)),
        SubmitError::QueueFull { .. } => error(
            StatusCode::TOO_MANY_REQUESTS,
            &e.to_string(),
            "rate_limit_error",
            None,
            Some("queue_full"),
        ),
        SubmitError::ShuttingDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &e.to_string(),
            "server_error",
            None,
            None,
        ),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r: CompletionRequest = match parse(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let prompt = match r.prompt {
        Prompt::Text(t) => s.tokenizer.encode(&t),
        Prompt::Tokens(t) => t,
        Prompt::Texts(mut v) if v.len() == 1 => s.tokenizer.encode(&v.remove(0)),
        Prompt::TokenLists(mut v) if v.len() == 1 => v.remove(0),
        _ => {
            return bad_request(
                "tperf serves one prompt per request: send a string or a list of token ids",
                Some("prompt"),
            )
            .into_response()
        }
    };
    let common = r.common;
    let (stream, usage) = (
        common.stream,
        common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    );
    // OpenAI's default for completions.
    match request(&s, common, prompt, Some(16), None, &headers) {
        Ok(req) => respond(s, req, Kind::Completion, stream, usage).await,
        Err(e) => e.into_response(),
    }
}

async fn chat(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r: ChatRequest = match parse(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if r.messages.is_empty() {
        return bad_request("messages is empty", Some("messages")).into_response();
    }
    let (prompt, stop) = match &s.hf_chat {
        Some(hf) => {
            let mut messages = Vec::with_capacity(r.messages.len());
            for m in &r.messages {
                let content = match m.content.as_ref().map(|c| c.text()).transpose() {
                    Ok(c) => c.unwrap_or_default(),
                    Err(e) => return bad_request(&e, Some("messages")).into_response(),
                };
                messages.push(tperf_runtime::hf::ChatMessage {
                    role: m.role.clone(),
                    content,
                });
            }
            match hf.apply_chat_template(&messages, true) {
                // The rendering holds its BOS and turn markers: encode them as the special
                // tokens they are, adding nothing. The model ends its turn with an end token.
                Ok(text) => (s.tokenizer.encode_special(&text, false), None),
                Err(e) => return bad_request(&e.to_string(), Some("messages")).into_response(),
            }
        }
        None => match api::chat_prompt(&r.messages) {
            Ok(text) => (s.tokenizer.encode(&text), Some(api::CHAT_STOP)),
            Err(e) => return bad_request(&e, Some("messages")).into_response(),
        },
    };
    let common = r.common;
    let (stream, usage) = (
        common.stream,
        common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    );
    match request(&s, common, prompt, None, stop, &headers) {
        Ok(req) => respond(s, req, Kind::Chat, stream, usage).await,
        Err(e) => e.into_response(),
    }
}

fn finish_name(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        // Not an OpenAI reason; vLLM's name for a request the server ended.
        FinishReason::Cancelled => "abort",
        FinishReason::Error(_) => "error",
    }
}

async fn respond(
    s: Arc<AppState>,
    req: Request,
    kind: Kind,
    stream: bool,
    include_usage: bool,
) -> Response {
    let (tx, rx) = unbounded_channel();
    let id = match s.engine.submit(req, Box::new(Sink(tx))) {
        Ok(id) => id,
        Err(e) => return submit_error(e).into_response(),
    };
    let guard = CancelOnDrop {
        state: s.clone(),
        id,
        done: false,
    };
    let (prefix, object) = match kind {
        Kind::Completion => ("cmpl", "text_completion"),
        Kind::Chat => ("chatcmpl", "chat.completion"),
    };
    let rid = format!("{prefix}-{id}");
    if stream {
        return sse(s, rx, guard, kind, rid, include_usage);
    }
    let mut rx = rx;
    let mut guard = guard;
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Token { text: t, .. }) => text.push_str(&t),
            Some(Event::Finished {
                text: t,
                reason,
                usage,
            }) => {
                guard.done = true;
                if let FinishReason::Error(e) = &reason {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        e,
                        "server_error",
                        None,
                        None,
                    )
                    .into_response();
                }
                text.push_str(&t);
                let choice = match kind {
                    Kind::Completion => {
                        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_name(&reason)})
                    }
                    Kind::Chat => {
                        json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish_name(&reason)})
                    }
                };
                return axum::Json(json!({
                    "id": rid,
                    "object": object,
                    "created": now_s(),
                    "model": s.name,
                    "choices": [choice],
                    "usage": UsageJson::from(usage),
                }))
                .into_response();
            }
            None => {
                guard.done = true;
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the engine stopped",
                    "server_error",
                    None,
                    None,
                )
                .into_response();
            }
        }
    }
}

/// The request's events as server-sent events, in OpenAI's chunks: `data: {json}\n\n` per text
/// delta (chat: a first chunk with the role), a chunk with the finish reason, with
/// `stream_options.include_usage` a last chunk of no choices and the usage, then `data: [DONE]`.
fn sse(
    s: Arc<AppState>,
    rx: UnboundedReceiver<Event>,
    guard: CancelOnDrop,
    kind: Kind,
    rid: String,
    include_usage: bool,
) -> Response {
    let created = now_s();
    let object = match kind {
        Kind::Completion => "text_completion",
        Kind::Chat => "chat.completion.chunk",
    };
    let chunk = {
        let (name, rid) = (s.name.clone(), rid.clone());
        move |choice: Value| -> Bytes {
            let mut v = json!({"id": rid, "object": object, "created": created, "model": name, "choices": [choice]});
            if include_usage {
                v["usage"] = Value::Null;
            }
            Bytes::from(format!("data: {v}\n\n"))
        }
    };
    let text_choice = move |text: &str, finish: Option<&str>| match kind {
        Kind::Completion => {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
        }
        Kind::Chat => {
            let delta = if finish.is_some() && text.is_empty() {
                json!({})
            } else {
                json!({"content": text})
            };
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
    };
    struct St {
        rx: UnboundedReceiver<Event>,
        guard: CancelOnDrop,
        queue: std::collections::VecDeque<Bytes>,
        ended: bool,
    }
    let mut queue = std::collections::VecDeque::new();
    if kind == Kind::Chat {
        queue.push_back(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})));
    }
    let st = St {
        rx,
        guard,
        queue,
        ended: false,
    };
    let name = s.name.clone();
    let stream = futures_util::stream::unfold(st, move |mut st| {
        let chunk = chunk.clone();
        let name = name.clone();
        let rid = rid.clone();
        async move {
            loop {
                if let Some(b) = st.queue.pop_front() {
                    return Some((Ok::<Bytes, std::convert::Infallible>(b), st));
                }
                if st.ended {
                    return None;
                }
                match st.rx.recv().await {
                    Some(Event::Token { text, .. }) => {
                        if !text.is_empty() {
                            st.queue.push_back(chunk(text_choice(&text, None)));
                        }
                    }
                    Some(Event::Finished {
                        text,
                        reason,
                        usage,
                    }) => {
                        st.guard.done = true;
                        st.ended = true;
                        if let FinishReason::Error(e) = &reason {
                            let body = api::error_body(e, "server_error", None, None);
                            st.queue.push_back(Bytes::from(format!("data: {body}\n\n")));
                        } else {
                            if !text.is_empty() {
                                st.queue.push_back(chunk(text_choice(&text, None)));
                            }
                            st.queue
                                .push_back(chunk(text_choice("", Some(finish_name(&reason)))));
                            if include_usage {
                                let v = json!({"id": rid, "object": object, "created": created, "model": name, "choices": [], "usage": UsageJson::from(usage)});
                                st.queue.push_back(Bytes::from(format!("data: {v}\n\n")));
                            }
                        }
                        st.queue.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    }
                    None => {
                        st.guard.done = true;
                        st.ended = true;
                        st.queue.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    }
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
