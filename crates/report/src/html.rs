//! The self-contained HTML report: one file with its stylesheet and every plot inline, so it
//! opens from a laptop's disk, an e-mail or a CI artefact with no network at all. Nothing in
//! the page names a URL: no external fonts, scripts, stylesheets or images.

use crate::markup::{escape, table};
use crate::plots;
use crate::results::{AnalysisView, Results, ResultsError};
use crate::units;
use std::fmt::Write as _;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HtmlError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Plot(#[from] plots::PlotError),
}

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1100px; padding: 24px; color: #1b1b1b; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #0072b2; padding-bottom: 4px; margin-top: 2em; }
h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.86em; }
th, td { border: 1px solid #d6d6d6; padding: 3px 8px; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f1f4f8; }
svg.plot { width: 100%; height: auto; display: block; margin: 0.8em 0; border: 1px solid #e4e4e4; }
.note { color: #555; font-size: 0.9em; }
.empty { color: #777; font-style: italic; }
";

/// Renders the whole report. Fails only if a plot cannot be drawn or an analysis lacks the
/// fields the report reads.
pub fn render(r: &Results) -> Result<String, HtmlError> {
    let views = r.analysis_views()?;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>tperf report {}</title><style>{STYLE}</style></head><body>\n",
        escape(&r.run_id)
    );
    let _ = writeln!(out, "<h1>tperf report — {}</h1>", escape(&r.run_id));
    let p = &r.provenance;
    table(
        &mut out,
        &["provenance", ""],
        &[
            vec!["tperf".into(), p.tperf_version.clone()],
            vec!["git revision".into(), p.git_revision.clone()],
            vec!["device".into(), p.device.clone()],
            vec!["driver".into(), p.driver.clone()],
            vec!["CPU".into(), p.cpu.clone()],
            vec!["date".into(), p.date.clone()],
        ],
    );
    out.push_str("<p class=\"note\">Modelled numbers are roofline predictions: each op at max(FLOPs / peak, bytes / bandwidth). \
                  A FLOP is one add or one multiply; bytes are the minimum traffic.</p>\n");
    crate::findings::section(&mut out, r, &views);

    out.push_str("<h2>Analyses</h2>\n");
    for (i, a) in views.iter().enumerate() {
        analysis_section(&mut out, i, a)?;
    }
    out.push_str("<h2>Benchmarks (measured beside modelled)</h2>\n");
    match &r.bench {
        Some(v) => crate::bench_sections::bench_section(&mut out, v)?,
        None => out.push_str("<p class=\"empty\">Not run in this study.</p>\n"),
    }
    out.push_str("<h2>GPU utilisation during the benchmarks</h2>\n");
    match &r.bench {
        Some(v) => crate::bench_sections::utilisation_section(&mut out, v.get("utilisation"))?,
        None => out.push_str("<p class=\"empty\">Not run in this study.</p>\n"),
    }
    out.push_str("<h2>Attention: naive vs flash</h2>\n");
    match &r.attention {
        Some(v) => crate::bench_sections::attention_section(&mut out, v)?,
        None => out.push_str("<p class=\"empty\">Not run in this study.</p>\n"),
    }
    out.push_str("<h2>Hardware counters: the student report's experiment</h2>\n");
    match &r.counters {
        Some(v) => crate::counters_section::counters_section(&mut out, v)?,
        None => out.push_str("<p class=\"empty\">Not run in this study (counters are read on CUDA devices, with Nsight Compute).</p>\n"),
    }
    out.push_str("<h2>Mixed precision</h2>\n");
    match &r.precision {
        Some(v) => precision_section(&mut out, v),
        None => out.push_str("<p class=\"empty\">Not run in this study.</p>\n"),
    }
    out.push_str("<h2>Serving</h2>\n");
    match &r.serving {
        Some(v) => crate::serving::serving_section(&mut out, v)?,
        None => out.push_str("<p class=\"empty\">Not run in this study.</p>\n"),
    }
    out.push_str("</body></html>\n");
    Ok(out)
}

/// The start of a page of one kind of record: its head, its title and `lines` of provenance.
fn open_page(title: &str, lines: &[(String, String)]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(title));
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect();
    table(&mut out, &["provenance", ""], &rows);
    out
}

/// A page of serving runs alone (`tperf report --serving`): the records of `tperf bench
/// serve`, merged, with `lines` of provenance above them.
pub fn render_serving(
    title: &str,
    lines: &[(String, String)],
    serving: &serde_json::Value,
) -> Result<String, HtmlError> {
    let mut out = open_page(title, lines);
    crate::serving::serving_section(&mut out, serving)?;
    out.push_str("</body></html>\n");
    Ok(out)
}

/// A page of data-parallel scaling runs alone (`tperf report --scaling`): one section per
/// `tperf bench --scaling --json` document, with `lines` of provenance above them.
pub fn render_scaling(
    title: &str,
    lines: &[(String, String)],
    runs: &[serde_json::Value],
) -> Result<String, HtmlError> {
    let mut out = open_page(title, lines);
    for run in runs {
        crate::scaling::scaling_section(&mut out, run)?;
    }
    out.push_str("</body></html>\n");
    Ok(out)
}

fn analysis_section(out: &mut String, i: usize, a: &AnalysisView) -> Result<(), HtmlError> {
    let _ = writeln!(
        out,
        "<h3 id=\"analysis-{i}\">{} on {} — {}</h3>",
        escape(&a.model),
        escape(&a.hardware.name),
        escape(&a.scenario_line())
    );
    let mut rows = vec![
        vec!["ops in the schedule".into(), a.ops.len().to_string()],
        vec!["peak memory".into(), units::bytes(a.memory.peak_bytes)],
        vec![
            "device memory".into(),
            units::bytes(a.hardware.memory_bytes),
        ],
    ];
    if let Some(pr) = &a.predicted {
        rows.push(vec![
            "predicted step".into(),
            units::seconds(pr.step_seconds),
        ]);
        rows.push(vec![
            "tokens/s".into(),
            format!("{:.0}", pr.tokens_per_second),
        ]);
        rows.push(vec!["MFU".into(), units::percent(pr.mfu)]);
    }
    table(out, &["quantity", "value"], &rows);
    out.push_str(&plots::roofline(a)?);
    out.push('\n');
    if a.memory.timeline.is_empty() {
        out.push_str("<p class=\"empty\">No memory timeline in this analysis.</p>\n");
    } else {
        out.push_str(&plots::memory_timeline(a)?);
        out.push('\n');
    }
    out.push_str(&plots::time_by_kind(a)?);
    out.push('\n');
    if !a.ops.iter().any(|o| o.measured_seconds.is_some()) {
        let _ = writeln!(
            out,
            "<p class=\"note\">Not measured on {}: the roofline's points are the model's, on the roof by construction.</p>",
            escape(&a.hardware.name)
        );
    }
    // The op kinds that take the most predicted time, each kind and phase one row (a step's
    // many launches of one op read as one); the CSV beside the report has every op.
    let groups = crate::findings::group_ops(&a.ops);
    let total: f64 = a.ops.iter().map(|o| o.seconds).sum();
    let any_measured = groups.iter().any(|g| g.measured_count > 0);
    let rows: Vec<Vec<String>> = groups
        .iter()
        .take(15)
        .map(|g| {
            vec![
                g.kind.clone(),
                g.phase.clone(),
                g.count.to_string(),
                format!("{:.3}", g.flops as f64 / 1e9),
                format!("{:.2}", g.bytes as f64 / (1u64 << 20) as f64),
                format!("{:.1}", g.flops as f64 / (g.bytes as f64).max(1.0)),
                if g.memory_bound_seconds >= g.seconds / 2.0 {
                    "memory"
                } else {
                    "compute"
                }
                .into(),
                format!("{:.2}", g.seconds * 1e6),
                if g.measured_count > 0 {
                    format!("{:.2}", g.measured_seconds * 1e6)
                } else {
                    "-".into()
                },
                units::percent(g.seconds / total.max(f64::MIN_POSITIVE)),
                format!("{} ({:.2} µs)", g.longest.0, g.longest.1 * 1e6),
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "<p class=\"note\">The op kinds with the longest predicted time, each kind and phase summed over its {} ops{} (every op: ops-{i}.csv beside this report).</p>",
        a.ops.len(),
        if any_measured { ", measured beside modelled" } else { "" }
    );
    table(
        out,
        &[
            "op kind",
            "phase",
            "ops",
            "GFLOP",
            "MiB",
            "FLOP/B",
            "bound",
            "modelled µs",
            "measured µs",
            "% time",
            "longest op (modelled)",
        ],
        &rows,
    );
    Ok(())
}

/// The accumulation experiment and bytes per parameter, read from `tperf precision --json`.
fn precision_section(out: &mut String, v: &serde_json::Value) {
    let str_of = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
    if let Some(cases) = v["accumulation"].as_array() {
        out.push_str("<p>Summing 0.01 a thousand times:</p>\n");
        let rows: Vec<Vec<String>> = cases
            .iter()
            .map(|c| {
                vec![
                    str_of(&c["code"]),
                    str_of(&c["torch_repr"]),
                    format!("{:+.3e}", c["error"].as_f64().unwrap_or(f64::NAN)),
                ]
            })
            .collect();
        table(out, &["PyTorch", "prints", "error vs 10"], &rows);
    }
    if let Some(s) = v["policies"]["schedules"].as_array() {
        let rows: Vec<Vec<String>> = s
            .iter()
            .map(|p| {
                vec![
                    str_of(&p["precision"]),
                    if p["training"].as_bool().unwrap_or(false) {
                        "training"
                    } else {
                        "inference"
                    }
                    .into(),
                    format!("{}", p["bytes_per_param"].as_f64().unwrap_or(f64::NAN)),
                ]
            })
            .collect();
        table(out, &["policy", "", "bytes per parameter"], &rows);
    }
    out.push_str("<p class=\"note\">Everything else (dtypes by tensor, norm statistics): <code>tperf precision</code>.</p>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Provenance, SCHEMA_VERSION};
    use serde_json::json;

    pub(crate) fn sample() -> Results {
        let ops: Vec<serde_json::Value> = (0..6)
            .map(|i| {
                json!({"index": i, "name": if i % 2 == 0 {"matmul"} else {"layernorm"},
                       "label": "x<y>", "layer": i / 3, "phase": "forward",
                       "class": if i % 2 == 0 {"matmul"} else {"elementwise"}, "dtype": "bf16",
                       "flops": (i + 1) * 1_000_000_000u64, "bytes": 10_000_000u64,
                       "intensity": (i + 1) as f64 * 100.0, "bound": "compute",
                       "seconds": 1e-4 * (i + 1) as f64,
                       "measured_seconds": if i == 0 { json!(3e-4) } else { json!(null) }})
            })
            .collect();
        let analysis = json!({
            "model": "tiny", "scenario": {"workload": "train", "batch": 2, "seq": 8, "opts": {"precision": "bf16"}},
            "hardware": {"key": "h100-sxm", "name": "H100", "memory_bytes": 85899345920u64,
                         "mem_bw_bytes_per_s": 3.35e12, "peak_f32_flops": 6.7e13,
                         "peak_bf16_flops": 9.895e14, "peak_f16_flops": 9.895e14},
            "ops": ops,
            "memory": {"peak_bytes": 3u64 << 30, "peak_at_op": 3,
                       "timeline": [
                           {"op": 0, "total_bytes": 1u64 << 30, "by_category": {"weights": 1u64 << 30}},
                           {"op": 3, "total_bytes": 3u64 << 30, "by_category": {"weights": 1u64 << 30, "activations": 2u64 << 30}},
                           {"op": 6, "total_bytes": 1u64 << 30, "by_category": {"weights": 1u64 << 30, "activations": 0}}]},
            "by_op": {"matmul": {"count": 3, "flops": 9, "bytes": 3, "seconds": 9e-4},
                      "layernorm": {"count": 3, "flops": 12, "bytes": 3, "seconds": 1.2e-3}},
            "predicted": {"step_seconds": 2.1e-3, "tokens_per_second": 7600.0, "mfu": 0.4},
            "what_if": [
                {"change": "batch 4", "step_seconds": 3.9e-3, "tokens_per_second": 8200.0, "fits": true},
                {"change": "batch 64", "step_seconds": 1e-2, "tokens_per_second": 51200.0, "fits": false},
                {"change": "naive attention", "step_seconds": 2.5e-3, "tokens_per_second": 6400.0, "fits": true}],
        });
        Results {
            schema_version: SCHEMA_VERSION,
            run_id: "test-run".into(),
            provenance: Provenance {
                tperf_version: "0".into(),
                git_revision: "abc".into(),
                device: "meta".into(),
                driver: "none".into(),
                cpu: "cpu".into(),
                date: "2026-01-01T00:00:00Z".into(),
                date_unix: 0,
            },
            analyses: vec![analysis],
            bench: None,
            attention: None,
            precision: None,
            counters: None,
            serving: None,
        }
    }

    #[test]
    fn renders_plots_inline_and_names_no_url() {
        let html = render(&sample()).expect("renders");
        assert_eq!(html.matches("<svg class=\"plot\"").count(), 3);
        assert!(html.contains("x&lt;y&gt;"), "labels are escaped");
        for bad in ["http://", "https://", "src=", "href=", "@import", "url("] {
            assert!(!html.contains(bad), "found {bad}");
        }
        assert!(
            html.contains("measured (1)"),
            "measured points have a legend"
        );
    }

    #[test]
    fn a_scaling_page_is_well_formed_and_names_no_url() {
        let lines = [("scaling.json".to_string(), "tperf bench …".to_string())];
        let html = render_scaling(
            "tperf scaling report",
            &lines,
            &[crate::scaling::tests::fixture()],
        )
        .expect("renders");
        assert_well_formed(&html);
        assert_eq!(html.matches("<svg class=\"plot\"").count(), 3);
        assert!(
            html.contains("<td>scaling.json</td>"),
            "the provenance lines"
        );
        for bad in ["http://", "https://", "src=", "href=", "@import", "url("] {
            assert!(!html.contains(bad), "found {bad}");
        }
    }

    /// Every element that must be closed is closed, in order: the page parses as written (a
    /// browser would repair a stray tag silently and the report would render wrong).
    fn assert_well_formed(html: &str) {
        const VOID: [&str; 4] = ["meta", "br", "hr", "img"];
        let mut open: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(at) = rest.find('<') {
            rest = &rest[at + 1..];
            let end = rest.find('>').expect("a tag is closed with >");
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if tag.starts_with('!') || tag.ends_with('/') {
                continue;
            }
            let (closing, body) = match tag.strip_prefix('/') {
                Some(b) => (true, b),
                None => (false, tag),
            };
            let name = body
                .split(|c: char| c.is_whitespace())
                .next()
                .unwrap_or("")
                .to_lowercase();
            if name == "style" && !closing {
                let close = rest.find("</style>").expect("style closed");
                rest = &rest[close + "</style>".len()..];
                continue;
            }
            if VOID.contains(&name.as_str()) {
                continue;
            }
            if closing {
                assert_eq!(
                    open.pop().as_deref(),
                    Some(name.as_str()),
                    "</{name}> closes the wrong element"
                );
            } else {
                open.push(name);
            }
        }
        assert!(open.is_empty(), "left open: {open:?}");
    }

    #[test]
    fn findings_open_the_report_and_are_written_from_the_data() {
        let html = render(&sample()).expect("renders");
        assert_well_formed(&html);
        let findings = &html[html.find("id=\"findings\"").expect("a findings section")..];
        assert!(
            html.find("id=\"findings\"") < html.find("<h2>Analyses</h2>"),
            "findings come before the data"
        );
        let findings = &findings[..findings.find("</section>").unwrap()];
        // The sample's largest kind is layernorm: 1.2 of the 2.1 ms predicted, over 3 ops.
        assert!(
            findings.contains("layernorm (forward, 3 ops) 57.1%"),
            "{findings}"
        );
        assert!(findings.contains("compute-bound — 100.0%"), "{findings}");
        // Op 0 (a matmul) measured 0.3 ms against 0.1 ms modelled.
        assert!(findings.contains("33.3% of the roofline"), "{findings}");
        assert!(findings.contains("largest gap is matmul"), "{findings}");
        // The best alternative that fits: batch 4, 8200 / 7600 tokens/s; batch 64 does not fit.
        assert!(findings.contains("batch 4 — predicted 1.08×"), "{findings}");
        assert!(!findings.contains("batch 64"), "{findings}");
    }

    #[test]
    fn the_longest_ops_table_has_one_row_per_kind_and_phase() {
        let html = render(&sample()).expect("renders");
        let t = &html[html.find("<th>op kind</th>").expect("the grouped table")..];
        let t = &t[..t.find("</table>").unwrap()];
        assert_eq!(t.matches("<tr>").count(), 2, "matmul and layernorm: {t}");
    }

    #[test]
    fn a_roofline_without_measurements_says_so() {
        let mut r = sample();
        r.analyses[0]["ops"][0]["measured_seconds"] = json!(null);
        let html = render(&r).expect("renders");
        assert!(
            html.contains("No measurements on this device"),
            "in the plot"
        );
        assert!(html.contains("Not measured on H100"), "beside it");
        assert!(
            html.contains("not measured on H100 in this run"),
            "in the findings"
        );
    }

    #[test]
    fn a_results_document_round_trips_and_refuses_newer_schemas() {
        let r = sample();
        let text = serde_json::to_string(&r).expect("serialises");
        let back = Results::from_json(&text).expect("parses");
        assert_eq!(back.analyses, r.analyses);
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["schema_version"] = json!(SCHEMA_VERSION + 1);
        assert!(matches!(
            Results::from_json(&v.to_string()),
            Err(ResultsError::TooNew { .. })
        ));
        assert!(Results::from_json("{}").is_err());
    }
}
