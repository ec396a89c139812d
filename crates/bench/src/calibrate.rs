//! `tperf calibrate`'s measuring side: the workloads a calibration is fitted on and those held
//! out to measure its error, each profiled op by op (every op timed beside its roofline), as the
//! samples [`tperf_core::cost::calibration`] fits and evaluates.
//!
//! The held-out workloads are model sizes and batch shapes that no training workload has, so the
//! error they give is the error on a workload the curves never saw.

use crate::device::Device;
use crate::model::BenchError;
use crate::profile::{self, Profile};
use serde::Serialize;
use tperf_core::config::ModelConfig;
use tperf_core::cost::analysis::{Scenario, Workload};
use tperf_core::cost::calibration::{MeasuredSamples, OpKind, Sample, WorkloadSamples};
use tperf_core::cost::hardware::Hardware;
use tperf_core::schedule::{AttentionKernel, Options, Precision};

/// Which side of the split a workload is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Training,
    HeldOut,
}

/// One workload of a suite.
#[derive(Clone, Debug)]
pub struct Spec {
    pub config: ModelConfig,
    pub scenario: Scenario,
    pub split: Split,
}

impl Spec {
    /// "small train B4 T256 bf16".
    pub fn label(&self) -> String {
        let sc = &self.scenario;
        format!(
            "{} {} B{} T{} {}",
            self.config.name,
            sc.workload.name(),
            sc.batch,
            sc.seq,
            sc.opts.precision.name()
        )
    }
}

/// A named set of workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// A GPU's: the seed's small, medium and large and GPT-2 124M and 355M in bf16, train,
    /// forward, prefill and decode steps (about a minute on an H200).
    Gpu,
    /// The CPU's: two-layer models of width 64 to 256 in fp32, a few seconds in all.
    Cpu,
}

impl Suite {
    pub fn for_device(device: Device) -> Suite {
        match device {
            Device::Cpu => Suite::Cpu,
            Device::Cuda(_) => Suite::Gpu,
        }
    }

    pub fn precision(self) -> Precision {
        match self {
            Suite::Gpu => Precision::Bf16,
            Suite::Cpu => Precision::Fp32,
        }
    }

    pub fn specs(self) -> Vec<Spec> {
        let opts = Options {
            precision: self.precision(),
            attention: AttentionKernel::Flash,
            ..Options::default()
        };
        let preset = |name: &str| {
            tperf_core::presets::find(name)
                .expect("the suites name known presets")
                .config
        };
        let tiny = |d_model: usize| {
            let mut c = preset("small");
            c.name = format!("d{d_model}");
            c.vocab_size = 512;
            c.n_layers = 2;
            c.d_model = d_model;
            c.d_ff = 4 * d_model;
            let heads = (d_model / 32).max(1);
            c.with_heads(heads, heads).expect("heads divide d_model")
        };
        let mut out = Vec::new();
        let mut add = |config: &ModelConfig, w: Workload, batch, seq, split| {
            out.push(Spec {
                config: config.clone(),
                scenario: Scenario {
                    workload: w,
                    batch,
                    seq,
                    opts,
                },
                split,
            })
        };
        use Split::{HeldOut as H, Training as T};
        use Workload::{Decode as D, Forward as F, Prefill as P, Train as Tr};
        match self {
            Suite::Gpu => {
                let (small, medium, large) = (preset("small"), preset("medium"), preset("large"));
                let (g124, g355) = (preset("gpt2-124m"), preset("gpt2-355m"));
                for (b, t) in [(1, 128), (4, 256), (8, 512)] {
                    add(&small, Tr, b, t, T);
                }
                add(&small, F, 16, 256, T);
                add(&small, P, 8, 128, T);
                for b in [1, 8, 64, 256] {
                    add(&small, D, b, 256, T);
                }
                add(&medium, Tr, 2, 256, T);
                add(&medium, D, 32, 512, T);
                add(&g124, Tr, 8, 128, T);
                add(&g124, P, 64, 128, T);
                for b in [4, 128] {
                    add(&g124, D, b, 192, T);
                }
                // Held out: other sizes (large, GPT-2 355M) and other batch shapes of the
                // trained sizes.
                add(&small, Tr, 2, 384, H);
                add(&small, D, 32, 320, H);
                add(&large, Tr, 2, 256, H);
                add(&large, D, 16, 384, H);
                add(&g355, Tr, 4, 192, H);
                add(&g355, D, 96, 320, H);
                add(&g124, Tr, 3, 320, H);
                add(&g124, P, 32, 128, H);
                add(&g124, D, 200, 192, H);
            }
            Suite::Cpu => {
                let (d64, d128, d256) = (tiny(64), tiny(128), tiny(256));
                add(&d64, Tr, 2, 32, T);
                add(&d64, F, 4, 64, T);
                add(&d128, Tr, 2, 64, T);
                add(&d128, D, 4, 64, T);
                add(&d256, Tr, 1, 64, T);
                add(&d256, D, 1, 32, T);
                add(&d256, P, 2, 32, T);
                let (d96, d192) = (tiny(96), tiny(192));
                add(&d192, Tr, 2, 48, H);
                add(&d192, F, 3, 40, H);
                add(&d96, D, 2, 48, H);
                add(&d128, Tr, 3, 40, H);
            }
        }
        out
    }
}

/// A profiled workload's samples: each op's roofline time on `hw` beside its measured median.
pub fn samples(label: String, p: &Profile) -> WorkloadSamples {
    let ops = p
        .ops
        .iter()
        .map(|o| {
            let r = &p.analysis.rows[o.index];
            Sample {
                kind: OpKind::of_row(r, p.analysis.scenario.workload),
                roofline_seconds: r.roofline_seconds,
                measured_seconds: o.median,
            }
        })
        .collect();
    WorkloadSamples {
        label,
        ops,
        step_seconds: p.step_seconds.median,
    }
}

/// What [`derive_variants`] did to a calibration's samples.
#[derive(Debug, Default, PartialEq)]
pub struct DerivedVariants {
    /// Op instances given a variant.
    pub ops: usize,
    /// Workloads whose ops were matched, op for op, to this tperf's record of their schedule.
    pub matched: usize,
    /// Workloads that were not (no suite workload has the label, or the schedule has changed
    /// since they were measured): their ops keep no variant.
    pub unmatched: Vec<String>,
}

/// Gives the samples of a calibration saved before op variants were kept
/// ([`OpKind::variant`]) the variant of each op, from this tperf's record of the suite workload
/// of the same label: the op at the same position, checked to have the same name and dtype.
/// A sample that already says its variant keeps it.
pub fn derive_variants(samples: &mut MeasuredSamples, hw: &Hardware) -> DerivedVariants {
    let specs: Vec<Spec> = [Suite::Gpu, Suite::Cpu]
        .iter()
        .flat_map(|s| s.specs())
        .collect();
    let mut out = DerivedVariants::default();
    for w in samples
        .training
        .iter_mut()
        .chain(samples.held_out.iter_mut())
    {
        let rows = specs
            .iter()
            .find(|s| s.label() == w.label)
            .and_then(|s| tperf_core::cost::analysis::analyze(&s.config, &s.scenario, hw).ok())
            .map(|a| a.rows)
            .filter(|rows| {
                rows.len() == w.ops.len()
                    && rows
                        .iter()
                        .zip(&w.ops)
                        .all(|(r, o)| r.name == o.kind.name && r.dtype.name() == o.kind.dtype)
            });
        let Some(rows) = rows else {
            out.unmatched.push(w.label.clone());
            continue;
        };
        out.matched += 1;
        for (r, o) in rows.iter().zip(&mut w.ops) {
            if o.kind.variant.is_empty() && !r.variant.is_empty() {
                o.kind.variant = r.variant.to_string();
                out.ops += 1;
            }
        }
    }
    out
}

/// How each workload is run.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    pub warmup: usize,
    pub steps: usize,
    /// Past this instant no further workload starts (each one left is skipped, saying so), so a
    /// run with a time budget still fits and saves what it measured.
    pub deadline: Option<std::time::Instant>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            warmup: 1,
            steps: 3,
            deadline: None,
        }
    }
}

/// Why one workload could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Fit(#[from] crate::fit::FitError),
    #[error(transparent)]
    Bench(#[from] BenchError),
}

/// What a suite's run measured: the samples of each workload that ran, and for each that did
/// not, its label and why (a workload that does not fit or fails is skipped, not fatal: the
/// calibration is fitted on the rest and says what it lacks).
#[derive(Debug, Default)]
pub struct Measured {
    pub workloads: Vec<(Split, WorkloadSamples)>,
    pub skipped: Vec<(String, String)>,
}

impl Measured {
    pub fn of(&self, split: Split) -> Vec<WorkloadSamples> {
        self.workloads
            .iter()
            .filter(|(s, _)| *s == split)
            .map(|(_, w)| w.clone())
            .collect()
    }
}

/// Profiles one spec on `device` against `hw`'s roofline.
pub fn measure_one(
    device: Device,
    hw: &Hardware,
    spec: &Spec,
    run: RunOptions,
) -> Result<WorkloadSamples, CalibrateError> {
    crate::fit::check(device, &spec.config, &spec.scenario)?;
    let p = profile::profile(
        device,
        &spec.config,
        &spec.scenario,
        hw,
        run.warmup,
        run.steps,
        |_| {},
    )?;
    Ok(samples(spec.label(), &p))
}

/// Profiles each spec; `on_done` hears of each one as it finishes (with its error, if any).
pub fn measure(
    device: Device,
    hw: &Hardware,
    specs: &[Spec],
    run: RunOptions,
    mut on_done: impl FnMut(usize, &Spec, Option<&CalibrateError>),
) -> Measured {
    let mut out = Measured::default();
    for (i, spec) in specs.iter().enumerate() {
        if run.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            out.skipped
                .push((spec.label(), "the time limit was reached before it".into()));
            continue;
        }
        match measure_one(device, hw, spec, run) {
            Ok(w) => {
                on_done(i, spec, None);
                out.workloads.push((spec.split, w));
            }
            Err(e) => {
                on_done(i, spec, Some(&e));
                out.skipped
                    .push((spec.label(), tperf_core::error::report(&e)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// No held-out workload repeats a training workload's model and batch shape, and each suite
    /// holds out both a size the training never saw and a new batch shape of a trained size.
    #[test]
    fn held_out_workloads_are_not_in_the_training_set() {
        for suite in [Suite::Gpu, Suite::Cpu] {
            let specs = suite.specs();
            let train: BTreeSet<String> = specs
                .iter()
                .filter(|s| s.split == Split::Training)
                .map(|s| s.label())
                .collect();
            let trained_sizes: BTreeSet<&str> = specs
                .iter()
                .filter(|s| s.split == Split::Training)
                .map(|s| s.config.name.as_str())
                .collect();
            let held: Vec<&Spec> = specs.iter().filter(|s| s.split == Split::HeldOut).collect();
            assert!(!held.is_empty());
            assert!(held.iter().all(|s| !train.contains(&s.label())));
            assert!(held
                .iter()
                .any(|s| !trained_sizes.contains(s.config.name.as_str())));
            assert!(held
                .iter()
                .any(|s| trained_sizes.contains(s.config.name.as_str())));
            for s in &specs {
                s.config.validate().unwrap();
                s.config.check_seq(s.scenario.seq).unwrap();
            }
        }
    }

    /// A calibration saved before variants were kept gets them from this tperf's record of each
    /// workload; a workload of an unknown label, or whose ops no longer line up, keeps none.
    #[test]
    fn old_samples_get_their_variants_from_the_schedule_of_their_label() {
        let hw = tperf_core::cost::hardware::find("h200").unwrap();
        let spec = Suite::Gpu
            .specs()
            .into_iter()
            .find(|s| s.label() == "gpt2-124m train B8 T128 bf16")
            .unwrap();
        let a = tperf_core::cost::analysis::analyze(&spec.config, &spec.scenario, &hw).unwrap();
        let as_saved_before_variants = |label: &str| WorkloadSamples {
            label: label.into(),
            ops: a
                .rows
                .iter()
                .map(|r| Sample {
                    kind: OpKind::of_row(r, spec.scenario.workload).with_variant(""),
                    roofline_seconds: r.roofline_seconds,
                    measured_seconds: 2.0 * r.roofline_seconds,
                })
                .collect(),
            step_seconds: 1.0,
        };
        let mut shifted = as_saved_before_variants(&spec.label());
        shifted.ops.remove(0);
        let mut samples = MeasuredSamples {
            training: vec![as_saved_before_variants(&spec.label())],
            held_out: vec![
                as_saved_before_variants("gpt2-7b train B1 T1 bf16"),
                shifted,
            ],
        };
        let derived = derive_variants(&mut samples, &hw);
        assert_eq!(derived.matched, 1);
        assert_eq!(
            derived.unmatched,
            ["gpt2-7b train B1 T1 bf16", "gpt2-124m train B8 T128 bf16"]
        );
        let variant_of = |label: &str, name: &str| -> Vec<String> {
            let ops = &samples.training[0].ops;
            ops.iter()
                .zip(&a.rows)
                .filter(|(_, r)| r.label == label && r.name == name)
                .map(|(o, _)| o.kind.variant.clone())
                .collect()
        };
        // Each layer's four biased backward products (the fused GELU one among them)…
        let biased = variant_of("attn.qkv", "matmul_backward");
        assert_eq!(biased.len(), 12);
        assert!(biased.iter().all(|v| v == "bias"));
        assert!(variant_of("mlp.fc", "matmul_gelu_backward")
            .iter()
            .all(|v| v == "bias"));
        // …the forward ones (a bias there is the GEMM's epilogue) none, and the lm_head's
        // 50,257 logits a row are unaligned both ways.
        assert!(variant_of("attn.qkv", "matmul")
            .iter()
            .all(|v| v.is_empty()));
        assert_eq!(variant_of("lm_head", "matmul"), ["unaligned"]);
        assert_eq!(variant_of("lm_head", "matmul_backward"), ["unaligned"]);
        assert_eq!(derived.ops, 12 * 4 + 2);
        assert!(samples.held_out[0]
            .ops
            .iter()
            .all(|o| o.kind.variant.is_empty()));
        // Run again, nothing is left to derive.
        let again = derive_variants(&mut samples, &hw);
        assert_eq!(again.ops, 0);
    }

    /// The whole loop on the CPU: measure the CPU suite's smallest workloads, fit, and evaluate
    /// on a held-out one. Kept to a few tiny steps so that it runs in well under a second.
    #[test]
    fn a_tiny_cpu_calibration_fits_and_reports_its_error() {
        use tperf_core::cost::calibration::Calibration;
        let hw = tperf_core::cost::hardware::detect_local_cpu();
        let specs: Vec<Spec> = Suite::Cpu
            .specs()
            .into_iter()
            .filter(|s| s.config.d_model <= 128)
            .collect();
        let run = RunOptions {
            warmup: 1,
            steps: 2,
            deadline: None,
        };
        let mut seen = 0;
        let m = measure(Device::Cpu, &hw, &specs, run, |_, _, e| {
            assert!(e.is_none(), "{e:?}");
            seen += 1;
        });
        assert_eq!(seen, specs.len());
        let train = m.of(Split::Training);
        let held = m.of(Split::HeldOut);
        assert!(!train.is_empty() && !held.is_empty());
        assert!(train
            .iter()
            .all(|w| w.ops.iter().all(|o| o.measured_seconds > 0.0)));
        let cal = Calibration::fit(
            "cpu".into(),
            hw,
            "fp32".into(),
            &train,
            serde_json::Value::Null,
        )
        .unwrap();
        let e = cal.evaluate(&held);
        let ops: usize = held.iter().map(|w| w.ops.len()).sum();
        assert_eq!(e.op_calibrated.count, ops);
        assert_eq!(e.workloads.len(), held.len());
        // Fitted on this machine, the curves predict its held-out ops better than the detected
        // roofline, which knows nothing of its kernels. (The whole step is not asserted: on a
        // CPU shared with other jobs its wall time is mostly the scheduler's.)
        assert!(e.op_calibrated.median < e.op_roofline.median, "{e:?}");
        assert!(e.workloads.iter().all(|w| w.calibrated_step_seconds > 0.0));
    }
}
