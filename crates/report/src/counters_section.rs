//! The student report's experiment as `tperf counters --json` writes it (estimated against
//! counted FLOPs and DRAM bytes over batch sizes): its two plots and its report section, drawn
//! from the JSON alone.

use crate::markup::escape;
use crate::plots::{line_plot, LinePlot, PlotError, Series};
use serde_json::Value;
use std::fmt::Write as _;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The FLOP plot (counted against the report's estimate, log–log) and the DRAM plot (bytes
/// against the batch size).
pub fn counters_plots(e: &Value) -> Result<(String, String), PlotError> {
    let rows = e["rows"].as_array().cloned().unwrap_or_default();
    let pts = |x: &str, y: &str| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (f(&r[x]), f(&r[y]))).collect()
    };
    let series = |name: &str, dashed: bool, points: Vec<(f64, f64)>| Series {
        name: name.into(),
        points,
        dashed,
    };
    // The report's own ncu counts, at its own estimate of the same batch.
    let theirs: Vec<(f64, f64)> = e["report_measured_flops"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| (f(&p["student_flops"]), f(&p["measured_flops"])))
                .collect()
        })
        .unwrap_or_default();
    let model = e["model"].as_str().unwrap_or("?");
    let phase = e["phase"].as_str().unwrap_or("?");
    let flops = line_plot(&LinePlot {
        title: format!(
            "{model}: counted against estimated FLOPs ({phase}, seq {})",
            e["seq"]
        ),
        x_label: "the report's estimate of one encoder block (FLOP)".into(),
        y_label: "FLOP".into(),
        log_x: true,
        log_y: true,
        // A series an older experiment.json lacks (the model at tiles) is left out.
        series: [
            series(
                "counted, block 0 (ncu)",
                false,
                pts("student_flops", "counted_block_flops"),
            ),
            series(
                "counted, block 0 forward (ncu)",
                false,
                pts("student_flops", "counted_block_forward_flops"),
            ),
            series(
                "tperf model, block 0",
                true,
                pts("student_flops", "model_block_flops"),
            ),
            series(
                "tperf model, block 0 forward",
                true,
                pts("student_flops", "model_block_forward_flops"),
            ),
            series(
                "tperf model at the kernels' tiles, block 0",
                true,
                pts("student_flops", "model_block_at_tiles_flops"),
            ),
            series("the report's ncu counts (its table 2)", false, theirs),
            series(
                "counted = estimated",
                true,
                pts("student_flops", "student_flops"),
            ),
        ]
        .into_iter()
        .filter(|s| s.points.iter().any(|p| p.1.is_finite()))
        .collect(),
    })?;
    let dram = line_plot(&LinePlot {
        title: format!("{model}: DRAM bytes of the step against the batch size"),
        x_label: "batch".into(),
        y_label: "bytes".into(),
        log_x: true,
        log_y: true,
        series: vec![
            series(
                "counted DRAM read + write (ncu)",
                false,
                pts("batch", "counted_step_dram_bytes"),
            ),
            series(
                "counted L2 traffic (ncu)",
                false,
                pts("batch", "counted_step_l2_bytes"),
            ),
            series(
                "tperf model: minimum bytes",
                true,
                pts("batch", "model_step_bytes"),
            ),
            series(
                "the report's 'memory' (its MAC count)",
                true,
                pts("batch", "student_bytes"),
            ),
        ],
    })?;
    Ok((flops, dram))
}

/// `v`: the experiment, or {"not_collected": why}.
pub fn counters_section(out: &mut String, v: &Value) -> Result<(), PlotError> {
    if let Some(why) = v["not_collected"].as_str() {
        let _ = writeln!(out, "<p class=\"empty\">{}</p>", escape(why));
        return Ok(());
    }
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let m = |x: &Value| format!("{:.1}", f(x) / 1e6);
    out.push_str("<table><tr>");
    for h in [
        "batch",
        "report's estimate MFLOP",
        "counted block MFLOP",
        "×estimate",
        "model step MFLOP",
        "counted step MFLOP",
        "×model",
        "model at tiles MFLOP",
        "×tiles",
        "model min MB",
        "DRAM MB",
        "×min",
    ] {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for r in &rows {
        let cells = [
            r["batch"].to_string(),
            m(&r["student_flops"]),
            m(&r["counted_block_flops"]),
            format!(
                "{:.2}",
                f(&r["counted_block_flops"]) / f(&r["student_flops"])
            ),
            m(&r["model_step_flops"]),
            m(&r["counted_step_flops"]),
            format!(
                "{:.4}",
                f(&r["counted_step_flops"]) / f(&r["model_step_flops"])
            ),
            r.get("model_step_at_tiles_flops").map_or("-".into(), m),
            r.get("model_step_at_tiles_flops").map_or("-".into(), |t| {
                format!("{:.4}", f(&r["counted_step_flops"]) / f(t))
            }),
            m(&r["model_step_bytes"]),
            m(&r["counted_step_dram_bytes"]),
            format!(
                "{:.2}",
                f(&r["counted_step_dram_bytes"]) / f(&r["model_step_bytes"])
            ),
        ];
        out.push_str("<tr>");
        for c in cells {
            let _ = write!(out, "<td class=\"n\">{}</td>", escape(&c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    if rows.len() >= 2 {
        let (flops, dram) = counters_plots(v)?;
        for svg in [flops, dram] {
            out.push_str("<div class=\"plot\">");
            out.push_str(&svg);
            out.push_str("</div>\n");
        }
    }
    if let Some(lines) = v["explanation"].as_array() {
        out.push_str("<ul>\n");
        for l in lines {
            let _ = writeln!(out, "<li>{}</li>", escape(l.as_str().unwrap_or("")));
        }
        out.push_str("</ul>\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_section_draws_both_plots_or_says_why_not() {
        let row = |b: f64| {
            json!({"batch": b, "student_flops": b * 1.96e7, "student_bytes": b * 9.8e6,
                   "counted_block_flops": b * 5.4e7, "counted_block_forward_flops": b * 1.8e7,
                   "model_block_flops": b * 5.3e7, "model_block_forward_flops": b * 1.78e7,
                   "model_step_flops": b * 4e8, "counted_step_flops": b * 4.1e8,
                   "model_step_at_tiles_flops": b * 4.05e8, "model_block_at_tiles_flops": b * 5.35e7,
                   "model_step_bytes": b * 1e7, "counted_step_dram_bytes": b * 9e6,
                   "counted_step_l2_bytes": b * 3e7})
        };
        let e = json!({"model": "report", "phase": "fwd_bwd", "seq": 35,
                       "rows": [row(16.0), row(32.0)],
                       "report_measured_flops": [{"batch": 16, "student_flops": 3.1e8, "measured_flops": 8.6e8}],
                       "explanation": ["a <gap>"]});
        let mut out = String::new();
        counters_section(&mut out, &e).unwrap();
        assert_eq!(out.matches("<svg").count(), 2);
        assert!(out.contains("a &lt;gap&gt;"));
        assert!(
            out.contains("model at tiles MFLOP") && out.contains("1.0123"),
            "{out}"
        );
        assert!(out.contains("tiles, block 0"), "the plot's series at tiles");
        // An experiment.json from before the model at tiles: a dash, and no such series.
        let mut old = e.clone();
        for r in old["rows"].as_array_mut().unwrap() {
            let r = r.as_object_mut().unwrap();
            r.remove("model_step_at_tiles_flops");
            r.remove("model_block_at_tiles_flops");
        }
        let mut out = String::new();
        counters_section(&mut out, &old).unwrap();
        assert!(out.contains("<td class=\"n\">-</td>") && !out.contains("tiles, block 0"));
        let mut none = String::new();
        counters_section(&mut none, &json!({"not_collected": "no `ncu` on the PATH"})).unwrap();
        assert!(none.contains("no `ncu` on the PATH") && !none.contains("<svg"));
    }
}
