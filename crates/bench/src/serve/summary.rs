//! The compact record of serving runs that reports draw from: per run its rate, throughputs,
//! latency quantiles and latency CDFs (thinned to at most [`CDF_POINTS`] points, so a sweep of
//! thousands of requests stays a few kilobytes), the prediction beside it when there is one; per
//! fairness run the cumulative service of each client over time and the gap. `tperf bench
//! serve` writes it under the JSON's `serving` key and `tperf study` under results.json's, in
//! the same shape, and `crates/report` reads that shape.

use super::fairness::Fairness;
use super::metrics::{percentile, Metrics, RequestOutcome};
use serde::{Deserialize, Serialize};

/// The most points one latency CDF keeps.
pub const CDF_POINTS: usize = 101;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

impl Quantiles {
    fn of(sorted_ms: &[f64]) -> Option<Quantiles> {
        if sorted_ms.is_empty() {
            return None;
        }
        Some(Quantiles {
            mean_ms: sorted_ms.iter().sum::<f64>() / sorted_ms.len() as f64,
            p50_ms: percentile(sorted_ms, 50.0),
            p90_ms: percentile(sorted_ms, 90.0),
            p99_ms: percentile(sorted_ms, 99.0),
        })
    }
}

/// What the model predicts for one run (absent fields: saturated, or not predicted).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Predicted {
    pub request_throughput: Option<f64>,
    pub output_throughput: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunSummary {
    /// Which curve the run belongs to ("continuous", "static", "measured", …): runs of one
    /// series at different rates are drawn as one line.
    pub series: String,
    /// Requests per second offered; None for all at once (inf).
    pub request_rate: Option<f64>,
    pub completed: usize,
    pub failed: usize,
    pub duration_s: f64,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub ttft: Option<Quantiles>,
    pub tpot: Option<Quantiles>,
    pub e2el: Option<Quantiles>,
    /// Sorted samples of the latencies, thinned to quantiles: (ms, cumulative fraction).
    pub ttft_cdf: Vec<(f64, f64)>,
    pub tpot_cdf: Vec<(f64, f64)>,
    #[serde(default)]
    pub predicted: Option<Predicted>,
}

impl RunSummary {
    pub fn of(
        series: &str,
        request_rate: f64,
        m: &Metrics,
        outcomes: &[RequestOutcome],
        predicted: Option<Predicted>,
    ) -> RunSummary {
        let ok: Vec<&RequestOutcome> = outcomes.iter().filter(|r| r.ok()).collect();
        let sorted_ms = |f: &dyn Fn(&RequestOutcome) -> Option<f64>| {
            let mut v: Vec<f64> = ok.iter().filter_map(|r| f(r)).map(|s| s * 1e3).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let ttft = sorted_ms(&|r| Some(r.ttft_s));
        let tpot = sorted_ms(&|r| r.tpot_s());
        let e2el = sorted_ms(&|r| Some(r.e2el_s));
        RunSummary {
            series: series.to_string(),
            request_rate: request_rate.is_finite().then_some(request_rate),
            completed: m.completed,
            failed: m.failed,
            duration_s: m.duration_s,
            request_throughput: m.request_throughput,
            output_throughput: m.output_throughput,
            ttft: Quantiles::of(&ttft),
            tpot: Quantiles::of(&tpot),
            e2el: Quantiles::of(&e2el),
            ttft_cdf: cdf(&ttft),
            tpot_cdf: cdf(&tpot),
            predicted,
        }
    }

    /// Whether the run's p99 TTFT is within `slo_ms` (and nothing failed).
    pub fn meets_ttft_p99(&self, slo_ms: f64) -> bool {
        self.failed == 0 && self.ttft.as_ref().is_some_and(|q| q.p99_ms <= slo_ms)
    }
}

/// The empirical CDF of sorted samples at no more than [`CDF_POINTS`] evenly spaced ranks
/// (the first and the last always kept).
pub fn cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let points = n.min(CDF_POINTS);
    (0..points)
        .map(|k| {
            let i = if points == 1 {
                n - 1
            } else {
                k * (n - 1) / (points - 1)
            };
            (sorted[i], (i + 1) as f64 / n as f64)
        })
        .collect()
}

/// Among runs of one series, the highest offered rate whose p99 TTFT met the SLO, with the
/// request throughput measured there: "the throughput it sustains at that latency".
pub fn best_under_ttft_slo<'a>(
    runs: impl IntoIterator<Item = &'a RunSummary>,
    slo_ms: f64,
) -> Option<&'a RunSummary> {
    runs.into_iter()
        .filter(|r| r.meets_ttft_p99(slo_ms))
        .max_by(|a, b| {
            a.request_rate
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.request_rate.unwrap_or(f64::INFINITY))
        })
}

/// One fairness run: the cumulative service of each client over time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FairnessSummary {
    /// The scheduler it ran under ("vtc", "fcfs", or what the benchmark was told).
    pub label: String,
    pub bucket_s: f64,
    pub clients: Vec<String>,
    /// cumulative[client][bucket]: service received up to the end of the bucket.
    pub cumulative: Vec<Vec<f64>>,
    /// backlogged[client][bucket], as measured.
    pub backlogged: Vec<Vec<bool>>,
    pub max_gap: f64,
    /// The VTC paper's bound on the gap for this server, when it is known.
    #[serde(default)]
    pub bound: Option<f64>,
}

impl FairnessSummary {
    pub fn of(label: &str, f: &Fairness, bound: Option<f64>) -> FairnessSummary {
        FairnessSummary {
            label: label.to_string(),
            bucket_s: f.bucket_s,
            clients: (0..f.service.len())
                .map(super::client::client_name)
                .collect(),
            cumulative: f
                .service
                .iter()
                .map(|s| {
                    s.iter()
                        .scan(0.0, |acc, x| {
                            *acc += x;
                            Some(*acc)
                        })
                        .collect()
                })
                .collect(),
            backlogged: f.backlogged.clone(),
            max_gap: f.max_gap,
            bound,
        }
    }
}

/// What a report's serving section draws.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServingSummary {
    /// What was served, on what, how (one line).
    #[serde(default)]
    pub setup: String,
    pub runs: Vec<RunSummary>,
    #[serde(default)]
    pub fairness: Vec<FairnessSummary>,
    /// The p99 TTFT limit the sweep's "highest rate sustained" is read against, if any.
    #[serde(default)]
    pub ttft_p99_slo_ms: Option<f64>,
    /// Lines the producer adds: what was run and what it showed, in words.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl ServingSummary {
    /// Several summaries in one (the runs and fairness runs of each, in order; the first
    /// setup line and SLO that are present).
    pub fn merge(parts: Vec<ServingSummary>) -> ServingSummary {
        let mut out = ServingSummary::default();
        for p in parts {
            if out.setup.is_empty() {
                out.setup = p.setup;
            }
            out.ttft_p99_slo_ms = out.ttft_p99_slo_ms.or(p.ttft_p99_slo_ms);
            out.runs.extend(p.runs);
            out.fairness.extend(p.fairness);
            out.notes.extend(p.notes);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::metrics::Slo;

    fn outcome(ttft: f64, tokens: u64) -> RequestOutcome {
        RequestOutcome {
            prompt_tokens: 4,
            output_tokens: tokens,
            chunk_s: (0..tokens).map(|i| ttft + 0.01 * i as f64).collect(),
            ttft_s: ttft,
            e2el_s: ttft + 0.01 * (tokens - 1) as f64,
            ..Default::default()
        }
    }

    #[test]
    fn a_cdf_is_thinned_but_keeps_its_ends() {
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        let c = cdf(&v);
        assert_eq!(c.len(), CDF_POINTS);
        assert_eq!(c[0], (0.0, 0.001));
        assert_eq!(*c.last().unwrap(), (999.0, 1.0));
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(cdf(&[5.0]), vec![(5.0, 1.0)]);
        assert!(cdf(&[]).is_empty());
    }

    #[test]
    fn runs_summarise_and_the_best_rate_under_an_slo_is_found() {
        let run = |rate: f64, ttft: f64| {
            let outs: Vec<_> = (0..10)
                .map(|i| outcome(ttft + 0.001 * i as f64, 5))
                .collect();
            let m = Metrics::of(&outs, 1.0, &[50.0, 99.0], &Slo::default());
            RunSummary::of("continuous", rate, &m, &outs, None)
        };
        let runs = vec![run(1.0, 0.01), run(2.0, 0.05), run(4.0, 0.5)];
        let r = &runs[1];
        assert_eq!(r.request_rate, Some(2.0));
        let q = r.ttft.as_ref().unwrap();
        assert!((q.p50_ms - 54.5).abs() < 1e-9, "{q:?}");
        assert!((r.tpot.as_ref().unwrap().p99_ms - 10.0).abs() < 1e-9);
        assert_eq!(r.ttft_cdf.len(), 10);
        assert_eq!(
            best_under_ttft_slo(&runs, 100.0).unwrap().request_rate,
            Some(2.0)
        );
        assert!(best_under_ttft_slo(&runs, 1.0).is_none());
        assert_eq!(run(f64::INFINITY, 0.01).request_rate, None);
    }
}
