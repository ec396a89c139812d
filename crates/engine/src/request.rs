//! What a client sends the engine and what it hears back.

use tperf_core::ops::sampling::Sampling;

pub type RequestId = u64;

/// One generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (> 0; prompt + max_tokens within the context).
    pub max_tokens: usize,
    /// Temperature, top-k, top-p and the seed; each generated token i is drawn with its own seed
    /// derived from (seed, i), so a request's tokens do not depend on the batch it ran in.
    pub sampling: Sampling,
    /// Generation stops at the first of these in the generated text, which is not emitted.
    pub stop: Vec<String>,
    /// Whose request this is, for the fair scheduler (the HTTP `user` field or a header).
    pub client: String,
    /// Keep going past the end-of-text token (benchmarks ask for exact output lengths).
    pub ignore_eos: bool,
}

impl Request {
    /// A greedy request of `max_tokens` from the anonymous client.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Request {
            prompt,
            max_tokens,
            sampling: Sampling {
                temperature: 0.0,
                ..Sampling::default()
            },
            stop: Vec::new(),
            client: String::new(),
            ignore_eos: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The end-of-text token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
    /// [`crate::Engine::cancel`], a sink that went away, or shutdown.
    Cancelled,
    /// The backend failed during the request's step.
    Error(String),
}

impl FinishReason {
    /// OpenAI's name (`stop`, `length`), and tperf's for the others.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error(_) => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token and the text it completes (empty while a multi-byte character or a
    /// possible stop string is still arriving; that text comes with a later token).
    Token { id: u32, text: String },
    /// The last event of a request: any text held back until now, why it ended, and the counts.
    Finished {
        text: String,
        reason: FinishReason,
        usage: Usage,
    },
}

/// Where a request's events go. `send` returns false once nobody listens (a client that hung
/// up): the engine then cancels the request and frees its blocks.
pub trait EventSink: Send {
    fn send(&mut self, event: Event) -> bool;
}

impl EventSink for std::sync::mpsc::Sender<Event> {
    fn send(&mut self, event: Event) -> bool {
        std::sync::mpsc::Sender::send(self, event).is_ok()
    }
}

/// Why a request was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The request itself is wrong (a 400): `param` names the field.
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    /// The waiting queue is at its limit (a 429): try again later.
    #[error("the queue holds {limit} waiting requests, its limit: try again later")]
    QueueFull { limit: usize },
    #[error("the engine is shutting down")]
    ShuttingDown,
}
