//! Presentation of tperf's records: aligned text tables, CSV, and human-readable units. It
//! reads data and formats it; it computes nothing about models.

pub mod table;
pub mod units;
