//! The serving section: what `tperf bench serve` and `tperf study` record under `serving`
//! (the shape of `tperf_bench::serve::summary::ServingSummary`, read here as a view of the
//! fields drawn). Tables of every run and of the fairness runs; plots of throughput, TTFT and
//! TPOT against the offered rate (one curve per series, the prediction dashed beside it), the
//! latency CDFs of every run, and each fairness run's cumulative service per client over time.

use crate::bench_sections::plot;
use crate::markup::escape;
use crate::markup::table;
use crate::plots::{LinePlot, PlotError, Series};
use serde::Deserialize;
use std::fmt::Write as _;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct QuantilesView {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PredictedView {
    pub request_throughput: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RunView {
    pub series: String,
    pub request_rate: Option<f64>,
    pub completed: usize,
    pub failed: usize,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub ttft: Option<QuantilesView>,
    pub tpot: Option<QuantilesView>,
    #[serde(default)]
    pub ttft_cdf: Vec<(f64, f64)>,
    #[serde(default)]
    pub tpot_cdf: Vec<(f64, f64)>,
    #[serde(default)]
    pub predicted: Option<PredictedView>,
}

impl RunView {
    fn rate_text(&self) -> String {
        self.request_rate
            .map_or("inf".to_string(), |r| format!("{r}"))
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct FairnessView {
    pub label: String,
    pub bucket_s: f64,
    pub clients: Vec<String>,
    pub cumulative: Vec<Vec<f64>>,
    pub max_gap: f64,
    #[serde(default)]
    pub bound: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ServingView {
    #[serde(default)]
    pub setup: String,
    #[serde(default)]
    pub runs: Vec<RunView>,
    #[serde(default)]
    pub fairness: Vec<FairnessView>,
    #[serde(default)]
    pub ttft_p99_slo_ms: Option<f64>,
    /// Free-form lines a producer adds (the study: what the section ran and why).
    #[serde(default)]
    pub notes: Vec<String>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.2}"))
}

/// The serving section of a report, or a line saying why there is none.
pub fn serving_section(out: &mut String, v: &serde_json::Value) -> Result<(), PlotError> {
    let view = match ServingView::deserialize(v) {
        Ok(view) => view,
        Err(e) => {
            let _ = writeln!(
                out,
                "<p class=\"empty\">The serving record cannot be read: {}</p>",
                escape(&e.to_string())
            );
            return Ok(());
        }
    };
    if !view.setup.is_empty() {
        let _ = writeln!(out, "<p>{}</p>", escape(&view.setup));
    }
    for n in &view.notes {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(n));
    }
    runs_table(out, &view);
    against_rate_plots(out, &view)?;
    cdf_plots(out, &view)?;
    fairness(out, &view)?;
    Ok(())
}

fn runs_table(out: &mut String, v: &ServingView) {
    if v.runs.is_empty() {
        out.push_str("<p class=\"empty\">No serving runs.</p>\n");
        return;
    }
    let rows: Vec<Vec<String>> = v
        .runs
        .iter()
        .map(|r| {
            let p = r.predicted.clone().unwrap_or_default();
            let mut row = vec![
                r.series.clone(),
                r.rate_text(),
                format!("{} / {}", r.completed, r.failed),
                format!("{:.2}", r.request_throughput),
                format!("{:.1}", r.output_throughput),
                ms(r.ttft.as_ref().map(|q| q.p50_ms)),
                ms(r.ttft.as_ref().map(|q| q.p99_ms)),
                ms(r.tpot.as_ref().map(|q| q.p50_ms)),
                ms(r.tpot.as_ref().map(|q| q.p99_ms)),
                ms(p.request_throughput),
                if r.predicted.is_some() && p.ttft_ms.is_none() {
                    "saturated".into()
                } else {
                    ms(p.ttft_ms)
                },
                ms(p.tpot_ms),
            ];
            if let Some(slo) = v.ttft_p99_slo_ms {
                let ok = r.failed == 0 && r.ttft.as_ref().is_some_and(|q| q.p99_ms <= slo);
                row.push(if ok { "yes" } else { "no" }.into());
            }
            row
        })
        .collect();
    let mut header = vec![
        "series",
        "rate (req/s)",
        "ok / failed",
        "req/s",
        "output tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TPOT p50 ms",
        "TPOT p99 ms",
        "predicted req/s",
        "predicted TTFT ms",
        "predicted TPOT ms",
    ];
    let slo_header = v.ttft_p99_slo_ms.map(|slo| format!("p99 TTFT ≤ {slo} ms"));
    if let Some(h) = &slo_header {
        header.push(h);
    }
    table(out, &header, &rows);
    let Some(slo) = v.ttft_p99_slo_ms else {
        return;
    };
    // Each series' highest offered rate within the limit, and what it served there.
    for name in series_names(v) {
        let best = v
            .runs
            .iter()
            .filter(|r| r.series == name && r.failed == 0)
            .filter(|r| r.ttft.as_ref().is_some_and(|q| q.p99_ms <= slo))
            .max_by(|a, b| {
                a.request_rate
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.request_rate.unwrap_or(f64::INFINITY))
            });
        let line = match best {
            Some(r) => format!(
                "{name}: the highest rate with p99 TTFT ≤ {slo} ms is {} req/s, where it served {:.2} req/s",
                r.rate_text(),
                r.request_throughput
            ),
            None => format!("{name}: no rate kept p99 TTFT within {slo} ms"),
        };
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(&line));
    }
}

/// The series names in order of first appearance.
fn series_names(v: &ServingView) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in &v.runs {
        if !names.contains(&r.series) {
            names.push(r.series.clone());
        }
    }
    names
}

fn against_rate_plots(out: &mut String, v: &ServingView) -> Result<(), PlotError> {
    // Only finite rates have a place on the x axis.
    let names = series_names(v);
    let points = |name: &str, f: &dyn Fn(&RunView) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut p: Vec<(f64, f64)> = v
            .runs
            .iter()
            .filter(|r| r.series == name)
            .filter_map(|r| Some((r.request_rate?, f(r)?)))
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let mut throughput = Vec::new();
    let mut ttft = Vec::new();
    let mut tpot = Vec::new();
    for n in &names {
        let s = |suffix: &str, pts, dashed| Series {
            name: format!("{n}{suffix}"),
            points: pts,
            dashed,
        };
        throughput.push(s("", points(n, &|r| Some(r.request_throughput)), false));
        throughput.push(s(
            " (predicted)",
            points(n, &|r| r.predicted.as_ref()?.request_throughput),
            true,
        ));
        ttft.push(s(
            " p50",
            points(n, &|r| Some(r.ttft.as_ref()?.p50_ms)),
            false,
        ));
        ttft.push(s(
            " p99",
            points(n, &|r| Some(r.ttft.as_ref()?.p99_ms)),
            false,
        ));
        ttft.push(s(
            " (predicted mean)",
            points(n, &|r| r.predicted.as_ref()?.ttft_ms),
            true,
        ));
        tpot.push(s(
            " p50",
            points(n, &|r| Some(r.tpot.as_ref()?.p50_ms)),
            false,
        ));
        tpot.push(s(
            " p99",
            points(n, &|r| Some(r.tpot.as_ref()?.p99_ms)),
            false,
        ));
        tpot.push(s(
            " (predicted mean)",
            points(n, &|r| r.predicted.as_ref()?.tpot_ms),
            true,
        ));
    }
    let keep = |series: Vec<Series>| -> Vec<Series> {
        series
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let offered: Vec<(f64, f64)> = {
        let mut r: Vec<f64> = v.runs.iter().filter_map(|r| r.request_rate).collect();
        r.sort_by(f64::total_cmp);
        r.dedup();
        r.into_iter().map(|x| (x, x)).collect()
    };
    let mut with_offered = keep(throughput);
    with_offered.push(Series {
        name: "offered rate".into(),
        points: offered,
        dashed: true,
    });
    plot(
        out,
        &LinePlot {
            title: "Request throughput against the offered rate".into(),
            x_label: "offered rate (req/s)".into(),
            y_label: "completed req/s".into(),
            log_x: true,
            log_y: true,
            series: with_offered,
        },
    )?;
    for (title, y, series) in [
        (
            "Time to first token against the offered rate",
            "TTFT (ms)",
            ttft,
        ),
        (
            "Time per output token against the offered rate",
            "TPOT (ms)",
            tpot,
        ),
    ] {
        plot(
            out,
            &LinePlot {
                title: title.into(),
                x_label: "offered rate (req/s)".into(),
                y_label: y.into(),
                log_x: true,
                log_y: true,
                series: keep(series),
            },
        )?;
    }
    Ok(())
}

fn cdf_plots(out: &mut String, v: &ServingView) -> Result<(), PlotError> {
    for (title, x, get) in [
        (
            "TTFT distribution (CDF) of every run",
            "TTFT (ms)",
            (|r: &RunView| r.ttft_cdf.clone()) as fn(&RunView) -> Vec<(f64, f64)>,
        ),
        (
            "TPOT distribution (CDF) of every run",
            "TPOT (ms)",
            |r: &RunView| r.tpot_cdf.clone(),
        ),
    ] {
        let series = v
            .runs
            .iter()
            .map(|r| Series {
                name: format!("{} @ {} req/s", r.series, r.rate_text()),
                points: get(r),
                dashed: false,
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        plot(
            out,
            &LinePlot {
                title: title.into(),
                x_label: x.into(),
                y_label: "fraction of requests".into(),
                log_x: true,
                log_y: false,
                series,
            },
        )?;
    }
    Ok(())
}

fn fairness(out: &mut String, v: &ServingView) -> Result<(), PlotError> {
    if v.fairness.is_empty() {
        return Ok(());
    }
    out.push_str("<h3>Fairness between clients</h3>\n");
    let rows: Vec<Vec<String>> = v
        .fairness
        .iter()
        .map(|f| {
            let totals: Vec<String> = f
                .clients
                .iter()
                .zip(&f.cumulative)
                .map(|(c, s)| format!("{c}: {:.0}", s.last().copied().unwrap_or(0.0)))
                .collect();
            vec![
                f.label.clone(),
                totals.join(", "),
                format!("{:.0}", f.max_gap),
                f.bound.map_or("—".into(), |b| format!("{b:.0}")),
                match f.bound {
                    Some(b) if f.max_gap <= b => "within".into(),
                    Some(_) => "exceeded".into(),
                    None => "—".into(),
                },
            ]
        })
        .collect();
    table(
        out,
        &[
            "scheduler",
            "service received (input + 2 × output tokens)",
            "largest gap while both backlogged",
            "VTC bound 2·max(w_in·L_in, w_out·M)",
            "",
        ],
        &rows,
    );
    out.push_str(
        "<p class=\"note\">The bound is the VTC paper's (Sheng et al., OSDI 2024, §4): two \
         clients backlogged over an interval receive service that differs by at most \
         2·max(w_in·L_in, w_out·M), L_in the longest prompt and M the tokens the running batch \
         holds. It holds for VTC at any length of run; FCFS's gap grows with the run.</p>\n",
    );
    for f in &v.fairness {
        let series = f
            .clients
            .iter()
            .zip(&f.cumulative)
            .map(|(c, s)| Series {
                name: c.clone(),
                points: s
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| ((i + 1) as f64 * f.bucket_s, x))
                    .collect(),
                dashed: false,
            })
            .collect();
        plot(
            out,
            &LinePlot {
                title: format!(
                    "{}: service received per client over time (gap {:.0})",
                    f.label, f.max_gap
                ),
                x_label: "time (s)".into(),
                y_label: "cumulative service (tokens)".into(),
                log_x: false,
                log_y: false,
                series,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(series: &str, rate: Option<f64>, p99: f64) -> serde_json::Value {
        json!({
            "series": series, "request_rate": rate, "completed": 10, "failed": 0,
            "duration_s": 1.0, "request_throughput": rate.unwrap_or(50.0) * 0.9,
            "output_throughput": 100.0,
            "ttft": {"mean_ms": p99 / 2.0, "p50_ms": p99 / 3.0, "p90_ms": p99 / 2.0, "p99_ms": p99},
            "tpot": {"mean_ms": 5.0, "p50_ms": 5.0, "p90_ms": 6.0, "p99_ms": 7.0},
            "e2el": null,
            "ttft_cdf": [[1.0, 0.5], [p99, 1.0]], "tpot_cdf": [[5.0, 0.5], [7.0, 1.0]],
            "predicted": {"request_throughput": 10.0, "output_throughput": 1.0, "ttft_ms": null, "tpot_ms": 4.0}
        })
    }

    #[test]
    fn draws_the_sweep_the_cdfs_and_the_fairness_runs() {
        let v = json!({
            "setup": "tiny <model>",
            "runs": [run("continuous", Some(1.0), 10.0), run("continuous", Some(4.0), 30.0),
                     run("static", Some(1.0), 50.0), run("static", Some(4.0), 900.0),
                     run("continuous", None, 400.0)],
            "fairness": [
                {"label": "vtc", "bucket_s": 0.5, "clients": ["client-0", "client-1"],
                 "cumulative": [[10.0, 20.0, 30.0], [9.0, 19.0, 31.0]],
                 "backlogged": [[true, true, true], [true, true, true]], "max_gap": 2.0, "bound": 512.0},
                {"label": "fcfs", "bucket_s": 0.5, "clients": ["client-0", "client-1"],
                 "cumulative": [[16.0, 32.0, 48.0], [4.0, 8.0, 12.0]],
                 "backlogged": [[true, true, true], [true, true, true]], "max_gap": 36.0, "bound": 20.0}
            ],
            "ttft_p99_slo_ms": 100.0
        });
        let mut out = String::new();
        serving_section(&mut out, &v).expect("draws");
        // Throughput, TTFT and TPOT against rate, two CDFs, two fairness runs.
        assert_eq!(out.matches("<svg").count(), 7, "{out}");
        assert!(out.contains("tiny &lt;model&gt;"));
        assert!(out.contains("saturated"));
        assert!(out.contains(">exceeded<") && out.contains(">within<"));
        assert!(out.contains("p99 TTFT ≤ 100 ms"));
        assert!(out.contains("continuous: the highest rate with p99 TTFT ≤ 100 ms is 4 req/s"));
        assert!(out.contains("static: the highest rate with p99 TTFT ≤ 100 ms is 1 req/s"));
        // Unreadable records say so rather than fail the report.
        let mut bad = String::new();
        serving_section(&mut bad, &json!({"runs": 5})).expect("no error");
        assert!(bad.contains("cannot be read"));
    }
}
