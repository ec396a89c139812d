//! The host cost of a decode step, measured without a device: the schedule and the engine's
//! bookkeeping run for real on a backend that does no device work, so what is timed is what a
//! GPU step spends on the host before (and after) the device has anything to do. On the CUDA
//! backend a replayed decode step re-runs the whole schedule before its graph launch, and the
//! engine's own part of a step (scheduling, detokenising, the sinks) is serial with the device
//! too, so every microsecond here is a microsecond of the step.
//!
//! Three measurements, each the median of many steps, with the heap allocations a step makes
//! (counted by this test binary's allocator):
//!   - the schedule alone of a gpt2-124m decode step at B = 1, T = 384, bf16 (`StepRunner`, the
//!     step `tperf bench --phase decode` replays);
//!   - the schedule alone of a paged ragged decode step of 224 rows (220 sequences padded as the
//!     engine pads them for a replaying backend): inputs allocated and written, `ragged_logits`,
//!     the per-row sample;
//!   - `EngineCore::step` with 220 decoding sequences on the same backend, split as its metrics
//!     split it: `host` (the engine's own part, `tperf_engine_step_seconds{part="host"}`) and
//!     `run` (the model's part, which on a GPU also waits for the device).
//!
//! Timing only: `cargo test --release -p tperf-engine --test host_cost -- --ignored --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::Instant;
use tperf_core::backend::{Backend, BackendError, OpCall};
use tperf_core::cost::analysis::{Scenario, StepRunner, Workload};
use tperf_core::ops::adamw::AdamWParams;
use tperf_core::ops::sampling::Sampling;
use tperf_core::presets;
use tperf_core::schedule::ragged::{RaggedBatch, RaggedLayout, SeqSpan};
use tperf_core::schedule::{Options, Precision, Transformer};
use tperf_core::tensor::{Tensor, TensorId, TensorSpec};
use tperf_engine::{EngineConfig, EngineCore, Event, Request};
use tperf_runtime::tokenizer::Tokenizer;

/// The system allocator, counting allocations (reallocations included): what a step allocates
/// is most of what it wastes.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Hands out ids, counts ops, runs none. It says it replays repeated steps, as the CUDA backend
/// with graphs does, so the engine pads decode steps as it does there; a read returns
/// distinct, changing token ids (none of them GPT-2's end of text), so sequences keep decoding
/// and their text keeps changing.
#[derive(Default)]
struct Null {
    next_id: u32,
    ops: u64,
    reads: u64,
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
        self.ops += 1;
        Ok(())
    }
    fn write_f32(&mut self, _: &Tensor, data: &[f32]) -> Result<(), BackendError> {
        std::hint::black_box(data);
        Ok(())
    }
    fn write_i32(&mut self, _: &Tensor, data: &[i32]) -> Result<(), BackendError> {
        std::hint::black_box(data);
        Ok(())
    }
    fn read_f32(&mut self, tensor: &Tensor) -> Result<Vec<f32>, BackendError> {
        self.reads += 1;
        let salt = self.reads * 7919;
        Ok((0..tensor.numel())
            .map(|i| ((i * 104_729 + salt) % 50_000) as f32)
            .collect())
    }
    fn replays_repeated_steps(&self) -> bool {
        true
    }
}

fn gpt2_124m() -> tperf_core::config::ModelConfig {
    presets::find("gpt2-124m").expect("preset").config
}

fn bf16() -> Options {
    Options {
        precision: Precision::Bf16,
        ..Options::default()
    }
}

/// One measured quantity over many steps.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn median(&mut self) -> f64 {
        self.0.sort_by(f64::total_cmp);
        self.0[self.0.len() / 2]
    }
}

/// Runs `step` `warmup + steps` times and returns the median microseconds and the allocations
/// of the last step.
fn time_steps(warmup: usize, steps: usize, mut step: impl FnMut()) -> (f64, u64) {
    let mut us = Samples::default();
    let mut allocs = 0;
    for i in 0..warmup + steps {
        let a0 = allocations();
        let t0 = Instant::now();
        step();
        let dt = t0.elapsed().as_secs_f64() * 1e6;
        allocs = allocations() - a0;
        if i >= warmup {
            us.0.push(dt);
        }
    }
    (us.median(), allocs)
}

fn report(what: &str, us: f64, ops: u64, allocs: u64) {
    println!(
        "{what}: {us:.1} us a step, {ops} ops ({:.0} ns an op), {allocs} allocations a step",
        us * 1e3 / ops.max(1) as f64
    );
}

fn schedule_decode_b1() {
    let mut be = Null::default();
    let sc = Scenario {
        workload: Workload::Decode,
        batch: 1,
        seq: 384,
        opts: bf16(),
    };
    let mut runner = StepRunner::new(&mut be, &gpt2_124m(), sc).expect("runner");
    runner.step(&mut be, AdamWParams::default()).expect("step");
    let ops0 = be.ops;
    runner.step(&mut be, AdamWParams::default()).expect("step");
    let ops = be.ops - ops0;
    let (us, allocs) = time_steps(200, 3000, || {
        runner.step(&mut be, AdamWParams::default()).expect("step")
    });
    report(
        "schedule alone, gpt2-124m decode B1 T384 bf16",
        us,
        ops,
        allocs,
    );
}

/// Sequences decoding at once, as in the H200 serving run whose host share this measures.
const SEQS: usize = 220;
/// What the engine pads 220 rows to on a replaying backend (its DECODE_SIZES).
const PADDED: usize = 224;
/// Each sequence's tokens when the measured steps begin.
const PROMPT: usize = 200;

fn schedule_ragged_decode() {
    let mut be = Null::default();
    let cfg = gpt2_124m();
    let model = Transformer::new(&mut be, &cfg, bf16(), false).expect("model");
    let block_size = 16;
    let max_blocks = cfg.context.div_ceil(block_size);
    let num_blocks = PADDED * max_blocks + 1;
    let cache = model
        .alloc_paged_kv_cache(&mut be, num_blocks, block_size)
        .expect("cache");
    let mut pos = PROMPT;
    let mut one_step = |be: &mut Null| {
        let batch = RaggedBatch {
            seqs: vec![SeqSpan { pos, q_len: 1 }; PADDED],
        };
        let tables: Vec<Vec<usize>> = (0..PADDED)
            .map(|s| {
                (0..(pos + 1).div_ceil(block_size))
                    .map(|j| s * max_blocks + j)
                    .collect()
            })
            .collect();
        let layout = RaggedLayout::new(
            &batch,
            &tables,
            block_size,
            num_blocks,
            max_blocks,
            cfg.context,
        )
        .expect("layout");
        let tokens = vec![7; PADDED];
        let inputs = model
            .alloc_ragged_inputs(be, &batch, max_blocks)
            .expect("inputs");
        model
            .write_ragged_inputs(be, &inputs, &tokens, &layout)
            .expect("write");
        let step = tperf_core::schedule::ragged::PagedStep {
            batch: &batch,
            inputs: &inputs,
            cache: &cache,
        };
        let logits = model.ragged_logits(be, &step).expect("forward");
        let ids = model
            .sample_rows(be, logits, vec![Sampling::default(); PADDED])
            .expect("sample");
        be.free(ids);
        model.free_ragged_inputs(be, inputs);
        pos = PROMPT + (pos + 1 - PROMPT) % 400;
    };
    one_step(&mut be);
    let ops0 = be.ops;
    one_step(&mut be);
    let ops = be.ops - ops0;
    let (us, allocs) = time_steps(200, 2000, || one_step(&mut be));
    report(
        &format!("schedule alone, gpt2-124m paged decode of {PADDED} rows bf16 (inputs, forward, sample)"),
        us,
        ops,
        allocs,
    );
}

fn engine_decode() {
    let mut be = Null::default();
    let cfg = gpt2_124m();
    let model = Transformer::new(&mut be, &cfg, bf16(), false).expect("model");
    let max_tokens = 700;
    let ecfg = EngineConfig {
        kv_blocks: SEQS * (PROMPT + max_tokens).div_ceil(16) + 16,
        ..EngineConfig::default()
    };
    let mut core = EngineCore::new(be, model, Tokenizer::gpt2(), ecfg).expect("engine");
    let mut rxs: Vec<Receiver<Event>> = Vec::new();
    for r in 0..SEQS as u32 {
        let prompt = (0..PROMPT as u32)
            .map(|i| (r * 131 + i * 17) % 50_000)
            .collect();
        let (tx, rx) = mpsc::channel();
        core.add(r as u64, Request::greedy(prompt, max_tokens), Box::new(tx))
            .expect("accepted");
        rxs.push(rx);
    }
    // Prefill (chunked under the token budget) until every sequence decodes.
    while core
        .step()
        .expect("step")
        .scheduled
        .iter()
        .any(|&(_, q)| q > 1)
    {}
    let ops0 = core.backend().ops;
    core.step().expect("step");
    let ops = core.backend().ops - ops0;
    let (mut total, mut host, mut run) =
        (Samples::default(), Samples::default(), Samples::default());
    let mut allocs = 0;
    for i in 0..600 {
        let before = core.metrics();
        let a0 = allocations();
        let t0 = Instant::now();
        let r = core.step().expect("step");
        let dt = t0.elapsed().as_secs_f64() * 1e6;
        allocs = allocations() - a0;
        assert_eq!(r.scheduled.len(), SEQS, "every sequence still decodes");
        let after = core.metrics();
        if i >= 50 {
            total.0.push(dt);
            host.0
                .push((after.step_host_seconds - before.step_host_seconds) * 1e6);
            run.0
                .push((after.step_device_seconds - before.step_device_seconds) * 1e6);
        }
        // The clients' side, untimed: what the HTTP streams would take.
        for rx in &rxs {
            while rx.try_recv().is_ok() {}
        }
    }
    println!(
        "EngineCore::step, gpt2-124m, {SEQS} sequences decoding (padded to {PADDED}), bf16: \
         {:.1} us a step = host {:.1} us (the engine's own part) + run {:.1} us (inputs, \
         schedule, sample, read; {ops} ops, {:.0} ns an op); {allocs} allocations a step",
        total.median(),
        host.median(),
        run.median(),
        run.median() * 1e3 / ops.max(1) as f64,
    );
}

#[test]
#[ignore = "timing: run with --ignored --nocapture"]
fn decode_step_host_cost() {
    schedule_decode_b1();
    schedule_ragged_decode();
    engine_decode();
}
