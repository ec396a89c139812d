//! Warm-up, then timed steps. Each step is bracketed by a device synchronisation so that the
//! host clock measures the device's work, not the time to enqueue it (the seed's lesson:
//! without `torch.cuda.synchronize()` the numbers measure launch overhead).

use std::time::Instant;

/// The untimed steps before either timing, then a synchronisation so that none runs into the
/// first timed step.
fn warm_up<E>(
    warmup: usize,
    sync: &mut impl FnMut() -> Result<(), E>,
    step: &mut impl FnMut() -> Result<(), E>,
    after_each: &mut impl FnMut(usize),
) -> Result<(), E> {
    for i in 0..warmup {
        step()?;
        after_each(i);
    }
    sync()
}

/// Runs `warmup` untimed steps, then `steps` timed ones; returns each timed step's seconds.
/// `sync` waits for the device (a no-op on the CPU, whose ops return when done).
pub fn time_steps<E>(
    warmup: usize,
    steps: usize,
    mut sync: impl FnMut() -> Result<(), E>,
    mut step: impl FnMut() -> Result<(), E>,
    mut after_each: impl FnMut(usize),
) -> Result<Vec<f64>, E> {
    warm_up(warmup, &mut sync, &mut step, &mut after_each)?;
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

/// Runs `warmup` untimed steps, then `steps` issued back to back and timed as one span that ends
/// in one synchronisation; each step's time is the span over `steps` (all equal). The host may
/// issue step n + 1 while the device still runs step n, as a pipelined generation loop does and
/// as PyTorch's CUDA-graph decode benchmarks time their replays, so where the host's share of a
/// step is shorter than the device's the host time is hidden. `after_each` sees each step's
/// index as it is issued.
pub fn time_back_to_back<E>(
    warmup: usize,
    steps: usize,
    mut sync: impl FnMut() -> Result<(), E>,
    mut step: impl FnMut() -> Result<(), E>,
    mut after_each: impl FnMut(usize),
) -> Result<Vec<f64>, E> {
    warm_up(warmup, &mut sync, &mut step, &mut after_each)?;
    let t0 = Instant::now();
    for i in 0..steps {
        step()?;
        after_each(warmup + i);
    }
    sync()?;
    let each = t0.elapsed().as_secs_f64() / steps.max(1) as f64;
    Ok(vec![each; steps])
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
    fn back_to_back_synchronises_once_after_the_timed_steps() {
        let log = std::cell::RefCell::new(Vec::new());
        let times = time_back_to_back(
            2,
            3,
            || {
                log.borrow_mut().push("sync");
                Ok::<(), ()>(())
            },
            || {
                std::thread::sleep(std::time::Duration::from_millis(2));
                log.borrow_mut().push("step");
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(
            *log.borrow(),
            ["step", "step", "sync", "step", "step", "step", "sync"]
        );
        assert_eq!(times.len(), 3);
        assert!(
            times.iter().all(|&t| t == times[0] && t >= 0.002),
            "{times:?}"
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
