//! CUDA events around every op: the GPU time of each op as the stream ran it, without
//! synchronising between ops. Events are pooled and reused; `drain` waits for the last one and
//! reads the elapsed times.

use crate::error::{driver, CudaError};
use cudarc::driver::{result as cu, sys};

pub struct EventTimer {
    /// (op index, start event, stop event) recorded since the last drain.
    pending: Vec<(usize, sys::CUevent, sys::CUevent)>,
    pool: Vec<sys::CUevent>,
    open: Option<(usize, sys::CUevent)>,
}

impl EventTimer {
    pub fn new() -> Self {
        EventTimer {
            pending: Vec::new(),
            pool: Vec::new(),
            open: None,
        }
    }

    fn event(&mut self) -> Result<sys::CUevent, CudaError> {
        match self.pool.pop() {
            Some(e) => Ok(e),
            None => cu::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(driver("creating a CUDA event")),
        }
    }

    pub fn start(&mut self, index: usize, stream: sys::CUstream) -> Result<(), CudaError> {
        let e = self.event()?;
        // SAFETY: `e` is a live event from the pool or just created; `stream` is the backend's live
        // stream.
        unsafe { cu::event::record(e, stream) }.map_err(driver("recording an event"))?;
        self.open = Some((index, e));
        Ok(())
    }

    pub fn stop(&mut self, stream: sys::CUstream) -> Result<(), CudaError> {
        let Some((index, start)) = self.open.take() else {
            return Ok(());
        };
        let e = self.event()?;
        // SAFETY: as in `start`.
        unsafe { cu::event::record(e, stream) }.map_err(driver("recording an event"))?;
        self.pending.push((index, start, e));
        Ok(())
    }

    /// (op index, start, duration) in milliseconds of every op timed since the last drain, the
    /// start measured from the first op's start. The caller has synchronised the stream.
    pub fn drain(&mut self) -> Result<Vec<(usize, f64, f64)>, CudaError> {
        let mut out = Vec::with_capacity(self.pending.len());
        let origin = self.pending.first().map(|p| p.1);
        for &(index, start, stop) in &self.pending {
            let elapsed = |a, b| {
                // SAFETY: both events were recorded on the stream and the caller synchronised it,
                // so both have completed.
                unsafe { cu::event::elapsed(a, b) }
                    .map(f64::from)
                    .map_err(driver("reading an event"))
            };
            let from_origin = match origin {
                Some(o) => elapsed(o, start)?,
                None => 0.0,
            };
            out.push((index, from_origin, elapsed(start, stop)?));
        }
        for (_, start, stop) in std::mem::take(&mut self.pending) {
            self.pool.push(start);
            self.pool.push(stop);
        }
        Ok(out)
    }
}

impl Drop for EventTimer {
    fn drop(&mut self) {
        let all = self
            .pending
            .drain(..)
            .flat_map(|(_, a, b)| [a, b])
            .chain(self.pool.drain(..))
            .chain(self.open.take().map(|(_, e)| e));
        for e in all {
            // SAFETY: every event was created by `event` and is destroyed once; the pending ones
            // completed (the backend synchronises before dropping).
            let _ = unsafe { cu::event::destroy(e) };
        }
    }
}
