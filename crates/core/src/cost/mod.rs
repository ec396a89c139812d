//! The cost model: hardware, roofline, memory, planning.

pub mod hardware;
