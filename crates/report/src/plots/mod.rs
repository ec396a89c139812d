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
pub mod style;

pub use bars::time_by_kind;
pub use line::{line_plot, LinePlot, Series};
pub use memory::memory_timeline;
pub use roofline::roofline;
pub use style::{color, PALETTE};

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

/// 3.2e12 → "3.2T", 5e-3 → "5m": tick labels in decimal prefixes. Whole numbers that are not
/// round thousands print as they are (1024, 16384: a sweep's powers of two read as written).
pub fn si_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".to_string();
    }
    if v.fract() == 0.0 && a < 1e6 && (a < 1e3 || a % 1000.0 != 0.0) {
        return format!("{v:.0}");
    }
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
    } else if a >= 1e-2 {
        (1.0, "")
    } else if a >= 1e-3 {
        (1e-3, "m")
    } else if a >= 1e-6 {
        (1e-6, "µ")
    } else if a >= 1e-9 {
        (1e-9, "n")
    } else {
        return format!("{v:.0e}");
    };
    let x = v / scale;
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}{p}")
    } else {
        format!("{x:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + p
    }
}

/// A linear axis's label with as many decimals as its tick step needs (0.2375, not 0.24 twice).
pub fn fixed_tick(v: f64, step: f64) -> String {
    let decimals = if step > 0.0 && step.is_finite() {
        (-(step.log10().floor())).clamp(0.0, 6.0) as usize
    } else {
        2
    };
    format!("{v:.decimals$}")
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
        assert_eq!(si_tick(1024.0), "1024");
        assert_eq!(si_tick(16384.0), "16384");
        assert_eq!(si_tick(20000.0), "20k");
        assert_eq!(si_tick(5e-3), "5m");
        assert_eq!(si_tick(2e-4), "200µ");
        assert_eq!(si_tick(0.02), "0.02");
        assert_eq!(fixed_tick(0.2375, 0.0005), "0.2375");
        assert_eq!(fixed_tick(2.5, 0.5), "2.5");
    }

    #[test]
    fn inlined_svg_names_no_address() {
        let s = inline("<svg width=\"1\" xmlns=\"http://www.w3.org/2000/svg\"></svg>".into());
        assert!(!s.contains("http"));
        assert!(s.starts_with("<svg class=\"plot\""));
    }
}
