//! Warm-up, then timed steps. Each step is bracketed by a device synchronisation so that the
//! host clock measures the device's work, not the time to enqueue it (the seed's lesson:
//! without `torch.cuda.synchronize()` the numbers measure launch overhead).

use std::time::Instant;

/// Runs `warmup` untimed steps, then `steps` timed ones; returns each timed step's seconds.
/// `sync` waits for the device (a no-op on the CPU, whose ops return when done).
pub fn time_steps<E>(
    warmup: usize,
    steps: usize,
    mut sync: impl FnMut() -> Result<(), E>,
    mut step: impl FnMut() -> Result<(), E>,
    mut after_each: impl FnMut(usize),
) -> Result<Vec<f64>, E> {
    for i in 0..warmup {
        step()?;
        after_each(i);
    }
    sync()?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..steps {
        let t0 = Instant::now();
        step()?;
        sync()?;
        times.push(t0.elapsed().as_secs_f64());
        after_each(warmup + i);
    }
    Ok(times)
}

/// The cost of the timer itself: back-to-back `Instant::now()` pairs, median seconds.
pub fn timer_overhead_seconds() -> f64 {
    let mut v: Vec<f64> = (0..1001)
        .map(|_| {
            let t0 = Instant::now();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_steps_are_not_timed_and_sync_brackets_each_step() {
        let mut log = Vec::new();
        let log_ref = std::cell::RefCell::new(&mut log);
        let times = time_steps::<()>(
            2,
            3,
            || {
                log_ref.borrow_mut().push("sync");
                Ok(())
            },
            || {
                log_ref.borrow_mut().push("step");
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(times.len(), 3);
        assert_eq!(
            log,
            ["step", "step", "sync", "step", "sync", "step", "sync", "step", "sync"]
        );
    }

    #[test]
    fn an_error_stops_the_run() {
        let mut n = 0;
        let r = time_steps(
            0,
            5,
            || Ok(()),
            || {
                n += 1;
                if n == 2 {
                    Err("boom")
                } else {
                    Ok(())
                }
            },
            |_| {},
        );
        assert_eq!(r, Err("boom"));
    }
}
