//! The conformance suite: every CUDA kernel against the CPU backend, which is itself tested
//! against the references in `tperf_core::ops` and against PyTorch.
//!
//! Two levels:
//! - [`run_case`]: one op on tensors filled with random values (or ids), run on both backends,
//!   every output compared. Used for edge shapes (0, 1, odd, large).
//! - [`Mirror`]: a backend that runs every op of a real schedule (training step, forward,
//!   prefill, decode; every precision, attention kernel, recompute and fusion option) on both
//!   backends, compares each op's outputs, then copies the CPU's outputs into the GPU's tensors
//!   so the next op starts from identical inputs and one kernel's error never hides in the next.
//!
//! Error measure: max |gpu − cpu| over a tensor, divided by max |cpu| over it (the tensor's
//! scale), so values near zero do not produce meaningless relative errors. Tolerances per
//! storage dtype: f32 1e-4 (different summation orders in f32; cuBLASLt and the gemm crate
//! accumulate in a different order, and K up to a few thousand); bf16 1.6e-2 (about two units
//! in the last place of an 8-bit significand, 2⁻⁸ = 3.9e-3 each: an f32 intermediate that falls
//! either side of a rounding boundary rounds a different way); f16 4e-3 (two ulps of 2⁻¹¹, plus
//! the same margin); i32 exact. NaN or ∞ where the CPU has a finite value fails. An output is
//! held to the loosest tolerance among its own dtype and the op's floating-point inputs': an f32
//! weight gradient computed from bf16 activations carries bf16 rounding of the intermediates
//! (the fused activation's dpre is stored in the activations' dtype on the GPU, as autocast does,
//! where the CPU keeps it in f32).

use crate::CudaBackend;
use std::collections::BTreeMap;
use tperf_core::backend::{Backend, BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::Op;
use tperf_core::rng::Rng;
use tperf_core::tensor::{Tensor, TensorId, TensorSpec};
use tperf_cpu::CpuBackend;

/// The tolerance for an output of `dtype` computed from `inputs` (see the module comment).
pub fn output_tolerance(dtype: DType, inputs: &[Tensor]) -> f64 {
    if dtype == DType::I32 {
        return 0.0;
    }
    inputs
        .iter()
        .filter(|t| t.dtype != DType::I32)
        .map(|t| tolerance(t.dtype))
        .fold(tolerance(dtype), f64::max)
}

pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-4,
        DType::Bf16 => 1.6e-2,
        DType::F16 => 4e-3,
        DType::I32 => 0.0,
    }
}

/// How one output compared.
#[derive(Clone, Debug)]
pub struct Diff {
    pub op: String,
    pub label: String,
    pub output: usize,
    pub dtype: DType,
    pub numel: usize,
    /// max |gpu − cpu| / max |cpu| (∞ when one side is not finite where the other is).
    pub error: f64,
    pub tolerance: f64,
}

impl Diff {
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }
}

pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let mut worst = 0f64;
    let mut scale = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        if w.is_finite() != g.is_finite() || (w.is_nan() != g.is_nan()) {
            return f64::INFINITY;
        }
        if w.is_finite() {
            worst = worst.max((g as f64 - w as f64).abs());
            scale = scale.max((w as f64).abs());
        }
    }
    if worst == 0.0 {
        0.0
    } else {
        worst / scale.max(f64::MIN_POSITIVE)
    }
}

/// How a tensor of a case is filled.
#[derive(Clone, Copy, Debug)]
pub enum Fill {
    /// Normal values with this standard deviation.
    Normal(f64),
    /// Uniform integer ids in 0..limit (i32 tensors).
    Ids(usize),
    /// Every element this value.
    Value(f32),
}

/// One op on explicit tensors: `inputs` and `outputs` index `tensors` (a tensor both read and
/// written appears in both).
#[derive(Clone, Debug)]
pub struct OpCase {
    pub op: Op,
    pub tensors: Vec<(TensorSpec, Fill)>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
}

fn fill_values(fill: Fill, n: usize, rng: &mut Rng) -> Vec<f32> {
    match fill {
        Fill::Normal(std) => rng.normal_vec(n, std),
        Fill::Ids(limit) => (0..n)
            .map(|_| (rng.next_u64() % limit.max(1) as u64) as f32)
            .collect(),
        Fill::Value(v) => vec![v; n],
    }
}

fn write(be: &mut impl Backend, t: &Tensor, values: &[f32]) -> Result<(), BackendError> {
    if t.dtype == DType::I32 {
        let ids: Vec<i32> = values.iter().map(|&v| v as i32).collect();
        be.write_i32(t, &ids)
    } else {
        be.write_f32(t, values)
    }
}

/// A tensor of an op case: an activation-category spec and how to fill it.
pub fn case_tensor(name: &str, shape: &[usize], dtype: DType, fill: Fill) -> (TensorSpec, Fill) {
    (
        TensorSpec::new(
            name.to_string(),
            shape,
            dtype,
            tperf_core::tensor::MemCategory::Activations,
        ),
        fill,
    )
}

/// Runs `case` with inputs drawn from `seed` and panics, naming `what`, the output and its
/// error, unless it ran and every output is within its tolerance (for the GPU tests).
pub fn assert_case_passes(gpu: &mut CudaBackend, case: &OpCase, seed: u64, what: &str) {
    let diffs = run_case(gpu, case, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(diffs.len(), case.outputs.len(), "{what}: outputs compared");
    for d in diffs {
        assert!(
            d.passed(),
            "{what}: output {} ({}, {} elements) is off by {:.3e} (tolerance {:.1e})",
            d.output,
            d.dtype,
            d.numel,
            d.error,
            d.tolerance
        );
    }
}

/// Runs `case` on both backends from identical inputs and compares every output.
pub fn run_case(
    gpu: &mut CudaBackend,
    case: &OpCase,
    seed: u64,
) -> Result<Vec<Diff>, BackendError> {
    let mut cpu = CpuBackend::new();
    let mut rng = Rng::new(seed);
    let mut on_cpu = Vec::new();
    let mut on_gpu = Vec::new();
    for (spec, fill) in &case.tensors {
        let values = fill_values(*fill, spec.numel() as usize, &mut rng);
        let (c, g) = (cpu.alloc(spec.clone())?, gpu.alloc(spec.clone())?);
        write(&mut cpu, &c, &values)?;
        write(gpu, &g, &values)?;
        on_cpu.push(c);
        on_gpu.push(g);
    }
    let call = |ts: &[Tensor]| {
        OpCall::from_lists(
            case.op.clone(),
            case.inputs.iter().map(|&i| ts[i].clone()).collect(),
            case.outputs.iter().map(|&i| ts[i].clone()).collect(),
            "case",
            None,
            tperf_core::ops::Phase::Forward,
        )
    };
    cpu.exec(call(&on_cpu))?;
    gpu.exec(call(&on_gpu))?;
    let mut diffs = Vec::new();
    for (k, &i) in case.outputs.iter().enumerate() {
        let want = cpu.read_f32(&on_cpu[i])?;
        let got = gpu.read_f32(&on_gpu[i])?;
        let dtype = on_cpu[i].dtype;
        diffs.push(Diff {
            op: case.op.name().to_string(),
            label: "case".into(),
            output: k,
            dtype,
            numel: want.len(),
            error: relative_error(&got, &want),
            tolerance: output_tolerance(dtype, &call(&on_cpu).inputs),
        });
    }
    for t in on_gpu {
        gpu.free(t);
    }
    Ok(diffs)
}

/// Runs every op on the CPU and the GPU, compares, and resynchronises (module comment).
pub struct Mirror<'a> {
    pub cpu: CpuBackend,
    pub gpu: &'a mut CudaBackend,
    /// CPU tensor id → GPU tensor.
    map: BTreeMap<TensorId, Tensor>,
    pub diffs: Vec<Diff>,
}

impl<'a> Mirror<'a> {
    pub fn new(gpu: &'a mut CudaBackend) -> Result<Self, BackendError> {
        // A fresh CPU backend draws its samples from the start of the sampling stream; so must
        // the GPU, or the same logits give different tokens.
        gpu.restart_sampling()?;
        Ok(Mirror {
            cpu: CpuBackend::new(),
            gpu,
            map: BTreeMap::new(),
            diffs: Vec::new(),
        })
    }

    fn on_gpu(&self, t: &Tensor) -> Result<Tensor, BackendError> {
        self.map
            .get(&t.id)
            .cloned()
            .ok_or_else(|| BackendError::Device {
                backend: "mirror",
                message: format!("tensor #{} has no GPU twin", t.id.0),
            })
    }

    /// The worst error per (op, dtype), for the summary table.
    pub fn worst_by_op(&self) -> BTreeMap<(String, &'static str), Diff> {
        let mut out: BTreeMap<(String, &'static str), Diff> = BTreeMap::new();
        for d in &self.diffs {
            let key = (d.op.clone(), d.dtype.name());
            match out.get(&key) {
                Some(w) if w.error / w.tolerance.max(1e-30) >= d.error / d.tolerance.max(1e-30) => {
                }
                _ => {
                    out.insert(key, d.clone());
                }
            }
        }
        out
    }
}

impl Backend for Mirror<'_> {
    fn name(&self) -> String {
        format!("mirror(cpu, {})", self.gpu.name())
    }

    fn alloc(&mut self, spec: TensorSpec) -> Result<Tensor, BackendError> {
        let g = self.gpu.alloc(spec.clone())?;
        let c = self.cpu.alloc(spec)?;
        self.map.insert(c.id, g);
        Ok(c)
    }

    fn free(&mut self, tensor: Tensor) {
        if let Some(g) = self.map.remove(&tensor.id) {
            self.gpu.free(g);
        }
        self.cpu.free(tensor);
    }

    fn exec(&mut self, call: OpCall) -> Result<(), BackendError> {
        let gpu_call = OpCall {
            inputs: call
                .inputs
                .iter()
                .map(|t| self.on_gpu(t))
                .collect::<Result<_, _>>()?,
            outputs: call
                .outputs
                .iter()
                .map(|t| self.on_gpu(t))
                .collect::<Result<_, _>>()?,
            ..call.clone()
        };
        self.gpu.exec(gpu_call.clone())?;
        self.cpu.exec(call.clone())?;
        let mut seen = Vec::new();
        for (k, (c, g)) in call.outputs.iter().zip(&gpu_call.outputs).enumerate() {
            if seen.contains(&c.id) {
                continue;
            }
            seen.push(c.id);
            let want = self.cpu.read_f32(c)?;
            let got = self.gpu.read_f32(g)?;
            self.diffs.push(Diff {
                op: call.op.name().to_string(),
                label: call.label.to_string(),
                output: k,
                dtype: c.dtype,
                numel: want.len(),
                error: relative_error(&got, &want),
                tolerance: output_tolerance(c.dtype, &call.inputs),
            });
            write(self.gpu, g, &want)?;
        }
        Ok(())
    }

    fn write_f32(&mut self, tensor: &Tensor, data: &[f32]) -> Result<(), BackendError> {
        let g = self.on_gpu(tensor)?;
        self.gpu.write_f32(&g, data)?;
        self.cpu.write_f32(tensor, data)
    }

    fn write_i32(&mut self, tensor: &Tensor, data: &[i32]) -> Result<(), BackendError> {
        let g = self.on_gpu(tensor)?;
        self.gpu.write_i32(&g, data)?;
        self.cpu.write_i32(tensor, data)
    }

    fn read_f32(&mut self, tensor: &Tensor) -> Result<Vec<f32>, BackendError> {
        self.cpu.read_f32(tensor)
    }
}

/// cuda:0 for a GPU test, or None after printing why the test skips (no driver, no device: CI).
pub fn gpu_or_skip() -> Option<CudaBackend> {
    match crate::device_count() {
        Ok(n) if n > 0 => Some(CudaBackend::new(0).expect("the CUDA device opens")),
        Ok(_) => {
            eprintln!("skipped: no CUDA device");
            None
        }
        Err(why) => {
            eprintln!("skipped: {}", tperf_core::error::report(&why));
            None
        }
    }
}

/// A preset shrunk to a few thousand parameters with odd-sized dimensions, so that tails of
/// every kernel's tiling are exercised: vocabulary 61, d_model 48, d_ff 72, 4 heads of 12
/// (2 KV heads for the Llama-style family: grouped-query attention).
pub fn tiny(preset: &str) -> tperf_core::config::ModelConfig {
    let mut cfg = tperf_core::presets::find(preset)
        .expect("a built-in preset")
        .config;
    cfg.vocab_size = 61;
    cfg.context = 32;
    cfg.d_model = 48;
    cfg.d_ff = 72;
    cfg.n_layers = 2;
    let kv = if preset == "small" { 2 } else { 4 };
    let cfg = cfg.with_heads(4, kv).expect("4 heads divide 48");
    debug_assert!(cfg.validate().is_ok());
    cfg
}

/// The model families the suite runs: Llama-style (RMSNorm, SwiGLU, RoPE, GQA), GPT-2-style
/// (LayerNorm with bias, GELU, learned positions, tied embeddings), the report's post-norm
/// model, a sliding-window variant, and a GeGLU variant (Gemma's gated MLP).
pub fn families() -> Vec<tperf_core::config::ModelConfig> {
    let mut windowed = tiny("small");
    windowed.name = format!("{} (window 5)", windowed.name);
    windowed.sliding_window = Some(5);
    let mut geglu = tiny("small");
    geglu.name = format!("{} (GeGLU)", geglu.name);
    geglu.mlp = tperf_core::config::Mlp::GeGlu;
    vec![tiny("small"), tiny("gpt2"), tiny("report"), windowed, geglu]
}

/// One scenario of the suite and how its ops compared.
#[derive(Clone, Debug)]
pub struct ScenarioResult {
    pub model: String,
    pub scenario: String,
    pub diffs: Vec<Diff>,
    /// An error that stopped the scenario (an op the GPU refused, a launch failure).
    pub error: Option<String>,
}

impl ScenarioResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.diffs.iter().all(Diff::passed)
    }
}

/// Every family × workload × precision × attention kernel, plus recomputation and the unfused
/// schedule for training, each run through the [`Mirror`]. `progress` sees each scenario's name.
pub fn suite(gpu: &mut CudaBackend, mut progress: impl FnMut(&str)) -> Vec<ScenarioResult> {
    use tperf_core::cost::analysis::{Scenario, StepRunner, Workload};
    use tperf_core::ops::adamw::AdamWParams;
    use tperf_core::schedule::{AttentionKernel, Options, Precision, Recompute};
    let mut out = Vec::new();
    for cfg in families() {
        let mut variants: Vec<(Workload, Options)> = Vec::new();
        for precision in [Precision::Fp32, Precision::Bf16, Precision::Fp16] {
            for attention in [AttentionKernel::Naive, AttentionKernel::Flash] {
                for workload in [
                    Workload::Train,
                    Workload::Forward,
                    Workload::Prefill,
                    Workload::Decode,
                ] {
                    variants.push((
                        workload,
                        Options {
                            precision,
                            attention,
                            ..Options::default()
                        },
                    ));
                }
            }
        }
        for recompute in [Recompute::Selective, Recompute::Full] {
            variants.push((
                Workload::Train,
                Options {
                    recompute,
                    ..Options::default()
                },
            ));
        }
        variants.push((
            Workload::Train,
            Options {
                fused: false,
                ..Options::default()
            },
        ));
        variants.push((
            Workload::Decode,
            Options {
                kv_cache: false,
                ..Options::default()
            },
        ));
        for (workload, opts) in variants {
            let sc = Scenario {
                workload,
                batch: 3,
                seq: 13,
                opts,
            };
            let name = format!(
                "{} {} {} {}{}{}",
                workload.name(),
                opts.precision.name(),
                opts.attention.name(),
                match opts.recompute {
                    Recompute::None => "",
                    Recompute::Selective => "recompute-selective ",
                    Recompute::Full => "recompute-full ",
                },
                if opts.fused { "" } else { "unfused " },
                if opts.kv_cache { "" } else { "no-cache" },
            );
            progress(&format!("{} {name}", cfg.name));
            let mut mirror = match Mirror::new(gpu) {
                Ok(m) => m,
                Err(e) => {
                    out.push(ScenarioResult {
                        model: cfg.name.clone(),
                        scenario: name.trim().to_string(),
                        diffs: Vec::new(),
                        error: Some(e.to_string()),
                    });
                    continue;
                }
            };
            let result = (|| -> Result<(), BackendError> {
                let mut runner = StepRunner::new(&mut mirror, &cfg, sc)?;
                runner.model.init_weights(&mut mirror, 42)?;
                let hyper = AdamWParams {
                    lr: 1e-2,
                    ..AdamWParams::default()
                };
                // Two steps: the second trains from updated weights and AdamW moments.
                runner.step(&mut mirror, hyper)?;
                runner.step(&mut mirror, hyper)?;
                runner.free(&mut mirror);
                Ok(())
            })();
            out.push(ScenarioResult {
                model: cfg.name.clone(),
                scenario: name.trim().to_string(),
                diffs: std::mem::take(&mut mirror.diffs),
                error: result.err().map(|e| e.to_string()),
            });
        }
    }
    out
}

/// The whole model run on the GPU alone (no resynchronisation between ops) against the CPU
/// alone: logits of a forward, the loss, and every weight gradient of a forward and backward.
#[derive(Clone, Debug)]
pub struct ModelAgreement {
    pub model: String,
    pub precision: String,
    pub loss_cpu: f32,
    pub loss_gpu: f32,
    /// max |Δ| / max |cpu| over the logits of the last position.
    pub logits_error: f64,
    /// max |Δ| / max |cpu| over all weight gradients together.
    pub grad_error: f64,
    pub tolerance: f64,
}

impl ModelAgreement {
    pub fn passed(&self) -> bool {
        self.logits_error <= self.tolerance
            && self.grad_error <= self.tolerance
            && ((self.loss_gpu - self.loss_cpu).abs() as f64)
                <= self.tolerance * self.loss_cpu.abs() as f64
    }
}

/// Loss, last-position logits and weight gradients of one forward and backward on `be`.
fn model_outputs(
    be: &mut impl Backend,
    cfg: &tperf_core::config::ModelConfig,
    opts: tperf_core::schedule::Options,
) -> Result<(f32, Vec<f32>, Vec<f32>), BackendError> {
    use tperf_core::schedule::{alloc_step_tokens, Transformer};
    let (b, t) = (3, 13);
    let model = Transformer::new(be, cfg, opts, true)?;
    model.init_weights(be, 7)?;
    let mut rng = Rng::new(5);
    let ids = |rng: &mut Rng| -> Vec<i32> {
        (0..b * t)
            .map(|_| (rng.next_u64() % cfg.vocab_size as u64) as i32)
            .collect()
    };
    let (tokens, targets) = model.alloc_inputs(be, b, t, true)?;
    let targets = targets.expect("asked for targets");
    be.write_i32(&tokens, &ids(&mut rng))?;
    be.write_i32(&targets, &ids(&mut rng))?;
    let state = model.forward_train(be, tokens, targets)?;
    let losses = model.backward(be, state)?;
    let loss = be.read_f32(&losses)?.iter().sum::<f32>() / (b * t) as f32;
    be.free(losses);
    let mut grads = Vec::new();
    for p in model.weights.all_params() {
        grads.extend(be.read_f32(p.grad())?);
    }
    let toks = alloc_step_tokens(be, b, t)?;
    be.write_i32(&toks, &ids(&mut rng))?;
    let logits_t = model.step_logits(be, toks, None)?;
    let logits = be.read_f32(&logits_t)?;
    be.free(logits_t);
    model.free(be);
    Ok((loss, logits, grads))
}

/// Every family in fp32 and bf16, GPU alone against CPU alone. Tolerances: errors compound
/// through the layers here (nothing is resynchronised), so 1e-3 in fp32 and 5e-2 in bf16.
pub fn model_agreement(gpu: &mut CudaBackend) -> Result<Vec<ModelAgreement>, BackendError> {
    use tperf_core::schedule::{Options, Precision};
    let mut out = Vec::new();
    for cfg in families() {
        for (precision, tolerance) in [(Precision::Fp32, 1e-3), (Precision::Bf16, 5e-2)] {
            let opts = Options {
                precision,
                ..Options::default()
            };
            let (lc, xc, gc) = model_outputs(&mut CpuBackend::new(), &cfg, opts)?;
            let (lg, xg, gg) = model_outputs(gpu, &cfg, opts)?;
            out.push(ModelAgreement {
                model: cfg.name.clone(),
                precision: precision.name().to_string(),
                loss_cpu: lc,
                loss_gpu: lg,
                logits_error: relative_error(&xg, &xc),
                grad_error: relative_error(&gg, &gc),
                tolerance,
            });
        }
    }
    Ok(out)
}
