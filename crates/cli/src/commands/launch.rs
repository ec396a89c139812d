//! Multi-process data-parallel runs: `tperf train --gpus N` (one process per GPU, NCCL between
//! them) and `--ranks N` (N CPU processes, collectives over TCP).
//!
//! The launcher re-runs this binary N times with the same arguments, each child told its place
//! the way torchrun tells it (the variables of [`torchrun`]: RANK, LOCAL_RANK, WORLD_SIZE,
//! LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so a run across nodes can be started by torchrun
//! or any launcher that sets them, and the ranks behave the same. It waits for them; when one
//! fails, it stops the others at once (they would otherwise wait for the dead rank until their
//! collective timeout) and exits with that rank's error. Ctrl-C reaches every child (they share
//! the terminal's process group): each saves after the step the ranks agree on, and the
//! launcher, which ignores the signal itself, exits 130 as a single-process run would.
//!
//! `NCCL_NVLS_ENABLE=0` is set for the children: NVLink SHARP multicast can put the GPUs of a
//! shared host out of service, and a data-parallel all-reduce does not need it.
//!
//! CPU ranks (`--ranks N`) share the host's cores: each child gets `RAYON_NUM_THREADS` = cores /
//! N (at least 1), as torchrun sets OMP_NUM_THREADS, unless the user set the variable (theirs
//! then reaches every rank unchanged). Without it each of the N ranks would start a pool of one
//! thread per core, N × cores threads fighting over the cores instead of sharing them.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tperf_core::comm::{CommError, Communicator, Reduce};
use tperf_runtime::comm::{torchrun, Rendezvous, TcpGroup};

/// How long a rank waits for the others in one collective before it gives up: long enough for
/// a slow step or a checkpoint save on a peer, short enough that a dead peer ends the run.
pub const RANK_TIMEOUT: Duration = Duration::from_secs(120);

/// What this process is in a run.
pub enum Role {
    /// An ordinary single-process run.
    Single,
    /// Start `world` ranks and wait for them.
    Launcher { world: usize },
    /// One rank of a group (started by the launcher, torchrun, or by hand).
    Rank(Rendezvous),
}

/// From `--gpus`/`--ranks` (`world`) and the environment a launcher sets.
pub fn role(world: Option<usize>) -> Result<Role> {
    if let Some(rv) = Rendezvous::from_env(RANK_TIMEOUT)? {
        return Ok(Role::Rank(rv));
    }
    match world {
        None | Some(1) => Ok(Role::Single),
        Some(0) => bail!("--gpus/--ranks 0: a run needs at least one rank"),
        Some(world) => Ok(Role::Launcher { world }),
    }
}

/// The GPU this rank drives: LOCAL_RANK, as torchrun sets it (the rank when unset).
pub fn local_rank(rv: &Rendezvous) -> usize {
    std::env::var(torchrun::LOCAL_RANK)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rv.rank)
}

/// Joins the group this rank belongs to.
pub fn join(rv: &Rendezvous) -> Result<Arc<dyn Communicator>> {
    let group = TcpGroup::join(rv).with_context(|| {
        format!(
            "rank {} of {} could not join the group at {}",
            rv.rank, rv.world, rv.addr
        )
    })?;
    Ok(Arc::new(group))
}

/// A rank's group that counts the wall time spent inside its collectives, for `tperf train
/// --comm-log` (what `tperf bench --ranks N --scaling …` reports as measured communication). On
/// the CPU backend every collective blocks the rank until the group has exchanged, so this is
/// the communication the step did not overlap, waiting for slower ranks included.
pub struct TimedGroup {
    inner: Arc<dyn Communicator>,
    nanos: AtomicU64,
}

impl TimedGroup {
    pub fn new(inner: Arc<dyn Communicator>) -> Self {
        TimedGroup {
            inner,
            nanos: AtomicU64::new(0),
        }
    }

    /// The seconds spent in collectives since the last call.
    pub fn take_seconds(&self) -> f64 {
        self.nanos.swap(0, Ordering::Relaxed) as f64 * 1e-9
    }

    fn timed<T>(&self, collective: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = collective();
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        out
    }
}

impl Communicator for TimedGroup {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn all_reduce(&self, data: &mut [f32], op: Reduce) -> Result<(), CommError> {
        self.timed(|| self.inner.all_reduce(data, op))
    }
    fn broadcast(&self, data: &mut [u8]) -> Result<(), CommError> {
        self.timed(|| self.inner.broadcast(data))
    }
    fn reduce_scatter(
        &self,
        data: &mut [f32],
        counts: &[usize],
        op: Reduce,
    ) -> Result<(), CommError> {
        self.timed(|| self.inner.reduce_scatter(data, counts, op))
    }
    fn all_gather(&self, data: &mut [f32], counts: &[usize]) -> Result<(), CommError> {
        self.timed(|| self.inner.all_gather(data, counts))
    }
}

/// What the ranks compute on, which decides how many threads each gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankDevice {
    /// `--ranks N`: the ranks' kernels share this host's cores.
    Cpu,
    /// `--gpus N`: each rank drives its own GPU; its host threads are left as they are.
    Gpu,
}

/// Threads for each of `local_ranks` CPU ranks sharing `cores`: an even split, at least one.
fn threads_per_rank(cores: usize, local_ranks: usize) -> usize {
    (cores / local_ranks.max(1)).max(1)
}

/// The host's cores as the standard library sees them (cgroup and affinity limits included).
pub fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The `RAYON_NUM_THREADS` the launcher gives each rank: none for GPU ranks, and none when the
/// user set it (`user`: the launcher's own value, which the children inherit).
fn rank_threads(
    device: RankDevice,
    user: Option<&std::ffi::OsStr>,
    cores: usize,
    local_ranks: usize,
) -> Option<usize> {
    match (device, user) {
        (RankDevice::Cpu, None) => Some(threads_per_rank(cores, local_ranks)),
        _ => None,
    }
}

/// The command that starts rank `rank` of `world` on this node, rank 0 listening on `port`.
fn rank_command(
    exe: &std::path::Path,
    args: &[OsString],
    rank: usize,
    world: usize,
    port: u16,
    threads: Option<usize>,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(torchrun::RANK, rank.to_string())
        .env(torchrun::LOCAL_RANK, rank.to_string())
        .env(torchrun::WORLD_SIZE, world.to_string())
        .env(torchrun::LOCAL_WORLD_SIZE, world.to_string())
        .env(torchrun::MASTER_ADDR, "127.0.0.1")
        .env(torchrun::MASTER_PORT, port.to_string())
        .env("NCCL_NVLS_ENABLE", "0");
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    if rank != 0 {
        // Rank 0 speaks for the run; the others' errors still reach the terminal.
        cmd.stdout(Stdio::null());
    }
    cmd
}

/// Starts `world` ranks of this command on this node and waits for all of them.
pub fn run(world: usize, device: RankDevice) -> Result<()> {
    // A free port for rank 0: bound here and released just before the children start; rank 0
    // binds it again at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the ranks to meet on")?
        .port();
    let exe = std::env::current_exe().context("locating the tperf binary to start the ranks")?;
    // The children get the same arguments, --gpus/--ranks included: the launcher's variables
    // make them ranks (`role` reads those first), and the flag tells a rank which device kind
    // it drives.
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // The launcher outlives the children's Ctrl-C handling: it must not die of the signal.
    ctrlc::set_handler(|| {}).context("installing the launcher's Ctrl-C handler")?;
    let user_threads = std::env::var_os("RAYON_NUM_THREADS");
    let threads = rank_threads(device, user_threads.as_deref(), host_cores(), world);
    match threads {
        Some(n) => eprintln!(
            "starting {world} ranks (127.0.0.1:{port}), {n} thread(s) each (RAYON_NUM_THREADS)"
        ),
        None => eprintln!("starting {world} ranks (127.0.0.1:{port})"),
    }
    let mut children: Vec<Child> = Vec::with_capacity(world);
    for rank in 0..world {
        let mut cmd = rank_command(&exe, &args, rank, world, port, threads);
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                stop_all(&mut children);
                return Err(e).with_context(|| format!("starting rank {rank}"));
            }
        }
    }
    wait_all(children)
}

fn stop_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

/// Waits for every rank; the first that fails stops the rest. Exit 130 (interrupted) only when
/// every rank was.
fn wait_all(mut children: Vec<Child>) -> Result<()> {
    let mut status: Vec<Option<ExitStatus>> = vec![None; children.len()];
    loop {
        for (rank, c) in children.iter_mut().enumerate() {
            if status[rank].is_none() {
                status[rank] = c.try_wait().context("waiting for a rank")?;
            }
        }
        if let Some((rank, s)) = status.iter().enumerate().find_map(|(r, s)| {
            s.filter(|s| !s.success() && s.code() != Some(130))
                .map(|s| (r, s))
        }) {
            stop_all(&mut children);
            bail!("rank {rank} failed ({s}); the other ranks were stopped");
        }
        if status.iter().all(Option::is_some) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.iter().flatten().any(|s| s.code() == Some(130)) {
        std::process::exit(130);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A world of one whose all-reduce takes 5 ms, as if it waited for a peer.
    struct SlowSolo;

    impl Communicator for SlowSolo {
        fn rank(&self) -> usize {
            0
        }
        fn world(&self) -> usize {
            1
        }
        fn all_reduce(&self, _: &mut [f32], _: Reduce) -> Result<(), CommError> {
            std::thread::sleep(Duration::from_millis(5));
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

    #[test]
    fn a_timed_group_counts_the_time_inside_collectives_and_resets_when_read() {
        let group = TimedGroup::new(Arc::new(SlowSolo));
        assert_eq!(group.take_seconds(), 0.0);
        let mut v = [0.0f32; 4];
        for _ in 0..3 {
            group.all_reduce(&mut v, Reduce::Sum).unwrap();
        }
        let spent = group.take_seconds();
        assert!((0.015..1.0).contains(&spent), "{spent}");
        assert_eq!(group.take_seconds(), 0.0, "read once, then reset");
        assert_eq!((group.rank(), group.world()), (0, 1));
    }

    #[test]
    fn cpu_ranks_split_the_cores_unless_the_user_chose_a_thread_count() {
        assert_eq!(threads_per_rank(16, 4), 4);
        assert_eq!(
            threads_per_rank(16, 3),
            5,
            "the remainder is left idle, not oversubscribed"
        );
        assert_eq!(threads_per_rank(2, 4), 1, "at least one thread per rank");
        assert_eq!(threads_per_rank(8, 0), 8);
        assert_eq!(rank_threads(RankDevice::Cpu, None, 16, 4), Some(4));
        let user = std::ffi::OsString::from("3");
        assert_eq!(rank_threads(RankDevice::Cpu, Some(&user), 16, 4), None);
        assert_eq!(rank_threads(RankDevice::Gpu, None, 16, 4), None);
    }

    #[test]
    fn every_rank_is_told_every_torchrun_variable() {
        let cmd = rank_command(std::path::Path::new("tperf"), &[], 1, 3, 4242, Some(2));
        let envs: std::collections::BTreeMap<String, String> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect();
        for var in torchrun::ALL {
            assert!(envs.contains_key(var), "{var} is not set: {envs:?}");
        }
        assert_eq!(envs[torchrun::RANK], "1");
        assert_eq!(envs[torchrun::WORLD_SIZE], "3");
        assert_eq!(envs[torchrun::MASTER_PORT], "4242");
        assert_eq!(envs["RAYON_NUM_THREADS"], "2");
        assert_eq!(envs["NCCL_NVLS_ENABLE"], "0");
        let gpu = rank_command(std::path::Path::new("tperf"), &[], 0, 2, 4242, None);
        assert!(!gpu.get_envs().any(|(k, _)| k == "RAYON_NUM_THREADS"));
    }

    #[test]
    fn zero_ranks_is_an_error_and_one_is_a_single_run() {
        // Only valid while no launcher variables are set in the test process.
        if std::env::var_os(torchrun::WORLD_SIZE).is_some() {
            return;
        }
        assert!(role(Some(0)).is_err());
        assert!(matches!(role(Some(1)).unwrap(), Role::Single));
        assert!(matches!(role(None).unwrap(), Role::Single));
        assert!(matches!(
            role(Some(4)).unwrap(),
            Role::Launcher { world: 4 }
        ));
    }
}
