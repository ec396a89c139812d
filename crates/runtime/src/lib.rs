//! tperf-runtime: what running a model for real needs besides the kernels — tokenizers, text
//! and synthetic data with resumable batching, safetensors checkpoints written atomically and
//! validated on load, and a training-loop driver written against a small [`train::Stepper`]
//! trait so it can be tested without a compute backend, and the real stepper that drives a
//! `Transformer` on any compute backend.
//!
//! Everything that touches model storage is generic over [`tperf_core::backend::Backend`]: values
//! leave a backend through `read_f32` and return through `write_f32`, so the same code serves
//! the CPU and CUDA backends.

pub mod checkpoint;
pub mod comm;
pub mod data;
pub mod data_parallel;
pub mod hf;
pub mod rng;
pub mod stepper;
pub mod tokenizer;
pub mod train;

/// The tperf version recorded in checkpoints (the workspace shares one version).
pub const TPERF_VERSION: &str = env!("CARGO_PKG_VERSION");
