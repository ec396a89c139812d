//! The analytic model of one scenario: run the schedule on the Meta backend, cost every op on a
//! hardware entry, and roll the record up by phase, op, layer and class, with the memory
//! timeline beside it.

use super::hardware::Hardware;
use super::memory::{self, MemorySummary};
use super::roofline::{self, Bound};
use crate::backend::BackendError;
use crate::config::{ConfigError, ModelConfig};
use crate::dtype::DType;
use crate::meta::MetaBackend;
use crate::ops::adamw::AdamWParams;
use crate::ops::{OpClass, Phase};
use serde::Serialize;
use std::collections::BTreeMap;
use thiserror::Error;

pub use crate::schedule::scenario::{Scenario, StepRunner, Workload};

#[derive(Debug, Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Runs the scenario's schedule on the Meta backend.
pub fn record(cfg: &ModelConfig, sc: &Scenario) -> Result<MetaBackend, AnalysisError> {
    cfg.validate()?;
    cfg.check_seq(sc.seq)?;
    if sc.batch == 0 {
        return Err(ConfigError::Zero { field: "batch" }.into());
    }
    check_magnitude(cfg, sc)?;
    let mut be = MetaBackend::new();
    let mut runner = StepRunner::new(&mut be, cfg, *sc)?;
    runner.step(&mut be, AdamWParams::default())?;
    runner.free(&mut be);
    Ok(be)
}

/// Every count in the record is a u64. An upper bound of the step's FLOPs and bytes, computed
/// in u128, must stay far below u64::MAX so that no op's cost or total can wrap.
fn check_magnitude(cfg: &ModelConfig, sc: &Scenario) -> Result<(), ConfigError> {
    let tokens = sc.batch as u128 * sc.seq as u128;
    let params = cfg.param_count() as u128;
    let (l, h, d) = (
        cfg.n_layers as u128,
        cfg.n_heads as u128,
        cfg.head_dim as u128,
    );
    let attention = 20 * l * h * d * sc.batch as u128 * (sc.seq as u128).pow(2);
    let activations = 64 * l * tokens * (cfg.d_model.max(cfg.d_ff) as u128 + h * sc.seq as u128);
    let logits = 16 * tokens * cfg.vocab_size as u128;
    let bound = 20 * params * tokens.max(1) + attention + activations + logits + 32 * params;
    if bound > (u64::MAX / 16) as u128 {
        return Err(ConfigError::TooLarge {
            what: "batch × sequence for this model",
            detail: format!(
                "batch {} × seq {} would need counts beyond 64 bits (about {bound:.3e} FLOPs or bytes)",
                sc.batch, sc.seq
            ),
        });
    }
    Ok(())
}

/// One op of the record, costed.
#[derive(Clone, Debug, Serialize)]
pub struct OpRow {
    /// Position in the schedule: the join key with measured records.
    pub index: usize,
    pub name: &'static str,
    pub label: &'static str,
    pub layer: Option<usize>,
    pub phase: Phase,
    pub class: OpClass,
    pub dtype: DType,
    /// The op's dimensions, as "m=… k=… n=…".
    pub dims: String,
    pub flops: u64,
    pub bytes: u64,
    pub intensity: f64,
    pub bound: Bound,
    /// The roofline time: the larger of the two below.
    pub seconds: f64,
    pub compute_seconds: f64,
    pub memory_seconds: f64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    pub count: usize,
    pub flops: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Totals {
    fn add(&mut self, r: &OpRow) {
        self.count += 1;
        self.flops += r.flops;
        self.bytes += r.bytes;
        self.seconds += r.seconds;
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    pub model: String,
    pub params: u64,
    pub scenario: Scenario,
    pub hardware: Hardware,
    pub rows: Vec<OpRow>,
    pub total: Totals,
    pub by_phase: BTreeMap<Phase, Totals>,
    pub by_name: BTreeMap<&'static str, Totals>,
    pub by_class: BTreeMap<OpClass, Totals>,
    /// Per block; ops outside the blocks are under None.
    pub by_layer: BTreeMap<Option<usize>, Totals>,
    pub memory: MemorySummary,
    /// The model's FLOPs (recomputation excluded) over the predicted time and the matrix peak
    /// of the compute dtype.
    pub mfu: f64,
    pub tokens_per_step: u64,
}

impl Analysis {
    pub fn fits(&self) -> bool {
        self.memory.peak_bytes <= self.hardware.memory_bytes
    }

    pub fn step_seconds(&self) -> f64 {
        self.total.seconds
    }

    pub fn tokens_per_second(&self) -> f64 {
        self.tokens_per_step as f64 / self.total.seconds
    }

    pub fn phase_flops(&self, phase: Phase) -> u64 {
        self.by_phase.get(&phase).map_or(0, |t| t.flops)
    }
}

/// The first floating-point operand's dtype: what the op computes in.
fn op_dtype(inputs: &[crate::tensor::Tensor], outputs: &[crate::tensor::Tensor]) -> DType {
    inputs
        .iter()
        .chain(outputs)
        .map(|t| t.dtype)
        .find(|&d| d != DType::I32)
        .unwrap_or(DType::F32)
}

fn dims_of(op: &crate::ops::Op) -> String {
    // The op enum serialises internally tagged: {"op": "matmul", "m": …, "k": …}.
    let value = serde_json::to_value(op).unwrap_or_default();
    let Some(fields) = value.as_object() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (k, v) in fields.iter().filter(|(k, _)| k.as_str() != "op") {
        match v {
            serde_json::Value::Number(n) => parts.push(format!("{k}={n}")),
            serde_json::Value::Bool(true) => parts.push(k.clone()),
            serde_json::Value::String(s) => parts.push(format!("{k}={s}")),
            _ => {}
        }
    }
    parts.join(" ")
}

pub fn analyze(cfg: &ModelConfig, sc: &Scenario, hw: &Hardware) -> Result<Analysis, AnalysisError> {
    let record = record(cfg, sc)?;
    Ok(analyze_record(cfg, sc, hw, &record))
}

pub fn analyze_record(
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    record: &MetaBackend,
) -> Analysis {
    let mut rows = Vec::with_capacity(record.ops.len());
    let mut total = Totals::default();
    let mut by_phase = BTreeMap::new();
    let mut by_name = BTreeMap::new();
    let mut by_class = BTreeMap::new();
    let mut by_layer = BTreeMap::new();
    for (index, rec) in record.ops.iter().enumerate() {
        let call = &rec.call;
        let class = call.op.class();
        let dtype = op_dtype(&call.inputs, &call.outputs);
        let time = roofline::op_time(rec.cost, class, dtype, hw);
        let row = OpRow {
            index,
            name: call.op.name(),
            label: call.label,
            layer: call.layer,
            phase: call.phase,
            class,
            dtype,
            dims: dims_of(&call.op),
            flops: rec.cost.flops,
            bytes: rec.cost.bytes,
            intensity: rec.cost.intensity(),
            bound: time.bound,
            seconds: time.seconds,
            compute_seconds: time.compute_seconds,
            memory_seconds: time.memory_seconds,
        };
        total.add(&row);
        by_phase
            .entry(row.phase)
            .or_insert_with(Totals::default)
            .add(&row);
        by_name
            .entry(row.name)
            .or_insert_with(Totals::default)
            .add(&row);
        by_class
            .entry(row.class)
            .or_insert_with(Totals::default)
            .add(&row);
        by_layer
            .entry(row.layer)
            .or_insert_with(Totals::default)
            .add(&row);
        rows.push(row);
    }
    let recompute = by_phase
        .get(&Phase::Recompute)
        .map_or(0, |t: &Totals| t.flops);
    let peak = hw.peak_flops(sc.opts.precision.compute_dtype());
    let mfu = if total.seconds > 0.0 {
        (total.flops - recompute) as f64 / (total.seconds * peak)
    } else {
        0.0
    };
    Analysis {
        model: cfg.name.clone(),
        params: cfg.param_count(),
        scenario: *sc,
        hardware: hw.clone(),
        rows,
        total,
        by_phase,
        by_name,
        by_class,
        by_layer,
        memory: memory::summarize(record.mem_events()),
        mfu,
        tokens_per_step: sc.workload.tokens_per_step(sc.batch, sc.seq),
    }
}
