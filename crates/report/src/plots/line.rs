//! The generic line plot every sweep uses (batch, sequence length, attention time and memory
//! against T, modelled beside measured): named x/y series, a legend beside the plot, log axes
//! where asked, a measured series and its modelled twin in one hue (solid and dashed).

use super::style::{
    axis_ticks, draw_legend, series_colours, ticked, LegendEntry, SeriesKey, Swatch, GRID,
    LEGEND_WIDTH,
};
use super::{err, inline, log_bounds, si_tick, PlotError, HEIGHT, WIDTH};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed: by convention the modelled series, beside a solid measured one.
    pub dashed: bool,
}

#[derive(Clone, Debug, Default)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

pub fn line_plot(p: &LinePlot) -> Result<String, PlotError> {
    // Points a log axis cannot show (x or y ≤ 0) are left out rather than failing the plot.
    let ok = |&(x, y): &(f64, f64)| {
        x.is_finite() && y.is_finite() && (!p.log_x || x > 0.0) && (!p.log_y || y > 0.0)
    };
    let all: Vec<(f64, f64)> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied().filter(ok))
        .collect();
    let range = |vals: Vec<f64>, log: bool| {
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if log {
            let (lo, hi) = log_bounds(lo, hi);
            (lo / 1.3, hi * 1.3)
        } else if lo.is_finite() && hi > lo {
            let pad = (hi - lo) * 0.05;
            (lo - pad, hi + pad)
        } else if lo.is_finite() {
            (lo - 1.0, lo + 1.0)
        } else {
            (0.0, 1.0)
        }
    };
    let xs: Vec<f64> = all.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = all.iter().map(|p| p.1).collect();
    let (x0, x1) = range(xs.clone(), p.log_x);
    let (y0, y1) = range(ys, p.log_y);
    // x ticks at the sweep's own values where they are few (32, 64, 256…); y ticks on a 1-2-5
    // grid, so that a range within one decade still has labels.
    let x_ticks = axis_ticks(x0, x1, p.log_x, &xs);
    let y_ticks = axis_ticks(y0, y1, p.log_y, &[]);
    match (p.log_x, p.log_y) {
        (false, false) => draw(p, ticked(x0..x1, x_ticks), ticked(y0..y1, y_ticks), ok),
        (true, false) => draw(
            p,
            ticked((x0..x1).log_scale(), x_ticks),
            ticked(y0..y1, y_ticks),
            ok,
        ),
        (false, true) => draw(
            p,
            ticked(x0..x1, x_ticks),
            ticked((y0..y1).log_scale(), y_ticks),
            ok,
        ),
        (true, true) => draw(
            p,
            ticked((x0..x1).log_scale(), x_ticks),
            ticked((y0..y1).log_scale(), y_ticks),
            ok,
        ),
    }
}

fn draw<X, Y>(
    p: &LinePlot,
    x: X,
    y: Y,
    ok: impl Fn(&(f64, f64)) -> bool,
) -> Result<String, PlotError>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let e = err("line");
    let keys: Vec<SeriesKey<'_>> = p
        .series
        .iter()
        .map(|s| SeriesKey {
            name: &s.name,
            dashed: s.dashed,
        })
        .collect();
    let colours = series_colours(&keys);
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let body = root.titled(&p.title, ("sans-serif", 20)).map_err(&e)?;
        // The legend has a column of its own, right of the plotting area: it covers no data.
        let (plot_area, legend_area) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot_area)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(x, y)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc(&p.x_label)
            .y_desc(&p.y_label)
            .x_label_formatter(&|v| si_tick(*v))
            .y_label_formatter(&|v| si_tick(*v))
            .light_line_style(GRID)
            .bold_line_style(GRID)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(&e)?;
        let mut legend = Vec::new();
        for (s, &c) in p.series.iter().zip(&colours) {
            let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(&ok).collect();
            let style = c.stroke_width(2);
            if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                    .map_err(&e)?;
                // Modelled points hollow, measured filled: the pair reads apart in grey too.
                chart
                    .draw_series(pts.iter().map(|&pt| Circle::new(pt, 3, c.stroke_width(1))))
                    .map_err(&e)?;
            } else {
                chart
                    .draw_series(LineSeries::new(pts.clone(), style))
                    .map_err(&e)?;
                chart
                    .draw_series(pts.iter().map(|&pt| Circle::new(pt, 3, c.filled())))
                    .map_err(&e)?;
            }
            legend.push(LegendEntry {
                label: s.name.clone(),
                colour: c,
                swatch: Swatch::Line { dashed: s.dashed },
            });
        }
        draw_legend(&legend_area, &legend, 24).map_err(&e)?;
        root.present().map_err(&e)?;
    }
    Ok(inline(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_on_any_axes() {
        for (log_x, log_y) in [(false, false), (true, true), (true, false), (false, true)] {
            let p = LinePlot {
                title: "t".into(),
                x_label: "T".into(),
                y_label: "s".into(),
                log_x,
                log_y,
                series: vec![
                    Series {
                        name: "modelled".into(),
                        points: vec![(128.0, 1e-3), (256.0, 4e-3), (0.0, 1.0)],
                        dashed: true,
                    },
                    Series {
                        name: "measured".into(),
                        points: vec![(128.0, 2e-3), (256.0, 7e-3)],
                        dashed: false,
                    },
                ],
            };
            let svg = line_plot(&p).expect("draws");
            assert!(svg.contains("modelled") && svg.contains("measured"));
            assert!(svg.contains("<circle"));
        }
        // Nothing to draw is not an error.
        assert!(line_plot(&LinePlot::default()).is_ok());
    }
}
