//! Attention kernels against the CPU backend on shapes the whole-model suite does not reach:
//! T = 1, odd and past a tile (7, 200), head sizes 16/64/128, MHA/GQA/MQA, a sliding window,
//! and decoding from a KV cache (Tq = 1 < Tk). Forward and backward, naive and flash, f32 and
//! bf16. Backward inputs are filled independently (o, lse, p need not come from a forward): the
//! kernels' arithmetic is what is compared, with lse = 0 and qkv small so exp stays finite.
//! Needs a CUDA device; where there is none (CI) each test says it skipped.

use tperf_core::dtype::DType;
use tperf_core::ops::attention::Attention;
use tperf_core::ops::Op;
use tperf_core::tensor::TensorSpec;
use tperf_cuda::conformance::{
    assert_case_passes, case_tensor as t, gpu_or_skip as gpu, Fill, OpCase,
};
use tperf_cuda::CudaBackend;

fn check(
    gpu: &mut CudaBackend,
    op: Op,
    tensors: Vec<(TensorSpec, Fill)>,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
) {
    let what = format!("{op:?}");
    let case = OpCase {
        op,
        tensors,
        inputs,
        outputs,
    };
    assert_case_passes(gpu, &case, 5, &what)
}

/// `a` (whole sequences, no cache) in 16 bits against the CPU: the flash forward when
/// `forward`, then the flash backward, on qkv, o, lse, dout and dqkv filled as the module docs
/// say.
fn check_flash_16(gpu: &mut CudaBackend, a: Attention, dt: DType, forward: bool) {
    let (b, h, h_kv, tt, d) = (a.b, a.h, a.h_kv, a.tq, a.d);
    let w = (h + 2 * h_kv) * d;
    let ts = vec![
        t("qkv", &[b * tt, w], dt, Fill::Normal(0.5)),   // 0
        t("o", &[b * tt, h * d], dt, Fill::Normal(1.0)), // 1
        t("lse", &[b, h, tt], DType::F32, Fill::Value(0.0)), // 2
        t("dout", &[b * tt, h * d], dt, Fill::Normal(1.0)), // 3
        t("dqkv", &[b * tt, w], dt, Fill::Normal(1.0)),  // 4
    ];
    if forward {
        check(gpu, Op::FlashAttention(a), ts.clone(), vec![0], vec![1, 2]);
    }
    check(
        gpu,
        Op::FlashAttentionBackward(a),
        ts,
        vec![0, 1, 3, 2],
        vec![4],
    );
}

/// (B, H, H_kv, T, D, window)
const SHAPES: [(usize, usize, usize, usize, usize, Option<usize>); 5] = [
    (1, 1, 1, 1, 16, None),
    (2, 4, 2, 7, 64, None),
    (1, 4, 1, 200, 128, Some(37)),
    (2, 4, 4, 64, 64, None),
    (1, 2, 2, 130, 16, Some(5)),
];

#[test]
fn attention_over_whole_sequences_matches_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for dt in [DType::F32, DType::Bf16] {
        for (b, h, h_kv, tt, d, window) in SHAPES {
            let a = Attention {
                b,
                h,
                h_kv,
                tq: tt,
                tk: tt,
                d,
                causal: true,
                window,
                kv_cache: false,
            };
            let w = (h + 2 * h_kv) * d;
            let ts = vec![
                t("qkv", &[b * tt, w], dt, Fill::Normal(0.5)),   // 0
                t("o", &[b * tt, h * d], dt, Fill::Normal(1.0)), // 1
                t("lse", &[b, h, tt], DType::F32, Fill::Value(0.0)), // 2
                t("dout", &[b * tt, h * d], dt, Fill::Normal(1.0)), // 3
                t("dqkv", &[b * tt, w], dt, Fill::Normal(1.0)),  // 4
                t("scores", &[b, h, tt, tt], dt, Fill::Normal(1.0)), // 5
                t("probs", &[b, h, tt, tt], dt, Fill::Value(0.0)), // 6
                t("dprobs", &[b, h, tt, tt], dt, Fill::Normal(1.0)), // 7
                t("dscores", &[b, h, tt, tt], dt, Fill::Normal(1.0)), // 8
            ];
            check(
                &mut gpu,
                Op::FlashAttention(a),
                ts.clone(),
                vec![0],
                vec![1, 2],
            );
            check(
                &mut gpu,
                Op::FlashAttentionBackward(a),
                ts.clone(),
                vec![0, 1, 3, 2],
                vec![4],
            );
            check(&mut gpu, Op::AttnScores(a), ts.clone(), vec![0], vec![5]);
            check(&mut gpu, Op::AttnSoftmax(a), ts.clone(), vec![5], vec![6]);
            // Probabilities from the softmax above are not at hand here; uniform rows serve.
            let mut ts_p = ts.clone();
            ts_p[6].1 = Fill::Value(1.0 / tt as f32);
            check(
                &mut gpu,
                Op::AttnValue(a),
                ts_p.clone(),
                vec![6, 0],
                vec![1],
            );
            check(
                &mut gpu,
                Op::AttnValueBackward(a),
                ts_p.clone(),
                vec![3, 0, 6],
                vec![7, 4],
            );
            check(
                &mut gpu,
                Op::AttnSoftmaxBackward(a),
                ts_p.clone(),
                vec![6, 7],
                vec![8],
            );
            check(
                &mut gpu,
                Op::AttnScoresBackward(a),
                ts_p,
                vec![8, 0],
                vec![4],
            );
        }
    }
}

#[test]
fn attention_reading_a_kv_cache_matches_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for dt in [DType::F32, DType::Bf16] {
        for (b, h, h_kv, d, tk, window) in [
            (1, 1, 1, 16, 1, None),
            (2, 4, 2, 64, 9, None),
            (1, 8, 1, 128, 300, Some(40)),
        ] {
            let capacity = tk + 7;
            let a = Attention {
                b,
                h,
                h_kv,
                tq: 1,
                tk,
                d,
                causal: true,
                window,
                kv_cache: true,
            };
            let w = (h + 2 * h_kv) * d;
            let ts = vec![
                t("qkv", &[b, w], dt, Fill::Normal(0.5)),               // 0
                t("k", &[b, h_kv, capacity, d], dt, Fill::Normal(0.5)), // 1
                t("v", &[b, h_kv, capacity, d], dt, Fill::Normal(1.0)), // 2
                t("o", &[b, h * d], dt, Fill::Value(0.0)),              // 3
                t("lse", &[b, h, 1], DType::F32, Fill::Value(0.0)),     // 4
                t("scores", &[b, h, 1, tk], dt, Fill::Value(0.0)),      // 5
                t("probs", &[b, h, 1, tk], dt, Fill::Value(1.0 / tk as f32)), // 6
            ];
            check(
                &mut gpu,
                Op::FlashAttention(a),
                ts.clone(),
                vec![0, 1, 2],
                vec![3, 4],
            );
            check(&mut gpu, Op::AttnScores(a), ts.clone(), vec![0, 1], vec![5]);
            check(&mut gpu, Op::AttnValue(a), ts, vec![6, 0, 2], vec![3]);
        }
    }
}

/// Flash-decoding (decode_attention.cu, Tq ≤ 4 through a KV cache) against the CPU: Tq 1 and 3
/// (rows past the kernel's 8 take the flash forward);
/// Tk around the 16-token block and the 128-key tile (1, 15, 16, 17, 383, 384, 1000); MHA, GQA,
/// MQA; d 64, 80, 128; f32, bf16, f16 storage with the conformance tolerances per dtype
/// (`conformance::tolerance`). Capacity past Tk, so the split grid has chunks with no live keys.
#[test]
fn decode_attention_matches_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for dt in [DType::F32, DType::Bf16, DType::F16] {
        for (h, h_kv) in [(4, 4), (8, 2), (6, 1)] {
            for d in [64, 80, 128] {
                for tq in [1, 3] {
                    for tk in [1, 15, 16, 17, 383, 384, 1000] {
                        if tq > tk {
                            continue;
                        }
                        let (b, capacity) = (2, tk + 130);
                        let a = Attention {
                            b,
                            h,
                            h_kv,
                            tq,
                            tk,
                            d,
                            causal: true,
                            window: None,
                            kv_cache: true,
                        };
                        let w = (h + 2 * h_kv) * d;
                        let ts = vec![
                            t("qkv", &[b, tq, w], dt, Fill::Normal(0.5)),
                            t("k", &[b, h_kv, capacity, d], dt, Fill::Normal(0.5)),
                            t("v", &[b, h_kv, capacity, d], dt, Fill::Normal(1.0)),
                            t("o", &[b, tq, h * d], dt, Fill::Value(0.0)),
                            t("lse", &[b, h, tq], DType::F32, Fill::Value(0.0)),
                        ];
                        check(
                            &mut gpu,
                            Op::FlashAttention(a),
                            ts,
                            vec![0, 1, 2],
                            vec![3, 4],
                        );
                    }
                }
            }
        }
    }
}

/// Flash-decoding with a sliding window (the window's edge inside a split and across one) and
/// without the causal mask, bf16 and f32, MHA and GQA, one and two queries.
#[test]
fn decode_attention_with_a_window_or_no_mask_matches_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for dt in [DType::F32, DType::Bf16] {
        for (h, h_kv) in [(4, 4), (8, 2)] {
            for tq in [1, 2] {
                for (causal, window) in [(true, Some(37)), (true, Some(200)), (false, None)] {
                    let (b, tk, d) = (3, 300, 64);
                    let capacity = tk + 40;
                    let a = Attention {
                        b,
                        h,
                        h_kv,
                        tq,
                        tk,
                        d,
                        causal,
                        window,
                        kv_cache: true,
                    };
                    let w = (h + 2 * h_kv) * d;
                    let ts = vec![
                        t("qkv", &[b, tq, w], dt, Fill::Normal(0.5)),
                        t("k", &[b, h_kv, capacity, d], dt, Fill::Normal(0.5)),
                        t("v", &[b, h_kv, capacity, d], dt, Fill::Normal(1.0)),
                        t("o", &[b, tq, h * d], dt, Fill::Value(0.0)),
                        t("lse", &[b, h, tq], DType::F32, Fill::Value(0.0)),
                    ];
                    check(
                        &mut gpu,
                        Op::FlashAttention(a),
                        ts,
                        vec![0, 1, 2],
                        vec![3, 4],
                    );
                }
            }
        }
    }
}

/// Flash attention in 16-bit storage, the tensor-core kernels' domain (flash_mma.cu: bf16 and
/// fp16, D = 64, 80 and 128) and one head size beside it (D = 48 takes the scalar fallback): every
/// edge of a 64- and a 128-row tile (T = 1, 17, 63, 64, 65, 128, 129, 130, 256, 257), causal and
/// not, MHA, GQA (H 8, H_kv 2), MQA (H_kv 1) and a sliding window. Forward O and lse, and the backward's dqkv
/// (dq, dk and dv: the whole buffer), against the CPU.
///
/// Tolerances (conformance.rs, max |gpu − cpu| / max |cpu| over each output, against the
/// CPU's f32 arithmetic on the same 16-bit inputs): bf16 1.6e-2, fp16 4e-3; lse is f32 but
/// computed from 16-bit inputs, so it is held to their dtype's tolerance. The kernels round P
/// (and the backward's dS) to the storage dtype before their products, one rounding of
/// 2⁻⁹ (bf16) or 2⁻¹¹ (fp16) relative per term, well inside both.
#[test]
fn flash_attention_in_16_bits_matches_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    // (H, H_kv, causal, window)
    let heads = [
        (8, 2, true, None),
        (4, 1, false, None),
        (2, 2, true, Some(40)),
        (2, 2, false, None),
    ];
    for dt in [DType::Bf16, DType::F16] {
        for d in [64, 128, 80, 48] {
            for tt in [1, 17, 63, 64, 65, 128, 129, 130, 256, 257] {
                for (h, h_kv, causal, window) in heads {
                    let b = 1 + usize::from(tt < 64);
                    let a = Attention {
                        b,
                        h,
                        h_kv,
                        tq: tt,
                        tk: tt,
                        d,
                        causal,
                        window,
                        kv_cache: false,
                    };
                    check_flash_16(&mut gpu, a, dt, true);
                }
            }
        }
    }
}

/// The 16-bit forward from a KV cache holding more keys than queries (Tq < Tk: query i at
/// position Tk − Tq + i), across the tensor-core kernels' tile edges, GQA and a window; the
/// same tolerances as above.
#[test]
fn flash_attention_in_16_bits_from_a_kv_cache_matches_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    for dt in [DType::Bf16, DType::F16] {
        for d in [64, 80, 128] {
            for (tq, tk, window) in [
                (1, 1, None),
                (17, 80, None),
                (65, 130, Some(50)),
                (64, 257, None),
                (129, 300, Some(100)),
            ] {
                let (b, h, h_kv) = (2, 4, 2);
                let capacity = tk + 8;
                let a = Attention {
                    b,
                    h,
                    h_kv,
                    tq,
                    tk,
                    d,
                    causal: true,
                    window,
                    kv_cache: true,
                };
                let w = (h + 2 * h_kv) * d;
                let ts = vec![
                    t("qkv", &[b * tq, w], dt, Fill::Normal(0.5)), // 0
                    t("k", &[b, h_kv, capacity, d], dt, Fill::Normal(0.5)), // 1
                    t("v", &[b, h_kv, capacity, d], dt, Fill::Normal(1.0)), // 2
                    t("o", &[b * tq, h * d], dt, Fill::Value(0.0)), // 3
                    t("lse", &[b, h, tq], DType::F32, Fill::Value(0.0)), // 4
                ];
                check(
                    &mut gpu,
                    Op::FlashAttention(a),
                    ts,
                    vec![0, 1, 2],
                    vec![3, 4],
                );
            }
        }
    }
}

/// The 16-bit flash forward and backward over many 128-key tiles: the warp-specialised Hopper
/// forward (the default there) keeps K and V in a ring of 2 (D = 128) or 3 (D = 64) stages
/// whose barriers change phase every lap, which the shapes above (at most 3 tiles) do not
/// reach. 1031 keys are 9 tiles, the last holding 7 keys; the window of 300 starts mid-tile
/// and skips whole tiles. The same tolerances as above.
#[test]
fn flash_attention_in_16_bits_over_many_key_tiles_matches_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    // (H, H_kv, causal, window)
    let heads = [
        (4, 2, true, None),
        (2, 1, false, None),
        (2, 2, true, Some(300)),
    ];
    for dt in [DType::Bf16, DType::F16] {
        for d in [64, 128] {
            for tt in [640, 1031] {
                for (h, h_kv, causal, window) in heads {
                    let b = 1;
                    let a = Attention {
                        b,
                        h,
                        h_kv,
                        tq: tt,
                        tk: tt,
                        d,
                        causal,
                        window,
                        kv_cache: false,
                    };
                    check_flash_16(&mut gpu, a, dt, true);
                }
            }
        }
    }
}

/// The 16-bit flash backward over many 64-row query tiles a block: the warp-specialised Hopper
/// backward (TPERF_FLASH_WGMMA_BWD=ws) streams each block's query tiles, over every head of
/// its KV group, through a ring of 2 (D = 128) or 3 (D = 64) stages whose barriers change phase
/// every lap, and double-buffers dSᵀ between its two consumer warpgroups. 1100 rows are 18
/// query tiles a head, the last holding 12 rows; GQA with 4 heads a group walks 72 tiles a
/// block; a window of 64 (one query tile) leaves each 128-key block three query tiles, the last
/// cut by the window, so the ring starts over often; without the causal mask every block sees
/// every tile. Run with
/// and without the variable (the default is the two-warpgroup backward); the same tolerances as
/// above.
#[test]
fn flash_attention_backward_in_16_bits_over_many_query_tiles_matches_the_cpu() {
    let Some(mut gpu) = gpu() else { return };
    // (H, H_kv, causal, window, T)
    let cases = [
        (8, 2, true, None, 1100),
        (2, 1, true, Some(64), 1100),
        (2, 2, false, None, 700),
    ];
    for dt in [DType::Bf16, DType::F16] {
        for d in [64, 128] {
            for (h, h_kv, causal, window, tt) in cases {
                let b = 1;
                let a = Attention {
                    b,
                    h,
                    h_kv,
                    tq: tt,
                    tk: tt,
                    d,
                    causal,
                    window,
                    kv_cache: false,
                };
                check_flash_16(&mut gpu, a, dt, false);
            }
        }
    }
}
