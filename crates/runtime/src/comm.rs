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

/// Why the environment does not describe a rank of a group (see [`Rendezvous::from_env`]).
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error("{name}={value} is not a whole number")]
    NotANumber { name: &'static str, value: String },
    #[error("{} is set but {} is not", torchrun::WORLD_SIZE, torchrun::RANK)]
    NoRank,
    #[error(
        "{}={rank} must be below {}={world}",
        torchrun::RANK,
        torchrun::WORLD_SIZE
    )]
    RankOutOfRange { rank: usize, world: usize },
    #[error(
        "{}:{} = {host}:{port}: {source}",
        torchrun::MASTER_ADDR,
        torchrun::MASTER_PORT
    )]
    Resolve {
        host: String,
        port: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host}:{port} resolves to no address")]
    NoAddress { host: String, port: String },
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
    pub fn from_env(timeout: Duration) -> Result<Option<Rendezvous>, RendezvousError> {
        Self::from_vars(|name| std::env::var(name).ok(), timeout)
    }

    /// [`Rendezvous::from_env`] with the variables read through `var` (the tests' stand-in for
    /// an environment, which a test cannot change without racing the others).
    fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        timeout: Duration,
    ) -> Result<Option<Rendezvous>, RendezvousError> {
        use torchrun::{MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE};
        let Some(world) = var(WORLD_SIZE) else {
            return Ok(None);
        };
        let num = |name: &'static str, value: String| {
            value
                .parse::<usize>()
                .map_err(|_| RendezvousError::NotANumber { name, value })
        };
        let world = num(WORLD_SIZE, world)?;
        let rank = num(RANK, var(RANK).ok_or(RendezvousError::NoRank)?)?;
        if world == 0 || rank >= world {
            return Err(RendezvousError::RankOutOfRange { rank, world });
        }
        let host = var(MASTER_ADDR).unwrap_or_else(|| "127.0.0.1".into());
        let port = var(MASTER_PORT).unwrap_or_else(|| "29500".into());
        let addr = match format!("{host}:{port}").to_socket_addrs() {
            Ok(mut addrs) => addrs.next(),
            Err(source) => return Err(RendezvousError::Resolve { host, port, source }),
        };
        let addr = addr.ok_or(RendezvousError::NoAddress { host, port })?;
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

/// One collective as a rank calls it: sent ahead of the rank's data, so that rank 0 checks
/// every rank's call against its own before anything is reduced or copied
/// ([`TcpGroup::check_counts`]). Ranks that disagree (a different model, batch or flag on one
/// of them, a bug that skips a bucket) would otherwise hang waiting for a message of the wrong
/// size, or reduce unrelated tensors into each other.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    kind: Kind,
    reduce: Option<Reduce>,
    /// The elements of the rank's `data` (bytes for a broadcast).
    elements: usize,
    /// A reduce-scatter's or all-gather's rank-major layout; empty for the others.
    counts: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    AllReduce,
    Broadcast,
    ReduceScatter,
    AllGather,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::AllReduce,
        Kind::Broadcast,
        Kind::ReduceScatter,
        Kind::AllGather,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::AllReduce => "all_reduce",
            Kind::Broadcast => "broadcast",
            Kind::ReduceScatter => "reduce_scatter",
            Kind::AllGather => "all_gather",
        }
    }

    /// The element type the collective moves: its signature's, so one kind never carries two.
    fn dtype(self) -> &'static str {
        match self {
            Kind::Broadcast => "u8",
            _ => "f32",
        }
    }
}

impl Call {
    fn new(kind: Kind, reduce: Option<Reduce>, elements: usize, counts: &[usize]) -> Self {
        Call {
            kind,
            reduce,
            elements,
            counts: counts.to_vec(),
        }
    }

    /// kind (u8), reduction (u8: 0 none, 1 sum, 2 mean), elements (u64), the number of
    /// counts (u64), the counts (u64 each); little-endian.
    fn encode(&self) -> Vec<u8> {
        let kind = Kind::ALL.iter().position(|k| *k == self.kind).unwrap_or(0) as u8;
        let reduce = match self.reduce {
            None => 0u8,
            Some(Reduce::Sum) => 1,
            Some(Reduce::Mean) => 2,
        };
        let mut out = vec![kind, reduce];
        out.extend((self.elements as u64).to_le_bytes());
        out.extend((self.counts.len() as u64).to_le_bytes());
        for c in &self.counts {
            out.extend((*c as u64).to_le_bytes());
        }
        out
    }

    /// The call at the start of `bytes` and how many bytes it took; None when they are not one.
    fn decode(bytes: &[u8]) -> Option<(Call, usize)> {
        let word = |at: usize| -> Option<usize> {
            let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
            usize::try_from(u64::from_le_bytes(b)).ok()
        };
        let kind = *Kind::ALL.get(usize::from(*bytes.first()?))?;
        let reduce = match bytes.get(1)? {
            0 => None,
            1 => Some(Reduce::Sum),
            2 => Some(Reduce::Mean),
            _ => return None,
        };
        let elements = word(2)?;
        let n = word(10)?;
        // A layout has one count per rank; more than the bytes can hold is not a call.
        if n > bytes.len() / 8 {
            return None;
        }
        let counts = (0..n)
            .map(|i| word(18 + 8 * i))
            .collect::<Option<Vec<_>>>()?;
        Some((
            Call {
                kind,
                reduce,
                elements,
                counts,
            },
            18 + 8 * n,
        ))
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind.name())?;
        if let Some(op) = self.reduce {
            write!(f, " ({})", if op == Reduce::Sum { "sum" } else { "mean" })?;
        }
        write!(f, " of {} {} values", self.elements, self.kind.dtype())?;
        if !self.counts.is_empty() {
            write!(f, " in parts {:?}", self.counts)?;
        }
        Ok(())
    }
}

/// The first byte of rank 0's reply: the collective went ahead, and its data follows.
const REPLY_OK: u8 = 0;
/// The ranks disagree: (rank, call) of rank 0 and of the first rank that differs follow.
const REPLY_DISAGREE: u8 = 1;

fn not_a_peer(rank: usize, during: &'static str, what: &str) -> CommError {
    CommError::Io {
        rank,
        during,
        why: format!("{what} is not a tperf collective (a foreign or corrupt stream)"),
    }
}

impl TcpGroup {
    /// A rank other than 0: sends its call and `payload` to rank 0, and returns the data of
    /// rank 0's reply, or the disagreement rank 0 found.
    fn exchange(
        &self,
        link: &mut TcpStream,
        call: &Call,
        payload: &[u8],
    ) -> Result<Vec<u8>, CommError> {
        let during = call.kind.name();
        let mut frame = call.encode();
        frame.extend_from_slice(payload);
        send(link, &frame).map_err(self.err(during))?;
        let mut reply = recv(link).map_err(self.err(during))?;
        match reply.first() {
            Some(&REPLY_OK) => {
                reply.drain(..1);
                Ok(reply)
            }
            Some(&REPLY_DISAGREE) => {
                let side = |at: usize| -> Option<(usize, Call, usize)> {
                    let b: [u8; 8] = reply.get(at..at + 8)?.try_into().ok()?;
                    let rank = usize::try_from(u64::from_le_bytes(b)).ok()?;
                    let (call, len) = Call::decode(&reply[at + 8..])?;
                    Some((rank, call, at + 8 + len))
                };
                let (first, first_call, next) =
                    side(1).ok_or_else(|| not_a_peer(self.rank, during, "rank 0's reply"))?;
                let (second, second_call, _) =
                    side(next).ok_or_else(|| not_a_peer(self.rank, during, "rank 0's reply"))?;
                Err(CommError::Disagree {
                    rank: self.rank,
                    during,
                    first,
                    first_call: first_call.to_string(),
                    second,
                    second_call: second_call.to_string(),
                })
            }
            _ => Err(not_a_peer(self.rank, during, "rank 0's reply")),
        }
    }

    /// Rank 0: receives every other rank's frame and checks its call against `call`, this
    /// rank's: the same collective, reduction, element count and layout. Returns the ranks'
    /// data in rank order (rank 1 first). When one differs, every rank is told which two
    /// disagree and how, so all of them fail at once with the same error, none waiting for
    /// its timeout.
    fn check_counts(
        &self,
        links: &mut [TcpStream],
        call: &Call,
    ) -> Result<Vec<Vec<u8>>, CommError> {
        let during = call.kind.name();
        let mut payloads = Vec::with_capacity(links.len());
        let mut disagreement: Option<(usize, Call)> = None;
        for (i, link) in links.iter_mut().enumerate() {
            let mut frame = recv(link).map_err(self.err(during))?;
            let (theirs, len) = Call::decode(&frame)
                .ok_or_else(|| not_a_peer(0, during, &format!("rank {}'s message", i + 1)))?;
            if theirs != *call && disagreement.is_none() {
                disagreement = Some((i + 1, theirs));
            }
            frame.drain(..len);
            payloads.push(frame);
        }
        let Some((other, theirs)) = disagreement else {
            return Ok(payloads);
        };
        let mut reply = vec![REPLY_DISAGREE];
        reply.extend(0u64.to_le_bytes());
        reply.extend(call.encode());
        reply.extend((other as u64).to_le_bytes());
        reply.extend(theirs.encode());
        for link in links.iter_mut() {
            // A rank that cannot be told fails on its own (its read times out or breaks).
            let _ = send(link, &reply);
        }
        Err(CommError::Disagree {
            rank: 0,
            during,
            first: 0,
            first_call: call.to_string(),
            second: other,
            second_call: theirs.to_string(),
        })
    }

    /// Rank 0's reply to one rank when the ranks agree: the collective's result for it.
    fn reply(
        &self,
        link: &mut TcpStream,
        during: &'static str,
        data: &[u8],
    ) -> Result<(), CommError> {
        let mut frame = Vec::with_capacity(1 + data.len());
        frame.push(REPLY_OK);
        frame.extend_from_slice(data);
        send(link, &frame).map_err(self.err(during))
    }
}

impl Communicator for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, data: &mut [f32], op: Reduce) -> Result<(), CommError> {
        let call = Call::new(Kind::AllReduce, Some(op), data.len(), &[]);
        let during = call.kind.name();
        let mut links = self.links();
        if self.rank != 0 {
            let back = bytes_to_f32(&self.exchange(&mut links[0], &call, &f32_to_bytes(data))?);
            self.check_len(during, data.len(), 0, back.len())?;
            data.copy_from_slice(&back);
            return Ok(());
        }
        let mut parts = vec![data.to_vec()];
        for (i, payload) in self.check_counts(&mut links, &call)?.iter().enumerate() {
            let part = bytes_to_f32(payload);
            // The calls agreed; data of another length than its own call said is a broken peer.
            self.check_len(during, data.len(), i + 1, part.len())?;
            parts.push(part);
        }
        let views: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        reduce_in_rank_order(&views, op, data);
        let out = f32_to_bytes(data);
        for link in links.iter_mut() {
            self.reply(link, during, &out)?;
        }
        Ok(())
    }

    fn broadcast(&self, data: &mut [u8]) -> Result<(), CommError> {
        // The other ranks send their call (and no data) too, so that a length or a collective
        // that differs is caught here like in the others.
        let call = Call::new(Kind::Broadcast, None, data.len(), &[]);
        let during = call.kind.name();
        let mut links = self.links();
        if self.rank != 0 {
            let got = self.exchange(&mut links[0], &call, &[])?;
            self.check_len(during, data.len(), 0, got.len())?;
            data.copy_from_slice(&got);
            return Ok(());
        }
        self.check_counts(&mut links, &call)?;
        for link in links.iter_mut() {
            self.reply(link, during, data)?;
        }
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
        let call = Call::new(Kind::ReduceScatter, Some(op), data.len(), counts);
        let during = call.kind.name();
        self.check_layout(during, data, counts)?;
        let mut links = self.links();
        if self.rank != 0 {
            let mine = part_offset(counts, self.rank);
            let back = bytes_to_f32(&self.exchange(&mut links[0], &call, &f32_to_bytes(data))?);
            self.check_len(during, mine.len(), 0, back.len())?;
            data[mine].copy_from_slice(&back);
            return Ok(());
        }
        let mut parts = vec![data.to_vec()];
        for (i, payload) in self.check_counts(&mut links, &call)?.iter().enumerate() {
            let part = bytes_to_f32(payload);
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
                self.reply(&mut links[r - 1], during, &f32_to_bytes(&reduced))?;
            }
        }
        Ok(())
    }

    /// Every rank sends its part to rank 0, which sends the whole message back to each.
    fn all_gather(&self, data: &mut [f32], counts: &[usize]) -> Result<(), CommError> {
        let call = Call::new(Kind::AllGather, None, data.len(), counts);
        let during = call.kind.name();
        self.check_layout(during, data, counts)?;
        let mut links = self.links();
        if self.rank != 0 {
            let mine = part_offset(counts, self.rank);
            let back =
                bytes_to_f32(&self.exchange(&mut links[0], &call, &f32_to_bytes(&data[mine]))?);
            self.check_len(during, data.len(), 0, back.len())?;
            data.copy_from_slice(&back);
            return Ok(());
        }
        for (i, payload) in self.check_counts(&mut links, &call)?.iter().enumerate() {
            let range = part_offset(counts, i + 1);
            let part = bytes_to_f32(payload);
            self.check_len(during, range.len(), i + 1, part.len())?;
            data[range].copy_from_slice(&part);
        }
        let out = f32_to_bytes(data);
        for link in links.iter_mut() {
            self.reply(link, during, &out)?;
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

    /// Runs `f` on every rank of a group of `world` and returns each rank's error; the run must
    /// end well before the group's timeout (a disagreement is reported, not waited out).
    fn errors_of(
        world: usize,
        f: impl Fn(&TcpGroup) -> Result<(), CommError> + Send + Sync + Clone + 'static,
    ) -> Vec<String> {
        let started = Instant::now();
        let out = group(world, Duration::from_secs(60), move |g| f(&g));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}: a rank waited for its timeout",
            started.elapsed()
        );
        out.into_iter()
            .map(|r| match r.expect("the group forms") {
                Err(e @ CommError::Disagree { .. }) => e.to_string(),
                other => panic!("expected a disagreement, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn ranks_that_pass_different_counts_all_fail_naming_both_counts_instead_of_hanging() {
        let errors = errors_of(3, |g| {
            let mut v = vec![1.0f32; if g.rank() == 2 { 4 } else { 3 }];
            g.all_reduce(&mut v, Reduce::Sum)
        });
        for (rank, e) in errors.iter().enumerate() {
            assert!(e.starts_with(&format!("rank {rank}: all_reduce")), "{e}");
            assert!(
                e.contains("rank 0 passes all_reduce (sum) of 3 f32 values")
                    && e.contains("rank 2 passes all_reduce (sum) of 4 f32 values"),
                "{e}"
            );
        }
    }

    #[test]
    fn ranks_that_issue_different_collectives_reductions_or_layouts_are_refused() {
        // (what rank 1 does differently, what its error must name)
        type Case = (fn(&TcpGroup) -> Result<(), CommError>, &'static str);
        let cases: [Case; 4] = [
            (
                |g| {
                    if g.rank() == 1 {
                        g.broadcast(&mut [0u8; 12])
                    } else {
                        g.all_reduce(&mut [0.0; 3], Reduce::Mean)
                    }
                },
                "rank 1 passes broadcast of 12 u8 values",
            ),
            (
                |g| {
                    let op = if g.rank() == 1 {
                        Reduce::Sum
                    } else {
                        Reduce::Mean
                    };
                    g.all_reduce(&mut [0.0; 3], op)
                },
                "rank 1 passes all_reduce (sum) of 3 f32 values",
            ),
            (
                |g| {
                    let counts: &[usize] = if g.rank() == 1 {
                        &[2, 3, 2]
                    } else {
                        &[3, 2, 2]
                    };
                    g.reduce_scatter(&mut [0.0; 7], counts, Reduce::Mean)
                },
                "rank 1 passes reduce_scatter (mean) of 7 f32 values in parts [2, 3, 2]",
            ),
            (
                |g| g.broadcast(&mut vec![0u8; 8 + g.rank()]),
                "rank 1 passes broadcast of 9 u8 values",
            ),
        ];
        for (f, expected) in cases {
            for e in errors_of(3, f) {
                assert!(e.contains(expected), "{e}");
            }
        }
    }

    #[test]
    fn a_call_survives_its_encoding() {
        let call = Call::new(Kind::ReduceScatter, Some(Reduce::Mean), 7, &[3, 2, 2]);
        let mut bytes = call.encode();
        let len = bytes.len();
        bytes.extend([9u8; 5]); // the data that follows it
        assert_eq!(Call::decode(&bytes), Some((call, len)));
        assert_eq!(Call::decode(&[7u8, 0]), None, "an unknown collective");
        assert_eq!(Call::decode(&bytes[..len - 1]), None, "a truncated layout");
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

    #[test]
    fn a_malformed_environment_says_which_variable_to_fix() {
        let read = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Rendezvous::from_vars(
                move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
                Duration::from_secs(1),
            )
        };
        let rv = read(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "29501")])
            .unwrap()
            .unwrap();
        assert_eq!((rv.rank, rv.world, rv.addr.port()), (1, 2, 29501));
        let err = |vars: &[(&str, &str)]| read(vars).unwrap_err();
        assert!(matches!(
            err(&[("WORLD_SIZE", "two"), ("RANK", "0")]),
            RendezvousError::NotANumber {
                name: "WORLD_SIZE",
                ..
            }
        ));
        assert_eq!(
            err(&[("WORLD_SIZE", "2")]).to_string(),
            "WORLD_SIZE is set but RANK is not"
        );
        assert_eq!(
            err(&[("WORLD_SIZE", "2"), ("RANK", "2")]).to_string(),
            "RANK=2 must be below WORLD_SIZE=2"
        );
        assert!(matches!(
            err(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "port")]),
            RendezvousError::Resolve { .. }
        ));
    }
}
