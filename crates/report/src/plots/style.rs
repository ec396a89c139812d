//! What every chart shares, in one place so that charts agree: the palette and the colour each
//! category keeps across charts, the pairing of a measured series with its modelled twin, tick
//! positions for linear and log axes, and a legend drawn beside the plotting area (never over
//! the data).
//!
//! New charts should take their colours from [`category_colour`] (a named category: a memory
//! category, an op class, an attention kernel) or [`series_colours`] (line series), their axes
//! from [`axis_ticks`], and their legend from [`draw_legend`].

use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::RGBColor;
use std::ops::Range;

/// Colour-blind-safe (Okabe–Ito), in an order where neighbours contrast.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

/// Measured points where a chart marks them apart from the model (the roofline's crosses).
pub const MEASURED: RGBColor = RGBColor(200, 0, 0);

/// Light grid lines.
pub const GRID: RGBColor = RGBColor(235, 235, 235);

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// The fixed colour of a named category, the same in every chart it appears in: memory
/// categories (timeline), op classes (roofline, time by kind) and attention kernels. The sets
/// are drawn in different charts, so a colour may serve one name in each set.
pub fn category_colour(name: &str) -> Option<RGBColor> {
    let i = match name {
        // Memory categories: what lives all step in blues and greens, what comes and goes warm.
        "weights" => 0,
        "gradients" => 4,
        "optimizer_state" => 2,
        "kv_cache" => 3,
        "io" => 6,
        "activations" => 1,
        "activation_gradients" => 5,
        "workspace" => 7,
        // Op classes (tperf_core's OpClass names).
        "matmul" => 0,
        "elementwise" => 1,
        "optimizer" => 2,
        "communication" => 3,
        // Attention kernels.
        "naive" => 5,
        "flash" => 0,
        _ => return None,
    };
    Some(PALETTE[i])
}

/// A line series as the colouring sees it.
pub struct SeriesKey<'a> {
    pub name: &'a str,
    pub dashed: bool,
}

/// Colours for a plot's series. A dashed series right after a solid one is its modelled twin
/// and takes its colour (solid = measured, dashed = modelled: the pair reads as one hue). Other
/// series take their category's colour when their first word names one (not yet used in this
/// plot), else the next palette colour not yet used.
pub fn series_colours(series: &[SeriesKey<'_>]) -> Vec<RGBColor> {
    let mut out: Vec<RGBColor> = Vec::with_capacity(series.len());
    let mut next = 0;
    for (i, s) in series.iter().enumerate() {
        if s.dashed && i > 0 && !series[i - 1].dashed {
            out.push(out[i - 1]);
            continue;
        }
        let first = s.name.split([' ', '(']).next().unwrap_or("");
        let c = match category_colour(first).filter(|c| !out.contains(c)) {
            Some(c) => c,
            None => {
                while next < PALETTE.len() && out.contains(&PALETTE[next]) {
                    next += 1;
                }
                let c = color(next);
                next += 1;
                c
            }
        };
        out.push(c);
    }
    out
}

/// Tick positions for an axis over [lo, hi]. Linear: 1-2-5 steps, five to ten ticks. Log: every
/// power of ten, with 2 and 5 between (or 1…9 when the range is under two decades); when `data`
/// holds at most 12 distinct positive values (a sweep's batch sizes or sequence lengths, often
/// powers of two), those values, so that 32, 64 and 256 are labelled where the points are.
pub fn axis_ticks(lo: f64, hi: f64, log: bool, data: &[f64]) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite() && hi > lo) {
        return vec![];
    }
    if log {
        let mut values: Vec<f64> = data
            .iter()
            .copied()
            .filter(|v| v.is_finite() && *v > 0.0 && *v >= lo && *v <= hi)
            .collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        if (2..=12).contains(&values.len()) {
            return values;
        }
        // The densest mantissa set that keeps the labels apart (at most ten ticks).
        let sets: [&[f64]; 4] = [
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
            &[1.0, 2.0, 5.0],
            &[1.0, 3.0],
            &[1.0],
        ];
        let in_range = |mantissas: &[f64]| {
            let mut ticks = Vec::new();
            let mut p = 10f64.powf(lo.log10().floor());
            while p <= hi {
                for m in mantissas {
                    let v = m * p;
                    if v >= lo && v <= hi {
                        ticks.push(v);
                    }
                }
                p *= 10.0;
            }
            ticks
        };
        let mut ticks = sets
            .iter()
            .map(|m| in_range(m))
            .find(|t| t.len() <= 10)
            .unwrap_or_else(|| in_range(&[1.0]).into_iter().step_by(2).collect());
        if ticks.len() < 2 {
            // Within one narrow stretch of a decade: the ends, and a point between.
            ticks = vec![lo, (lo * hi).sqrt(), hi];
        }
        ticks
    } else {
        let span = hi - lo;
        let raw = span / 6.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| span / s <= 8.0)
            .unwrap_or(10.0 * mag);
        let mut ticks = Vec::new();
        let mut v = (lo / step).ceil() * step;
        while v <= hi + step * 1e-9 {
            // Snap values like 0.30000000000000004.
            ticks.push((v / step).round() * step);
            v += step;
        }
        ticks
    }
}

/// An axis (linear or log) whose ticks and grid lines are exactly `ticks` (from
/// [`axis_ticks`]): plotters' own choice drops the labels a sweep needs (none at all on a log
/// axis within one decade).
pub struct Ticked<R> {
    inner: R,
    ticks: Vec<f64>,
}

pub fn ticked<A: AsRangedCoord<Value = f64>>(axis: A, ticks: Vec<f64>) -> Ticked<A::CoordDescType> {
    Ticked {
        inner: axis.into(),
        ticks,
    }
}

impl<R: Ranged<ValueType = f64>> Ranged for Ticked<R> {
    // Labels are formatted by the chart's label formatter (si_tick); the default is a fallback.
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // The ticks are the bold points; no light grid between them.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn axis_pixel_range(&self, limit: (i32, i32)) -> Range<i32> {
        self.inner.axis_pixel_range(limit)
    }
}

/// What a legend entry shows beside its label.
#[derive(Clone, Copy, Debug)]
pub enum Swatch {
    Line { dashed: bool },
    Patch,
    Dot,
    Cross,
}

pub struct LegendEntry {
    pub label: String,
    pub colour: RGBColor,
    pub swatch: Swatch,
}

/// Width of the column to the right of the plotting area that holds the legend.
pub const LEGEND_WIDTH: u32 = 230;

/// ~7 px per character at 13 px: how many fit on one line of the legend column.
const LEGEND_CHARS: usize = (LEGEND_WIDTH as usize - 50) / 7;

/// Draws a legend into `area` (the column split off beside the plot), entries top to bottom
/// from `top`, labels wrapped to the column's width; returns the y below the last entry.
pub fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[LegendEntry],
    top: i32,
) -> Result<i32, DrawingAreaErrorKind<DB::ErrorType>> {
    let font = ("sans-serif", 13).into_font();
    let mut y = top;
    for e in entries {
        let c = e.colour;
        let mid = y + 7;
        match e.swatch {
            Swatch::Line { dashed: false } => {
                area.draw(&PathElement::new(
                    vec![(8, mid), (36, mid)],
                    c.stroke_width(2),
                ))?;
            }
            Swatch::Line { dashed: true } => {
                for x in [8, 20, 32] {
                    area.draw(&PathElement::new(
                        vec![(x, mid), (x + 6, mid)],
                        c.stroke_width(2),
                    ))?;
                }
            }
            Swatch::Patch => {
                area.draw(&Rectangle::new([(10, mid - 6), (34, mid + 6)], c.filled()))?;
            }
            Swatch::Dot => area.draw(&Circle::new((22, mid), 4, c.filled()))?,
            Swatch::Cross => area.draw(&Cross::new((22, mid), 5, c.stroke_width(2)))?,
        }
        for line in wrap(&e.label, LEGEND_CHARS) {
            area.draw(&Text::new(line, (44, y), font.clone()))?;
            y += 16;
        }
        y += 6;
    }
    Ok(y)
}

/// A note in the legend column from `top` (12 px, wrapped, in `colour`); returns the y below it.
pub fn draw_note<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    top: i32,
    colour: RGBColor,
) -> Result<i32, DrawingAreaErrorKind<DB::ErrorType>> {
    let font = ("sans-serif", 12).into_font().color(&colour);
    let mut y = top;
    for line in wrap(text, (LEGEND_WIDTH as usize - 16) / 6) {
        area.draw(&Text::new(line, (8, y), font.clone()))?;
        y += 15;
    }
    Ok(y + 6)
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_label_a_sweeps_points_and_narrow_ranges() {
        let seqs = [32.0, 64.0, 128.0, 256.0, 512.0];
        assert_eq!(axis_ticks(20.0, 700.0, true, &seqs), seqs.to_vec());
        // tokens/s within one decade (the batch sweep's y axis): ticks, not none.
        let t = axis_ticks(900.0, 1800.0, true, &[]);
        assert!(
            t.len() >= 2 && t.iter().all(|v| (900.0..=1800.0).contains(v)),
            "{t:?}"
        );
        let t = axis_ticks(1e-3, 1e3, true, &[]);
        assert!(t.contains(&1.0) && t.contains(&100.0), "{t:?}");
        let t = axis_ticks(1.01, 1.05, true, &[]);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn linear_ticks_are_round() {
        assert_eq!(
            axis_ticks(0.0, 10.0, false, &[]),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        let t = axis_ticks(2.3, 2.9, false, &[]);
        assert!(t.len() >= 3 && t.len() <= 9, "{t:?}");
    }

    #[test]
    fn measured_and_modelled_twins_share_a_colour_and_categories_keep_theirs() {
        let keys = [
            SeriesKey {
                name: "naive d=64",
                dashed: false,
            },
            SeriesKey {
                name: "naive d=64 (model)",
                dashed: true,
            },
            SeriesKey {
                name: "flash d=64",
                dashed: false,
            },
            SeriesKey {
                name: "flash d=64 (model)",
                dashed: true,
            },
        ];
        let c = series_colours(&keys);
        assert_eq!(c[0], c[1]);
        assert_eq!(c[2], c[3]);
        assert_ne!(c[0], c[2]);
        assert_eq!(Some(c[2]), category_colour("flash"));
        // A second series of the same category gets a colour of its own.
        let keys = [
            SeriesKey {
                name: "flash d=64",
                dashed: false,
            },
            SeriesKey {
                name: "flash d=128",
                dashed: false,
            },
        ];
        let c = series_colours(&keys);
        assert_ne!(c[0], c[1]);
    }
}
