//! The data-parallel scaling section: what `tperf bench MODEL --ranks|--gpus 1,2,4 --scaling
//! weak|strong [--zero1] --json` writes (the rows of `tperf`'s `scaling::ScalingRow`, read here
//! as a view of the fields drawn). A table of every N, measured beside modelled, and plots of
//! the step time, the efficiency and the communication against N, each measured series solid
//! beside its modelled twin dashed.

use crate::bench_sections::plot;
use crate::markup::{escape, table};
use crate::plots::{LinePlot, PlotError, Series};
use crate::units;
use serde::Deserialize;
use std::fmt::Write as _;

#[derive(Clone, Debug, Deserialize)]
pub struct ScalingRowView {
    /// N: ranks (CPU processes or GPUs).
    pub world: usize,
    pub batch_per_rank: usize,
    pub global_batch: usize,
    pub measured_step_seconds: f64,
    pub modelled_step_seconds: f64,
    pub measured_tokens_per_s: f64,
    pub modelled_tokens_per_s: f64,
    pub speedup: f64,
    pub modelled_speedup: f64,
    pub efficiency: f64,
    pub modelled_efficiency: f64,
    pub modelled_comm_seconds: f64,
    pub modelled_exposed_comm_seconds: f64,
    /// CPU ranks only: rank 0's time inside collectives per step.
    #[serde(default)]
    pub measured_comm_seconds: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ScalingView {
    /// "weak" or "strong".
    pub scaling: String,
    /// "ddp" or "zero1"; files written before `--zero1` existed ran DDP.
    #[serde(default = "ddp")]
    pub mode: String,
    /// "cpu" (--ranks) or "gpu" (--gpus).
    pub ranks: String,
    pub model: String,
    #[serde(default)]
    pub warmup: usize,
    #[serde(default)]
    pub steps: usize,
    pub rows: Vec<ScalingRowView>,
    #[serde(default)]
    pub notes: Vec<String>,
}

fn ddp() -> String {
    "ddp".into()
}

impl ScalingView {
    /// "weak scaling of gpt2-124m, ZeRO-1 over --gpus 1,2,4".
    pub fn title(&self) -> String {
        let worlds: Vec<String> = self.rows.iter().map(|r| r.world.to_string()).collect();
        format!(
            "{} scaling of {}, {} over {} {}",
            self.scaling,
            self.model,
            if self.mode == "zero1" {
                "ZeRO-1"
            } else {
                "DDP"
            },
            if self.ranks == "gpu" {
                "--gpus"
            } else {
                "--ranks"
            },
            worlds.join(",")
        )
    }
}

/// One scaling run's section (its `--json` document), or a line saying why it cannot be read.
pub fn scaling_section(out: &mut String, v: &serde_json::Value) -> Result<(), PlotError> {
    let view = match ScalingView::deserialize(v) {
        Ok(view) => view,
        Err(e) => {
            let _ = writeln!(
                out,
                "<p class=\"empty\">The scaling record cannot be read (is it the --json of `tperf bench --scaling`?): {}</p>",
                escape(&e.to_string())
            );
            return Ok(());
        }
    };
    let _ = writeln!(out, "<h2>{}</h2>", escape(&view.title()));
    let _ = writeln!(
        out,
        "<p>{} warm-up + {} timed steps per N (median of rank 0's step times). Modelled: the roofline analysis of the same data-parallel schedule, its collectives on the communication stream.</p>",
        view.warmup, view.steps
    );
    rows_table(out, &view);
    plots(out, &view)?;
    for n in &view.notes {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(n));
    }
    Ok(())
}

fn rows_table(out: &mut String, v: &ScalingView) {
    if v.rows.is_empty() {
        out.push_str("<p class=\"empty\">No rows.</p>\n");
        return;
    }
    let ms = |s: f64| format!("{:.2}", s * 1e3);
    let rows: Vec<Vec<String>> = v
        .rows
        .iter()
        .map(|r| {
            vec![
                r.world.to_string(),
                r.batch_per_rank.to_string(),
                r.global_batch.to_string(),
                ms(r.measured_step_seconds),
                ms(r.modelled_step_seconds),
                format!("{:.0}", r.measured_tokens_per_s),
                format!("{:.0}", r.modelled_tokens_per_s),
                format!("{:.2}", r.speedup),
                format!("{:.2}", r.modelled_speedup),
                units::percent(r.efficiency),
                units::percent(r.modelled_efficiency),
                ms(r.modelled_comm_seconds),
                ms(r.modelled_exposed_comm_seconds),
                r.measured_comm_seconds.map_or("—".into(), ms),
            ]
        })
        .collect();
    table(
        out,
        &[
            "N",
            "B/rank",
            "global B",
            "step ms",
            "model ms",
            "tokens/s",
            "model tokens/s",
            "speedup",
            "model speedup",
            "efficiency",
            "model eff.",
            "model comm ms",
            "model exposed ms",
            "comm ms",
        ],
        &rows,
    );
}

fn plots(out: &mut String, v: &ScalingView) -> Result<(), PlotError> {
    let points = |f: &dyn Fn(&ScalingRowView) -> Option<f64>| -> Vec<(f64, f64)> {
        v.rows
            .iter()
            .filter_map(|r| Some((r.world as f64, f(r)?)))
            .collect()
    };
    let series = |name: &str, dashed, pts| Series {
        name: name.into(),
        points: pts,
        dashed,
    };
    let at_n = |title: &str, y_label: &str, series: Vec<Series>| LinePlot {
        title: title.into(),
        x_label: "N (ranks)".into(),
        y_label: y_label.into(),
        log_x: false,
        log_y: false,
        series,
    };
    let ideal_step = v.rows.first().map(|r1| {
        // Weak scaling keeps the step time of N = 1; strong divides it by N.
        v.rows
            .iter()
            .map(|r| {
                let t1 = r1.measured_step_seconds * 1e3;
                let t = if v.scaling == "strong" {
                    t1 / r.world as f64
                } else {
                    t1
                };
                (r.world as f64, t)
            })
            .collect::<Vec<_>>()
    });
    let mut step = vec![
        series(
            "measured",
            false,
            points(&|r| Some(r.measured_step_seconds * 1e3)),
        ),
        series(
            "modelled",
            true,
            points(&|r| Some(r.modelled_step_seconds * 1e3)),
        ),
    ];
    if let Some(ideal) = ideal_step {
        step.push(series("ideal (from measured N = 1)", true, ideal));
    }
    plot(
        out,
        &at_n(
            &format!("Step time against N ({} scaling)", v.scaling),
            "ms per step",
            step,
        ),
    )?;
    plot(
        out,
        &at_n(
            "Scaling efficiency against N",
            "efficiency (%)",
            vec![
                series("measured", false, points(&|r| Some(r.efficiency * 100.0))),
                series(
                    "modelled",
                    true,
                    points(&|r| Some(r.modelled_efficiency * 100.0)),
                ),
            ],
        ),
    )?;
    let mut comm = vec![
        series(
            "modelled exposed",
            true,
            points(&|r| Some(r.modelled_exposed_comm_seconds * 1e3)),
        ),
        series(
            "modelled comm stream",
            true,
            points(&|r| Some(r.modelled_comm_seconds * 1e3)),
        ),
    ];
    let measured_comm = points(&|r| r.measured_comm_seconds.map(|s| s * 1e3));
    if !measured_comm.is_empty() {
        comm.insert(0, series("measured (in collectives)", false, measured_comm));
    }
    plot(
        out,
        &at_n("Communication per step against N", "ms per step", comm),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The document `tperf bench --ranks 1,2,4 --scaling weak --zero1 --json` writes, cut to
    /// the fields the section reads (plus one it does not, as a real file has).
    pub(crate) fn fixture() -> serde_json::Value {
        let row = |world: usize, step: f64, model: f64, eff: f64, comm: f64| {
            serde_json::json!({
                "world": world, "batch_per_rank": 4, "global_batch": 4 * world, "seq": 256,
                "measured": {"n": 3},
                "measured_step_seconds": step, "modelled_step_seconds": model,
                "measured_tokens_per_s": 1024.0 * world as f64 / step,
                "modelled_tokens_per_s": 1024.0 * world as f64 / model,
                "speedup": eff * world as f64, "modelled_speedup": 0.98 * world as f64,
                "efficiency": eff, "modelled_efficiency": 0.98,
                "modelled_comm_seconds": comm, "modelled_exposed_comm_seconds": comm / 4.0,
                "measured_comm_seconds": comm * 2.0,
            })
        };
        serde_json::json!({
            "provenance": {"tperf_version": "0.1.0"},
            "scaling": "weak", "mode": "zero1", "ranks": "cpu", "model": "tiny-scaling",
            "warmup": 1, "steps": 3,
            "rows": [
                row(1, 0.0125, 0.0100, 1.0, 0.0),
                row(2, 0.0137, 0.0102, 0.9124, 0.0016),
                row(4, 0.0161, 0.0105, 0.7764, 0.0024),
            ],
            "notes": ["weak scaling: --batch per rank"],
        })
    }

    #[test]
    fn the_section_tables_every_n_and_plots_measured_beside_modelled() {
        let mut out = String::new();
        scaling_section(&mut out, &fixture()).unwrap();
        assert!(
            out.contains("<h2>weak scaling of tiny-scaling, ZeRO-1 over --ranks 1,2,4</h2>"),
            "{out}"
        );
        // The table's numbers: step times in ms, efficiencies, the exposed communication.
        for cell in [
            "<td class=\"n\">12.50</td>",
            "<td class=\"n\">13.70</td>",
            "<td class=\"n\">10.50</td>",
            "<td class=\"n\">91.2%</td>",
            "<td class=\"n\">77.6%</td>",
            "<td class=\"n\">0.60</td>",
            "<td class=\"n\">4.80</td>",
        ] {
            assert!(out.contains(cell), "no {cell} in {out}");
        }
        assert_eq!(
            out.matches("<svg").count(),
            3,
            "step time, efficiency, comm"
        );
        for title in [
            "Step time against N (weak scaling)",
            "Scaling efficiency against N",
            "Communication per step against N",
        ] {
            assert!(out.contains(title), "no plot titled {title}");
        }
        assert!(out.contains("measured") && out.contains("modelled"));
        assert!(out.contains("weak scaling: --batch per rank"), "the notes");
    }

    #[test]
    fn a_gpu_ddp_run_without_measured_comm_and_a_foreign_file_render() {
        let mut doc = fixture();
        doc["mode"] = "ddp".into();
        doc["ranks"] = "gpu".into();
        for r in doc["rows"].as_array_mut().unwrap() {
            r["measured_comm_seconds"] = serde_json::Value::Null;
        }
        let mut out = String::new();
        scaling_section(&mut out, &doc).unwrap();
        assert!(out.contains("DDP over --gpus 1,2,4"), "{out}");
        assert!(
            out.contains("<td>—</td>"),
            "no measured comm on GPUs: {out}"
        );
        assert!(!out.contains("measured (in collectives)"));

        let mut out = String::new();
        scaling_section(&mut out, &serde_json::json!({"rows": 3})).unwrap();
        assert!(out.contains("cannot be read"), "{out}");
    }
}
