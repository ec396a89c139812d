//! The roofline of one analysis: log-log arithmetic intensity against achieved FLOP/s, the
//! hardware's roofs (the bandwidth slope meeting each dtype's compute ceiling at its ridge
//! point), and every op as a point. A modelled point is FLOPs / predicted seconds, so it sits on
//! its roof by construction (that is what the roofline model says); a measured point
//! (`measured_seconds`, when a backend filled it) is drawn as a cross below it, and the gap is
//! the kernel's distance from the roof. Without measurements the plot says so: its points then
//! show only where the model places each op, not how far real kernels are from it.

use super::style::{
    axis_ticks, category_colour, color, draw_legend, draw_note, ticked, LegendEntry, Swatch, GRID,
    LEGEND_WIDTH, MEASURED,
};
use super::{err, inline, log_bounds, si_tick, PlotError, HEIGHT, WIDTH};
use crate::results::AnalysisView;
use plotters::prelude::*;
use std::collections::BTreeMap;

pub fn roofline(a: &AnalysisView) -> Result<String, PlotError> {
    let e = err("roofline");
    let hw = &a.hardware;
    let bw = hw.mem_bw_bytes_per_s;
    // One ceiling per distinct peak among the dtypes the ops use (bf16 and fp16 share one on
    // most GPUs); fp32 is always drawn because vector ops are held to it.
    let mut ceilings: Vec<(String, f64)> = vec![("fp32 (vector)".into(), hw.peak_f32_flops)];
    let dtypes: Vec<&str> = a.ops.iter().map(|o| o.dtype.as_str()).collect();
    for (d, name, peak) in [
        ("bf16", "bf16 matrix", hw.peak_bf16_flops),
        ("f16", "fp16 matrix", hw.peak_f16_flops),
    ] {
        if dtypes.contains(&d) {
            match ceilings.iter_mut().find(|(_, p)| *p == peak) {
                Some(c) => c.0.push_str(&format!(" = {name}")),
                None => ceilings.push((name.to_string(), peak)),
            }
        }
    }
    // Ops with no arithmetic (embedding gathers, copies) have intensity 0: not on a log axis.
    let on_plot = |flops: u64, s: f64| flops > 0 && s.is_finite() && s > 0.0;
    let mut by_class: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut measured = Vec::new();
    for o in &a.ops {
        if on_plot(o.flops, o.seconds) && o.intensity > 0.0 {
            by_class
                .entry(o.class.as_str())
                .or_default()
                .push((o.intensity, o.flops as f64 / o.seconds));
        }
        if let Some(m) = o
            .measured_seconds
            .filter(|&m| on_plot(o.flops, m) && o.intensity > 0.0)
        {
            measured.push((o.intensity, o.flops as f64 / m));
        }
    }
    let skipped = a.ops.iter().filter(|o| o.flops == 0).count();
    let xs = by_class.values().flatten().chain(&measured).map(|p| p.0);
    let ys = by_class.values().flatten().chain(&measured).map(|p| p.1);
    let max_peak = ceilings.iter().map(|c| c.1).fold(0.0, f64::max);
    let ridge_max = max_peak / bw;
    let (x0, x1) = log_bounds(
        xs.clone().fold(f64::INFINITY, f64::min).min(1.0) / 2.0,
        xs.fold(0.0, f64::max).max(ridge_max * 4.0) * 2.0,
    );
    let (y0, y1) = log_bounds(
        ys.fold(f64::INFINITY, f64::min).min(bw * x0) / 2.0,
        max_peak * 4.0,
    );
    let x_ticks = axis_ticks(x0, x1, true, &[]);
    let y_ticks = axis_ticks(y0, y1, true, &[]);
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let body = root
            .titled(
                &format!("Roofline: {} on {}", a.model, hw.key),
                ("sans-serif", 20),
            )
            .map_err(&e)?;
        let (plot_area, legend_area) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(
                ticked((x0..x1).log_scale(), x_ticks),
                ticked((y0..y1).log_scale(), y_ticks),
            )
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc("arithmetic intensity (FLOP/byte)")
            .y_desc("achieved FLOP/s")
            .x_label_formatter(&|v| si_tick(*v))
            .y_label_formatter(&|v| si_tick(*v))
            .light_line_style(GRID)
            .bold_line_style(GRID)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(&e)?;
        let decades = (x1 / x0).ln();
        for (name, peak) in &ceilings {
            let ridge = peak / bw;
            // The label starts at the ridge, unless that would run it off the right edge; then
            // it ends near the ridge instead (about 55% of the axis width before it).
            let f = (ridge / x0).ln() / decades;
            let label_x = if f > 0.4 {
                x0 * ((f - 0.55).max(0.02) * decades).exp()
            } else {
                ridge * 1.1
            };
            let roof = vec![(x0, (bw * x0).min(*peak)), (ridge, *peak), (x1, *peak)];
            chart
                .draw_series(LineSeries::new(roof, BLACK.stroke_width(2)))
                .map_err(&e)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{name}: {}FLOP/s, ridge {ridge:.0} FLOP/B", si_tick(*peak)),
                    (label_x, peak * 1.9),
                    ("sans-serif", 13),
                )))
                .map_err(&e)?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{}B/s", si_tick(bw)),
                (x0 * 1.5, bw * x0 * 1.5 * 5.0),
                ("sans-serif", 13),
            )))
            .map_err(&e)?;
        let mut legend = Vec::new();
        let measured_any = !measured.is_empty();
        for (i, (class, pts)) in by_class.iter().enumerate() {
            let c = category_colour(class).unwrap_or_else(|| color(i));
            // Beside measurements the model's points step back (lighter), the crosses lead.
            let fill = if measured_any {
                c.mix(0.45)
            } else {
                c.mix(0.8)
            };
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, fill.filled())))
                .map_err(&e)?;
            legend.push(LegendEntry {
                label: format!("{class} ops, modelled ({})", pts.len()),
                colour: c,
                swatch: Swatch::Dot,
            });
        }
        if measured_any {
            chart
                .draw_series(
                    measured
                        .iter()
                        .map(|&p| Cross::new(p, 5, MEASURED.stroke_width(2))),
                )
                .map_err(&e)?;
            legend.push(LegendEntry {
                label: format!("measured ({})", measured.len()),
                colour: MEASURED,
                swatch: Swatch::Cross,
            });
        }
        let mut y = draw_legend(&legend_area, &legend, 24).map_err(&e)? + 10;
        if !measured_any {
            let why = "No measurements on this device: every point is the model's prediction, \
                       on its roof by construction. Measured kernels sit below it.";
            y = draw_note(&legend_area, why, y, MEASURED).map_err(&e)?;
        }
        if skipped > 0 {
            let why = if skipped == 1 {
                "1 op without arithmetic (a gather or copy) is not on a log axis.".to_string()
            } else {
                format!("{skipped} ops without arithmetic (gathers, copies) are not on a log axis.")
            };
            draw_note(&legend_area, &why, y, BLACK).map_err(&e)?;
        }
        root.present().map_err(&e)?;
    }
    Ok(inline(buf))
}
