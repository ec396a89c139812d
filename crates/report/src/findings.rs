//! The report's opening: what the run found, written from its data. For each analysis: what
//! bounds the step, the largest shares of its time, how far measured kernels are from the
//! roofline (or that nothing was measured), and the one change the model predicts would help
//! most (the `what_if` alternatives `tperf study` models beside each analysis); then one line
//! for each measured section (benchmarks, attention).

use crate::markup::escape;
use crate::results::{AnalysisView, OpView, Results};
use crate::units;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Ops grouped by kind (op name) and phase: the unit the findings and the longest-ops table
/// speak in, so that thirteen AdamW launches read as one row.
#[derive(Clone, Debug)]
pub struct OpGroup {
    pub kind: String,
    pub phase: String,
    pub class: String,
    pub count: usize,
    pub flops: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Summed over the ops that were measured; `measured_count` says how many.
    pub measured_seconds: f64,
    pub measured_count: usize,
    /// Modelled seconds in memory-bound ops (the rest is compute-bound).
    pub memory_bound_seconds: f64,
    /// The single op with the longest predicted time.
    pub longest: (String, f64),
}

pub fn group_ops(ops: &[OpView]) -> Vec<OpGroup> {
    let mut groups: BTreeMap<(String, String), OpGroup> = BTreeMap::new();
    for o in ops {
        let g = groups
            .entry((o.name.clone(), o.phase.clone()))
            .or_insert_with(|| OpGroup {
                kind: o.name.clone(),
                phase: o.phase.clone(),
                class: o.class.clone(),
                count: 0,
                flops: 0,
                bytes: 0,
                seconds: 0.0,
                measured_seconds: 0.0,
                measured_count: 0,
                memory_bound_seconds: 0.0,
                longest: (String::new(), f64::NEG_INFINITY),
            });
        g.count += 1;
        g.flops += o.flops;
        g.bytes += o.bytes;
        g.seconds += o.seconds;
        if is_memory_bound(o) {
            g.memory_bound_seconds += o.seconds;
        }
        if let Some(m) = o.measured_seconds.filter(|m| m.is_finite()) {
            g.measured_seconds += m;
            g.measured_count += 1;
        }
        if o.seconds > g.longest.1 {
            g.longest = (o.label.clone(), o.seconds);
        }
    }
    let mut v: Vec<OpGroup> = groups.into_values().collect();
    v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    v
}

fn is_memory_bound(o: &OpView) -> bool {
    o.bound.contains("memory") || o.bound.contains("bandwidth")
}

/// One alternative the model evaluated beside an analysis (`tperf study` writes them).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct WhatIf {
    /// What changes, in words: "bf16 mixed precision", "batch 8".
    pub change: String,
    pub step_seconds: f64,
    pub tokens_per_second: f64,
    #[serde(default = "yes")]
    pub fits: bool,
}

fn yes() -> bool {
    true
}

/// The findings section's HTML.
pub fn section(out: &mut String, r: &Results, views: &[AnalysisView]) {
    out.push_str("<section id=\"findings\"><h2>Findings</h2>\n");
    if views.is_empty() {
        out.push_str("<p class=\"empty\">No analyses in this run.</p>\n");
    }
    for (i, (a, raw)) in views.iter().zip(&r.analyses).enumerate() {
        let measured = a.ops.iter().any(|o| o.measured_seconds.is_some());
        let _ = writeln!(
            out,
            "<h3 id=\"finding-{i}\">{} on {} — {}{}</h3><ul>",
            escape(&a.model),
            escape(&a.hardware.name),
            escape(&a.scenario_line()),
            if measured {
                " (profiled: measured per op)"
            } else {
                " (modelled)"
            }
        );
        for line in analysis_findings(a, raw) {
            let _ = writeln!(out, "<li>{line}</li>");
        }
        out.push_str("</ul>\n");
    }
    let mut measured = Vec::new();
    if let Some(b) = &r.bench {
        measured.extend(bench_finding(b));
    }
    if let Some(at) = &r.attention {
        measured.extend(attention_finding(at));
    }
    if !measured.is_empty() {
        out.push_str("<h3>Measured sections</h3><ul>\n");
        for line in measured {
            let _ = writeln!(out, "<li>{line}</li>");
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</section>\n");
}

/// The lines for one analysis, as HTML (text escaped).
pub fn analysis_findings(a: &AnalysisView, raw: &Value) -> Vec<String> {
    let groups = group_ops(&a.ops);
    let total: f64 = a.ops.iter().map(|o| o.seconds).sum();
    let mut lines = Vec::new();
    if total <= 0.0 || !total.is_finite() {
        lines.push("No predicted time in this analysis.".to_string());
        return lines;
    }
    let share = |s: f64| units::percent(s / total);
    // Bound: the share of predicted time in memory-bound ops.
    let memory: f64 = groups.iter().map(|g| g.memory_bound_seconds).sum();
    let (bound, frac) = if memory >= total / 2.0 {
        ("memory-bound", memory)
    } else {
        ("compute-bound", total - memory)
    };
    let mut step = format!(
        "<b>Bound:</b> {bound} — {} of the predicted step ({}) is in {} ops",
        share(frac),
        units::seconds(total),
        if bound == "memory-bound" {
            "bandwidth-limited"
        } else {
            "compute-limited"
        }
    );
    if let Some(p) = &a.predicted {
        let _ = write!(step, "; predicted MFU {}", units::percent(p.mfu));
    }
    lines.push(step + ".");
    // The largest shares, by kind and phase.
    let top: Vec<String> = groups
        .iter()
        .take(3)
        .map(|g| {
            format!(
                "{} ({}, {} op{}) {}",
                escape(&g.kind),
                escape(&g.phase),
                g.count,
                if g.count == 1 { "" } else { "s" },
                share(g.seconds)
            )
        })
        .collect();
    lines.push(format!("<b>Largest shares:</b> {}.", top.join(", ")));
    // Measured against modelled.
    let measured: Vec<&OpView> = a
        .ops
        .iter()
        .filter(|o| o.measured_seconds.is_some_and(f64::is_finite))
        .collect();
    if measured.is_empty() {
        lines.push(format!(
            "<b>Measured vs modelled:</b> not measured on {} in this run: the numbers are the \
             model's alone (the roofline's points sit on the roof by construction).",
            escape(&a.hardware.name)
        ));
    } else {
        let m: f64 = measured.iter().filter_map(|o| o.measured_seconds).sum();
        let p: f64 = measured.iter().map(|o| o.seconds).sum();
        // The kind that loses the most time against its prediction.
        let worst = groups
            .iter()
            .filter(|g| g.measured_count > 0)
            .max_by(|x, y| {
                (x.measured_seconds - x.seconds).total_cmp(&(y.measured_seconds - y.seconds))
            });
        let mut line = format!(
            "<b>Measured vs modelled:</b> {} measured against {} modelled over {} ops: the \
             kernels run at {} of the roofline's speed",
            units::seconds(m),
            units::seconds(p),
            measured.len(),
            units::percent(p / m)
        );
        if let Some(w) = worst {
            let _ = write!(
                line,
                "; the largest gap is {} ({}): {} measured, {} modelled",
                escape(&w.kind),
                escape(&w.phase),
                units::seconds(w.measured_seconds),
                units::seconds(w.seconds)
            );
        }
        lines.push(line + ".");
    }
    // The one change the model says would help most.
    let what_if: Vec<WhatIf> = raw
        .get("what_if")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let base_tps = a.predicted.map_or(0.0, |p| p.tokens_per_second);
    let best = what_if
        .iter()
        .filter(|w| w.fits && w.tokens_per_second.is_finite())
        .max_by(|x, y| x.tokens_per_second.total_cmp(&y.tokens_per_second));
    match best {
        Some(w) if base_tps > 0.0 && w.tokens_per_second > base_tps * 1.01 => {
            lines.push(format!(
                "<b>Would help most (the model):</b> {} — predicted {:.2}× the tokens/s \
                 ({} per step instead of {}), of the {} alternatives modelled.",
                escape(&w.change),
                w.tokens_per_second / base_tps,
                units::seconds(w.step_seconds),
                units::seconds(a.predicted.map_or(f64::NAN, |p| p.step_seconds)),
                what_if.len()
            ));
        }
        Some(_) => lines.push(format!(
            "<b>Would help most (the model):</b> none of the {} alternatives modelled \
             (precision, attention kernel, fusion, batch) predicts more than 1% more tokens/s.",
            what_if.len()
        )),
        None => {
            // A results file without alternatives: say what the largest share points at.
            if let Some(g) = groups.first() {
                let hint = if g.memory_bound_seconds >= g.seconds / 2.0 {
                    "it is memory-bound: fewer bytes (lower precision, fusion) is what shortens it"
                } else {
                    "it is compute-bound: a faster matrix unit (bf16) is what shortens it"
                };
                lines.push(format!(
                    "<b>Where to look first:</b> {} ({}) has the largest share; {hint}.",
                    escape(&g.kind),
                    escape(&g.phase)
                ));
            }
        }
    }
    lines
}

fn median_ratio(mut r: Vec<f64>) -> Option<(f64, f64, f64)> {
    r.retain(|x| x.is_finite() && *x > 0.0);
    if r.is_empty() {
        return None;
    }
    r.sort_by(f64::total_cmp);
    Some((r[0], r[r.len() / 2], r[r.len() - 1]))
}

fn bench_finding(v: &Value) -> Option<String> {
    let rows = v["rows"].as_array()?;
    let ratios: Vec<f64> = rows
        .iter()
        .map(|r| {
            r["measured"]["median"].as_f64().unwrap_or(f64::NAN)
                / r["modelled_seconds"].as_f64().unwrap_or(f64::NAN)
        })
        .collect();
    let (lo, mid, hi) = median_ratio(ratios)?;
    Some(format!(
        "<b>Benchmarks:</b> {} runs; measured medians are {lo:.1}×–{hi:.1}× the modelled time \
         (median {mid:.1}×), i.e. {} of the roofline's speed at the median.",
        rows.len(),
        units::percent(1.0 / mid)
    ))
}

fn attention_finding(v: &Value) -> Option<String> {
    let rows = v["rows"].as_array()?;
    let mut ratios: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r["measured"].is_null()) {
        let m = r["measured"]["forward"]["median"]
            .as_f64()
            .unwrap_or(f64::NAN)
            + r["measured"]["backward"]["median"]
                .as_f64()
                .unwrap_or(f64::NAN);
        let p = r["predicted"]["forward_seconds"]
            .as_f64()
            .unwrap_or(f64::NAN)
            + r["predicted"]["backward_seconds"]
                .as_f64()
                .unwrap_or(f64::NAN);
        ratios
            .entry(r["case"]["kernel"].as_str().unwrap_or("?").to_string())
            .or_default()
            .push(m / p);
    }
    let parts: Vec<String> = ratios
        .into_iter()
        .filter_map(|(k, r)| {
            let n = r.len();
            median_ratio(r)
                .map(|(_, mid, _)| format!("{} ({n} cases) at {mid:.1}× its model", escape(&k)))
        })
        .collect();
    if parts.is_empty() {
        return None;
    }
    Some(format!(
        "<b>Attention:</b> forward + backward measured, median: {}.",
        parts.join("; ")
    ))
}
