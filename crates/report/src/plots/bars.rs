//! Predicted time by op kind: horizontal bars, longest first, each labelled with its share and
//! coloured by its op class (the roofline's colours).

use super::style::{category_colour, color, draw_legend, LegendEntry, Swatch, GRID, LEGEND_WIDTH};
use super::{err, inline, PlotError, WIDTH};
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
    // Each kind's class, from its ops: the colour it has on the roofline.
    let class_of = |kind: &str| {
        a.ops
            .iter()
            .find(|o| o.name == kind)
            .map_or("other", |o| o.class.as_str())
            .to_string()
    };
    let mut classes: Vec<String> = Vec::new();
    for (k, _) in &kinds {
        let c = class_of(k);
        if !classes.contains(&c) {
            classes.push(c);
        }
    }
    let colour_of = |class: &str| {
        category_colour(class)
            .unwrap_or_else(|| color(classes.iter().position(|c| c == class).unwrap_or(0)))
    };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let (plot_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot_area)
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
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(&e)?;
        chart
            .draw_series(kinds.iter().enumerate().map(|(i, (kind, s))| {
                let c = colour_of(&class_of(kind));
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
        let legend: Vec<LegendEntry> = classes
            .iter()
            .map(|c| LegendEntry {
                label: format!("{c} ops"),
                colour: colour_of(c),
                swatch: Swatch::Patch,
            })
            .collect();
        draw_legend(&legend_area, &legend, 50).map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(inline(buf))
}
