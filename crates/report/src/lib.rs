//! Presentation of tperf's records: aligned text tables, CSV, human-readable units, SVG plots and
//! the self-contained HTML report. It reads data and formats it; it computes nothing about
//! models.

pub mod bench_sections;
pub mod counters_section;
pub mod findings;
pub mod html;
pub mod markup;
pub mod plots;
pub mod results;
pub mod scaling;
pub mod serving;
pub mod table;
pub mod units;
