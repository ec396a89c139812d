//! Benchmark one scenario: the Meta backend's prediction and the compute backend's measurement
//! of the same schedule (both issued by `StepRunner`), side by side.

use crate::device::{Device, Instrumented};
use crate::harness;
use crate::stats::Summary;
use serde::Serialize;
use thiserror::Error;
use tperf_core::backend::{Backend, BackendError};
use tperf_core::config::ModelConfig;
use tperf_core::cost::analysis::{self, Analysis, AnalysisError, Scenario, StepRunner};
use tperf_core::cost::hardware::Hardware;
use tperf_core::ops::adamw::AdamWParams;
use tperf_core::ops::sampling::Sampling;
use tperf_cpu::CpuBackend;
use tperf_cuda::CudaBackend;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("--steps must be at least 1 (a benchmark needs a timed step)")]
    NoSteps,
}

/// Warm-up and timed steps.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Repeats {
    pub warmup: usize,
    pub steps: usize,
}

/// How the timed steps are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Timing {
    /// Each step followed by a synchronisation and timed alone (the default): a step's time is
    /// the host's issue time and the device's run in series.
    Synced,
    /// The timed steps issued back to back, one synchronisation after the last
    /// (`harness::time_back_to_back`): the host issues a step while the device runs the one
    /// before, as a pipelined generation loop does and as the PyTorch decode peer
    /// (bench/pytorch/bench_peers.py) times its graph replays.
    BackToBack,
}

/// How a bench row runs its steps.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Method {
    /// CUDA graphs where the device has them; false runs every step eagerly (each op launched
    /// by the host), to measure what graph replay saves.
    pub graphs: bool,
    pub timing: Timing,
    /// How prefill and decode steps draw their token.
    pub sampling: Sampling,
}

impl Default for Method {
    fn default() -> Self {
        Method {
            graphs: true,
            timing: Timing::Synced,
            sampling: Sampling::default(),
        }
    }
}

/// One scenario measured, with the model's prediction beside it.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub model: String,
    pub params: u64,
    pub scenario: Scenario,
    pub device: String,
    pub repeats: Repeats,
    pub method: Method,
    /// Seconds per step.
    pub measured: Summary,
    /// The roofline prediction of the same step on the device's hardware entry.
    pub modelled_seconds: f64,
    /// FLOPs of one step, from the schedule (convention: see `tperf model`).
    pub flops_per_step: u64,
    /// FLOPs per step over the median step time.
    pub achieved_flops_per_s: f64,
    /// Achieved FLOP/s over the hardware's peak for the compute dtype.
    pub mfu: f64,
    pub tokens_per_s: f64,
    /// The largest bytes in use during the timed steps, at the tensors' dtype widths.
    pub peak_bytes_measured: u64,
    pub peak_bytes_modelled: u64,
    /// How the steps ran where the device has graphs (warm-up included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graphs: Option<tperf_cuda::GraphStats>,
    /// Median host seconds of a replayed step, from the entry of `begin_step` to the return of
    /// its `cuGraphLaunch` (`GraphStats::replay_host_seconds`): the part of `measured` in which
    /// the device waits for the host. None where no step was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_host_seconds: Option<f64>,
}

impl BenchRow {
    /// Measured median over modelled: 1.0 would be the roofline.
    pub fn ratio_to_model(&self) -> f64 {
        self.measured.median / self.modelled_seconds
    }
}

/// The model's prediction for a scenario on a hardware entry.
pub fn predict(cfg: &ModelConfig, sc: &Scenario, hw: &Hardware) -> Result<Analysis, BenchError> {
    Ok(analysis::analyze(cfg, sc, hw)?)
}

/// Host bytes the CPU backend needs for the predicted peak, at most: it stores bf16/f16
/// activations, their gradients and the KV cache as f32 (weights alone in 16 bits), so a mixed
/// policy needs up to twice the modelled bytes.
pub fn cpu_bytes_needed(a: &Analysis) -> u64 {
    let width = a.scenario.opts.precision.compute_dtype().size_bytes();
    a.memory.peak_bytes * 4 / width.max(1)
}

/// A backend holding `sc`'s model with initialised weights, ready to step.
pub(crate) fn runner_on<B: Backend>(
    be: &mut B,
    cfg: &ModelConfig,
    sc: &Scenario,
) -> Result<StepRunner, BenchError> {
    let runner = StepRunner::new(be, cfg, *sc)?;
    runner.model.init_weights(be, 1234)?;
    Ok(runner)
}

/// A small learning rate keeps repeated training steps numerically tame: a benchmark measures
/// speed, and values that blow up to inf or NaN could take slow paths.
pub(crate) fn bench_hyper() -> AdamWParams {
    AdamWParams {
        lr: 1e-5,
        ..AdamWParams::default()
    }
}

/// Measures `sc` on the CPU backend. `on_step` sees each step's index (warm-up included), for a
/// progress bar.
pub fn run_cpu(
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    repeats: Repeats,
    on_step: impl FnMut(usize),
) -> Result<BenchRow, BenchError> {
    run(Device::Cpu, cfg, sc, hw, repeats, on_step)
}

/// Measures `sc` on `device`, with CUDA graphs where the device has them.
pub fn run(
    device: Device,
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    repeats: Repeats,
    on_step: impl FnMut(usize),
) -> Result<BenchRow, BenchError> {
    run_with(device, Method::default(), cfg, sc, hw, repeats, on_step)
}

/// Measures `sc` on `device`, its steps run and timed as `method` says.
pub fn run_with(
    device: Device,
    method: Method,
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    repeats: Repeats,
    on_step: impl FnMut(usize),
) -> Result<BenchRow, BenchError> {
    match device {
        Device::Cpu => run_on(CpuBackend::new(), method, cfg, sc, hw, repeats, on_step),
        Device::Cuda(i) => {
            let mut be = CudaBackend::new(i)?;
            be.set_graphs(method.graphs);
            run_on(be, method, cfg, sc, hw, repeats, on_step)
        }
    }
}

/// Synced, each step is followed by a synchronisation, so a step's time is the device's time
/// for it (the GPU runs behind the host otherwise), as PyTorch benchmarks do with
/// `torch.cuda.synchronize()`; back to back, one synchronisation ends the timed steps.
fn run_on<B: Instrumented>(
    mut be: B,
    method: Method,
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    repeats: Repeats,
    on_step: impl FnMut(usize),
) -> Result<BenchRow, BenchError> {
    if repeats.steps == 0 {
        return Err(BenchError::NoSteps);
    }
    let prediction = predict(cfg, sc, hw)?;
    let mut runner = runner_on(&mut be, cfg, sc)?;
    runner.sampling = method.sampling;
    let hyper = bench_hyper();
    be.sync()?;
    be.reset_peak();
    let be = std::cell::RefCell::new(be);
    let mut step = || runner.step(&mut *be.borrow_mut(), hyper);
    let sync = || be.borrow_mut().sync();
    let times = match method.timing {
        Timing::Synced => harness::time_steps(
            repeats.warmup,
            repeats.steps,
            || Ok::<(), BackendError>(()),
            || {
                step()?;
                sync()
            },
            on_step,
        )?,
        Timing::BackToBack => {
            harness::time_back_to_back(repeats.warmup, repeats.steps, sync, step, on_step)?
        }
    };
    let mut be = be.into_inner();
    let peak = be.peak_bytes();
    let graphs = be.step_graphs();
    runner.free(&mut be);
    let measured = Summary::of(&times).ok_or(BenchError::NoSteps)?;
    let flops = prediction.total.flops;
    let achieved = flops as f64 / measured.median;
    let peak_flops = hw.peak_flops(sc.opts.precision.compute_dtype());
    Ok(BenchRow {
        model: cfg.name.clone(),
        params: cfg.param_count(),
        scenario: *sc,
        device: be.name(),
        repeats,
        method,
        measured,
        modelled_seconds: prediction.step_seconds(),
        flops_per_step: flops,
        achieved_flops_per_s: achieved,
        mfu: achieved / peak_flops,
        tokens_per_s: prediction.tokens_per_step as f64 / measured.median,
        peak_bytes_measured: peak,
        peak_bytes_modelled: prediction.memory.peak_bytes,
        replay_host_seconds: graphs.as_ref().and_then(|g| g.replay_host_median_seconds()),
        graphs,
    })
}

/// What would fit when `sc` does not fit in `hw`'s memory: the model's peak for the same step
/// with flash attention, bf16, recomputation, and smaller batches, each that fits listed with
/// its predicted peak. Empty when nothing tried fits.
pub fn fit_advice(cfg: &ModelConfig, sc: &Scenario, hw: &Hardware) -> Vec<String> {
    use tperf_core::schedule::{AttentionKernel, Precision, Recompute};
    let mut tries: Vec<(String, Scenario)> = Vec::new();
    let mut with = |what: &str, f: &dyn Fn(&mut Scenario)| {
        let mut s = *sc;
        f(&mut s);
        if format!("{s:?}") != format!("{sc:?}") {
            tries.push((what.to_string(), s));
        }
    };
    with("--attention flash", &|s| {
        s.opts.attention = AttentionKernel::Flash
    });
    with("--dtype bf16", &|s| s.opts.precision = Precision::Bf16);
    with("--recompute selective", &|s| {
        s.opts.recompute = Recompute::Selective
    });
    with("--recompute full", &|s| s.opts.recompute = Recompute::Full);
    let mut b = sc.batch / 2;
    while b >= 1 {
        let label = format!("--batch {b}");
        with(&label, &|s| s.batch = b);
        b /= 2;
    }
    tries
        .into_iter()
        .filter_map(|(what, s)| {
            let a = analysis::analyze(cfg, &s, hw).ok()?;
            (a.memory.peak_bytes <= hw.memory_bytes).then(|| {
                format!(
                    "{what}: predicted peak {:.2} GiB",
                    a.memory.peak_bytes as f64 / (1u64 << 30) as f64
                )
            })
        })
        .collect()
}

/// The error for a step predicted not to fit: the requirement, the capacity, what would fit.
pub fn out_of_memory_message(
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    needed: u64,
) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let advice = fit_advice(cfg, sc, hw);
    format!(
        "out of memory: {} {} B{} T{} {} needs a predicted {:.2} GiB; {} has {:.2} GiB.{}",
        cfg.name,
        sc.workload.name(),
        sc.batch,
        sc.seq,
        sc.opts.precision.name(),
        gib(needed),
        hw.name,
        gib(hw.memory_bytes),
        if advice.is_empty() {
            " Nothing tried fits (flash attention, bf16, recomputation, smaller batches): use a smaller model or more memory.".to_string()
        } else {
            format!(" What would fit: {}", advice.join("; "))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tperf_core::cost::analysis::Workload;
    use tperf_core::cost::hardware;
    use tperf_core::schedule::Options;

    /// The measured peak (tracked by the CPU backend at dtype widths) equals the Meta backend's
    /// prediction: both come from the same schedule's allocations.
    #[test]
    fn measured_memory_equals_the_model() {
        let mut cfg = tperf_core::presets::find("gpt2-124m").unwrap().config;
        cfg.vocab_size = 97;
        cfg.n_layers = 2;
        cfg.d_model = 64;
        cfg.d_ff = 256;
        let cfg = cfg.with_heads(4, 4).unwrap();
        let hw = hardware::detect_local_cpu();
        for workload in [
            Workload::Train,
            Workload::FwdBwd,
            Workload::Forward,
            Workload::Prefill,
            Workload::Decode,
        ] {
            let sc = Scenario {
                workload,
                batch: 2,
                seq: 16,
                opts: Options::default(),
            };
            let row = run_cpu(
                &cfg,
                &sc,
                &hw,
                Repeats {
                    warmup: 1,
                    steps: 2,
                },
                |_| {},
            )
            .unwrap();
            assert_eq!(
                row.peak_bytes_measured, row.peak_bytes_modelled,
                "{workload:?}"
            );
            assert!(row.measured.median > 0.0 && row.tokens_per_s > 0.0);
        }
    }
}
