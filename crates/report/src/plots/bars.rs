//! Predicted time by op kind: horizontal bars, longest first, each labelled with its share.

use super::{color, err, inline, PlotError, WIDTH};
use crate::results::AnalysisView;
use plotters::prelude::*;

pub fn time_by_kind(a: &AnalysisView) -> Result<String, PlotError> {
    let e = err("time by op kind");
    let mut kinds: Vec<(&str, f64)> = a
        .by_op
        .iter()
        .map(|(k, t)| (k.as_str(), t.seconds))
        .filter(|(_, s)| s.is_finite() && *s > 0.0)
        .collect();
    kinds.sort_by(|x, y| y.1.total_cmp(&x.1));
    let total: f64 = kinds.iter().map(|k| k.1).sum();
    let n = kinds.len().max(1);
    // Height grows with the number of kinds so that bars keep a readable thickness.
    let height = (120 + 28 * n) as u32;
    let max_ms = kinds.first().map_or(1.0, |k| k.1 * 1e3) * 1.25;
    // A segmented 0..n−1 axis has the n segments 0..=n−1 and counts upward; row n−1−i holds kind i so the longest is on top.
    let row = |i: usize| n - 1 - i;
    let names: Vec<String> = kinds.iter().rev().map(|k| k.0.to_string()).collect();
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Predicted time by op kind: {} on {}",
                    a.model, a.hardware.key
                ),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..max_ms, (0..n - 1).into_segmented())
            .map_err(&e)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    names.get(*i).cloned().unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .x_desc("predicted milliseconds per step")
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(&e)?;
        chart
            .draw_series(kinds.iter().enumerate().map(|(i, (_, s))| {
                let c = color(if i == 0 { 0 } else { 4 });
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(row(i))),
                        (s * 1e3, SegmentValue::Exact(row(i) + 1)),
                    ],
                    c.filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            }))
            .map_err(&e)?;
        chart
            .draw_series(kinds.iter().enumerate().map(|(i, (_, s))| {
                Text::new(
                    format!(
                        "{:.3} ms · {:.1}%",
                        s * 1e3,
                        100.0 * s / total.max(f64::MIN_POSITIVE)
                    ),
                    (s * 1e3 + max_ms * 0.01, SegmentValue::CenterOf(row(i))),
                    ("sans-serif", 13),
                )
            }))
            .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(inline(buf))
}
