//! The rank group of a multi-process run over TCP: the control plane of `tperf train --gpus N`
//! (the NCCL unique id rank 0 hands out, the mean loss the log prints) and the data plane of
//! the CPU backend's collectives (`--ranks N`).
//!
//! A star: rank 0 listens at `MASTER_ADDR:MASTER_PORT` (the variables torchrun sets, so a
//! launcher of another tool can start tperf's ranks too), every other rank connects and says
//! its rank. An all-reduce sends each rank's values to rank 0, which reduces them in rank order
//! (the order [`tperf_core::comm::ThreadGroup`] uses, so both give the same bits) and sends the
//! result back. 2(W−1) messages through one host per collective: fine for scalars and for the
//! CPU backend's gradients at the sizes a CPU trains, not a substitute for NCCL's rings.
//!
//! Every read and write has a timeout, and a closed connection is an error: a rank that dies
//! makes the others fail within the timeout with a message naming the collective, never hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tperf_core::comm::{
    bytes_to_f32, f32_to_bytes, part_offset, reduce_in_rank_order, CommError, Communicator, Reduce,
};

/// The variables torchrun sets for each rank it starts, which tperf's launcher sets the same way
/// and a rank reads: spelled here once, for the launcher that writes them, the rank that reads
/// them and the bench that keeps them from leaking into a child that must not be a rank.
pub mod torchrun {
    /// This process's rank in the group, 0 ≤ RANK < WORLD_SIZE.
    pub const RANK: &str = "RANK";
    /// Its rank among the ranks of its node: the GPU it drives.
    pub const LOCAL_RANK: &str = "LOCAL_RANK";
    /// The ranks in the group.
    pub const WORLD_SIZE: &str = "WORLD_SIZE";
    /// The ranks on this node.
    pub const LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
    /// Where rank 0 listens.
    pub const MASTER_ADDR: &str = "MASTER_ADDR";
    pub const MASTER_PORT: &str = "MASTER_PORT";
    /// Every variable above.
    pub const ALL: [&str; 6] = [
        RANK,
        LOCAL_RANK,
        WORLD_SIZE,
        LOCAL_WORLD_SIZE,
        MASTER_ADDR,
        MASTER_PORT,
    ];
}

/// Where the group meets and how long a rank waits for the others.
#[derive(Clone, Debug)]
pub struct Rendezvous {
    pub rank: usize,
    pub world: usize,
    pub addr: SocketAddr,
    pub timeout: Duration,
}

impl Rendezvous {
    /// From the environment torchrun defines: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
    /// None when WORLD_SIZE is unset (a single-process run); an error when it is set but the
    /// rest is missing or malformed.
    pub fn from_env(timeout: Duration) -> Result<Option<Rendezvous>, String> {
        use torchrun::{MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE};
        let Ok(world) = std::env::var(WORLD_SIZE) else {
            return Ok(None);
        };
        let num = |name: &str, v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{name}={v} is not a whole number"))
        };
        let world = num(WORLD_SIZE, world)?;
        let rank = num(
            RANK,
            std::env::var(RANK).map_err(|_| format!("{WORLD_SIZE} is set but {RANK} is not"))?,
        )?;
        if world == 0 || rank >= world {
            return Err(format!("{RANK}={rank} must be below {WORLD_SIZE}={world}"));
        }
        let host = std::env::var(MASTER_ADDR).unwrap_or_else(|_| "127.0.0.1".into());
        let port = std::env::var(MASTER_PORT).unwrap_or_else(|_| "29500".into());
        let addr = format!("{host}:{port}")
            .to_socket_addrs()
            .map_err(|e| format!("{MASTER_ADDR}:{MASTER_PORT} = {host}:{port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}:{port} resolves to no address"))?;
        Ok(Some(Rendezvous {
            rank,
            world,
            addr,
            timeout,
        }))
    }
}

/// One rank's connections: rank 0 holds one per other rank (index rank − 1), the others one to
/// rank 0.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    timeout: Duration,
    links: Mutex<Vec<TcpStream>>,
}

impl TcpGroup {
    /// Rank 0: listen on `listener` (bound by the caller, so that a launcher can bind port 0 and
    /// pass the port it got to the others) and accept the other ranks.
    pub fn serve(
        listener: TcpListener,
        world: usize,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        let io = |why: std::io::Error| CommError::Io {
            rank: 0,
            during: "accepting the other ranks",
            why: why.to_string(),
        };
        listener.set_nonblocking(true).map_err(io)?;
        let deadline = Instant::now() + timeout;
        let mut links: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        let mut joined = 0;
        while joined < world - 1 {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(io)?;
                    configure(&s, timeout).map_err(io)?;
                    let mut r = [0u8; 8];
                    s.read_exact(&mut r).map_err(io)?;
                    let r = u64::from_le_bytes(r) as usize;
                    let slot = r.checked_sub(1).and_then(|i| links.get_mut(i));
                    match slot {
                        Some(slot @ None) => {
                            *slot = Some(s);
                            joined += 1;
                        }
                        _ => {
                            return Err(CommError::Io {
                                rank: 0,
                                during: "accepting the other ranks",
                                why: format!(
                                    "a peer said it is rank {r} (of {world}) twice or out of range"
                                ),
                            })
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(CommError::Timeout {
                            rank: 0,
                            world,
                            timeout,
                            during: "waiting for the other ranks to connect",
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(io(e)),
            }
        }
        Ok(TcpGroup {
            rank: 0,
            world,
            timeout,
            links: Mutex::new(links.into_iter().flatten().collect()),
        })
    }

    /// Any rank of `rv`: rank 0 binds and serves, the others connect (retrying until rank 0 is
    /// up or the timeout passes).
    pub fn join(rv: &Rendezvous) -> Result<Self, CommError> {
        if rv.rank == 0 {
            let listener = TcpListener::bind(rv.addr).map_err(|e| CommError::Io {
                rank: 0,
                during: "listening for the other ranks",
                why: format!("{}: {e}", rv.addr),
            })?;
            return Self::serve(listener, rv.world, rv.timeout);
        }
        let deadline = Instant::now() + rv.timeout;
        let mut s = loop {
            match TcpStream::connect_timeout(&rv.addr, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    return Err(CommError::Io {
                        rank: rv.rank,
                        during: "connecting to rank 0",
                        why: format!("{}: {e}", rv.addr),
                    })
                }
            }
        };
        let io = |why: std::io::Error| CommError::Io {
            rank: rv.rank,
            during: "connecting to rank 0",
            why: why.to_string(),
        };
        configure(&s, rv.timeout).map_err(io)?;
        s.write_all(&(rv.rank as u64).to_le_bytes()).map_err(io)?;
        Ok(TcpGroup {
            rank: rv.rank,
            world: rv.world,
            timeout: rv.timeout,
            links: Mutex::new(vec![s]),
        })
    }

    fn err(&self, during: &'static str) -> impl Fn(std::io::Error) -> CommError + '_ {
        move |e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => CommError::Timeout {
                rank: self.rank,
                world: self.world,
                timeout: self.timeout,
                during,
            },
            _ => CommError::Io {
                rank: self.rank,
                during,
                why: format!("{e} (a rank exited?)"),
            },
        }
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<TcpStream>> {
        // A poisoned lock means a thread of this rank panicked mid-collective; the streams are
        // still usable for the error the next call reports.
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn configure(s: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))
}

fn send(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(&(bytes.len() as u64).to_le_bytes())?;
    s.write_all(bytes)
}

fn recv(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    // A frame never exceeds what a collective of this run sends; a huge length is a corrupt or
    // foreign stream, not a request to allocate it.
    if len > 1 << 36 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes: not a tperf peer"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

impl Communicator for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, data: &mut [f32], op: Reduce) -> Result<(), CommError> {
        let during = "all_reduce";
        let mut links = self.links();
        if self.rank != 0 {
            send(&mut links[0], &f32_to_bytes(data)).map_err(self.err(during))?;
            let back = bytes_to_f32(&recv(&mut links[0]).map_err(self.err(during))?);
            if back.len() != data.len() {
                return Err(CommError::Mismatch {
                    rank: self.rank,
                    during,
                    len: data.len(),
                    other: 0,
                    other_len: back.len(),
                });
            }
            data.copy_from_slice(&back);
            return Ok(());
        }
        let mut parts = vec![data.to_vec()];
        for (i, link) in links.iter_mut().enumerate() {
            let part = bytes_to_f32(&recv(link).map_err(self.err(during))?);
            if part.len() != data.len() {
                return Err(CommError::Mismatch {
                    rank: 0,
                    during,
                    len: data.len(),
                    other: i + 1,
                    other_len: part.len(),
                });
            }
            parts.push(part);
        }
        let views: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        reduce_in_rank_order(&views, op, data);
        let out = f32_to_bytes(data);
        for link in links.iter_mut() {
            send(link, &out).map_err(self.err(during))?;
        }
        Ok(())
    }

    fn broadcast(&self, data: &mut [u8]) -> Result<(), CommError> {
        let during = "broadcast";
        let mut links = self.links();
        if self.rank == 0 {
            for link in links.iter_mut() {
                send(link, data).map_err(self.err(during))?;
            }
            return Ok(());
        }
        let got = recv(&mut links[0]).map_err(self.err(during))?;
        if got.len() != data.len() {
            return Err(CommError::Mismatch {
                rank: self.rank,
                during,
                len: data.len(),
                other: 0,
                other_len: got.len(),
            });
        }
        data.copy_from_slice(&got);
        Ok(())
    }

    /// Rank 0 gathers every rank's whole message, reduces each part in rank order and sends
    /// each rank back its own part: the star's reduce-scatter.
    fn reduce_scatter(
        &self,
        data: &mut [f32],
        counts: &[usize],
        op: Reduce,
    ) -> Result<(), CommError> {
        let during = "reduce_scatter";
        self.check_layout(during, data, counts)?;
        let mut links = self.links();
        if self.rank != 0 {
            send(&mut links[0], &f32_to_bytes(data)).map_err(self.err(during))?;
            let mine = part_offset(counts, self.rank);
            let back = bytes_to_f32(&recv(&mut links[0]).map_err(self.err(during))?);
            self.check_len(during, mine.len(), 0, back.len())?;
            data[mine].copy_from_slice(&back);
            return Ok(());
        }
        let mut parts = vec![data.to_vec()];
        for (i, link) in links.iter_mut().enumerate() {
            let part = bytes_to_f32(&recv(link).map_err(self.err(during))?);
            self.check_len(during, data.len(), i + 1, part.len())?;
            parts.push(part);
        }
        for r in 0..self.world {
            let range = part_offset(counts, r);
            let views: Vec<&[f32]> = parts.iter().map(|p| &p[range.clone()]).collect();
            let mut reduced = vec![0.0; range.len()];
            reduce_in_rank_order(&views, op, &mut reduced);
            if r == 0 {
                data[range].copy_from_slice(&reduced);
            } else {
                send(&mut links[r - 1], &f32_to_bytes(&reduced)).map_err(self.err(during))?;
            }
        }
        Ok(())
    }

    /// Every rank sends its part to rank 0, which sends the whole message back to each.
    fn all_gather(&self, data: &mut [f32], counts: &[usize]) -> Result<(), CommError> {
        let during = "all_gather";
        self.check_layout(during, data, counts)?;
        let mut links = self.links();
        if self.rank != 0 {
            let mine = part_offset(counts, self.rank);
            send(&mut links[0], &f32_to_bytes(&data[mine])).map_err(self.err(during))?;
            let back = bytes_to_f32(&recv(&mut links[0]).map_err(self.err(during))?);
            self.check_len(during, data.len(), 0, back.len())?;
            data.copy_from_slice(&back);
            return Ok(());
        }
        for (i, link) in links.iter_mut().enumerate() {
            let range = part_offset(counts, i + 1);
            let part = bytes_to_f32(&recv(link).map_err(self.err(during))?);
            self.check_len(during, range.len(), i + 1, part.len())?;
            data[range].copy_from_slice(&part);
        }
        let out = f32_to_bytes(data);
        for link in links.iter_mut() {
            send(link, &out).map_err(self.err(during))?;
        }
        Ok(())
    }
}

impl TcpGroup {
    fn check_len(
        &self,
        during: &'static str,
        len: usize,
        other: usize,
        other_len: usize,
    ) -> Result<(), CommError> {
        if len == other_len {
            return Ok(());
        }
        Err(CommError::Mismatch {
            rank: self.rank,
            during,
            len,
            other,
            other_len,
        })
    }

    fn check_layout(
        &self,
        during: &'static str,
        data: &[f32],
        counts: &[usize],
    ) -> Result<(), CommError> {
        if counts.len() != self.world {
            return self.check_len(during, self.world, self.rank, counts.len());
        }
        self.check_len(during, data.len(), self.rank, counts.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// A group of `world` ranks as threads over loopback TCP; `f` runs on each.
    fn group<R: Send + 'static>(
        world: usize,
        timeout: Duration,
        f: impl Fn(TcpGroup) -> R + Send + Sync + Clone + 'static,
    ) -> Vec<Result<R, CommError>> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut handles = Vec::new();
        let f0 = f.clone();
        handles.push(thread::spawn(move || {
            TcpGroup::serve(listener, world, timeout).map(f0)
        }));
        for rank in 1..world {
            let f = f.clone();
            handles.push(thread::spawn(move || {
                let rv = Rendezvous {
                    rank,
                    world,
                    addr,
                    timeout,
                };
                TcpGroup::join(&rv).map(f)
            }));
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn tcp_all_reduce_and_broadcast_agree_with_the_thread_group() {
        let out = group(3, Duration::from_secs(10), |g| {
            let r = g.rank() as f32;
            let mut v = vec![r + 0.1, -r, 2.0];
            g.all_reduce(&mut v, Reduce::Mean).unwrap();
            let mut id = [g.rank() as u8; 8];
            g.broadcast(&mut id).unwrap();
            for _ in 0..50 {
                let mut s = [1.0f32];
                g.all_reduce(&mut s, Reduce::Sum).unwrap();
                assert_eq!(s[0], 3.0);
            }
            (v, id)
        });
        let mut want = vec![0.0f32; 3];
        let parts: Vec<Vec<f32>> = (0..3)
            .map(|r| vec![r as f32 + 0.1, -(r as f32), 2.0])
            .collect();
        let views: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        reduce_in_rank_order(&views, Reduce::Mean, &mut want);
        for r in out {
            let (v, id) = r.unwrap();
            assert_eq!(v, want, "bit-identical to the rank-order reduction");
            assert_eq!(id, [0u8; 8]);
        }
    }

    #[test]
    fn tcp_reduce_scatter_and_all_gather_agree_with_the_thread_group() {
        let counts = [3usize, 2, 2];
        let out = group(3, Duration::from_secs(10), move |g| {
            let r = g.rank() as f32;
            let mut v: Vec<f32> = (0..7).map(|i| r * 0.5 + i as f32).collect();
            let mut want = v.clone();
            g.all_reduce(&mut want, Reduce::Mean).unwrap();
            g.reduce_scatter(&mut v, &counts, Reduce::Mean).unwrap();
            let mine = part_offset(&counts, g.rank());
            assert_eq!(v[mine.clone()], want[mine]);
            g.all_gather(&mut v, &counts).unwrap();
            (v, want)
        });
        for r in out {
            let (v, want) = r.unwrap();
            assert_eq!(v, want, "bit-identical to the all-reduce");
        }
    }

    #[test]
    fn a_rank_that_dies_fails_the_others_instead_of_hanging() {
        let out = group(3, Duration::from_secs(5), |g| {
            if g.rank() == 2 {
                return Ok(()); // exits: its connection closes
            }
            let mut v = vec![1.0];
            g.all_reduce(&mut v, Reduce::Sum)
        });
        let rank0 = out[0].as_ref().unwrap();
        let err = rank0.as_ref().unwrap_err().to_string();
        assert!(err.contains("all_reduce"), "{err}");
    }

    #[test]
    fn missing_ranks_time_out_at_the_rendezvous() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = TcpGroup::serve(listener, 2, Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(matches!(err, CommError::Timeout { .. }), "{err}");
    }

    #[test]
    fn the_environment_is_read_like_torchrun_sets_it() {
        // Only the parser: no variables are set in this process.
        assert!(Rendezvous::from_env(Duration::from_secs(1))
            .unwrap()
            .is_none());
    }
}
