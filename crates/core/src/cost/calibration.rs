//! A calibrated model: the roofline time of each op mapped to the time this machine's kernels
//! take, by a curve fitted per op kind on a training set of measured workloads, and the error of
//! that mapping on workloads the fit never saw.
//!
//! **The curve.** For one group of ops (an op kind such as `matmul` or `rmsnorm_backward`, of one
//! dtype, on one side of the ridge) the points are (x, y) = (ln t_roof, ln t_meas): the roofline
//! time of an op instance and its measured median. The fit is monotone piecewise-linear in that
//! log–log plane: the points, sorted by x, are cut into up to [`MAX_KNOTS`] bins of equal count;
//! each bin gives a knot at the median x and median y of its points (medians, so that one noisy
//! op cannot bend it); the knots' y are made non-decreasing by pool-adjacent-violators, weighted
//! by the bins' counts (a bigger op never takes less time). Between knots the curve is linear.
//! Read as an efficiency, e(t_roof) = t_roof / t_pred: a segment of slope 0 is a fixed cost
//! (launch overhead: the time does not grow with the work), a segment of slope 1 a constant
//! fraction of the roofline, and in between efficiency rising with size.
//!
//! Outside the knots: beyond the largest op seen the efficiency stays at the last knot's
//! (slope 1: bigger work at the same achieved fraction of the peak, which is where kernels
//! saturate); below the smallest, flat at the smallest's time (the fixed cost: launch-bound
//! kernels take it whatever their work). A group with one knot is a constant efficiency.
//!
//! **Fallbacks.** An op is predicted by the most specific group that was fitted: (kind, dtype,
//! bound, step kind), then (kind, dtype, bound), then (kind, dtype), then (class, dtype); an op
//! of a kind and class never measured keeps its roofline time, and the prediction says how many
//! ops that was. A kind's *variant* ([`crate::ops::Op::calibration_variant`]: a backward product
//! that also reduces its bias, a product whose rows are not 16-byte multiples) is a kind of its
//! own, "matmul_backward+bias", whose points stay out of the plain kind's curves; where it was
//! never measured it falls back to the plain kind's groups before the class's.
//!
//! **The step.** Measured steps take longer than the sum of their ops: the host allocates, frees
//! and launches between ops. The gap g = step wall time − Σ op times is fitted over the training
//! workloads as g = a·n + b·Σ t_op (n ops: a fixed cost per op, such as a launch the GPU waits
//! for; and a part growing with the work, such as the allocation and first touch of bigger
//! buffers), a, b ≥ 0, by least squares on the relative step error, and added to a predicted step
//! as `overhead_seconds`.
//!
//! **The error.** Per op: |t_pred − t_meas| / t_meas over every op instance of the held-out
//! workloads, with its median and 90th percentile; per step: the same of the whole step (the
//! sum of the ops' predictions plus the overhead, against the measured step wall time). Both
//! before (the roofline) and after (the calibration). Each step's signed error splits into
//! what the op curves and what the host gap got wrong ([`WorkloadError::split`]). The same
//! report over the training workloads, each predicted by the fit on the others
//! ([`Calibration::leave_one_out`]), is the error to choose a fit by: the held-out set stays
//! unseen until the choice is made.

use super::hardware::Hardware;
use super::roofline::{self, Bound};
use crate::dtype::DType;
use crate::ops::{Cost, OpClass};
use crate::schedule::scenario::Workload;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `format` field of every calibration this version writes and reads.
pub const FORMAT: &str = "tperf-calibration/1";

/// The most knots per curve: enough to bend from launch-bound to saturated, few enough that a
/// bin holds several distinct shapes.
pub const MAX_KNOTS: usize = 6;

/// The fewest points a bin takes before another knot is added.
pub const MIN_POINTS_PER_KNOT: usize = 3;

/// An op class as its name in files and tables.
pub fn class_name(class: OpClass) -> &'static str {
    match class {
        OpClass::Matmul => "matmul",
        OpClass::Elementwise => "elementwise",
        OpClass::Optimizer => "optimizer",
        OpClass::Communication => "communication",
    }
}

/// What an op is, as far as the calibration tells ops apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpKind {
    /// The op's name in tables: "matmul", "flash_attention_backward", "adamw".
    pub name: String,
    pub class: String,
    pub dtype: String,
    /// "compute" or "memory" (or "comm"): which side of the ridge its roofline falls on.
    pub bound: String,
    /// "decode" for an op of a decode step, "batch" for the others (train, forward, prefill):
    /// a decode step runs other kernels (split-K attention over the cache, skinny GEMMs) and is
    /// launch-bound, so the same op kind costs differently there. Empty: not said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step: String,
    /// What sets this op's kernels apart from others of its name and roofline time ("bias",
    /// "unaligned": [`crate::ops::Op::calibration_variant`]). Empty: none, or not said (samples
    /// saved before variants were kept; `tperf calibrate --refit` derives them again).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

/// The step kind of an op of a `workload` step, as [`OpKind::step`] names it.
pub fn step_kind(workload: Workload) -> &'static str {
    match workload {
        Workload::Decode => "decode",
        _ => "batch",
    }
}

impl OpKind {
    pub fn new(name: &str, class: OpClass, dtype: DType, bound: Bound) -> OpKind {
        OpKind {
            name: name.to_string(),
            class: class_name(class).to_string(),
            dtype: dtype.name().to_string(),
            bound: bound.name().to_string(),
            step: String::new(),
            variant: String::new(),
        }
    }

    /// The kind of an op of the model's record, in a step of `workload`.
    pub fn of_row(row: &super::analysis::OpRow, workload: Workload) -> OpKind {
        OpKind::new(row.name, row.class, row.dtype, row.bound)
            .with_variant(row.variant)
            .in_step(workload)
    }

    /// The same kind, of `variant` ("" for none).
    pub fn with_variant(mut self, variant: &str) -> OpKind {
        self.variant = variant.to_string();
        self
    }

    /// The name its own groups are keyed by: "matmul_backward+bias" for a variant, so that a
    /// tperf that predates variants, reading the file, never takes its curve for the plain
    /// kind's.
    fn group_name(&self) -> String {
        if self.variant.is_empty() {
            self.name.clone()
        } else {
            format!("{}+{}", self.name, self.variant)
        }
    }

    /// The same kind, in a step of `workload`.
    pub fn in_step(mut self, workload: Workload) -> OpKind {
        self.step = step_kind(workload).to_string();
        self
    }

    /// The groups that may predict this op, most specific first: its own kind's (a variant's
    /// under its variant's name), then for a variant the plain kind's (the same GEMMs without
    /// what sets the variant apart: nearer than the whole class when the variant was never
    /// measured), then its class's.
    fn groups(&self) -> Vec<GroupKey> {
        let mut out = self.kind_groups(&self.group_name());
        if !self.variant.is_empty() {
            out.extend(self.kind_groups(&self.name));
        }
        out.push(self.class_group());
        out
    }

    /// The groups this op's measured point is fitted into: its own kind's and its class's. A
    /// variant's points stay out of the plain kind's curves, which they would pull up (a
    /// biased backward costs a reduction more than the same product without a bias).
    fn fitted_groups(&self) -> Vec<GroupKey> {
        let mut out = self.kind_groups(&self.group_name());
        out.push(self.class_group());
        out
    }

    /// (kind, bound, step), (kind, bound), (kind) for the kind named `name`.
    fn kind_groups(&self, name: &str) -> Vec<GroupKey> {
        let key = |level, bound: &str, step: &str| GroupKey {
            level,
            name: name.to_string(),
            dtype: self.dtype.clone(),
            bound: bound.to_string(),
            step: step.to_string(),
        };
        let mut out = Vec::with_capacity(3);
        if !self.step.is_empty() {
            out.push(key(Level::KindBoundStep, &self.bound, &self.step));
        }
        out.push(key(Level::KindBound, &self.bound, ""));
        out.push(key(Level::Kind, "", ""));
        out
    }

    fn class_group(&self) -> GroupKey {
        GroupKey {
            level: Level::Class,
            name: self.class.clone(),
            dtype: self.dtype.clone(),
            bound: String::new(),
            step: String::new(),
        }
    }
}

/// How specific a group is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// One op kind, dtype and bound in one kind of step (decode, or the others).
    KindBoundStep,
    /// One op kind, dtype and bound.
    KindBound,
    /// One op kind and dtype, either bound.
    Kind,
    /// Every op of a class and dtype.
    Class,
}

/// A fitted group's key: `name` is the op kind's (or at the class level the class's).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    pub level: Level,
    pub name: String,
    pub dtype: String,
    /// Empty except at [`Level::KindBoundStep`] and [`Level::KindBound`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bound: String,
    /// Empty except at [`Level::KindBoundStep`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step: String,
}

/// One measured op instance: its kind, its roofline time and the time it took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub kind: OpKind,
    pub roofline_seconds: f64,
    pub measured_seconds: f64,
}

/// A monotone piecewise-linear curve in (ln roofline seconds, ln measured seconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// (ln t_roof, ln t_pred), x strictly increasing, y non-decreasing.
    pub knots: Vec<(f64, f64)>,
    /// The training points it was fitted on.
    pub points: usize,
}

fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

impl Curve {
    /// Fits the curve to (roofline seconds, measured seconds) pairs; None when no pair has both
    /// times positive and finite.
    pub fn fit(pairs: &[(f64, f64)]) -> Option<Curve> {
        let mut pts: Vec<(f64, f64)> = pairs
            .iter()
            .filter(|(r, m)| r.is_finite() && m.is_finite() && *r > 0.0 && *m > 0.0)
            .map(|(r, m)| (r.ln(), m.ln()))
            .collect();
        if pts.is_empty() {
            return None;
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let bins = (pts.len() / MIN_POINTS_PER_KNOT).clamp(1, MAX_KNOTS);
        // Equal-count bins; points of one x stay in one bin, so each knot's x is distinct.
        let mut knots: Vec<(f64, f64, f64)> = Vec::new(); // (x, y, weight)
        let mut start = 0;
        for b in 0..bins {
            let mut end = ((b + 1) * pts.len()) / bins;
            if end <= start {
                continue;
            }
            while end < pts.len() && pts[end].0 == pts[end - 1].0 {
                end += 1;
            }
            let bin = &pts[start..end];
            let mut xs: Vec<f64> = bin.iter().map(|p| p.0).collect();
            let mut ys: Vec<f64> = bin.iter().map(|p| p.1).collect();
            knots.push((median_of(&mut xs), median_of(&mut ys), bin.len() as f64));
            start = end;
            if start >= pts.len() {
                break;
            }
        }
        // Pool adjacent violators: merge neighbours whose y decreases into their weighted mean
        // (at the weighted mean x), until y is non-decreasing.
        let mut pooled: Vec<(f64, f64, f64)> = Vec::new();
        for k in knots {
            pooled.push(k);
            while pooled.len() >= 2 {
                let n = pooled.len();
                let (a, b) = (pooled[n - 2], pooled[n - 1]);
                if a.1 <= b.1 {
                    break;
                }
                let w = a.2 + b.2;
                pooled.truncate(n - 2);
                pooled.push(((a.0 * a.2 + b.0 * b.2) / w, (a.1 * a.2 + b.1 * b.2) / w, w));
            }
        }
        Some(Curve {
            knots: pooled.iter().map(|k| (k.0, k.1)).collect(),
            points: pts.len(),
        })
    }

    /// The predicted time of an op whose roofline time is `roofline_seconds`.
    pub fn predict(&self, roofline_seconds: f64) -> f64 {
        if roofline_seconds.is_nan() || roofline_seconds <= 0.0 {
            // An op that moves and computes nothing costs what the smallest op measured did.
            return self.knots.first().map_or(0.0, |k| k.1.exp());
        }
        let x = roofline_seconds.ln();
        let k = &self.knots;
        let (first, last) = (k[0], k[k.len() - 1]);
        let y = if x >= last.0 {
            last.1 + (x - last.0)
        } else if x <= first.0 {
            // Below the smallest op seen: its time, the fixed cost (a lone knot is a constant
            // efficiency both ways).
            if k.len() >= 2 {
                first.1
            } else {
                first.1 + (x - first.0)
            }
        } else {
            let i = k.partition_point(|p| p.0 <= x);
            let (a, b) = (k[i - 1], k[i]);
            a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0)
        };
        y.exp()
    }

    /// As [`predict`](Self::predict), but outside this curve's knots it follows `parent`'s
    /// shape (the class's curve, fitted on many more ops) from its edge knot: beyond the sizes a
    /// kind was measured at, whether time stays flat (launch-bound) or grows with the work is
    /// better told by its whole class than by a fixed rule, and a kind seen at one size only
    /// (one knot) gets its level from its own points and its shape from the class.
    pub fn predict_within(&self, parent: Option<&Curve>, roofline_seconds: f64) -> f64 {
        let Some(parent) = parent.filter(|_| roofline_seconds > 0.0) else {
            return self.predict(roofline_seconds);
        };
        let x = roofline_seconds.ln();
        let (first, last) = (self.knots[0], self.knots[self.knots.len() - 1]);
        let edge = if x > last.0 {
            last
        } else if x < first.0 {
            first
        } else {
            return self.predict(roofline_seconds);
        };
        // parent(x) / parent(edge), applied to this curve's edge.
        let shape = parent.predict(roofline_seconds).ln() - parent.predict(edge.0.exp()).ln();
        (edge.1 + shape).exp()
    }

    /// The fixed cost the curve implies: the time of the smallest op it was fitted on.
    pub fn floor_seconds(&self) -> f64 {
        self.knots[0].1.exp()
    }

    /// Roofline over predicted time at the largest ops: the efficiency kernels saturate at.
    pub fn saturated_efficiency(&self) -> f64 {
        let last = self.knots[self.knots.len() - 1];
        (last.0 - last.1).exp()
    }
}

/// One fitted group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub key: GroupKey,
    pub curve: Curve,
}

/// The host's time between ops, which a step pays beyond its ops: a·n + b·Σ t_op.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOverhead {
    /// a: seconds per op.
    pub gap_per_op_seconds: f64,
    /// b: seconds per second of op time.
    #[serde(default)]
    pub gap_per_op_second: f64,
}

impl StepOverhead {
    pub fn seconds(&self, ops: usize, op_seconds: f64) -> f64 {
        self.gap_per_op_seconds * ops as f64 + self.gap_per_op_second * op_seconds
    }

    /// Fits (a, b) ≥ 0 to the gaps of (ops, Σ t_op, step wall time) triples, minimising the
    /// squared gap error relative to each step (so that a long step does not outweigh the rest).
    pub fn fit(steps: &[(usize, f64, f64)]) -> StepOverhead {
        let rows: Vec<(f64, f64, f64)> = steps
            .iter()
            .filter(|(n, s, t)| *n > 0 && s.is_finite() && t.is_finite() && *t > 0.0)
            .map(|&(n, s, t)| (n as f64 / t, s / t, ((t - s) / t).max(0.0)))
            .collect();
        let (a, b) = nonnegative_least_squares(&rows);
        StepOverhead {
            gap_per_op_seconds: a,
            gap_per_op_second: b,
        }
    }
}

/// The (a, b) ≥ 0 minimising Σ (a·x₁ + b·x₂ − y)² over rows (x₁, x₂, y): the normal equations
/// of the pair, or where their solution has a negative part the better of the two one-term fits.
pub fn nonnegative_least_squares(rows: &[(f64, f64, f64)]) -> (f64, f64) {
    let one = |col: fn(&(f64, f64, f64)) -> f64| {
        let xx: f64 = rows.iter().map(|r| col(r) * col(r)).sum();
        let xy: f64 = rows.iter().map(|r| col(r) * r.2).sum();
        if xx > 0.0 {
            (xy / xx).max(0.0)
        } else {
            0.0
        }
    };
    let (saa, sab, sbb) = rows.iter().fold((0.0, 0.0, 0.0), |acc, r| {
        (acc.0 + r.0 * r.0, acc.1 + r.0 * r.1, acc.2 + r.1 * r.1)
    });
    let (say, sby) = rows
        .iter()
        .fold((0.0, 0.0), |acc, r| (acc.0 + r.0 * r.2, acc.1 + r.1 * r.2));
    let det = saa * sbb - sab * sab;
    let both = (det.abs() > 1e-12 * (saa * sbb).max(f64::MIN_POSITIVE))
        .then(|| ((say * sbb - sby * sab) / det, (saa * sby - sab * say) / det))
        .filter(|(a, b)| *a >= 0.0 && *b >= 0.0);
    both.unwrap_or_else(|| {
        let (a, b) = (one(|r| r.0), one(|r| r.1));
        let sse = |a: f64, b: f64| -> f64 {
            rows.iter().map(|r| (a * r.0 + b * r.1 - r.2).powi(2)).sum()
        };
        if sse(a, 0.0) <= sse(0.0, b) {
            (a, 0.0)
        } else {
            (0.0, b)
        }
    })
}

/// One decode step of the serving engine, measured beside the calibrated schedule's step of the
/// same batch and context.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServingPoint {
    pub batch: usize,
    pub context: usize,
    /// The engine's decode step (median), wall clock around `EngineCore::step`.
    pub measured_seconds: f64,
    /// The calibrated schedule's decode step (ops + the profiler's host gap).
    pub calibrated_seconds: f64,
}

/// What the serving engine's step costs beyond the calibrated schedule's step: its scheduler,
/// block tables, ragged layout, per-sequence sampling and hand-off, as a + c·B per step of B
/// running sequences, fitted on engine decode steps at a few batch sizes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServingOverhead {
    /// The model the engine ran ("gpt2-124m").
    pub model: String,
    /// a.
    pub per_step_seconds: f64,
    /// c.
    pub per_sequence_seconds: f64,
    /// The steps it was fitted on.
    pub points: Vec<ServingPoint>,
    /// Steps at batch sizes the fit never saw, with its error there.
    pub held_out: Vec<ServingPoint>,
}

impl ServingOverhead {
    pub fn seconds(&self, batch: usize) -> f64 {
        self.per_step_seconds + self.per_sequence_seconds * batch as f64
    }

    /// Fits a + c·B ≥ 0 to the gaps (measured − calibrated) of `points`, relative to each step.
    pub fn fit(model: String, points: Vec<ServingPoint>, held_out: Vec<ServingPoint>) -> Self {
        let rows: Vec<(f64, f64, f64)> = points
            .iter()
            .filter(|p| p.measured_seconds > 0.0 && p.measured_seconds.is_finite())
            .map(|p| {
                let t = p.measured_seconds;
                (
                    1.0 / t,
                    p.batch as f64 / t,
                    ((t - p.calibrated_seconds) / t).max(0.0),
                )
            })
            .collect();
        let (a, c) = nonnegative_least_squares(&rows);
        ServingOverhead {
            model,
            per_step_seconds: a,
            per_sequence_seconds: c,
            points,
            held_out,
        }
    }

    /// The engine's step predicted at a point: its calibrated step plus the overhead.
    pub fn predict(&self, p: &ServingPoint) -> f64 {
        p.calibrated_seconds + self.seconds(p.batch)
    }
}

/// One measured workload, as the calibration saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSamples {
    /// "small train B4 T256 bf16".
    pub label: String,
    pub ops: Vec<Sample>,
    /// The median step's wall time.
    pub step_seconds: f64,
}

impl WorkloadSamples {
    pub fn op_sum_seconds(&self) -> f64 {
        self.ops.iter().map(|o| o.measured_seconds).sum()
    }
    pub fn roofline_sum_seconds(&self) -> f64 {
        self.ops.iter().map(|o| o.roofline_seconds).sum()
    }
}

/// Relative errors summarised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorStats {
    pub count: usize,
    /// |predicted − measured| / measured, median.
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

impl ErrorStats {
    /// Summarises relative errors (fractions); the 90th percentile by linear interpolation.
    pub fn of(errors: &[f64]) -> ErrorStats {
        let mut v: Vec<f64> = errors.iter().copied().filter(|e| e.is_finite()).collect();
        if v.is_empty() {
            return ErrorStats::default();
        }
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let pos = p * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        ErrorStats {
            count: v.len(),
            median: pct(0.5),
            p90: pct(0.9),
            max: v[v.len() - 1],
        }
    }
}

/// |predicted − measured| / measured.
pub fn relative_error(predicted: f64, measured: f64) -> f64 {
    (predicted - measured).abs() / measured
}

/// One workload's error, before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadError {
    pub label: String,
    pub ops: usize,
    pub measured_step_seconds: f64,
    /// Σ of the ops' roofline times (no overhead: the roofline has none).
    pub roofline_step_seconds: f64,
    /// Σ of the ops' calibrated times + the overhead.
    pub calibrated_step_seconds: f64,
    pub op_error_roofline: ErrorStats,
    pub op_error_calibrated: ErrorStats,
    /// Ops no group predicted (kept at their roofline time).
    pub uncalibrated_ops: usize,
    /// Σ of the ops' measured times: the measured host gap is the step's wall time less this.
    /// Absent in reports saved before the split was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_op_seconds: Option<f64>,
    /// Σ of the ops' calibrated times: the predicted host gap is the calibrated step less this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated_op_seconds: Option<f64>,
}

/// A calibrated step's signed error, (calibrated − measured) / measured step, and the two parts
/// it is the sum of: what the op curves got wrong, (Σ calibrated ops − Σ measured ops) / step,
/// and what the host gap got wrong, (predicted gap − measured gap) / step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepErrorSplit {
    pub step: f64,
    pub ops: f64,
    pub host_gap: f64,
}

impl WorkloadError {
    /// The step's error split into ops and host gap; None for a report saved without the sums.
    pub fn split(&self) -> Option<StepErrorSplit> {
        let (measured_ops, calibrated_ops) =
            (self.measured_op_seconds?, self.calibrated_op_seconds?);
        let t = self.measured_step_seconds;
        let measured_gap = t - measured_ops;
        let predicted_gap = self.calibrated_step_seconds - calibrated_ops;
        Some(StepErrorSplit {
            step: (self.calibrated_step_seconds - t) / t,
            ops: (calibrated_ops - measured_ops) / t,
            host_gap: (predicted_gap - measured_gap) / t,
        })
    }

    /// The measured host gap of the step, and the calibration's prediction of it.
    pub fn host_gap_seconds(&self) -> Option<(f64, f64)> {
        Some((
            self.measured_step_seconds - self.measured_op_seconds?,
            self.calibrated_step_seconds - self.calibrated_op_seconds?,
        ))
    }
}

/// One workload evaluated: its row and its ops' errors (pooled into an [`ErrorReport`]).
struct Evaluated {
    row: WorkloadError,
    op_roofline: Vec<f64>,
    op_calibrated: Vec<f64>,
}

impl ErrorReport {
    fn of(parts: Vec<Evaluated>) -> ErrorReport {
        let mut op_roof = Vec::new();
        let mut op_cal = Vec::new();
        let mut step_roof = Vec::new();
        let mut step_cal = Vec::new();
        let mut rows = Vec::with_capacity(parts.len());
        for p in parts {
            step_roof.push(relative_error(
                p.row.roofline_step_seconds,
                p.row.measured_step_seconds,
            ));
            step_cal.push(relative_error(
                p.row.calibrated_step_seconds,
                p.row.measured_step_seconds,
            ));
            op_roof.extend(p.op_roofline);
            op_cal.extend(p.op_calibrated);
            rows.push(p.row);
        }
        ErrorReport {
            op_roofline: ErrorStats::of(&op_roof),
            op_calibrated: ErrorStats::of(&op_cal),
            step_roofline: ErrorStats::of(&step_roof),
            step_calibrated: ErrorStats::of(&step_cal),
            workloads: rows,
        }
    }
}

/// The error of a calibration on a set of workloads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// Per op instance, pooled over the workloads.
    pub op_roofline: ErrorStats,
    pub op_calibrated: ErrorStats,
    /// Per workload's whole step.
    pub step_roofline: ErrorStats,
    pub step_calibrated: ErrorStats,
    pub workloads: Vec<WorkloadError>,
}

/// A calibration as saved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub format: String,
    /// The device it was measured on, as its backend names it.
    pub device: String,
    /// The entry whose roofline the curves map from. Applying the calibration recomputes each
    /// op's roofline on this entry whatever `--hw` says, so the curves stay meaningful.
    pub hardware: Hardware,
    /// The precision policy of the training workloads ("bf16").
    pub precision: String,
    pub groups: Vec<Group>,
    pub overhead: StepOverhead,
    /// The workloads the curves were fitted on, and those held out to measure the error.
    pub training: Vec<String>,
    pub held_out: Vec<String>,
    /// The error on the training and on the held-out workloads, when it was measured.
    pub error_training: Option<ErrorReport>,
    pub error_held_out: Option<ErrorReport>,
    /// Each training workload predicted by the fit on the other training workloads: the error
    /// to judge a change of the fit by without looking at the held-out set. Absent in files
    /// saved before it was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_leave_one_out: Option<ErrorReport>,
    /// The serving engine's cost per step beyond the calibrated schedule's, where it was
    /// measured (`tperf plan serve` adds it to every step it predicts).
    #[serde(default)]
    pub serving: Option<ServingOverhead>,
    /// Version, commit, date, host, command line.
    #[serde(default)]
    pub provenance: serde_json::Value,
    /// Every op instance the fit and the error reports were computed from, so that a new fit
    /// can be tried on this machine's measurements without a GPU (`tperf calibrate --refit`).
    /// Absent in files saved before samples were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<MeasuredSamples>,
}

/// The measured workloads of a calibration: those it was fitted on and the held-out ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredSamples {
    pub training: Vec<WorkloadSamples>,
    pub held_out: Vec<WorkloadSamples>,
}

/// Why a calibration could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("cannot read the calibration {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the calibration {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a tperf calibration (JSON from `tperf calibrate`)", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has format `{found}`; this tperf reads `{FORMAT}` (run `tperf calibrate` again)", .path.display())]
    Format { path: PathBuf, found: String },
    #[error("{}: {why}", .path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("no training workload measured any op: nothing to fit")]
    Empty,
}

/// What a calibration predicts for one op: its time and which group said so.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    pub seconds: f64,
    /// None: no group covers the op and the time is its roofline on the calibration's entry.
    pub level: Option<Level>,
}

impl Calibration {
    /// Fits every group the training workloads fill, and the step overhead.
    pub fn fit(
        device: String,
        hardware: Hardware,
        precision: String,
        training: &[WorkloadSamples],
        provenance: serde_json::Value,
    ) -> Result<Calibration, CalibrationError> {
        let training: Vec<&WorkloadSamples> = training.iter().collect();
        Self::fit_on(device, hardware, precision, &training, provenance)
    }

    fn fit_on(
        device: String,
        hardware: Hardware,
        precision: String,
        training: &[&WorkloadSamples],
        provenance: serde_json::Value,
    ) -> Result<Calibration, CalibrationError> {
        let mut pairs: BTreeMap<GroupKey, Vec<(f64, f64)>> = BTreeMap::new();
        for w in training {
            for s in &w.ops {
                for key in s.kind.fitted_groups() {
                    pairs
                        .entry(key)
                        .or_default()
                        .push((s.roofline_seconds, s.measured_seconds));
                }
            }
        }
        let groups: Vec<Group> = pairs
            .into_iter()
            .filter_map(|(key, p)| Curve::fit(&p).map(|curve| Group { key, curve }))
            .collect();
        if groups.is_empty() {
            return Err(CalibrationError::Empty);
        }
        let steps: Vec<(usize, f64, f64)> = training
            .iter()
            .map(|w| (w.ops.len(), w.op_sum_seconds(), w.step_seconds))
            .collect();
        Ok(Calibration {
            format: FORMAT.to_string(),
            device,
            hardware,
            precision,
            groups,
            overhead: StepOverhead::fit(&steps),
            training: training.iter().map(|w| w.label.clone()).collect(),
            held_out: Vec::new(),
            error_training: None,
            error_held_out: None,
            error_leave_one_out: None,
            serving: None,
            provenance,
            samples: None,
        })
    }

    /// Fits on `samples.training`, then records the error on both sets and keeps the samples
    /// (what `tperf calibrate` saves).
    pub fn fit_and_evaluate(
        device: String,
        hardware: Hardware,
        precision: String,
        samples: MeasuredSamples,
        provenance: serde_json::Value,
    ) -> Result<Calibration, CalibrationError> {
        let mut cal = Calibration::fit(device, hardware, precision, &samples.training, provenance)?;
        cal.held_out = samples.held_out.iter().map(|w| w.label.clone()).collect();
        cal.error_training = Some(cal.evaluate(&samples.training));
        cal.error_held_out = Some(cal.evaluate(&samples.held_out));
        cal.error_leave_one_out = cal.leave_one_out(&samples.training);
        cal.samples = Some(samples);
        Ok(cal)
    }

    /// The calibration fitted again, by this tperf's fit, on the samples this one kept (the
    /// file at `path`). The serving overhead is kept as it was measured (its points need the
    /// engine run). `provenance` is the new file's.
    pub fn refit(
        &self,
        path: &Path,
        provenance: serde_json::Value,
    ) -> Result<Calibration, CalibrationError> {
        let samples = self.samples.clone().ok_or_else(|| CalibrationError::Invalid {
            path: path.to_path_buf(),
            why: "keeps no samples (it was saved before calibrations kept them): run `tperf calibrate` again".into(),
        })?;
        let mut cal = Calibration::fit_and_evaluate(
            self.device.clone(),
            self.hardware.clone(),
            self.precision.clone(),
            samples,
            provenance,
        )?;
        cal.serving = self.serving.clone();
        Ok(cal)
    }

    fn group(&self, key: &GroupKey) -> Option<&Group> {
        self.groups
            .binary_search_by(|g| g.key.cmp(key))
            .ok()
            .map(|i| &self.groups[i])
    }

    /// The predicted time of an op of `kind` whose roofline time (on the calibration's entry)
    /// is `roofline_seconds`.
    pub fn predict(&self, kind: &OpKind, roofline_seconds: f64) -> Prediction {
        let groups = kind.groups();
        let class = groups.last().and_then(|k| self.group(k));
        for key in &groups {
            if let Some(g) = self.group(key) {
                let parent = class.filter(|c| c.key != g.key).map(|c| &c.curve);
                return Prediction {
                    seconds: g.curve.predict_within(parent, roofline_seconds),
                    level: Some(key.level),
                };
            }
        }
        Prediction {
            seconds: roofline_seconds,
            level: None,
        }
    }

    /// An op's roofline on the calibration's entry, its kind, and the calibrated time, for an op
    /// of `name` and `variant` ("" for none) in a step of `workload`.
    pub fn predict_cost(
        &self,
        name: &str,
        variant: &str,
        class: OpClass,
        dtype: DType,
        cost: Cost,
        workload: Workload,
    ) -> Prediction {
        let t = roofline::op_time(cost, class, dtype, &self.hardware);
        let kind = OpKind::new(name, class, dtype, t.bound)
            .with_variant(variant)
            .in_step(workload);
        self.predict(&kind, t.seconds)
    }

    /// The overhead a step of `ops` ops, predicted to take `op_seconds`, pays beyond them.
    pub fn step_overhead_seconds(&self, ops: usize, op_seconds: f64) -> f64 {
        self.overhead.seconds(ops, op_seconds)
    }

    /// The error of this calibration on `workloads`, beside the roofline's.
    pub fn evaluate(&self, workloads: &[WorkloadSamples]) -> ErrorReport {
        ErrorReport::of(workloads.iter().map(|w| self.evaluate_one(w)).collect())
    }

    /// Leave-one-out over `training`: each workload predicted by this fit made again on the
    /// others. None with fewer than two workloads. A workload is a fold of its own (not an op)
    /// because its ops share a batch shape, a model and the machine's state while it ran: a
    /// workload the fit never saw is what the held-out error measures, and this is the same
    /// question asked of the training set alone.
    pub fn leave_one_out(&self, training: &[WorkloadSamples]) -> Option<ErrorReport> {
        if training.len() < 2 {
            return None;
        }
        let parts = (0..training.len())
            .filter_map(|left_out| {
                let others: Vec<&WorkloadSamples> = training
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != left_out)
                    .map(|(_, w)| w)
                    .collect();
                let fold = Calibration::fit_on(
                    self.device.clone(),
                    self.hardware.clone(),
                    self.precision.clone(),
                    &others,
                    serde_json::Value::Null,
                )
                .ok()?;
                Some(fold.evaluate_one(&training[left_out]))
            })
            .collect();
        Some(ErrorReport::of(parts))
    }

    fn evaluate_one(&self, w: &WorkloadSamples) -> Evaluated {
        let mut roof = Vec::with_capacity(w.ops.len());
        let mut cal = Vec::with_capacity(w.ops.len());
        let mut sum = 0.0;
        let mut uncalibrated = 0;
        for s in &w.ops {
            let p = self.predict(&s.kind, s.roofline_seconds);
            uncalibrated += usize::from(p.level.is_none());
            sum += p.seconds;
            if s.measured_seconds > 0.0 {
                roof.push(relative_error(s.roofline_seconds, s.measured_seconds));
                cal.push(relative_error(p.seconds, s.measured_seconds));
            }
        }
        let calibrated = sum + self.step_overhead_seconds(w.ops.len(), sum);
        Evaluated {
            row: WorkloadError {
                label: w.label.clone(),
                ops: w.ops.len(),
                measured_step_seconds: w.step_seconds,
                roofline_step_seconds: w.roofline_sum_seconds(),
                calibrated_step_seconds: calibrated,
                op_error_roofline: ErrorStats::of(&roof),
                op_error_calibrated: ErrorStats::of(&cal),
                uncalibrated_ops: uncalibrated,
                measured_op_seconds: Some(w.op_sum_seconds()),
                calibrated_op_seconds: Some(sum),
            },
            op_roofline: roof,
            op_calibrated: cal,
        }
    }

    /// A one-line label for headers: "calibrated on cuda:0 NVIDIA H200 (bf16, 14 groups)".
    pub fn label(&self) -> String {
        format!(
            "calibrated on {} ({}, {} curves, {} training workloads)",
            self.device,
            self.precision,
            self.groups.len(),
            self.training.len()
        )
    }

    /// Reads and checks a calibration: the format, and every curve well formed.
    pub fn load(path: &Path) -> Result<Calibration, CalibrationError> {
        let text = std::fs::read_to_string(path).map_err(|source| CalibrationError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// As [`load`](Self::load), from text already read; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Calibration, CalibrationError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| CalibrationError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let found = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if found != FORMAT {
            return Err(CalibrationError::Format {
                path: path.to_path_buf(),
                found: if found.is_empty() {
                    "(none)".into()
                } else {
                    found.into()
                },
            });
        }
        let mut cal: Calibration =
            serde_json::from_value(value).map_err(|source| CalibrationError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |why: String| CalibrationError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        if cal.groups.is_empty() {
            return Err(invalid("no curves".into()));
        }
        for g in &cal.groups {
            let k = &g.curve.knots;
            let finite = k.iter().all(|(x, y)| x.is_finite() && y.is_finite());
            let increasing = k.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            if k.is_empty() || !finite || !increasing {
                return Err(invalid(format!(
                    "the curve of {} {} is not a monotone list of finite knots",
                    g.key.name, g.key.dtype
                )));
            }
        }
        let o = cal.overhead;
        for (field, v) in [
            ("gap_per_op_seconds", o.gap_per_op_seconds),
            ("gap_per_op_second", o.gap_per_op_second),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(format!("overhead.{field} is {v}")));
            }
        }
        // Lookups binary-search the groups by key.
        cal.groups.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(cal)
    }

    /// Writes the calibration as pretty JSON through a temporary name, creating the folder.
    pub fn save(&self, path: &Path) -> Result<(), CalibrationError> {
        let write = |source| CalibrationError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let text = serde_json::to_string_pretty(self).expect("a calibration serialises");
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text + "\n").map_err(write)?;
        std::fs::rename(&tmp, path).map_err(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::hardware;

    fn kind(name: &str) -> OpKind {
        OpKind::new(name, OpClass::Elementwise, DType::F32, Bound::Memory)
    }

    /// A synthetic machine: every op pays a 5 µs launch and runs at `eff` of its roofline.
    fn synthetic(roof: f64, eff: f64) -> f64 {
        5e-6 + roof / eff
    }

    fn workload(label: &str, name: &str, roofs: &[f64], eff: f64, gap: f64) -> WorkloadSamples {
        let ops: Vec<Sample> = roofs
            .iter()
            .map(|&r| Sample {
                kind: kind(name),
                roofline_seconds: r,
                measured_seconds: synthetic(r, eff),
            })
            .collect();
        let sum: f64 = ops.iter().map(|o| o.measured_seconds).sum();
        WorkloadSamples {
            label: label.into(),
            step_seconds: sum + gap * ops.len() as f64,
            ops,
        }
    }

    fn log_grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| (lo.ln() + (hi.ln() - lo.ln()) * i as f64 / (n - 1) as f64).exp())
            .collect()
    }

    #[test]
    fn error_stats_are_the_median_and_interpolated_p90() {
        let s = ErrorStats::of(&[0.5, 0.1, 0.3, 0.2, 0.4, f64::NAN]);
        assert_eq!(s.count, 5);
        assert!((s.median - 0.3).abs() < 1e-12);
        // Position 0.9 × 4 = 3.6 between 0.4 and 0.5.
        assert!((s.p90 - 0.46).abs() < 1e-12);
        assert_eq!(s.max, 0.5);
        assert_eq!(ErrorStats::of(&[]).count, 0);
        assert!((relative_error(1.2, 1.0) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn the_step_gap_separates_a_cost_per_op_from_a_cost_per_op_second() {
        // Steps of n ops taking s seconds whose wall time is s + 3 µs·n + 0.2·s.
        let steps: Vec<(usize, f64, f64)> = [(10, 1e-3), (40, 1e-3), (25, 5e-3), (60, 2e-2)]
            .iter()
            .map(|&(n, s)| (n, s, s + 3e-6 * n as f64 + 0.2 * s))
            .collect();
        let o = StepOverhead::fit(&steps);
        assert!((o.gap_per_op_seconds / 3e-6 - 1.0).abs() < 1e-6, "{o:?}");
        assert!((o.gap_per_op_second / 0.2 - 1.0).abs() < 1e-6, "{o:?}");
        // Only a proportional part: a stays at 0 rather than going negative.
        let prop: Vec<_> = [(10, 1e-3), (40, 2e-3), (25, 5e-3)]
            .iter()
            .map(|&(n, s)| (n, s, 1.5 * s))
            .collect();
        let o = StepOverhead::fit(&prop);
        assert!(o.gap_per_op_seconds >= 0.0 && (o.gap_per_op_second - 0.5).abs() < 1e-6);
        assert_eq!(StepOverhead::fit(&[]), StepOverhead::default());
    }

    #[test]
    fn the_serving_overhead_is_a_cost_per_step_and_per_sequence() {
        let point = |batch: usize| ServingPoint {
            batch,
            context: 144,
            measured_seconds: 1e-3 + 4e-4 + 2e-5 * batch as f64,
            calibrated_seconds: 1e-3,
        };
        let o = ServingOverhead::fit(
            "m".into(),
            vec![point(16), point(64), point(128)],
            vec![point(256)],
        );
        assert!((o.per_step_seconds / 4e-4 - 1.0).abs() < 1e-6, "{o:?}");
        assert!((o.per_sequence_seconds / 2e-5 - 1.0).abs() < 1e-6, "{o:?}");
        let h = o.held_out[0];
        assert!((o.predict(&h) / h.measured_seconds - 1.0).abs() < 1e-9);
        // An engine no slower than the schedule has no overhead, not a negative one.
        let fast = ServingPoint {
            measured_seconds: 0.5e-3,
            ..point(8)
        };
        let o = ServingOverhead::fit("m".into(), vec![fast], vec![]);
        assert_eq!(o.seconds(8), 0.0);
    }

    #[test]
    fn a_decode_op_is_predicted_by_its_decode_curve() {
        let hw = hardware::detect_local_cpu();
        let mut batch = workload("b", "rope", &log_grid(1e-7, 1e-4, 12), 0.5, 0.0);
        let mut decode = workload("d", "rope", &log_grid(1e-7, 1e-4, 12), 0.5, 0.0);
        for o in &mut batch.ops {
            o.kind = o.kind.clone().in_step(Workload::Train);
        }
        for o in &mut decode.ops {
            o.kind = o.kind.clone().in_step(Workload::Decode);
            o.measured_seconds *= 4.0;
        }
        let cal = Calibration::fit(
            "cpu".into(),
            hw,
            "fp32".into(),
            &[batch, decode],
            Value::Null,
        )
        .unwrap();
        let k = kind("rope");
        let d = cal.predict(&k.clone().in_step(Workload::Decode), 1e-5);
        let b = cal.predict(&k.clone().in_step(Workload::Prefill), 1e-5);
        assert_eq!(d.level, Some(Level::KindBoundStep));
        assert!((d.seconds / b.seconds - 4.0).abs() < 0.2, "{d:?} {b:?}");
        // A kind without a step (an older file's samples) takes the kind-and-bound curve.
        assert_eq!(cal.predict(&k, 1e-5).level, Some(Level::KindBound));
    }

    #[test]
    fn a_variant_gets_its_own_curve_and_keeps_its_points_out_of_the_plain_kinds() {
        let hw = hardware::detect_local_cpu();
        let backward = |variant: &str| {
            OpKind::new(
                "matmul_backward",
                OpClass::Matmul,
                DType::Bf16,
                Bound::Compute,
            )
            .with_variant(variant)
            .in_step(Workload::Train)
        };
        // A machine whose biased backward products pay a 60 µs reduction beside the GEMMs.
        let ops = |variant: &str, extra: f64| -> Vec<Sample> {
            log_grid(1e-6, 1e-4, 20)
                .into_iter()
                .map(|r| Sample {
                    kind: backward(variant),
                    roofline_seconds: r,
                    measured_seconds: synthetic(r, 0.5) + extra,
                })
                .collect()
        };
        let step = |label: &str, ops: Vec<Sample>| WorkloadSamples {
            label: label.into(),
            step_seconds: ops.iter().map(|o| o.measured_seconds).sum(),
            ops,
        };
        let mut mixed = ops("", 0.0);
        mixed.extend(ops("bias", 60e-6));
        let cal = Calibration::fit(
            "cpu".into(),
            hw.clone(),
            "bf16".into(),
            &[step("a", mixed)],
            Value::Null,
        )
        .unwrap();
        for r in [2e-6, 2e-5, 8e-5] {
            let plain = cal.predict(&backward(""), r);
            let biased = cal.predict(&backward("bias"), r);
            assert_eq!(plain.level, Some(Level::KindBoundStep));
            assert_eq!(biased.level, Some(Level::KindBoundStep));
            assert!(
                (plain.seconds / synthetic(r, 0.5) - 1.0).abs() < 0.1,
                "{plain:?}"
            );
            let want = synthetic(r, 0.5) + 60e-6;
            assert!((biased.seconds / want - 1.0).abs() < 0.1, "{biased:?}");
        }
        assert!(cal
            .groups
            .iter()
            .any(|g| g.key.name == "matmul_backward+bias"));
        // Where no biased product was measured, one is predicted by the plain kind's curve, not
        // by the whole class's.
        let plain_only = Calibration::fit(
            "cpu".into(),
            hw,
            "bf16".into(),
            &[step("b", ops("", 0.0))],
            Value::Null,
        )
        .unwrap();
        assert_eq!(
            plain_only.predict(&backward("bias"), 2e-5),
            plain_only.predict(&backward(""), 2e-5)
        );
    }

    #[test]
    fn beyond_its_knots_a_kind_follows_its_class() {
        // The class: flat (launch-bound) up to 1e-5 s of roofline, proportional above.
        let class: Vec<(f64, f64)> = log_grid(1e-8, 1e-3, 40)
            .into_iter()
            .map(|r| (r, (1e-5f64).max(r)))
            .collect();
        let class = Curve::fit(&class).unwrap();
        // A kind measured at one small size only, at twice the class's time there.
        let kind = Curve::fit(&[(1e-7, 2e-5), (1e-7, 2e-5)]).unwrap();
        assert_eq!(kind.knots.len(), 1);
        // Alone, one knot is a constant efficiency: 100× the work, 100× the time.
        assert!((kind.predict(1e-5) / 2e-3 - 1.0).abs() < 1e-9);
        // Within its class it stays launch-bound where the class is, and grows where it grows.
        let flat = kind.predict_within(Some(&class), 1e-6);
        assert!((flat / 2e-5 - 1.0).abs() < 0.1, "{flat}");
        let big = kind.predict_within(Some(&class), 1e-3);
        assert!(big > 50.0 * flat, "{big}");
    }

    #[test]
    fn a_curve_is_monotone_even_when_the_points_are_not() {
        // Noisy points that dip: the fit pools them rather than predict less for more work.
        let pairs: Vec<(f64, f64)> = (1..=30)
            .map(|i| {
                let r = i as f64 * 1e-6;
                let wobble = if i % 7 == 0 { 0.3 } else { 1.0 };
                (r, 3.0 * r * wobble)
            })
            .collect();
        let c = Curve::fit(&pairs).unwrap();
        assert!(c.knots.len() >= 2 && c.knots.len() <= MAX_KNOTS);
        assert!(c
            .knots
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let mut last = 0.0;
        for r in log_grid(1e-8, 1e-3, 200) {
            let t = c.predict(r);
            assert!(t >= last, "predict({r}) = {t} < {last}");
            last = t;
        }
        assert!(Curve::fit(&[(0.0, 1.0), (f64::NAN, 1.0)]).is_none());
    }

    #[test]
    fn the_fit_recovers_a_launch_floor_and_a_saturated_efficiency() {
        let train = workload("t", "rope", &log_grid(1e-7, 1e-2, 60), 0.25, 0.0);
        let hw = hardware::detect_local_cpu();
        let cal = Calibration::fit("cpu".into(), hw, "fp32".into(), &[train], Value::Null).unwrap();
        let g = cal
            .groups
            .iter()
            .find(|g| g.key.level == Level::KindBound)
            .unwrap();
        // The smallest ops are launch-bound: the first knot (the median of the smallest bin,
        // whose work adds about 1 µs) sits just above the 5 µs launch, and the curve is flat
        // there: a hundredfold smaller op is predicted within a few percent of it.
        let floor = g.curve.floor_seconds();
        assert!(floor > 5e-6 && floor < 1.3 * 5e-6, "{floor}");
        assert_eq!(g.curve.predict(1e-9), floor);
        // The largest run at a quarter of the roofline.
        assert!((g.curve.saturated_efficiency() / 0.25 - 1.0).abs() < 0.05);
        // Beyond the largest op seen, the efficiency holds.
        let big = 1.0;
        assert!((cal.predict(&kind("rope"), big).seconds / (big / 0.25) - 1.0).abs() < 0.05);
    }

    use serde_json::Value;

    #[test]
    fn held_out_sizes_are_predicted_within_the_curve_and_the_roofline_is_not() {
        let hw = hardware::detect_local_cpu();
        let train = [
            workload("a", "rope", &log_grid(1e-7, 1e-3, 25), 0.3, 2e-6),
            workload("b", "rope", &log_grid(2e-7, 2e-3, 25), 0.3, 2e-6),
        ];
        let held = [workload("c", "rope", &log_grid(3e-7, 3e-3, 17), 0.3, 2e-6)];
        let cal = Calibration::fit("cpu".into(), hw, "fp32".into(), &train, Value::Null).unwrap();
        assert!(
            (cal.overhead.gap_per_op_seconds - 2e-6).abs() < 1e-9,
            "{:?}",
            cal.overhead
        );
        assert!(
            cal.overhead.gap_per_op_second.abs() < 1e-3,
            "{:?}",
            cal.overhead
        );
        let e = cal.evaluate(&held);
        assert_eq!(e.op_calibrated.count, 17);
        assert!(e.op_calibrated.median < 0.1, "{e:?}");
        assert!(e.op_roofline.median > 0.6, "{e:?}");
        assert!(e.step_calibrated.median < 0.05, "{e:?}");
        assert!(e.step_roofline.median > 0.6);
        assert_eq!(e.workloads[0].uncalibrated_ops, 0);
    }

    #[test]
    fn a_step_error_splits_into_what_the_ops_and_the_host_gap_got_wrong() {
        let hw = hardware::detect_local_cpu();
        // The ops follow one law everywhere; the training steps pay 2 µs an op between them,
        // the held-out one 10 µs: its error is the host gap's.
        let train = [
            workload("a", "rope", &log_grid(1e-7, 1e-3, 25), 0.3, 2e-6),
            workload("b", "rope", &log_grid(2e-7, 2e-3, 25), 0.3, 2e-6),
        ];
        let held = workload("c", "rope", &log_grid(3e-7, 3e-5, 20), 0.3, 10e-6);
        let cal = Calibration::fit("cpu".into(), hw, "fp32".into(), &train, Value::Null).unwrap();
        let w = &cal.evaluate(std::slice::from_ref(&held)).workloads[0];
        let split = w.split().unwrap();
        assert!(
            (split.ops + split.host_gap - split.step).abs() < 1e-12,
            "{split:?}"
        );
        let expected_gap_error = -8e-6 * 20.0 / held.step_seconds;
        assert!(
            (split.host_gap / expected_gap_error - 1.0).abs() < 0.05,
            "{split:?}"
        );
        assert!(split.ops.abs() < 0.1 * split.host_gap.abs(), "{split:?}");
        let (measured, predicted) = w.host_gap_seconds().unwrap();
        assert!((measured / (10e-6 * 20.0) - 1.0).abs() < 1e-9);
        assert!((predicted / (2e-6 * 20.0) - 1.0).abs() < 0.05);
        // A report saved before the sums were kept has no split.
        let old = WorkloadError {
            measured_op_seconds: None,
            ..w.clone()
        };
        assert_eq!(old.split(), None);
    }

    #[test]
    fn leave_one_out_predicts_each_training_workload_by_the_fit_on_the_others() {
        let hw = hardware::detect_local_cpu();
        let mut train = vec![
            workload("a", "rope", &log_grid(1e-7, 1e-3, 25), 0.3, 2e-6),
            workload("b", "rope", &log_grid(2e-7, 2e-3, 25), 0.3, 2e-6),
            workload("c", "rope", &log_grid(3e-7, 3e-3, 25), 0.3, 2e-6),
        ];
        // A fourth whose ops are of a kind no other workload runs, three times slower than the
        // class: in-sample its own curve predicts it, left out only the class can.
        let mut odd = workload("d", "swiglu", &log_grid(1e-6, 1e-4, 12), 0.1, 2e-6);
        for o in &mut odd.ops {
            o.measured_seconds *= 3.0;
        }
        train.push(odd);
        let cal = Calibration::fit_and_evaluate(
            "cpu".into(),
            hw,
            "fp32".into(),
            MeasuredSamples {
                training: train.clone(),
                held_out: vec![],
            },
            Value::Null,
        )
        .unwrap();
        let loo = cal.error_leave_one_out.as_ref().unwrap();
        let in_sample = cal.error_training.as_ref().unwrap();
        let labels: Vec<&str> = loo.workloads.iter().map(|w| w.label.as_str()).collect();
        assert_eq!(labels, ["a", "b", "c", "d"]);
        assert_eq!(loo.op_calibrated.count, in_sample.op_calibrated.count);
        // The three alike are predicted from each other about as well as in-sample…
        for w in &loo.workloads[..3] {
            assert!(w.op_error_calibrated.median < 0.1, "{w:?}");
        }
        // …the odd one is not: its kind's curve was fitted on itself alone.
        let (left_out, fitted) = (&loo.workloads[3], &in_sample.workloads[3]);
        assert!(fitted.op_error_calibrated.median < 0.05, "{fitted:?}");
        assert!(left_out.op_error_calibrated.median > 0.5, "{left_out:?}");
        // One workload cannot be left out of itself.
        assert!(cal.leave_one_out(&train[..1]).is_none());
    }

    #[test]
    fn an_unseen_kind_falls_back_to_its_class_and_then_to_the_roofline() {
        let hw = hardware::detect_local_cpu();
        let train = [workload("a", "rope", &log_grid(1e-6, 1e-3, 12), 0.5, 0.0)];
        let cal = Calibration::fit("cpu".into(), hw, "fp32".into(), &train, Value::Null).unwrap();
        let p = cal.predict(&kind("swiglu"), 1e-4);
        assert_eq!(p.level, Some(Level::Class));
        assert!((p.seconds / synthetic(1e-4, 0.5) - 1.0).abs() < 0.05);
        let adam = OpKind::new("adamw", OpClass::Optimizer, DType::F32, Bound::Memory);
        assert_eq!(
            cal.predict(&adam, 1e-4),
            Prediction {
                seconds: 1e-4,
                level: None
            }
        );
    }

    #[test]
    fn a_saved_calibration_loads_back_and_a_broken_one_is_refused() {
        let hw = hardware::detect_local_cpu();
        let train = [workload("a", "rope", &log_grid(1e-6, 1e-3, 12), 0.5, 0.0)];
        let cal = Calibration::fit("cpu".into(), hw, "fp32".into(), &train, Value::Null).unwrap();
        let dir = std::env::temp_dir().join(format!("tperf-cal-test-{}", std::process::id()));
        let path = dir.join("cal.json");
        cal.save(&path).unwrap();
        let back = Calibration::load(&path).unwrap();
        assert_eq!(back.groups.len(), cal.groups.len());
        let (a, b) = (
            back.predict(&kind("rope"), 3e-5),
            cal.predict(&kind("rope"), 3e-5),
        );
        // JSON keeps the knots to the last bit or one ulp of it.
        assert_eq!(a.level, b.level);
        assert!((a.seconds / b.seconds - 1.0).abs() < 1e-12);
        let bad = serde_json::to_string(&cal)
            .unwrap()
            .replace(FORMAT, "tperf-calibration/0");
        assert!(matches!(
            Calibration::parse(&bad, &path),
            Err(CalibrationError::Format { .. })
        ));
        let mut broken = cal.clone();
        broken.groups[0].curve.knots = vec![(1.0, 2.0), (0.5, 1.0)];
        let text = serde_json::to_string(&broken).unwrap();
        assert!(matches!(
            Calibration::parse(&text, &path),
            Err(CalibrationError::Invalid { .. })
        ));
        assert!(Calibration::parse("{", &path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
