//! The study's serving section: the engine in this process (no HTTP: on two cores a server and
//! a client would mostly measure each other), driven by the benchmark's schedules and measured
//! with its metrics. Saturation throughput, a request-rate sweep of continuous against static
//! batching, and VTC against FCFS for two clients 4× apart, each beside the serving model's
//! prediction. On the CPU the model is a small random-weight GPT-2 shape with a byte vocabulary
//! (gpt2-124m would take minutes a sweep on two cores); on a GPU it is gpt2-124m in bf16.
//!
//! Output lengths vary (uniform over about 0.1–1.9 × the mean, vLLM's range ratio 0.9) so that
//! the two batching modes differ as they do in service: a static batch holds its seats until
//! its longest member finishes, continuous batching gives a finished sequence's seat to the
//! next request at the next step.
//!
//! Rates are set from the saturation measured first, so the sweep spans the same range of load
//! on any machine: ¼, ½, 1 and 2 × saturation. "Equal p99 TTFT" is a p99 TTFT limit of the
//! median end-to-end latency of a request at the lightest load (a user waits no longer for the
//! first token than a whole reply takes on an idle server); each batching mode's highest rate
//! within it, and the throughput measured there, are compared.

use anyhow::{bail, Result};
use tperf_bench::device::Device;
use tperf_bench::serve::client::Scheduled;
use tperf_bench::serve::dataset::{self, Prompt, RequestSpec};
use tperf_bench::serve::fairness;
use tperf_bench::serve::in_process;
use tperf_bench::serve::metrics::{Metrics, RequestOutcome, Slo};
use tperf_bench::serve::summary::{self, FairnessSummary, Predicted, RunSummary, ServingSummary};
use tperf_core::config::ModelConfig;
use tperf_core::cost::hardware::Hardware;
use tperf_core::cost::serve::{self as serve_model, ServeConfig};
use tperf_core::presets;
use tperf_core::rng::Rng;
use tperf_core::schedule::{Options, Precision, Transformer};
use tperf_cpu::CpuBackend;
use tperf_cuda::CudaBackend;
use tperf_engine::{Batching, Engine, EngineConfig, Policy, VtcWeights};
use tperf_report::table::Table;
use tperf_runtime::tokenizer::Tokenizer;
use tperf_runtime::train::StopFlag;

/// What the section serves, and how the engine is configured.
struct Setup {
    name: String,
    cfg: ModelConfig,
    opts: Options,
    input_len: usize,
    /// The mean output length; each request's is drawn from [⌊L(1 − r)⌋, ⌈L(1 + r)⌉] with r
    /// the range ratio below, so a static batch waits for its longest member while continuous
    /// batching refills the seats of the short ones.
    output_len: usize,
    output_range_ratio: f64,
    engine: EngineConfig,
    /// Requests of one run at most, and at least.
    requests: (usize, usize),
}

fn setup(device: Device) -> Result<Setup> {
    Ok(match device {
        Device::Cpu => {
            let mut cfg = presets::find("gpt2-124m")?.config;
            cfg.name = "gpt2-shape d128 L4 (byte vocabulary, random weights)".into();
            cfg.vocab_size = 256;
            cfg.context = 256;
            cfg.d_model = 128;
            cfg.d_ff = 512;
            cfg.n_layers = 4;
            let cfg = cfg.with_heads(4, 4)?;
            cfg.validate()?;
            let (input_len, output_len, seqs) = (32, 32, 16);
            let output_range_ratio = OUTPUT_RANGE_RATIO;
            Setup {
                name: cfg.name.clone(),
                cfg,
                opts: Options::default(),
                input_len,
                output_len,
                output_range_ratio,
                engine: engine_config(
                    input_len + longest(output_len, output_range_ratio),
                    seqs,
                    512,
                ),
                requests: (16, 64),
            }
        }
        Device::Cuda(_) => {
            let cfg = presets::find("gpt2-124m")?.config;
            let (input_len, output_len, seqs) = (128, 128, 256);
            let output_range_ratio = OUTPUT_RANGE_RATIO;
            Setup {
                name: "gpt2-124m (random weights)".into(),
                cfg,
                opts: Options {
                    precision: Precision::Bf16,
                    ..Options::default()
                },
                input_len,
                output_len,
                output_range_ratio,
                engine: engine_config(
                    input_len + longest(output_len, output_range_ratio),
                    seqs,
                    8192,
                ),
                requests: (64, 512),
            }
        }
    })
}

/// Output lengths from about a tenth of the mean to nearly twice it.
const OUTPUT_RANGE_RATIO: f64 = 0.9;

/// The longest output [`dataset::uniform_len`] draws for a mean `len` and range ratio `r`.
fn longest(len: usize, r: f64) -> usize {
    dataset::uniform_len_range(len, r).1
}

/// Seats for `seqs` sequences and a KV cache that holds exactly that many of `positions`
/// (so M, the tokens the running batch holds, is known for the fairness bound).
fn engine_config(positions: usize, seqs: usize, budget: usize) -> EngineConfig {
    let block_size = tperf_core::schedule::ragged::DEFAULT_BLOCK_SIZE;
    EngineConfig {
        max_num_seqs: seqs,
        max_num_batched_tokens: budget,
        kv_blocks: seqs * positions.div_ceil(block_size),
        block_size,
        max_queue: 1 << 20,
        ..EngineConfig::default()
    }
}

fn start(device: Device, s: &Setup, policy: Policy, batching: Batching) -> Result<Engine> {
    let cfg = EngineConfig {
        policy,
        batching,
        ..s.engine.clone()
    };
    let (model, opts) = (s.cfg.clone(), s.opts);
    let engine = match device {
        Device::Cpu => Engine::start(
            move || {
                let mut be = CpuBackend::new();
                let m = Transformer::new(&mut be, &model, opts, false)?;
                m.init_weights(&mut be, 7)?;
                Ok((be, m, Tokenizer::byte()))
            },
            cfg,
        )?,
        Device::Cuda(i) => Engine::start(
            move || {
                let mut be = CudaBackend::new(i)?;
                let m = Transformer::new(&mut be, &model, opts, false)?;
                m.init_weights(&mut be, 7)?;
                Ok((be, m, Tokenizer::gpt2()))
            },
            cfg,
        )?,
    };
    Ok(engine)
}

/// `n` prompts of random token ids of the setup's input length, each asking for an output
/// length drawn about the setup's mean.
fn prompts(s: &Setup, n: usize, seed: u64) -> Vec<RequestSpec> {
    let mut rng = Rng::new(seed);
    // Ids of the byte vocabulary's printable range, or GPT-2's first 50 000.
    let vocab = s.cfg.vocab_size.min(50_000) as f64;
    (0..n)
        .map(|_| RequestSpec {
            prompt: Prompt::Ids(
                (0..s.input_len)
                    .map(|_| (rng.uniform() * vocab) as u32 % s.cfg.vocab_size as u32)
                    .collect(),
            ),
            prompt_len: s.input_len,
            output_len: dataset::uniform_len(&mut rng, s.output_len, s.output_range_ratio),
        })
        .collect()
}

fn measure(
    engine: &Engine,
    specs: &[RequestSpec],
    client_rates: &[f64],
    seed: u64,
) -> Result<(Vec<RequestOutcome>, Metrics)> {
    let schedule: Vec<Scheduled> =
        tperf_bench::serve::schedule(specs.to_vec(), client_rates, 1.0, seed)?;
    let (outcomes, duration) = in_process::run(engine, &schedule);
    let m = Metrics::of(&outcomes, duration, &[50.0, 99.0], &Slo::default());
    if m.failed > 0 {
        bail!(
            "{} of {} requests failed: {:?}",
            m.failed,
            outcomes.len(),
            m.errors
        );
    }
    Ok((outcomes, m))
}

/// Two significant digits: rates that read well in a table.
fn round2(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powf(x.log10().floor() - 1.0);
    (x / scale).round() * scale
}

/// Runs the section; returns what it finished (everything, or up to a stop request) as the
/// `serving` record of results.json.
pub fn measure_serving(device: Device, hw: &Hardware, stop: &StopFlag) -> Result<ServingSummary> {
    let began = std::time::Instant::now();
    let s = setup(device)?;
    let e = &s.engine;
    let mut out = ServingSummary {
        setup: format!(
            "{} on {device} ({}), in process (no HTTP): {} prompt tokens, output tokens uniform \
             over {}..{} (mean {}), greedy, ≤ {} sequences and ≤ {} tokens a step, {} KV blocks \
             of {}",
            s.name,
            hw.key,
            s.input_len,
            dataset::uniform_len_range(s.output_len, s.output_range_ratio).0,
            dataset::uniform_len_range(s.output_len, s.output_range_ratio).1,
            s.output_len,
            e.max_num_seqs,
            e.max_num_batched_tokens,
            e.kv_blocks,
            e.block_size
        ),
        ..ServingSummary::default()
    };
    let (lo, hi) = s.requests;
    let continuous = start(device, &s, Policy::Fcfs, Batching::Continuous)?;
    // Warm-up: the first steps allocate and fault in what the later ones reuse.
    measure(&continuous, &prompts(&s, 4, 99), &[f64::INFINITY], 0)?;
    let (sat_outcomes, sat) = measure(&continuous, &prompts(&s, hi, 1), &[f64::INFINITY], 1)?;
    let saturation = sat.request_throughput;
    let rates: Vec<f64> = [0.25, 0.5, 1.0, 2.0]
        .iter()
        .map(|k| round2(k * saturation))
        .collect();
    let serve_cfg = ServeConfig {
        max_num_seqs: e.max_num_seqs,
        max_batched_tokens: e.max_num_batched_tokens,
        block_size: e.block_size,
        kv_blocks: Some(e.kv_blocks),
        ..ServeConfig::new(s.input_len, s.output_len)
    };
    let prediction = serve_model::predict(&s.cfg, hw, s.opts, serve_cfg, &rates)?;
    out.runs.push(RunSummary::of(
        "continuous",
        f64::INFINITY,
        &sat,
        &sat_outcomes,
        Some(Predicted::of(&prediction, f64::INFINITY)),
    ));
    out.notes.push(format!(
        "saturation (all {hi} requests at once): {:.2} req/s, {:.1} output tok/s measured; the model predicts {:.2} req/s, {:.1} output tok/s (running batch {}) from the roofline of {}",
        saturation,
        sat.output_throughput,
        prediction.saturation.request_throughput,
        prediction.saturation.output_throughput,
        prediction.saturation.batch,
        hw.key
    ));
    // Requests per sweep run: about 3/4 of a second of arrivals at saturation.
    let per_run = ((saturation * 0.75) as usize).clamp(lo, hi);
    let specs = prompts(&s, per_run, 2);
    let static_engine = start(device, &s, Policy::Fcfs, Batching::Static)?;
    for (series, engine) in [("continuous", &continuous), ("static", &static_engine)] {
        for &rate in &rates {
            if stop.is_requested() {
                return Ok(out);
            }
            let (outcomes, m) = measure(engine, &specs, &[rate], 3)?;
            out.runs.push(RunSummary::of(
                series,
                rate,
                &m,
                &outcomes,
                Some(Predicted::of(&prediction, rate)),
            ));
        }
    }
    drop(static_engine);
    // The TTFT limit: the median E2EL of continuous batching at the lightest load.
    let slo = out
        .runs
        .iter()
        .find(|r| r.series == "continuous" && r.request_rate == Some(rates[0]))
        .and_then(|r| r.e2el.as_ref())
        .map(|q| (q.p50_ms * 10.0).round() / 10.0);
    out.ttft_p99_slo_ms = slo;
    if let Some(slo) = slo {
        let best = |series: &str| {
            summary::best_under_ttft_slo(out.runs.iter().filter(|r| r.series == series), slo)
                .map(|r| r.request_throughput)
        };
        out.notes.push(match (best("continuous"), best("static")) {
            (Some(c), Some(st)) => format!(
                "at equal p99 TTFT (≤ {slo} ms, the median E2EL at the lightest load): continuous batching sustains {c:.2} req/s, static {st:.2} req/s ({:.1}×)",
                c / st
            ),
            (Some(c), None) => format!(
                "at equal p99 TTFT (≤ {slo} ms): continuous batching sustains {c:.2} req/s; static batching kept p99 TTFT within it at no rate of the sweep"
            ),
            _ => format!("no rate of the sweep kept p99 TTFT within {slo} ms"),
        });
    }
    drop(continuous);
    // Fairness: client-0 at 4× client-1's rate, both far beyond the engine (10× saturation
    // together), so both are backlogged from the first arrivals, whatever the noise in the
    // saturation measured: FCFS then serves them in the 4:1 arrival order, VTC 1:1 while
    // client-1 has requests left.
    let client_rates = [8.0 * saturation, 2.0 * saturation];
    let n = ((3.0 * saturation) as usize).clamp(2 * lo, 4 * hi);
    let specs = prompts(&s, n, 4);
    let m_tokens = e.kv_blocks * e.block_size;
    let w = VtcWeights::default();
    let bound = 2.0 * (w.input * s.input_len as f64).max(w.output * m_tokens as f64);
    for policy in [Policy::Vtc(w), Policy::Fcfs] {
        if stop.is_requested() {
            return Ok(out);
        }
        let engine = start(device, &s, policy, Batching::Continuous)?;
        let (outcomes, m) = measure(&engine, &specs, &client_rates, 5)?;
        let f = fairness::fairness(&outcomes, 2, (m.duration_s / 20.0).max(1e-3));
        out.fairness
            .push(FairnessSummary::of(policy.name(), &f, Some(bound)));
    }
    out.notes.push(format!(
        "fairness: {n} requests, client-0 at {:.1} req/s and client-1 at {:.1} (4×), service = input + 2 × output tokens as the client sees them; the VTC bound 2·max(w_in·L_in, w_out·M) = 2·max(1·{}, 2·{m_tokens}) = {bound:.0} (M: the tokens the KV cache holds)",
        client_rates[0], client_rates[1], s.input_len
    ));
    out.notes.push(format!(
        "the serving section took {:.1} s",
        began.elapsed().as_secs_f64()
    ));
    Ok(out)
}

/// The section's tables for the terminal.
pub fn render(s: &ServingSummary) -> String {
    let mut text = super::serve_bench::render_sweep(s);
    let mut t = Table::new(&[
        "scheduler",
        "service client-0",
        "service client-1",
        "largest gap",
        "VTC bound",
    ])
    .titled("Fairness: two clients, client-0 sending 4× client-1's rate");
    for f in &s.fairness {
        let total = |c: usize| {
            f.cumulative
                .get(c)
                .and_then(|v| v.last())
                .copied()
                .unwrap_or(0.0)
        };
        t.row(vec![
            f.label.clone(),
            format!("{:.0}", total(0)),
            format!("{:.0}", total(1)),
            format!("{:.0}", f.max_gap),
            f.bound.map_or("—".into(), |b| format!("{b:.0}")),
        ]);
    }
    for n in &s.notes {
        t.note(n.clone());
    }
    text.push('\n');
    text.push_str(&t.render());
    text
}
