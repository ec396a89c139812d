//! [`EngineCore`] on a worker thread of its own, fed through a channel: what a server holds.
//! The backend and the model are built on that thread (a GPU context stays on the thread that
//! made it), so neither needs to be `Send`.

use crate::core::{EngineConfig, EngineCore, Limits};
use crate::metrics::Metrics;
use crate::request::{Event, EventSink, FinishReason, Request, RequestId, SubmitError};
use crate::{BuildError, EngineError};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tperf_core::backend::Backend;
use tperf_core::schedule::Transformer;
use tperf_runtime::tokenizer::Tokenizer;

enum Command {
    Submit(RequestId, Request, Box<dyn EventSink>),
    Cancel(RequestId),
    /// Stop taking requests; finish what is in flight (or cancel it) and exit.
    Shutdown {
        cancel: bool,
    },
}

pub struct Engine {
    tx: Mutex<Sender<Command>>,
    limits: Limits,
    metrics: Arc<Mutex<Metrics>>,
    tokenizer: Tokenizer,
    next_id: AtomicU64,
    /// Submitted to the channel, not yet queued by the worker.
    in_channel: Arc<AtomicUsize>,
    closed: AtomicBool,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Starts the worker, which calls `build` for the backend and the model, then serves.
    /// Returns once the cache is allocated (or with the error that stopped it).
    pub fn start<B, F>(build: F, cfg: EngineConfig) -> Result<Self, EngineError>
    where
        B: Backend + 'static,
        F: FnOnce() -> Result<(B, Transformer, Tokenizer), BuildError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let in_channel = Arc::new(AtomicUsize::new(0));
        let counted = in_channel.clone();
        let worker = std::thread::Builder::new()
            .name("tperf-engine".into())
            .spawn(move || {
                let core = build()
                    .map_err(EngineError::Build)
                    .and_then(|(be, model, tok)| EngineCore::new(be, model, tok, cfg))
                    .and_then(|mut core| {
                        // TPERF_EVENTS_INLINE=1 keeps the sinks on this thread (for A/B).
                        if std::env::var("TPERF_EVENTS_INLINE").map_or(true, |v| v != "1") {
                            core.deliver_on_a_thread()?;
                        }
                        Ok(core)
                    });
                let mut core = match core {
                    Ok(core) => {
                        let ready = (core.limits(), core.metrics_handle(), core.tokenizer());
                        let _ = ready_tx.send(Ok(ready));
                        core
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve(&mut core, &rx, &counted);
                let (mut be, model) = core.into_parts();
                model.free(&mut be);
            })
            .map_err(EngineError::Thread)?;
        let (limits, metrics, tokenizer) = ready_rx.recv().map_err(|_| EngineError::Stopped)??;
        Ok(Engine {
            tx: Mutex::new(tx),
            limits,
            metrics,
            tokenizer,
            next_id: AtomicU64::new(1),
            in_channel,
            closed: AtomicBool::new(false),
            worker: Mutex::new(Some(worker)),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A handle on the tokenizer (a clone is cheap: the vocabularies are shared).
    pub fn tokenizer(&self) -> Tokenizer {
        self.tokenizer.clone()
    }

    /// Checks and queues a request whose events go to `sink`; its id cancels it.
    pub fn submit(&self, req: Request, sink: Box<dyn EventSink>) -> Result<RequestId, SubmitError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        self.limits.validate(&req)?;
        let queued = self.metrics().waiting + self.in_channel.load(Ordering::SeqCst);
        if queued >= self.limits.max_queue {
            return Err(SubmitError::QueueFull {
                limit: self.limits.max_queue,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.in_channel.fetch_add(1, Ordering::SeqCst);
        let sent = self
            .tx
            .lock()
            .map_err(|_| SubmitError::ShuttingDown)?
            .send(Command::Submit(id, req, sink));
        if sent.is_err() {
            self.in_channel.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(id)
    }

    /// [`Engine::submit`] with a channel of its events.
    pub fn submit_channel(
        &self,
        req: Request,
    ) -> Result<(RequestId, Receiver<Event>), SubmitError> {
        let (tx, rx) = mpsc::channel();
        let id = self.submit(req, Box::new(tx))?;
        Ok((id, rx))
    }

    /// Ends a request at once (its blocks freed); a finished one is left alone.
    pub fn cancel(&self, id: RequestId) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Command::Cancel(id));
        }
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Stops taking requests (submit answers [`SubmitError::ShuttingDown`]); with `cancel`, ends
    /// those in flight at once, else lets them finish. Returns without waiting.
    pub fn close(&self, cancel: bool) {
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Command::Shutdown { cancel });
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Stops taking requests, then finishes those in flight (or, with `cancel`, ends them at
    /// once) and waits for the worker to free the cache and exit.
    pub fn shutdown(&self, cancel: bool) {
        self.close(cancel);
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = worker {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(true);
    }
}

/// The worker's loop: take every command that arrived, run a step, repeat; block on the
/// channel while idle.
fn serve<B: Backend>(core: &mut EngineCore<B>, rx: &Receiver<Command>, in_channel: &AtomicUsize) {
    let mut closing = false;
    loop {
        if core.is_idle() {
            if closing {
                return;
            }
            match rx.recv() {
                Ok(cmd) => handle(core, cmd, &mut closing, in_channel),
                Err(_) => return,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            handle(core, cmd, &mut closing, in_channel);
        }
        if core.is_idle() {
            continue;
        }
        if let Err(e) = core.step() {
            // The requests of the failed step were ended with the error; keep serving.
            eprintln!("engine: step failed: {e}");
        }
        let delay = core.config().step_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
}

fn handle<B: Backend>(
    core: &mut EngineCore<B>,
    cmd: Command,
    closing: &mut bool,
    in_channel: &AtomicUsize,
) {
    match cmd {
        Command::Submit(id, req, mut sink) => {
            in_channel.fetch_sub(1, Ordering::SeqCst);
            if *closing {
                sink.send(Event::Finished {
                    text: String::new(),
                    reason: FinishReason::Cancelled,
                    usage: Default::default(),
                });
            } else {
                // A refusal (only a queue that filled meanwhile: the rest was checked before
                // it was sent) reaches the client through its sink.
                let _ = core.add(id, req, sink);
            }
        }
        Command::Cancel(id) => {
            core.cancel(id);
        }
        Command::Shutdown { cancel } => {
            *closing = true;
            if cancel {
                core.abort_all(FinishReason::Cancelled);
            }
        }
    }
}
