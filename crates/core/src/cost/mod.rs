//! The cost model: hardware, roofline, memory, the analysis of a schedule, and planning.

pub mod analysis;
pub mod calibration;
pub mod hardware;
pub mod measured;
pub mod memory;
pub mod plan;
pub mod roofline;
pub mod serve;
