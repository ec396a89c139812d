//! `tperf bench serve`: the serving benchmark client (vLLM's `vllm bench serve`, with its
//! metric names and definitions) against any OpenAI-compatible server, and `tperf plan serve`:
//! the schedule's prediction of the same workload, printed beside the measurement when the
//! benchmark is told which model and GPU the server runs.

use super::{find_hw, ScheduleArgs};
use crate::load;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;
use tperf_bench::serve::client::{self, Api, ClientConfig, Target};
use tperf_bench::serve::dataset::{self, RandomLengths, RequestSpec};
use tperf_bench::serve::engine_steps::{KindDelta, StepTimes};
use tperf_bench::serve::fairness::{self, Fairness};
use tperf_bench::serve::metrics::{self, Metrics, RequestOutcome};
use tperf_bench::serve::summary::{
    self, EngineStep, FairnessSummary, Predicted, RunSummary, ServingSummary,
};
use tperf_core::cost::calibration::Calibration;
use tperf_core::cost::hardware::Hardware;
use tperf_core::cost::serve::{self as serve_model, RatePoint, ServeConfig, ServePrediction};
use tperf_core::rng::Rng;
use tperf_report::table::Table;
use tperf_report::units;
use tperf_runtime::tokenizer::Tokenizer;

/// The server the prediction is for: the model it serves, on which GPU, configured how.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeModelArgs {
    /// Hardware the server runs on (see `tperf hw list`).
    #[arg(long, alias = "gpu", default_value = "h100-sxm")]
    pub hw: String,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// KV blocks the server holds (default: what fits in --gpu-memory-utilization of the GPU
    /// after the weights and a prefill step's activations).
    #[arg(long)]
    pub kv_blocks: Option<usize>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16, value_parser = super::parse_positive)]
    pub block_size: usize,
    /// The most sequences the scheduler runs at once (vLLM's max_num_seqs).
    #[arg(long, default_value_t = 256, value_parser = super::parse_positive)]
    pub max_num_seqs: usize,
    /// Tokens one prefill step may carry (vLLM's max_num_batched_tokens).
    #[arg(long, default_value_t = 8192, value_parser = super::parse_positive)]
    pub max_batched_tokens: usize,
    /// Fraction of the GPU's memory the server may use.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Time every prefill and decode step with a calibration (`tperf calibrate` on the serving
    /// GPU) instead of the roofline: its per-op curves at the batch sizes the scheduler forms,
    /// and its host overhead per op.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<std::path::PathBuf>,
}

impl ServeModelArgs {
    /// The server's configuration as the model takes it, with the host time per step the
    /// server was measured to spend, where it was.
    fn serve_config(
        &self,
        input_len: usize,
        output_len: usize,
        host_seconds_per_step: Option<f64>,
    ) -> ServeConfig {
        ServeConfig {
            max_num_seqs: self.max_num_seqs,
            max_batched_tokens: self.max_batched_tokens,
            block_size: self.block_size,
            kv_blocks: self.kv_blocks,
            gpu_memory_utilization: self.gpu_memory_utilization,
            host_seconds_per_step,
            ..ServeConfig::new(input_len, output_len)
        }
    }

    fn inputs(&self, model: &str) -> Result<(load::LoadedModel, Hardware, Option<Calibration>)> {
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            bail!(
                "--gpu-memory-utilization {} is not a fraction in (0, 1]",
                self.gpu_memory_utilization
            );
        }
        let m = load::load(model)?;
        let hw = find_hw(&self.hw)?;
        let calibration = super::load_calibration(self.calibration.as_deref(), &hw)?;
        Ok((m, hw, calibration))
    }

    /// The serving model's prediction; `host_seconds_per_step`: the engine's own time per
    /// step as measured on the server (it then replaces the calibration's estimate).
    pub fn predict(
        &self,
        model: &str,
        input_len: usize,
        output_len: usize,
        rates: &[f64],
        host_seconds_per_step: Option<f64>,
    ) -> Result<ServePrediction> {
        let (m, hw, calibration) = self.inputs(model)?;
        Ok(serve_model::predict_calibrated(
            &m.config,
            &hw,
            self.schedule.options(),
            self.serve_config(input_len, output_len, host_seconds_per_step),
            rates,
            calibration.as_ref(),
        )?)
    }

    /// The model's decode step at `batch`, the device's part alone (no engine host term).
    pub fn device_step_seconds(
        &self,
        model: &str,
        input_len: usize,
        output_len: usize,
        batch: usize,
    ) -> Result<f64> {
        let (m, hw, calibration) = self.inputs(model)?;
        Ok(serve_model::decode_step_seconds(
            &m.config,
            &hw,
            self.schedule.options(),
            self.serve_config(input_len, output_len, Some(0.0)),
            calibration.as_ref(),
            batch,
        )?)
    }
}

#[derive(clap::Args, Debug)]
pub struct PlanServeArgs {
    /// A preset or config.json: the model the server runs.
    pub model: String,
    #[arg(long, default_value_t = 128, value_parser = super::parse_positive)]
    pub input_len: usize,
    #[arg(long, default_value_t = 128, value_parser = super::parse_positive)]
    pub output_len: usize,
    /// Request rates (req/s) to predict TTFT and TPOT at: a list, 1,5,10.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate)]
    pub request_rate: Vec<f64>,
    #[command(flatten)]
    pub server: ServeModelArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn plan(args: PlanServeArgs) -> Result<()> {
    let p = args.server.predict(
        &args.model,
        args.input_len,
        args.output_len,
        &args.request_rate,
        None,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print!("{}", render_prediction(&p));
    }
    Ok(())
}

pub const QUEUEING_NOTE: &str = "saturation: S = T_prefill(b_p)/b_p + (O − 1)·T_decode(B)/B of GPU time per request, throughput 1/S; at a rate λ: an M/D/1 queue of service S (wait ρS/(2(1−ρ)), ρ = λS), TPOT = T_decode(b)/(1 − λ·T_prefill(1)) with b from Little's law, TTFT = wait + T_prefill(1) + T_decode(b)/2 (docs/serving.md)";

pub fn render_prediction(p: &ServePrediction) -> String {
    let c = &p.config;
    let mut t = Table::new(&["quantity", "value"]).titled(format!(
        "Serving {} on {}: {} in / {} out, continuous batching (predicted, {})",
        p.model,
        p.hardware,
        c.input_len,
        c.output_len,
        basis(p)
    ));
    let mut row = |k: &str, v: String| t.row(vec![k.to_string(), v]);
    row(
        "step times",
        match &p.calibration {
            Some(label) => format!(
                "calibrated: {label}; the decode step at B includes {} of host gap between ops (profiled) and {} of the engine's own step ({})",
                units::seconds(p.decode_overhead_seconds),
                units::seconds(p.engine_overhead_seconds),
                if p.engine_overhead_seconds > 0.0 { "measured by tperf calibrate" } else { "not in the file" }
            ),
            None => "roofline: every op at max(FLOPs / peak, bytes / bandwidth), no host overhead (--calibration FILE for this machine's kernels)".into(),
        },
    );
    row("weights", units::bytes(p.weights_bytes));
    row("prefill activations", units::bytes(p.activation_bytes));
    row(
        "KV blocks",
        format!(
            "{} of {} tokens, {} each{}",
            units::thousands(p.kv_blocks as u64),
            c.block_size,
            units::bytes(p.kv_bytes_per_block),
            if c.kv_blocks.is_some() {
                " (given)"
            } else {
                ""
            }
        ),
    );
    row(
        "sequences whose blocks fit",
        format!(
            "{} ({} blocks each)",
            units::thousands(p.kv_sequences as u64),
            p.blocks_per_sequence
        ),
    );
    row(
        "running batch B at saturation",
        format!("{} (max_num_seqs {})", p.saturation.batch, c.max_num_seqs),
    );
    row(
        "prefill step",
        format!(
            "{} for {} prompts (T_prefill(1) = {})",
            units::seconds(p.prefill_step_seconds),
            p.prefill_batch,
            units::seconds(p.prefill_one_seconds)
        ),
    );
    row(
        "decode step at B",
        format!(
            "{} (context {})",
            units::seconds(p.saturation.decode_step_seconds),
            p.decode_context
        ),
    );
    row(
        "request throughput",
        format!("{:.2} req/s", p.saturation.request_throughput),
    );
    row(
        "output token throughput",
        format!("{:.1} tok/s", p.saturation.output_throughput),
    );
    t.note(QUEUEING_NOTE);
    let mut s = t.render();
    let mut sweep = Table::new(&[
        "batch cap",
        "decode step",
        "decode tok/s",
        "req/s",
        "output tok/s",
    ])
    .titled(if p.calibration.is_some() {
        "Saturation by batch cap (calibrated step times)"
    } else {
        "Saturation by batch cap (decode tok/s at batch 1 = the decode roofline)"
    });
    for pt in &p.sweep {
        sweep.row(vec![
            pt.batch.to_string(),
            units::seconds(pt.decode_step_seconds),
            format!("{:.1}", pt.decode_tokens_per_second),
            format!("{:.2}", pt.request_throughput),
            format!("{:.1}", pt.output_throughput),
        ]);
    }
    s.push('\n');
    s.push_str(&sweep.render());
    if !p.rates.is_empty() {
        let mut r = Table::new(&["req/s", "utilisation", "batch", "TTFT", "TPOT", "E2EL"])
            .titled("At a request rate (Poisson arrivals)");
        for pt in &p.rates {
            r.row(rate_row(pt));
        }
        s.push('\n');
        s.push_str(&r.render());
    }
    s
}

/// Which step times a prediction rests on, for headers.
pub fn basis(p: &ServePrediction) -> &'static str {
    if p.calibration.is_some() {
        "calibrated"
    } else {
        "roofline"
    }
}

fn rate_row(pt: &RatePoint) -> Vec<String> {
    let ms = |v: Option<f64>| v.map_or("saturated".into(), |s| format!("{:.2} ms", s * 1e3));
    vec![
        format!("{:.2}", pt.request_rate),
        units::percent(pt.utilisation),
        pt.running_batch.map_or("—".into(), |b| format!("{b:.1}")),
        ms(pt.ttft_seconds),
        ms(pt.tpot_seconds),
        ms(pt.e2el_seconds),
    ]
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("inf") {
        return Ok(f64::INFINITY);
    }
    t.parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .ok_or_else(|| format!("'{s}' is not a positive rate in requests/s (or inf)"))
}

fn parse_percentile(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| (0.0..=100.0).contains(v))
        .ok_or_else(|| format!("'{s}' is not a percentile in [0, 100]"))
}

#[derive(clap::Args, Debug)]
pub struct ServeBenchArgs {
    /// The server: http://HOST:PORT[/PREFIX].
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// The served model's name (default: the first that GET /v1/models lists).
    #[arg(long)]
    pub model: Option<String>,
    /// /v1/completions, or /v1/chat/completions (text prompts only).
    #[arg(long, default_value = "/v1/completions")]
    pub endpoint: String,
    /// random, or sharegpt:PATH (a ShareGPT-format JSON file).
    #[arg(long, default_value = "random")]
    pub dataset: String,
    #[arg(long, default_value_t = 1000, value_parser = super::parse_positive)]
    pub num_prompts: usize,
    /// Prompt tokens of the random dataset.
    #[arg(long, default_value_t = 128, value_parser = super::parse_positive)]
    pub random_input_len: usize,
    /// Output tokens asked for (max_tokens) in the random dataset.
    #[arg(long, default_value_t = 128, value_parser = super::parse_positive)]
    pub random_output_len: usize,
    /// Lengths are uniform over [L(1 − r), L(1 + r)].
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Random prompts as GPT-2 text of the exact token length, or as token-id arrays.
    #[arg(long, default_value = "text", value_parser = ["text", "ids"])]
    pub random_prompt: String,
    /// Ask every ShareGPT request for this many tokens instead of its reply's length.
    #[arg(long)]
    pub sharegpt_output_len: Option<usize>,
    /// Requests per second (inf: all at once); with --clients, the total unless --client-rates.
    /// A list (1,2,4,8,inf) sweeps: the same prompts are sent at each rate in turn, and a table
    /// of TTFT/TPOT p50/p99 and throughput per rate ends the run.
    #[arg(long, value_delimiter = ',', default_value = "inf", value_parser = parse_rate)]
    pub request_rate: Vec<f64>,
    /// A p99 TTFT limit in ms: the sweep names the highest rate whose p99 TTFT stays within it
    /// and the request throughput measured there (how static and continuous batching are
    /// compared "at equal p99 TTFT").
    #[arg(long)]
    pub ttft_p99_slo_ms: Option<f64>,
    /// Another sweep's JSON (`--json` of a `tperf bench serve` sweep, say of the same server
    /// with static batching): after this sweep, each series' highest rate within one p99 TTFT
    /// limit and the ratio of their request throughputs there ("at equal p99 TTFT"). The limit
    /// is --ttft-p99-slo-ms, or --ttft-slo-multiple × the largest p99 TTFT any series shows at
    /// its lightest rate.
    #[arg(long, value_name = "FILE")]
    pub compare_with: Option<std::path::PathBuf>,
    /// With --compare-with and no --ttft-p99-slo-ms: the limit as a multiple of the light-load
    /// p99 TTFT.
    #[arg(long, default_value_t = 2.0)]
    pub ttft_slo_multiple: f64,
    /// In a sweep, send at most rate × this many seconds of prompts at each finite rate (and
    /// at least 16), so that the low rates of a sweep take seconds, not num-prompts / rate.
    #[arg(long)]
    pub sweep_duration_s: Option<f64>,
    /// The VTC bound of the server, 2·max(w_in·L_in, w_out·M) in weighted tokens (L_in the
    /// longest prompt, M the tokens its KV cache holds), drawn beside the fairness gap.
    #[arg(long)]
    pub fairness_bound: Option<f64>,
    /// What the report calls these runs: the server's batching or policy (continuous, static,
    /// vtc, fcfs); runs of one label at several rates are drawn as one curve.
    #[arg(long, default_value = "measured")]
    pub label: String,
    /// Leave every request's outcome (send and chunk times) out of the JSON: the metrics, the
    /// compact serving summary and the fairness record stay.
    #[arg(long)]
    pub omit_requests: bool,
    /// Gamma shape of the inter-arrival times: 1 = Poisson, < 1 burstier, > 1 more regular.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// The most requests in flight at once.
    #[arg(long, value_parser = super::parse_positive)]
    pub max_concurrency: Option<usize>,
    /// Clients, each with its own `user` field (client-0, client-1, …) and arrival process.
    #[arg(long, default_value_t = 1, value_parser = super::parse_positive)]
    pub clients: usize,
    /// Each client's request rate: r1,r2,… (default: --request-rate shared equally).
    #[arg(long, value_delimiter = ',', value_parser = parse_rate)]
    pub client_rates: Vec<f64>,
    /// Time buckets of the per-client service, in seconds (default: the run in 20).
    #[arg(long)]
    pub fairness_bucket_s: Option<f64>,
    /// Percentiles to report.
    #[arg(long, value_delimiter = ',', default_value = "50,90,99", value_parser = parse_percentile)]
    pub percentiles: Vec<f64>,
    /// Service-level objectives for goodput, in ms: ttft:500 tpot:50 e2el:10000.
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not send vLLM's ignore_eos (outputs may then stop before max_tokens).
    #[arg(long)]
    pub no_ignore_eos: bool,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
    /// Write the results, every request's outcome and the provenance as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// The model the server runs (a preset or config.json): prints the schedule's prediction
    /// of this workload beside the measurement (with --hw, --dtype, --kv-blocks, …).
    #[arg(long)]
    pub model_config: Option<String>,
    #[command(flatten)]
    pub server: ServeModelArgs,
}

pub fn run(args: ServeBenchArgs, command_line: Vec<String>) -> Result<()> {
    let target = Target::parse(&args.url)?;
    let api = Api::of_endpoint(&args.endpoint);
    let slo = metrics::parse_slo(&args.goodput)?;
    if !(args.timeout_s > 0.0 && args.timeout_s.is_finite()) {
        bail!("--timeout-s {} must be a positive number", args.timeout_s);
    }
    if let Some(ms) = args.ttft_p99_slo_ms {
        if !(ms > 0.0 && ms.is_finite()) {
            bail!("--ttft-p99-slo-ms {ms} must be a positive number of milliseconds");
        }
    }
    let sweep = args.request_rate.len() > 1;
    if sweep && !args.client_rates.is_empty() {
        bail!("--client-rates fixes every client's rate: sweep --request-rate without it");
    }
    // Each run's rate per client.
    let runs: Vec<Vec<f64>> = if args.client_rates.is_empty() {
        args.request_rate
            .iter()
            .map(|&r| vec![r / args.clients as f64; args.clients])
            .collect()
    } else if args.client_rates.len() != args.clients {
        bail!(
            "--client-rates gives {} rates for --clients {}",
            args.client_rates.len(),
            args.clients
        );
    } else {
        vec![args.client_rates.clone()]
    };
    if !(args.ttft_slo_multiple > 0.0 && args.ttft_slo_multiple.is_finite()) {
        bail!(
            "--ttft-slo-multiple {} must be a positive number",
            args.ttft_slo_multiple
        );
    }
    // Read before any request is sent: a wrong path fails fast.
    let compared = match &args.compare_with {
        Some(path) => Some(read_serving(path)?),
        None => None,
    };
    let tok = Tokenizer::gpt2();
    let mut rng = Rng::new(args.seed);
    let specs = load_dataset(&args, &tok, &mut rng)?;
    // The prediction is checked before any request is sent: a wrong --model-config fails fast.
    let mean = |f: fn(&RequestSpec) -> usize| {
        (specs.iter().map(f).sum::<usize>() as f64 / specs.len() as f64).round() as usize
    };
    let (mean_in, mean_out) = (mean(|s| s.prompt_len), mean(|s| s.output_len));
    let predictions: Vec<Option<ServePrediction>> = runs
        .iter()
        .map(|client_rates| {
            let total: f64 = client_rates.iter().sum();
            let Some(m) = &args.model_config else {
                return Ok(None);
            };
            let rates: Vec<f64> = Some(total).filter(|r| r.is_finite()).into_iter().collect();
            args.server
                .predict(m, mean_in.max(1), mean_out.max(1), &rates, None)
                .with_context(|| format!("predicting {m} on {}", args.server.hw))
                .map(Some)
        })
        .collect::<Result<_>>()?;
    if let Some(d) = args.sweep_duration_s {
        if !(d > 0.0 && d.is_finite()) {
            bail!("--sweep-duration-s {d} must be a positive number of seconds");
        }
    }
    let schedules = runs
        .iter()
        .map(|rates| {
            let total: f64 = rates.iter().sum();
            let n = match args.sweep_duration_s {
                Some(d) if total.is_finite() => {
                    ((total * d).ceil() as usize).clamp(16.min(specs.len()), specs.len())
                }
                _ => specs.len(),
            };
            tperf_bench::serve::schedule(specs[..n].to_vec(), rates, args.burstiness, args.seed)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let api_key = std::env::var("OPENAI_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let served = rt.block_on(client::models(&target, api_key.as_deref()));
    let model = match (&args.model, &served) {
        (Some(m), _) => m.clone(),
        (None, Ok(ids)) if !ids.is_empty() => ids[0].clone(),
        (None, Ok(_)) => bail!("{} lists no model: name one with --model", target.url()),
        (None, Err(e)) => {
            bail!("{e}; is the server up? (name the model with --model if it has no /v1/models)")
        }
    };
    // The engine's step counters, where the server is tperf's: read before and after each
    // run, so the run's host time per step goes into its prediction.
    let scrape = |rt: &tokio::runtime::Runtime| {
        rt.block_on(client::metrics_text(&target, api_key.as_deref()))
            .ok()
            .and_then(|text| StepTimes::parse(&text))
    };
    let cfg = Arc::new(ClientConfig {
        target: target.clone(),
        endpoint: args.endpoint.clone(),
        model: model.clone(),
        api,
        ignore_eos: !args.no_ignore_eos,
        api_key: api_key.clone(),
        request_timeout: Duration::from_secs_f64(args.timeout_s),
    });
    // One request first, as vLLM does: a server that cannot answer at all is an error with
    // its reason, not a thousand failed rows.
    let first = &schedules[0][0].spec;
    cfg.body(first, 0)?;
    let probe = rt.block_on(client::send(
        &cfg,
        &tok,
        first,
        0,
        std::time::Instant::now(),
    ));
    if let Some(e) = &probe.error {
        bail!(
            "the first request to {}{} failed: {e}",
            target.url(),
            args.endpoint
        );
    }
    let mut records = Vec::new();
    let mut serving = ServingSummary {
        setup: format!(
            "{model} at {}{}: {} requests of {} in / {} out tokens (means), burstiness {}",
            // Without the scheme: a report names no URL (it fetches nothing).
            target.url().trim_start_matches("http://"),
            args.endpoint,
            specs.len(),
            mean_in,
            mean_out,
            args.burstiness
        ),
        ttft_p99_slo_ms: args.ttft_p99_slo_ms,
        ..ServingSummary::default()
    };
    for ((client_rates, schedule), prediction) in runs.iter().zip(schedules).zip(predictions) {
        let total_rate: f64 = client_rates.iter().sum();
        eprintln!(
            "{} requests to {}{} ({model}), rate {}, burstiness {}{}",
            schedule.len(),
            target.url(),
            args.endpoint,
            rate_text(client_rates),
            args.burstiness,
            args.max_concurrency
                .map_or(String::new(), |n| format!(", at most {n} in flight"))
        );
        let sent = schedule.len();
        let steps_before = scrape(&rt);
        let bar = progress(schedule.len() as u64);
        let on_done = {
            let bar = bar.clone();
            Arc::new(move |_: &RequestOutcome| bar.inc(1))
        };
        let (outcomes, duration) = rt.block_on(client::run(
            cfg.clone(),
            tok.clone(),
            schedule,
            args.max_concurrency,
            on_done,
        ));
        bar.finish_and_clear();
        let m = Metrics::of(&outcomes, duration, &args.percentiles, &slo);
        let steps = steps_before.zip(scrape(&rt)).and_then(|(b, a)| a.since(&b));
        // The host term measured over this run replaces the pure model's (none) or the
        // calibration's estimate: the prediction is made again with it.
        let prediction = match (&args.model_config, steps) {
            (Some(name), Some(d)) => {
                let rates: Vec<f64> = Some(total_rate)
                    .filter(|r| r.is_finite())
                    .into_iter()
                    .collect();
                Some(args.server.predict(
                    name,
                    mean_in.max(1),
                    mean_out.max(1),
                    &rates,
                    Some(d.host_seconds_per_step),
                )?)
            }
            _ => prediction,
        };
        let engine_step = match steps {
            Some(d) => Some(EngineStep {
                steps: d.steps,
                mean_batch: d.mean_batch,
                host_ms: d.host_seconds_per_step * 1e3,
                device_ms: d.device_seconds_per_step * 1e3,
                by_kind: d.by_kind,
                modelled_device_ms: match &args.model_config {
                    Some(name) => Some(
                        args.server.device_step_seconds(
                            name,
                            mean_in.max(1),
                            mean_out.max(1),
                            (d.mean_batch.round() as usize).max(1),
                        )? * 1e3,
                    ),
                    None => None,
                },
            }),
            None => None,
        };
        let fair = (args.clients > 1).then(|| {
            let bucket = args
                .fairness_bucket_s
                .filter(|b| *b > 0.0)
                .unwrap_or((duration / 20.0).max(1e-3));
            fairness::fairness(&outcomes, args.clients, bucket)
        });
        if sweep {
            eprintln!("  {}", sweep_line(&m));
        } else {
            print!(
                "{}",
                render(&args, &target, &model, &m, prediction.as_ref(), total_rate)
            );
            println!("{}", engine_step_line(engine_step.as_ref()));
            if let Some(f) = &fair {
                print!("\n{}", render_fairness(f));
            }
        }
        if sweep {
            eprintln!("  {}", engine_step_line(engine_step.as_ref()));
        }
        if total_rate.is_infinite() && sent < 4 * m.max_concurrent_requests {
            serving.notes.push(format!(
                "rate inf sent {sent} requests, {:.1}× the {} that ran at once: the ramp-up and the tail weigh in, so it is not the steady state the model predicts (send ≥ 4× as many, --num-prompts)",
                sent as f64 / m.max_concurrent_requests.max(1) as f64,
                m.max_concurrent_requests
            ));
        }
        let mut run = RunSummary::of(
            &args.label,
            total_rate,
            &m,
            &outcomes,
            prediction.as_ref().map(|p| Predicted::of(p, total_rate)),
        );
        run.engine_step = engine_step;
        serving.runs.push(run);
        if let Some(f) = &fair {
            serving
                .fairness
                .push(FairnessSummary::of(&args.label, f, args.fairness_bound));
        }
        records.push((client_rates.clone(), m, fair, prediction, outcomes));
    }
    if let Some(other) = &compared {
        compare(&mut serving, other, &args);
    }
    if sweep {
        print!("{}", render_sweep(&serving));
    }
    for n in &serving.notes {
        println!("note: {n}");
    }
    if let Some(path) = &args.json {
        let settings = json!({
            "dataset": args.dataset,
            "num_prompts": args.num_prompts,
            "random_input_len": args.random_input_len,
            "random_output_len": args.random_output_len,
            "random_range_ratio": args.random_range_ratio,
            "request_rate": if sweep {
                json!(args.request_rate.iter().map(|r| json_rate(*r)).collect::<Vec<_>>())
            } else {
                json_rate(args.request_rate[0])
            },
            "client_rates": records[0].0.iter().map(|r| json_rate(*r)).collect::<Vec<_>>(),
            "burstiness": args.burstiness,
            "max_concurrency": args.max_concurrency,
            "ignore_eos": !args.no_ignore_eos,
            "seed": args.seed,
            "goodput_slo_ms": slo,
            "ttft_p99_slo_ms": args.ttft_p99_slo_ms,
            "label": args.label,
            "sweep_duration_s": args.sweep_duration_s,
        });
        let provenance = json!({
            "command_line": command_line,
            "tperf_version": env!("CARGO_PKG_VERSION"),
            "git_revision": env!("TPERF_GIT_REV"),
            "date_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            "server_url": target.url(),
            "endpoint": args.endpoint,
            "model": model,
            "served_models": served.as_ref().ok(),
        });
        let run_json = |(rates, m, fair, prediction, outcomes): &(
            Vec<f64>,
            Metrics,
            Option<Fairness>,
            Option<ServePrediction>,
            Vec<RequestOutcome>,
        )| {
            let mut v = json!({
                "request_rate": json_rate(rates.iter().sum()),
                "metrics": m,
                "vllm": vllm_keys(m),
                "fairness": fair,
                "prediction": prediction,
            });
            if !args.omit_requests {
                v["requests"] = json!(outcomes);
            }
            v
        };
        let doc = if sweep {
            json!({
                "provenance": provenance,
                "settings": settings,
                "sweep": records.iter().map(run_json).collect::<Vec<_>>(),
                "serving": serving,
            })
        } else {
            let mut doc = run_json(&records[0]);
            doc["provenance"] = provenance;
            doc["settings"] = settings;
            doc["serving"] = json!(serving);
            doc
        };
        super::report::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    if records.iter().all(|r| r.1.completed == 0) {
        bail!(
            "every request failed ({} of them)",
            records.iter().map(|r| r.1.failed).sum::<usize>()
        );
    }
    Ok(())
}

/// The `serving` summary of an earlier `tperf bench serve --json` file.
fn read_serving(path: &std::path::Path) -> Result<ServingSummary> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    serde_json::from_value(doc["serving"].clone()).with_context(|| {
        format!(
            "{} has no serving summary: give the --json of a tperf bench serve run",
            path.display()
        )
    })
}

/// The comparison at equal p99 TTFT of the other file's series and this run's, as notes (and
/// the limit set on this run's summary, so its table marks each rate).
fn compare(serving: &mut ServingSummary, other: &ServingSummary, args: &ServeBenchArgs) {
    let runs: Vec<RunSummary> = other.runs.iter().chain(&serving.runs).cloned().collect();
    let (slo, how) = match args.ttft_p99_slo_ms {
        Some(ms) => (Some(ms), "given".to_string()),
        None => (
            summary::ttft_slo_from_light_load(&runs, args.ttft_slo_multiple),
            format!(
                "{} × the largest p99 TTFT of a series at its lightest rate",
                args.ttft_slo_multiple
            ),
        ),
    };
    let Some(slo) = slo else {
        serving.notes.push("no comparison at equal p99 TTFT: a series has no finite-rate run to read its light-load TTFT from (sweep some finite rates)".into());
        return;
    };
    // To 0.1 ms: the limit is read off a measurement, and a table prints it.
    let slo = (slo * 10.0).round() / 10.0;
    serving.ttft_p99_slo_ms = Some(slo);
    let best = summary::sustained_under_ttft_slo(&runs, slo);
    let mut text = format!("at equal p99 TTFT (≤ {slo:.1} ms, {how}):");
    for b in &best {
        text.push_str(&format!(
            " {} sustains {:.2} req/s (at rate {});",
            b.series,
            b.request_throughput,
            b.request_rate.map_or("inf".into(), |r| format!("{r}"))
        ));
    }
    let mut series: Vec<&str> = Vec::new();
    for r in &runs {
        if !series.contains(&r.series.as_str()) {
            series.push(&r.series);
        }
    }
    for name in &series {
        if !best.iter().any(|b| b.series == *name) {
            text.push_str(&format!(" {name} met it at no rate of its sweep;"));
        }
    }
    if let [a, b] = &best[..] {
        text.push_str(&format!(
            " {} / {} = {:.2}×",
            a.series,
            b.series,
            a.request_throughput / b.request_throughput
        ));
    }
    serving.notes.push(text.trim_end_matches(';').to_string());
}

/// The server's step beside the model's: "engine step: measured X ms (host Y, device Z) vs
/// modelled W ms" (W: the model's device step at the run's mean batch plus the host Y measured).
fn engine_step_line(e: Option<&EngineStep>) -> String {
    let Some(e) = e else {
        return "engine step: the server publishes no tperf_engine_step_seconds on /metrics (not tperf?): the prediction is the pure model, with no measured host term".into();
    };
    let modelled = e.modelled_device_ms.map_or(String::new(), |d| {
        format!(
            " vs modelled {:.3} ms (device {d:.3} + host {:.3} measured)",
            d + e.host_ms,
            e.host_ms
        )
    });
    let kinds = e.by_kind.map_or(String::new(), |k| {
        let kind = |name: &str, d: &KindDelta| {
            let tokens = d
                .tokens_per_step
                .map_or(String::new(), |t| format!(", {t:.0} token rows"));
            let device = d.device_seconds_per_step * 1e3;
            let split = d.wait_seconds_per_step.map_or(String::new(), |w| {
                format!(
                    " = issue {:.3} + wait {:.3}",
                    device - w * 1e3,
                    w * 1e3
                )
            });
            format!(
                "{name} {} at {:.3} ms (host {:.3}, device {device:.3}{split}; {:.1} sequences{tokens})",
                d.steps,
                d.step_seconds() * 1e3,
                d.host_seconds_per_step * 1e3,
                d.mean_batch
            )
        };
        format!(
            "\n  by kind: {}; {} (a mean over each kind's steps; issue: the host laying out and issuing the step, wait: blocked on its result)",
            kind("decode-only", &k.decode),
            kind("with prefill", &k.with_prefill)
        )
    });
    format!(
        "engine step: measured {:.3} ms (host {:.3}, device {:.3}) over {} steps of {:.1} sequences (mean){modelled}{kinds}",
        e.host_ms + e.device_ms,
        e.host_ms,
        e.device_ms,
        e.steps,
        e.mean_batch
    )
}

fn sweep_line(m: &Metrics) -> String {
    let p = |s: &Option<metrics::LatencyStats>| {
        s.as_ref()
            .map_or("—".into(), |s| format!("{:.1} ms", s.median_ms))
    };
    format!(
        "{} ok, {} failed, {:.2} req/s, {:.1} output tok/s, median TTFT {}, median TPOT {}",
        m.completed,
        m.failed,
        m.request_throughput,
        m.output_throughput,
        p(&m.ttft),
        p(&m.tpot)
    )
}

/// The sweep's table: one row per run, and the highest rate within the TTFT SLO per label.
pub fn render_sweep(s: &ServingSummary) -> String {
    let predicted = s.runs.iter().any(|r| r.predicted.is_some());
    let labelled = s.runs.iter().any(|r| r.series != s.runs[0].series);
    let mut header = if labelled { vec!["series"] } else { vec![] };
    header.extend([
        "rate (req/s)",
        "ok / failed",
        "req/s",
        "output tok/s",
        "TTFT p50 (ms)",
        "TTFT p99 (ms)",
        "TPOT p50 (ms)",
        "TPOT p99 (ms)",
    ]);
    if predicted {
        header.extend([
            "predicted req/s",
            "predicted TTFT (ms)",
            "predicted TPOT (ms)",
        ]);
    }
    let stepped = s.runs.iter().any(|r| r.engine_step.is_some());
    if stepped {
        header.extend([
            "step host + device (ms)",
            "batch/step",
            "modelled device (ms)",
        ]);
    }
    if s.ttft_p99_slo_ms.is_some() {
        header.push("p99 TTFT within SLO");
    }
    let mut t = Table::new(&header).titled(format!("Request-rate sweep: {}", s.setup));
    let ms = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.2}"));
    for r in &s.runs {
        let q = |x: &Option<summary::Quantiles>, f: fn(&summary::Quantiles) -> f64| {
            ms(x.as_ref().map(f))
        };
        let mut cells = if labelled {
            vec![r.series.clone()]
        } else {
            vec![]
        };
        cells.extend([
            r.request_rate.map_or("inf".into(), |v| format!("{v}")),
            format!("{} / {}", r.completed, r.failed),
            format!("{:.2}", r.request_throughput),
            format!("{:.1}", r.output_throughput),
            q(&r.ttft, |q| q.p50_ms),
            q(&r.ttft, |q| q.p99_ms),
            q(&r.tpot, |q| q.p50_ms),
            q(&r.tpot, |q| q.p99_ms),
        ]);
        if predicted {
            let p = r.predicted.clone().unwrap_or_default();
            cells.push(
                p.request_throughput
                    .map_or("—".into(), |v| format!("{v:.2}")),
            );
            cells.push(p.ttft_ms.map_or("saturated".into(), |v| format!("{v:.2}")));
            cells.push(ms(p.tpot_ms));
        }
        if stepped {
            match &r.engine_step {
                Some(e) => cells.extend([
                    format!("{:.3} + {:.3}", e.host_ms, e.device_ms),
                    format!("{:.1}", e.mean_batch),
                    e.modelled_device_ms
                        .map_or("—".into(), |v| format!("{v:.3}")),
                ]),
                None => cells.extend(["—".into(), "—".into(), "—".into()]),
            }
        }
        if let Some(slo) = s.ttft_p99_slo_ms {
            cells.push(if r.meets_ttft_p99(slo) { "yes" } else { "no" }.into());
        }
        t.row(cells);
    }
    if let Some(slo) = s.ttft_p99_slo_ms {
        let mut labels: Vec<&str> = s.runs.iter().map(|r| r.series.as_str()).collect();
        labels.dedup();
        for label in labels {
            let runs = s.runs.iter().filter(|r| r.series == label);
            t.note(match summary::best_under_ttft_slo(runs, slo) {
                Some(r) => format!(
                    "{label}: the highest rate with p99 TTFT ≤ {slo} ms is {} req/s, where it served {:.2} req/s",
                    r.request_rate.map_or("inf".into(), |v| format!("{v}")),
                    r.request_throughput
                ),
                None => format!("{label}: no rate kept p99 TTFT within {slo} ms"),
            });
        }
    }
    if predicted && stepped {
        t.note("the host term is measured: each run's predicted req/s and TPOT include the engine's own time per step that the server spent in that run (tperf_engine_step_seconds{part=\"host\"} from /metrics, sum ÷ count between scrapes before and after it); modelled device: the model's decode step at the run's mean batch");
    } else if predicted {
        t.note("the host term is not measured (the server publishes no tperf_engine_step_seconds): the prediction is the pure model");
    }
    t.note("the same prompts at every rate; TTFT/TPOT as vLLM defines them; p50/p99 interpolate linearly");
    t.render()
}

/// JSON has no infinity: an unbounded rate is the string "inf", as on the command line.
fn json_rate(r: f64) -> serde_json::Value {
    if r.is_finite() {
        json!(r)
    } else {
        json!("inf")
    }
}

fn rate_text(rates: &[f64]) -> String {
    let one = |r: f64| {
        if r.is_finite() {
            format!("{r} req/s")
        } else {
            "inf".into()
        }
    };
    match rates {
        [r] => one(*r),
        _ => rates
            .iter()
            .map(|&r| one(r))
            .collect::<Vec<_>>()
            .join(" + "),
    }
}

fn load_dataset(args: &ServeBenchArgs, tok: &Tokenizer, rng: &mut Rng) -> Result<Vec<RequestSpec>> {
    if args.dataset == "random" {
        let lens = RandomLengths {
            input_len: args.random_input_len,
            output_len: args.random_output_len,
            range_ratio: args.random_range_ratio,
        };
        return Ok(dataset::random(
            args.num_prompts,
            lens,
            args.random_prompt == "ids",
            tok,
            rng,
        )?);
    }
    let Some(path) = args.dataset.strip_prefix("sharegpt:") else {
        bail!("--dataset {}: use random or sharegpt:PATH", args.dataset);
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let specs = dataset::sharegpt(&text, args.num_prompts, args.sharegpt_output_len, tok, rng)
        .with_context(|| path.to_string())?;
    if specs.len() < args.num_prompts {
        eprintln!(
            "{path} has {} usable conversations; sending those",
            specs.len()
        );
    }
    Ok(specs)
}

fn progress(n: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {pos}/{len} requests  {elapsed_precise} elapsed, {eta} left",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The flat keys vLLM's result JSON uses (mean_ttft_ms, p99_tpot_ms, …), so scripts written
/// for it read tperf's too.
fn vllm_keys(m: &Metrics) -> serde_json::Value {
    let mut v = serde_json::Map::new();
    v.insert("completed".into(), json!(m.completed));
    v.insert("failed".into(), json!(m.failed));
    v.insert("duration".into(), json!(m.duration_s));
    v.insert("total_input_tokens".into(), json!(m.total_input_tokens));
    v.insert("total_output_tokens".into(), json!(m.total_output_tokens));
    v.insert("request_throughput".into(), json!(m.request_throughput));
    v.insert("request_goodput".into(), json!(m.request_goodput));
    v.insert("output_throughput".into(), json!(m.output_throughput));
    v.insert(
        "total_token_throughput".into(),
        json!(m.total_token_throughput),
    );
    v.insert(
        "max_concurrent_requests".into(),
        json!(m.max_concurrent_requests),
    );
    for (name, s) in [
        ("ttft", &m.ttft),
        ("tpot", &m.tpot),
        ("itl", &m.itl),
        ("e2el", &m.e2el),
    ] {
        let Some(s) = s else { continue };
        v.insert(format!("mean_{name}_ms"), json!(s.mean_ms));
        v.insert(format!("median_{name}_ms"), json!(s.median_ms));
        v.insert(format!("std_{name}_ms"), json!(s.std_ms));
        for (p, x) in &s.percentiles_ms {
            v.insert(format!("p{}_{name}_ms", fmt_p(*p)), json!(x));
        }
    }
    serde_json::Value::Object(v)
}

/// 99 → "99", 99.9 → "99.9".
fn fmt_p(p: f64) -> String {
    let s = format!("{p}");
    s.trim_end_matches(".0").to_string()
}

fn render(
    args: &ServeBenchArgs,
    target: &Target,
    model: &str,
    m: &Metrics,
    p: Option<&ServePrediction>,
    rate: f64,
) -> String {
    let mut header = vec!["".to_string(), "measured".to_string()];
    if let Some(p) = p {
        header.push(format!("predicted ({})", basis(p)));
    }
    let mut t = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>()).titled(format!(
        "Serving benchmark: {}{} ({model})",
        target.url(),
        args.endpoint
    ));
    // The prediction at this run's rate, or at saturation when everything is sent at once.
    let at_rate = p.and_then(|p| p.rates.first());
    let sat = p.map(|p| &p.saturation);
    let predicted = |f: &dyn Fn(&ServePrediction) -> Option<String>| -> Vec<String> {
        p.map(|p| f(p).unwrap_or_else(|| "—".into()))
            .into_iter()
            .collect()
    };
    let mut row = |k: &str, v: String, pred: Vec<String>| {
        let mut cells = vec![k.to_string(), v];
        cells.extend(pred);
        t.row(cells);
    };
    row(
        "successful requests",
        m.completed.to_string(),
        predicted(&|_| None),
    );
    row(
        "failed requests",
        m.failed.to_string(),
        predicted(&|_| None),
    );
    row(
        "benchmark duration",
        format!("{:.2} s", m.duration_s),
        predicted(&|_| None),
    );
    row(
        "total input tokens",
        units::thousands(m.total_input_tokens),
        predicted(&|_| None),
    );
    row(
        "total generated tokens",
        units::thousands(m.total_output_tokens),
        predicted(&|_| None),
    );
    let saturated_throughput =
        rate.is_infinite() || at_rate.is_some_and(|r| r.ttft_seconds.is_none());
    row(
        "request throughput (req/s)",
        format!("{:.2}", m.request_throughput),
        predicted(&|p| {
            Some(if saturated_throughput {
                format!("{:.2} (saturation)", p.saturation.request_throughput)
            } else {
                format!("{rate:.2} (the rate)")
            })
        }),
    );
    if let Some(g) = m.request_goodput {
        row(
            "request goodput (req/s)",
            format!("{g:.2}"),
            predicted(&|_| None),
        );
    }
    row(
        "output token throughput (tok/s)",
        format!("{:.2}", m.output_throughput),
        predicted(&|p| {
            Some(if saturated_throughput {
                format!("{:.2} (saturation)", p.saturation.output_throughput)
            } else {
                format!("{:.2}", rate * p.config.output_len as f64)
            })
        }),
    );
    row(
        "total token throughput (tok/s)",
        format!("{:.2}", m.total_token_throughput),
        predicted(&|_| None),
    );
    row(
        "max concurrent requests",
        m.max_concurrent_requests.to_string(),
        predicted(&|p| match at_rate.and_then(|r| r.running_batch) {
            Some(b) if !saturated_throughput => Some(format!("{b:.1} running (mean)")),
            _ => Some(format!("{} running at saturation", p.saturation.batch)),
        }),
    );
    let ms = |s: Option<f64>| s.map(|s| format!("{:.2}", s * 1e3));
    for (name, stats, pred) in [
        ("TTFT", &m.ttft, at_rate.and_then(|r| ms(r.ttft_seconds))),
        (
            "TPOT",
            &m.tpot,
            at_rate.and_then(|r| ms(r.tpot_seconds)).or_else(|| {
                saturated_throughput
                    .then(|| ms(sat.map(|s| s.decode_step_seconds)))
                    .flatten()
            }),
        ),
        ("ITL", &m.itl, None),
        ("E2EL", &m.e2el, at_rate.and_then(|r| ms(r.e2el_seconds))),
    ] {
        let Some(s) = stats else {
            row(&format!("{name} (ms)"), "—".into(), predicted(&|_| None));
            continue;
        };
        let pred_mean = pred.clone();
        row(
            &format!("mean {name} (ms)"),
            format!("{:.2}", s.mean_ms),
            predicted(&|_| pred_mean.clone()),
        );
        row(
            &format!("median {name} (ms)"),
            format!("{:.2}", s.median_ms),
            predicted(&|_| None),
        );
        row(
            &format!("std {name} (ms)"),
            format!("{:.2}", s.std_ms),
            predicted(&|_| None),
        );
        for (pc, x) in &s.percentiles_ms {
            row(
                &format!("p{} {name} (ms)", fmt_p(*pc)),
                format!("{x:.2}"),
                predicted(&|_| None),
            );
        }
    }
    for (e, n) in &m.errors {
        t.note(format!("{n} failed: {e}"));
    }
    t.note("vLLM's definitions: TTFT to the first output chunk; TPOT = (E2EL − TTFT)/(output tokens − 1); ITL = gaps between chunks; std is the population's; percentiles interpolate linearly");
    if let Some(p) = p {
        t.note(format!(
            "predicted for {} on {} at {} in / {} out (the dataset's means), {}",
            p.model,
            p.hardware,
            p.config.input_len,
            p.config.output_len,
            if saturated_throughput {
                "at saturation (TPOT = one decode step of the full batch)".to_string()
            } else {
                format!("at {rate:.2} req/s")
            }
        ));
        t.note(QUEUEING_NOTE);
    }
    t.render()
}

fn render_fairness(f: &Fairness) -> String {
    let clients = f.service.len();
    let mut header = vec!["t (s)".to_string()];
    header.extend((0..clients).map(client::client_name));
    let mut t = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>()).titled(
        format!(
            "Service per client (input + 2 × output tokens) in buckets of {:.3} s; * = backlogged throughout",
            f.bucket_s
        ),
    );
    for b in 0..f.service[0].len() {
        let mut cells = vec![format!("{:.2}", b as f64 * f.bucket_s)];
        for c in 0..clients {
            cells.push(format!(
                "{:.0}{}",
                f.service[c][b],
                if f.backlogged[c][b] { "*" } else { "" }
            ));
        }
        t.row(cells);
    }
    let mut total = vec!["total".to_string()];
    total.extend(f.total_service.iter().map(|s| format!("{s:.0}")));
    t.row(total);
    t.note(match f.max_gap_clients {
        Some((a, b)) => format!(
            "largest service gap between backlogged clients: {:.0} ({} and {})",
            f.max_gap,
            client::client_name(a),
            client::client_name(b)
        ),
        None => "no two clients were backlogged over the same bucket".to_string(),
    });
    t.render()
}
