//! The matmul and elementwise kernels against the CPU backend on edge shapes (0, 1, odd, large)
//! and each storage dtype, through `conformance::run_case`. Tolerances: see `conformance`.
//! Needs a CUDA device; where there is none (CI) each test says it skipped.

use tperf_core::config::RopeScaling;
use tperf_core::dtype::DType;
use tperf_core::ops::activation::{Activation, ActivationKind};
use tperf_core::ops::cast::Cast;
use tperf_core::ops::embedding::{Embedding, PositionTable};
use tperf_core::ops::geglu::GeGlu;
use tperf_core::ops::kv_cache::KvAppend;
use tperf_core::ops::matmul::Matmul;
use tperf_core::ops::residual::ResidualAdd;
use tperf_core::ops::rope::Rope;
use tperf_core::ops::swiglu::SwiGlu;
use tperf_core::ops::take_last::TakeLast;
use tperf_core::ops::Op;
use tperf_cuda::conformance::{
    assert_case_passes, case_tensor as t, gpu_or_skip as gpu, Fill, OpCase,
};
use tperf_cuda::CudaBackend;

/// Inputs are drawn from this seed.
const SEED: u64 = 3;

fn check(gpu: &mut CudaBackend, case: OpCase, what: &str) {
    assert_case_passes(gpu, &case, SEED, what)
}

/// (m, k, n). One or two rows with K a multiple of 8 in 16 bits take the few-rows kernels
/// (ops/matmul.rs, `gemv_fits`): one row, N of one, two rows of K = 3072 into an odd N, and a
/// wide product (N = 8200) that keeps gemv_rows where the narrower ones take gemv_rows_split
/// (the block's warps splitting K; on a GPU of up to 256 SMs). Three to eight rows go to
/// cuBLASLt. Outputs whose rows are not 16-byte multiples (N = 17, 3, 2305 in f32, 1003) take the
/// padded product (`padded_stride`) when cuBLASLt computes them.
const SHAPES: [(usize, usize, usize); 15] = [
    (0, 8, 8),
    (1, 1, 1),
    (7, 5, 3),
    (33, 65, 17),
    (128, 96, 160),
    (512, 768, 1024),
    (1, 768, 2305),
    (2, 8, 1),
    (3, 64, 17),
    (5, 256, 3),
    (8, 3072, 64),
    (9, 64, 40),
    (40, 128, 1003),
    (2, 64, 8200),
    (2, 3072, 17),
];

#[test]
fn matmul_forward_and_backward_match_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for dt in [DType::F32, DType::Bf16, DType::F16] {
        for &(m, k, n) in &SHAPES {
            for (bias, activation, accumulate_dx) in [
                (false, None, false),
                (true, None, true),
                (true, Some(ActivationKind::Gelu), false),
                (false, Some(ActivationKind::Relu), false),
            ] {
                let mm = Matmul {
                    m,
                    k,
                    n,
                    bias,
                    activation,
                    accumulate_dx,
                };
                let what = format!("{dt} {mm:?}");
                let mut tensors = vec![
                    t("x", &[m, k], dt, Fill::Normal(1.0)),
                    t("w", &[n, k], dt, Fill::Normal(0.1)),
                    t("b", &[n], dt, Fill::Normal(0.1)),
                    t("pre", &[m, n], dt, Fill::Value(0.0)),
                    t("act", &[m, n], dt, Fill::Value(0.0)),
                ];
                let inputs = if bias { vec![0, 1, 2] } else { vec![0, 1] };
                let outputs = if activation.is_some() {
                    vec![3, 4]
                } else {
                    vec![3]
                };
                check(
                    &mut gpu,
                    OpCase {
                        op: Op::Matmul(mm),
                        tensors: tensors.clone(),
                        inputs,
                        outputs,
                    },
                    &what,
                );
                // Backward: [x, W, dy, (pre), (dx, accumulated)] → [dx, dW (f32), (db f32)].
                tensors.push(t("dy", &[m, n], dt, Fill::Normal(1.0)));
                tensors.push(t("dx", &[m, k], dt, Fill::Normal(1.0)));
                tensors.push(t("dw", &[n, k], DType::F32, Fill::Value(0.0)));
                tensors.push(t("db", &[n], DType::F32, Fill::Value(0.0)));
                let mut inputs = vec![0, 1, 5];
                if activation.is_some() {
                    inputs.push(3);
                }
                if accumulate_dx {
                    inputs.push(6);
                }
                let mut outputs = vec![6, 7];
                if bias {
                    outputs.push(8);
                }
                check(
                    &mut gpu,
                    OpCase {
                        op: Op::MatmulBackward(mm),
                        tensors,
                        inputs,
                        outputs,
                    },
                    &format!("backward {what}"),
                );
            }
        }
    }
}

#[test]
fn elementwise_ops_match_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for dt in [DType::F32, DType::Bf16] {
        for n in [0usize, 1, 7, 1000, 1 << 20] {
            for kind in [
                ActivationKind::Gelu,
                ActivationKind::Relu,
                ActivationKind::Silu,
            ] {
                let a = Activation { numel: n, kind };
                let ts = vec![
                    t("x", &[n], dt, Fill::Normal(2.0)),
                    t("dy", &[n], dt, Fill::Normal(1.0)),
                    t("y", &[n], dt, Fill::Value(0.0)),
                ];
                check(
                    &mut gpu,
                    OpCase {
                        op: Op::Activation(a),
                        tensors: ts.clone(),
                        inputs: vec![0],
                        outputs: vec![2],
                    },
                    &format!("{dt} {a:?}"),
                );
                check(
                    &mut gpu,
                    OpCase {
                        op: Op::ActivationBackward(a),
                        tensors: ts,
                        inputs: vec![0, 1],
                        outputs: vec![2],
                    },
                    &format!("{dt} backward {a:?}"),
                );
            }
            let r = ResidualAdd { numel: n };
            check(
                &mut gpu,
                OpCase {
                    op: Op::ResidualAdd(r),
                    tensors: vec![
                        t("a", &[n], dt, Fill::Normal(1.0)),
                        t("b", &[n], dt, Fill::Normal(1.0)),
                        t("y", &[n], dt, Fill::Value(0.0)),
                    ],
                    inputs: vec![0, 1],
                    outputs: vec![2],
                },
                &format!("{dt} residual {n}"),
            );
            check(
                &mut gpu,
                OpCase {
                    op: Op::Cast(Cast { numel: n as u64 }),
                    tensors: vec![
                        t("src", &[n], DType::F32, Fill::Normal(3.0)),
                        t("dst", &[n], dt, Fill::Value(0.0)),
                    ],
                    inputs: vec![0],
                    outputs: vec![1],
                },
                &format!("cast f32 → {dt} {n}"),
            );
        }
        // F not a multiple of 8 (odd, prime, a multiple of 4 only) and one row, beside a
        // training size; the vector path's tails: rows not a multiple of the kernels' 4
        // (forward) and 2 (backward) rows a thread, F one vector past a 256-thread block's
        // 2048 columns, and the 2.7B seed's F.
        for (rows, f) in [
            (0, 4),
            (1, 1),
            (7, 13),
            (3, 1001),
            (5, 2052),
            (3, 2056),
            (7, 10240),
            (512, 1376),
        ] {
            let s = SwiGlu { n: rows, f };
            let ts = vec![
                t("h", &[rows, 2 * f], dt, Fill::Normal(2.0)),
                t("dy", &[rows, f], dt, Fill::Normal(1.0)),
                t("y", &[rows, f], dt, Fill::Value(0.0)),
                t("dh", &[rows, 2 * f], dt, Fill::Value(0.0)),
            ];
            check(
                &mut gpu,
                OpCase {
                    op: Op::SwiGlu(s),
                    tensors: ts.clone(),
                    inputs: vec![0],
                    outputs: vec![2],
                },
                &format!("{dt} {s:?}"),
            );
            check(
                &mut gpu,
                OpCase {
                    op: Op::SwiGluBackward(s),
                    tensors: ts.clone(),
                    inputs: vec![0, 1],
                    outputs: vec![3],
                },
                &format!("{dt} backward {s:?}"),
            );
            let g = GeGlu { n: rows, f };
            let case = |op, inputs, outputs| OpCase {
                op,
                tensors: ts.clone(),
                inputs,
                outputs,
            };
            check(
                &mut gpu,
                case(Op::GeGlu(g), vec![0], vec![2]),
                &format!("{dt} {g:?}"),
            );
            let what = format!("{dt} backward {g:?}");
            check(
                &mut gpu,
                case(Op::GeGluBackward(g), vec![0, 1], vec![3]),
                &what,
            );
        }
    }
}

#[test]
fn rope_embedding_cache_and_take_last_match_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for dt in [DType::F32, DType::Bf16] {
        // Llama 3's bands at d = 64 keep, blend and divide some pairs each; linear divides all.
        let scalings = [
            RopeScaling::None,
            RopeScaling::Linear { factor: 4.0 },
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context: 256,
            },
        ];
        for ((b, tt, h_q, h_kv, d, pos), scaling) in [
            (1, 1, 1, 1, 2, 0),
            (2, 7, 4, 2, 12, 5),
            (3, 64, 8, 8, 64, 100),
        ]
        .into_iter()
        .flat_map(|s| scalings.map(|c| (s, c)))
        {
            let r = Rope {
                b,
                t: tt,
                h_q,
                h_kv,
                d,
                pos_offset: pos,
                per_row: false,
                theta: 10_000.0,
                scaling,
            };
            let w = (h_q + 2 * h_kv) * d;
            for op in [Op::Rope(r), Op::RopeBackward(r)] {
                check(
                    &mut gpu,
                    OpCase {
                        op,
                        tensors: vec![t("qkv", &[b * tt, w], dt, Fill::Normal(1.0))],
                        inputs: vec![0],
                        outputs: vec![0],
                    },
                    &format!("{dt} {r:?}"),
                );
            }
            let capacity = pos + tt + 3;
            let k = KvAppend {
                b,
                t_new: tt,
                h_kv,
                d,
                pos,
            };
            check(
                &mut gpu,
                OpCase {
                    op: Op::KvAppend(k),
                    tensors: vec![
                        t("qkv", &[b * tt, w], dt, Fill::Normal(1.0)),
                        t("k", &[b, h_kv, capacity, d], dt, Fill::Normal(1.0)),
                        t("v", &[b, h_kv, capacity, d], dt, Fill::Normal(1.0)),
                    ],
                    inputs: vec![0],
                    outputs: vec![1, 2],
                },
                &format!("{dt} {k:?}"),
            );
            let tl = TakeLast { b, t: tt, c: w };
            check(
                &mut gpu,
                OpCase {
                    op: Op::TakeLast(tl),
                    tensors: vec![
                        t("x", &[b * tt, w], dt, Fill::Normal(1.0)),
                        t("y", &[b, w], dt, Fill::Value(0.0)),
                    ],
                    inputs: vec![0],
                    outputs: vec![1],
                },
                &format!("{dt} {tl:?}"),
            );
        }
        for positions in [
            PositionTable::Learned,
            PositionTable::Sinusoidal,
            PositionTable::None,
        ] {
            for (n, c, vocab, tt) in [(1, 1, 1, 1), (14, 48, 61, 7), (2048, 768, 50257, 512)] {
                let e = Embedding {
                    n,
                    c,
                    vocab,
                    t: tt,
                    pos_offset: 0,
                    per_row: false,
                    positions,
                    scale: positions == PositionTable::Sinusoidal,
                    accumulate: false,
                };
                let ts = vec![
                    t("tokens", &[n], DType::I32, Fill::Ids(vocab)),
                    t("wte", &[vocab, c], dt, Fill::Normal(1.0)),
                    t("wpe", &[tt, c], dt, Fill::Normal(1.0)),
                    t("out", &[n, c], dt, Fill::Value(0.0)),
                    t("dout", &[n, c], dt, Fill::Normal(1.0)),
                    t("dwte", &[vocab, c], DType::F32, Fill::Normal(1.0)),
                    t("dwpe", &[tt, c], DType::F32, Fill::Normal(1.0)),
                ];
                let learned = positions == PositionTable::Learned;
                check(
                    &mut gpu,
                    OpCase {
                        op: Op::Embedding(e),
                        tensors: ts.clone(),
                        inputs: if learned { vec![0, 1, 2] } else { vec![0, 1] },
                        outputs: vec![3],
                    },
                    &format!("{dt} {e:?}"),
                );
                check(
                    &mut gpu,
                    OpCase {
                        op: Op::EmbeddingBackward(e),
                        tensors: ts,
                        inputs: vec![0, 4],
                        outputs: if learned { vec![5, 6] } else { vec![5] },
                    },
                    &format!("{dt} backward {e:?}"),
                );
            }
        }
    }
}

/// RoPE on shapes that take each path of the kernel: one row and one pair; head dims whose pair
/// count is odd (3, 5) and a multiple of 2 but not 8 (scalar path); 64 and 128 (8-element
/// vectors) with head counts that do not fill the last group of 4 (GQA: 5 + 1, 3 + 3), odd T,
/// a position near 10⁵ (the angle's reduction), and the seed's size; each contiguous and at
/// per-row positions (a ragged batch), forward and backward, in every storage dtype.
#[test]
fn rope_edge_shapes_and_per_row_positions_match_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for dt in [DType::F32, DType::Bf16, DType::F16] {
        for (b, tt, h_q, h_kv, d, pos) in [
            (1, 1, 1, 1, 2, 0),
            (1, 3, 3, 1, 6, 7),
            (2, 5, 2, 1, 10, 0),
            (1, 4, 2, 2, 12, 9),
            (3, 9, 5, 1, 64, 3),
            (1, 2, 3, 3, 128, 99_990),
            (4, 256, 12, 12, 64, 0),
            // The 2.7B seed's heads (640 jobs: 160 threads of 4), and more jobs than a block's
            // 256 threads × 4 take in one pass, vectorised (D 512) and not (D 126).
            (1, 8, 32, 32, 80, 5),
            (1, 2, 48, 24, 512, 5),
            (1, 2, 48, 24, 126, 0),
        ] {
            let w = (h_q + 2 * h_kv) * d;
            for per_row in [false, true] {
                let r = Rope {
                    b,
                    t: tt,
                    h_q,
                    h_kv,
                    d,
                    pos_offset: if per_row { 0 } else { pos },
                    per_row,
                    theta: 10_000.0,
                    // Llama 3's bands on the d = 64 shapes, so the per-row path is scaled too.
                    scaling: if d == 64 {
                        RopeScaling::Llama3 {
                            factor: 8.0,
                            low_freq_factor: 1.0,
                            high_freq_factor: 4.0,
                            original_context: 256,
                        }
                    } else {
                        RopeScaling::None
                    },
                };
                let mut tensors = vec![t("qkv", &[b * tt, w], dt, Fill::Normal(1.0))];
                let inputs = if per_row {
                    tensors.push(t("positions", &[b * tt], DType::I32, Fill::Ids(pos + 50)));
                    vec![1, 0]
                } else {
                    vec![0]
                };
                for op in [Op::Rope(r), Op::RopeBackward(r)] {
                    check(
                        &mut gpu,
                        OpCase {
                            op,
                            tensors: tensors.clone(),
                            inputs: inputs.clone(),
                            outputs: vec![0],
                        },
                        &format!("{dt} {r:?}"),
                    );
                }
            }
        }
    }
}

/// The embedding where the forward's 8-column vectors do not apply (C not a multiple of 8) and
/// where they do, wide rows (C 1032, 1100), a vocabulary of one (every token adds into the same
/// row), few rows of a large vocabulary (most of the table untouched), forward at per-row
/// positions, and the backward accumulating into a table that already holds a gradient.
#[test]
fn embedding_edge_shapes_match_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for dt in [DType::F32, DType::Bf16] {
        for positions in [PositionTable::Learned, PositionTable::None] {
            for (n, c, vocab, tt) in [
                (9, 20, 5, 3),
                (300, 16, 1, 100),
                (6, 1100, 7, 2),
                (5, 1032, 9, 5),
                (33, 768, 10_000, 11),
            ] {
                for (per_row, accumulate) in [(false, false), (false, true), (true, false)] {
                    let e = Embedding {
                        n,
                        c,
                        vocab,
                        t: tt,
                        pos_offset: if per_row { 0 } else { 2 },
                        per_row,
                        positions,
                        scale: accumulate,
                        accumulate,
                    };
                    let table = tt + 2;
                    let learned = positions == PositionTable::Learned;
                    let ts = vec![
                        t("tokens", &[n], DType::I32, Fill::Ids(vocab)),
                        t("wte", &[vocab, c], dt, Fill::Normal(1.0)),
                        t("wpe", &[table, c], dt, Fill::Normal(1.0)),
                        t("positions", &[n], DType::I32, Fill::Ids(table)),
                        t("out", &[n, c], dt, Fill::Value(0.0)),
                        t("dout", &[n, c], dt, Fill::Normal(1.0)),
                        t("dwte", &[vocab, c], DType::F32, Fill::Normal(1.0)),
                        t("dwpe", &[table, c], DType::F32, Fill::Normal(1.0)),
                    ];
                    let mut inputs = if learned { vec![0, 1, 2] } else { vec![0, 1] };
                    if per_row {
                        inputs.push(3);
                    }
                    check(
                        &mut gpu,
                        OpCase {
                            op: Op::Embedding(e),
                            tensors: ts.clone(),
                            inputs,
                            outputs: vec![4],
                        },
                        &format!("{dt} {e:?}"),
                    );
                    if per_row {
                        continue; // the backward takes contiguous positions only
                    }
                    check(
                        &mut gpu,
                        OpCase {
                            op: Op::EmbeddingBackward(e),
                            tensors: ts,
                            inputs: vec![0, 5],
                            outputs: if learned { vec![6, 7] } else { vec![6] },
                        },
                        &format!("{dt} backward {e:?}"),
                    );
                }
            }
        }
    }
}
