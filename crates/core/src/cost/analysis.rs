//! The analytic model of one scenario: run the schedule on the Meta backend, cost every op on a
//! hardware entry, and roll the record up by phase, op, layer and class, with the memory
//! timeline beside it.

use super::calibration::Calibration;
use super::hardware::Hardware;
use super::memory::{self, MemorySummary};
use super::roofline::{self, Bound};
use crate::backend::{BackendError, Stream};
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
    /// What a calibration tells apart within the name ("bias", "unaligned"; see
    /// [`crate::ops::matmul::Matmul::calibration_variant`]); empty for most ops.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub variant: &'static str,
    pub label: &'static str,
    pub layer: Option<usize>,
    pub phase: Phase,
    /// The stream it is issued on; only data-parallel collectives leave the compute stream.
    #[serde(skip_serializing_if = "is_compute")]
    pub stream: Stream,
    pub class: OpClass,
    pub dtype: DType,
    /// The op's dimensions, as "m=… k=… n=…".
    pub dims: String,
    pub flops: u64,
    pub bytes: u64,
    pub intensity: f64,
    pub bound: Bound,
    /// The predicted time: the roofline's, or with a calibration the calibrated time.
    pub seconds: f64,
    /// The roofline time on this entry: the larger of the two below.
    pub roofline_seconds: f64,
    /// Whether `seconds` came from a calibration's curve (false: it is the roofline's).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub calibrated: bool,
    pub compute_seconds: f64,
    pub memory_seconds: f64,
}

fn is_compute(s: &Stream) -> bool {
    *s == Stream::Compute
}

/// When each op runs: every op is placed on its stream after the op before it there and after
/// the work of each stream it waits on (the stream contract of [`crate::backend::OpCall`]), at
/// its roofline time. The step takes the makespan, the critical path over the streams. Contention
/// between the streams (NCCL's kernels take SMs and memory bandwidth from the compute stream) is
/// not modelled.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timing {
    /// Per op, by index: when it starts, in seconds from the step's start.
    pub start_seconds: Vec<f64>,
    /// The step: when the last op on any stream ends.
    pub makespan_seconds: f64,
    /// The compute stream's busy time, Σ of its ops' times: the step if communication were free.
    pub compute_seconds: f64,
    /// The communication stream's busy time.
    pub comm_seconds: f64,
    /// The part of the step the compute stream waits for communication: makespan − compute.
    pub exposed_comm_seconds: f64,
    /// Per op, by index: its stream and the streams it waits on, so the step can be placed again
    /// at other op times (the roofline's beside a calibration's).
    #[serde(skip)]
    pub waits: Vec<(Stream, Vec<Stream>)>,
}

impl Timing {
    /// Places `ops` (stream, waits, seconds), in issue order, on their streams.
    pub fn schedule<'a>(ops: impl IntoIterator<Item = (Stream, &'a [Stream], f64)>) -> Timing {
        let mut end: BTreeMap<Stream, f64> = BTreeMap::new();
        let mut busy: BTreeMap<Stream, f64> = BTreeMap::new();
        let mut start_seconds = Vec::new();
        for (stream, waits, seconds) in ops {
            let after = |s: &Stream| end.get(s).copied().unwrap_or(0.0);
            let start = waits.iter().map(after).fold(after(&stream), f64::max);
            start_seconds.push(start);
            end.insert(stream, start + seconds);
            *busy.entry(stream).or_insert(0.0) += seconds;
        }
        let makespan_seconds = end.values().copied().fold(0.0, f64::max);
        let compute_seconds = busy.get(&Stream::Compute).copied().unwrap_or(0.0);
        Timing {
            start_seconds,
            makespan_seconds,
            compute_seconds,
            comm_seconds: busy.get(&Stream::Comm).copied().unwrap_or(0.0),
            exposed_comm_seconds: (makespan_seconds - compute_seconds).max(0.0),
            waits: Vec::new(),
        }
    }

    /// Whether nothing left the compute stream: then the makespan is the plain sum.
    pub fn single_stream(&self) -> bool {
        self.comm_seconds == 0.0 && self.exposed_comm_seconds == 0.0
    }
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
    /// Per block; ops outside the blocks are under None (in JSON, the key "outside"; a block's
    /// key is its index: JSON object keys must be strings).
    #[serde(serialize_with = "layer_keys")]
    pub by_layer: BTreeMap<Option<usize>, Totals>,
    pub memory: MemorySummary,
    /// The ops placed on their streams; written out only when some op left the compute stream.
    #[serde(skip_serializing_if = "Timing::single_stream")]
    pub timing: Timing,
    /// The model's FLOPs (recomputation excluded) over the predicted step time and the matrix
    /// peak of the compute dtype.
    pub mfu: f64,
    pub tokens_per_step: u64,
    /// The calibration the op times come from (its label), or None: the roofline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    /// The host's time between the ops that a calibration predicts for the step (0 without
    /// one: the roofline has no host).
    pub overhead_seconds: f64,
    /// Ops whose kind and class no calibration curve covered (their roofline time is kept).
    #[serde(skip_serializing_if = "is_zero")]
    pub uncalibrated_ops: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Analysis {
    pub fn fits(&self) -> bool {
        self.memory.peak_bytes <= self.hardware.memory_bytes
    }

    /// The critical path over the streams (with every op on the compute stream, the sum of the
    /// op times), plus a calibration's host overhead.
    pub fn step_seconds(&self) -> f64 {
        self.timing.makespan_seconds + self.overhead_seconds
    }

    /// The step at every op's roofline time, calibrated or not.
    pub fn roofline_step_seconds(&self) -> f64 {
        Timing::schedule(
            self.rows
                .iter()
                .zip(&self.timing.waits)
                .map(|(r, (stream, waits))| (*stream, &waits[..], r.roofline_seconds)),
        )
        .makespan_seconds
    }

    pub fn tokens_per_second(&self) -> f64 {
        self.tokens_per_step as f64 / self.step_seconds()
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
    analyze_calibrated(cfg, sc, hw, None)
}

/// As [`analyze`], with each op's time from `calibration` where one is given.
pub fn analyze_calibrated(
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    calibration: Option<&Calibration>,
) -> Result<Analysis, AnalysisError> {
    let record = record(cfg, sc)?;
    Ok(analyze_record_calibrated(cfg, sc, hw, &record, calibration))
}

pub fn analyze_record(
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    record: &MetaBackend,
) -> Analysis {
    analyze_record_calibrated(cfg, sc, hw, record, None)
}

/// The record costed on `hw`'s roofline, and with a calibration each op's time from its curve
/// (the roofline figures stay beside it) and the step's host overhead added.
pub fn analyze_record_calibrated(
    cfg: &ModelConfig,
    sc: &Scenario,
    hw: &Hardware,
    record: &MetaBackend,
    calibration: Option<&Calibration>,
) -> Analysis {
    let mut uncalibrated_ops = 0;
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
        let variant = call.op.calibration_variant(dtype);
        let predicted = calibration
            .map(|c| c.predict_cost(call.op.name(), variant, class, dtype, rec.cost, sc.workload));
        uncalibrated_ops += usize::from(predicted.is_some_and(|p| p.level.is_none()));
        let row = OpRow {
            index,
            name: call.op.name(),
            variant,
            label: call.label,
            layer: call.layer,
            phase: call.phase,
            stream: call.stream,
            class,
            dtype,
            dims: dims_of(&call.op),
            flops: rec.cost.flops,
            bytes: rec.cost.bytes,
            intensity: rec.cost.intensity(),
            bound: time.bound,
            seconds: predicted.map_or(time.seconds, |p| p.seconds),
            roofline_seconds: time.seconds,
            calibrated: predicted.is_some_and(|p| p.level.is_some()),
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
    let mut timing = Timing::schedule(
        record
            .ops
            .iter()
            .zip(&rows)
            .map(|(rec, row)| (rec.call.stream, &rec.call.waits[..], row.seconds)),
    );
    timing.waits = record
        .ops
        .iter()
        .map(|rec| (rec.call.stream, rec.call.waits.to_vec()))
        .collect();
    let overhead_seconds = calibration.map_or(0.0, |c| {
        let ops: f64 = rows.iter().map(|r| r.seconds).sum();
        c.step_overhead_seconds(rows.len(), ops)
    });
    let recompute = by_phase
        .get(&Phase::Recompute)
        .map_or(0, |t: &Totals| t.flops);
    let peak = hw.peak_flops(sc.opts.precision.compute_dtype());
    let step = timing.makespan_seconds + overhead_seconds;
    let mfu = if step > 0.0 {
        (total.flops - recompute) as f64 / (step * peak)
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
        timing,
        mfu,
        tokens_per_step: sc.workload.tokens_per_step(sc.batch, sc.seq),
        calibration: calibration.map(|c| c.label()),
        overhead_seconds,
        uncalibrated_ops,
    }
}

/// `by_layer` with string keys: the block index, or "outside" for the ops outside the blocks.
fn layer_keys<S: serde::Serializer>(
    by_layer: &BTreeMap<Option<usize>, Totals>,
    out: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = out.serialize_map(Some(by_layer.len()))?;
    for (layer, totals) in by_layer {
        match layer {
            Some(l) => map.serialize_entry(&l.to_string(), totals)?,
            None => map.serialize_entry("outside", totals)?,
        }
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Stream = Stream::Compute;
    const M: Stream = Stream::Comm;

    /// A backward op (1 s), a collective on its gradient, the rest of the backward (2 s), and
    /// an optimizer op (1 s) that waits for the collective.
    fn step(collective_seconds: f64) -> Timing {
        Timing::schedule([
            (C, &[][..], 1.0),
            (M, &[C][..], collective_seconds),
            (C, &[][..], 2.0),
            (C, &[M][..], 1.0),
        ])
    }

    #[test]
    fn a_collective_hidden_behind_the_backward_adds_nothing() {
        let t = step(1.5);
        assert_eq!(t.start_seconds, vec![0.0, 1.0, 1.0, 3.0]);
        assert_eq!(t.makespan_seconds, 4.0);
        assert_eq!(t.compute_seconds, 4.0);
        assert_eq!(t.exposed_comm_seconds, 0.0);
        assert_eq!(t.comm_seconds, 1.5);
    }

    #[test]
    fn a_collective_longer_than_the_rest_of_the_backward_adds_its_exposed_part() {
        let t = step(3.0);
        // It ends at 1 + 3 = 4; the backward's remaining 2 s hide 2 of its 3 s.
        assert_eq!(t.start_seconds[3], 4.0);
        assert_eq!(t.makespan_seconds, 5.0);
        assert_eq!(t.exposed_comm_seconds, 1.0);
    }

    #[test]
    fn ops_on_one_stream_run_in_order_and_a_trailing_collective_ends_the_step() {
        let t = Timing::schedule([(C, &[][..], 1.0), (M, &[C][..], 2.0), (M, &[][..], 1.0)]);
        assert_eq!(t.start_seconds, vec![0.0, 1.0, 3.0]);
        assert_eq!(t.makespan_seconds, 4.0);
        assert_eq!(t.exposed_comm_seconds, 3.0);
    }
}
