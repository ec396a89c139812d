//! The synchronous engine: scheduling, one ragged step, sampling, finishing.
//!
//! Every sequence is `tokens` (prompt then generated) of which the first `computed` have their
//! keys and values in the cache. A step feeds each scheduled sequence its next
//! min(tokens − computed, budget left) tokens: the whole prompt or a chunk of it (chunked
//! prefill), or the one token sampled last step (decode). A sequence whose step reaches the end
//! of its tokens is sampled. Preemption frees a sequence's blocks and sets `computed` to 0, so
//! when it is admitted again its prompt and generated tokens are prefilled together (recompute)
//! and it goes on where it stopped.

use crate::block::{blocks_for, BlockManager};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::policy::{Batching, Policy, Queued, Waiting};
use crate::request::{Event, EventSink, FinishReason, Request, RequestId, SubmitError, Usage};
use crate::text;
use crate::EngineError;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tperf_core::backend::{repeated_step, Backend};
use tperf_core::ops::sampling::Sampling;
use tperf_core::schedule::ragged::RaggedInputs;
use tperf_core::schedule::ragged::{
    PagedKvCache, PagedStep, RaggedBatch, RaggedLayout, SeqSpan, DEFAULT_BLOCK_SIZE,
};
use tperf_core::schedule::Transformer;
use tperf_core::tensor::Tensor;
use tperf_runtime::tokenizer::Tokenizer;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences in the running batch at most.
    pub max_num_seqs: usize,
    /// Rows (tokens) of one step at most: decode rows plus prefill chunks.
    pub max_num_batched_tokens: usize,
    /// Blocks of the paged KV cache.
    pub kv_blocks: usize,
    pub block_size: usize,
    /// Waiting requests at most; past it, submit answers [`SubmitError::QueueFull`].
    pub max_queue: usize,
    pub policy: Policy,
    /// Whether the waiting join the running batch at every step or only an empty one.
    pub batching: Batching,
    /// Decode steps one iteration may run back to back when it schedules only decode rows (vLLM's
    /// multi-step scheduling): the host issues them all before it waits, each step's tokens
    /// the step before's sampled ids, still on the device, so the device runs step k + 1 while
    /// the host has yet to see step k; the engine's own part and the wait come once per
    /// iteration. Requests join and leave at iteration boundaries, a request that ends inside
    /// one has its later tokens computed and dropped, and its tokens reach the client together.
    /// 1 (the default) is one step an iteration.
    pub decode_steps: usize,
    /// A pause after every step of the threaded [`crate::Engine`]: zero, except in tests of
    /// disconnects and shutdown, which need requests that outlast the client's actions.
    pub step_delay: std::time::Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            kv_blocks: 1024,
            block_size: DEFAULT_BLOCK_SIZE,
            max_queue: 4096,
            policy: Policy::Fcfs,
            batching: Batching::Continuous,
            decode_steps: 1,
            step_delay: std::time::Duration::ZERO,
        }
    }
}

/// What a request is checked against before it is queued.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub context: usize,
    pub vocab_size: usize,
    pub block_size: usize,
    pub kv_blocks: usize,
    pub max_queue: usize,
}

impl Limits {
    /// The most tokens a request may generate after a prompt of `prompt_len`: the context's
    /// room, and the cache's (a request that could never fit would wait forever).
    pub fn room(&self, prompt_len: usize) -> usize {
        self.context
            .min(self.kv_blocks * self.block_size)
            .saturating_sub(prompt_len)
    }

    pub fn validate(&self, r: &Request) -> Result<(), SubmitError> {
        let bad = |param, message: String| Err(SubmitError::Invalid { param, message });
        if r.prompt.is_empty() {
            return bad(
                "prompt",
                "the prompt is empty (it encodes to no tokens)".into(),
            );
        }
        if let Some(&t) = r.prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return bad(
                "prompt",
                format!(
                    "token id {t} is outside the model's vocabulary of {}",
                    self.vocab_size
                ),
            );
        }
        if r.prompt.len() >= self.context {
            return bad(
                "prompt",
                format!(
                    "the prompt has {} tokens; this model's maximum context length is {} \
                     tokens, and at least one must be left to generate",
                    r.prompt.len(),
                    self.context
                ),
            );
        }
        if r.max_tokens == 0 {
            return bad("max_tokens", "max_tokens must be at least 1".into());
        }
        if r.prompt.len().saturating_add(r.max_tokens) > self.context {
            return bad(
                "max_tokens",
                format!(
                    "this model's maximum context length is {} tokens; the prompt has {} and \
                     max_tokens asks for {} more: lower max_tokens to at most {}",
                    self.context,
                    r.prompt.len(),
                    r.max_tokens,
                    self.context - r.prompt.len()
                ),
            );
        }
        let needed = blocks_for(r.prompt.len() + r.max_tokens, self.block_size);
        if needed > self.kv_blocks {
            return bad(
                "max_tokens",
                format!(
                    "the prompt and max_tokens need {needed} KV cache blocks of {}, the server's \
                     cache has {}: lower max_tokens to at most {}",
                    self.block_size,
                    self.kv_blocks,
                    self.room(r.prompt.len())
                ),
            );
        }
        let s = &r.sampling;
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            return bad("temperature", "temperature must be a number ≥ 0".into());
        }
        if s.top_k == Some(0) {
            return bad("top_k", "top_k must be at least 1 (or absent)".into());
        }
        if let Some(p) = s.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top_p", "top_p must be in (0, 1]".into());
            }
        }
        Ok(())
    }
}

/// What one step did (for tests and tracing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// The scheduled sequences and their new tokens, in row order.
    pub scheduled: Vec<(RequestId, usize)>,
    pub admitted: Vec<RequestId>,
    pub preempted: Vec<RequestId>,
    pub finished: Vec<RequestId>,
}

/// Batch sizes a decode-only step is padded up to when the backend replays repeated steps
/// (vLLM's CUDA-graph sizes, finer above 16): one captured step per size serves every batch up
/// to it, for at most a third more rows' work above 16 (past the last size, no padding).
const DECODE_SIZES: [usize; 17] = [
    1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256,
];

/// Pads a decode step of S sequences, in place, to the next of [`DECODE_SIZES`]: each padding
/// row is token 0 at position 0 of a one-block sequence whose table is `scratch`, a block no
/// request owns (its keys are overwritten and never read by a real row); its sampled id is
/// ignored. The tables are borrowed from the sequences, so padding copies no block list.
fn pad_decode<'a>(
    batch: &mut RaggedBatch,
    tables: &mut Vec<&'a [usize]>,
    tokens: &mut Vec<i32>,
    per_row: &mut Vec<Sampling>,
    scratch: &'a [usize],
) {
    let s = batch.seqs.len();
    let size = DECODE_SIZES.iter().copied().find(|&n| n >= s).unwrap_or(s);
    batch.seqs.resize(size, SeqSpan { pos: 0, q_len: 1 });
    tables.resize(size, scratch);
    tokens.resize(size, 0);
    per_row.resize(size, Sampling::default());
}

/// The seed of a request's token `index`: one draw per token, independent of the batch (what
/// the per-row Sample op expects). SplitMix64's finaliser over the pair.
pub fn token_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed
        ^ (index as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Seq {
    id: RequestId,
    req: Request,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    computed: usize,
    blocks: Vec<usize>,
    arrived: Instant,
    last_token: Option<Instant>,
    /// The generated tokens from `window` on are decoded each step (those before it are sent
    /// in full and end on a complete character, so their text cannot change): decoding stays
    /// O(tokens since the last clean point), not O(all generated), per token.
    window: usize,
    /// Bytes of the window's text sent.
    emitted: usize,
    /// Admitted at least once (its prompt counted and charged).
    started: bool,
}

impl Queued for Seq {
    fn id(&self) -> RequestId {
        self.id
    }
    fn client(&self) -> &str {
        &self.req.client
    }
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
        }
    }
}

/// One step's rows as the device takes them (see [`EngineCore::lay_out`]).
struct StepRows {
    batch: RaggedBatch,
    tokens: Vec<i32>,
    per_row: Vec<Sampling>,
    layout: RaggedLayout,
    decode_only: bool,
}

pub struct EngineCore<B: Backend> {
    be: B,
    model: Transformer,
    tokenizer: Tokenizer,
    cfg: EngineConfig,
    limits: Limits,
    cache: Option<PagedKvCache>,
    blocks: BlockManager,
    /// In admission order: the newest last, preempted first.
    running: Vec<Seq>,
    waiting: Waiting<Seq>,
    /// Block-table width of every step: the context's blocks, so that the inputs' shapes do not
    /// change from step to step.
    max_blocks: usize,
    metrics: Arc<Mutex<Metrics>>,
    /// The requests' sinks (an event is delivered at once, or by a thread of its own).
    outbox: Outbox,
}

impl<B: Backend> EngineCore<B> {
    /// Allocates the paged cache of `cfg.kv_blocks` blocks for `model` on `be`.
    pub fn new(
        mut be: B,
        model: Transformer,
        tokenizer: Tokenizer,
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        if cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens == 0 || cfg.block_size == 0 {
            return Err(EngineError::Config(
                "max_num_seqs, max_num_batched_tokens and the block size must be at least 1".into(),
            ));
        }
        if cfg.kv_blocks == 0 {
            return Err(EngineError::Config(
                "the KV cache needs at least one block".into(),
            ));
        }
        // One block past the manager's: the padding rows' keys (see `pad_decode`).
        let cache = model.alloc_paged_kv_cache(&mut be, cfg.kv_blocks + 1, cfg.block_size)?;
        let limits = Limits {
            context: model.cfg.context,
            vocab_size: model.cfg.vocab_size,
            block_size: cfg.block_size,
            kv_blocks: cfg.kv_blocks,
            max_queue: cfg.max_queue,
        };
        let metrics = Metrics {
            kv_blocks_total: cfg.kv_blocks,
            ..Metrics::default()
        };
        let mut core = EngineCore {
            be,
            max_blocks: blocks_for(model.cfg.context, cfg.block_size),
            model,
            tokenizer,
            limits,
            cache: Some(cache),
            blocks: BlockManager::new(cfg.kv_blocks),
            running: Vec::new(),
            waiting: Waiting::new(cfg.policy),
            metrics: Arc::new(Mutex::new(metrics)),
            outbox: Outbox::inline(),
            cfg,
        };
        core.warm_up()?;
        Ok(core)
    }

    /// Two throwaway steps in the scratch block before any request (their ids dropped): a
    /// backend's first step of a kind pays one-time costs that would otherwise land on the
    /// first request — on the CUDA backend cuBLASLt's first matmul (90 ms on the H200) and the
    /// first launches of each kernel module (15 ms), 146 ms of a cold 9-token prefill step that
    /// takes 1.8 ms warm. A prefill of a whole block (positions 0.., token 0) and a one-row
    /// decode step, because the two take different kernels: on the CUDA backend a product of
    /// at most 8 rows runs matmul.cu's gemv_rows, not cuBLASLt, so with the one-row step alone
    /// the first prompt's prefill paid cuBLASLt's first call (time to first token 131 ms
    /// against 9.6 ms with TPERF_GEMV=0, gpt2-124m on the H200, 2026-12-03).
    fn warm_up(&mut self) -> Result<(), EngineError> {
        let scratch = [self.cfg.kv_blocks];
        let prefill = self
            .cfg
            .block_size
            .min(self.cfg.max_num_batched_tokens)
            .min(self.limits.context);
        for q_len in [prefill, 1] {
            let batch = RaggedBatch {
                seqs: vec![SeqSpan { pos: 0, q_len }],
            };
            let (tokens, per_row) = (vec![0; q_len], vec![Sampling::default()]);
            let rows = self.lay_out(batch, vec![&scratch], tokens, per_row, &scratch)?;
            let (ids, inputs) = self.issue(rows, None, 0)?;
            let read = self.be.read_f32(&ids);
            self.be.free(ids);
            self.model.free_ragged_inputs(&mut self.be, inputs);
            read?;
        }
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// A handle on the tokenizer (a clone is cheap: the vocabularies are shared).
    pub fn tokenizer(&self) -> Tokenizer {
        self.tokenizer.clone()
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// The live metrics (shared with whoever reads them between steps).
    pub fn metrics_handle(&self) -> Arc<Mutex<Metrics>> {
        self.metrics.clone()
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Hands events to a delivery thread, one batch per step, instead of calling each sink from
    /// the step (outbox.rs says why): what the threaded [`crate::Engine`] does. A listener that
    /// went away is then seen, and its request cancelled, at the next step.
    /// Only before the first request (the inline outbox holds the open requests' sinks).
    pub fn deliver_on_a_thread(&mut self) -> Result<(), EngineError> {
        if !self.is_idle() {
            return Err(EngineError::Config(
                "events move to a delivery thread before the first request, not with requests open"
                    .into(),
            ));
        }
        self.outbox = Outbox::threaded().map_err(EngineError::Thread)?;
        Ok(())
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn blocks_used(&self) -> usize {
        self.blocks.used()
    }

    /// The fair scheduler's counter of `client`.
    pub fn counter(&self, client: &str) -> f64 {
        self.waiting.counter(client)
    }

    /// Queues a request (checked against the limits) whose events go to `sink`.
    pub fn add(
        &mut self,
        id: RequestId,
        req: Request,
        sink: Box<dyn EventSink>,
    ) -> Result<(), SubmitError> {
        let refused = self.limits.validate(&req).and_then(|()| {
            if self.waiting.len() >= self.cfg.max_queue {
                Err(SubmitError::QueueFull {
                    limit: self.cfg.max_queue,
                })
            } else {
                Ok(())
            }
        });
        if let Err(e) = refused {
            let mut sink = sink;
            sink.send(Event::Finished {
                text: String::new(),
                reason: FinishReason::Error(e.to_string()),
                usage: Usage::default(),
            });
            return Err(e);
        }
        let prompt_len = req.prompt.len();
        self.outbox.open(id, sink);
        self.waiting.push(Seq {
            id,
            tokens: req.prompt.clone(),
            prompt_len,
            req,
            computed: 0,
            blocks: Vec::new(),
            arrived: Instant::now(),
            last_token: None,
            window: 0,
            emitted: 0,
            started: false,
        });
        self.publish();
        Ok(())
    }

    /// Ends a request now, freeing its blocks; false if it is not here (finished already).
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let seq = match self.running.iter().position(|s| s.id == id) {
            Some(at) => Some(self.running.remove(at)),
            None => self.waiting.remove(id),
        };
        match seq {
            Some(seq) => {
                self.finish(seq, FinishReason::Cancelled, String::new());
                self.publish();
                true
            }
            None => false,
        }
    }

    /// Ends every request with `reason` (shutdown, or a backend that failed).
    pub fn abort_all(&mut self, reason: FinishReason) {
        let all: Vec<Seq> = self.running.drain(..).chain(self.waiting.drain()).collect();
        for seq in all {
            self.finish(seq, reason.clone(), String::new());
        }
        self.publish();
    }

    fn finish(&mut self, mut seq: Seq, reason: FinishReason, text: String) {
        self.blocks.release(&mut seq.blocks);
        let usage = seq.usage();
        if let Ok(mut m) = self.metrics.lock() {
            let k = match reason {
                FinishReason::Stop => 0,
                FinishReason::Length => 1,
                FinishReason::Cancelled => 2,
                FinishReason::Error(_) => 3,
            };
            m.finished[k] += 1;
        }
        self.outbox.send(
            seq.id,
            Event::Finished {
                text,
                reason,
                usage,
            },
        );
    }

    /// Publishes the gauges and hands the events of the call to their sinks.
    fn publish(&mut self) {
        self.outbox.flush();
        if let Ok(mut m) = self.metrics.lock() {
            m.running = self.running.len();
            m.waiting = self.waiting.len();
            m.kv_blocks_used = self.blocks.used();
        }
    }

    fn preempt(&mut self, report: &mut StepReport) {
        if let Some(mut seq) = self.running.pop() {
            self.blocks.release(&mut seq.blocks);
            seq.computed = 0;
            report.preempted.push(seq.id);
            if let Ok(mut m) = self.metrics.lock() {
                m.preemptions += 1;
            }
            self.waiting.push_front(seq);
        }
    }

    /// The step's plan: (index into `running`, new tokens), after admitting what fits.
    fn schedule(&mut self, report: &mut StepReport) -> Vec<(usize, usize)> {
        let bs = self.cfg.block_size;
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut plan = Vec::new();
        // Static batching fills an empty batch; its prompts are then prefilled (chunked under
        // the budget) and decoded by the loop over the running sequences below, and nobody else
        // is admitted until all of it has finished.
        if self.cfg.batching == Batching::Static && self.running.is_empty() {
            self.fill_static_batch(report);
        }
        // The running sequences, oldest first; when blocks run out, the newest is preempted
        // (possibly the one asking).
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let s = &self.running[i];
            let q = (s.tokens.len() - s.computed).min(budget);
            let need = blocks_for(s.computed + q, bs);
            loop {
                let s = &mut self.running[i];
                if self.blocks.grow(&mut s.blocks, need) {
                    plan.push((i, q));
                    budget -= q;
                    i += 1;
                    break;
                }
                let asking_is_newest = i + 1 == self.running.len();
                self.preempt(report);
                if asking_is_newest {
                    break;
                }
            }
        }
        // Then the waiting, in the policy's order, while the batch, the budget and the free
        // blocks allow (admission does not preempt).
        while self.cfg.batching == Batching::Continuous
            && self.running.len() < self.cfg.max_num_seqs
            && budget > 0
        {
            let Some(next) = self.waiting.peek() else {
                break;
            };
            let q = next.tokens.len().min(budget);
            if blocks_for(q, bs) > self.blocks.free_count() {
                break;
            }
            let Some(mut seq) = self.waiting.pop() else {
                break;
            };
            self.blocks.grow(&mut seq.blocks, blocks_for(q, bs));
            self.start(&mut seq);
            report.admitted.push(seq.id);
            plan.push((self.running.len(), q));
            self.running.push(seq);
            budget -= q;
        }
        plan
    }

    /// Static batching: fills the empty batch with as many waiting requests, in the policy's
    /// order, as there are seats and free blocks for their whole prompts (held from now on, so
    /// that a prompt prefilled over several steps is not preempted by the next one's). Not
    /// limited by the step's token budget: the prompts are prefilled over the next steps.
    fn fill_static_batch(&mut self, report: &mut StepReport) {
        let bs = self.cfg.block_size;
        while self.running.len() < self.cfg.max_num_seqs {
            let Some(next) = self.waiting.peek() else {
                break;
            };
            if blocks_for(next.tokens.len(), bs) > self.blocks.free_count() {
                break;
            }
            let Some(mut seq) = self.waiting.pop() else {
                break;
            };
            self.blocks
                .grow(&mut seq.blocks, blocks_for(seq.tokens.len(), bs));
            self.start(&mut seq);
            report.admitted.push(seq.id);
            self.running.push(seq);
        }
    }

    /// A request's first admission: its prompt is counted and charged to its client.
    fn start(&mut self, seq: &mut Seq) {
        if !seq.started {
            seq.started = true;
            self.waiting.charge(&seq.req.client, seq.prompt_len, 0);
            if let Ok(mut m) = self.metrics.lock() {
                m.prompt_tokens += seq.prompt_len as u64;
            }
        }
    }

    /// One iteration: schedule, run every scheduled row in one ragged forward (or, decoding
    /// only, up to `decode_steps` forwards back to back), sample each sequence that reached its
    /// end, emit, finish. Does nothing when idle.
    pub fn step(&mut self) -> Result<StepReport, EngineError> {
        let began = Instant::now();
        // Listeners the delivery thread found gone since the last step (none inline, where a
        // failed send cancels at once).
        for id in self.outbox.gone() {
            self.cancel(id);
        }
        let mut report = StepReport::default();
        let plan = self.schedule(&mut report);
        if plan.is_empty() {
            self.publish();
            return Ok(report);
        }
        let steps = self.steps_for(&plan);
        for &(i, q) in &plan {
            report.scheduled.push((self.running[i].id, q));
        }
        // The model's part of the step begins with its inputs' layout (as the metrics say).
        let device_began = Instant::now();
        let (ids, wait_seconds) = match self.run_steps(&plan, steps) {
            Ok(done) => done,
            Err(e) => {
                // Every scheduled sequence's blocks may hold half-written keys: end them all.
                self.abort_all(FinishReason::Error(e.to_string()));
                return Err(e);
            }
        };
        let now = Instant::now();
        let device_seconds = (now - device_began).as_secs_f64();
        // Each step's tokens in turn; a sequence that ends at one ignores the later steps'
        // (computed on it and dropped).
        let mut done: Vec<(usize, FinishReason, String)> = Vec::new();
        let mut ended = vec![false; plan.len()];
        for step_ids in &ids {
            for (k, &(i, q)) in plan.iter().enumerate() {
                if ended[k] {
                    continue;
                }
                if let Some((reason, text)) = self.accept(i, q, step_ids.get(k).copied(), now) {
                    ended[k] = true;
                    done.push((i, reason, text));
                }
            }
        }
        // Remove from the back so that the earlier indices stay valid.
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (i, reason, text) in done {
            let seq = self.running.remove(i);
            report.finished.push(seq.id);
            self.finish(seq, reason, text);
        }
        report.finished.reverse();
        if let Ok(mut m) = self.metrics.lock() {
            let host_seconds = began.elapsed().as_secs_f64() - device_seconds;
            let n = steps as u64;
            m.steps += n;
            m.step_sequences += n * plan.len() as u64;
            m.step_tokens += n * plan.iter().map(|&(_, q)| q as u64).sum::<u64>();
            m.step_device_seconds += device_seconds;
            m.step_host_seconds += host_seconds;
            m.step_wait_seconds += wait_seconds;
            if plan.iter().all(|&(_, q)| q == 1) {
                m.decode_steps += n;
                m.decode_step_sequences += n * plan.len() as u64;
                m.decode_step_device_seconds += device_seconds;
                m.decode_step_host_seconds += host_seconds;
                m.decode_step_wait_seconds += wait_seconds;
            }
        }
        self.publish();
        Ok(report)
    }

    /// The steps this iteration runs: `decode_steps` when every scheduled row decodes a
    /// sequence's last token, each has room in the context for that many more, and the block
    /// manager has their blocks (grown here; a sequence that got some before another found none
    /// keeps them for its next tokens); else one.
    fn steps_for(&mut self, plan: &[(usize, usize)]) -> usize {
        let k = self.cfg.decode_steps.max(1);
        if k == 1 {
            return 1;
        }
        let context = self.limits.context;
        let decoding = plan.iter().all(|&(i, q)| {
            let s = &self.running[i];
            q == 1 && s.computed + 1 == s.tokens.len() && s.computed + k <= context
        });
        if !decoding {
            return 1;
        }
        let bs = self.cfg.block_size;
        for &(i, _) in plan {
            let s = &mut self.running[i];
            if !self
                .blocks
                .grow(&mut s.blocks, blocks_for(s.computed + k, bs))
            {
                return 1;
            }
        }
        k
    }

    /// Sequence `i`'s part of a step that fed it `q` tokens and, where it reached the end of its
    /// tokens, sampled `id`: the token taken, metered and emitted. Returns why and with what
    /// last text it ends, if it does.
    fn accept(
        &mut self,
        i: usize,
        q: usize,
        id: Option<f32>,
        now: Instant,
    ) -> Option<(FinishReason, String)> {
        let eot = self.tokenizer.eot();
        let context = self.limits.context;
        let s = &mut self.running[i];
        s.computed += q;
        if s.computed < s.tokens.len() {
            return None; // a prompt chunk: nothing to sample yet
        }
        let id = id.unwrap_or(0.0) as u32;
        let end_of_text = !s.req.ignore_eos && eot == Some(id);
        // One lock a token (this runs for every sequence of every step).
        if let Ok(mut m) = self.metrics.lock() {
            match s.last_token {
                None => m.ttft.observe((now - s.arrived).as_secs_f64()),
                Some(t) => m.itl.observe((now - t).as_secs_f64()),
            }
            if !end_of_text {
                m.generation_tokens += 1;
            }
        }
        s.last_token = Some(now);
        if end_of_text {
            let rest = decode_from(&self.tokenizer, &s.tokens, s.prompt_len + s.window);
            let d = text::delta(&rest, s.emitted, &s.req.stop, true);
            return Some((FinishReason::Stop, d.text.to_string()));
        }
        s.tokens.push(id);
        self.waiting.charge(&s.req.client, 0, 1);
        let full = s.generated() >= s.req.max_tokens || s.tokens.len() >= context;
        let generated = decode_from(&self.tokenizer, &s.tokens, s.prompt_len + s.window);
        let d = text::delta(&generated, s.emitted, &s.req.stop, false);
        let (piece, stopped) = (d.text.to_string(), d.stopped);
        s.emitted += piece.len();
        if s.emitted == generated.len() && !stopped && !full {
            // All sent, ending on a whole character with no stop string begun.
            s.window = s.generated();
            s.emitted = 0;
        }
        if !self.outbox.send(s.id, Event::Token { id, text: piece }) {
            Some((FinishReason::Cancelled, String::new()))
        } else if stopped {
            Some((FinishReason::Stop, String::new()))
        } else if full {
            let tail = text::delta(&generated, s.emitted, &s.req.stop, true);
            let reason = if tail.stopped {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            Some((reason, tail.text.to_string()))
        } else {
            None
        }
    }

    /// The device part of an iteration: its `steps` steps issued back to back (the first with
    /// the scheduled tokens, each later one with the ids the step before sampled, on the
    /// device), then each step's sampled ids read (one per scheduled sequence, in order, then
    /// those of any padding rows). Also returns the seconds the host waited for them.
    fn run_steps(
        &mut self,
        plan: &[(usize, usize)],
        steps: usize,
    ) -> Result<(Vec<Vec<f32>>, f64), EngineError> {
        let scratch = [self.cfg.kv_blocks];
        let mut issued: Vec<(Tensor, RaggedInputs)> = Vec::with_capacity(steps);
        let out = (|| {
            for k in 0..steps {
                let rows = self.rows_of(plan, k, &scratch)?;
                let feed = issued.last().map(|(ids, _)| ids.clone());
                issued.push(self.issue(rows, feed, k)?);
            }
            let waited = Instant::now();
            let mut ids = Vec::with_capacity(steps);
            for (t, _) in &issued {
                ids.push(self.be.read_f32(t)?);
            }
            Ok((ids, waited.elapsed().as_secs_f64()))
        })();
        for (ids, inputs) in issued {
            self.be.free(ids);
            self.model.free_ragged_inputs(&mut self.be, inputs);
        }
        out
    }

    /// Step `k` of an iteration laid out: each scheduled sequence `k` tokens further on (its
    /// tokens at step 0; later steps are fed on the device, so theirs are placeholders) with
    /// the seed of its token `generated + k`.
    fn rows_of(
        &self,
        plan: &[(usize, usize)],
        k: usize,
        scratch: &[usize],
    ) -> Result<StepRows, EngineError> {
        let batch = RaggedBatch {
            seqs: plan
                .iter()
                .map(|&(i, q)| SeqSpan {
                    pos: self.running[i].computed + k,
                    q_len: q,
                })
                .collect(),
        };
        let mut tokens = Vec::with_capacity(batch.rows());
        let mut tables = Vec::with_capacity(plan.len());
        let mut per_row = Vec::with_capacity(plan.len());
        for &(i, q) in plan {
            let s = &self.running[i];
            if k == 0 {
                let new = &s.tokens[s.computed..s.computed + q];
                tokens.extend(new.iter().map(|&t| t as i32));
            } else {
                tokens.extend(std::iter::repeat_n(0, q));
            }
            tables.push(&s.blocks[..]);
            per_row.push(Sampling {
                seed: token_seed(s.req.sampling.seed, s.generated() + k),
                ..s.req.sampling
            });
        }
        self.lay_out(batch, tables, tokens, per_row, scratch)
    }

    /// A step's rows laid out for the device: the block tables checked and flattened, and a
    /// decode step padded when the backend replays it (`pad_decode`).
    fn lay_out<'a>(
        &self,
        mut batch: RaggedBatch,
        mut tables: Vec<&'a [usize]>,
        mut tokens: Vec<i32>,
        mut per_row: Vec<Sampling>,
        scratch: &'a [usize],
    ) -> Result<StepRows, EngineError> {
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| EngineError::Config("the engine's cache was freed".into()))?;
        let decode_only = batch.seqs.iter().all(|s| s.q_len == 1);
        // A decode step on a backend that replays it is padded to one of a few sizes.
        if decode_only && self.be.replays_repeated_steps() {
            pad_decode(&mut batch, &mut tables, &mut tokens, &mut per_row, scratch);
        }
        let layout = RaggedLayout::new(
            &batch,
            &tables,
            cache.block_size,
            cache.num_blocks,
            self.max_blocks,
            self.limits.context,
        )?;
        Ok(StepRows {
            batch,
            tokens,
            per_row,
            layout,
            decode_only,
        })
    }

    /// One step issued: inputs written, one `ragged_logits`, the per-row Sample op. Returns
    /// the sampled ids (on the device, not yet read) and the step's inputs, both for the caller
    /// to free once it has read them. With `feed`, the step's tokens are that tensor (the ids
    /// the step before sampled) instead of the ones written.
    fn issue(
        &mut self,
        rows: StepRows,
        feed: Option<Tensor>,
        k: usize,
    ) -> Result<(Tensor, RaggedInputs), EngineError> {
        let StepRows {
            batch,
            tokens,
            per_row,
            layout,
            decode_only,
        } = rows;
        let (batch, tokens) = (&batch, &tokens[..]);
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| EngineError::Config("the engine's cache was freed".into()))?;
        let be = &mut self.be;
        let inputs = self.model.alloc_ragged_inputs(be, batch, self.max_blocks)?;
        let ids = (|| {
            self.model
                .write_ragged_inputs(be, &inputs, tokens, &layout)?;
            let fed = feed.map(|ids| RaggedInputs {
                tokens: ids,
                ..inputs.clone()
            });
            let step = PagedStep {
                batch,
                inputs: fed.as_ref().unwrap_or(&inputs),
                cache,
            };
            let model = &self.model;
            let forward = |be: &mut B| {
                let logits = model.ragged_logits(be, &step)?;
                model.sample_rows(be, logits, per_row)
            };
            // A decode-only step of S sequences repeats, op for op and buffer for buffer, every
            // step the batch keeps its size: what changes (tokens, positions, slots, lengths,
            // block tables, sampling seeds) is in device memory, written above. A backend may
            // capture it once per S and replay it (CUDA graphs); prefill steps run eagerly. The
            // k-th step of an iteration reads the ids of the (k − 1)-th, another buffer, so it
            // is a step kind of its own.
            if decode_only {
                let s = batch.seqs.len();
                let key = match k {
                    0 => format!("paged-decode-{s}"),
                    _ => format!("paged-decode-{s}-fed-{k}"),
                };
                repeated_step(be, &key, forward)
            } else {
                forward(be)
            }
        })();
        match ids {
            Ok(ids) => Ok((ids, inputs)),
            Err(e) => {
                self.model.free_ragged_inputs(be, inputs);
                Err(e.into())
            }
        }
    }

    /// Frees the cache and hands back the backend and the model.
    pub fn into_parts(mut self) -> (B, Transformer) {
        self.abort_all(FinishReason::Cancelled);
        if let Some(cache) = self.cache.take() {
            self.model.free_paged_kv_cache(&mut self.be, cache);
        }
        (self.be, self.model)
    }

    pub fn backend(&mut self) -> &mut B {
        &mut self.be
    }
}

/// The text of `tokens[start..]` as it reads after `tokens[..start]`. Decoding the suffix alone
/// is not that for every tokenizer: SentencePiece-style decoders (Metaspace) drop the space a
/// word-initial "▁" stands for at the start of a decode, so a stream decoded window by window
/// lost the space at every window boundary. The token before `start` is decoded with the
/// suffix and its own text removed; where that text is not a prefix (a partial character),
/// the suffix alone.
fn decode_from(tokenizer: &Tokenizer, tokens: &[u32], start: usize) -> String {
    if start == 0 || start > tokens.len() {
        return tokenizer.decode(&tokens[start.min(tokens.len())..]);
    }
    let mut with_context = tokenizer.decode(&tokens[start - 1..]);
    let context = tokenizer.decode(&tokens[start - 1..start]);
    if with_context.starts_with(&context) {
        // In place: this runs for every sequence of every step.
        with_context.replace_range(..context.len(), "");
        with_context
    } else {
        tokenizer.decode(&tokens[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_step_is_padded_to_the_next_size_with_rows_in_the_scratch_block() {
        for (s, want) in [
            (1, 1),
            (3, 4),
            (16, 16),
            (17, 24),
            (129, 160),
            (256, 256),
            (300, 300),
        ] {
            let batch = RaggedBatch {
                seqs: (0..s)
                    .map(|i| SeqSpan {
                        pos: 10 + i,
                        q_len: 1,
                    })
                    .collect(),
            };
            let tables: Vec<Vec<usize>> = (0..s).map(|i| vec![i]).collect();
            let tokens: Vec<i32> = (0..s as i32).map(|i| i + 5).collect();
            let (mut b, mut k) = (batch.clone(), tokens.clone());
            let mut t: Vec<&[usize]> = tables.iter().map(|t| &t[..]).collect();
            let mut p = vec![Sampling::default(); s];
            pad_decode(&mut b, &mut t, &mut k, &mut p, &[999]);
            assert_eq!(
                (b.seqs.len(), t.len(), k.len(), p.len()),
                (want, want, want, want)
            );
            // The real rows keep their places; the padding is one token at position 0 in the
            // scratch block.
            assert_eq!(&b.seqs[..s], &batch.seqs[..]);
            assert!(t[..s].iter().zip(&tables).all(|(a, b)| a == b));
            assert_eq!(&k[..s], &tokens[..]);
            for i in s..want {
                assert_eq!(b.seqs[i], SeqSpan { pos: 0, q_len: 1 });
                assert_eq!((t[i], k[i]), (&[999][..], 0));
            }
        }
    }
}
