//! Where the engine's events go: each request's [`EventSink`], either called at once from the
//! step that made the event ([`Outbox::inline`]: [`crate::EngineCore`] alone, `tperf generate`,
//! the tests) or handed, one batch per step, to a delivery thread ([`Outbox::threaded`]: the
//! threaded [`crate::Engine`] a server runs).
//!
//! Why a thread: a server's sink wakes the task that streams the request's response, and a wake
//! that finds the runtime's workers parked is a system call. Serving gpt2-124m on the H200 at
//! saturation, the engine's own part of a decode step of ~255 sequences measured 0.29 ms
//! (bench-results/2026-12-04-h200-session14/b), where the same step's bookkeeping with sinks
//! that wake nobody, on a backend that does no device work, took 73 µs in one run on a 2-core
//! machine (tests/host_cost.rs; its runs there vary up to 2×). The sinks are the suspect for
//! the difference — not yet profiled — and whatever they cost was spent serially, with the GPU
//! idle. On the delivery thread it overlaps the next step's device work.
//!
//! A sink that reports its listener gone is cancelled by the engine: inline at once (`send`
//! returns false), threaded at the next step (the delivery thread records the request in
//! [`Outbox::gone`]). The events of one request keep their order either way (one FIFO channel),
//! and after its `Finished` its sink is dropped.

use crate::request::{Event, EventSink, RequestId};
use std::collections::HashMap;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One request's event, or a new request's sink.
enum Letter {
    Open(RequestId, Box<dyn EventSink>),
    Event(RequestId, Event),
}

pub(crate) struct Outbox {
    mode: Mode,
}

enum Mode {
    Inline(Sinks),
    Threaded {
        batch: Vec<Letter>,
        tx: Option<Sender<Vec<Letter>>>,
        gone: Arc<Mutex<Vec<RequestId>>>,
        worker: Option<JoinHandle<()>>,
    },
}

/// The open requests' sinks.
#[derive(Default)]
struct Sinks(HashMap<RequestId, Box<dyn EventSink>>);

impl Sinks {
    /// Delivers `event`; false if the request's listener is gone (or it has no open sink). A
    /// `Finished` closes the sink.
    fn deliver(&mut self, id: RequestId, event: Event) -> bool {
        let last = matches!(event, Event::Finished { .. });
        let Some(sink) = self.0.get_mut(&id) else {
            return false;
        };
        let heard = sink.send(event);
        if last || !heard {
            self.0.remove(&id);
        }
        heard
    }
}

impl Outbox {
    pub(crate) fn inline() -> Self {
        Outbox {
            mode: Mode::Inline(Sinks::default()),
        }
    }

    /// An outbox whose batches a thread of its own delivers.
    pub(crate) fn threaded() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Vec<Letter>>();
        let gone = Arc::new(Mutex::new(Vec::new()));
        let seen_gone = gone.clone();
        let worker = std::thread::Builder::new()
            .name("tperf-events".into())
            .spawn(move || {
                let mut sinks = Sinks::default();
                for batch in rx {
                    for letter in batch {
                        match letter {
                            Letter::Open(id, sink) => {
                                sinks.0.insert(id, sink);
                            }
                            Letter::Event(id, event) => {
                                let last = matches!(event, Event::Finished { .. });
                                if !sinks.deliver(id, event) && !last {
                                    if let Ok(mut g) = seen_gone.lock() {
                                        g.push(id);
                                    }
                                }
                            }
                        }
                    }
                }
            })?;
        Ok(Outbox {
            mode: Mode::Threaded {
                batch: Vec::new(),
                tx: Some(tx),
                gone,
                worker: Some(worker),
            },
        })
    }

    /// Registers a request's sink.
    pub(crate) fn open(&mut self, id: RequestId, sink: Box<dyn EventSink>) {
        match &mut self.mode {
            Mode::Inline(sinks) => {
                sinks.0.insert(id, sink);
            }
            Mode::Threaded { batch, .. } => batch.push(Letter::Open(id, sink)),
        }
    }

    /// Sends `event` to request `id`: false only inline, when its listener is gone.
    pub(crate) fn send(&mut self, id: RequestId, event: Event) -> bool {
        match &mut self.mode {
            Mode::Inline(sinks) => sinks.deliver(id, event),
            Mode::Threaded { batch, .. } => {
                batch.push(Letter::Event(id, event));
                true
            }
        }
    }

    /// Hands what was sent since the last flush to the delivery thread.
    pub(crate) fn flush(&mut self) {
        if let Mode::Threaded { batch, tx, .. } = &mut self.mode {
            if !batch.is_empty() {
                if let Some(tx) = tx {
                    let _ = tx.send(std::mem::take(batch));
                }
            }
        }
    }

    /// The requests whose listeners the delivery thread found gone since the last call.
    pub(crate) fn gone(&mut self) -> Vec<RequestId> {
        match &self.mode {
            Mode::Inline(_) => Vec::new(),
            Mode::Threaded { gone, .. } => gone
                .lock()
                .map(|mut g| std::mem::take(&mut *g))
                .unwrap_or_default(),
        }
    }
}

impl Drop for Outbox {
    /// Delivers what is left, then waits for the delivery thread.
    fn drop(&mut self) {
        self.flush();
        if let Mode::Threaded { tx, worker, .. } = &mut self.mode {
            drop(tx.take());
            if let Some(w) = worker.take() {
                let _ = w.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{FinishReason, Usage};
    use std::sync::mpsc::Receiver;

    fn token(id: u32) -> Event {
        Event::Token {
            id,
            text: format!("t{id}"),
        }
    }

    fn finished() -> Event {
        Event::Finished {
            text: String::new(),
            reason: FinishReason::Length,
            usage: Usage::default(),
        }
    }

    fn channel() -> (Box<dyn EventSink>, Receiver<Event>) {
        let (tx, rx) = mpsc::channel();
        (Box::new(tx), rx)
    }

    #[test]
    fn inline_delivers_at_once_and_reports_a_listener_gone() {
        let mut out = Outbox::inline();
        let (a, ra) = channel();
        let (b, rb) = channel();
        out.open(1, a);
        out.open(2, b);
        assert!(out.send(1, token(5)));
        assert_eq!(ra.try_recv().ok(), Some(token(5)));
        drop(rb);
        assert!(!out.send(2, token(6)), "a dropped receiver is reported");
        assert!(out.send(1, finished()));
        assert!(
            !out.send(1, token(7)),
            "a finished request's sink is closed"
        );
        assert_eq!(ra.try_recv().ok(), Some(finished()));
        assert!(ra.try_recv().is_err());
    }

    #[test]
    fn threaded_delivers_each_request_in_order_after_a_flush_and_collects_the_gone() {
        let mut out = Outbox::threaded().expect("thread");
        let (a, ra) = channel();
        let (b, rb) = channel();
        out.open(1, a);
        out.open(2, b);
        drop(rb);
        for t in 0..100 {
            assert!(out.send(1, token(t)));
        }
        assert!(out.send(2, token(0)), "threaded sends report nothing");
        assert!(out.send(1, finished()));
        assert!(
            ra.recv_timeout(std::time::Duration::from_millis(50))
                .is_err(),
            "nothing is delivered before the flush"
        );
        out.flush();
        for t in 0..100 {
            let got = ra.recv_timeout(std::time::Duration::from_secs(10));
            assert_eq!(got.ok(), Some(token(t)));
        }
        assert_eq!(
            ra.recv_timeout(std::time::Duration::from_secs(10)).ok(),
            Some(finished())
        );
        let mut gone = Vec::new();
        for _ in 0..1000 {
            gone.extend(out.gone());
            if !gone.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(gone, vec![2]);
        drop(out);
        assert!(ra.try_recv().is_err(), "the sink closed after Finished");
    }
}
