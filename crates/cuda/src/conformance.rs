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
//! the same margin); i32 exact. NaN or ∞ where the CPU has a finite value fails.

use crate::CudaBackend;
use std::collections::BTreeMap;
use tperf_core::backend::{Backend, BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::Op;
use tperf_core::rng::Rng;
use tperf_core::tensor::{Tensor, TensorId, TensorSpec};
use tperf_cpu::CpuBackend;

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

/// Runs `case` on both backends from identical inputs and compares every output.
pub fn run_case(gpu: &mut CudaBackend, case: &OpCase, seed: u64) -> Result<Vec<Diff>, BackendError> {
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
    let call = |ts: &[Tensor]| OpCall {
        op: case.op.clone(),
        inputs: case.inputs.iter().map(|&i| ts[i].clone()).collect(),
        outputs: case.outputs.iter().map(|&i| ts[i].clone()).collect(),
        label: "case",
        layer: None,
        phase: tperf_core::ops::Phase::Forward,
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
            tolerance: tolerance(dtype),
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
    pub fn new(gpu: &'a mut CudaBackend) -> Self {
        Mirror {
            cpu: CpuBackend::new(),
            gpu,
            map: BTreeMap::new(),
            diffs: Vec::new(),
        }
    }

    fn on_gpu(&self, t: &Tensor) -> Result<Tensor, BackendError> {
        self.map.get(&t.id).cloned().ok_or_else(|| BackendError::Device {
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
                Some(w) if w.error / w.tolerance.max(1e-30) >= d.error / d.tolerance.max(1e-30) => {}
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
                tolerance: tolerance(c.dtype),
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
