//! Profile one scenario: every op of the schedule timed on the compute backend, joined by its
//! position with the Meta backend's prediction of the same op; rollups the way nsys's stats
//! print them; a Chrome/Perfetto trace; the measured memory timeline.

use crate::device::{Device, Instrumented};
use crate::kernels::KernelTable;
use crate::model::BenchError;
use crate::stats::Summary;
use serde::Serialize;
use std::time::Instant;
use tperf_core::backend::BackendError;
use tperf_core::config::ModelConfig;
use tperf_core::cost::analysis::{self, Analysis, Scenario};
use tperf_core::cost::hardware::Hardware;
use tperf_core::ledger::MemEvent;
use tperf_core::ops::Phase;
use tperf_cpu::CpuBackend;
use tperf_cuda::CudaBackend;

/// One op's measurements across the profiled steps.
#[derive(Clone, Debug, Serialize)]
pub struct OpMeasured {
    /// Position in the schedule: the index of the modelled row it joins.
    pub index: usize,
    /// Seconds per profiled step.
    pub seconds: Vec<f64>,
    pub median: f64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StepAccount {
    pub step_seconds: f64,
    pub ops_seconds: f64,
    pub between_ops_seconds: f64,
    pub outside_ops_seconds: f64,
}

/// One event of the trace, in microseconds from the start of the traced step.
#[derive(Clone, Debug, Serialize)]
pub struct TraceEvent {
    pub index: usize,
    pub start_us: f64,
    pub dur_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub analysis: Analysis,
    pub device: String,
    pub ops: Vec<OpMeasured>,
    /// Wall seconds of each profiled step, allocation and input writes included.
    pub step_seconds: Summary,
    /// The sum of the ops' times in each step.
    pub op_sum_seconds: Summary,
    /// The cost of one timer reading pair, measured; each op pays it once.
    pub timer_overhead_seconds: f64,
    /// The last profiled step's ops on a timeline.
    pub trace: Vec<TraceEvent>,
    /// The last profiled step's wall time, split: its ops, the host's work between ops
    /// (allocation, frees, bookkeeping), and before the first op and after the last (writing
    /// the inputs, freeing the outputs). The three add up to the step exactly.
    pub last_step: StepAccount,
    /// The last profiled step's allocations and frees, as the backend saw them.
    pub memory_events: Vec<MemEvent>,
    /// The last profiled step's GPU kernels as CUPTI saw them (None on the CPU, or where CUPTI
    /// is unavailable: then `kernel_trace_note` says why).
    pub kernels: Option<KernelTable>,
    pub kernel_trace_note: Option<String>,
}

impl Profile {
    /// Measured seconds of the ops of one phase in one step (medians summed).
    pub fn phase_seconds(&self, phase: Phase) -> f64 {
        self.ops
            .iter()
            .filter(|o| self.analysis.rows[o.index].phase == phase)
            .map(|o| o.median)
            .sum()
    }
}

pub fn profile_cpu(
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    warmup: usize,
    steps: usize,
    on_step: impl FnMut(usize),
) -> Result<Profile, BenchError> {
    profile(Device::Cpu, cfg, sc, hw, warmup, steps, on_step)
}

/// Profiles `sc` on `device`: every op timed (wall clock on the CPU, CUDA events on the GPU),
/// joined with the model's row of the same index.
pub fn profile(
    device: Device,
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    warmup: usize,
    steps: usize,
    on_step: impl FnMut(usize),
) -> Result<Profile, BenchError> {
    match device {
        Device::Cpu => profile_on(CpuBackend::new(), cfg, sc, hw, warmup, steps, on_step),
        Device::Cuda(i) => profile_on(CudaBackend::new(i)?, cfg, sc, hw, warmup, steps, on_step),
    }
}

fn profile_on<B: Instrumented>(
    mut be: B,
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    warmup: usize,
    steps: usize,
    mut on_step: impl FnMut(usize),
) -> Result<Profile, BenchError> {
    if steps == 0 {
        return Err(BenchError::NoSteps);
    }
    let analysis = analysis::analyze(cfg, sc, hw)?;
    let n_ops = analysis.rows.len();
    let mut runner = crate::model::runner_on(&mut be, cfg, sc)?;
    let hyper = crate::model::bench_hyper();
    for i in 0..warmup {
        runner.step(&mut be, hyper)?;
        be.sync()?;
        on_step(i);
    }
    be.start_op_timing()?;
    let mut per_op: Vec<Vec<f64>> = vec![Vec::with_capacity(steps); n_ops];
    let mut step_times = Vec::with_capacity(steps);
    let mut op_sums = Vec::with_capacity(steps);
    let mut trace = Vec::new();
    let mut memory_events = Vec::new();
    let mut last_step = StepAccount::default();
    let mut kernels = None;
    let mut kernel_trace_note = None;
    for s in 0..steps {
        let last = s + 1 == steps;
        if last {
            be.start_memory_events();
            if let Err(why) = be.start_kernel_trace() {
                kernel_trace_note = Some(tperf_core::error::report(&why));
            }
        }
        let first_op = be.ops_run();
        let t0 = Instant::now();
        runner.step(&mut be, hyper)?;
        be.sync()?;
        step_times.push(t0.elapsed().as_secs_f64());
        if last && kernel_trace_note.is_none() {
            match be.finish_kernel_trace(first_op) {
                Ok(table) => kernels = table,
                Err(why) => kernel_trace_note = Some(tperf_core::error::report(&why)),
            }
        }
        let log = be.take_op_timing()?;
        if log.len() != n_ops {
            return Err(BenchError::Backend(BackendError::Device {
                backend: "profile",
                message: format!(
                    "the step ran {} ops where the schedule's record has {n_ops}: measured and modelled cannot be joined",
                    log.len()
                ),
            }));
        }
        let mut sum = 0.0;
        for op in &log {
            let pos = op.index - first_op;
            per_op[pos].push(op.duration);
            sum += op.duration;
            if last {
                trace.push(TraceEvent {
                    index: pos,
                    start_us: op.start * 1e6,
                    dur_us: op.duration * 1e6,
                });
            }
        }
        op_sums.push(sum);
        if last {
            memory_events = be.take_memory_events();
            // The ledger counts ops from the backend's first; the step's events are placed
            // from its own first op, as the schedule's record numbers them.
            for e in &mut memory_events {
                e.ops_before = e.ops_before.saturating_sub(first_op);
            }
            let step = *step_times.last().expect("pushed above");
            let first = trace.first().map_or(0.0, |e| e.start_us) * 1e-6;
            let end = trace
                .iter()
                .map(|e| e.start_us + e.dur_us)
                .fold(0.0, f64::max)
                * 1e-6;
            last_step = StepAccount {
                step_seconds: step,
                ops_seconds: sum,
                between_ops_seconds: (end - first) - sum,
                outside_ops_seconds: step - (end - first),
            };
        }
        on_step(warmup + s);
    }
    runner.free(&mut be);
    let ops = per_op
        .into_iter()
        .enumerate()
        .map(|(index, seconds)| {
            let median = Summary::of(&seconds).map_or(0.0, |s| s.median);
            OpMeasured {
                index,
                seconds,
                median,
            }
        })
        .collect();
    Ok(Profile {
        analysis,
        device: be.name(),
        ops,
        step_seconds: Summary::of(&step_times).ok_or(BenchError::NoSteps)?,
        op_sum_seconds: Summary::of(&op_sums).ok_or(BenchError::NoSteps)?,
        timer_overhead_seconds: crate::harness::timer_overhead_seconds(),
        trace,
        last_step,
        memory_events,
        kernels,
        kernel_trace_note,
    })
}

/// The name of the NVTX range around the counted step; its op ranges inside are numbered from
/// `first op #N` (see [`crate::counters`]).
pub const COUNTED_STEP_RANGE: &str = "tperf counted step";

/// The step that Nsight Compute counts (`tperf profile --counters` runs this in a child under
/// `ncu`): `warmup` steps, then one step eagerly (no CUDA graph, so every kernel is launched
/// inside its op's NVTX range), inside a range named [`COUNTED_STEP_RANGE`] with the index of its
/// first op, so that the counters' rows join the schedule's ops by position.
pub fn counted_step(
    device: Device,
    cfg: &ModelConfig,
    sc: &Scenario,
    warmup: usize,
) -> Result<(), BenchError> {
    match device {
        Device::Cpu => counted_step_on(CpuBackend::new(), cfg, sc, warmup),
        Device::Cuda(i) => counted_step_on(CudaBackend::new(i)?, cfg, sc, warmup),
    }
}

fn counted_step_on<B: Instrumented>(
    mut be: B,
    cfg: &ModelConfig,
    sc: &Scenario,
    warmup: usize,
) -> Result<(), BenchError> {
    be.set_step_graphs(false);
    let mut runner = crate::model::runner_on(&mut be, cfg, sc)?;
    let hyper = crate::model::bench_hyper();
    for _ in 0..warmup {
        runner.step(&mut be, hyper)?;
    }
    be.sync()?;
    let first_op = be.ops_run();
    be.push_range(&format!("{COUNTED_STEP_RANGE} first op #{first_op}"));
    let stepped = runner.step(&mut be, hyper);
    be.pop_range();
    stepped?;
    be.sync()?;
    runner.free(&mut be);
    Ok(())
}

/// The trace in the Chrome trace-event format (opens in Perfetto and chrome://tracing): one
/// complete event per op with its name, label, layer, phase and dimensions.
pub fn chrome_trace(p: &Profile) -> serde_json::Value {
    let events: Vec<serde_json::Value> = p
        .trace
        .iter()
        .map(|e| {
            let r = &p.analysis.rows[e.index];
            serde_json::json!({
                "name": format!("{} {}", r.name, r.label),
                "cat": r.phase.name(),
                "ph": "X",
                "ts": e.start_us,
                "dur": e.dur_us,
                "pid": 1,
                "tid": 1,
                "args": {
                    "index": r.index,
                    "layer": r.layer,
                    "dims": r.dims,
                    "flops": r.flops,
                    "bytes": r.bytes,
                    "modelled_us": r.seconds * 1e6,
                },
            })
        })
        .collect();
    serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tperf_core::cost::analysis::Workload;
    use tperf_core::cost::hardware;
    use tperf_core::schedule::Options;

    /// Every op of every profiled step is measured and joined to its modelled row; the ops'
    /// times add up to no more than the step's wall time.
    #[test]
    fn every_op_is_measured_and_joined() {
        let mut cfg = tperf_core::presets::find("small").unwrap().config;
        cfg.vocab_size = 61;
        cfg.n_layers = 2;
        cfg.d_model = 32;
        cfg.d_ff = 64;
        let cfg = cfg.with_heads(4, 2).unwrap();
        let hw = hardware::detect_local_cpu();
        let sc = Scenario {
            workload: Workload::Train,
            batch: 2,
            seq: 8,
            opts: Options::default(),
        };
        let p = profile_cpu(&cfg, &sc, &hw, 1, 3, |_| {}).unwrap();
        assert_eq!(p.ops.len(), p.analysis.rows.len());
        assert!(p.ops.iter().all(|o| o.seconds.len() == 3 && o.median > 0.0));
        assert!(p.op_sum_seconds.max <= p.step_seconds.max);
        assert_eq!(p.trace.len(), p.analysis.rows.len());
        assert!(p.trace.windows(2).all(|w| w[0].start_us <= w[1].start_us));
        // The step's time is accounted for: its ops, the host's work between them, and what
        // lies before the first and after the last add up to the wall time, each part ≥ 0
        // within the timer's resolution.
        let a = p.last_step;
        let parts = a.ops_seconds + a.between_ops_seconds + a.outside_ops_seconds;
        assert!((parts - a.step_seconds).abs() < 1e-9, "{a:?}");
        let slack = 2.0 * p.timer_overhead_seconds * p.ops.len() as f64 + 1e-6;
        assert!(
            a.between_ops_seconds >= -slack && a.outside_ops_seconds >= -slack,
            "{a:?}"
        );
        // The measured timeline of one step balances: everything the step allocated is freed.
        let net: i64 = p.memory_events.iter().map(|e| e.delta_bytes).sum();
        assert_eq!(net, 0);
        let trace = chrome_trace(&p);
        assert_eq!(
            trace["traceEvents"].as_array().unwrap().len(),
            p.trace.len()
        );
    }
}
