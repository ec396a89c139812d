//! The memory timeline of one step: bytes in use by category, stacked, over the op index, with
//! the peak marked.

use super::{color, err, inline, PlotError, HEIGHT, WIDTH};
use crate::results::AnalysisView;
use plotters::prelude::*;

/// Stacking order, bottom to top: what lives all step first, what comes and goes on top.
const ORDER: [&str; 8] = [
    "weights",
    "gradients",
    "optimizer_state",
    "kv_cache",
    "io",
    "activations",
    "activation_gradients",
    "workspace",
];

const GIB: f64 = (1u64 << 30) as f64;

pub fn memory_timeline(a: &AnalysisView) -> Result<String, PlotError> {
    let e = err("memory timeline");
    let tl = &a.memory.timeline;
    let cats: Vec<&str> = ORDER
        .iter()
        .copied()
        .filter(|c| {
            tl.iter()
                .any(|p| p.by_category.get(*c).copied().unwrap_or(0) > 0)
        })
        .collect();
    // Cumulative tops: stack[k][i] = sum of categories 0..=k at point i, in GiB.
    let mut stack: Vec<Vec<(f64, f64)>> = Vec::with_capacity(cats.len());
    let mut below = vec![0.0; tl.len()];
    for c in &cats {
        let layer = tl
            .iter()
            .zip(below.iter_mut())
            .map(|(p, b)| {
                *b += p.by_category.get(*c).copied().unwrap_or(0) as f64 / GIB;
                (p.op as f64, *b)
            })
            .collect();
        stack.push(layer);
    }
    let x1 = tl.last().map_or(1.0, |p| p.op.max(1) as f64);
    let peak = a.memory.peak_bytes as f64 / GIB;
    let y1 = if peak > 0.0 { peak * 1.15 } else { 1.0 };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Memory over one step: {} ({})", a.model, a.scenario_line()),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x1, 0.0..y1)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc("op index in the schedule")
            .y_desc("GiB in use")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(&e)?;
        // Top layer first, so each lower (smaller) cumulative area is painted over it.
        for (k, layer) in stack.iter().enumerate().rev() {
            let c = color(k);
            chart
                .draw_series(AreaSeries::new(layer.clone(), 0.0, c.mix(0.85)).border_style(c))
                .map_err(&e)?
                .label(cats[k])
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
        }
        let px = a.memory.peak_at_op as f64;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(px, 0.0), (px, y1)],
                6,
                4,
                RED.stroke_width(2),
            ))
            .map_err(&e)?;
        chart
            .draw_series([Circle::new((px, peak), 5, RED.filled())])
            .map_err(&e)?;
        let label_x = if px > x1 * 0.6 {
            px - x1 * 0.3
        } else {
            px + x1 * 0.01
        };
        chart
            .draw_series(std::iter::once(Text::new(
                format!("peak {:.3} GiB before op {}", peak, a.memory.peak_at_op),
                (label_x, y1 * 0.97),
                ("sans-serif", 14).into_font().color(&RED),
            )))
            .map_err(&e)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            // Keep the legend off the peak marker.
            .position(if px > x1 * 0.6 {
                SeriesLabelPosition::MiddleLeft
            } else {
                SeriesLabelPosition::UpperRight
            })
            .draw()
            .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(inline(buf))
}
