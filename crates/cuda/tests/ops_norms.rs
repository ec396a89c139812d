//! The norm, loss and optimizer kernels against the CPU backend on edge shapes: no rows, one row,
//! an odd number of rows and columns (tails of the 256-thread loops), rows wider than a block,
//! and a training-sized case; f32 storage and the mixed policy's bf16 activations beside f32
//! statistics and weight gradients. Needs a CUDA device; without one each test says it skipped.

use tperf_core::dtype::DType::{self, Bf16, F16, F32, I32};
use tperf_core::ops::adamw::{AdamW, AdamWParams};
use tperf_core::ops::cross_entropy::CrossEntropy;
use tperf_core::ops::grad_norm::GradNorm;
use tperf_core::ops::layernorm::LayerNorm;
use tperf_core::ops::rmsnorm::RmsNorm;
use tperf_core::ops::Op;
use tperf_cuda::conformance::{assert_case_passes, case_tensor, gpu_or_skip as gpu, Fill, OpCase};
use tperf_cuda::CudaBackend;

/// An op case under construction: tensors added in order, each an input, an output or both.
struct Builder {
    case: OpCase,
}

impl Builder {
    fn new(op: Op) -> Self {
        Builder {
            case: OpCase {
                op,
                tensors: Vec::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
            },
        }
    }

    fn tensor(&mut self, name: &str, shape: &[usize], dtype: DType, fill: Fill) -> usize {
        self.case
            .tensors
            .push(case_tensor(name, shape, dtype, fill));
        self.case.tensors.len() - 1
    }

    fn input(&mut self, name: &str, shape: &[usize], dtype: DType, fill: Fill) -> usize {
        let i = self.tensor(name, shape, dtype, fill);
        self.case.inputs.push(i);
        i
    }

    /// Outputs start from random values, so an op that fails to overwrite one is caught.
    fn output(&mut self, name: &str, shape: &[usize], dtype: DType) -> usize {
        let i = self.tensor(name, shape, dtype, Fill::Normal(1.0));
        self.case.outputs.push(i);
        i
    }
}

fn check(gpu: &mut CudaBackend, case: &OpCase, what: &str) {
    assert_case_passes(gpu, case, 7, what)
}

/// (rows, C): none, one, odd C below and above the block width (the plain kernels), multiples
/// of 8 (the vectorised kernels: 1000 a block of 125 chunks on 128 threads, 1024, 1032 one
/// chunk past it), more rows than the backward's blocks over narrow rows, the 2.7B seed's width,
/// a training size, the widest vectorised row (8192: 1024 threads) and one vector past it (8200,
/// the plain kernels again).
const NORM_SHAPES: [(usize, usize); 13] = [
    (0, 64),
    (1, 1),
    (1, 300),
    (7, 13),
    (7, 515),
    (3, 1000),
    (5, 1024),
    (9, 1032),
    (2000, 64),
    (33, 2560),
    (1024, 768),
    (2, 8192),
    (3, 8200),
];

/// (activation dtype, weight-gradient dtype): all f32, and the mixed policy.
const PRECISIONS: [(DType, DType); 2] = [(F32, F32), (Bf16, F32)];

#[test]
fn layernorm_forward_matches_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for (n, c) in NORM_SHAPES {
        for (act, _) in PRECISIONS {
            for residual in [false, true] {
                for bias in [false, true] {
                    let ln = LayerNorm {
                        n,
                        c,
                        bias,
                        eps: 1e-5,
                        residual,
                        accumulate: false,
                    };
                    let mut b = Builder::new(Op::LayerNorm(ln));
                    b.input("a", &[n, c], act, Fill::Normal(1.0));
                    if residual {
                        b.input("b", &[n, c], act, Fill::Normal(0.5));
                    }
                    b.input("gamma", &[c], act, Fill::Normal(1.0));
                    if bias {
                        b.input("beta", &[c], act, Fill::Normal(0.1));
                    }
                    if residual {
                        b.output("sum", &[n, c], act);
                    }
                    b.output("y", &[n, c], act);
                    b.output("stats", &[n, 2], F32);
                    check(&mut gpu, &b.case, &format!("{ln:?} {act}"));
                }
            }
        }
    }
}

#[test]
fn layernorm_backward_matches_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for (n, c) in NORM_SHAPES {
        for (act, grad) in PRECISIONS {
            for accumulate in [false, true] {
                for bias in [false, true] {
                    let ln = LayerNorm {
                        n,
                        c,
                        bias,
                        eps: 1e-5,
                        residual: false,
                        accumulate,
                    };
                    // inputs [x, stats, γ, dy, dx (accumulated)?] → outputs [dx, dγ, dβ?]
                    let mut b = Builder::new(Op::LayerNormBackward(ln));
                    b.input("x", &[n, c], act, Fill::Normal(1.0));
                    b.input("stats", &[n, 2], F32, Fill::Normal(1.0));
                    b.input("gamma", &[c], act, Fill::Normal(1.0));
                    b.input("dy", &[n, c], act, Fill::Normal(1.0));
                    let dx = b.output("dx", &[n, c], act);
                    if accumulate {
                        // dx is read and added into: an input too (LayerNormBackwardIo.dx_in).
                        b.case.inputs.push(dx);
                    }
                    b.output("dgamma", &[c], grad);
                    if bias {
                        b.output("dbeta", &[c], grad);
                    }
                    check(&mut gpu, &b.case, &format!("{ln:?} {act}"));
                }
            }
        }
    }
}

#[test]
fn rmsnorm_forward_matches_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for (n, c) in NORM_SHAPES {
        for (act, _) in PRECISIONS {
            for residual in [false, true] {
                let rn = RmsNorm {
                    n,
                    c,
                    eps: 1e-6,
                    residual,
                    accumulate: false,
                };
                let mut b = Builder::new(Op::RmsNorm(rn));
                b.input("a", &[n, c], act, Fill::Normal(1.0));
                if residual {
                    b.input("b", &[n, c], act, Fill::Normal(0.5));
                }
                b.input("gamma", &[c], act, Fill::Normal(1.0));
                if residual {
                    b.output("sum", &[n, c], act);
                }
                b.output("y", &[n, c], act);
                b.output("stats", &[n, 1], F32);
                check(&mut gpu, &b.case, &format!("{rn:?} {act}"));
            }
        }
    }
}

#[test]
fn rmsnorm_backward_matches_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for (n, c) in NORM_SHAPES {
        for (act, grad) in PRECISIONS {
            for accumulate in [false, true] {
                let rn = RmsNorm {
                    n,
                    c,
                    eps: 1e-6,
                    residual: false,
                    accumulate,
                };
                let mut b = Builder::new(Op::RmsNormBackward(rn));
                b.input("x", &[n, c], act, Fill::Normal(1.0));
                b.input("stats", &[n, 1], F32, Fill::Normal(1.0));
                b.input("gamma", &[c], act, Fill::Normal(1.0));
                b.input("dy", &[n, c], act, Fill::Normal(1.0));
                let dx = b.output("dx", &[n, c], act);
                if accumulate {
                    b.case.inputs.push(dx);
                }
                b.output("dgamma", &[c], grad);
                check(&mut gpu, &b.case, &format!("{rn:?} {act}"));
            }
        }
    }
}

/// A norm over rows wider than shared memory holds the weight-gradient sums of (the kernel's
/// fallback to its global scratch), with bias so both halves are exercised.
#[test]
fn layernorm_backward_of_very_wide_rows_matches_cpu() {
    let Some(mut gpu) = gpu() else { return };
    let (n, c) = (5, 13_000);
    let ln = LayerNorm {
        n,
        c,
        bias: true,
        eps: 1e-5,
        residual: false,
        accumulate: true,
    };
    let mut b = Builder::new(Op::LayerNormBackward(ln));
    b.input("x", &[n, c], F32, Fill::Normal(1.0));
    b.input("stats", &[n, 2], F32, Fill::Normal(1.0));
    b.input("gamma", &[c], F32, Fill::Normal(1.0));
    b.input("dy", &[n, c], F32, Fill::Normal(1.0));
    let dx = b.output("dx", &[n, c], F32);
    b.case.inputs.push(dx); // accumulated into
    b.output("dgamma", &[c], F32);
    b.output("dbeta", &[c], F32);
    check(&mut gpu, &b.case, &format!("{ln:?}"));
}

/// (rows, V): none, one, odd rows with V of one, below and above the block width, either side
/// of the switch from a warp to a block per row (4096), odd rows of a V that is not a multiple
/// of the 8-element vectors (rows start unaligned), a training size, the seed's vocabulary, and
/// GPT-2's.
const CE_SHAPES: [(usize, usize); 11] = [
    (0, 10),
    (1, 1),
    (1, 300),
    (7, 13),
    (7, 515),
    (9, 4095),
    (3, 4096),
    (13, 10_001),
    (1024, 768),
    (256, 10_000),
    (64, 50_257),
];

#[test]
fn cross_entropy_forward_matches_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for (n, v) in CE_SHAPES {
        for act in [F32, Bf16] {
            let ce = CrossEntropy {
                n,
                v,
                grad_scale: 1.0,
            };
            let mut b = Builder::new(Op::CrossEntropy(ce));
            b.input("logits", &[n, v], act, Fill::Normal(2.0));
            b.input("targets", &[n], I32, Fill::Ids(v));
            b.output("losses", &[n], F32);
            check(&mut gpu, &b.case, &format!("{ce:?} {act}"));
        }
    }
}

#[test]
fn cross_entropy_backward_matches_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for (n, v) in CE_SHAPES {
        for act in [F32, Bf16, F16] {
            for (in_place, grad_scale) in [(false, 1.0), (true, 1.0), (false, 1024.0), (true, 3.0)]
            {
                // f16 storage is what loss scaling is for; it is run scaled only.
                if act == F16 && grad_scale == 1.0 {
                    continue;
                }
                let ce = CrossEntropy { n, v, grad_scale };
                let mut b = Builder::new(Op::CrossEntropyBackward(ce));
                let logits = b.input("logits", &[n, v], act, Fill::Normal(2.0));
                b.input("targets", &[n], I32, Fill::Ids(v));
                if in_place {
                    b.case.outputs.push(logits);
                } else {
                    b.output("dlogits", &[n, v], act);
                }
                check(
                    &mut gpu,
                    &b.case,
                    &format!("{ce:?} {act} in place {in_place}"),
                );
            }
        }
    }
}

/// A gradient norm over `shapes`, alternating f32 and bf16 when `mixed`.
fn grad_norm_case(shapes: &[&[usize]], mixed: bool) -> OpCase {
    let numel = shapes
        .iter()
        .map(|s| s.iter().product::<usize>() as u64)
        .sum();
    let mut b = Builder::new(Op::GradNorm(GradNorm { numel, shards: 1 }));
    for (i, shape) in shapes.iter().enumerate() {
        let dtype = if mixed && i % 2 == 1 { Bf16 } else { F32 };
        b.input(
            &format!("g{i}"),
            shape,
            dtype,
            Fill::Normal(0.01 * (i + 1) as f64),
        );
    }
    b.output("norm", &[1], F32);
    b.case
}

#[test]
fn grad_norm_matches_cpu() {
    let Some(mut gpu) = gpu() else { return };
    let cases: [&[&[usize]]; 6] = [
        &[],
        &[&[0]],
        &[&[1]],
        &[&[7], &[768, 3], &[0], &[13]],
        // The multi-tensor kernel's work items are 8192 elements: one past an item, a tensor
        // whose last item ends in a scalar tail, and odd sizes between them.
        &[&[8193], &[3, 4099], &[1], &[8192], &[5, 3]],
        // More tensors than one launch takes (eight), of training sizes.
        &[
            &[50_257, 768],
            &[1024, 768],
            &[768],
            &[768],
            &[2304, 768],
            &[2304],
            &[768, 768],
            &[768],
            &[3072, 768],
            &[3072],
            &[768, 3072],
            &[768],
        ],
    ];
    for shapes in cases {
        for mixed in [false, true] {
            check(
                &mut gpu,
                &grad_norm_case(shapes, mixed),
                &format!("grad_norm {shapes:?} mixed {mixed}"),
            );
        }
    }
}

/// AdamW over parameters of `shapes`: inputs [norm, θ…, g…, m…, v…] → outputs
/// [θ…, m…, v…, copies…]; θ, m and v are both read and written.
/// `grad_scale` is the loss scale S the gradients carry (the norm is the scaled gradients').
fn adamw_case(
    shapes: &[&[usize]],
    hyper: AdamWParams,
    grad_scale: f64,
    norm: f32,
    grads: DType,
    copies: Option<DType>,
) -> OpCase {
    let numel = shapes
        .iter()
        .map(|s| s.iter().product::<usize>() as u64)
        .sum();
    let mut b = Builder::new(Op::AdamW(AdamW {
        numel,
        hyper,
        grad_scale,
        shards: 1,
    }));
    b.input("norm", &[1], F32, Fill::Value(norm));
    let theta: Vec<usize> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.input(&format!("theta{i}"), s, F32, Fill::Normal(0.02)))
        .collect();
    for (i, s) in shapes.iter().enumerate() {
        b.input(&format!("g{i}"), s, grads, Fill::Normal(0.5 * grad_scale));
    }
    let m: Vec<usize> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.input(&format!("m{i}"), s, F32, Fill::Normal(0.01)))
        .collect();
    // The second moment is non-negative.
    let v: Vec<usize> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.input(&format!("v{i}"), s, F32, Fill::Value(1e-4)))
        .collect();
    for group in [&theta, &m, &v] {
        b.case.outputs.extend(group.iter().copied());
    }
    if let Some(dtype) = copies {
        for (i, s) in shapes.iter().enumerate() {
            b.output(&format!("copy{i}"), s, dtype);
        }
    }
    b.case
}

#[test]
fn adamw_matches_cpu() {
    let Some(mut gpu) = gpu() else { return };
    // Odd sizes, empty tensors, and sizes one past the kernel's 2048-element work items (a
    // vector body and a scalar tail in the same item); more items than the one wave of blocks
    // (4 × SMs) takes, so that blocks step through the table across tensors.
    let shapes: [&[usize]; 12] = [
        &[768, 3],
        &[7],
        &[1, 1],
        &[0],
        &[13, 0],
        &[1024, 768],
        &[8193],
        &[3, 4099],
        &[2049],
        &[5, 411],
        &[1000, 1024],
        &[8192],
    ];
    let base = AdamWParams::default();
    let hypers = [
        base,
        AdamWParams { step: 10, ..base },
        AdamWParams {
            max_grad_norm: None,
            weight_decay: 0.0,
            step: 3,
            ..base
        },
    ];
    for hyper in hypers {
        // Clipped (5 > 1), not clipped, and a zero norm.
        for norm in [5.0, 0.5, 0.0] {
            for (grads, copies) in [(F32, None), (F32, Some(Bf16)), (Bf16, Some(Bf16))] {
                let case = adamw_case(&shapes, hyper, 1.0, norm, grads, copies);
                check(
                    &mut gpu,
                    &case,
                    &format!("adamw {hyper:?} norm {norm} grads {grads} copies {copies:?}"),
                );
            }
        }
    }
}

#[test]
fn adamw_with_a_loss_scale_matches_cpu() {
    let Some(mut gpu) = gpu() else { return };
    let shapes: [&[usize]; 4] = [&[768, 3], &[7], &[0], &[1024, 768]];
    let base = AdamWParams::default();
    for hyper in [
        base,
        AdamWParams {
            max_grad_norm: None,
            step: 3,
            ..base
        },
    ] {
        for s in [1024.0, 3.0] {
            // Clipped (5 > 1 after unscaling), not clipped, and a zero norm: the gradients and
            // the norm are both S times what the update uses.
            for norm in [5.0, 0.5, 0.0] {
                for (grads, copies) in [(F32, Some(F16)), (F16, Some(F16)), (F32, None)] {
                    let case = adamw_case(&shapes, hyper, s, (norm * s) as f32, grads, copies);
                    check(
                        &mut gpu,
                        &case,
                        &format!(
                            "adamw S {s} {hyper:?} norm {norm} grads {grads} copies {copies:?}"
                        ),
                    );
                }
            }
        }
    }
}

/// A non-finite norm under loss scaling (an fp16 overflow) skips the step on the device: θ, m,
/// v and the copies keep their values bit for bit, as on the CPU.
#[test]
fn adamw_skips_a_step_with_a_non_finite_scaled_norm() {
    use tperf_core::backend::{Backend, OpCall};
    use tperf_core::ops::Phase;
    use tperf_core::tensor::Tensor;
    let Some(mut gpu) = gpu() else { return };
    let shapes: [&[usize]; 3] = [&[768, 3], &[7], &[1024, 768]];
    for norm in [f32::INFINITY, f32::NAN] {
        let case = adamw_case(
            &shapes,
            AdamWParams::default(),
            1024.0,
            norm,
            F16,
            Some(F16),
        );
        // The same outcome as the CPU's (which the test above relies on)…
        check(&mut gpu, &case, &format!("adamw skipped, norm {norm}"));
        // …and that outcome is no change at all.
        let mut rng = tperf_core::rng::Rng::new(11);
        let mut tensors: Vec<(Tensor, Vec<f32>)> = Vec::new();
        for (spec, fill) in &case.tensors {
            let n = spec.numel() as usize;
            let values = match *fill {
                Fill::Value(x) => vec![x; n],
                Fill::Normal(sd) => rng.normal_vec(n, sd),
                Fill::Ids(_) => unreachable!("AdamW has no id tensors"),
            };
            let t = gpu.alloc(spec.clone()).unwrap();
            gpu.write_f32(&t, &values).unwrap();
            // What the tensor holds after the round to its dtype.
            let stored = gpu.read_f32(&t).unwrap();
            tensors.push((t, stored));
        }
        gpu.exec(OpCall::from_lists(
            case.op.clone(),
            case.inputs.iter().map(|&i| tensors[i].0.clone()).collect(),
            case.outputs.iter().map(|&i| tensors[i].0.clone()).collect(),
            "adamw",
            None,
            Phase::Optimizer,
        ))
        .unwrap();
        for &i in &case.outputs {
            let after = gpu.read_f32(&tensors[i].0).unwrap();
            assert!(
                after
                    .iter()
                    .zip(&tensors[i].1)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "norm {norm}: {} changed",
                case.tensors[i].0.name
            );
        }
        for (t, _) in tensors {
            gpu.free(t);
        }
    }
}
