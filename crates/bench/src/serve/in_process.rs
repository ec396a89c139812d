//! A benchmark schedule sent straight to an [`Engine`] in this process, without HTTP: what
//! `tperf study` measures serving with, where a server and a client on the same two cores
//! would measure mostly themselves. Each request's events are timed in the engine's step that
//! emits them (an in-process sink stamps them), so TTFT and the token gaps are the engine's
//! own, without the network, tokenizing and SSE framing a real client adds; the outcomes have
//! the HTTP client's shape and go through the same metrics.

use super::client::{client_name, Scheduled};
use super::dataset::Prompt;
use super::metrics::RequestOutcome;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tperf_engine::{Engine, Event, EventSink, FinishReason, Request};

struct TimedSink {
    sent: Instant,
    outcome: Arc<Mutex<RequestOutcome>>,
    done: Sender<()>,
}

impl EventSink for TimedSink {
    fn send(&mut self, event: Event) -> bool {
        let at = self.sent.elapsed().as_secs_f64();
        let Ok(mut o) = self.outcome.lock() else {
            return false;
        };
        match event {
            Event::Token { .. } => o.chunk_s.push(at),
            Event::Finished { reason, usage, .. } => {
                o.prompt_tokens = usage.prompt_tokens as u64;
                o.output_tokens = usage.completion_tokens as u64;
                o.usage_reported = true;
                o.finish_reason = Some(reason.as_str().to_string());
                match reason {
                    FinishReason::Error(e) => o.error = Some(e),
                    FinishReason::Cancelled => o.error = Some("cancelled".into()),
                    FinishReason::Stop | FinishReason::Length => {}
                }
                o.ttft_s = o.chunk_s.first().copied().unwrap_or(at);
                o.e2el_s = o.chunk_s.last().copied().unwrap_or(at);
                let _ = self.done.send(());
            }
        }
        true
    }
}

/// Submits every request of `schedule` at its time (greedy, `ignore_eos`, `max_tokens` = its
/// output length, `user` = its client's name) and waits for all to finish. Returns the
/// outcomes in schedule order and the duration from the start to the last finish.
pub fn run(engine: &Engine, schedule: &[Scheduled]) -> (Vec<RequestOutcome>, f64) {
    let tok = engine.tokenizer();
    let (done_tx, done_rx) = mpsc::channel();
    let t0 = Instant::now();
    let mut records = Vec::with_capacity(schedule.len());
    let mut waiting = 0;
    for s in schedule {
        let due = t0 + Duration::from_secs_f64(s.at_s.max(0.0));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let prompt = match &s.spec.prompt {
            Prompt::Ids(ids) => ids.clone(),
            Prompt::Text(text) => tok.encode(text),
        };
        let sent = Instant::now();
        let outcome = Arc::new(Mutex::new(RequestOutcome {
            client: s.client,
            sent_s: (sent - t0).as_secs_f64(),
            prompt_tokens: prompt.len() as u64,
            ..Default::default()
        }));
        let req = Request {
            client: client_name(s.client),
            ignore_eos: true,
            ..Request::greedy(prompt, s.spec.output_len)
        };
        let sink = TimedSink {
            sent,
            outcome: outcome.clone(),
            done: done_tx.clone(),
        };
        match engine.submit(req, Box::new(sink)) {
            Ok(_) => waiting += 1,
            Err(e) => {
                if let Ok(mut o) = outcome.lock() {
                    o.error = Some(e.to_string());
                }
            }
        }
        records.push(outcome);
    }
    // Only the sinks hold senders now: a sink the engine drops without finishing (a stopped
    // engine) ends the wait instead of hanging it.
    drop(done_tx);
    for _ in 0..waiting {
        if done_rx.recv().is_err() {
            break;
        }
    }
    let duration = t0.elapsed().as_secs_f64();
    let outcomes = records
        .iter()
        .map(|r| r.lock().map(|o| o.clone()).unwrap_or_default())
        .collect();
    (outcomes, duration)
}
