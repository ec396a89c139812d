//! The AdamW op through the CPU backend under loss scaling: gradients stored S times too large
//! (with their norm) give the update of the true gradients, and a non-finite norm under S > 1
//! (an fp16 overflow) skips the step, leaving θ, m, v and the low-precision copies as they were.

use tperf_core::backend::{Backend, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::adamw::{AdamW, AdamWParams};
use tperf_core::ops::{Op, Phase};
use tperf_core::rng::Rng;
use tperf_core::tensor::{MemCategory, Tensor, TensorSpec};
use tperf_cpu::CpuBackend;

/// Two parameters: a matrix (decayed) and a vector (not).
const SHAPES: [&[usize]; 2] = [&[5, 7], &[7]];

/// One AdamW group on the backend: the norm, θ, g, m, v of each parameter, and bf16 copies.
struct Group {
    norm: Tensor,
    theta: Vec<Tensor>,
    g: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    copy: Vec<Tensor>,
}

fn alloc(be: &mut CpuBackend, name: &str, shape: &[usize], dtype: DType) -> Tensor {
    be.alloc(TensorSpec::new(name, shape, dtype, MemCategory::Weights))
        .unwrap()
}

/// The group with seeded starting values, gradients `g_scale`·g and the norm `norm` (or, when
/// `None`, the global norm of the stored gradients, as the GradNorm op would measure it).
fn group(be: &mut CpuBackend, g_scale: f32, norm: Option<f32>) -> Group {
    let mut rng = Rng::new(3);
    let mut gr = Group {
        norm: alloc(be, "norm", &[1], DType::F32),
        theta: vec![],
        g: vec![],
        m: vec![],
        v: vec![],
        copy: vec![],
    };
    let mut sum_sq = 0f64;
    for (i, shape) in SHAPES.iter().enumerate() {
        let n: usize = shape.iter().product();
        let theta = alloc(be, &format!("theta{i}"), shape, DType::F32);
        be.write_f32(&theta, &rng.normal_vec(n, 0.5)).unwrap();
        let g = alloc(be, &format!("g{i}"), shape, DType::F32);
        let values: Vec<f32> = rng.normal_vec(n, 0.3).iter().map(|x| x * g_scale).collect();
        sum_sq += values.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
        be.write_f32(&g, &values).unwrap();
        let m = alloc(be, &format!("m{i}"), shape, DType::F32);
        be.write_f32(&m, &rng.normal_vec(n, 0.01)).unwrap();
        let v = alloc(be, &format!("v{i}"), shape, DType::F32);
        let v_values: Vec<f32> = rng.normal_vec(n, 0.01).iter().map(|x| x * x).collect();
        be.write_f32(&v, &v_values).unwrap();
        let copy = alloc(be, &format!("copy{i}"), shape, DType::Bf16);
        be.write_f32(&copy, &rng.normal_vec(n, 0.5)).unwrap();
        gr.theta.push(theta);
        gr.g.push(g);
        gr.m.push(m);
        gr.v.push(v);
        gr.copy.push(copy);
    }
    let norm = norm.unwrap_or(sum_sq.sqrt() as f32);
    be.write_f32(&gr.norm, &[norm]).unwrap();
    gr
}

/// Runs AdamW with loss scale `grad_scale` over the group: inputs [norm, θ…, g…, m…, v…] →
/// outputs [θ…, m…, v…, copies…].
fn step(be: &mut CpuBackend, gr: &Group, hyper: AdamWParams, grad_scale: f64) {
    let numel = SHAPES
        .iter()
        .map(|s| s.iter().product::<usize>() as u64)
        .sum();
    let mut inputs = vec![gr.norm.clone()];
    for list in [&gr.theta, &gr.g, &gr.m, &gr.v] {
        inputs.extend(list.iter().cloned());
    }
    let mut outputs = vec![];
    for list in [&gr.theta, &gr.m, &gr.v, &gr.copy] {
        outputs.extend(list.iter().cloned());
    }
    be.exec(OpCall::from_lists(
        Op::AdamW(AdamW {
            numel,
            hyper,
            grad_scale,
            shards: 1,
        }),
        inputs,
        outputs,
        "adamw",
        None,
        Phase::Optimizer,
    ))
    .unwrap();
}

/// θ, m, v and the copies, read back.
fn state(be: &mut CpuBackend, gr: &Group) -> Vec<Vec<f32>> {
    [&gr.theta, &gr.m, &gr.v, &gr.copy]
        .iter()
        .flat_map(|list| list.iter())
        .map(|t| be.read_f32(t).unwrap())
        .collect()
}

#[test]
fn scaled_gradients_give_the_unscaled_update() {
    // Gradient norm ≈ 0.3·√42 ≈ 1.9: clipped at 1, not clipped at 10, or no clip.
    for max_grad_norm in [Some(1.0), Some(10.0), None] {
        let hyper = AdamWParams {
            lr: 1e-2,
            step: 2,
            max_grad_norm,
            ..AdamWParams::default()
        };
        let mut be = CpuBackend::new();
        let plain = group(&mut be, 1.0, None);
        step(&mut be, &plain, hyper, 1.0);
        let want = state(&mut be, &plain);
        for s in [1024.0f32, 3.0] {
            let mut be = CpuBackend::new();
            let scaled = group(&mut be, s, None);
            step(&mut be, &scaled, hyper, f64::from(s));
            let got = state(&mut be, &scaled);
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    // A power of two scales exactly, so the update is the same to the bit.
                    if s == 1024.0 {
                        assert_eq!(x, y, "S {s} clip {max_grad_norm:?}: tensor {k}[{i}]");
                    } else {
                        assert!(
                            (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                            "S {s} clip {max_grad_norm:?}: tensor {k}[{i}] {x} vs {y}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_non_finite_norm_under_loss_scaling_skips_the_step() {
    let hyper = AdamWParams {
        lr: 1e-2,
        ..AdamWParams::default()
    };
    for norm in [f32::INFINITY, f32::NAN] {
        let mut be = CpuBackend::new();
        let gr = group(&mut be, 1024.0, Some(norm));
        let before = state(&mut be, &gr);
        step(&mut be, &gr, hyper, 1024.0);
        let after = state(&mut be, &gr);
        for (k, (a, b)) in after.iter().zip(&before).enumerate() {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "norm {norm}: tensor {k} changed"
            );
        }
        // Without loss scaling the same step is taken (the fp32 and bf16 policies as before).
        step(&mut be, &gr, hyper, 1.0);
        assert_ne!(state(&mut be, &gr), before, "norm {norm} with S = 1");
    }
}
