//! CUDA graphs of repeated steps: a training step (or any step the caller marks with
//! `Backend::begin_step` / `end_step`) is captured once and then replayed with one
//! `cuGraphLaunch`, so the host no longer pays a kernel launch (several microseconds) for each of
//! the step's hundreds of kernels.
//!
//! The schedule still runs on the host every step — it allocates, issues ops and frees exactly as
//! in an eager step — but in a replayed step the backend launches nothing: it checks that each
//! action (the zeroing of a fresh tensor, an op on its buffers) is the one captured at the same
//! position, with the same device pointers, and launches the graph at `end_step`. The caching
//! allocator is deterministic (best fit, lowest address first, over the same set of free blocks)
//! so a step that allocates and frees the same shapes gets the same pointers every time; the
//! comparison proves it rather than assuming it.
//!
//! What changes between otherwise identical steps lives in device memory, not in kernel
//! arguments: the step's *dynamic scalars* (AdamW's learning rate and bias corrections, a decode
//! step's position) are staged on the host as the ops arrive and copied to the device just before
//! the graph launches; a kernel that has them takes them as arguments too, and reads the device
//! copy only when handed a non-null pointer to it (in a captured step).
//!
//! Where a step is not capturable the backend falls back to running it eagerly, and says why in
//! [`GraphStats`]: a read or write of host memory inside the step (a loss read),
//! an action that differs from the captured one (another batch shape, an allocator miss), or a
//! failure of the capture itself. The actions already issued in the step are then replayed
//! eagerly from the log kept for this purpose, so a fallback changes the speed of a step, never
//! its result.

use cudarc::driver::{result as cu, sys};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;
use tperf_core::backend::OpCall;
use tperf_core::ops::attention::Attention;
use tperf_core::ops::embedding::Embedding;
use tperf_core::ops::kv_cache::KvAppend;
use tperf_core::ops::paged_attention::{PagedAttention, SeqLens};
use tperf_core::ops::sampling::{Sample, Sampling};
use tperf_core::ops::{rope, Op};

/// Captures of one step kind in a row that were never replayed (each found the next step
/// different) before the kind runs eagerly for good: a step whose shape keeps changing is not
/// recaptured (a capture costs about as much as an eager step) for ever. A step kind whose
/// replays work again after a change (a new model under the same key, the allocator's cache
/// settling after a few steps) resets the count.
const MAX_CAPTURES: u32 = 3;

/// 32-bit words of dynamic scalars a step may stage (AdamW stages 3 per parameter group).
pub(crate) const SCALAR_WORDS: usize = 16 * 1024;

/// One thing a step does to the device, as replay compares it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    /// A fresh tensor is zeroed.
    Zero { ptr: u64, bytes: u64 },
    /// An op with its per-step scalars removed, on these input and output buffers.
    Exec {
        op: Op,
        inputs: Vec<u64>,
        outputs: Vec<u64>,
    },
}

impl Action {
    /// Whether this is the zeroing of `bytes` at `ptr`.
    pub fn is_zero(&self, ptr: u64, bytes: u64) -> bool {
        matches!(*self, Action::Zero { ptr: p, bytes: b } if (p, b) == (ptr, bytes))
    }

    /// Whether this is `op` (its dynamic scalars removed, [`split_dynamic`]) on buffers at
    /// `inputs` and `outputs`: the pointers first, which differ where the step does.
    pub fn is_exec(&self, op: &Op, inputs: &[u64], outputs: &[u64]) -> bool {
        matches!(self, Action::Exec { op: o, inputs: i, outputs: w }
            if i[..] == *inputs && w[..] == *outputs && o == op)
    }
}

/// What a fallback replays eagerly: the step's actions so far, as issued. The log is one
/// vector kept across steps ([`Graphs::pending`]), so an op call is moved into it, not boxed: a
/// replayed step allocates nothing for it.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Pending {
    Zero { ptr: u64, bytes: u64 },
    Exec(OpCall),
}

/// The op as graph replay compares it, with the scalars that may differ from step to step
/// (which kernels read from device memory, see the module docs) appended to `scalars`: AdamW's
/// learning rate and bias corrections, a decode step's position — the rope and embedding
/// offset, where the KV cache append writes, how many keys flash attention reads — and the
/// sampling settings. Only values that no launch configuration and no host-side decision depend
/// on may be dynamic: flash attention's grid follows the queries, not the keys; the naive
/// kernels' matmul shapes follow the keys, so their key count stays in the comparison (and a
/// growing cache is not replayed with them). An op with no dynamic scalar is its own comparison
/// (borrowed, not cloned: most of a step's ops).
pub(crate) fn split_dynamic<'a>(op: &'a Op, scalars: &mut Vec<u32>) -> Cow<'a, Op> {
    let word = |x: usize| x as i32 as u32;
    let fixed = match op {
        Op::Rope(r) => {
            scalars.push(word(r.pos_offset));
            Op::Rope(rope::Rope {
                pos_offset: 0,
                ..*r
            })
        }
        Op::Embedding(e) => {
            scalars.push(word(e.pos_offset));
            Op::Embedding(Embedding {
                pos_offset: 0,
                ..*e
            })
        }
        Op::KvAppend(k) => {
            scalars.push(word(k.pos));
            Op::KvAppend(KvAppend { pos: 0, ..*k })
        }
        Op::FlashAttention(a) => {
            scalars.push(word(a.tk));
            Op::FlashAttention(Attention { tk: 0, ..*a })
        }
        Op::AdamW(a) => {
            let h = &a.hyper;
            let t = h.step.max(1) as i32;
            let c1 = (1.0 - h.beta1.powi(t)) as f32;
            let c2 = (1.0 - h.beta2.powi(t)) as f32;
            scalars.extend([(h.lr as f32).to_bits(), c1.to_bits(), c2.to_bits()]);
            let mut fixed = *a;
            fixed.hyper.lr = 0.0;
            fixed.hyper.step = 0;
            Op::AdamW(fixed)
        }
        // The settings (seeds above all, new every step of a served request) are data; the
        // shape of the batch and whether rows bring their own settings are structure.
        Op::Sample(s) => {
            scalars.extend(crate::ops::sample_words(s));
            Op::Sample(Sample {
                sampling: Sampling::default(),
                per_row: vec![Sampling::default(); s.per_row.len()],
                ..s.clone()
            })
        }
        // A ragged step reads its positions, context lengths and block tables from device
        // tensors, and its launches follow the rows and the block table's width only
        // (ops/decode.rs covers every key the table can name): the host's lengths, which give
        // the op its cost, change every decode step without changing what is launched.
        Op::PagedAttention(a) => Op::PagedAttention(PagedAttention {
            seqs: a
                .seqs
                .iter()
                .map(|s| SeqLens {
                    q_len: s.q_len,
                    ctx_len: 0,
                })
                .collect(),
            ..a.clone()
        }),
        other => return Cow::Borrowed(other),
    };
    Cow::Owned(fixed)
}

/// One captured step, ready to launch.
pub(crate) struct Captured {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    actions: Vec<Action>,
}

impl Drop for Captured {
    fn drop(&mut self) {
        // SAFETY: `exec` and `graph` were created by instantiate and end_capture and are owned by
        // this Captured only. The driver frees an executable graph still in flight when it
        // completes, launches never read the template `graph`, and CudaBackend's field order
        // drops the graphs before the allocator frees the memory their kernels address.
        unsafe {
            let _ = cu::graph::exec_destroy(self.exec);
            let _ = cu::graph::destroy(self.graph);
        }
    }
}

#[derive(Default)]
struct StepKind {
    /// Steps begun under this key.
    seen: u64,
    /// Captures since the last successful replay.
    captures: u32,
    graph: Option<Captured>,
    /// Why this step runs eagerly from now on.
    refused: Option<String>,
}

/// Replayed steps whose host time [`GraphStats`] keeps (the latest; 8 bytes each).
const HOST_SAMPLES: usize = 4096;

/// How often steps were captured, replayed, or run eagerly, and why not captured.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GraphStats {
    pub captured: u64,
    pub replayed: u64,
    /// Steps run eagerly: warm-up steps, and steps with graphs off or refused.
    pub eager: u64,
    /// Steps that began as a capture or a replay and finished eagerly.
    pub fell_back: u64,
    /// (step key, reason) for each step kind that runs eagerly for good.
    pub refused: Vec<(String, String)>,
    /// Host seconds of each replayed step (the latest [`HOST_SAMPLES`], in no particular
    /// order), measured with `Instant` from the entry of `begin_step` to the return of the
    /// step's `cuGraphLaunch`: the schedule run on the host, every action compared with the
    /// captured one, the step's scalars copied, the launch. The device runs none of the step
    /// meanwhile, so where the caller waits for each step (the bench, generation) this time is
    /// in series with the graph's. What the caller does outside the step (writing the token
    /// ids, reading the sampled ones) is not in it.
    #[serde(skip)]
    pub replay_host_seconds: Vec<f64>,
}

impl GraphStats {
    /// Adds `other`'s counts (a table's rows, each from its own backend); reasons once each.
    pub fn add(&mut self, other: &GraphStats) {
        self.captured += other.captured;
        self.replayed += other.replayed;
        self.eager += other.eager;
        self.fell_back += other.fell_back;
        for r in &other.refused {
            if !self.refused.contains(r) {
                self.refused.push(r.clone());
            }
        }
        self.replay_host_seconds
            .extend_from_slice(&other.replay_host_seconds);
    }

    /// The median of [`Self::replay_host_seconds`]; None before any step was replayed.
    pub fn replay_host_median_seconds(&self) -> Option<f64> {
        let mut v = self.replay_host_seconds.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    /// Records a replayed step's host seconds, keeping the latest [`HOST_SAMPLES`].
    fn record_replay_host(&mut self, seconds: f64) {
        if self.replay_host_seconds.len() < HOST_SAMPLES {
            self.replay_host_seconds.push(seconds);
        } else {
            // `replayed` counts this step already: its slot in a ring of the latest.
            let slot = (self.replayed as usize - 1) % HOST_SAMPLES;
            self.replay_host_seconds[slot] = seconds;
        }
    }

    /// One line for a table's notes or a run's summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "CUDA graphs: {} step(s) captured, {} replayed, {} eager",
            self.captured, self.replayed, self.eager
        );
        if self.fell_back > 0 {
            s += &format!(", {} fell back to eager", self.fell_back);
        }
        if let Some(host) = self.replay_host_median_seconds() {
            s += &format!(
                "; host time of a replayed step {:.3} ms (median of {}, begin_step to cuGraphLaunch)",
                host * 1e3,
                self.replay_host_seconds.len()
            );
        }
        for (key, why) in &self.refused {
            s += &format!("; not captured: {key}: {why}");
        }
        s
    }
}

pub(crate) enum Mode {
    /// Outside a step, or inside one that runs eagerly.
    Eager,
    Capture {
        key: String,
        actions: Vec<Action>,
    },
    /// The step kind's graph is taken out of its map for the step, so that each action is
    /// compared with no look-up by key; `finish_replay` puts it back.
    Replay {
        key: String,
        captured: Captured,
        cursor: usize,
    },
}

/// The graph state of a backend: whether graphs are on, the step in progress, and one captured
/// graph per step kind.
pub(crate) struct Graphs {
    pub enabled: bool,
    pub mode: Mode,
    kinds: HashMap<String, StepKind>,
    pub stats: GraphStats,
    /// Scalars staged by the current captured or replayed step, copied to the device before
    /// its graph launches.
    pub scalars: Vec<u32>,
    /// The actions of the current captured or replayed step as issued, for a fallback; empty
    /// outside one, its capacity kept from step to step.
    pub pending: Vec<Pending>,
    /// When the current captured or replayed step's `begin_step` was entered.
    began: Option<Instant>,
}

/// What `begin_step` decided.
pub(crate) enum Begin {
    Eager,
    Capture,
    Replay,
}

impl Graphs {
    pub fn new(enabled: bool) -> Self {
        Graphs {
            enabled,
            mode: Mode::Eager,
            kinds: HashMap::new(),
            stats: GraphStats::default(),
            scalars: Vec::new(),
            pending: Vec::new(),
            began: None,
        }
    }

    pub fn in_step_graph(&self) -> bool {
        !matches!(self.mode, Mode::Eager)
    }

    /// Decides how the step `key` runs: the first time eagerly (it compiles kernels, plans
    /// matmuls and fills the allocator's cache), the second time captured, then replayed.
    /// `began` is when the caller's `begin_step` was entered.
    pub fn begin(&mut self, key: &str, allowed: bool, began: Instant) -> Begin {
        self.scalars.clear();
        self.pending.clear();
        self.began = Some(began);
        // The key is copied only the first time it is seen.
        if !self.kinds.contains_key(key) {
            self.kinds.insert(key.to_string(), StepKind::default());
        }
        let Some(kind) = self.kinds.get_mut(key) else {
            unreachable!("inserted above")
        };
        kind.seen += 1;
        if !(self.enabled && allowed) || kind.refused.is_some() || kind.seen == 1 {
            self.stats.eager += 1;
            self.mode = Mode::Eager;
            return Begin::Eager;
        }
        if let Some(captured) = kind.graph.take() {
            self.mode = Mode::Replay {
                key: key.to_string(),
                captured,
                cursor: 0,
            };
            return Begin::Replay;
        }
        self.mode = Mode::Capture {
            key: key.to_string(),
            actions: Vec::new(),
        };
        Begin::Capture
    }

    /// Whether the zeroing of `bytes` at `ptr` is the next action of the captured step being
    /// replayed; advances if so.
    pub fn replay_matches_zero(&mut self, ptr: u64, bytes: u64) -> bool {
        let Mode::Replay {
            captured, cursor, ..
        } = &mut self.mode
        else {
            return false;
        };
        let hit = captured
            .actions
            .get(*cursor)
            .is_some_and(|a| a.is_zero(ptr, bytes));
        *cursor += usize::from(hit);
        hit
    }

    /// Whether `op` (its dynamic scalars removed, [`split_dynamic`]) on buffers at `inputs` and
    /// `outputs` is the next action of the captured step being replayed; advances if so.
    pub fn replay_matches_exec(&mut self, op: &Op, inputs: &[u64], outputs: &[u64]) -> bool {
        let Mode::Replay {
            captured, cursor, ..
        } = &mut self.mode
        else {
            return false;
        };
        let hit = captured
            .actions
            .get(*cursor)
            .is_some_and(|a| a.is_exec(op, inputs, outputs));
        *cursor += usize::from(hit);
        hit
    }

    /// Logs an action of the current step for a fallback, and while capturing records it.
    pub fn push(&mut self, action: Option<Action>, pending: Pending) {
        match &mut self.mode {
            Mode::Capture { actions, .. } => {
                actions.extend(action);
                self.pending.push(pending);
            }
            Mode::Replay { .. } => self.pending.push(pending),
            Mode::Eager => {}
        }
    }

    /// Ends the captured or replayed step eagerly: returns the actions to run now, refuses the
    /// step kind when `refuse` says why (a replay mismatch only drops the graph, so the step is
    /// captured again while captures remain).
    pub fn fall_back(&mut self, why: &str, refuse: bool) -> Vec<Pending> {
        let mode = std::mem::replace(&mut self.mode, Mode::Eager);
        // A replay's graph is dropped with its mode: the step is captured again.
        let key = match mode {
            Mode::Capture { key, .. } | Mode::Replay { key, .. } => key,
            Mode::Eager => return Vec::new(),
        };
        let pending = std::mem::take(&mut self.pending);
        self.stats.fell_back += 1;
        self.scalars.clear();
        let kind = self.kinds.entry(key.clone()).or_default();
        kind.graph = None;
        if refuse || kind.captures >= MAX_CAPTURES {
            let why = if refuse {
                why.to_string()
            } else {
                format!("{why} (after {MAX_CAPTURES} captures in a row, none replayed)")
            };
            kind.refused = Some(why.clone());
            self.stats.refused.push((key, why));
        }
        pending
    }

    /// Stores the graph the capture of the current step produced; the caller launches it.
    pub fn finish_capture(&mut self, graph: sys::CUgraph, exec: sys::CUgraphExec) {
        let Mode::Capture { key, actions, .. } = std::mem::replace(&mut self.mode, Mode::Eager)
        else {
            return;
        };
        self.pending.clear();
        let kind = self.kinds.entry(key).or_default();
        kind.captures += 1;
        kind.graph = Some(Captured {
            graph,
            exec,
            actions,
        });
        self.stats.captured += 1;
    }

    /// The graph of the replayed step when every captured action was matched, and the step ends.
    pub fn finish_replay(&mut self) -> Result<sys::CUgraphExec, &'static str> {
        let Mode::Replay {
            captured, cursor, ..
        } = &self.mode
        else {
            return Err("no step is being replayed");
        };
        if *cursor != captured.actions.len() {
            return Err("the step issued fewer actions than the captured one");
        }
        let Mode::Replay { key, captured, .. } = std::mem::replace(&mut self.mode, Mode::Eager)
        else {
            unreachable!("matched above")
        };
        let exec = captured.exec;
        let kind = self.kinds.entry(key).or_default();
        kind.captures = 0;
        kind.graph = Some(captured);
        self.pending.clear();
        self.stats.replayed += 1;
        Ok(exec)
    }

    /// Records the host time of the step just replayed, now that its graph is launched.
    pub fn replay_launched(&mut self) {
        if let Some(began) = self.began.take() {
            self.stats.record_replay_host(began.elapsed().as_secs_f64());
        }
    }

    /// Drops every captured graph (before the backend's memory goes away).
    pub fn clear(&mut self) {
        self.mode = Mode::Eager;
        self.pending.clear();
        self.kinds.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_host_times_keep_the_latest_and_their_median() {
        let mut stats = GraphStats::default();
        assert_eq!(stats.replay_host_median_seconds(), None);
        for i in 0..HOST_SAMPLES + 10 {
            stats.replayed += 1;
            stats.record_replay_host(if i < 10 { 1.0 } else { 2e-4 });
        }
        // The ring overwrote the ten oldest (1 s each).
        assert_eq!(stats.replay_host_seconds.len(), HOST_SAMPLES);
        assert!(stats.replay_host_seconds.iter().all(|&s| s == 2e-4));
        assert_eq!(stats.replay_host_median_seconds(), Some(2e-4));
        assert!(stats
            .summary()
            .contains("host time of a replayed step 0.200 ms"));
        let mut odd = GraphStats {
            replay_host_seconds: vec![3.0, 1.0, 2.0],
            ..GraphStats::default()
        };
        assert_eq!(odd.replay_host_median_seconds(), Some(2.0));
        odd.add(&GraphStats {
            replay_host_seconds: vec![4.0],
            ..GraphStats::default()
        });
        assert_eq!(odd.replay_host_median_seconds(), Some(2.5));
    }

    #[test]
    fn ops_without_dynamic_scalars_are_compared_as_issued() {
        let mut scalars = Vec::new();
        let cast = Op::Cast(tperf_core::ops::cast::Cast { numel: 8 });
        assert!(matches!(
            split_dynamic(&cast, &mut scalars),
            Cow::Borrowed(_)
        ));
        assert!(scalars.is_empty());
        let kv = Op::KvAppend(KvAppend {
            b: 1,
            t_new: 1,
            h_kv: 2,
            d: 64,
            pos: 7,
        });
        let fixed = split_dynamic(&kv, &mut scalars);
        assert!(matches!(&*fixed, Op::KvAppend(k) if k.pos == 0));
        assert_eq!(scalars, [7]);
    }
}

/// The host cost of replay's bookkeeping, measured without a GPU: a gpt2-124m decode step
/// (B = 1, T = 384, bf16, flash attention, the step `tperf bench --phase decode` replays) is
/// issued by the real schedule on two host-only backends, one that does nothing with the ops
/// (the schedule's own cost: allocations, tensor names, operand lists) and one that does what
/// `CudaBackend` does per op in a replayed step, with pointers from a bump allocator that
/// repeats every step. Timing only: `cargo test --release -p tperf-cuda --lib host_cost --
/// --ignored --nocapture`.
#[cfg(test)]
mod host_cost {
    use super::*;
    use std::time::Instant;
    use tperf_core::backend::{Backend, BackendError};
    use tperf_core::cost::analysis::{Scenario, StepRunner, Workload};
    use tperf_core::ops::adamw::AdamWParams;
    use tperf_core::schedule::{Options, Precision};
    use tperf_core::tensor::{Tensor, TensorId, TensorSpec};

    /// Allocates ids and nothing else; runs no op.
    #[derive(Default)]
    struct Null {
        next_id: u32,
    }

    impl Backend for Null {
        fn name(&self) -> String {
            "null".into()
        }
        fn alloc(&mut self, spec: TensorSpec) -> Result<Tensor, BackendError> {
            self.next_id += 1;
            Ok(spec.tensor(TensorId(self.next_id)))
        }
        fn free(&mut self, _tensor: Tensor) {}
        fn exec(&mut self, call: OpCall) -> Result<(), BackendError> {
            std::hint::black_box(&call);
            Ok(())
        }
        fn write_f32(&mut self, _: &Tensor, _: &[f32]) -> Result<(), BackendError> {
            Ok(())
        }
        fn write_i32(&mut self, _: &Tensor, _: &[i32]) -> Result<(), BackendError> {
            Ok(())
        }
        fn read_f32(&mut self, _: &Tensor) -> Result<Vec<f32>, BackendError> {
            Ok(Vec::new())
        }
    }

    /// CudaBackend's per-op work in a replayed step, on host pointers: the tensor map's lookups
    /// (fresh check, mark written, pointer of every operand), the op compared with the captured
    /// one, the scalars staged, the fallback log kept (`exec_in_graph`, `zero_fresh_operands`).
    struct Replayer {
        next_id: u32,
        /// Device pointer, whether fresh, and block bytes, by tensor.
        buffers: crate::backend::TensorMap<(u64, bool, u64)>,
        /// Best fit over freed blocks, as the caching allocator, so steps repeat pointers.
        free: std::collections::BTreeMap<(u64, u64), ()>,
        bump: u64,
        graphs: Graphs,
        captured: Option<Vec<Action>>,
        recording: Vec<Action>,
        steps: u32,
        ptrs: Vec<u64>,
    }

    impl Replayer {
        fn exec_replayed(&mut self, call: OpCall) {
            for t in call.inputs.iter() {
                std::hint::black_box(self.buffers.get(&t.id).is_some_and(|b| b.1));
            }
            for t in call.inputs.iter().chain(&call.outputs) {
                if let Some(b) = self.buffers.get_mut(&t.id) {
                    b.1 = false;
                }
            }
            let mut ptrs = std::mem::take(&mut self.ptrs);
            ptrs.clear();
            ptrs.extend(
                call.inputs
                    .iter()
                    .chain(&call.outputs)
                    .map(|t| self.buffers[&t.id].0),
            );
            let (inputs, outputs) = ptrs.split_at(call.inputs.len());
            let op = split_dynamic(&call.op, &mut self.graphs.scalars);
            match &self.captured {
                None => self.recording.push(Action::Exec {
                    op: op.into_owned(),
                    inputs: inputs.to_vec(),
                    outputs: outputs.to_vec(),
                }),
                Some(c) => {
                    let at = self.recording.len();
                    let hit = c.get(at).is_some_and(|a| a.is_exec(&op, inputs, outputs));
                    assert!(hit, "replay mismatch at {at}");
                    drop(op);
                    self.recording.push(Action::Zero { ptr: 0, bytes: 0 });
                    self.graphs.pending.push(Pending::Exec(call));
                }
            }
            self.ptrs = ptrs;
        }
    }

    impl Backend for Replayer {
        fn name(&self) -> String {
            "replayer".into()
        }
        fn alloc(&mut self, spec: TensorSpec) -> Result<Tensor, BackendError> {
            self.next_id += 1;
            let id = TensorId(self.next_id);
            let want = spec.size_bytes().max(1).div_ceil(512) * 512;
            let hit = self.free.range((want, 0)..).next().map(|(&k, _)| k);
            let (bytes, ptr) = match hit {
                Some(k) => {
                    self.free.remove(&k);
                    k
                }
                None => {
                    self.bump += want;
                    (want, self.bump - want)
                }
            };
            self.buffers.insert(id, (ptr, true, bytes));
            Ok(spec.tensor(id))
        }
        fn free(&mut self, tensor: Tensor) {
            if let Some((ptr, _, bytes)) = self.buffers.remove(&tensor.id) {
                self.free.insert((bytes, ptr), ());
            }
        }
        fn exec(&mut self, call: OpCall) -> Result<(), BackendError> {
            self.exec_replayed(call);
            Ok(())
        }
        fn begin_step(&mut self, key: &str) -> Result<(), BackendError> {
            // What Graphs::begin does per step: the step kind by its key, the logs cleared.
            std::hint::black_box(self.graphs.kinds.get(key));
            self.recording.clear();
            self.graphs.scalars.clear();
            self.graphs.pending.clear();
            Ok(())
        }
        fn end_step(&mut self) -> Result<(), BackendError> {
            // As CudaBackend: the first step warms the allocator's cache, the second is captured.
            self.steps += 1;
            if self.captured.is_none() && self.steps == 2 {
                self.captured = Some(std::mem::take(&mut self.recording));
            }
            Ok(())
        }
        fn write_f32(&mut self, _: &Tensor, _: &[f32]) -> Result<(), BackendError> {
            Ok(())
        }
        fn write_i32(&mut self, _: &Tensor, _: &[i32]) -> Result<(), BackendError> {
            Ok(())
        }
        fn read_f32(&mut self, _: &Tensor) -> Result<Vec<f32>, BackendError> {
            Ok(Vec::new())
        }
    }

    fn decode_runner(be: &mut impl Backend) -> StepRunner {
        let cfg = tperf_core::presets::find("gpt2-124m").unwrap().config;
        let sc = Scenario {
            workload: Workload::Decode,
            batch: 1,
            seq: 384,
            opts: Options {
                precision: Precision::Bf16,
                ..Options::default()
            },
        };
        StepRunner::new(be, &cfg, sc).unwrap()
    }

    /// Median microseconds of a step on each of two backends, their steps interleaved (after
    /// 20 untimed each) so that a busy machine slows both alike.
    fn median_step_us<A: Backend, B: Backend>(
        (a, ra): (&mut A, &mut StepRunner),
        (b, rb): (&mut B, &mut StepRunner),
        steps: usize,
    ) -> (f64, f64) {
        let (mut ua, mut ub) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
        for i in 0..steps + 20 {
            let t0 = Instant::now();
            ra.step(a, AdamWParams::default()).unwrap();
            let t1 = Instant::now();
            rb.step(b, AdamWParams::default()).unwrap();
            if i >= 20 {
                ua.push((t1 - t0).as_secs_f64() * 1e6);
                ub.push(t1.elapsed().as_secs_f64() * 1e6);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        (median(&mut ua), median(&mut ub))
    }

    #[test]
    #[ignore = "timing: run with --ignored --nocapture"]
    fn decode_step_host_cost() {
        let mut null = Null::default();
        let mut null_runner = decode_runner(&mut null);
        let mut rep = Replayer {
            next_id: 0,
            buffers: Default::default(),
            free: Default::default(),
            bump: 0,
            graphs: Graphs::new(true),
            captured: None,
            recording: Vec::new(),
            steps: 0,
            ptrs: Vec::new(),
        };
        let mut rep_runner = decode_runner(&mut rep);
        let (schedule_us, replay_us) = median_step_us(
            (&mut null, &mut null_runner),
            (&mut rep, &mut rep_runner),
            3000,
        );
        let ops = rep.captured.as_ref().map_or(0, Vec::len);
        println!(
            "gpt2-124m decode B1 T384 bf16, {ops} ops a step: schedule alone {schedule_us:.1} us a step; \
             schedule + replay bookkeeping {replay_us:.1} us ({:.1} us of bookkeeping, {:.0} ns an op)",
            replay_us - schedule_us,
            (replay_us - schedule_us) * 1e3 / ops.max(1) as f64
        );
    }
}
