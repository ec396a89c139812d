//! The sections of a report drawn from measurements — benchmarks and the attention sweep — drawn from the
//! results document's JSON (the rows `tperf bench` and `tperf attention` emit): tables, and line
//! plots that put each measured series (solid) beside its modelled twin (dashed).

use crate::markup::{escape, table};
use crate::plots::PlotError;
use crate::plots::{line_plot, LinePlot, Series};
use crate::units;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Reads one number of a row.
type Field = Box<dyn Fn(&Value) -> f64>;
/// (x, y) points of a measured series and of its modelled twin.
type SeriesPair = (Vec<(f64, f64)>, Vec<(f64, f64)>);

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

pub(crate) fn plot(out: &mut String, p: &LinePlot) -> Result<(), PlotError> {
    if p.series.iter().any(|s| s.points.len() >= 2) {
        out.push_str("<div class=\"plot\">");
        out.push_str(&line_plot(p)?);
        out.push_str("</div>\n");
    }
    Ok(())
}

/// `v`: {"rows": [BenchRow…]} as `tperf bench --json` prints it.
pub fn bench_section(out: &mut String, v: &Value) -> Result<(), PlotError> {
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        out.push_str("<p class=\"empty\">No benchmark rows.</p>\n");
        return Ok(());
    }
    let ms = |x: f64| format!("{:.2}", x * 1e3);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let sc = &r["scenario"];
            vec![
                s(&r["model"]),
                s(&sc["workload"]),
                u(&sc["batch"]).to_string(),
                u(&sc["seq"]).to_string(),
                s(&sc["opts"]["precision"]),
                ms(f(&r["measured"]["median"])),
                ms(f(&r["measured"]["std"])),
                ms(f(&r["modelled_seconds"])),
                format!(
                    "{:.1}",
                    f(&r["measured"]["median"]) / f(&r["modelled_seconds"])
                ),
                format!("{:.1}", f(&r["achieved_flops_per_s"]) / 1e9),
                units::percent(f(&r["mfu"])),
                format!("{:.0}", f(&r["tokens_per_s"])),
                units::bytes(u(&r["peak_bytes_measured"])),
                units::bytes(u(&r["peak_bytes_modelled"])),
            ]
        })
        .collect();
    table(
        out,
        &[
            "model",
            "phase",
            "B",
            "T",
            "dtype",
            "median ms",
            "std ms",
            "model ms",
            "×model",
            "GFLOP/s",
            "MFU",
            "tokens/s",
            "peak",
            "peak (model)",
        ],
        &cells,
    );
    // Sweeps: rows that differ only in batch (or only in sequence length) form a series.
    for (vary, fixed, x_label) in [
        ("batch", "seq", "batch size"),
        ("seq", "batch", "sequence length"),
    ] {
        let mut groups: BTreeMap<(String, String, u64), Vec<&Value>> = BTreeMap::new();
        for r in &rows {
            let sc = &r["scenario"];
            groups
                .entry((s(&r["model"]), s(&sc["workload"]), u(&sc[fixed])))
                .or_default()
                .push(r);
        }
        for ((model, phase, fixed_value), g) in groups {
            let mut xs: Vec<u64> = g.iter().map(|r| u(&r["scenario"][vary])).collect();
            xs.sort_unstable();
            xs.dedup();
            if xs.len() < 2 {
                continue;
            }
            let series = |name: &str, key: &dyn Fn(&Value) -> f64, dashed| Series {
                name: name.to_string(),
                points: {
                    let mut p: Vec<(f64, f64)> = g
                        .iter()
                        .map(|r| (u(&r["scenario"][vary]) as f64, key(r)))
                        .collect();
                    p.sort_by(|a, b| a.0.total_cmp(&b.0));
                    p
                },
                dashed,
            };
            let (y_label, measured, modelled): (&str, Field, Field) = if vary == "batch" {
                (
                    "tokens/s",
                    Box::new(|r: &Value| f(&r["tokens_per_s"])),
                    Box::new(|r: &Value| {
                        f(&r["tokens_per_s"]) * f(&r["measured"]["median"])
                            / f(&r["modelled_seconds"])
                    }),
                )
            } else {
                (
                    "seconds per step",
                    Box::new(|r: &Value| f(&r["measured"]["median"])),
                    Box::new(|r: &Value| f(&r["modelled_seconds"])),
                )
            };
            plot(
                out,
                &LinePlot {
                    title: format!("{model} {phase}: {x_label} sweep ({fixed} = {fixed_value})"),
                    x_label: x_label.into(),
                    y_label: y_label.into(),
                    log_x: true,
                    log_y: true,
                    series: vec![
                        series("measured", &*measured, false),
                        series("modelled (roofline)", &*modelled, true),
                    ],
                },
            )?;
        }
    }
    Ok(())
}

/// `v`: {"rows": [AttentionRow…], "predicted_only": [AttentionRow…]}.
pub fn attention_section(out: &mut String, v: &Value) -> Result<(), PlotError> {
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let predicted_only = v["predicted_only"].as_array().cloned().unwrap_or_default();
    let ms = |x: f64| format!("{:.2}", x * 1e3);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let a = &r["case"]["shape"];
            let m = &r["measured"];
            let p = &r["predicted"];
            let measured = |k: &str| {
                if m.is_null() {
                    "-".to_string()
                } else {
                    ms(f(&m[k]["median"]))
                }
            };
            vec![
                s(&r["case"]["kernel"]),
                u(&a["b"]).to_string(),
                u(&a["h"]).to_string(),
                u(&a["d"]).to_string(),
                u(&a["tq"]).to_string(),
                measured("forward"),
                ms(f(&p["forward_seconds"])),
                measured("backward"),
                ms(f(&p["backward_seconds"])),
                if m.is_null() {
                    "-".into()
                } else {
                    units::bytes(u(&m["memory_before_backward_bytes"]))
                },
                units::bytes(u(&p["memory_before_backward_bytes"])),
                r["skipped"].as_str().unwrap_or("ran").to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "kernel",
            "B",
            "H",
            "d",
            "T",
            "fwd ms",
            "fwd model",
            "bwd ms",
            "bwd model",
            "mem before bwd",
            "mem (model)",
            "status",
        ],
        &cells,
    );
    // Time against T for each (kernel, d) measured, and memory against T over the predicted grid.
    let mut time: BTreeMap<(String, u64), SeriesPair> = BTreeMap::new();
    for r in &rows {
        let key = (s(&r["case"]["kernel"]), u(&r["case"]["shape"]["d"]));
        let t = u(&r["case"]["shape"]["tq"]) as f64;
        let e = time.entry(key).or_default();
        if !r["measured"].is_null() {
            e.0.push((
                t,
                f(&r["measured"]["forward"]["median"]) + f(&r["measured"]["backward"]["median"]),
            ));
        }
        e.1.push((
            t,
            f(&r["predicted"]["forward_seconds"]) + f(&r["predicted"]["backward_seconds"]),
        ));
    }
    let mut series = Vec::new();
    for ((kernel, d), (measured, modelled)) in &time {
        series.push(Series {
            name: format!("{kernel} d={d}"),
            points: measured.clone(),
            dashed: false,
        });
        series.push(Series {
            name: format!("{kernel} d={d} (model)"),
            points: modelled.clone(),
            dashed: true,
        });
    }
    plot(
        out,
        &LinePlot {
            title: "Attention forward + backward time against sequence length".into(),
            x_label: "sequence length T".into(),
            y_label: "seconds".into(),
            log_x: true,
            log_y: true,
            series,
        },
    )?;
    let mut memory: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let source = if predicted_only.is_empty() {
        &rows
    } else {
        &predicted_only
    };
    let d_shown = source
        .first()
        .map(|r| u(&r["case"]["shape"]["d"]))
        .unwrap_or(0);
    for r in source
        .iter()
        .filter(|r| u(&r["case"]["shape"]["d"]) == d_shown)
    {
        memory.entry(s(&r["case"]["kernel"])).or_default().push((
            u(&r["case"]["shape"]["tq"]) as f64,
            u(&r["predicted"]["memory_before_backward_bytes"]) as f64,
        ));
    }
    plot(
        out,
        &LinePlot {
            title: format!("Memory the forward leaves for the backward (modelled, d = {d_shown})"),
            x_label: "sequence length T".into(),
            y_label: "bytes".into(),
            log_x: true,
            log_y: true,
            series: memory
                .into_iter()
                .map(|(k, p)| Series {
                    name: k,
                    points: p,
                    dashed: false,
                })
                .collect(),
        },
    )?;
    if !predicted_only.is_empty() {
        let oom: Vec<String> = predicted_only
            .iter()
            .filter_map(|r| {
                r["skipped"]
                    .as_str()
                    .filter(|w| w.contains("out of memory"))
                    .map(|w| {
                        format!(
                            "{} d={} T={}: {w}",
                            s(&r["case"]["kernel"]),
                            u(&r["case"]["shape"]["d"]),
                            u(&r["case"]["shape"]["tq"])
                        )
                    })
            })
            .collect();
        if !oom.is_empty() {
            let _ = writeln!(
                out,
                "<p class=\"note\">Predicted not to fit this machine (not run): {}</p>",
                escape(&oom.join("; "))
            );
        }
    }
    Ok(())
}

/// `u`: the "utilisation" record a run stores (`tperf_bench::utilisation::Utilisation` as JSON):
/// its summary and a timeline of utilisation and power where it was collected, and plainly why
/// not where it was not (no NVML, a CPU run) or where the document holds no record at all.
pub fn utilisation_section(out: &mut String, record: Option<&Value>) -> Result<(), PlotError> {
    let Some(rec) = record.filter(|r| !r.is_null()) else {
        out.push_str(
            "<p class=\"empty\">Not collected: this document holds no utilisation record \
             (the benchmarks did not run, or were run by a tperf without NVML sampling).</p>\n",
        );
        return Ok(());
    };
    if rec["collected"].as_bool() != Some(true) {
        let _ = writeln!(
            out,
            "<p class=\"empty\">Not collected: {}.</p>",
            escape(rec["why"].as_str().unwrap_or("no reason recorded"))
        );
        return Ok(());
    }
    let samples = rec["timeline"]["samples"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sm = &rec["summary"];
    let opt = |v: &Value, fmt: &dyn Fn(f64) -> String| v.as_f64().map_or("n/a".into(), fmt);
    let rows = vec![
        vec!["GPU".into(), s(&rec["timeline"]["device"])],
        vec![
            "samples".into(),
            format!(
                "{} every {} ms over {:.1} s",
                u(&sm["samples"]),
                u(&rec["timeline"]["interval_ms"]),
                f(&sm["duration_s"])
            ),
        ],
        vec![
            "GPU utilisation (mean / max)".into(),
            format!(
                "{} / {}",
                opt(&sm["mean_gpu_util_pct"], &|v| format!("{v:.0}%")),
                opt(&sm["max_gpu_util_pct"], &|v| format!("{v:.0}%"))
            ),
        ],
        vec![
            "memory-controller utilisation (mean)".into(),
            opt(&sm["mean_mem_util_pct"], &|v| format!("{v:.0}%")),
        ],
        vec![
            "SM clock (mean)".into(),
            opt(&sm["mean_sm_clock_mhz"], &|v| format!("{v:.0} MHz")),
        ],
        vec![
            "memory used (peak)".into(),
            opt(&sm["peak_mem_used_bytes"], &|v| units::bytes(v as u64)),
        ],
        vec![
            "power (mean)".into(),
            opt(&sm["mean_power_w"], &|v| format!("{v:.0} W")),
        ],
        vec![
            "energy".into(),
            opt(&sm["energy_j"], &|v| format!("{v:.0} J")),
        ],
    ];
    table(out, &["utilisation (NVML)", ""], &rows);
    let series = |name: &str, key: &str| Series {
        name: name.to_string(),
        points: samples
            .iter()
            .filter_map(|x| Some((x["t_s"].as_f64()?, x[key].as_f64()?)))
            .collect(),
        dashed: false,
    };
    plot(
        out,
        &LinePlot {
            title: "GPU and memory-controller utilisation over the run".into(),
            x_label: "time (s)".into(),
            y_label: "% of the sample period".into(),
            log_x: false,
            log_y: false,
            series: vec![
                series("GPU utilisation", "gpu_util_pct"),
                series("memory-controller utilisation", "mem_util_pct"),
            ],
        },
    )?;
    plot(
        out,
        &LinePlot {
            title: "Power over the run".into(),
            x_label: "time (s)".into(),
            y_label: "W".into(),
            log_x: false,
            log_y: false,
            series: vec![series("power", "power_w")],
        },
    )?;
    out.push_str(
        "<p class=\"note\">NVML's GPU utilisation is the share of each sample period in which \
         any kernel ran, not the share of SMs busy: a step of small kernels can read 100%.</p>\n",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bench_row(batch: u64, median: f64) -> Value {
        json!({
            "model": "small", "params": 1,
            "scenario": {"workload": "fwd_bwd", "batch": batch, "seq": 64, "opts": {"precision": "fp32"}},
            "measured": {"median": median, "std": 0.0},
            "modelled_seconds": median / 2.0, "achieved_flops_per_s": 1e9, "mfu": 0.5,
            "tokens_per_s": 64.0 * batch as f64 / median,
            "peak_bytes_measured": 1024, "peak_bytes_modelled": 1024,
        })
    }

    fn attention_row(kernel: &str, t: u64, measured: bool) -> Value {
        json!({
            "case": {"kernel": kernel, "shape": {"b": 8, "h": 1, "d": 64, "tq": t}},
            "predicted": {"forward_seconds": 1e-3, "backward_seconds": 2e-3, "memory_before_backward_bytes": t * t},
            "measured": if measured { json!({"forward": {"median": 2e-3}, "backward": {"median": 4e-3}, "memory_before_backward_bytes": t * t}) } else { Value::Null },
            "skipped": if measured { Value::Null } else { json!("out of memory: predicted peak 30 GiB") },
        })
    }

    #[test]
    fn sweeps_become_plots_and_tables() {
        let mut out = String::new();
        bench_section(
            &mut out,
            &json!({"rows": [bench_row(1, 0.5), bench_row(2, 0.8), bench_row(4, 1.5)]}),
        )
        .unwrap();
        assert_eq!(out.matches("<svg").count(), 1, "one batch sweep");
        assert_eq!(out.matches("<tr>").count(), 4);
        let mut out = String::new();
        let rows = json!([
            attention_row("naive", 256, true),
            attention_row("naive", 1024, true),
            attention_row("flash", 256, true),
            attention_row("flash", 1024, true)
        ]);
        let grid = json!([
            attention_row("naive", 256, false),
            attention_row("naive", 16384, false),
            attention_row("flash", 256, false),
            attention_row("flash", 16384, false)
        ]);
        attention_section(&mut out, &json!({"rows": rows, "predicted_only": grid})).unwrap();
        assert_eq!(out.matches("<svg").count(), 2, "time and memory against T");
        assert!(out.contains("Predicted not to fit"));
        assert!(!out.contains("http"), "nothing on the network");
    }

    #[test]
    fn utilisation_is_drawn_where_collected_and_its_absence_said() {
        let mut out = String::new();
        utilisation_section(&mut out, None).unwrap();
        assert!(out.contains("Not collected"), "{out}");

        let mut out = String::new();
        let not = json!({"collected": false, "why": "a CPU run: NVML samples NVIDIA GPUs"});
        utilisation_section(&mut out, Some(&not)).unwrap();
        assert!(out.contains("Not collected: a CPU run"), "{out}");
        assert!(!out.contains("<svg"));

        let samples: Vec<Value> = (0..5)
            .map(|i| json!({"t_s": i as f64 * 0.1, "gpu_util_pct": 20 * i, "mem_util_pct": 10 * i,
                            "sm_clock_mhz": 1980, "mem_used_bytes": 1u64 << 30, "power_w": 300.0 + i as f64,
                            "temp_c": 40}))
            .collect();
        let yes = json!({
            "collected": true,
            "summary": {"samples": 5, "duration_s": 0.4, "mean_gpu_util_pct": 40.0, "max_gpu_util_pct": 80,
                        "mean_mem_util_pct": 20.0, "mean_sm_clock_mhz": 1980.0, "peak_mem_used_bytes": 1u64 << 30,
                        "mean_power_w": 302.0, "energy_j": 120.8, "max_temp_c": 40},
            "timeline": {"device": "NVIDIA H200", "nvml_index": 0, "interval_ms": 100, "samples": samples},
        });
        let mut out = String::new();
        utilisation_section(&mut out, Some(&yes)).unwrap();
        assert!(out.contains("NVIDIA H200"), "{out}");
        assert!(out.contains("40% / 80%"), "{out}");
        assert!(out.contains("1980 MHz"), "{out}");
        assert_eq!(out.matches("<svg").count(), 2, "{out}");
        assert!(!out.contains("Not collected"));
    }
}
