//! tperf-core: model configs, ops and their costs, the one schedule written against the
//! [`backend::Backend`] trait, the Meta backend that turns the schedule into the analytic model,
//! and the cost model (hardware, roofline, memory, planning).

pub mod backend;
pub mod comm;
pub mod config;
pub mod cost;
pub mod dtype;
pub mod error;
pub mod hf;
pub mod ledger;
pub mod meta;
pub mod ops;
pub mod precision;
pub mod presets;
pub mod rng;
pub mod schedule;
pub mod suggest;
pub mod tensor;
