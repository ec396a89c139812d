//! tperf's serving engine: many requests on one model, batched at every step (continuous, or
//! iteration-level, batching: Yu et al., OSDI 2022 "Orca"), over a paged KV cache (Kwon et al.,
//! SOSP 2023 "vLLM") whose blocks a block manager hands out, with first-come-first-served or fair
//! (virtual token counter: Sheng et al., OSDI 2024) admission. Static batching (admission only
//! into an empty batch) is a mode of the same engine, the baseline continuous batching beats.
//!
//! Layers, each usable alone:
//! - [`EngineCore`]: the synchronous engine on a backend the caller owns: [`EngineCore::add`]
//!   requests, call [`EngineCore::step`] until it is idle. One step schedules (decode rows of the
//!   running requests, then chunks of the waiting ones' prompts, under a token budget), runs all
//!   its rows through one `ragged_logits` call, samples every sequence on the device with its own
//!   setting, and hands each request its token through its [`EventSink`].
//! - [`Engine`]: the core on a worker thread of its own, driven by a channel; what a server uses.
//! - [`contiguous`]: the one-prompt loop over the contiguous cache (or none), kept as the
//!   reference the paged engine is tested against and for `tperf generate --no-kv-cache`.
//!
//! No async runtime: the engine is plain threads and channels; an HTTP layer adapts its sinks.

pub mod block;
pub mod contiguous;
mod core;
mod engine;
pub mod metrics;
mod outbox;
pub mod policy;
pub mod request;
mod text;

pub use crate::core::{EngineConfig, EngineCore, Limits, StepReport};
pub use engine::Engine;
pub use metrics::Metrics;
pub use policy::{Batching, Policy, UnknownChoice, VtcWeights};
pub use request::{Event, EventSink, FinishReason, Request, RequestId, SubmitError, Usage};

use tperf_core::backend::BackendError;
use tperf_core::schedule::ragged::LayoutError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the engine laid out a step the cache rejects (a scheduler bug): {0}")]
    Layout(#[from] LayoutError),
    #[error("{0}")]
    Config(String),
    /// The caller's builder of the backend and the model failed ([`Engine::start`]); its error
    /// says why, and stays the cause.
    #[error("{0}")]
    Build(#[source] BuildError),
    #[error("cannot start the engine thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the engine's worker thread has stopped")]
    Stopped,
}

/// Whatever stopped the caller's builder of the backend and the model: the engine cannot know
/// its type (a backend's error, a loader's `anyhow::Error`), only that it is an error, so `?`
/// on any of them converts.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;
