//! vLLM's serving metrics, with its names and definitions (`vllm bench serve`):
//! - TTFT: from sending the request to the first streamed chunk that carries output;
//! - ITL: the gaps between consecutive output chunks of a request (all of them, pooled);
//! - E2EL: from sending the request to its last output chunk;
//! - TPOT = (E2EL − TTFT) / (output tokens − 1), for requests of more than one output token;
//! - mean, median, standard deviation (the population's: numpy's default) and percentiles by
//!   linear interpolation between the closest ranks (numpy's default);
//! - request throughput = completed / duration, output throughput = output tokens / duration,
//!   total token throughput = (input + output tokens) / duration, over completed requests;
//! - goodput = completed requests meeting every SLO / duration; a request of one output token
//!   has TPOT 0 for the SLO, as in vLLM.
//!
//! Failed requests are counted and their errors kept; they add no tokens and no latencies.

use serde::Serialize;
use std::collections::BTreeMap;

/// What happened to one request, with times in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestOutcome {
    pub client: usize,
    /// From the benchmark's start to sending the request.
    pub sent_s: f64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// From sending to each output chunk's arrival.
    pub chunk_s: Vec<f64>,
    pub ttft_s: f64,
    pub e2el_s: f64,
    /// Whether the token counts came from the server's `usage` chunk.
    pub usage_reported: bool,
    pub finish_reason: Option<String>,
    /// Why the request failed; None when it succeeded.
    pub error: Option<String>,
}

impl RequestOutcome {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    pub fn itl_s(&self) -> impl Iterator<Item = f64> + '_ {
        self.chunk_s.windows(2).map(|w| w[1] - w[0])
    }

    /// None for fewer than two output tokens: there is no time between tokens to divide.
    pub fn tpot_s(&self) -> Option<f64> {
        (self.output_tokens > 1)
            .then(|| (self.e2el_s - self.ttft_s) / (self.output_tokens - 1) as f64)
    }

    /// When the request left the system, from the benchmark's start.
    pub fn done_s(&self) -> f64 {
        self.sent_s + self.e2el_s
    }
}

/// Latency limits a request must all meet to count toward goodput, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl Slo {
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }

    pub fn met_by(&self, r: &RequestOutcome) -> bool {
        let within = |limit: Option<f64>, s: f64| limit.is_none_or(|ms| s * 1e3 <= ms);
        r.ok()
            && within(self.ttft_ms, r.ttft_s)
            && within(self.tpot_ms, r.tpot_s().unwrap_or(0.0))
            && within(self.e2el_ms, r.e2el_s)
    }
}

/// A word of `--goodput` that is not an SLO; `word` is the word as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SloError {
    #[error("'{word}': write an SLO as KEY:MS, e.g. ttft:500")]
    NoKey { word: String },
    #[error("'{word}': {value} is not a positive number of milliseconds")]
    NotPositiveMs { word: String, value: String },
    #[error("unknown SLO '{key}': use ttft, tpot or e2el")]
    UnknownKey { key: String },
}

/// `--goodput ttft:MS tpot:MS e2el:MS`, one key per word.
pub fn parse_slo(parts: &[String]) -> Result<Slo, SloError> {
    let mut slo = Slo::default();
    for p in parts {
        let (key, value) = p
            .split_once(':')
            .ok_or_else(|| SloError::NoKey { word: p.clone() })?;
        let ms: f64 = value
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0)
            .ok_or_else(|| SloError::NotPositiveMs {
                word: p.clone(),
                value: value.to_string(),
            })?;
        let slot = match key.to_ascii_lowercase().as_str() {
            "ttft" => &mut slo.ttft_ms,
            "tpot" => &mut slo.tpot_ms,
            "e2el" => &mut slo.e2el_ms,
            other => {
                return Err(SloError::UnknownKey {
                    key: other.to_string(),
                })
            }
        };
        *slot = Some(ms);
    }
    Ok(slo)
}

/// numpy's default percentile: rank p/100·(n − 1), linearly interpolated. Samples sorted.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// One latency's statistics in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyStats {
    pub n: usize,
    pub mean_ms: f64,
    pub median_ms: f64,
    pub std_ms: f64,
    /// (p, value) for each asked percentile.
    pub percentiles_ms: Vec<(f64, f64)>,
}

impl LatencyStats {
    /// None for no samples (no completed request, or none of two tokens for TPOT).
    pub fn of(seconds: &[f64], percentiles: &[f64]) -> Option<LatencyStats> {
        if seconds.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = seconds.iter().map(|s| s * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len() as f64;
        let mean = ms.iter().sum::<f64>() / n;
        let var = ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Some(LatencyStats {
            n: ms.len(),
            mean_ms: mean,
            median_ms: percentile(&ms, 50.0),
            std_ms: var.sqrt(),
            percentiles_ms: percentiles
                .iter()
                .map(|&p| (p, percentile(&ms, p)))
                .collect(),
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    pub completed: usize,
    pub failed: usize,
    /// Each distinct error message and how many requests it ended.
    pub errors: BTreeMap<String, usize>,
    pub duration_s: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub request_throughput: f64,
    /// None when no SLO was given.
    pub request_goodput: Option<f64>,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub ttft: Option<LatencyStats>,
    pub tpot: Option<LatencyStats>,
    pub itl: Option<LatencyStats>,
    pub e2el: Option<LatencyStats>,
    /// The most requests in flight at once, from the send and finish times.
    pub max_concurrent_requests: usize,
}

impl Metrics {
    pub fn of(
        outcomes: &[RequestOutcome],
        duration_s: f64,
        percentiles: &[f64],
        slo: &Slo,
    ) -> Metrics {
        let done: Vec<&RequestOutcome> = outcomes.iter().filter(|r| r.ok()).collect();
        let mut errors = BTreeMap::new();
        for r in outcomes {
            if let Some(e) = &r.error {
                *errors.entry(e.clone()).or_insert(0) += 1;
            }
        }
        let collect = |f: &dyn Fn(&RequestOutcome) -> Option<f64>| -> Vec<f64> {
            done.iter().filter_map(|r| f(r)).collect()
        };
        let itl: Vec<f64> = done.iter().flat_map(|r| r.itl_s()).collect();
        let input: u64 = done.iter().map(|r| r.prompt_tokens).sum();
        let output: u64 = done.iter().map(|r| r.output_tokens).sum();
        let per_s = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        let good = done.iter().filter(|r| slo.met_by(r)).count();
        Metrics {
            completed: done.len(),
            failed: outcomes.len() - done.len(),
            errors,
            duration_s,
            total_input_tokens: input,
            total_output_tokens: output,
            request_throughput: per_s(done.len() as f64),
            request_goodput: (!slo.is_empty()).then(|| per_s(good as f64)),
            output_throughput: per_s(output as f64),
            total_token_throughput: per_s((input + output) as f64),
            ttft: LatencyStats::of(&collect(&|r| Some(r.ttft_s)), percentiles),
            tpot: LatencyStats::of(&collect(&|r| r.tpot_s()), percentiles),
            itl: LatencyStats::of(&itl, percentiles),
            e2el: LatencyStats::of(&collect(&|r| Some(r.e2el_s)), percentiles),
            max_concurrent_requests: max_concurrent(outcomes),
        }
    }
}

fn max_concurrent(outcomes: &[RequestOutcome]) -> usize {
    let mut edges: Vec<(f64, i32)> = outcomes
        .iter()
        .flat_map(|r| [(r.sent_s, 1), (r.done_s(), -1)])
        .collect();
    // A finish and a send at the same instant: the finish first.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ttft: f64, gaps: &[f64], tokens: u64) -> RequestOutcome {
        let mut t = ttft;
        let mut chunk_s = vec![t];
        for g in gaps {
            t += g;
            chunk_s.push(t);
        }
        RequestOutcome {
            ttft_s: ttft,
            e2el_s: t,
            output_tokens: tokens,
            prompt_tokens: 10,
            chunk_s,
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1, 2, 3, 4], [0, 50, 90, 99, 100]) = 1, 2.5, 3.7, 3.97, 4
        for (p, want) in [
            (0.0, 1.0),
            (50.0, 2.5),
            (90.0, 3.7),
            (99.0, 3.97),
            (100.0, 4.0),
        ] {
            assert!((percentile(&xs, p) - want).abs() < 1e-12, "p{p}");
        }
        let s = LatencyStats::of(&[0.001, 0.002, 0.003, 0.004], &[99.0]).unwrap();
        assert!((s.std_ms - 1.25f64.sqrt()).abs() < 1e-12, "population std");
        assert!((s.percentiles_ms[0].1 - 3.97).abs() < 1e-9);
    }

    #[test]
    fn tpot_goodput_and_failures() {
        let mut failed = req(0.0, &[], 0);
        failed.error = Some("HTTP 500".into());
        let rs = vec![
            req(0.1, &[0.01, 0.01, 0.01], 4), // TPOT 10 ms
            req(0.3, &[0.05, 0.05], 3),       // TPOT 50 ms
            req(0.05, &[], 1),                // one token: no TPOT, 0 for the SLO
            failed,
        ];
        let slo = parse_slo(&["ttft:200".into(), "tpot:20".into()]).unwrap();
        let m = Metrics::of(&rs, 2.0, &[50.0, 99.0], &slo);
        assert_eq!((m.completed, m.failed), (3, 1));
        assert_eq!(m.errors.get("HTTP 500"), Some(&1));
        assert_eq!((m.total_input_tokens, m.total_output_tokens), (30, 8));
        assert_eq!(m.request_throughput, 1.5);
        assert_eq!(m.output_throughput, 4.0);
        assert_eq!(m.total_token_throughput, 19.0);
        // The first and third meet both SLOs; the second's TTFT and TPOT miss.
        assert_eq!(m.request_goodput, Some(1.0));
        let tpot = m.tpot.unwrap();
        assert_eq!(tpot.n, 2);
        assert!((tpot.mean_ms - 30.0).abs() < 1e-9);
        assert_eq!(m.itl.unwrap().n, 5);
        assert!(matches!(
            parse_slo(&["ttft=5".into()]),
            Err(SloError::NoKey { .. })
        ));
        assert_eq!(
            parse_slo(&["speed:5".into()]).unwrap_err().to_string(),
            "unknown SLO 'speed': use ttft, tpot or e2el"
        );
        assert!(matches!(
            parse_slo(&["ttft:-1".into()]),
            Err(SloError::NotPositiveMs { .. })
        ));
        assert!(Metrics::of(&[], 1.0, &[99.0], &Slo::default())
            .ttft
            .is_none());
    }
}
