//! tperf's measurement side: a harness that warms up, times steps with the device synchronised
//! around each, and summarises them; model benchmarks that put the Meta backend's prediction
//! beside the measurement of the very same schedule; the machine's measured ceilings; and the
//! GPU's utilisation over a run (NVML).

pub mod attention;
pub mod calibrate;
pub mod ceilings;
pub mod counters;
pub mod device;
pub mod fit;
pub mod harness;
pub mod kernels;
pub mod model;
pub mod profile;
pub mod serve;
pub mod stats;
pub mod tiles;
pub mod utilisation;
