//! Collectives over host memory between the ranks of a data-parallel run: the contract a
//! backend that keeps tensors in host memory executes `Op::Collective` through (the CPU
//! backend), and the control plane every run uses whatever its backend (the mean loss a log
//! prints, the NCCL unique id rank 0 hands out). The CUDA backend's data plane is NCCL, not this.
//!
//! [`ThreadGroup`] runs the ranks as threads of one process (tests, and the reference the
//! process-based group is checked against); `tperf_runtime::comm` connects processes over TCP.
//! Every implementation reduces in rank order, so all ranks get bit-identical results and a run
//! is reproducible whatever the arrival order.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduce {
    Sum,
    /// The sum divided by the world size (DDP's gradient average).
    Mean,
}

#[derive(Debug, Error)]
pub enum CommError {
    /// A rank did not arrive in time: it died, hung, or the group is mis-configured. The others
    /// give up instead of hanging forever.
    #[error("rank {rank} of {world}: no reply from the other ranks within {timeout:?} during {during} (a rank died or hung; its own log says why)")]
    Timeout {
        rank: usize,
        world: usize,
        timeout: Duration,
        during: &'static str,
    },
    #[error("rank {rank}: {during} of {len} values, but rank {other} gave {other_len}: the ranks run different schedules")]
    Mismatch {
        rank: usize,
        during: &'static str,
        len: usize,
        other: usize,
        other_len: usize,
    },
    #[error("rank {rank}: the connection to the group failed during {during}: {why}")]
    Io {
        rank: usize,
        during: &'static str,
        why: String,
    },
}

/// One rank's handle on its group.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Every rank's `data` becomes the element-wise reduction over the ranks.
    fn all_reduce(&self, data: &mut [f32], op: Reduce) -> Result<(), CommError>;
    /// Rank 0's `data` is copied to every rank (same length on all).
    fn broadcast(&self, data: &mut [u8]) -> Result<(), CommError>;
}

/// The reduction of `parts` (one slice per rank, in rank order) into `out`.
pub fn reduce_in_rank_order(parts: &[&[f32]], op: Reduce, out: &mut [f32]) {
    out.fill(0.0);
    for part in parts {
        for (o, x) in out.iter_mut().zip(part.iter()) {
            *o += x;
        }
    }
    if op == Reduce::Mean {
        let w = parts.len() as f32;
        for o in out.iter_mut() {
            *o /= w;
        }
    }
}

/// What the ranks of a [`ThreadGroup`] share: one exchange slot per rank and a round counter.
struct Exchange {
    slots: Vec<Option<Vec<u8>>>,
    /// Ranks that have deposited in the current round.
    arrived: usize,
    /// Ranks that have read the current round's slots and left.
    left: usize,
    round: u64,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<Exchange>,
    changed: Condvar,
}

/// A group of ranks that are threads of one process.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// The `world` handles of one group, rank 0 first. A rank that waits longer than `timeout`
    /// for the others gets [`CommError::Timeout`].
    pub fn new(world: usize, timeout: Duration) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(Exchange {
                slots: vec![None; world],
                arrived: 0,
                left: 0,
                round: 0,
            }),
            changed: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadGroup {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    fn timeout(&self, during: &'static str) -> CommError {
        CommError::Timeout {
            rank: self.rank,
            world: self.shared.world,
            timeout: self.shared.timeout,
            during,
        }
    }

    /// A rank thread panicked while it held the exchange: the group cannot go on.
    fn poisoned<T>(&self, during: &'static str) -> impl FnOnce(T) -> CommError {
        let rank = self.rank;
        move |_| CommError::Io {
            rank,
            during,
            why: "another rank panicked inside the exchange".into(),
        }
    }

    /// Deposits `mine`, waits for every rank's deposit, gives `read` all of them in rank order,
    /// and returns once every rank has read (so the next round cannot overwrite a slot a slow
    /// reader still needs).
    fn exchange<R>(
        &self,
        mine: Vec<u8>,
        during: &'static str,
        read: impl FnOnce(&[Option<Vec<u8>>]) -> R,
    ) -> Result<R, CommError> {
        let sh = &*self.shared;
        let mut st = sh.state.lock().map_err(self.poisoned(during))?;
        // A round whose readers are still leaving is not ours to join yet.
        while st.arrived == sh.world {
            let (next, t) = sh
                .changed
                .wait_timeout(st, sh.timeout)
                .map_err(self.poisoned(during))?;
            st = next;
            if t.timed_out() && st.arrived == sh.world {
                return Err(self.timeout(during));
            }
        }
        let round = st.round;
        st.slots[self.rank] = Some(mine);
        st.arrived += 1;
        sh.changed.notify_all();
        while st.arrived < sh.world && st.round == round {
            let (next, t) = sh
                .changed
                .wait_timeout(st, sh.timeout)
                .map_err(self.poisoned(during))?;
            st = next;
            if t.timed_out() && st.arrived < sh.world && st.round == round {
                return Err(self.timeout(during));
            }
        }
        let out = read(&st.slots);
        st.left += 1;
        if st.left == sh.world {
            st.slots.iter_mut().for_each(|s| *s = None);
            st.arrived = 0;
            st.left = 0;
            st.round += 1;
            sh.changed.notify_all();
        }
        Ok(out)
    }
}

/// f32 values as the little-endian bytes every group sends.
pub fn f32_to_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`f32_to_bytes`] (a trailing partial value is dropped).
pub fn bytes_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Communicator for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce(&self, data: &mut [f32], op: Reduce) -> Result<(), CommError> {
        let during = "all_reduce";
        let parts = self.exchange(f32_to_bytes(data), during, |slots| {
            slots
                .iter()
                .map(|s| bytes_to_f32(s.as_deref().unwrap_or_default()))
                .collect::<Vec<_>>()
        })?;
        if let Some((other, p)) = parts
            .iter()
            .enumerate()
            .find(|(_, p)| p.len() != data.len())
        {
            return Err(CommError::Mismatch {
                rank: self.rank,
                during,
                len: data.len(),
                other,
                other_len: p.len(),
            });
        }
        let views: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        reduce_in_rank_order(&views, op, data);
        Ok(())
    }

    fn broadcast(&self, data: &mut [u8]) -> Result<(), CommError> {
        let during = "broadcast";
        let root = self.exchange(data.to_vec(), during, |slots| {
            slots[0].clone().unwrap_or_default()
        })?;
        if root.len() != data.len() {
            return Err(CommError::Mismatch {
                rank: self.rank,
                during,
                len: data.len(),
                other: 0,
                other_len: root.len(),
            });
        }
        data.copy_from_slice(&root);
        Ok(())
    }
}

/// The group of one: every collective is the identity (a mean over one rank is the value).
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce(&self, _: &mut [f32], _: Reduce) -> Result<(), CommError> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [u8]) -> Result<(), CommError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn run<R: Send + 'static>(
        world: usize,
        f: impl Fn(ThreadGroup) -> R + Send + Sync + 'static,
    ) -> Vec<R> {
        let f = Arc::new(f);
        let handles: Vec<_> = ThreadGroup::new(world, Duration::from_secs(10))
            .into_iter()
            .map(|g| {
                let f = Arc::clone(&f);
                thread::spawn(move || f(g))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn all_reduce_sums_and_averages_in_rank_order_on_every_rank() {
        let out = run(3, |g| {
            let r = g.rank() as f32;
            let mut a = vec![r, 10.0 * r, 1.0];
            g.all_reduce(&mut a, Reduce::Sum).unwrap();
            let mut m = vec![r];
            g.all_reduce(&mut m, Reduce::Mean).unwrap();
            (a, m)
        });
        for (a, m) in out {
            assert_eq!(a, vec![3.0, 30.0, 3.0]);
            assert_eq!(m, vec![1.0]);
        }
    }

    #[test]
    fn many_rounds_back_to_back_do_not_mix() {
        let out = run(4, |g| {
            let mut acc = Vec::new();
            for round in 0..200 {
                let mut v = vec![(g.rank() * 1000 + round) as f32];
                g.all_reduce(&mut v, Reduce::Sum).unwrap();
                acc.push(v[0]);
            }
            acc
        });
        let want: Vec<f32> = (0..200).map(|r| (6000 + 4 * r) as f32).collect();
        for acc in out {
            assert_eq!(acc, want);
        }
    }

    #[test]
    fn broadcast_copies_rank_zeros_bytes() {
        let out = run(3, |g| {
            let mut id = [g.rank() as u8 + 7; 16];
            g.broadcast(&mut id).unwrap();
            id
        });
        assert!(out.iter().all(|id| *id == [7u8; 16]));
    }

    #[test]
    fn a_rank_that_never_arrives_times_the_others_out() {
        let mut ranks = ThreadGroup::new(2, Duration::from_millis(200));
        let _absent = ranks.pop();
        let mut v = vec![1.0];
        let err = ranks[0].all_reduce(&mut v, Reduce::Sum).unwrap_err();
        assert!(matches!(err, CommError::Timeout { rank: 0, .. }), "{err}");
    }

    #[test]
    fn different_lengths_are_a_mismatch_not_garbage() {
        let out = run(2, |g| {
            let mut v = vec![0.0; 2 + g.rank()];
            g.all_reduce(&mut v, Reduce::Sum).map_err(|e| e.to_string())
        });
        assert!(out
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.contains("different schedules"))));
    }
}
