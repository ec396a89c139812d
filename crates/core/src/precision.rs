//! Mixed precision, shown with numbers: what low-precision accumulation does to a sum, which
//! dtype every tensor of the schedule has under each precision policy, and why normalisation
//! statistics are computed in fp32 even when everything around them is fp16 or bf16.
//!
//! Low-precision arithmetic is emulated exactly: each operation is computed in f64 and rounded
//! once to the target format (round to nearest, ties to even, through the `half` crate). For
//! +, −, ×, ÷ and √ that is the correctly rounded result a hardware unit of that format returns,
//! because f64's 53-bit significand is at least 2p + 2 bits for every p here (11 for fp16, 8 for
//! bf16, 24 for fp32), so rounding twice (exact → f64 → target) equals rounding once
//! (Figueroa, "When is double rounding innocuous?", 1995).

use crate::config::ModelConfig;
use crate::cost::analysis::{self, AnalysisError, Scenario, Workload};
use crate::dtype::DType;
use crate::schedule::{Options, Precision};
use crate::tensor::MemCategory;
use half::{bf16, f16};
use serde::Serialize;
use std::collections::BTreeMap;

/// A floating-point format to emulate arithmetic in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Float {
    F16,
    Bf16,
    F32,
}

impl Float {
    pub const ALL: [Float; 3] = [Float::F16, Float::Bf16, Float::F32];

    /// Rounds `x` to the nearest value of this format (±∞ past its largest finite value).
    pub fn round(self, x: f64) -> f64 {
        match self {
            Float::F16 => f16::from_f64(x).to_f64(),
            Float::Bf16 => bf16::from_f64(x).to_f64(),
            Float::F32 => x as f32 as f64,
        }
    }

    pub fn max_finite(self) -> f64 {
        match self {
            Float::F16 => f16::MAX.to_f64(),
            Float::Bf16 => bf16::MAX.to_f64(),
            Float::F32 => f32::MAX as f64,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Float::F16 => "fp16",
            Float::Bf16 => "bf16",
            Float::F32 => "fp32",
        }
    }

    /// How PyTorch names the dtype, for printing results the way the seed's notebook does.
    pub const fn torch_name(self) -> &'static str {
        match self {
            Float::F16 => "torch.float16",
            Float::Bf16 => "torch.bfloat16",
            Float::F32 => "torch.float32",
        }
    }

    // One correctly rounded operation each (see the module comment).
    fn add(self, a: f64, b: f64) -> f64 {
        self.round(a + b)
    }
    fn sub(self, a: f64, b: f64) -> f64 {
        self.round(a - b)
    }
    fn mul(self, a: f64, b: f64) -> f64 {
        self.round(a * b)
    }
    fn div(self, a: f64, b: f64) -> f64 {
        self.round(a / b)
    }
    fn sqrt(self, a: f64) -> f64 {
        self.round(a.sqrt())
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The seed's accumulation experiment
// ---------------------------------------------------------------------------------------------

/// One way of summing 0.01 a thousand times.
#[derive(Clone, Debug, Serialize)]
pub struct AccumulationCase {
    /// The PyTorch code the case reproduces.
    pub code: &'static str,
    pub value_dtype: Float,
    pub accumulator: Float,
    pub result: f64,
    /// result − 10, the exact sum of the real number 0.01 a thousand times.
    pub error: f64,
    /// The result the way `print(s)` shows it in PyTorch.
    pub torch_repr: String,
}

pub const ACCUMULATION_TERMS: usize = 1000;
pub const ACCUMULATION_TERM: f64 = 0.01;

/// PyTorch's scalar tensor repr: 4 decimals, integers as "10.", the dtype named unless fp32.
pub fn torch_repr(v: f64, dtype: Float) -> String {
    let num = if v.is_finite() && v.fract() == 0.0 {
        format!("{v:.0}.")
    } else if v.is_finite() {
        format!("{v:.4}")
    } else {
        format!("{v}")
    };
    match dtype {
        Float::F32 => format!("tensor({num})"),
        d => format!("tensor({num}, dtype={})", d.torch_name()),
    }
}

/// Sums `ACCUMULATION_TERM` `ACCUMULATION_TERMS` times: each term stored in `value`, the running
/// sum held in `acc` (so `acc` = fp32 with `value` = fp16 is the seed's `s += x.type(float32)`).
/// The 16-bit cases use the `half` crate's own operators, which round every result; the
/// generic emulation used by the norm statistics is tested against them.
pub fn accumulate(value: Float, acc: Float) -> f64 {
    let x = value.round(ACCUMULATION_TERM);
    match acc {
        Float::F16 => {
            let (mut s, x) = (f16::ZERO, f16::from_f64(x));
            for _ in 0..ACCUMULATION_TERMS {
                s += x;
            }
            s.to_f64()
        }
        Float::Bf16 => {
            let (mut s, x) = (bf16::ZERO, bf16::from_f64(x));
            for _ in 0..ACCUMULATION_TERMS {
                s += x;
            }
            s.to_f64()
        }
        Float::F32 => {
            let (mut s, x) = (0f32, x as f32);
            for _ in 0..ACCUMULATION_TERMS {
                s += x;
            }
            s as f64
        }
    }
}

/// The seed's four cases (fp32; fp16; fp16 values into an fp32 sum, implicitly and explicitly
/// cast) and the same for bf16.
pub fn accumulation_experiment() -> Vec<AccumulationCase> {
    let cases = [
        (
            "s = float32 0; s += tensor(0.01, float32)",
            Float::F32,
            Float::F32,
        ),
        (
            "s = float16 0; s += tensor(0.01, float16)",
            Float::F16,
            Float::F16,
        ),
        (
            "s = float32 0; s += tensor(0.01, float16)",
            Float::F16,
            Float::F32,
        ),
        (
            "s = float32 0; s += tensor(0.01, float16).type(float32)",
            Float::F16,
            Float::F32,
        ),
        (
            "s = bfloat16 0; s += tensor(0.01, bfloat16)",
            Float::Bf16,
            Float::Bf16,
        ),
        (
            "s = float32 0; s += tensor(0.01, bfloat16)",
            Float::Bf16,
            Float::F32,
        ),
    ];
    let exact = ACCUMULATION_TERM * ACCUMULATION_TERMS as f64;
    cases
        .into_iter()
        .map(|(code, value_dtype, accumulator)| {
            let result = accumulate(value_dtype, accumulator);
            AccumulationCase {
                code,
                value_dtype,
                accumulator,
                result,
                error: result - exact,
                torch_repr: torch_repr(result, accumulator),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 2. Dtypes by policy, read off the schedule
// ---------------------------------------------------------------------------------------------
//
// The policies (schedule/options.rs explains them): fp32; bf16 and fp16 mixed, with fp32 master
// weights, weight gradients and AdamW state beside 16-bit activations, activation gradients and
// weight copies. fp16 also trains with a static loss scale (`Precision::loss_scale`, 1024): it
// changes no dtype and no byte count, only the values the gradient tensors hold (S times the
// true ones until AdamW divides S out), so the tables below are the same with or without it.

/// All allocations of one role (a parameter's master, copy, gradient or moment; an activation
/// of every block) under one policy.
#[derive(Clone, Debug, Serialize)]
pub struct RoleDtypes {
    pub category: MemCategory,
    pub role: String,
    pub dtypes: Vec<DType>,
    pub allocations: usize,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyDtypes {
    pub precision: Precision,
    pub training: bool,
    pub roles: Vec<RoleDtypes>,
    /// Bytes of weights, gradients and optimizer state per parameter.
    pub bytes_per_param: f64,
}

impl PolicyDtypes {
    /// The dtypes of `role` in `category`, or an empty list when the schedule has no such role.
    pub fn dtypes_of(&self, category: MemCategory, role: &str) -> Vec<DType> {
        self.roles
            .iter()
            .find(|r| r.category == category && r.role == role)
            .map_or_else(Vec::new, |r| r.dtypes.clone())
    }
}

/// The role of an allocation: parameters by what they are for (the schedule names them
/// `<param>[.copy|.grad|.adam_m|.adam_v]`), everything else by name with the block number
/// replaced by `*`, so that the twelve `h0.qkv` … `h11.qkv` buffers are one role.
pub fn role_of(name: &str, category: MemCategory, training: bool) -> String {
    match category {
        MemCategory::Weights | MemCategory::Gradients | MemCategory::OptimizerState => {
            let role = if name.ends_with(".copy") {
                "low-precision weight copy"
            } else if name.ends_with(".grad") {
                "weight gradient"
            } else if name.ends_with(".adam_m") {
                "AdamW first moment"
            } else if name.ends_with(".adam_v") {
                "AdamW second moment"
            } else if training {
                "master weight"
            } else {
                "weight"
            };
            role.to_string()
        }
        _ => match name.strip_prefix('h').and_then(|rest| rest.split_once('.')) {
            Some((block, rest))
                if !block.is_empty() && block.bytes().all(|b| b.is_ascii_digit()) =>
            {
                format!("h*.{rest}")
            }
            _ => name.to_string(),
        },
    }
}

/// Runs the schedule of one training step (or one prefill, for inference) on the Meta backend
/// and lists the dtypes its allocations had, by category and role.
pub fn policy_dtypes(
    cfg: &ModelConfig,
    precision: Precision,
    training: bool,
    batch: usize,
    seq: usize,
) -> Result<PolicyDtypes, AnalysisError> {
    let sc = Scenario {
        workload: if training {
            Workload::Train
        } else {
            Workload::Prefill
        },
        batch,
        seq,
        opts: Options {
            precision,
            ..Options::default()
        },
    };
    let record = analysis::record(cfg, &sc)?;
    type Acc = (Vec<DType>, usize, u64);
    let mut by_role: BTreeMap<(MemCategory, String), Acc> = BTreeMap::new();
    let mut param_bytes = 0u64;
    for ev in record.mem_events().iter().filter(|e| e.delta_bytes > 0) {
        let e = by_role
            .entry((ev.category, role_of(&ev.name, ev.category, training)))
            .or_default();
        if !e.0.contains(&ev.dtype) {
            e.0.push(ev.dtype);
        }
        e.1 += 1;
        e.2 += ev.delta_bytes as u64;
        if matches!(
            ev.category,
            MemCategory::Weights | MemCategory::Gradients | MemCategory::OptimizerState
        ) {
            param_bytes += ev.delta_bytes as u64;
        }
    }
    let roles = by_role
        .into_iter()
        .map(
            |((category, role), (dtypes, allocations, bytes))| RoleDtypes {
                category,
                role,
                dtypes,
                allocations,
                bytes,
            },
        )
        .collect();
    Ok(PolicyDtypes {
        precision,
        training,
        roles,
        bytes_per_param: param_bytes as f64 / cfg.param_count().max(1) as f64,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Normalisation statistics in low precision
// ---------------------------------------------------------------------------------------------

/// A statistic as computed in low precision beside its f64 reference.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stat {
    pub value: f64,
    pub reference: f64,
    /// |value − reference| / |reference|; infinite when the value overflowed.
    pub rel_error: f64,
}

impl Stat {
    fn new(value: f64, reference: f64) -> Self {
        let rel_error = if value.is_finite() {
            (value - reference).abs() / reference.abs().max(f64::MIN_POSITIVE)
        } else {
            f64::INFINITY
        };
        Stat {
            value,
            reference,
            rel_error,
        }
    }
}

/// LayerNorm and RMSNorm statistics of one activation row.
#[derive(Clone, Debug, Serialize)]
pub struct NormStatsCase {
    /// Row width C.
    pub width: usize,
    /// The rows' scale: x = magnitude · (0.25 + z), z roughly standard normal.
    pub magnitude: f64,
    /// The dtype the row is stored in (what the previous op wrote).
    pub input: Float,
    /// The dtype the sums are accumulated in.
    pub accumulator: Float,
    pub mean: Stat,
    pub variance: Stat,
    /// LayerNorm's 1/√(var + ε).
    pub rstd: Stat,
    /// RMSNorm's 1/√(mean(x²) + ε).
    pub rms_rstd: Stat,
    /// Some intermediate (a sum, a square, a sum of squares) exceeded the accumulator's largest
    /// finite value and became ∞.
    pub overflow: bool,
}

pub const NORM_EPS: f64 = 1e-5;

/// A deterministic row: `magnitude · (0.25 + z)`, z the Irwin–Hall approximation of a standard
/// normal (sum of 12 uniforms − 6) from a fixed xorshift stream. The 0.25 offset gives the row a
/// non-zero mean, as residual streams have, so the variance is a difference of close numbers.
pub fn activation_row(width: usize, magnitude: f64, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..width)
        .map(|_| {
            let z: f64 = (0..12).map(|_| uniform()).sum::<f64>() - 6.0;
            magnitude * (0.25 + z)
        })
        .collect()
}

/// The statistics the way a naive kernel computes them in `acc`: sequential sums (one thread
/// walking the row; GPU tree reductions lose less to rounding, but overflow the same), two-pass
/// variance (llm.c's layernorm_forward), every operation rounded to `acc`. The reference is f64
/// on the same stored inputs, so the errors are the accumulation's alone.
pub fn norm_stats(row: &[f64], input: Float, acc: Float) -> (f64, f64, f64, f64, bool) {
    let x: Vec<f64> = row.iter().map(|&v| acc.round(input.round(v))).collect();
    let n = acc.round(x.len() as f64);
    // ∞ is sticky in a sum (and ∞ − ∞ is NaN), so an overflow anywhere shows in the totals.
    let mut sum = 0.0;
    for &v in &x {
        sum = acc.add(sum, v);
    }
    let mean = acc.div(sum, n);
    let (mut sq, mut sq_raw) = (0.0, 0.0);
    for &v in &x {
        let d = acc.sub(v, mean);
        sq = acc.add(sq, acc.mul(d, d));
        sq_raw = acc.add(sq_raw, acc.mul(v, v));
    }
    let overflow = !(sum.is_finite() && sq.is_finite() && sq_raw.is_finite());
    let var = acc.div(sq, n);
    let eps = acc.round(NORM_EPS);
    let rstd = acc.div(1.0, acc.sqrt(acc.add(var, eps)));
    let rms_rstd = acc.div(1.0, acc.sqrt(acc.add(acc.div(sq_raw, n), eps)));
    (mean, var, rstd, rms_rstd, overflow)
}

fn reference_stats(row: &[f64], input: Float) -> (f64, f64, f64, f64) {
    let x: Vec<f64> = row.iter().map(|&v| input.round(v)).collect();
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let ms = x.iter().map(|v| v * v).sum::<f64>() / n;
    (
        mean,
        var,
        1.0 / (var + NORM_EPS).sqrt(),
        1.0 / (ms + NORM_EPS).sqrt(),
    )
}

/// The (input, accumulator) pairs worth comparing: all-fp16, all-bf16, what autocast does (16-bit
/// storage, fp32 accumulation), and fp32 throughout.
pub const NORM_CASES: [(Float, Float); 5] = [
    (Float::F16, Float::F16),
    (Float::Bf16, Float::Bf16),
    (Float::F16, Float::F32),
    (Float::Bf16, Float::F32),
    (Float::F32, Float::F32),
];

pub fn norm_stats_case(width: usize, magnitude: f64, input: Float, acc: Float) -> NormStatsCase {
    let row = activation_row(width, magnitude, width as u64 ^ magnitude.to_bits());
    let (mean, var, rstd, rms, overflow) = norm_stats(&row, input, acc);
    let (r_mean, r_var, r_rstd, r_rms) = reference_stats(&row, input);
    NormStatsCase {
        width,
        magnitude,
        input,
        accumulator: acc,
        mean: Stat::new(mean, r_mean),
        variance: Stat::new(var, r_var),
        rstd: Stat::new(rstd, r_rstd),
        rms_rstd: Stat::new(rms, r_rms),
        overflow,
    }
}

/// Every (C, magnitude, input, accumulator) combination of the experiment.
pub fn norm_stats_experiment(widths: &[usize], magnitudes: &[f64]) -> Vec<NormStatsCase> {
    let mut out = Vec::new();
    for &c in widths {
        for &m in magnitudes {
            for (input, acc) in NORM_CASES {
                out.push(norm_stats_case(c, m, input, acc));
            }
        }
    }
    out
}

pub const NORM_WIDTHS: [usize; 2] = [768, 4096];
pub const NORM_MAGNITUDES: [f64; 4] = [1.0, 1e2, 1e3, 1e4];

#[cfg(test)]
mod tests {
    use super::*;

    /// The generic emulation (f64 then one rounding) agrees with the `half` crate's operators.
    #[test]
    fn emulation_matches_half_operators() {
        for fmt in [Float::F16, Float::Bf16, Float::F32] {
            let x = fmt.round(ACCUMULATION_TERM);
            let mut s = 0.0;
            for _ in 0..ACCUMULATION_TERMS {
                s = fmt.add(s, x);
            }
            assert_eq!(s, accumulate(fmt, fmt), "{}", fmt.name());
        }
    }

    #[test]
    fn torch_repr_matches_pytorch() {
        assert_eq!(torch_repr(10.000_134, Float::F32), "tensor(10.0001)");
        assert_eq!(
            torch_repr(9.953_125, Float::F16),
            "tensor(9.9531, dtype=torch.float16)"
        );
        assert_eq!(
            torch_repr(4.0, Float::Bf16),
            "tensor(4., dtype=torch.bfloat16)"
        );
    }

    #[test]
    fn roles_merge_blocks() {
        assert_eq!(
            role_of("h11.ln_1.stats", MemCategory::Activations, true),
            "h*.ln_1.stats"
        );
        assert_eq!(role_of("logits", MemCategory::Activations, true), "logits");
        assert_eq!(
            role_of("h3.attn.qkv.w.adam_v", MemCategory::OptimizerState, true),
            "AdamW second moment"
        );
        assert_eq!(role_of("wte", MemCategory::Weights, false), "weight");
    }

    #[test]
    fn rows_are_deterministic_and_scaled() {
        let a = activation_row(4096, 100.0, 7);
        assert_eq!(a, activation_row(4096, 100.0, 7));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((mean - 25.0).abs() < 5.0, "{mean}");
    }
}
