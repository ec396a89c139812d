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
use std::collections::HashMap;
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

/// What a fallback replays eagerly: the step's actions so far, as issued.
pub(crate) enum Pending {
    Zero {
        ptr: u64,
        bytes: u64,
    },
    /// Boxed: an op call is over 200 bytes (RoPE's scaling made it so), a zeroing 16.
    Exec(Box<OpCall>),
}

/// The op as graph replay compares it, and the scalars that may differ from step to step (which
/// kernels read from device memory, see the module docs): AdamW's learning rate and bias
/// corrections, a decode step's position — the rope and embedding offset, where the KV
/// cache append writes, how many keys flash attention reads — and the sampling settings. Only values that no launch
/// configuration and no host-side decision depend on may be dynamic: flash attention's grid
/// follows the queries, not the keys; the naive kernels' matmul shapes follow the keys, so their
/// key count stays in the comparison (and a growing cache is not replayed with them).
pub(crate) fn split_dynamic(op: &Op) -> (Op, Vec<u32>) {
    let word = |x: usize| x as i32 as u32;
    match op {
        Op::Rope(r) => (
            Op::Rope(rope::Rope {
                pos_offset: 0,
                ..*r
            }),
            vec![word(r.pos_offset)],
        ),
        Op::Embedding(e) => (
            Op::Embedding(Embedding {
                pos_offset: 0,
                ..*e
            }),
            vec![word(e.pos_offset)],
        ),
        Op::KvAppend(k) => (Op::KvAppend(KvAppend { pos: 0, ..*k }), vec![word(k.pos)]),
        Op::FlashAttention(a) => (
            Op::FlashAttention(Attention { tk: 0, ..*a }),
            vec![word(a.tk)],
        ),
        Op::AdamW(a) => {
            let h = &a.hyper;
            let t = h.step.max(1) as i32;
            let c1 = (1.0 - h.beta1.powi(t)) as f32;
            let c2 = (1.0 - h.beta2.powi(t)) as f32;
            let mut fixed = *a;
            fixed.hyper.lr = 0.0;
            fixed.hyper.step = 0;
            (
                Op::AdamW(fixed),
                vec![(h.lr as f32).to_bits(), c1.to_bits(), c2.to_bits()],
            )
        }
        // The settings (seeds above all, new every step of a served request) are data; the
        // shape of the batch and whether rows bring their own settings are structure.
        Op::Sample(s) => (
            Op::Sample(Sample {
                sampling: Sampling::default(),
                per_row: vec![Sampling::default(); s.per_row.len()],
                ..s.clone()
            }),
            crate::ops::sample_words(s),
        ),
        // A ragged step reads its positions, context lengths and block tables from device
        // tensors, and its launches follow the rows and the block table's width only
        // (ops/decode.rs covers every key the table can name): the host's lengths, which give
        // the op its cost, change every decode step without changing what is launched.
        Op::PagedAttention(a) => (
            Op::PagedAttention(PagedAttention {
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
            Vec::new(),
        ),
        other => (other.clone(), Vec::new()),
    }
}

/// One captured step, ready to launch.
struct Captured {
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
        pending: Vec<Pending>,
    },
    Replay {
        key: String,
        cursor: usize,
        pending: Vec<Pending>,
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
        }
    }

    pub fn in_step_graph(&self) -> bool {
        !matches!(self.mode, Mode::Eager)
    }

    /// Decides how the step `key` runs: the first time eagerly (it compiles kernels, plans
    /// matmuls and fills the allocator's cache), the second time captured, then replayed.
    pub fn begin(&mut self, key: &str, allowed: bool) -> Begin {
        self.scalars.clear();
        let kind = self.kinds.entry(key.to_string()).or_default();
        kind.seen += 1;
        if !(self.enabled && allowed) || kind.refused.is_some() || kind.seen == 1 {
            self.stats.eager += 1;
            self.mode = Mode::Eager;
            return Begin::Eager;
        }
        if kind.graph.is_some() {
            self.mode = Mode::Replay {
                key: key.to_string(),
                cursor: 0,
                pending: Vec::new(),
            };
            return Begin::Replay;
        }
        self.mode = Mode::Capture {
            key: key.to_string(),
            actions: Vec::new(),
            pending: Vec::new(),
        };
        Begin::Capture
    }

    /// Whether `action` is the next one of the captured step being replayed; advances if so.
    pub fn replay_matches(&mut self, action: &Action) -> bool {
        let Mode::Replay { key, cursor, .. } = &mut self.mode else {
            return false;
        };
        let Some(captured) = self.kinds.get(key.as_str()).and_then(|k| k.graph.as_ref()) else {
            return false;
        };
        if captured.actions.get(*cursor) == Some(action) {
            *cursor += 1;
            true
        } else {
            false
        }
    }

    pub fn push(&mut self, action: Action, pending: Pending) {
        match &mut self.mode {
            Mode::Capture {
                actions,
                pending: p,
                ..
            } => {
                actions.push(action);
                p.push(pending);
            }
            Mode::Replay { pending: p, .. } => p.push(pending),
            Mode::Eager => {}
        }
    }

    /// Ends the captured or replayed step eagerly: returns the actions to run now, refuses the
    /// step kind when `refuse` says why (a replay mismatch only drops the graph, so the step is
    /// captured again while captures remain).
    pub fn fall_back(&mut self, why: &str, refuse: bool) -> Vec<Pending> {
        let mode = std::mem::replace(&mut self.mode, Mode::Eager);
        let (key, pending) = match mode {
            Mode::Capture { key, pending, .. } | Mode::Replay { key, pending, .. } => {
                (key, pending)
            }
            Mode::Eager => return Vec::new(),
        };
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
        let Mode::Replay { key, cursor, .. } = &self.mode else {
            return Err("no step is being replayed");
        };
        let captured = self
            .kinds
            .get(key.as_str())
            .and_then(|k| k.graph.as_ref())
            .ok_or("the captured graph is gone")?;
        if *cursor != captured.actions.len() {
            return Err("the step issued fewer actions than the captured one");
        }
        let exec = captured.exec;
        if let Some(kind) = self.kinds.get_mut(key.as_str()) {
            kind.captures = 0;
        }
        self.mode = Mode::Eager;
        self.stats.replayed += 1;
        Ok(exec)
    }

    /// Drops every captured graph (before the backend's memory goes away).
    pub fn clear(&mut self) {
        self.kinds.clear();
        self.mode = Mode::Eager;
    }
}
