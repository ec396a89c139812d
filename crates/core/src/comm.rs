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
    /// Two ranks issued different collectives, or the same one over different element counts
    /// or layouts: the exchange would hang or mix unrelated data, so it is refused on every
    /// rank instead.
    #[error("rank {rank}: {during}: rank {first} passes {first_call} but rank {second} passes {second_call}; every rank must issue the same collectives over the same counts (do all ranks run the same model, batch and flags?)")]
    Disagree {
        rank: usize,
        during: &'static str,
        first: usize,
        first_call: String,
        second: usize,
        second_call: String,
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
    /// `data` holds one part per rank in rank order, rank r's `counts[r]` values long (the
    /// layout [`pack_shards`] makes); this rank's own part becomes the reduction over the
    /// ranks of their copies of it. The other parts are left as they were.
    fn reduce_scatter(
        &self,
        data: &mut [f32],
        counts: &[usize],
        op: Reduce,
    ) -> Result<(), CommError>;
    /// The layout of [`Communicator::reduce_scatter`]: every rank's part r becomes rank r's.
    fn all_gather(&self, data: &mut [f32], counts: &[usize]) -> Result<(), CommError>;
}

/// The elements of a tensor of `numel` that rank `rank` of `world` owns under ZeRO-1: the
/// `rank`-th run of ⌈numel/W⌉ (the last rank's may be shorter, or empty when numel < W). Every
/// backend and the checkpoint code split tensors this way, so a shard means the same elements
/// everywhere; [`crate::schedule::options::DataParallel::shard`] is its length's bound.
pub fn shard_range(numel: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let per = numel.div_ceil(world.max(1));
    let lo = (rank * per).min(numel);
    lo..(lo + per).min(numel)
}

/// Each rank's count in the rank-major layout of a bucket of tensors of `numels`: rank r's part
/// is its shard of every tensor, in tensor order.
pub fn shard_counts(numels: &[usize], world: usize) -> Vec<usize> {
    (0..world)
        .map(|r| numels.iter().map(|&n| shard_range(n, r, world).len()).sum())
        .collect()
}

/// The tensors `parts` (in order) rearranged rank-major: rank 0's shard of every tensor, then
/// rank 1's, and so on — the message of a reduce-scatter or all-gather.
pub fn pack_shards(parts: &[&[f32]], world: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for r in 0..world {
        for p in parts {
            out.extend_from_slice(&p[shard_range(p.len(), r, world)]);
        }
    }
    out
}

/// The inverse of [`pack_shards`]: writes `message` back into the tensors.
pub fn unpack_shards(message: &[f32], parts: &mut [&mut [f32]], world: usize) {
    let mut at = 0;
    for r in 0..world {
        for p in parts.iter_mut() {
            let range = shard_range(p.len(), r, world);
            let n = range.len();
            p[range].copy_from_slice(&message[at..at + n]);
            at += n;
        }
    }
}

/// Where rank `rank`'s part starts in the rank-major layout of `counts`.
pub fn part_offset(counts: &[usize], rank: usize) -> std::ops::Range<usize> {
    let lo: usize = counts[..rank].iter().sum();
    lo..lo + counts[rank]
}

/// Checks a rank-major layout against the data it describes.
fn check_counts(
    rank: usize,
    during: &'static str,
    data: &[f32],
    counts: &[usize],
    world: usize,
) -> Result<(), CommError> {
    let total: usize = counts.iter().sum();
    if counts.len() != world || total != data.len() {
        return Err(CommError::Mismatch {
            rank,
            during,
            len: data.len(),
            other: rank,
            other_len: total,
        });
    }
    Ok(())
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

    fn reduce_scatter(
        &self,
        data: &mut [f32],
        counts: &[usize],
        op: Reduce,
    ) -> Result<(), CommError> {
        let during = "reduce_scatter";
        check_counts(self.rank, during, data, counts, self.shared.world)?;
        let mine = part_offset(counts, self.rank);
        let n = data.len();
        // Every rank deposits the whole message and reads the others' copies of its own part.
        let parts = self.exchange(f32_to_bytes(data), during, |slots| {
            slots
                .iter()
                .map(|s| {
                    // Decode only this rank's part, under the exchange's lock.
                    let bytes = s.as_deref().unwrap_or_default();
                    let part = bytes.get(mine.start * 4..mine.end * 4).map(bytes_to_f32);
                    (bytes.len() / 4, part)
                })
                .collect::<Vec<_>>()
        })?;
        let mut views = Vec::with_capacity(parts.len());
        for (other, (len, part)) in parts.iter().enumerate() {
            match part {
                Some(p) if *len == n => views.push(p.as_slice()),
                _ => {
                    return Err(CommError::Mismatch {
                        rank: self.rank,
                        during,
                        len: n,
                        other,
                        other_len: *len,
                    })
                }
            }
        }
        reduce_in_rank_order(&views, op, &mut data[mine]);
        Ok(())
    }

    fn all_gather(&self, data: &mut [f32], counts: &[usize]) -> Result<(), CommError> {
        let during = "all_gather";
        check_counts(self.rank, during, data, counts, self.shared.world)?;
        let mine = part_offset(counts, self.rank);
        let parts = self.exchange(f32_to_bytes(&data[mine]), during, |slots| {
            slots
                .iter()
                .map(|s| bytes_to_f32(s.as_deref().unwrap_or_default()))
                .collect::<Vec<_>>()
        })?;
        for (r, part) in parts.iter().enumerate() {
            let range = part_offset(counts, r);
            if part.len() != range.len() {
                return Err(CommError::Mismatch {
                    rank: self.rank,
                    during,
                    len: range.len(),
                    other: r,
                    other_len: part.len(),
                });
            }
            data[range].copy_from_slice(part);
        }
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
    fn reduce_scatter(&self, _: &mut [f32], _: &[usize], _: Reduce) -> Result<(), CommError> {
        Ok(())
    }
    fn all_gather(&self, _: &mut [f32], _: &[usize]) -> Result<(), CommError> {
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
    fn reduce_scatter_then_all_gather_is_an_all_reduce_over_uneven_shards() {
        // Tensors of 5 and 2 elements over 3 ranks: shards of 2, 2, 1 and 1, 1, 0.
        let out = run(3, |g| {
            let r = g.rank() as f32;
            let a: Vec<f32> = (0..5).map(|i| r * 10.0 + i as f32).collect();
            let b = vec![r, -r];
            let counts = shard_counts(&[5, 2], 3);
            let mut msg = pack_shards(&[&a, &b], 3);
            let mut reduced = msg.clone();
            g.all_reduce(&mut reduced, Reduce::Mean).unwrap();
            g.reduce_scatter(&mut msg, &counts, Reduce::Mean).unwrap();
            let mine = part_offset(&counts, g.rank());
            assert_eq!(msg[mine.clone()], reduced[mine], "own part reduced");
            g.all_gather(&mut msg, &counts).unwrap();
            let (mut a2, mut b2) = (vec![0.0; 5], vec![0.0; 2]);
            unpack_shards(&msg, &mut [&mut a2, &mut b2], 3);
            (msg == reduced, a2, b2)
        });
        for (same, a, b) in out {
            assert!(
                same,
                "reduce-scatter + all-gather = all-reduce, bit for bit"
            );
            assert_eq!(a, vec![10.0, 11.0, 12.0, 13.0, 14.0]);
            assert_eq!(b, vec![1.0, -1.0]);
        }
        assert_eq!(shard_range(5, 2, 3), 4..5);
        assert_eq!(
            shard_range(2, 2, 3),
            2..2,
            "a rank past the end owns nothing"
        );
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
