//! Online serving predicted from the schedule: what a continuous-batching server of one model on
//! one GPU sustains, from the roofline times of the prefill and decode steps it runs and the
//! number of sequences whose KV blocks fit in memory.
//!
//! The scheduler modelled is vLLM's (and tperf's engine's): at every step the running batch
//! decodes one token per sequence; waiting requests are prefilled, up to a token budget per
//! step, whenever KV blocks for them are free. Symbols: I input tokens, O output tokens per
//! request, B the running batch, T_d(B) the decode step at batch B and mean context c̄, T_p(b)
//! the prefill step of b prompts of I tokens.
//!
//! **Saturation.** With B sequences always running, each request costs the GPU its share of a
//! prefill step, T_p(b_p)/b_p (b_p = prompts per prefill step under the token budget), and
//! O − 1 shares of decode steps, T_d(B)/B each (the first token comes from the prefill). The
//! GPU's time per request is S = T_p(b_p)/b_p + (O − 1)·T_d(B)/B, so the request throughput is
//! 1/S and the output throughput O/S. The decode context is taken at its mean over a request's
//! life, c̄ = I + O/2: a steady batch holds sequences of every age equally.
//!
//! **At a request rate λ** (below saturation): the GPU is a single server whose service per
//! request is S, loaded to ρ = λ·S; with Poisson arrivals and a deterministic service the
//! queueing delay is M/D/1's, W = ρ·S / (2(1 − ρ)). Prefills interrupt decoding for a fraction
//! f = λ·T_p(1) of the time, so TPOT = T_d(b)/(1 − f), where the running batch b follows
//! Little's law, b = λ·(O − 1)·TPOT (solved by fixed-point iteration). TTFT = W + T_p(1) +
//! T_d(b)/2: the wait, the prompt's own prefill, and half a decode step (a request arrives in
//! the middle of a step on average and is prefilled after it).

use super::analysis::{self, AnalysisError, Scenario, Workload};
use super::calibration::Calibration;
use super::hardware::Hardware;
use crate::config::{ConfigError, ModelConfig};
use crate::ops::kv_cache::cache_bytes;
use crate::schedule::ragged::DEFAULT_BLOCK_SIZE;
use crate::schedule::Options;
use crate::tensor::MemCategory;
use serde::Serialize;
use std::collections::BTreeMap;

/// The server's configuration, with vLLM's defaults.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ServeConfig {
    pub input_len: usize,
    pub output_len: usize,
    /// The most sequences the scheduler runs at once (vLLM's `max_num_seqs`).
    pub max_num_seqs: usize,
    /// Tokens one prefill step may carry (vLLM's `max_num_batched_tokens`).
    pub max_batched_tokens: usize,
    pub block_size: usize,
    /// KV blocks the server holds; None: what fits in `gpu_memory_utilization` of the GPU after
    /// the weights and one prefill step's activations.
    pub kv_blocks: Option<usize>,
    pub gpu_memory_utilization: f64,
    /// The serving engine's own time per step (scheduling, block manager, token handling,
    /// detokenising, streaming), as measured on the server (`tperf serve`'s /metrics:
    /// `tperf_engine_step_seconds{part="host"}` sum ÷ count); added to every prefill and decode
    /// step in place of a calibration's estimate of it. None: the calibration's, or nothing.
    pub host_seconds_per_step: Option<f64>,
}

impl ServeConfig {
    pub fn new(input_len: usize, output_len: usize) -> ServeConfig {
        ServeConfig {
            input_len,
            output_len,
            max_num_seqs: 256,
            max_batched_tokens: 8192,
            block_size: DEFAULT_BLOCK_SIZE,
            kv_blocks: None,
            gpu_memory_utilization: 0.9,
            host_seconds_per_step: None,
        }
    }
}

/// The saturation point when the scheduler may run at most `batch` sequences.
#[derive(Clone, Debug, Serialize)]
pub struct ServePoint {
    pub batch: usize,
    /// T_d(B): one decode step of the running batch.
    pub decode_step_seconds: f64,
    /// B / T_d(B): the decode roofline throughput at this batch, prefill left out.
    pub decode_tokens_per_second: f64,
    /// S: the GPU's time per request (its share of a prefill step and of O − 1 decode steps).
    pub seconds_per_request: f64,
    pub request_throughput: f64,
    pub output_throughput: f64,
}

/// Latency at a request rate below saturation.
#[derive(Clone, Debug, Serialize)]
pub struct RatePoint {
    pub request_rate: f64,
    /// ρ = λ·S; at 1 or more the queue grows without bound and no latency is predicted.
    pub utilisation: f64,
    pub running_batch: Option<f64>,
    pub ttft_seconds: Option<f64>,
    pub tpot_seconds: Option<f64>,
    pub e2el_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServePrediction {
    pub model: String,
    pub hardware: String,
    pub config: ServeConfig,
    pub weights_bytes: u64,
    pub activation_bytes: u64,
    pub kv_bytes_per_block: u64,
    pub kv_blocks: usize,
    pub blocks_per_sequence: usize,
    /// Sequences of I + O tokens whose blocks fit.
    pub kv_sequences: usize,
    /// The mean decode context c̄ = I + O/2.
    pub decode_context: usize,
    /// Prompts per prefill step under the token budget, b_p.
    pub prefill_batch: usize,
    pub prefill_step_seconds: f64,
    /// T_p(1): one prompt prefilled alone.
    pub prefill_one_seconds: f64,
    /// min(max_num_seqs, kv_sequences) and its saturation point.
    pub saturation: ServePoint,
    /// Saturation at batch caps 1, 2, 4, … up to the batch above.
    pub sweep: Vec<ServePoint>,
    pub rates: Vec<RatePoint>,
    /// The calibration the step times come from (its label); None: every step time is the
    /// roofline's.
    pub calibration: Option<String>,
    /// A calibration's host gap between ops (the profiler's) included in each decode step at the
    /// saturation batch.
    pub decode_overhead_seconds: f64,
    /// The serving engine's own cost per step at the saturation batch, included in each step:
    /// the server's measured host time per step where `config.host_seconds_per_step` gives it,
    /// else the calibration's where it measured one, else 0.
    pub engine_overhead_seconds: f64,
}

/// Decode steps costed once per batch size: the rate solver asks for the same batches again.
struct DecodeTimes<'a> {
    cfg: &'a ModelConfig,
    hw: &'a Hardware,
    opts: Options,
    context: usize,
    calibration: Option<&'a Calibration>,
    host_seconds_per_step: Option<f64>,
    seconds: BTreeMap<usize, f64>,
}

impl DecodeTimes<'_> {
    fn at(&mut self, batch: usize) -> Result<f64, AnalysisError> {
        if let Some(&s) = self.seconds.get(&batch) {
            return Ok(s);
        }
        let sc = Scenario {
            workload: Workload::Decode,
            batch,
            seq: self.context,
            opts: self.opts,
        };
        let s = analysis::analyze_calibrated(self.cfg, &sc, self.hw, self.calibration)?
            .step_seconds()
            + engine_overhead(self.host_seconds_per_step, self.calibration, batch);
        self.seconds.insert(batch, s);
        Ok(s)
    }

    fn point(
        &mut self,
        batch: usize,
        prefill_share: f64,
        output_len: usize,
    ) -> Result<ServePoint, AnalysisError> {
        let t_d = self.at(batch)?;
        let s = prefill_share + (output_len - 1) as f64 * t_d / batch as f64;
        Ok(ServePoint {
            batch,
            decode_step_seconds: t_d,
            decode_tokens_per_second: batch as f64 / t_d,
            seconds_per_request: s,
            request_throughput: 1.0 / s,
            output_throughput: output_len as f64 / s,
        })
    }
}

/// The serving engine's own cost per step of `batch` sequences: measured on the server where
/// it was (one mean over the run's steps, whatever their batch: at saturation nearly all are
/// full), else the calibration's fit, else 0.
fn engine_overhead(
    measured_seconds_per_step: Option<f64>,
    calibration: Option<&Calibration>,
    batch: usize,
) -> f64 {
    measured_seconds_per_step.unwrap_or_else(|| {
        calibration
            .and_then(|c| c.serving.as_ref())
            .map_or(0.0, |o| o.seconds(batch))
    })
}

fn zero(field: &'static str) -> AnalysisError {
    ConfigError::Zero { field }.into()
}

pub fn predict(
    cfg: &ModelConfig,
    hw: &Hardware,
    opts: Options,
    sc: ServeConfig,
    rates: &[f64],
) -> Result<ServePrediction, AnalysisError> {
    predict_calibrated(cfg, hw, opts, sc, rates, None)
}

/// As [`predict`], with every prefill and decode step timed by `calibration` (its ops' curves
/// and its host overhead) where one is given: the steps of the batch sizes the scheduler forms,
/// at the times this machine's kernels take rather than the roofline's.
pub fn predict_calibrated(
    cfg: &ModelConfig,
    hw: &Hardware,
    opts: Options,
    sc: ServeConfig,
    rates: &[f64],
    calibration: Option<&Calibration>,
) -> Result<ServePrediction, AnalysisError> {
    if sc.input_len == 0 {
        return Err(zero("input_len"));
    }
    if sc.output_len == 0 {
        return Err(zero("output_len"));
    }
    if sc.block_size == 0 {
        return Err(zero("block_size"));
    }
    if sc.max_num_seqs == 0 {
        return Err(zero("max_num_seqs"));
    }
    if let Some(h) = sc.host_seconds_per_step {
        if !(h >= 0.0 && h.is_finite()) {
            return Err(ConfigError::Invalid {
                field: "host_seconds_per_step",
                value: h.to_string(),
                why: "a measured host time per step is a finite number of seconds ≥ 0",
            }
            .into());
        }
    }
    let host = sc.host_seconds_per_step;
    let total = sc.input_len + sc.output_len;
    cfg.check_seq(total)?;
    let prefill = |batch| {
        let sc = Scenario {
            workload: Workload::Prefill,
            batch,
            seq: sc.input_len,
            opts,
        };
        analysis::analyze_calibrated(cfg, &sc, hw, calibration)
    };
    let prefill_batch = (sc.max_batched_tokens / sc.input_len).clamp(1, sc.max_num_seqs);
    let big = prefill(prefill_batch)?;
    let category = |a: &analysis::Analysis, c| a.memory.at_peak.get(&c).copied().unwrap_or(0);
    let weights_bytes = category(&big, MemCategory::Weights);
    let activation_bytes = big
        .memory
        .peak_bytes
        .saturating_sub(weights_bytes + category(&big, MemCategory::KvCache));
    let width = opts.precision.compute_dtype().size_bytes();
    let kv_bytes_per_block = cache_bytes(
        cfg.n_layers,
        1,
        sc.block_size,
        cfg.n_kv_heads,
        cfg.head_dim,
        width,
    );
    let kv_blocks = sc.kv_blocks.unwrap_or_else(|| {
        let usable = (hw.memory_bytes as f64 * sc.gpu_memory_utilization) as u64;
        (usable.saturating_sub(weights_bytes + activation_bytes) / kv_bytes_per_block.max(1))
            as usize
    });
    let blocks_per_sequence = total.div_ceil(sc.block_size);
    let kv_sequences = kv_blocks / blocks_per_sequence;
    if kv_sequences == 0 {
        return Err(ConfigError::TooLarge {
            what: "one sequence's KV cache",
            detail: format!(
                "{blocks_per_sequence} blocks of {} tokens are needed for {total} tokens, the server holds {kv_blocks}",
                sc.block_size
            ),
        }
        .into());
    }
    let batch = sc.max_num_seqs.min(kv_sequences);
    let prefill_step_seconds =
        big.step_seconds() + engine_overhead(host, calibration, prefill_batch);
    let prefill_one_seconds = if prefill_batch == 1 {
        prefill_step_seconds
    } else {
        prefill(1)?.step_seconds() + engine_overhead(host, calibration, 1)
    };
    let prefill_share = prefill_step_seconds / prefill_batch as f64;
    let mut decode = DecodeTimes {
        cfg,
        hw,
        opts,
        context: sc.input_len + sc.output_len / 2,
        calibration,
        host_seconds_per_step: host,
        seconds: BTreeMap::new(),
    };
    let mut sweep = Vec::new();
    let mut b = 1;
    while b < batch {
        sweep.push(decode.point(b, prefill_share, sc.output_len)?);
        b *= 2;
    }
    let saturation = decode.point(batch, prefill_share, sc.output_len)?;
    sweep.push(saturation.clone());
    let decode_overhead_seconds = match calibration {
        Some(_) => {
            let sc = Scenario {
                workload: Workload::Decode,
                batch,
                seq: decode.context,
                opts,
            };
            analysis::analyze_calibrated(cfg, &sc, hw, calibration)?.overhead_seconds
        }
        None => 0.0,
    };
    let engine_overhead_seconds = engine_overhead(host, calibration, batch);
    let rates = rates
        .iter()
        .map(|&r| at_rate(&mut decode, &saturation, prefill_one_seconds, sc, r))
        .collect::<Result<_, _>>()?;
    Ok(ServePrediction {
        model: cfg.name.clone(),
        hardware: hw.key.to_string(),
        config: sc,
        weights_bytes,
        activation_bytes,
        kv_bytes_per_block,
        kv_blocks,
        blocks_per_sequence,
        kv_sequences,
        decode_context: decode.context,
        prefill_batch,
        prefill_step_seconds,
        prefill_one_seconds,
        saturation,
        sweep,
        rates,
        calibration: calibration.map(|c| c.label()),
        decode_overhead_seconds,
        engine_overhead_seconds,
    })
}

/// The modelled decode step of `batch` sequences at the mean context c̄ = I + O/2, as
/// [`predict_calibrated`] costs it (with `sc`'s host time per step, if any): what a server's
/// measured mean step at that batch is set beside.
pub fn decode_step_seconds(
    cfg: &ModelConfig,
    hw: &Hardware,
    opts: Options,
    sc: ServeConfig,
    calibration: Option<&Calibration>,
    batch: usize,
) -> Result<f64, AnalysisError> {
    if batch == 0 {
        return Err(zero("batch"));
    }
    cfg.check_seq(sc.input_len + sc.output_len)?;
    DecodeTimes {
        cfg,
        hw,
        opts,
        context: sc.input_len + sc.output_len / 2,
        calibration,
        host_seconds_per_step: sc.host_seconds_per_step,
        seconds: BTreeMap::new(),
    }
    .at(batch)
}

fn at_rate(
    decode: &mut DecodeTimes,
    sat: &ServePoint,
    t_p1: f64,
    sc: ServeConfig,
    rate: f64,
) -> Result<RatePoint, AnalysisError> {
    let s = sat.seconds_per_request;
    let rho = rate * s;
    let prefill_fraction = rate * t_p1;
    let unstable = RatePoint {
        request_rate: rate,
        utilisation: rho,
        running_batch: None,
        ttft_seconds: None,
        tpot_seconds: None,
        e2el_seconds: None,
    };
    if !(rho < 1.0 && prefill_fraction < 1.0) {
        return Ok(unstable);
    }
    // b = λ·(O − 1)·TPOT(b): TPOT grows with b, so iterating from b = 1 climbs to the fixed
    // point; the batch is a whole number of sequences, capped at the saturation batch.
    let tpot = |decode: &mut DecodeTimes, b: usize| -> Result<f64, AnalysisError> {
        Ok(decode.at(b)? / (1.0 - prefill_fraction))
    };
    let mut b = 1usize;
    for _ in 0..64 {
        let t = tpot(decode, b)?;
        let next = ((rate * (sc.output_len - 1) as f64 * t).ceil() as usize).clamp(1, sat.batch);
        if next == b {
            break;
        }
        b = next;
    }
    let tpot_s = tpot(decode, b)?;
    let wait = rho * s / (2.0 * (1.0 - rho));
    let ttft = wait + t_p1 + decode.at(b)? / 2.0;
    let running = rate * (sc.output_len - 1) as f64 * tpot_s;
    Ok(RatePoint {
        running_batch: Some(running),
        ttft_seconds: Some(ttft),
        tpot_seconds: Some(tpot_s),
        e2el_seconds: Some(ttft + (sc.output_len - 1) as f64 * tpot_s),
        ..unstable
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{hardware, plan};
    use crate::schedule::Precision;

    fn setup() -> (ModelConfig, Hardware, Options) {
        let cfg = crate::presets::find("gpt2-124m").unwrap().config;
        let hw = hardware::find("h200").unwrap();
        let opts = Options {
            precision: Precision::Bf16,
            ..Options::default()
        };
        (cfg, hw, opts)
    }

    #[test]
    fn saturation_is_monotone_in_the_batch_cap() {
        let (cfg, hw, opts) = setup();
        let p = predict(&cfg, &hw, opts, ServeConfig::new(128, 128), &[]).unwrap();
        assert_eq!(
            p.saturation.batch, 256,
            "gpt2-124m's cache fits vLLM's max_num_seqs"
        );
        assert!(p.sweep.len() > 5);
        for w in p.sweep.windows(2) {
            assert!(w[0].batch < w[1].batch);
            assert!(w[1].output_throughput >= w[0].output_throughput, "{w:?}");
            assert!(w[1].decode_tokens_per_second >= w[0].decode_tokens_per_second);
        }
    }

    #[test]
    fn batch_one_is_the_decode_roofline() {
        let (cfg, hw, opts) = setup();
        let p = predict(&cfg, &hw, opts, ServeConfig::new(128, 128), &[]).unwrap();
        let one = &p.sweep[0];
        assert_eq!(one.batch, 1);
        let roof = plan::decode_sweep(&cfg, &hw, opts, p.decode_context, &[1]).unwrap();
        assert_eq!(one.decode_tokens_per_second, roof[0].tokens_per_second);
        assert_eq!(one.decode_step_seconds, roof[0].step_seconds);
        // One request at a time: its prefill and O − 1 decode steps, nothing shared.
        let s = p.prefill_step_seconds / p.prefill_batch as f64 + 127.0 * roof[0].step_seconds;
        assert!((one.seconds_per_request - s).abs() < 1e-15);
    }

    /// A machine whose every kernel takes three times its roofline: the calibrated prediction
    /// serves a third of the roofline's throughput, and says it is calibrated.
    #[test]
    fn a_calibration_times_every_step_the_scheduler_forms() {
        use crate::cost::calibration::{Calibration, OpKind, Sample, WorkloadSamples};
        let (cfg, hw, opts) = setup();
        let mut training = Vec::new();
        for (workload, batch, seq) in [
            (Workload::Decode, 1, 192),
            (Workload::Decode, 64, 192),
            (Workload::Decode, 256, 192),
            (Workload::Prefill, 1, 128),
            (Workload::Prefill, 64, 128),
        ] {
            let sc = Scenario {
                workload,
                batch,
                seq,
                opts,
            };
            let a = analysis::analyze(&cfg, &sc, &hw).unwrap();
            let ops: Vec<Sample> = a
                .rows
                .iter()
                .map(|r| Sample {
                    kind: OpKind::of_row(r, workload),
                    roofline_seconds: r.roofline_seconds,
                    measured_seconds: 3.0 * r.roofline_seconds,
                })
                .collect();
            let step = ops.iter().map(|o| o.measured_seconds).sum();
            training.push(WorkloadSamples {
                label: format!("{batch}"),
                ops,
                step_seconds: step,
            });
        }
        let cal = Calibration::fit(
            "synthetic".into(),
            hw.clone(),
            "bf16".into(),
            &training,
            serde_json::Value::Null,
        )
        .unwrap();
        let roof = predict(&cfg, &hw, opts, ServeConfig::new(128, 128), &[]).unwrap();
        let p = predict_calibrated(&cfg, &hw, opts, ServeConfig::new(128, 128), &[], Some(&cal))
            .unwrap();
        assert!(roof.calibration.is_none());
        assert!(p.calibration.as_deref().unwrap().contains("synthetic"));
        assert_eq!(p.saturation.batch, roof.saturation.batch);
        let ratio = roof.saturation.output_throughput / p.saturation.output_throughput;
        assert!((ratio - 3.0).abs() < 0.15, "{ratio}");
        assert!(p.decode_overhead_seconds.abs() < 1e-9);
    }

    /// A measured host time h per step is added to every step the scheduler forms: the
    /// prefill share becomes (T_p(b_p) + h)/b_p and each decode share (T_d(B) + h)/B.
    #[test]
    fn a_measured_host_time_is_added_to_every_step() {
        let (cfg, hw, opts) = setup();
        let (input_len, output_len) = (128, 128);
        let pure = predict(
            &cfg,
            &hw,
            opts,
            ServeConfig::new(input_len, output_len),
            &[],
        )
        .unwrap();
        let h = 1.5e-3;
        let sc = ServeConfig {
            host_seconds_per_step: Some(h),
            ..ServeConfig::new(input_len, output_len)
        };
        let p = predict(&cfg, &hw, opts, sc, &[]).unwrap();
        assert_eq!(p.engine_overhead_seconds, h);
        let (b_p, batch) = (pure.prefill_batch as f64, pure.saturation.batch as f64);
        let t_p = pure.prefill_step_seconds;
        let t_d = pure.saturation.decode_step_seconds;
        let s = (t_p + h) / b_p + (output_len - 1) as f64 * (t_d + h) / batch;
        assert!((p.saturation.seconds_per_request - s).abs() < 1e-12 * s);
        assert!((p.saturation.request_throughput - 1.0 / s).abs() < 1e-9 / s);
        assert!((p.saturation.decode_step_seconds - (t_d + h)).abs() < 1e-15);
        assert!((p.prefill_one_seconds - (pure.prefill_one_seconds + h)).abs() < 1e-15);
        let bad = ServeConfig {
            host_seconds_per_step: Some(f64::NAN),
            ..ServeConfig::new(input_len, output_len)
        };
        assert!(predict(&cfg, &hw, opts, bad, &[]).is_err());
        let at = |sc| decode_step_seconds(&cfg, &hw, opts, sc, None, pure.saturation.batch);
        assert_eq!(at(ServeConfig::new(input_len, output_len)).unwrap(), t_d);
        assert!((at(sc).unwrap() - (t_d + h)).abs() < 1e-15);
    }

    #[test]
    fn the_kv_cache_caps_the_batch() {
        let (cfg, hw, opts) = setup();
        let sc = ServeConfig {
            kv_blocks: Some(100),
            ..ServeConfig::new(128, 128)
        };
        let p = predict(&cfg, &hw, opts, sc, &[]).unwrap();
        // 256 tokens = 16 blocks of 16: 100 blocks hold 6 sequences.
        assert_eq!((p.blocks_per_sequence, p.kv_sequences), (16, 6));
        assert_eq!(p.saturation.batch, 6);
        let none = ServeConfig {
            kv_blocks: Some(15),
            ..ServeConfig::new(128, 128)
        };
        assert!(predict(&cfg, &hw, opts, none, &[]).is_err());
    }

    #[test]
    fn latency_grows_with_the_rate_and_stops_at_saturation() {
        let (cfg, hw, opts) = setup();
        let probe = predict(&cfg, &hw, opts, ServeConfig::new(128, 128), &[]).unwrap();
        let sat = probe.saturation.request_throughput;
        let rates = [0.01 * sat, 0.5 * sat, 0.9 * sat, 1.1 * sat];
        let p = predict(&cfg, &hw, opts, ServeConfig::new(128, 128), &rates).unwrap();
        let ttft: Vec<_> = p.rates.iter().map(|r| r.ttft_seconds).collect();
        let tpot: Vec<_> = p.rates.iter().map(|r| r.tpot_seconds).collect();
        assert!(ttft[0].unwrap() < ttft[1].unwrap() && ttft[1].unwrap() < ttft[2].unwrap());
        assert!(tpot[0].unwrap() <= tpot[1].unwrap() && tpot[1].unwrap() <= tpot[2].unwrap());
        assert_eq!((ttft[3], tpot[3]), (None, None));
        // At a trickle a request runs alone: TPOT is the batch-1 decode step.
        let t1 = p.sweep[0].decode_step_seconds;
        assert!((tpot[0].unwrap() - t1).abs() / t1 < 0.05);
    }
}
