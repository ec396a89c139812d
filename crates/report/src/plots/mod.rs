//! Inline SVG plots, drawn with plotters' SVG backend.
//!
//! plotters is built without its font features: its "naive" font only estimates text extents
//! for layout and the SVG backend writes every label as a `<text>` element, so the browser
//! renders text with its own fonts and no font file is needed at build or run time. The SVG's
//! `xmlns` attribute (a namespace name, not a fetched address) is dropped when the plot is
//! inlined: HTML parsers do not need it, and the report then contains no URL at all.

mod bars;
mod line;
mod memory;
mod roofline;

pub use bars::time_by_kind;
pub use line::{line_plot, LinePlot, Series};
pub use memory::memory_timeline;
pub use roofline::roofline;

use plotters::style::RGBColor;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("drawing the {plot} plot failed: {detail}")]
pub struct PlotError {
    pub plot: &'static str,
    pub detail: String,
}

pub(crate) fn err<E: std::fmt::Display>(plot: &'static str) -> impl Fn(E) -> PlotError {
    move |e| PlotError {
        plot,
        detail: e.to_string(),
    }
}

/// Plot size in SVG user units; the page scales it to its width.
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 540;

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

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// 3.2e12 → "3.2T": tick labels in decimal prefixes.
pub fn si_tick(v: f64) -> String {
    let a = v.abs();
    let (scale, p) = if a >= 1e15 {
        (1e15, "P")
    } else if a >= 1e12 {
        (1e12, "T")
    } else if a >= 1e9 {
        (1e9, "G")
    } else if a >= 1e6 {
        (1e6, "M")
    } else if a >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let x = v / scale;
    if a == 0.0 {
        "0".to_string()
    } else if a < 1e-2 {
        format!("{v:.0e}")
    } else if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}{p}")
    } else {
        format!("{x:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + p
    }
}

/// The SVG as it goes into the page: without the XML namespace attribute (see the module
/// comment) and with a class the stylesheet sizes.
pub(crate) fn inline(svg: String) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
        .replacen("<svg ", "<svg class=\"plot\" ", 1)
}

/// Log axes need positive, finite bounds that differ.
pub(crate) fn log_bounds(lo: f64, hi: f64) -> (f64, f64) {
    let lo = if lo.is_finite() && lo > 0.0 { lo } else { 1e-3 };
    let hi = if hi.is_finite() && hi > lo {
        hi
    } else {
        lo * 10.0
    };
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks() {
        assert_eq!(si_tick(1e12), "1T");
        assert_eq!(si_tick(2.5e9), "2.5G");
        assert_eq!(si_tick(0.0), "0");
        assert_eq!(si_tick(10.0), "10");
    }

    #[test]
    fn inlined_svg_names_no_address() {
        let s = inline("<svg width=\"1\" xmlns=\"http://www.w3.org/2000/svg\"></svg>".into());
        assert!(!s.contains("http"));
        assert!(s.starts_with("<svg class=\"plot\""));
    }
}
