//! `tperf precision`'s numbers: the seed's accumulation experiment reproduced to the last bit,
//! the dtypes the schedule gives every tensor under each policy, and fp16's overflow in norms.

use tperf_core::dtype::DType;
use tperf_core::precision::*;
use tperf_core::presets;
use tperf_core::schedule::Precision;
use tperf_core::tensor::MemCategory;

fn case(value: Float, acc: Float) -> AccumulationCase {
    accumulation_experiment()
        .into_iter()
        .find(|c| c.value_dtype == value && c.accumulator == acc)
        .expect("case present")
}

/// The seed prints tensor(10.0001), tensor(9.9531, dtype=torch.float16), tensor(10.0021) twice:
/// the exact binary results behind those four lines, and the bf16 pair beside them.
#[test]
fn accumulation_reproduces_the_seed_exactly() {
    let all = accumulation_experiment();
    let reprs: Vec<&str> = all.iter().map(|c| c.torch_repr.as_str()).collect();
    assert_eq!(
        reprs,
        [
            "tensor(10.0001)",
            "tensor(9.9531, dtype=torch.float16)",
            "tensor(10.0021)",
            "tensor(10.0021)",
            "tensor(4., dtype=torch.bfloat16)",
            "tensor(10.0098)",
        ]
    );
    // fp32: 1000 roundings of a 24-bit sum, within 1e-4 of 10… barely: 10.000134.
    let f32 = case(Float::F32, Float::F32);
    assert_eq!(f32.result, 10.000_133_514_404_297);
    assert!(f32.error.abs() < 2e-4);
    // fp16 sum: above 8 the spacing is 2^-7 = 0.0078 and each 0.01 rounds to 0.0078: it stalls
    // well below 10.
    assert_eq!(case(Float::F16, Float::F16).result, 9.953_125);
    // fp16 values into fp32: the error is fp16's representation of 0.01 (0.0100021362…) × 1000,
    // not the accumulation.
    assert_eq!(case(Float::F16, Float::F32).result, 10.002_136_230_468_75);
    assert_eq!(Float::F16.round(0.01), 0.010_002_136_230_468_75);
    // bf16 sum: above 4 the spacing is 2^-5 = 0.03125, half of it exceeds 0.01, so every
    // addition rounds back to 4.
    assert_eq!(case(Float::Bf16, Float::Bf16).result, 4.0);
    assert_eq!(case(Float::Bf16, Float::F32).result, 10.009_765_625);
}

fn small() -> tperf_core::config::ModelConfig {
    presets::find("small").expect("preset").config
}

#[test]
fn bf16_training_keeps_fp32_master_gradients_and_adam_state() {
    let p = policy_dtypes(&small(), Precision::Bf16, true, 1, 16).expect("records");
    let w = MemCategory::Weights;
    assert_eq!(p.dtypes_of(w, "master weight"), [DType::F32]);
    assert_eq!(p.dtypes_of(w, "low-precision weight copy"), [DType::Bf16]);
    assert_eq!(
        p.dtypes_of(MemCategory::Gradients, "weight gradient"),
        [DType::F32]
    );
    for m in ["AdamW first moment", "AdamW second moment"] {
        assert_eq!(p.dtypes_of(MemCategory::OptimizerState, m), [DType::F32]);
    }
    // Activations in bf16, norm statistics and the loss in fp32.
    assert_eq!(
        p.dtypes_of(MemCategory::Activations, "h*.qkv"),
        [DType::Bf16]
    );
    assert_eq!(
        p.dtypes_of(MemCategory::Activations, "h*.ln_1.stats"),
        [DType::F32]
    );
    assert_eq!(p.dtypes_of(MemCategory::Io, "losses"), [DType::F32]);
    // 4 master + 2 copy + 4 gradient + 8 moments.
    assert_eq!(p.bytes_per_param, 18.0);
}

#[test]
fn bytes_per_parameter_by_policy() {
    let cfg = small();
    for (precision, train, inference) in [
        (Precision::Fp32, 16.0, 4.0),
        (Precision::Bf16, 18.0, 2.0),
        (Precision::Fp16, 18.0, 2.0),
    ] {
        let t = policy_dtypes(&cfg, precision, true, 1, 16).expect("records");
        let i = policy_dtypes(&cfg, precision, false, 1, 16).expect("records");
        assert_eq!(t.bytes_per_param, train, "{precision:?} training");
        assert_eq!(i.bytes_per_param, inference, "{precision:?} inference");
    }
}

#[test]
fn bf16_inference_holds_bf16_weights_only() {
    let p = policy_dtypes(&small(), Precision::Bf16, false, 1, 16).expect("records");
    assert_eq!(p.dtypes_of(MemCategory::Weights, "weight"), [DType::Bf16]);
    assert!(p
        .dtypes_of(MemCategory::Weights, "master weight")
        .is_empty());
    assert!(
        p.roles
            .iter()
            .all(|r| r.category != MemCategory::Gradients
                && r.category != MemCategory::OptimizerState)
    );
    assert_eq!(
        p.dtypes_of(MemCategory::KvCache, "h*.k_cache"),
        [DType::Bf16]
    );
}

/// fp16's largest value is 65504: a row of C = 768 values of magnitude 100 has a sum of squares
/// near 768 · 100² ≈ 8·10⁶, so an fp16 accumulator overflows; bf16 (fp32's exponent range) does
/// not, and neither does fp16 storage with fp32 accumulation (what autocast does).
#[test]
fn fp16_sum_of_squares_overflows_where_bf16_and_fp32_do_not() {
    assert_eq!(Float::F16.max_finite(), 65504.0);
    let f16 = norm_stats_case(768, 100.0, Float::F16, Float::F16);
    assert!(f16.overflow);
    assert!(f16.variance.value.is_infinite());
    assert_eq!(f16.rms_rstd.value, 0.0, "1/√∞");
    let bf16 = norm_stats_case(768, 100.0, Float::Bf16, Float::Bf16);
    assert!(!bf16.overflow);
    let autocast = norm_stats_case(768, 100.0, Float::F16, Float::F32);
    assert!(!autocast.overflow);
    assert!(
        autocast.rstd.rel_error < 1e-6,
        "{}",
        autocast.rstd.rel_error
    );
    // At magnitude 1 fp16 does not overflow but its accumulation error is far above fp32's.
    let small = norm_stats_case(4096, 1.0, Float::F16, Float::F16);
    assert!(!small.overflow);
    assert!(small.variance.rel_error > 1e-2);
    // bf16 never overflows here but its 8-bit significand loses the variance: tens of percent
    // at C = 4096.
    let wide = norm_stats_case(4096, 1e4, Float::Bf16, Float::Bf16);
    assert!(!wide.overflow && wide.variance.rel_error > 0.1);
    for c in norm_stats_experiment(&NORM_WIDTHS, &NORM_MAGNITUDES) {
        if c.accumulator == Float::F32 {
            assert!(!c.overflow && c.rstd.rel_error < 1e-5, "{c:?}");
        }
    }
}
