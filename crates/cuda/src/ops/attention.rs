//! Attention: the three ops of naive attention and their backwards (kernels/attention.cu, every
//! product one strided batched GEMM reading Q, K and V in place), and flash attention forward
//! and backward (kernels/flash_attention.cu; kernels/flash_mma.cu on tensor cores for bf16 and
//! fp16 at D = 64, 80 and 128, see `mma_variant`); for Tq ≤ 4 over a KV cache the flash forward is
//! flash-decoding (ops/decode.rs).
//!
//! Operands (the ops' `*Io` structs in tperf_core) and checks follow the CPU backend op for op:
//! - scores S from qkv (keys from the K cache when there is one); softmax P from S; value O
//!   from P and qkv (values from the V cache when there is one);
//! - value backward writes dP and overwrites the V part of dqkv (summed over the query heads of
//!   a group), leaving Q and K alone; softmax backward dS from P and dP; scores backward
//!   overwrites the Q and K parts of dqkv and leaves V alone;
//! - flash O and lse from qkv (and both caches, or neither); flash backward writes all of dqkv
//!   from qkv, O, dO and lse.
//!
//! Scores are stored unmasked (the mask lives in the softmax, which writes 0 where it masks),
//! as the CPU stores them. The backwards read keys and values from qkv only (Tq = Tk).

use super::aligned_16;
use super::decode::{decode_fits, Decode, DecodeKv};
use crate::alloc::Block;
use crate::backend::{unsupported, CudaBackend};
use crate::error::driver;
use crate::gpu::Arg;
use cudarc::driver::result as cu;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::attention::{
    Attention, AttnScoresBackwardIo, AttnScoresIo, AttnSoftmaxBackwardIo, AttnSoftmaxIo,
    AttnValueBackwardIo, AttnValueIo,
};
use tperf_core::ops::flash_attention::{FlashAttentionBackwardIo, FlashAttentionIo};
use tperf_core::tensor::Tensor;

const NAIVE: &str = "attention";
const FLASH: &str = "flash_attention";
pub(crate) const FLASH_MMA: &str = "flash_mma";
const FLASH_WGMMA: &str = "flash_wgmma";

/// Tile of attn_gemm's output (rows and columns); 256 threads a block.
const GEMM_TILE: u64 = 64;
const GEMM_THREADS: u32 = 256;
const FLASH_THREADS: u32 = 256;

/// One strided operand of attn_gemm: element (row, col) of matrix (batch, head, r) is at
/// `base + batch·sb + (head / hdiv)·sh + r·sr + row·s0 + col·s1`.
#[derive(Clone, Copy, Debug)]
struct Operand {
    buf: Arg,
    base: u64,
    sb: u64,
    sh: u64,
    hdiv: usize,
    sr: u64,
    s0: u64,
    s1: u64,
}

impl Operand {
    /// A row-major matrix per (batch, head), rows `s0` apart: element (row, col) of matrix
    /// (batch, head) at `base + batch·sb + head·sh + row·s0 + col`.
    fn rows(buf: Arg, base: u64, sb: u64, sh: u64, s0: u64) -> Operand {
        Operand {
            buf,
            base,
            sb,
            sh,
            hdiv: 1,
            sr: 0,
            s0,
            s1: 1,
        }
    }

    /// The same matrix transposed.
    fn t(self) -> Operand {
        Operand {
            s0: self.s1,
            s1: self.s0,
            ..self
        }
    }
}

/// C (M×N, per batch × nh heads) = alpha · Σ_{r<R} A_r (M×K) · B_r (K×N).
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    r: usize,
    batch: usize,
    nh: usize,
    alpha: f32,
}

impl Gemm {
    /// One product per (batch, query head): C (m×n) = alpha · A (m×k) · B (k×n).
    fn per_head(a: &Attention, m: usize, n: usize, k: usize, alpha: f32) -> Gemm {
        Gemm {
            m,
            n,
            k,
            r: 1,
            batch: a.b,
            nh: a.h,
            alpha,
        }
    }
}

/// Where keys or values are read.
#[derive(Clone, Copy, Debug)]
enum Kv<'a> {
    /// The K or V heads of the fused qkv buffer (then Tq = Tk).
    Qkv,
    /// A cache (B, H_kv, capacity, D).
    Cache { cache: &'a Tensor, capacity: usize },
}

/// The capacity of cache `t`, after checking that it covers the Tk positions attention reads
/// (the CPU backend's check).
fn cache_capacity(call: &OpCall, a: &Attention, t: &Tensor) -> Result<usize, BackendError> {
    match t.shape[..] {
        [b, h_kv, capacity, d] if b == a.b && h_kv == a.h_kv && d == a.d && capacity >= a.tk => {
            Ok(capacity)
        }
        _ => Err(unsupported(
            call,
            format!(
                "KV cache of shape {:?} does not hold {} positions of {a:?}",
                t.shape, a.tk
            ),
        )),
    }
}

/// Keys or values from the cache when the call passes one, else from qkv.
fn kv_source<'a>(
    call: &OpCall,
    a: &Attention,
    cache: Option<&'a Tensor>,
) -> Result<Kv<'a>, BackendError> {
    Ok(match cache {
        Some(cache) => Kv::Cache {
            cache,
            capacity: cache_capacity(call, a, cache)?,
        },
        None => Kv::Qkv,
    })
}

fn check_heads(call: &OpCall, a: &Attention) -> Result<(), BackendError> {
    if a.h_kv == 0 || !a.h.is_multiple_of(a.h_kv) {
        return Err(unsupported(
            call,
            format!("H = {} is not a multiple of H_kv = {}", a.h, a.h_kv),
        ));
    }
    Ok(())
}

/// Attention reading keys from qkv needs the queries and keys to be the same tokens.
fn check_local(call: &OpCall, a: &Attention, src: Kv<'_>) -> Result<(), BackendError> {
    if matches!(src, Kv::Qkv) && a.tq != a.tk {
        return Err(unsupported(
            call,
            format!("Tq = {} ≠ Tk = {} needs a KV cache", a.tq, a.tk),
        ));
    }
    check_heads(call, a)
}

/// The backwards' operands have no cache (their readers refuse one), so Tq = Tk is what is left
/// to check.
fn no_cache_in_backward(call: &OpCall, a: &Attention) -> Result<(), BackendError> {
    if a.tq != a.tk {
        return Err(unsupported(
            call,
            "attention backward through a KV cache (training reads qkv only)",
        ));
    }
    check_heads(call, a)
}

/// The kernels' window argument: −1 for none (a window wider than any sequence is none too).
fn window_arg(a: &Attention) -> i64 {
    match a.window {
        Some(w) => w.min(i32::MAX as usize) as i64,
        None => -1,
    }
}

fn scale(a: &Attention) -> f32 {
    a.scale() as f32
}

/// The flash kernels for one head-size bound (flash_attention.cu): tiles of BQ query rows and
/// BK keys, forward 64×64 up to D = 128 and 64×32 at 256; backward (BK, BQ) 64×64 at D ≤ 64,
/// 64×32 at 128, 32×32 at 256.
struct FlashVariant {
    fwd: &'static str,
    bwd: &'static str,
    fwd_shared: u32,
    bwd_shared: u32,
    fwd_bq: u64,
    bwd_bk: u64,
}

fn flash_variant(call: &OpCall, d: usize) -> Result<FlashVariant, BackendError> {
    // Shared floats: forward Q, K, V tiles (row stride DMAX + 1) and P (BQ × (BK + 1));
    // backward K, V, Q, dO tiles, P and dS (BK × (BQ + 1)), lse and Dᵢ (BQ each).
    let fwd =
        |dmax: u32, bq: u32, bk: u32| (bq * (dmax + 1) + 2 * bk * (dmax + 1) + bq * (bk + 1)) * 4;
    let bwd = |dmax: u32, bk: u32, bq: u32| {
        (2 * bk * (dmax + 1) + 2 * bq * (dmax + 1) + 2 * bk * (bq + 1) + 2 * bq) * 4
    };
    let v = |fwd_k, bwd_k, (dmax, bq, bk), (bbk, bbq)| FlashVariant {
        fwd: fwd_k,
        bwd: bwd_k,
        fwd_shared: fwd(dmax, bq, bk),
        bwd_shared: bwd(dmax, bbk, bbq),
        fwd_bq: bq as u64,
        bwd_bk: bbk as u64,
    };
    match d {
        1..=64 => Ok(v("flash_fwd_d64", "flash_bwd_d64", (64, 64, 64), (64, 64))),
        65..=128 => Ok(v(
            "flash_fwd_d128",
            "flash_bwd_d128",
            (128, 64, 64),
            (64, 32),
        )),
        129..=256 => Ok(v(
            "flash_fwd_d256",
            "flash_bwd_d256",
            (256, 64, 32),
            (32, 32),
        )),
        _ => Err(unsupported(
            call,
            format!("flash attention kernels take head sizes 1 to 256, not D = {d}"),
        )),
    }
}

/// The tensor-core kernels of flash_mma.cu for one (head size, dtype): the forward's query rows
/// a block (4 warps), the backward's query rows a tile (8 warps, 128 keys a block), and each
/// kernel's shared bytes; shared rows are D + 8 elements.
pub(crate) struct MmaVariant {
    fwd: &'static str,
    /// Query rows of a forward block (of the dense and the paged forward).
    pub(crate) fwd_bq: u64,
    pub(crate) fwd_shared: u32,
    /// The paged prefill forward (the dense forward's tile over the paged pools,
    /// ops/paged_attention.rs).
    pub(crate) paged: &'static str,
    bwd: &'static str,
    bwd_shared: u32,
}

pub(crate) const MMA_FWD_THREADS: u32 = 128;
const MMA_BWD_THREADS: u32 = 256;
/// Keys a backward block of the tensor-core kernels covers.
const MMA_BWD_BK: u64 = 128;

/// The tensor-core kernels run when every 16-bit operand shares one dtype, bf16 or fp16, D is
/// 64, 80 or 128, and every row the kernels load by 16-byte cp.async starts 16 bytes aligned: the
/// buffers' pointers and every element offset and stride a multiple of 8. Anything else (f32
/// storage, mixed precision, other head sizes, odd strides) takes the scalar kernels of
/// flash_attention.cu, which handle every case. `bufs` are the 16-bit operands; `strides` the
/// element offsets and strides rows are read at.
pub(crate) fn mma_variant(d: usize, bufs: &[Arg], strides: &[u64]) -> Option<MmaVariant> {
    const BF16: i32 = 1;
    const F16: i32 = 2;
    let dt = match bufs.first()? {
        Arg::Buf(_, dt) => *dt,
        _ => return None,
    };
    let same = bufs
        .iter()
        .all(|b| matches!(b, Arg::Buf(ptr, t) if *t == dt && aligned_16(*ptr)));
    if !same || strides.iter().any(|s| s % 8 != 0) {
        return None;
    }
    // Forward query tile: 128 rows at D = 64, 64 at 80 and 128; backward query tile: 64 rows
    // at D = 64 and 80, 32 at 128 (flash_mma.cu says why).
    let (fwd, paged, bwd, fq, bq) = match (d, dt) {
        (64, BF16) => (
            "flash_mma_fwd_d64_bf16",
            "paged_mma_fwd_d64_bf16",
            "flash_mma_bwd_d64_bf16",
            128,
            64,
        ),
        (64, F16) => (
            "flash_mma_fwd_d64_f16",
            "paged_mma_fwd_d64_f16",
            "flash_mma_bwd_d64_f16",
            128,
            64,
        ),
        (80, BF16) => (
            "flash_mma_fwd_d80_bf16",
            "paged_mma_fwd_d80_bf16",
            "flash_mma_bwd_d80_bf16",
            64,
            64,
        ),
        (80, F16) => (
            "flash_mma_fwd_d80_f16",
            "paged_mma_fwd_d80_f16",
            "flash_mma_bwd_d80_f16",
            64,
            64,
        ),
        (128, BF16) => (
            "flash_mma_fwd_d128_bf16",
            "paged_mma_fwd_d128_bf16",
            "flash_mma_bwd_d128_bf16",
            64,
            32,
        ),
        (128, F16) => (
            "flash_mma_fwd_d128_f16",
            "paged_mma_fwd_d128_f16",
            "flash_mma_bwd_d128_f16",
            64,
            32,
        ),
        _ => return None,
    };
    let row = (d as u32 + 8) * 2;
    let bk = MMA_BWD_BK as u32;
    Some(MmaVariant {
        fwd,
        fwd_bq: fq as u64,
        // Q tile and two buffers each of K and V tiles (64 rows), 2 bytes an element.
        fwd_shared: (fq + 4 * 64) * row,
        paged,
        bwd,
        // K and V tiles, two buffers each of Q and dO tiles (bq rows), dSᵀ (bk × (bq + 8)
        // elements), and two buffers each of lse and Dᵢ (bq f32).
        bwd_shared: (2 * bk + 4 * bq) * row + bk * (bq + 8) * 2 + 4 * bq * 4,
    })
}

/// The Hopper kernels of flash_wgmma.cu, where they apply: an sm_90 device, D = 64 or 128, and
/// the operands the tensor-core kernels take (`mma`, the variant mma_variant chose). The
/// forward: two warpgroups over 128 query rows, 128-key tiles; the backward: flash_mma.cu's grid
/// (128 keys a block, 256 threads), 64-row query tiles. The forward is warp-specialised (a
/// producer warpgroup and two ping-ponging consumers, 384 threads, the same 128-row query tiles:
/// 1.29× faster at D = 64 and 1.38× at 128, T = 16384, on the H200). TPERF_FLASH_WGMMA picks
/// for A/B measurements: `ws` or 1 (the default) both, `plain` both with the forward of two
/// warpgroups and no producer, 0 neither (flash_mma.cu's), `fwd` or `bwd` one of them. The
/// backward is the warp-specialised one (`ws_backward_kernel`, ws4 unless TPERF_FLASH_WGMMA_BWD
/// picks another; `wg` picks `wg_bwd`, two warpgroups).
struct Wgmma {
    /// (kernel, shared bytes, threads a block).
    fwd: Option<(&'static str, u32, u32)>,
    /// (kernel, shared bytes, threads a block).
    bwd: Option<(&'static str, u32, u32)>,
}

const WGMMA_FWD_THREADS: u32 = 256;
const WGMMA_WS_FWD_THREADS: u32 = 384;
const WGMMA_FWD_BQ: u64 = 128;

/// K/V ring stages of the warp-specialised forward (`ws_fwd<D, BF, S>` in flash_wgmma.cu): 3 at
/// D = 64, 2 at 128, unless TPERF_FLASH_WS_STAGES names another depth that D has a kernel for
/// (2–4 at 64, 2–3 at 128; for measurements), and the kernel's name.
fn ws_kernel(d: u64, bf16: bool) -> (&'static str, u64) {
    static STAGES: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let asked = *STAGES.get_or_init(|| {
        let v = std::env::var("TPERF_FLASH_WS_STAGES").ok()?;
        let n = v.parse().ok();
        if n.is_none() {
            eprintln!("warning: TPERF_FLASH_WS_STAGES={v:?} is not a number; using the default");
        }
        n
    });
    let names: &[(u64, &'static str, &'static str)] = if d == 64 {
        &[
            (
                3,
                "flash_wgmma_ws_fwd_d64_bf16",
                "flash_wgmma_ws_fwd_d64_f16",
            ),
            (
                2,
                "flash_wgmma_ws_fwd_d64_s2_bf16",
                "flash_wgmma_ws_fwd_d64_s2_f16",
            ),
            (
                4,
                "flash_wgmma_ws_fwd_d64_s4_bf16",
                "flash_wgmma_ws_fwd_d64_s4_f16",
            ),
        ]
    } else {
        &[
            (
                2,
                "flash_wgmma_ws_fwd_d128_bf16",
                "flash_wgmma_ws_fwd_d128_f16",
            ),
            (
                3,
                "flash_wgmma_ws_fwd_d128_s3_bf16",
                "flash_wgmma_ws_fwd_d128_s3_f16",
            ),
        ]
    };
    // The first entry is the default.
    let (st, b, f) = names
        .iter()
        .find(|(st, ..)| Some(*st) == asked)
        .unwrap_or(&names[0]);
    (if bf16 { b } else { f }, *st)
}

/// The warp-specialised backward (`ws_bwd<D, BF, S, LEAN, DEFER>` in flash_wgmma.cu: a producer
/// warpgroup streaming Q, dO, lse and Dᵢ tiles into a ring of S stages, two consumer
/// warpgroups; 384 threads, the grid of the other backward), where TPERF_FLASH_WGMMA_BWD asks
/// for it: `ws` takes the default stages (3 at D = 64, 2 at 128), `ws2` and `ws3` name the depth
/// (for measurements), `ws4` the default stages with the lean per-tile loop (`wsb_pds`: the
/// masks compiled only into the tiles that need them) and every consumer thread releasing a
/// stage, `ws5` ws4 with each tile's dV, dK deferred under the next tile's Pᵀ, dSᵀ (D = 64; at
/// D = 128 it takes ws4's kernels, as the registers do not allow it there). Unset, ws4 is the
/// default: on the H200 (bench-results/2026-12-03-h200-session12) the backward at B1 H16
/// T16384 went 5.04 → 4.22 ms at D = 64 and 8.97 → 7.00 at 128 against `wg_bwd`, its tests
/// pass and racecheck finds no hazard on the many-query-tile test. `wg` keeps `wg_bwd`.
/// Returns the kernel and its stages.
fn ws_backward_kernel(d: u64, bf16: bool) -> Option<(&'static str, u64)> {
    static CHOICE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    // Some(0) is the default depth, Some(4) and Some(5) ws4 and ws5 (at the default depth).
    let choice = *CHOICE.get_or_init(|| match std::env::var("TPERF_FLASH_WGMMA_BWD") {
        Err(_) => Some(4),
        Ok(v) => match v.as_str() {
            "" | "ws4" => Some(4),
            "wg" => None,
            "ws" => Some(0),
            "ws2" => Some(2),
            "ws3" => Some(3),
            "ws5" => Some(5),
            _ => {
                eprintln!(
                    "warning: TPERF_FLASH_WGMMA_BWD={v:?} is none of wg, ws, ws2, ws3, ws4, ws5; \
                     using ws4"
                );
                Some(4)
            }
        },
    });
    let asked = choice?;
    if asked == 4 || asked == 5 {
        let (st, b, f) = if d == 64 && asked == 5 {
            (
                3,
                "flash_wgmma_ws5_bwd_d64_bf16",
                "flash_wgmma_ws5_bwd_d64_f16",
            )
        } else if d == 64 {
            (
                3,
                "flash_wgmma_ws4_bwd_d64_bf16",
                "flash_wgmma_ws4_bwd_d64_f16",
            )
        } else {
            (
                2,
                "flash_wgmma_ws4_bwd_d128_bf16",
                "flash_wgmma_ws4_bwd_d128_f16",
            )
        };
        return Some((if bf16 { b } else { f }, st));
    }
    // (stages, bf16 kernel, f16 kernel); the first entry is the default.
    let names: [(u64, &'static str, &'static str); 2] = if d == 64 {
        [
            (
                3,
                "flash_wgmma_ws_bwd_d64_bf16",
                "flash_wgmma_ws_bwd_d64_f16",
            ),
            (
                2,
                "flash_wgmma_ws_bwd_d64_s2_bf16",
                "flash_wgmma_ws_bwd_d64_s2_f16",
            ),
        ]
    } else {
        [
            (
                2,
                "flash_wgmma_ws_bwd_d128_bf16",
                "flash_wgmma_ws_bwd_d128_f16",
            ),
            (
                3,
                "flash_wgmma_ws_bwd_d128_s3_bf16",
                "flash_wgmma_ws_bwd_d128_s3_f16",
            ),
        ]
    };
    let (st, b, f) = names
        .iter()
        .find(|(st, ..)| *st == asked)
        .unwrap_or(&names[0]);
    Some((if bf16 { b } else { f }, *st))
}

const WGMMA_WS_BWD_THREADS: u32 = 384;

fn wgmma_variant(cc: (i32, i32), d: usize, mma: &MmaVariant) -> Wgmma {
    static CHOICE: std::sync::OnceLock<(bool, bool, bool)> = std::sync::OnceLock::new();
    // (forward on wgmma, backward on wgmma, the forward warp-specialised)
    let (fwd_on, bwd_on, ws) = *CHOICE.get_or_init(|| match std::env::var("TPERF_FLASH_WGMMA") {
        Err(_) => (true, true, true),
        Ok(v) => match v.as_str() {
            "1" | "ws" => (true, true, true),
            "plain" => (true, true, false),
            "0" => (false, false, false),
            "fwd" => (true, false, true),
            "bwd" => (false, true, false),
            _ => {
                eprintln!(
                    "warning: TPERF_FLASH_WGMMA={v:?} is none of ws, 1, plain, 0, fwd, bwd; using ws"
                );
                (true, true, true)
            }
        },
    });
    let none = Wgmma {
        fwd: None,
        bwd: None,
    };
    if cc != (9, 0) || !(d == 64 || d == 128) {
        return none;
    }
    let dt = if mma.fwd.ends_with("bf16") {
        "bf16"
    } else {
        "f16"
    };
    let name = |pass: &str| -> &'static str {
        match (pass, d, dt) {
            ("fwd", 64, "bf16") => "flash_wgmma_fwd_d64_bf16",
            ("fwd", 64, _) => "flash_wgmma_fwd_d64_f16",
            ("fwd", _, "bf16") => "flash_wgmma_fwd_d128_bf16",
            ("fwd", _, _) => "flash_wgmma_fwd_d128_f16",
            (_, 64, "bf16") => "flash_wgmma_bwd_d64_bf16",
            (_, 64, _) => "flash_wgmma_bwd_d64_f16",
            (_, _, "bf16") => "flash_wgmma_bwd_d128_bf16",
            _ => "flash_wgmma_bwd_d128_f16",
        }
    };
    let d = d as u64;
    // Tiles are unpadded (swizzled), 2 bytes an element, plus 1 KB to align the first to 1024
    // bytes. Forward: the Q tile (128 rows) and two buffers each of K and V tiles (128 rows).
    let fwd_shared = ((WGMMA_FWD_BQ + 4 * 128) * d * 2 + 1024) as u32;
    // Warp-specialised: the Q tile, `st` stages each of K and V, and the barriers (Q's and
    // four per stage, 8 bytes each).
    let (ws_name, st) = ws_kernel(d, dt == "bf16");
    let ws_shared = ((WGMMA_FWD_BQ + 2 * st * 128) * d * 2 + 1024 + 8 * (1 + 4 * st)) as u32;
    // Backward: K and V (128 rows), two buffers each of Q and dO (64 rows), dSᵀ (128 × 64), two
    // buffers each of lse and Dᵢ (64 f32).
    let bwd_shared = ((2 * 128 + 4 * 64) * d * 2 + 128 * 64 * 2 + 4 * 64 * 4 + 1024) as u32;
    // Warp-specialised: K and V, `st` stages each of Q and dO (64 rows), two dSᵀ buffers, `st`
    // stages each of lse and Dᵢ, and the barriers (K/V's, and full and empty per stage).
    let ws_bwd = ws_backward_kernel(d, dt == "bf16").map(|(name, st)| {
        let shared = (2 * 128 + 2 * st * 64) * d * 2 + 2 * 128 * 64 * 2 + 2 * st * 64 * 4;
        (name, (shared + 8 * (1 + 2 * st) + 1024) as u32)
    });
    Wgmma {
        fwd: fwd_on.then(|| match ws {
            true => (ws_name, ws_shared, WGMMA_WS_FWD_THREADS),
            false => (name("fwd"), fwd_shared, WGMMA_FWD_THREADS),
        }),
        bwd: bwd_on.then(|| match ws_bwd {
            Some((name, shared)) => (name, shared, WGMMA_WS_BWD_THREADS),
            None => (name("bwd"), bwd_shared, MMA_BWD_THREADS),
        }),
    }
}

/// Where the flash backward's f32 dQ scratch starts, in floats after Dᵢ's `rows`: rounded up
/// to 64 so that dQ rows keep the block's alignment (the tensor-core kernels add 16-byte
/// vectors).
fn dq_offset(rows: u64) -> u64 {
    rows.next_multiple_of(64)
}

/// The kernel of a flash forward, or the dK/dV/dQ kernel of a flash backward: scalar
/// (flash_attention.cu) or tensor-core (flash_mma.cu, flash_wgmma.cu); the kernels of one
/// direction all take the same arguments.
struct FlashKernel {
    source: &'static str,
    name: &'static str,
    threads: u32,
    shared: u32,
}

impl FlashKernel {
    /// Kernel `name` of `source` with its dynamic shared bytes and threads, in the order
    /// `wgmma_variant` gives them.
    fn new(source: &'static str, (name, shared, threads): (&'static str, u32, u32)) -> Self {
        FlashKernel {
            source,
            name,
            threads,
            shared,
        }
    }
}

/// Queries per sequence up to which flash-decoding (ops/decode.rs) replaces the flash forward
/// over a KV cache (a decode step, a few speculative tokens).
const DECODE_MAX_TQ: usize = 4;

fn nothing_to_do(a: &Attention) -> bool {
    a.b == 0 || a.h == 0 || a.tq == 0 || a.tk == 0
}

/// An error naming the op unless the launch's grid and the kernel's int dimensions `fit`.
fn one_launch(call: &OpCall, fit: bool) -> Result<(), BackendError> {
    if fit {
        Ok(())
    } else {
        Err(unsupported(
            call,
            "attention shape too large for one launch",
        ))
    }
}

impl CudaBackend {
    /// Keys (`value` false) or values of `src` as a (Tk × D) operand per (batch, query head):
    /// row j, column e. `qkv` is the fused buffer's argument.
    fn kv_operand(
        &self,
        call: &OpCall,
        a: &Attention,
        src: Kv<'_>,
        value: bool,
        qkv: Arg,
    ) -> Result<Operand, BackendError> {
        let (d, w) = (a.d as u64, a.qkv_width() as u64);
        let per_kv_head = match src {
            Kv::Qkv => {
                let base = (a.h + usize::from(value) * a.h_kv) as u64 * d;
                Operand::rows(qkv, base, a.tk as u64 * w, d, w)
            }
            Kv::Cache { cache, capacity } => {
                let cap = capacity as u64;
                let buf = self.arg(call, cache, (a.b * a.h_kv) as u64 * cap * d)?;
                Operand::rows(buf, 0, a.h_kv as u64 * cap * d, cap * d, d)
            }
        };
        // Query head h reads KV head h / group.
        Ok(Operand {
            hdiv: a.h / a.h_kv,
            ..per_kv_head
        })
    }

    fn attn_gemm(
        &mut self,
        call: &OpCall,
        g: &Gemm,
        a: Operand,
        b: Operand,
        c: Operand,
    ) -> Result<(), BackendError> {
        if g.m == 0 || g.n == 0 || g.batch == 0 || g.nh == 0 {
            return Ok(());
        }
        let blocks = (g.m as u64).div_ceil(GEMM_TILE)
            * (g.n as u64).div_ceil(GEMM_TILE)
            * (g.batch * g.nh) as u64;
        let dims_fit = [g.m, g.n, g.k, g.r, g.nh, a.hdiv, b.hdiv]
            .iter()
            .all(|&x| x <= i32::MAX as usize);
        one_launch(call, blocks <= i32::MAX as u64 && dims_fit)?;
        let i = |x: u64| Arg::I64(x as i64);
        let args = [
            a.buf,
            i(a.base),
            i(a.sb),
            i(a.sh),
            Arg::I32(a.hdiv as i32),
            i(a.sr),
            i(a.s0),
            i(a.s1),
            b.buf,
            i(b.base),
            i(b.sb),
            i(b.sh),
            Arg::I32(b.hdiv as i32),
            i(b.sr),
            i(b.s0),
            i(b.s1),
            c.buf,
            i(c.base),
            i(c.sb),
            i(c.sh),
            i(c.s0),
            i(c.s1),
            Arg::I32(g.m as i32),
            Arg::I32(g.n as i32),
            Arg::I32(g.k as i32),
            Arg::I32(g.r as i32),
            Arg::I32(g.nh as i32),
            Arg::F32(g.alpha),
        ];
        self.launch(
            call,
            NAIVE,
            "attn_gemm",
            (blocks as u32, 1, 1),
            (GEMM_THREADS, 1, 1),
            0,
            &args,
        )
    }

    /// Q of query head h as a (Tq × D) operand (row i, column e) in qkv.
    fn q_operand(a: &Attention, qkv: Arg) -> Operand {
        Self::qkv_heads(a, qkv, 0, a.tq)
    }

    /// A (B, H, Tq, Tk) buffer as a (Tq × Tk) operand per (batch, head).
    fn score_operand(a: &Attention, buf: Arg) -> Operand {
        let (tq, tk) = (a.tq as u64, a.tk as u64);
        Operand::rows(buf, 0, a.h as u64 * tq * tk, tq * tk, tk)
    }

    /// A (B·Tq, H·D) buffer (the attention output or its gradient) as a (Tq × D) operand per
    /// (batch, head).
    fn o_operand(a: &Attention, buf: Arg) -> Operand {
        let hd = (a.h * a.d) as u64;
        Operand::rows(buf, 0, a.tq as u64 * hd, a.d as u64, hd)
    }

    /// The transpose of a score-shaped operand, per (batch, kv head g) and summed over the
    /// group's query heads h = g·group + r: (Tk × Tq).
    fn score_t_group(a: &Attention, buf: Arg) -> Operand {
        let (tq, tk, group) = (a.tq as u64, a.tk as u64, (a.h / a.h_kv) as u64);
        Operand {
            sr: tq * tk,
            ..Operand::rows(buf, 0, a.h as u64 * tq * tk, group * tq * tk, tk).t()
        }
    }

    /// The heads from `head0` on of a qkv-shaped buffer (qkv or dqkv, T rows per batch), a
    /// (T × D) matrix per (batch, head): Q's heads start at 0, K's at H and V's at H + H_kv.
    fn qkv_heads(a: &Attention, buf: Arg, head0: usize, t: usize) -> Operand {
        let (d, w) = (a.d as u64, a.qkv_width() as u64);
        Operand::rows(buf, head0 as u64 * d, t as u64 * w, d, w)
    }

    /// The GQA reduction onto a KV head: for each (batch, KV head g),
    /// `dst_g` (Tk × D) = alpha · Σ_{h in group g} S_hᵀ (Tk × Tq) · Y_h (Tq × D), the group's
    /// query heads h = g·group + r summed in one GEMM. `s` is score-shaped (B, H, Tq, Tk); `y`
    /// a per-query-head (Tq × D) operand whose heads are D apart (dO, or Q in qkv).
    fn grouped_gemm(
        &mut self,
        call: &OpCall,
        a: &Attention,
        s: Arg,
        y: Operand,
        dst: Operand,
        alpha: f32,
    ) -> Result<(), BackendError> {
        let group = a.h / a.h_kv;
        let d = a.d as u64;
        let y_group = Operand {
            sh: group as u64 * d,
            sr: d,
            ..y
        };
        let g = Gemm {
            m: a.tk,
            n: a.d,
            k: a.tq,
            r: group,
            batch: a.b,
            nh: a.h_kv,
            alpha,
        };
        self.attn_gemm(call, &g, Self::score_t_group(a, s), y_group, dst)
    }

    pub(crate) fn attn_scores(&mut self, call: &OpCall, a: &Attention) -> Result<(), BackendError> {
        let io: AttnScoresIo = call.operands(a)?;
        let src = kv_source(call, a, io.k_cache.as_ref())?;
        check_local(call, a, src)?;
        let qkv = self.arg(call, &io.qkv, (a.b * a.tq * a.qkv_width()) as u64)?;
        let s = self.arg(call, &io.scores, a.score_numel())?;
        if nothing_to_do(a) {
            return Ok(());
        }
        // S (Tq × Tk) = Q (Tq × D) · Kᵀ (D × Tk) / √D
        let kt = self.kv_operand(call, a, src, false, qkv)?.t();
        let g = Gemm::per_head(a, a.tq, a.tk, a.d, scale(a));
        self.attn_gemm(
            call,
            &g,
            Self::q_operand(a, qkv),
            kt,
            Self::score_operand(a, s),
        )
    }

    /// A row-wise kernel over the (B·H·Tq) score rows, one block of ROW_THREADS per row.
    fn launch_score_rows(
        &mut self,
        call: &OpCall,
        a: &Attention,
        kernel: &'static str,
        args: &[Arg],
    ) -> Result<(), BackendError> {
        if nothing_to_do(a) {
            return Ok(());
        }
        let rows = (a.b * a.h * a.tq) as u64;
        one_launch(call, rows <= i32::MAX as u64 && a.tk <= i32::MAX as usize)?;
        let block = (super::ROW_THREADS, 1, 1);
        self.launch(call, NAIVE, kernel, super::grid_1d(rows), block, 0, args)
    }

    pub(crate) fn attn_softmax(
        &mut self,
        call: &OpCall,
        a: &Attention,
    ) -> Result<(), BackendError> {
        let io: AttnSoftmaxIo = call.operands(a)?;
        let n = a.score_numel();
        let args = [
            self.arg(call, &io.scores, n)?,
            self.arg(call, &io.probs, n)?,
            Arg::I32(a.tq as i32),
            Arg::I32(a.tk as i32),
            Arg::I32(i32::from(a.causal)),
            Arg::I64(window_arg(a)),
        ];
        self.launch_score_rows(call, a, "attn_softmax", &args)
    }

    pub(crate) fn attn_value(&mut self, call: &OpCall, a: &Attention) -> Result<(), BackendError> {
        let io: AttnValueIo = call.operands(a)?;
        let src = kv_source(call, a, io.v_cache.as_ref())?;
        check_local(call, a, src)?;
        let p = self.arg(call, &io.probs, a.score_numel())?;
        // With a cache, qkv is passed but not read.
        let qkv_numel = match src {
            Kv::Qkv => (a.b * a.tk * a.qkv_width()) as u64,
            Kv::Cache { .. } => 0,
        };
        let qkv = self.arg(call, &io.qkv, qkv_numel)?;
        let o = self.arg(call, &io.out, a.q_numel())?;
        if nothing_to_do(a) {
            return Ok(());
        }
        // O (Tq × D) = P (Tq × Tk) · V (Tk × D)
        let v = self.kv_operand(call, a, src, true, qkv)?;
        let g = Gemm::per_head(a, a.tq, a.d, a.tk, 1.0);
        self.attn_gemm(
            call,
            &g,
            Self::score_operand(a, p),
            v,
            Self::o_operand(a, o),
        )
    }

    pub(crate) fn attn_value_backward(
        &mut self,
        call: &OpCall,
        a: &Attention,
    ) -> Result<(), BackendError> {
        let io: AttnValueBackwardIo = call.operands(a)?;
        no_cache_in_backward(call, a)?;
        let qkv_numel = (a.b * a.tk * a.qkv_width()) as u64;
        let dout = self.arg(call, &io.dout, a.q_numel())?;
        let qkv = self.arg(call, &io.qkv, qkv_numel)?;
        let p = self.arg(call, &io.probs, a.score_numel())?;
        let dp = self.arg(call, &io.dprobs, a.score_numel())?;
        let dqkv = self.arg(call, &io.dqkv, qkv_numel)?;
        if nothing_to_do(a) {
            return Ok(());
        }
        // dP (Tq × Tk) = dO (Tq × D) · Vᵀ (D × Tk)
        let vt = self.kv_operand(call, a, Kv::Qkv, true, qkv)?.t();
        let g = Gemm::per_head(a, a.tq, a.tk, a.d, 1.0);
        self.attn_gemm(
            call,
            &g,
            Self::o_operand(a, dout),
            vt,
            Self::score_operand(a, dp),
        )?;
        // dV_g = Σ_{h in group g} P_hᵀ · dO_h
        let dv = Self::qkv_heads(a, dqkv, a.h + a.h_kv, a.tk);
        self.grouped_gemm(call, a, p, Self::o_operand(a, dout), dv, 1.0)
    }

    pub(crate) fn attn_softmax_backward(
        &mut self,
        call: &OpCall,
        a: &Attention,
    ) -> Result<(), BackendError> {
        let io: AttnSoftmaxBackwardIo = call.operands(a)?;
        let n = a.score_numel();
        let args = [
            self.arg(call, &io.probs, n)?,
            self.arg(call, &io.dprobs, n)?,
            self.arg(call, &io.dscores, n)?,
            Arg::I32(a.tk as i32),
        ];
        self.launch_score_rows(call, a, "attn_softmax_backward", &args)
    }

    pub(crate) fn attn_scores_backward(
        &mut self,
        call: &OpCall,
        a: &Attention,
    ) -> Result<(), BackendError> {
        let io: AttnScoresBackwardIo = call.operands(a)?;
        no_cache_in_backward(call, a)?;
        let qkv_numel = (a.b * a.tk * a.qkv_width()) as u64;
        let ds = self.arg(call, &io.dscores, a.score_numel())?;
        let qkv = self.arg(call, &io.qkv, qkv_numel)?;
        let dqkv = self.arg(call, &io.dqkv, qkv_numel)?;
        if nothing_to_do(a) {
            return Ok(());
        }
        // dQ_h (Tq × D) = dS_h (Tq × Tk) · K_g (Tk × D) / √D
        let k = self.kv_operand(call, a, Kv::Qkv, false, qkv)?;
        let g = Gemm::per_head(a, a.tq, a.d, a.tk, scale(a));
        let dq = Self::qkv_heads(a, dqkv, 0, a.tq);
        self.attn_gemm(call, &g, Self::score_operand(a, ds), k, dq)?;
        // dK_g = Σ_{h in group g} dS_hᵀ · Q_h / √D
        let dk = Self::qkv_heads(a, dqkv, a.h, a.tk);
        self.grouped_gemm(call, a, ds, Self::q_operand(a, qkv), dk, scale(a))
    }

    pub(crate) fn flash_attention_forward(
        &mut self,
        call: &OpCall,
        a: &Attention,
    ) -> Result<(), BackendError> {
        let io: FlashAttentionIo = call.operands(a)?;
        // The caches come both or neither.
        let (src, v_src) = match (&io.k_cache, &io.v_cache) {
            (Some(k_cache), Some(v_cache)) => {
                // Both caches are read: check both shapes; V is read with K's capacity (the
                // caches are allocated alike).
                cache_capacity(call, a, v_cache)?;
                let capacity = cache_capacity(call, a, k_cache)?;
                let cache = |cache| Kv::Cache { cache, capacity };
                (cache(k_cache), cache(v_cache))
            }
            _ => (Kv::Qkv, Kv::Qkv),
        };
        check_local(call, a, src)?;
        let qkv = self.arg(call, &io.qkv, (a.b * a.tq * a.qkv_width()) as u64)?;
        let o = self.arg(call, &io.out, a.q_numel())?;
        let lse = self.arg(call, &io.lse, (a.b * a.h * a.tq) as u64)?;
        let fv = flash_variant(call, a.d)?;
        if nothing_to_do(a) {
            return Ok(());
        }
        let k = self.kv_operand(call, a, src, false, qkv)?;
        let v = self.kv_operand(call, a, v_src, true, qkv)?;
        if let Kv::Cache { capacity, .. } = src {
            if a.tq <= DECODE_MAX_TQ && decode_fits(a.h / a.h_kv * a.tq, a.d, k.buf, v.buf) {
                let dec = Decode {
                    qkv,
                    k: k.buf,
                    v: v.buf,
                    o,
                    lse,
                    kv: DecodeKv::Contiguous {
                        capacity,
                        tk: a.tk,
                        step: self.op_scalars,
                    },
                    units: a.b,
                    tq: a.tq,
                    h: a.h,
                    h_kv: a.h_kv,
                    d: a.d,
                    causal: a.causal,
                    window: window_arg(a),
                    scale: scale(a),
                };
                return self.decode_attention(call, &dec);
            }
        }
        let width = a.qkv_width() as u64;
        let mma = mma_variant(
            a.d,
            &[qkv, k.buf, v.buf, o],
            &[width, k.base, k.sb, k.sh, k.s0, v.base, v.sb, v.sh, v.s0],
        );
        let wgmma = mma
            .as_ref()
            .and_then(|m| wgmma_variant(self.info().cc, a.d, m).fwd);
        // wgmma is only ever chosen beside mma (its variant follows from mma's).
        let (kernel, bq) = match (&mma, wgmma) {
            (Some(_), Some(w)) => (FlashKernel::new(FLASH_WGMMA, w), WGMMA_FWD_BQ),
            (Some(m), None) => {
                let mma_fwd = (m.fwd, m.fwd_shared, MMA_FWD_THREADS);
                (FlashKernel::new(FLASH_MMA, mma_fwd), m.fwd_bq)
            }
            (None, _) => {
                let scalar_fwd = (fv.fwd, fv.fwd_shared, FLASH_THREADS);
                (FlashKernel::new(FLASH, scalar_fwd), fv.fwd_bq)
            }
        };
        let blocks = (a.tq as u64).div_ceil(bq) * (a.b * a.h) as u64;
        let max = i32::MAX as usize;
        one_launch(call, blocks <= max as u64 && a.tk <= max && a.h_kv <= max)?;
        let i = |x: u64| Arg::I64(x as i64);
        let args = [
            qkv,
            k.buf,
            i(k.base),
            i(k.sb),
            i(k.sh),
            i(k.s0),
            v.buf,
            i(v.base),
            i(v.sb),
            i(v.sh),
            i(v.s0),
            o,
            lse,
            Arg::I32(a.h as i32),
            Arg::I32(a.h_kv as i32),
            Arg::I32(a.tq as i32),
            Arg::I32(a.tk as i32),
            Arg::I32(a.d as i32),
            Arg::I32(i32::from(a.causal)),
            Arg::I64(window_arg(a)),
            Arg::F32(scale(a)),
            Arg::Ptr(self.op_scalars),
        ];
        self.launch_flash(call, &kernel, blocks, &args)
    }

    /// One launch of `kernel`, `blocks` blocks along x.
    fn launch_flash(
        &mut self,
        call: &OpCall,
        kernel: &FlashKernel,
        blocks: u64,
        args: &[Arg],
    ) -> Result<(), BackendError> {
        let grid = (blocks as u32, 1, 1);
        let block = (kernel.threads, 1, 1);
        self.launch(
            call,
            kernel.source,
            kernel.name,
            grid,
            block,
            kernel.shared,
            args,
        )
    }

    pub(crate) fn flash_attention_backward(
        &mut self,
        call: &OpCall,
        a: &Attention,
    ) -> Result<(), BackendError> {
        let io: FlashAttentionBackwardIo = call.operands(a)?;
        no_cache_in_backward(call, a)?;
        let qkv_numel = (a.b * a.tk * a.qkv_width()) as u64;
        let rows = (a.b * a.h * a.tq) as u64;
        let qkv = self.arg(call, &io.qkv, qkv_numel)?;
        let o = self.arg(call, &io.out, a.q_numel())?;
        let dout = self.arg(call, &io.dout, a.q_numel())?;
        let lse = self.arg(call, &io.lse, rows)?;
        let dqkv = self.arg(call, &io.dqkv, qkv_numel)?;
        let fv = flash_variant(call, a.d)?;
        if nothing_to_do(a) {
            return Ok(());
        }
        // The tensor-core backward reads lse as f32 (4-byte cp.async); another dtype falls
        // back.
        let mma = match lse {
            Arg::Buf(_, 0) => mma_variant(a.d, &[qkv, dout, dqkv], &[a.qkv_width() as u64]),
            _ => None,
        };
        let wgmma = mma
            .as_ref()
            .and_then(|m| wgmma_variant(self.info().cc, a.d, m).bwd);
        let (kernel, bk) = match (&mma, wgmma) {
            // The same grid as flash_mma.cu's backward (and its threads, but for the
            // warp-specialised kernel's producer warpgroup).
            (Some(_), Some(w)) => (FlashKernel::new(FLASH_WGMMA, w), MMA_BWD_BK),
            (Some(m), None) => {
                let mma_bwd = (m.bwd, m.bwd_shared, MMA_BWD_THREADS);
                (FlashKernel::new(FLASH_MMA, mma_bwd), MMA_BWD_BK)
            }
            (None, _) => {
                let scalar_bwd = (fv.bwd, fv.bwd_shared, FLASH_THREADS);
                (FlashKernel::new(FLASH, scalar_bwd), fv.bwd_bk)
            }
        };
        let blocks = (a.tk as u64).div_ceil(bk) * (a.b * a.h_kv) as u64;
        one_launch(
            call,
            blocks <= i32::MAX as u64 && rows.div_ceil(8) <= i32::MAX as u64,
        )?;
        // f32 scratch: Dᵢ (one per query row), then dQ (B·Tq, H·D), zeroed for the atomics.
        let dq_numel = a.q_numel();
        let bytes = (dq_offset(rows) + dq_numel) * 4;
        let block = self
            .alloc
            .alloc(bytes)
            .map_err(driver("scratch for the flash backward"))?;
        let result = self.flash_backward_launches(
            call,
            a,
            &block,
            &kernel,
            blocks,
            [qkv, o, dout, lse, dqkv],
        );
        // The stream orders the block's next user after these kernels.
        self.alloc.free(block);
        result
    }

    /// Dᵢ, then dK, dV and dQ (into the scratch), then dQ into dqkv. Writes every element of
    /// dqkv (the CPU zeroes it and accumulates: the same values).
    fn flash_backward_launches(
        &mut self,
        call: &OpCall,
        a: &Attention,
        block: &Block,
        kernel: &FlashKernel,
        blocks: u64,
        [qkv, o, dout, lse, dqkv]: [Arg; 5],
    ) -> Result<(), BackendError> {
        let rows = (a.b * a.h * a.tq) as u64;
        let di = block.ptr;
        let dq = block.ptr + dq_offset(rows) * 4;
        let dq_numel = a.q_numel();
        // SAFETY: `dq` is the scratch block's dQ region: `block` holds (dq_offset(rows) +
        // dq_numel) × 4 bytes and dQ starts after the rows × 4 of Dᵢ (rounded up); the block is
        // returned to the allocator only after these kernels, in stream order.
        unsafe { cu::memset_d8_async(dq, 0, (dq_numel * 4) as usize, self.gpu.cu_stream()) }
            .map_err(driver("zeroing the dQ scratch"))?;
        let args = [
            o,
            dout,
            Arg::Ptr(di),
            Arg::I64(rows as i64),
            Arg::I32(a.h as i32),
            Arg::I32(a.tq as i32),
            Arg::I32(a.d as i32),
        ];
        let grid = (rows.div_ceil(8) as u32, 1, 1);
        self.launch(call, FLASH, "flash_bwd_di", grid, (256, 1, 1), 0, &args)?;
        let args = [
            qkv,
            dout,
            lse,
            Arg::Ptr(di),
            Arg::Ptr(dq),
            dqkv,
            Arg::I32(a.h as i32),
            Arg::I32(a.h_kv as i32),
            Arg::I32(a.tq as i32),
            Arg::I32(a.tk as i32),
            Arg::I32(a.d as i32),
            Arg::I32(i32::from(a.causal)),
            Arg::I64(window_arg(a)),
            Arg::F32(scale(a)),
        ];
        self.launch_flash(call, kernel, blocks, &args)?;
        let args = [
            Arg::Ptr(dq),
            dqkv,
            Arg::I64(dq_numel as i64),
            Arg::I64((a.h * a.d) as i64),
            Arg::I64(a.qkv_width() as i64),
        ];
        self.launch_1d(call, FLASH, "flash_bwd_dq", dq_numel, &args)
    }
}
