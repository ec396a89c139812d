//! The NCCL watchdog: a rank whose peer died waits for data that never comes, either on the
//! host inside an NCCL call (ncclGroupEnd connects to the peers on a communicator's first
//! collectives and can wait for a full proxy queue) or in an NCCL kernel, and then the host with
//! it at its next synchronisation. No host timeout can fire in either place, so a thread of the
//! backend watches both, and when either has waited longer than the timeout it calls
//! `ncclCommAbort`, which makes the blocked call and the stuck kernels return and every later
//! NCCL call fail. The rank then exits with [`WatchdogError::Aborted`], which names the rank and
//! the timeout, instead of hanging.
//!
//! The host side is a guard ([`Armed`]): armed before `ncclGroupStart`, disarmed when it drops,
//! on every way out of the call (returned, failed, unwound). The device side is an event
//! recorded after the work a call enqueued ([`Armed::issued`]), which the thread queries; the
//! clock runs from when the guard was armed, so the two halves of one call are timed as one.
//!
//! The timeout is [`TIMEOUT`] (45 s, so that the run ends within a minute of the death), or
//! `TPERF_NCCL_TIMEOUT_S` seconds. The clock and the thread are generic over what they watch
//! ([`Watched`]): the CUDA event and NCCL communicator in a run ([`NcclWatched`]), a fake in the
//! tests, which run on any machine.

use cudarc::driver::{result as cu, sys, CudaContext};
use cudarc::nccl::{result as nccl, sys as nccl_sys};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

pub const TIMEOUT: Duration = Duration::from_secs(45);

/// How often the thread looks at the clock and the event.
const POLL: Duration = Duration::from_millis(200);

/// What the watchdog found waiting too long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stuck {
    /// The host inside an NCCL call (from before ncclGroupStart to the return of ncclGroupEnd).
    HostCall,
    /// Work enqueued on a stream: a collective's kernels, or a replayed step holding some.
    DeviceWork,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stuck::HostCall => "an NCCL call on the host (group start to group end)",
            Stuck::DeviceWork => "an NCCL collective on the GPU",
        })
    }
}

#[derive(Debug, Error)]
pub(crate) enum WatchdogError {
    #[error("rank {rank}: the NCCL communicator was aborted because {stuck} had not finished after {limit:?} (TPERF_NCCL_TIMEOUT_S; {TIMEOUT:?} unless set): a rank died or hung, and its own log says why")]
    Aborted {
        rank: usize,
        stuck: Stuck,
        limit: Duration,
    },
    #[error("{during}: {detail}")]
    Cuda {
        during: &'static str,
        detail: String,
    },
    #[error("rank {rank}: starting the NCCL watchdog's thread: {source}")]
    Thread { rank: usize, source: std::io::Error },
}

/// The watchdog's timing, apart from any device: when the host entered the call it is in (if
/// any) and when the oldest stream work not yet seen finished was issued.
#[derive(Debug)]
pub(crate) struct Clock {
    limit: Duration,
    host_since: Option<Instant>,
    device_since: Option<Instant>,
}

impl Clock {
    pub(crate) fn new(limit: Duration) -> Self {
        Clock {
            limit,
            host_since: None,
            device_since: None,
        }
    }

    /// The host is about to make a call that may block on the peers.
    fn arm(&mut self, now: Instant) {
        self.host_since = Some(now);
    }

    /// The host is out of the call.
    fn disarm(&mut self) {
        self.host_since = None;
    }

    /// The call armed at `since` enqueued work that may wait on the peers. `previous_done`:
    /// whether the work watched before has finished. The clock restarts only then, so a
    /// collective stuck behind newer ones still times out.
    fn issued(&mut self, since: Instant, previous_done: bool) {
        if previous_done || self.device_since.is_none() {
            self.device_since = Some(since);
        }
    }

    /// What has waited longer than the limit at `now`, if anything; `device_done` says whether
    /// the watched stream work has finished (asked only while there is some).
    fn expired(&mut self, now: Instant, device_done: impl FnOnce() -> bool) -> Option<Stuck> {
        if self.device_since.is_some() && device_done() {
            self.device_since = None;
        }
        let over = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) > self.limit);
        if over(self.host_since) {
            Some(Stuck::HostCall)
        } else if over(self.device_since) {
            Some(Stuck::DeviceWork)
        } else {
            None
        }
    }
}

/// What the watchdog watches and aborts.
pub(crate) trait Watched: Send + 'static {
    /// Called once on the watchdog's thread before it starts watching.
    fn on_thread(&mut self) {}
    /// Marks the end of the work enqueued so far on `stream`.
    fn record(&mut self, stream: sys::CUstream) -> Result<(), WatchdogError>;
    /// Whether the work marked last has finished.
    fn done(&mut self) -> bool;
    /// Makes every blocked call and kernel of the group return (`ncclCommAbort`); called once.
    fn abort(&mut self);
}

struct State<W> {
    clock: Clock,
    watched: W,
    stop: bool,
    aborted: Option<Stuck>,
}

type Shared<W> = Arc<(Mutex<State<W>>, Condvar)>;

pub(crate) struct Watchdog<W: Watched = NcclWatched> {
    shared: Shared<W>,
    rank: usize,
    limit: Duration,
    thread: Option<JoinHandle<()>>,
}

/// The timeout: `TPERF_NCCL_TIMEOUT_S` seconds when it is a positive number, else [`TIMEOUT`].
fn timeout() -> Duration {
    let Ok(text) = std::env::var("TPERF_NCCL_TIMEOUT_S") else {
        return TIMEOUT;
    };
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Duration::from_secs_f64(s),
        _ => {
            eprintln!(
                "TPERF_NCCL_TIMEOUT_S={text} is not a positive number of seconds; using {TIMEOUT:?}"
            );
            TIMEOUT
        }
    }
}

impl<W: Watched> Watchdog<W> {
    /// Starts the thread that watches `watched` for rank `rank`, aborting after `limit` and
    /// looking every `poll`.
    pub(crate) fn start(
        watched: W,
        rank: usize,
        limit: Duration,
        poll: Duration,
    ) -> Result<Self, WatchdogError> {
        let shared: Shared<W> = Arc::new((
            Mutex::new(State {
                clock: Clock::new(limit),
                watched,
                stop: false,
                aborted: None,
            }),
            Condvar::new(),
        ));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("nccl-watchdog-{rank}"))
            .spawn(move || watch(&theirs, rank, limit, poll))
            .map_err(|source| WatchdogError::Thread { rank, source })?;
        Ok(Watchdog {
            shared,
            rank,
            limit,
            thread: Some(thread),
        })
    }

    fn state(&self) -> MutexGuard<'_, State<W>> {
        // A poisoned lock means a thread panicked holding it; the clock is still consistent.
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn aborted_error(&self, stuck: Stuck) -> WatchdogError {
        WatchdogError::Aborted {
            rank: self.rank,
            stuck,
            limit: self.limit,
        }
    }

    /// Arms the clock before a call that may block on the peers; it is disarmed when the guard
    /// drops. An error when the watchdog has already aborted the group.
    pub(crate) fn arm(&self) -> Result<Armed<'_, W>, WatchdogError> {
        let mut st = self.state();
        if let Some(stuck) = st.aborted {
            return Err(self.aborted_error(stuck));
        }
        let since = Instant::now();
        st.clock.arm(since);
        Ok(Armed { dog: self, since })
    }

    /// An error when the watchdog aborted the group: what ran since may have returned garbage.
    pub(crate) fn check(&self) -> Result<(), WatchdogError> {
        match self.state().aborted {
            Some(stuck) => Err(self.aborted_error(stuck)),
            None => Ok(()),
        }
    }

    /// Whether the watchdog aborted the communicator (which must then not be destroyed).
    pub(crate) fn aborted(&self) -> bool {
        self.state().aborted.is_some()
    }
}

/// The watchdog's thread: polls the clock until stopped or until it aborts.
fn watch<W: Watched>(shared: &Shared<W>, rank: usize, limit: Duration, poll: Duration) {
    let (lock, cv) = &**shared;
    let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
    st.watched.on_thread();
    while !st.stop {
        let State { clock, watched, .. } = &mut *st;
        if let Some(stuck) = clock.expired(Instant::now(), || watched.done()) {
            eprintln!(
                "rank {rank}: {stuck} has not finished after {limit:?} (a rank died or hung); \
                 aborting the NCCL communicator"
            );
            watched.abort();
            st.aborted = Some(stuck);
            break;
        }
        st = cv
            .wait_timeout(st, poll)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

impl<W: Watched> Drop for Watchdog<W> {
    fn drop(&mut self) {
        {
            let mut st = self.state();
            st.stop = true;
            self.shared.1.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The host is inside a call that may block on the peers; dropping the guard says it is out.
pub(crate) struct Armed<'a, W: Watched> {
    dog: &'a Watchdog<W>,
    /// When the guard was armed: the device work the call enqueued is timed from here too.
    since: Instant,
}

impl<W: Watched> Armed<'_, W> {
    /// The call returned having enqueued work on `stream`: the clock follows that work until it
    /// finishes (the host side is disarmed when the guard drops, at the end of this).
    pub(crate) fn issued(self, stream: sys::CUstream) -> Result<(), WatchdogError> {
        let mut st = self.dog.state();
        if let Some(stuck) = st.aborted {
            return Err(self.dog.aborted_error(stuck));
        }
        let previous_done = st.clock.device_since.is_none() || st.watched.done();
        st.watched.record(stream)?;
        st.clock.issued(self.since, previous_done);
        Ok(())
    }
}

impl<W: Watched> Drop for Armed<'_, W> {
    fn drop(&mut self) {
        self.dog.state().clock.disarm();
    }
}

/// A run's watched pair: an event recorded after the latest collective, and the communicator.
pub(crate) struct NcclWatched {
    ctx: Arc<CudaContext>,
    event: sys::CUevent,
    comm: nccl_sys::ncclComm_t,
}

// SAFETY: the event and the communicator are used only under the watchdog's lock (the event)
// or once, to abort (the communicator: ncclCommAbort is meant to be called from another thread
// while a collective blocks).
unsafe impl Send for NcclWatched {}

impl NcclWatched {
    fn new(ctx: Arc<CudaContext>, comm: nccl_sys::ncclComm_t) -> Result<Self, WatchdogError> {
        let event =
            cu::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| {
                WatchdogError::Cuda {
                    during: "creating the watchdog's event",
                    detail: format!("{e:?}"),
                }
            })?;
        Ok(NcclWatched { ctx, event, comm })
    }
}

impl Watched for NcclWatched {
    fn on_thread(&mut self) {
        let _ = self.ctx.bind_to_thread();
    }

    fn record(&mut self, stream: sys::CUstream) -> Result<(), WatchdogError> {
        // SAFETY: the event is ours; `stream` belongs to this context; recording only enqueues.
        unsafe { cu::event::record(self.event, stream) }.map_err(|e| WatchdogError::Cuda {
            during: "recording the watchdog's event",
            detail: format!("{e:?}"),
        })
    }

    fn done(&mut self) -> bool {
        // SAFETY: the event lives as long as `self`; querying only looks at it.
        unsafe { cu::event::query(self.event) }.is_ok()
    }

    fn abort(&mut self) {
        // SAFETY: the communicator is alive (the backend drops the watchdog, joining its
        // thread, before destroying it) and aborted once.
        let _ = unsafe { nccl::comm_abort(self.comm) };
    }
}

impl Drop for NcclWatched {
    fn drop(&mut self) {
        // SAFETY: dropped with the watchdog's state, after its thread has ended.
        let _ = unsafe { cu::event::destroy(self.event) };
    }
}

impl Watchdog<NcclWatched> {
    /// The watchdog of rank `rank`'s communicator `comm`, with the run's timeout.
    pub(crate) fn for_nccl(
        ctx: Arc<CudaContext>,
        comm: nccl_sys::ncclComm_t,
        rank: usize,
    ) -> Result<Self, WatchdogError> {
        Watchdog::start(NcclWatched::new(ctx, comm)?, rank, timeout(), POLL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Stream work that finishes when the test says so, and a count of aborts.
    #[derive(Clone, Default)]
    struct Fake {
        done: Arc<AtomicBool>,
        aborts: Arc<AtomicUsize>,
    }

    impl Watched for Fake {
        fn record(&mut self, _: sys::CUstream) -> Result<(), WatchdogError> {
            Ok(())
        }
        fn done(&mut self) -> bool {
            self.done.load(Ordering::SeqCst)
        }
        fn abort(&mut self) {
            self.aborts.fetch_add(1, Ordering::SeqCst);
        }
    }

    const LIMIT: Duration = Duration::from_millis(60);
    const POLL: Duration = Duration::from_millis(5);

    fn dog_with(rank: usize, limit: Duration) -> (Watchdog<Fake>, Fake) {
        let fake = Fake::default();
        let dog = Watchdog::start(fake.clone(), rank, limit, POLL).expect("the thread starts");
        (dog, fake)
    }

    fn dog(rank: usize) -> (Watchdog<Fake>, Fake) {
        dog_with(rank, LIMIT)
    }

    fn no_stream() -> sys::CUstream {
        std::ptr::null_mut()
    }

    #[test]
    fn the_clock_times_the_host_call_from_arming_and_the_device_work_from_the_same_instant() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut c = Clock::new(Duration::from_millis(100));
        assert_eq!(c.expired(ms(1000), || false), None, "nothing watched");
        c.arm(t0);
        assert_eq!(c.expired(ms(100), || true), None, "not past the limit yet");
        assert_eq!(c.expired(ms(101), || true), Some(Stuck::HostCall));
        c.disarm();
        assert_eq!(c.expired(ms(500), || true), None, "disarmed");
        // The call armed at 0 enqueued work: it times out 100 ms after the arming, not the issue.
        c.issued(t0, true);
        assert_eq!(c.expired(ms(101), || false), Some(Stuck::DeviceWork));
        // Newer work behind unfinished work keeps the older start.
        c.issued(ms(90), false);
        assert_eq!(c.expired(ms(101), || false), Some(Stuck::DeviceWork));
        // Finished work clears the device side.
        assert_eq!(c.expired(ms(101), || true), None);
        c.issued(ms(200), true);
        assert_eq!(c.expired(ms(250), || false), None);
    }

    #[test]
    fn a_call_blocked_on_the_host_is_aborted_and_later_calls_fail_naming_rank_and_timeout() {
        let (dog, fake) = dog(3);
        {
            let _armed = dog.arm().unwrap();
            // A group call that never returns by itself: the watchdog must abort it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while fake.aborts.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        assert_eq!(fake.aborts.load(Ordering::SeqCst), 1);
        assert!(dog.aborted());
        let err = dog.arm().err().expect("an aborted group refuses new calls");
        let text = err.to_string();
        assert!(
            text.starts_with("rank 3: ") && text.contains("60ms") && text.contains("on the host"),
            "{text}"
        );
        assert!(dog.check().is_err());
        std::thread::sleep(LIMIT * 2);
        assert_eq!(fake.aborts.load(Ordering::SeqCst), 1, "aborted once");
    }

    #[test]
    fn the_guard_disarms_on_every_way_out_of_a_call() {
        // Read from the clock itself, not from a race against the thread: a limit no test
        // reaches, and after every way out of a call the host side must be disarmed.
        let (dog, fake) = dog_with(0, Duration::from_secs(600));
        let armed_now = |dog: &Watchdog<Fake>| dog.state().clock.host_since.is_some();
        let guard = dog.arm().unwrap();
        assert!(armed_now(&dog), "armed while the call runs");
        // Returned normally.
        drop(guard);
        assert!(!armed_now(&dog), "returned");
        // Failed: an enqueue error leaves through `?`.
        let failed = || -> Result<(), &'static str> {
            let _armed = dog.arm().map_err(|_| "aborted")?;
            let enqueue: Result<(), &'static str> = Err("enqueue failed");
            enqueue?;
            Ok(())
        };
        assert_eq!(failed(), Err("enqueue failed"));
        assert!(!armed_now(&dog), "failed");
        // Unwound by a panic.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _armed = dog.arm().unwrap();
            panic!("a bug inside the group call (this panic is the test's)");
        }));
        assert!(unwound.is_err());
        assert!(!armed_now(&dog), "unwound");
        // Issued: the host side is done, the device side watched.
        dog.arm().unwrap().issued(no_stream()).unwrap();
        assert!(!armed_now(&dog), "issued");
        assert!(dog.state().clock.device_since.is_some());
        assert_eq!(fake.aborts.load(Ordering::SeqCst), 0);
        assert!(dog.check().is_ok());
    }

    #[test]
    fn stream_work_that_never_finishes_is_aborted_and_finished_work_is_not() {
        let (dog, fake) = dog(1);
        fake.done.store(true, Ordering::SeqCst);
        dog.arm().unwrap().issued(no_stream()).unwrap();
        std::thread::sleep(LIMIT * 3);
        assert_eq!(fake.aborts.load(Ordering::SeqCst), 0, "the work finished");

        fake.done.store(false, Ordering::SeqCst);
        dog.arm().unwrap().issued(no_stream()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !dog.aborted() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert_eq!(fake.aborts.load(Ordering::SeqCst), 1);
        let text = dog.check().unwrap_err().to_string();
        assert!(
            text.starts_with("rank 1: ") && text.contains("on the GPU"),
            "{text}"
        );
    }
}
