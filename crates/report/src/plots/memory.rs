//! The memory timeline of one step: bytes in use by category, stacked, over the op index, with
//! the peak marked. Each category keeps its colour in every timeline ([`category_colour`]);
//! the y axis starts just under the step's lowest total when what stays all step (weights,
//! optimizer state) is most of the peak, so that the activations' rise is not a sliver on top.

use super::style::{
    axis_ticks, category_colour, color, draw_legend, ticked, LegendEntry, Swatch, GRID,
    LEGEND_WIDTH,
};
use super::{err, fixed_tick, inline, PlotError, HEIGHT, WIDTH};
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
    let y0 = axis_floor(tl.iter().map(|p| p.total_bytes as f64 / GIB), peak);
    // Headroom above the peak for its label, in proportion to what the axis shows.
    let y1 = if peak > y0 {
        peak + 0.12 * (peak - y0)
    } else {
        1.0
    };
    let x_ticks = axis_ticks(0.0, x1, false, &[]);
    let y_ticks = axis_ticks(y0, y1, false, &[]);
    let y_step = match y_ticks.as_slice() {
        [a, b, ..] => b - a,
        _ => 0.01,
    };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let body = root
            .titled(
                &format!("Memory over one step: {} ({})", a.model, a.scenario_line()),
                ("sans-serif", 20),
            )
            .map_err(&e)?;
        let (plot_area, legend_area) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(ticked(0.0..x1, x_ticks), ticked(y0..y1, y_ticks))
            .map_err(&e)?;
        let y_desc = if y0 > 0.0 {
            format!("GiB in use (axis from {y0:.2} GiB)")
        } else {
            "GiB in use".to_string()
        };
        chart
            .configure_mesh()
            .x_desc("op index in the schedule")
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| fixed_tick(*v, y_step))
            .light_line_style(GRID)
            .bold_line_style(GRID)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(&e)?;
        let colours: Vec<RGBColor> = cats
            .iter()
            .enumerate()
            .map(|(k, c)| category_colour(c).unwrap_or_else(|| color(k)))
            .collect();
        // Top layer first, so each lower (smaller) cumulative area is painted over it.
        for (k, layer) in stack.iter().enumerate().rev() {
            let c = colours[k];
            // What lies under the axis's start is not drawn below the plot.
            let clamped: Vec<(f64, f64)> = layer.iter().map(|&(x, y)| (x, y.max(y0))).collect();
            chart
                .draw_series(AreaSeries::new(clamped, y0, c.mix(0.85)).border_style(c))
                .map_err(&e)?;
        }
        let px = a.memory.peak_at_op as f64;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(px, y0), (px, y1)],
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
                format!(
                    "peak {} GiB before op {}",
                    fixed_tick(peak, y_step / 10.0),
                    a.memory.peak_at_op
                ),
                (label_x, y1 - (y1 - y0) * 0.03),
                ("sans-serif", 14).into_font().color(&RED),
            )))
            .map_err(&e)?;
        // The legend beside the plot, top to bottom as the layers stack (top layer first).
        let legend: Vec<LegendEntry> = cats
            .iter()
            .zip(&colours)
            .rev()
            .map(|(c, &colour)| LegendEntry {
                label: c.replace('_', " "),
                colour,
                swatch: Swatch::Patch,
            })
            .collect();
        draw_legend(&legend_area, &legend, 24).map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(inline(buf))
}

/// Where the y axis starts: 0 unless the step never drops below 40% of its peak (weights and
/// optimizer state dominate), then a round value just under the lowest total.
fn axis_floor(totals: impl Iterator<Item = f64>, peak: f64) -> f64 {
    let low = totals.fold(f64::INFINITY, f64::min);
    if !(low.is_finite() && peak > 0.0) || low < 0.4 * peak {
        return 0.0;
    }
    let below = low - 0.08 * (peak - low).max(0.05 * peak);
    let step = 10f64.powf((peak - below).log10().floor() - 1.0);
    ((below / step).floor() * step).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::axis_floor;

    #[test]
    fn the_axis_starts_under_the_lowest_total_only_when_it_is_high() {
        // Weights 10 GiB, activations rise to 12: the axis starts a little under 10.
        let y0 = axis_floor([10.0, 11.0, 12.0, 10.0].into_iter(), 12.0);
        assert!(y0 > 9.0 && y0 < 10.0, "{y0}");
        // A step that starts near zero keeps the zero.
        assert_eq!(axis_floor([0.5, 6.0, 12.0].into_iter(), 12.0), 0.0);
    }
}
