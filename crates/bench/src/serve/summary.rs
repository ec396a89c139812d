//! The compact record of serving runs that reports draw from: per run its rate, throughputs,
//! latency quantiles and latency CDFs (thinned to at most [`CDF_POINTS`] points, so a sweep of
//! thousands of requests stays a few kilobytes), the prediction beside it when there is one; per
//! fairness run the cumulative service of each client over time and the gap. `tperf bench
//! serve` writes it under the JSON's `serving` key and `tperf study` under results.json's, in
//! the same shape, and `crates/report` reads that shape.

use super::fairness::Fairness;
use super::metrics::{percentile, Metrics, RequestOutcome};
use serde::{Deserialize, Serialize};
use tperf_core::cost::serve::ServePrediction;

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

impl Predicted {
    /// The prediction in the summary's terms: at `rate` where the prediction has a stable
    /// point for it (the offered rate is then the throughput, since nothing queues without
    /// bound), or at saturation when the rate is infinite, was not predicted, or is beyond what
    /// the model says the server sustains (TPOT is then one decode step of the full batch).
    pub fn of(p: &ServePrediction, rate: f64) -> Predicted {
        let ms = |s: Option<f64>| s.map(|s| s * 1e3);
        let at_rate = p
            .rates
            .iter()
            .find(|r| (r.request_rate - rate).abs() <= 1e-9 * rate.max(1.0))
            .filter(|r| rate.is_finite() && r.ttft_seconds.is_some());
        match at_rate {
            Some(r) => Predicted {
                request_throughput: Some(rate),
                output_throughput: Some(rate * p.config.output_len as f64),
                ttft_ms: ms(r.ttft_seconds),
                tpot_ms: ms(r.tpot_seconds),
            },
            None => Predicted {
                request_throughput: Some(p.saturation.request_throughput),
                output_throughput: Some(p.saturation.output_throughput),
                ttft_ms: None,
                tpot_ms: Some(p.saturation.decode_step_seconds * 1e3),
            },
        }
    }
}

/// The server's steps over one run, from its `/metrics` (tperf's engine only), beside the
/// model's decode step at the batch they carried.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EngineStep {
    pub steps: u64,
    /// Sequences per step, the run's mean.
    pub mean_batch: f64,
    /// The engine's own part of a step (scheduling, blocks, token handling, streaming).
    pub host_ms: f64,
    /// The model's part (forward, sampling, the ids read back).
    pub device_ms: f64,
    /// The model's decode step at the mean batch, without a host term; None: no model given.
    pub modelled_device_ms: Option<f64>,
    /// The decode-only steps beside those that carried prefill (tperf's engine splits them on
    /// `/metrics`); None from a server that does not.
    #[serde(default)]
    pub by_kind: Option<crate::serve::engine_steps::StepKinds>,
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
    #[serde(default)]
    pub engine_step: Option<EngineStep>,
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
            engine_step: None,
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

/// The p99 TTFT limit at which series are compared "at equal p99 TTFT", read off the runs:
/// `multiple` × the largest p99 TTFT that any series shows at its lightest offered load. Every
/// series then meets it at light load (a static batch's newcomer waits for the batch in
/// flight, so static's light-load p99 is the larger), and each is credited with the highest
/// rate it sustains within it. None: some series has no finite-rate run with a TTFT.
pub fn ttft_slo_from_light_load(runs: &[RunSummary], multiple: f64) -> Option<f64> {
    let mut series: Vec<&str> = runs.iter().map(|r| r.series.as_str()).collect();
    series.sort_unstable();
    series.dedup();
    let mut worst: Option<f64> = None;
    for name in series {
        let lightest = runs
            .iter()
            .filter_map(|r| r.request_rate.filter(|_| r.series == name).map(|v| (v, r)))
            .min_by(|a, b| a.0.total_cmp(&b.0))?
            .1;
        let p99 = lightest.ttft.as_ref()?.p99_ms;
        worst = Some(worst.map_or(p99, |w: f64| w.max(p99)));
    }
    worst.map(|w| multiple * w)
}

/// One series' best within a p99 TTFT limit: the highest rate that met it and the request
/// throughput measured there.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sustained {
    pub series: String,
    pub request_rate: Option<f64>,
    pub request_throughput: f64,
}

/// Each series' [`best_under_ttft_slo`], in the order the series first appear; a series that
/// met the limit at no rate is left out.
pub fn sustained_under_ttft_slo(runs: &[RunSummary], slo_ms: f64) -> Vec<Sustained> {
    let mut series: Vec<&str> = Vec::new();
    for r in runs {
        if !series.contains(&r.series.as_str()) {
            series.push(&r.series);
        }
    }
    series
        .into_iter()
        .filter_map(|name| {
            best_under_ttft_slo(runs.iter().filter(|r| r.series == name), slo_ms).map(|r| {
                Sustained {
                    series: name.to_string(),
                    request_rate: r.request_rate,
                    request_throughput: r.request_throughput,
                }
            })
        })
        .collect()
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

    #[test]
    fn series_are_compared_at_a_ttft_limit_read_off_their_lightest_load() {
        let run = |series: &str, rate: f64, ttft: f64| {
            let outs: Vec<_> = (0..10).map(|_| outcome(ttft, 5)).collect();
            let m = Metrics::of(&outs, 10.0 / rate, &[50.0, 99.0], &Slo::default());
            RunSummary::of(series, rate, &m, &outs, None)
        };
        // Continuous: 10 ms at light load, 40 ms at 8 req/s, 2 s at 16. Static: 100 ms at
        // light load (a newcomer waits for the batch in flight), 900 ms at 4, 3 s at 8.
        let runs = vec![
            run("continuous", 2.0, 0.01),
            run("continuous", 8.0, 0.04),
            run("continuous", 16.0, 2.0),
            run("static", 2.0, 0.1),
            run("static", 4.0, 0.9),
            run("static", 8.0, 3.0),
        ];
        // The limit: 2 × the worse light-load p99, static's 100 ms.
        let slo = ttft_slo_from_light_load(&runs, 2.0).unwrap();
        assert!((slo - 200.0).abs() < 1e-9, "{slo}");
        let best = sustained_under_ttft_slo(&runs, slo);
        assert_eq!(best.len(), 2);
        assert_eq!(
            (best[0].series.as_str(), best[0].request_rate),
            ("continuous", Some(8.0))
        );
        assert_eq!(
            (best[1].series.as_str(), best[1].request_rate),
            ("static", Some(2.0))
        );
        // 10 requests in 10/rate seconds: the rate itself.
        assert!((best[0].request_throughput / best[1].request_throughput - 4.0).abs() < 1e-9);
        assert!(ttft_slo_from_light_load(&[run("a", f64::INFINITY, 0.01)], 2.0).is_none());
    }

    /// Predicted::of takes the rate's own point when the model has a stable one, and the
    /// saturation point otherwise (rate inf, a rate not predicted, a rate past saturation).
    #[test]
    fn predicted_of_a_rate_or_of_saturation() {
        use tperf_core::cost::serve::{predict, ServeConfig};
        let cfg = tperf_core::presets::find("gpt2-124m").unwrap().config;
        let hw = tperf_core::cost::hardware::find("h200").unwrap();
        let opts = tperf_core::schedule::Options::default();
        let sc = ServeConfig::new(128, 64);
        let sat = predict(&cfg, &hw, opts, sc, &[]).unwrap().saturation;
        let (low, high) = (0.25 * sat.request_throughput, 2.0 * sat.request_throughput);
        let p = predict(&cfg, &hw, opts, sc, &[low, high]).unwrap();
        let at_low = Predicted::of(&p, low);
        let point = &p.rates[0];
        assert_eq!(at_low.request_throughput, Some(low));
        assert_eq!(at_low.output_throughput, Some(low * 64.0));
        assert_eq!(at_low.ttft_ms, Some(point.ttft_seconds.unwrap() * 1e3));
        assert_eq!(at_low.tpot_ms, Some(point.tpot_seconds.unwrap() * 1e3));
        let saturated = Predicted {
            request_throughput: Some(sat.request_throughput),
            output_throughput: Some(sat.output_throughput),
            ttft_ms: None,
            tpot_ms: Some(sat.decode_step_seconds * 1e3),
        };
        assert_eq!(Predicted::of(&p, high), saturated, "past saturation");
        assert_eq!(Predicted::of(&p, f64::INFINITY), saturated);
        assert_eq!(
            Predicted::of(&p, 0.5 * low),
            saturated,
            "a rate not predicted"
        );
    }
}
