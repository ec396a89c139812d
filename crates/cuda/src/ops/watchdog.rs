//! The NCCL watchdog: a rank whose peer died waits inside an NCCL kernel for data that never
//! comes, and the host thread with it, at its next synchronisation — no host timeout can fire
//! there. A thread of the backend watches an event recorded after the latest collective (or
//! after a replayed step that contains collectives); when the oldest collective it has not
//! seen finish is older than the timeout, it calls `ncclCommAbort`, which makes the stuck
//! kernels return and every later NCCL call fail, so the rank exits with an error instead of
//! hanging. The timeout is [`TIMEOUT`] (45 s, so that the run ends within a minute of the
//! death), or `TPERF_NCCL_TIMEOUT_S` seconds.

use cudarc::driver::{result as cu, sys, CudaContext};
use cudarc::nccl::{result as nccl, sys as nccl_sys};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(45);

/// How often the thread looks at the event.
const POLL: Duration = Duration::from_millis(200);

struct Watch {
    /// When the oldest collective not yet seen finished was issued.
    since: Option<Instant>,
    stop: bool,
    aborted: bool,
}

/// The raw handles the thread uses.
struct Handles {
    event: sys::CUevent,
    comm: nccl_sys::ncclComm_t,
}

// SAFETY: the event and the communicator are used by the watchdog thread only under the lock
// (the event) or once, to abort (the communicator: ncclCommAbort is meant to be called from
// another thread while a collective blocks).
unsafe impl Send for Handles {}

pub(crate) struct Watchdog {
    shared: Arc<(Mutex<Watch>, Condvar)>,
    event: sys::CUevent,
    thread: Option<JoinHandle<()>>,
}

// SAFETY: the event is only recorded and queried under the lock.
unsafe impl Send for Watchdog {}

fn timeout() -> Duration {
    std::env::var("TPERF_NCCL_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(TIMEOUT, Duration::from_secs_f64)
}

impl Watchdog {
    pub(crate) fn start(
        ctx: Arc<CudaContext>,
        comm: nccl_sys::ncclComm_t,
        rank: usize,
    ) -> Result<Self, String> {
        let event = cu::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| format!("creating the watchdog's event: {e:?}"))?;
        let shared = Arc::new((
            Mutex::new(Watch {
                since: None,
                stop: false,
                aborted: false,
            }),
            Condvar::new(),
        ));
        let limit = timeout();
        let handles = Handles { event, comm };
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("nccl-watchdog-{rank}"))
            .spawn(move || {
                let h = handles;
                let _ = ctx.bind_to_thread();
                let (lock, cv) = &*sh;
                let mut w = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !w.stop {
                    if let Some(t) = w.since {
                        // SAFETY: the event lives until the thread is joined (Drop).
                        if unsafe { cu::event::query(h.event) }.is_ok() {
                            w.since = None;
                        } else if t.elapsed() > limit {
                            eprintln!(
                                "rank {rank}: an NCCL collective has not finished after {limit:?} \
                                 (a rank died or hung); aborting the NCCL communicator"
                            );
                            // SAFETY: the communicator is alive (the backend joins this thread
                            // before destroying it) and aborted once.
                            let _ = unsafe { nccl::comm_abort(h.comm) };
                            w.aborted = true;
                            w.since = None;
                            break;
                        }
                    }
                    w = cv
                        .wait_timeout(w, POLL)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            })
            .map_err(|e| format!("starting the NCCL watchdog: {e}"))?;
        Ok(Watchdog {
            shared,
            event,
            thread: Some(thread),
        })
    }

    /// Work that may block on the peers was just issued on `stream`: watch it.
    pub(crate) fn watch(&self, stream: sys::CUstream) -> Result<(), String> {
        let mut w = self.shared.0.lock().unwrap_or_else(|p| p.into_inner());
        if w.aborted {
            return Err(
                "the NCCL communicator was aborted after a collective timed out (a rank died or hung)"
                    .into(),
            );
        }
        // The clock restarts only once what was watched before has finished: a collective
        // stuck behind newer ones still times out.
        // SAFETY: the event is ours; querying and recording only look at or enqueue on it.
        let previous_done = w.since.is_none() || unsafe { cu::event::query(self.event) }.is_ok();
        if previous_done {
            w.since = Some(Instant::now());
        }
        // SAFETY: as above; `stream` belongs to this context.
        unsafe { cu::event::record(self.event, stream) }
            .map_err(|e| format!("recording the watchdog's event: {e:?}"))
    }

    /// Whether the watchdog aborted the communicator (which must then not be destroyed).
    pub(crate) fn aborted(&self) -> bool {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .aborted
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            let mut w = self.shared.0.lock().unwrap_or_else(|p| p.into_inner());
            w.stop = true;
            self.shared.1.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: the thread that queried it has ended.
        let _ = unsafe { cu::event::destroy(self.event) };
    }
}
