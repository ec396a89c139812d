//! What a cuBLAS matrix kernel executes on whole tiles: the model "at the kernel's tiles".
//!
//! A GEMM kernel computes C in tiles of tile_m × tile_n and walks K in slices of tile_k. Where
//! a dimension is not a multiple of its tile the last tile is computed whole — the loads past
//! the edge are zero-filled or predicated off, the FFMAs and MMAs are not — and the counters
//! count every one of them. On the `report` preset (C = 200, V = 33,278, B·T = 35·B) that is
//! 1.2–2.1× the model's 2mnk per product. This module reads a kernel's tile from its name, the
//! tile count and split-K from its grid, and from the product's m, n, k gives the FLOPs the
//! kernel executes: 2 · (padded rows) · (padded columns) · (padded K), plus what its epilogue
//! and a split-K reduction add.
//!
//! Every rule below was read off real launches (H200, ncu 2025.3.1, 2026-12-04: the fixtures
//! `crates/bench/tests/fixtures/ncu-report-*.csv`, `tests/tiles.rs` checks each kernel of them),
//! and only the families named here are read: any other kernel is "tile not readable" (None),
//! never a guess. The products are in the row-major terms of `crates/cuda/src/blas.rs`'s `Gemm`:
//! C (m×n) = A (m×k) · B (k×n); cuBLASLt, being column-major, sees M = our n and N = our m.
//!
//! | family | name | tile along | K per split | epilogue, FP32 FLOPs per padded output |
//! |---|---|---|---|---|
//! | xmma (FP32 FFMA) | `sm80_xmma_gemm_f32f32_f32f32_f32_…_tilesize{a}x{b}x{k}_…` | grid.x = ⌈m/a⌉, grid.y = ⌈n/b⌉ | every split runs ⌈⌈K/k⌉/S⌉ slices | 2 (+2 with β = 1), + S − 1 when split (in-kernel) |
//! | CUTLASS SIMT | `cutlass_80_simt_sgemm_{M}x{N}_{k}x{stages}_…` | grid.x·grid.y = ⌈n/M⌉·⌈m/N⌉ | CUTLASS's: chunks of ⌈K/S⌉ rounded up to 4 | 1 (+2 with a bias or β); split with a reduce kernel: 1 a split (partials), the reduce the rest; split without: 1 + 3 a later split |
//! | CUTLASS tensor-op bf16 | `cutlass_80_tensorop_[bf16_]s16816gemm_bf16_{M}x{N}_{k}x{stages}_…` | as SIMT | as SIMT, rounded up to 8 | as SIMT |
//! | CUTLASS WMMA bf16 | `cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_{M}x{N}_{k}x{stages}_…` | as SIMT | no split seen | as SIMT |
//! | nvjet (sm90, JIT) | `nvjet_sm90_{tst,tss}_{a}x{b}_{k}x{stages}_{cx}x{cy}_…` | ⌈n/a⌉ rounded up to cx, ⌈m/b⌉ to cy | no split seen | 1 with a bias (on the tiles before the cluster rounding), else 0 |
//!
//! `cublasLt::splitKreduce_kernel` after a split CUTLASS kernel sums the S partials: S + 1 FP32
//! FLOPs per (unpadded) output, +1 with a bias, +2 with β = 1.
//!
//! The combinations measured (each agrees with ncu's count to the FLOP): xmma unsplit with and
//! without a bias, β = 0 and 1, and split 33 ways without either; SIMT unsplit without a bias
//! or β, split 6–33 ways with a reduce (β = 1 and a bias both land in the reduce), split 2 ways
//! without one; tensor-op unsplit and split 26 ways with a reduce, neither with a bias or β;
//! WMMA unsplit with a bias; nvjet `tst` and `tss` with a bias, without, and with β = 1
//! (`badd`, no FP32 arithmetic: the add is the store's), one of them persistent (the 192×192
//! `coopB`: 132 CTAs for 522 tiles). Other combinations of a measured family follow the same
//! formulas, unmeasured; the epilogue is a few FLOPs an output against the main loop's 2K.
//! Some of cuBLAS's fp32 kernels also execute HFMA instructions no fp32 product needs (one a
//! thread in the backward's xmma kernels, two an output in the reduce: likely HFMA2.MMA, the
//! compiler's idiom for moving constants); the FP16 counters count them, this model does not.

use crate::counters::KernelCount;
use serde::Serialize;
use tperf_core::cost::analysis::OpRow;
use tperf_core::ops::OpClass;

/// The kernel families whose tiles tperf reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// cuBLAS's own FP32 SIMT kernels (`sm80_xmma_gemm_f32f32_…_ffma_…`).
    Xmma,
    /// CUTLASS 2 SIMT SGEMM inside cuBLAS (`cutlass_80_simt_sgemm_…`).
    CutlassSimt,
    /// CUTLASS 2 bf16 tensor-core GEMM (mma.sync m16n8k16).
    CutlassTensorOp,
    /// CUTLASS 2 bf16 WMMA GEMM (16×16×16 fragments).
    CutlassWmma,
    /// cuBLAS's Hopper JIT kernels (TMA, warpgroup MMA, thread-block clusters).
    Nvjet,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Xmma => "xmma",
            Family::CutlassSimt => "cutlass-simt",
            Family::CutlassTensorOp => "cutlass-tensorop",
            Family::CutlassWmma => "cutlass-wmma",
            Family::Nvjet => "nvjet",
        }
    }
}

/// A kernel's tile as its name gives it. For xmma `m` runs along C's rows (our m) and `n`
/// along its columns; for CUTLASS and nvjet `m` runs along cuBLAS's M, which is our n.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Tile {
    pub family: Family,
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// nvjet's thread-block cluster (CTAs along cuBLAS's M, N); (1, 1) elsewhere.
    pub cluster: (u64, u64),
}

/// "56x64" → (56, 64), from the start of `s`.
fn pair(s: &str) -> Option<(u64, u64)> {
    let (a, rest) = s.split_once('x')?;
    let b: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// CUTLASS 2's `{M}x{N}_{K}x{stages}` after `prefix`.
fn cutlass_tile(name: &str, prefix: &str, family: Family) -> Option<Tile> {
    let at = name.find(prefix)? + prefix.len();
    let mut parts = name[at..].split('_');
    let (m, n) = pair(parts.next()?)?;
    let (k, _stages) = pair(parts.next()?)?;
    Some(Tile {
        family,
        m,
        n,
        k,
        cluster: (1, 1),
    })
}

/// The tile of a kernel of a family whose rule has been measured; None for any other name.
pub fn read_tile(name: &str) -> Option<Tile> {
    const XMMA: &str = "sm80_xmma_gemm_f32f32_f32f32_f32_";
    if let Some(at) = name.find(XMMA) {
        let rest = &name[at..];
        if !rest.contains("_ffma_") {
            return None;
        }
        let t = rest.find("tilesize")? + "tilesize".len();
        let mut dims = rest[t..].split('x');
        let mut next = || -> Option<u64> {
            let d: String = dims
                .next()?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            d.parse().ok()
        };
        let (m, n, k) = (next()?, next()?, next()?);
        return Some(Tile {
            family: Family::Xmma,
            m,
            n,
            k,
            cluster: (1, 1),
        });
    }
    if name.contains("cutlass_80_simt_sgemm_") {
        return cutlass_tile(name, "cutlass_80_simt_sgemm_", Family::CutlassSimt);
    }
    if name.contains("cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_") {
        return cutlass_tile(
            name,
            "cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_",
            Family::CutlassWmma,
        );
    }
    if name.contains("cutlass_80_tensorop_") {
        return cutlass_tile(name, "s16816gemm_bf16_", Family::CutlassTensorOp);
    }
    for prefix in ["nvjet_sm90_tst_", "nvjet_sm90_tss_"] {
        if let Some(at) = name.find(prefix) {
            let mut parts = name[at + prefix.len()..].split('_');
            let (m, n) = pair(parts.next()?)?;
            let (k, _stages) = pair(parts.next()?)?;
            let cluster = pair(parts.next()?)?;
            return Some(Tile {
                family: Family::Nvjet,
                m,
                n,
                k,
                cluster,
            });
        }
    }
    None
}

/// cuBLASLt's split-K reduction kernel (it sums the partial products a split kernel wrote).
pub fn is_split_k_reduce(name: &str) -> bool {
    name.contains("splitKreduce_kernel")
}

/// Whether a kernel name looks like a cuBLAS matrix kernel, read or not: an op that launched
/// one whose tile is not readable has no model at tiles.
pub fn looks_like_gemm(name: &str) -> bool {
    ["gemm", "nvjet", "xmma", "cutlass", "cublas"]
        .iter()
        .any(|w| name.contains(w))
}

/// One cuBLASLt product, in the row-major terms of `crates/cuda/src/blas.rs`'s `Gemm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Product {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// The BIAS epilogue (a bias of length n added to every row).
    pub bias: bool,
    /// β = 1: C is added into, not overwritten.
    pub accumulate: bool,
}

impl Product {
    /// The model's FLOPs for this product: 2mnk, plus one per output for a bias and one for
    /// the accumulation (what `tperf_core::ops::matmul` counts for them).
    pub fn model_flops(&self) -> f64 {
        let mn = (self.m * self.n) as f64;
        2.0 * mn * self.k as f64 + mn * (u64::from(self.bias) + u64::from(self.accumulate)) as f64
    }
}

/// What one kernel executes on whole tiles, and how its tiles were read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AtTiles {
    pub tile: Tile,
    pub product: Product,
    pub grid: [u64; 3],
    /// K split over `split_k` slices (grid.z).
    pub split_k: u64,
    /// C's rows and columns as the tiles cover them (our m and n, rounded up).
    pub padded_m: u64,
    pub padded_n: u64,
    /// The K the kernel walks, summed over its splits, each split rounded up to whole slices.
    pub padded_k: u64,
    /// 2 · padded_m · padded_n · padded_k.
    pub mainloop_flops: f64,
    /// The epilogue's FP32 arithmetic (α, β, bias; a split's partial writes).
    pub epilogue_flops: f64,
    /// The split-K reduction kernel that followed, if any.
    pub reduce_flops: f64,
}

impl AtTiles {
    pub fn flops(&self) -> f64 {
        self.mainloop_flops + self.epilogue_flops + self.reduce_flops
    }
}

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b.max(1))
}

fn round_up(a: u64, b: u64) -> u64 {
    ceil_div(a, b) * b.max(1)
}

/// CUTLASS 2's split-K (`GemmUniversal`): split i takes K from i·c to min(K, (i+1)·c), where
/// c = ⌈K/S⌉ rounded up to 128 bits of the operand (`kAlignK`: 4 fp32, 8 bf16), and walks its
/// share in whole slices of `tile_k`. Measured: fp32 K = 8960 at S = 13 walks 9008 (c = 692;
/// with c rounded to 8 it would be 8960, with c unrounded 9032); K = 33,278 at S = 26 walks
/// 33,280; S = 33 at K = 8960 walks 8960 (the last split only its remainder: 256).
fn cutlass_split_k(k: u64, splits: u64, tile_k: u64, align: u64) -> u64 {
    let chunk = round_up(ceil_div(k, splits), align);
    (0..splits)
        .map(|i| round_up(k.min((i + 1) * chunk).saturating_sub(i * chunk), tile_k))
        .sum()
}

/// The FLOPs `tile`'s kernel, launched on `grid`, executes for `p`. `reduced_after`: a split-K
/// reduction kernel followed it in the same op. Err says why the launch does not fit the
/// family's measured rule (the grid is not the tile count, a split the rule has not seen), and
/// then nothing is modelled.
pub fn at_tiles(
    tile: Tile,
    grid: [u64; 3],
    p: Product,
    reduced_after: bool,
) -> Result<AtTiles, String> {
    let [gx, gy, gz] = grid;
    let splits = gz.max(1);
    if reduced_after && splits == 1 {
        return Err("a split-K reduce after a kernel that is not split".into());
    }
    let source = p.bias || p.accumulate;
    let (padded_m, padded_n, padded_k, epilogue_per_output, reduce_flops) = match tile.family {
        Family::Xmma => {
            // grid.x along C's rows, grid.y along its columns: the 128×32 and 64×32 tiles of
            // the b256 run tell the two apart ((70, 7) for m = 8960, n = 200).
            let (tm, tn) = (ceil_div(p.m, tile.m), ceil_div(p.n, tile.n));
            if (gx, gy) != (tm, tn) {
                return Err(format!(
                    "grid ({gx}, {gy}, {gz}) is not ({tm}, {tn}, S) for m={} n={} at {}×{}",
                    p.m, p.n, tile.m, tile.n
                ));
            }
            if splits > 1 && reduced_after {
                return Err("an xmma split-K with a reduce kernel (not measured)".into());
            }
            // In-kernel split-K: every split runs the same number of slices, past K's end
            // too (K = 33,278 at S = 33 walks 33 × 1016 = 33,528, epilogue 2 + 32).
            let slices = ceil_div(ceil_div(p.k, tile.k), splits);
            let epilogue = 2 + 2 * u64::from(p.accumulate) + (splits - 1);
            (
                tm * tile.m,
                tn * tile.n,
                splits * slices * tile.k,
                epilogue,
                0.0,
            )
        }
        Family::CutlassSimt | Family::CutlassTensorOp | Family::CutlassWmma => {
            // Column-major: the tile's M runs along cuBLAS's M (our n), its N along our m;
            // grid.x enumerates the tiles of both (a swizzle), grid.z the splits.
            let (tm, tn) = (ceil_div(p.n, tile.m), ceil_div(p.m, tile.n));
            if gx * gy != tm * tn {
                return Err(format!(
                    "grid ({gx}, {gy}, {gz}) is not {} tiles for m={} n={} at {}×{}",
                    tm * tn,
                    p.m,
                    p.n,
                    tile.m,
                    tile.n
                ));
            }
            let align = if tile.family == Family::CutlassSimt {
                4
            } else {
                8
            };
            let padded_k = cutlass_split_k(p.k, splits, tile.k, align);
            let outputs = (p.m * p.n) as f64;
            // CUTLASS's LinearCombination: α·acc (1 FMUL) alone, or α·acc + β·source (an FFMA
            // more) when there is a source, cuBLASLt's bias included (WMMA with a bias: 3).
            let (epilogue, reduce) = match (splits, reduced_after) {
                (1, false) => (1 + 2 * u64::from(source), 0.0),
                // Parallel split-K: each split writes α·acc, the reduce adds the S partials,
                // scales, adds the bias and β·C (S + 1, +1, +2 per output).
                (_, true) => {
                    let per = splits + 1 + u64::from(p.bias) + 2 * u64::from(p.accumulate);
                    (splits, outputs * per as f64)
                }
                // Serial split-K (SIMT, S = 2 at b256): the first split writes α·acc, each
                // later one reads it back as the source.
                (_, false) if tile.family == Family::CutlassSimt => {
                    (1 + 3 * (splits - 1) + 2 * u64::from(source), 0.0)
                }
                _ => {
                    return Err(format!(
                        "a {} split-K over {splits} without a reduce kernel (not measured)",
                        tile.family.name()
                    ))
                }
            };
            if tile.family == Family::CutlassWmma && splits > 1 {
                return Err("a WMMA split-K (not measured)".into());
            }
            (tn * tile.n, tm * tile.m, padded_k, epilogue, reduce)
        }
        Family::Nvjet => {
            if splits > 1 {
                return Err("an nvjet kernel split over grid.z (not measured)".into());
            }
            // The tile's first extent along cuBLAS's M (our n), the second along our m, each
            // count rounded up to the cluster: the CTAs a cluster adds past the edge run the
            // MMAs too (dW 200×600 at 32×64, cluster 4×2: 8 × 10 CTAs, not 7 × 10).
            let (tm, tn) = (ceil_div(p.n, tile.m), ceil_div(p.m, tile.n));
            let (cm, cn) = (round_up(tm, tile.cluster.0), round_up(tn, tile.cluster.1));
            let ctas = gx * gy;
            // A persistent kernel launches fewer CTAs than tiles and loops (the lm_head's
            // 192×192 `coopB`: 132 CTAs, one an SM, for 522 tiles); more CTAs than tiles is
            // something else.
            if ctas > cm * cn {
                return Err(format!(
                    "grid ({gx}, {gy}, {gz}) is more than the {} tiles of m={} n={} at {}×{} (cluster {}×{})",
                    cm * cn, p.m, p.n, tile.m, tile.n, tile.cluster.0, tile.cluster.1
                ));
            }
            let padded_k = round_up(p.k, tile.k);
            // The bias is one FADD an output, on the tiles inside the problem only; without a
            // bias (`bz`, and `badd`'s β = 1) the epilogue executes no FP32 arithmetic.
            let bias_adds = if p.bias {
                (tm * tile.m * tn * tile.n) as f64
            } else {
                0.0
            };
            let mainloop = 2.0 * (cn * tile.n) as f64 * (cm * tile.m) as f64 * padded_k as f64;
            return Ok(AtTiles {
                tile,
                product: p,
                grid,
                split_k: 1,
                padded_m: cn * tile.n,
                padded_n: cm * tile.m,
                padded_k,
                mainloop_flops: mainloop,
                epilogue_flops: bias_adds,
                reduce_flops: 0.0,
            });
        }
    };
    let outputs = (padded_m * padded_n) as f64;
    Ok(AtTiles {
        tile,
        product: p,
        grid,
        split_k: splits,
        padded_m,
        padded_n,
        padded_k,
        mainloop_flops: 2.0 * outputs * padded_k as f64,
        epilogue_flops: outputs * epilogue_per_output as f64,
        reduce_flops,
    })
}

/// The cuBLASLt products the CUDA backend issues for a modelled op, in launch order, as
/// `crates/cuda/src/ops/matmul.rs` issues them; Err for an op that is a product but whose
/// kernels tperf does not model at tiles, None for an op that is no cuBLAS product (flash
/// attention, tperf's own attention products, every elementwise op). The op's shape reaches
/// here as the analysis row's `dims` ("accumulate_dx activation=relu bias k=200 m=560 n=200").
///
/// - forward: Y (m×n) = X·Wᵀ (+ b); when Y's rows are not 16-byte multiples (the lm_head's
///   33,278 logits) two products, the columns up to the last multiple of the vector width and
///   the rest (`padded_product`);
/// - backward: dX (m×k) = dY·W over n (β = 1 when accumulating), then dW (n×k) = dYᵀ·X over m;
///   the bias gradient and the activation's backward are tperf's own kernels.
///
/// One or two 16-bit rows take tperf's `gemv_rows` instead, GELU the GELU_AUX epilogue (not
/// measured): their kernels are not read, so their ops keep the plain model.
pub fn products_of(row: &OpRow) -> Option<Result<Vec<Product>, String>> {
    if row.class != OpClass::Matmul || !row.name.starts_with("matmul") {
        return None;
    }
    let dim = |key: &str| -> Option<u64> {
        row.dims
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    let (Some(m), Some(k), Some(n)) = (dim("m"), dim("k"), dim("n")) else {
        return Some(Err(format!("no m, k, n in the op's dims '{}'", row.dims)));
    };
    let flag = |key: &str| row.dims.split_whitespace().any(|f| f == key);
    let (bias, accumulate_dx) = (flag("bias"), flag("accumulate_dx"));
    if row.dims.contains("activation=gelu") {
        return Some(Err(
            "a GELU product (cuBLASLt's GELU_AUX epilogue is not measured)".into(),
        ));
    }
    let launched = |p: &Product| p.m > 0 && p.n > 0 && p.k > 0;
    if row.name.ends_with("_backward") {
        let dx = Product {
            m,
            n: k,
            k: n,
            bias: false,
            accumulate: accumulate_dx,
        };
        let dw = Product {
            m: n,
            n: k,
            k: m,
            bias: false,
            accumulate: false,
        };
        return Some(Ok([dx, dw].into_iter().filter(launched).collect()));
    }
    let full = Product {
        m,
        n,
        k,
        bias,
        accumulate: false,
    };
    // Y's dtype is the op's (the precision policy keeps a product's output at its inputs').
    let per_16_bytes = 16 / row.dtype.size_bytes();
    let products = if n % per_16_bytes != 0 && n > per_16_bytes && k > 0 {
        let wide = n - n % per_16_bytes;
        vec![
            Product { n: wide, ..full },
            Product {
                n: n - wide,
                ..full
            },
        ]
    } else {
        vec![full]
    };
    Some(Ok(products.into_iter().filter(launched).collect()))
}

/// An op's products at its kernels' tiles.
#[derive(Clone, Debug, Serialize)]
pub struct OpAtTiles {
    /// One per product, in launch order, with the kernel that computed it.
    pub kernels: Vec<KernelAtTiles>,
    /// The model's FLOPs for the products (2mnk and their bias and β terms).
    pub products_model_flops: f64,
    /// What their kernels execute on whole tiles (and their split-K reductions).
    pub products_at_tiles_flops: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelAtTiles {
    /// ncu's kernel ID.
    pub id: u64,
    pub name: String,
    #[serde(flatten)]
    pub at: AtTiles,
}

/// Assigns the op's kernels (in launch order) to its products: each kernel with a readable
/// tile takes the next product, a split-K reduce right after it is its reduction, tperf's own
/// kernels (activation, bias gradient, narrowing copy) are left to the plain model. Err when a
/// cuBLAS-looking kernel has no readable tile, a grid does not fit its product, or the kernels
/// and products do not pair up.
pub fn op_at_tiles(products: &[Product], kernels: &[&KernelCount]) -> Result<OpAtTiles, String> {
    let mut out = vec![];
    let mut next = products.iter();
    let mut i = 0;
    while i < kernels.len() {
        let k = kernels[i];
        i += 1;
        if is_split_k_reduce(&k.name) {
            return Err(format!(
                "a split-K reduce (kernel {}) after no split kernel",
                k.id
            ));
        }
        let Some(tile) = read_tile(&k.name) else {
            if looks_like_gemm(&k.name) {
                return Err(format!("tile not readable: {}", k.name));
            }
            continue;
        };
        let grid = k
            .grid
            .ok_or_else(|| "no grid sizes in ncu's CSV (an older run)".to_string())?;
        let &p = next.next().ok_or_else(|| {
            format!(
                "more matrix kernels than the op's {} products",
                products.len()
            )
        })?;
        let reduced_after = kernels.get(i).is_some_and(|r| is_split_k_reduce(&r.name));
        let at =
            at_tiles(tile, grid, p, reduced_after).map_err(|why| format!("{}: {why}", k.name))?;
        if reduced_after {
            i += 1;
        }
        out.push(KernelAtTiles {
            id: k.id,
            name: k.name.clone(),
            at,
        });
    }
    if out.len() != products.len() {
        return Err(format!(
            "{} matrix kernels with readable tiles for {} products",
            out.len(),
            products.len()
        ));
    }
    Ok(OpAtTiles {
        products_model_flops: products.iter().map(Product::model_flops).sum(),
        products_at_tiles_flops: out.iter().map(|k| k.at.flops()).sum(),
        kernels: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_their_tiles() {
        let t = read_tile("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize128x32x8_stage3_warpsize2x2x1_ffma_aligna4_alignc4_execute_kerne").unwrap();
        assert_eq!((t.family, t.m, t.n, t.k), (Family::Xmma, 128, 32, 8));
        let t = read_tile(
            "void cutlass::Kernel2<cutlass_80_simt_sgemm_256x128_8x4_nn_align1>(T1::Params)",
        )
        .unwrap();
        assert_eq!(
            (t.family, t.m, t.n, t.k),
            (Family::CutlassSimt, 256, 128, 8)
        );
        let t = read_tile("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_bf16_256x128_64x3_nn_align2>(T1::Params)").unwrap();
        assert_eq!(
            (t.family, t.m, t.n, t.k),
            (Family::CutlassTensorOp, 256, 128, 64)
        );
        let t = read_tile("void cutlass::Kernel2<cutlass_80_tensorop_s16816gemm_bf16_256x128_32x3_nt_align2>(T1::Params)").unwrap();
        assert_eq!((t.m, t.n, t.k), (256, 128, 32));
        let t = read_tile("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align2>(T1::Params)").unwrap();
        assert_eq!(
            (t.family, t.m, t.n, t.k),
            (Family::CutlassWmma, 32, 32, 128)
        );
        let t = read_tile("nvjet_sm90_tst_56x64_64x14_4x2_h_bz_bias_TNN").unwrap();
        assert_eq!(
            (t.family, t.m, t.n, t.k, t.cluster),
            (Family::Nvjet, 56, 64, 64, (4, 2))
        );
        let t = read_tile("nvjet_sm90_tss_32x64_64x16_4x2_h_bz_NTN").unwrap();
        assert_eq!((t.m, t.n, t.cluster), (32, 64, (4, 2)));
    }

    #[test]
    fn other_kernels_have_no_readable_tile() {
        for name in [
            "column_sum",
            "flash_fwd_d128",
            "gemv_rows",
            "void cublasLt::splitKreduce_kernel<32, 16, int, float, float, float, float, 0, float, float, float, 1, 0, 0, 0",
            // Families not measured: a tensor-core xmma, an fp16 CUTLASS kernel, nvjet's others.
            "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas",
            "void cutlass::Kernel2<cutlass_80_tensorop_f16_s16816gemm_f16_128x128_32x3_nn_align8>(T1::Params)",
            "nvjet_sm90_hsh_128x128_64x4_1x2_h_bz_TNT",
            "sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize32x32x8_stage3_warpsize1x2x1_tf32_execute",
        ] {
            assert_eq!(read_tile(name), None, "{name}");
        }
        assert!(is_split_k_reduce(
            "void cublasLt::splitKreduce_kernel<32, 16, int, float"
        ));
        assert!(looks_like_gemm("nvjet_sm90_hsh_128x128_64x4_1x2_h_bz_TNT"));
        assert!(!looks_like_gemm("narrow_rows"));
    }

    #[test]
    fn cutlass_split_k_rounds_chunks_to_the_operand_alignment() {
        // ⌈8960/13⌉ = 690 → 692; 12 splits of 692 walk 696 each, the last 656.
        assert_eq!(cutlass_split_k(8960, 13, 8, 4), 12 * 696 + 656);
        assert_eq!(cutlass_split_k(33_278, 26, 8, 4), 33_280);
        assert_eq!(cutlass_split_k(8960, 33, 8, 4), 8960);
        assert_eq!(cutlass_split_k(200, 1, 8, 4), 200);
        assert_eq!(cutlass_split_k(201, 1, 8, 4), 208);
        assert_eq!(cutlass_split_k(560, 1, 32, 8), 576);
    }

    #[test]
    fn a_grid_that_is_not_the_tile_count_is_not_read() {
        let t = read_tile("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize32x32x8_stage3_warpsize1x2x1_ffma_aligna4_alignc4_execute_kernel").unwrap();
        let p = Product {
            m: 560,
            n: 600,
            k: 200,
            bias: true,
            accumulate: false,
        };
        assert!(at_tiles(t, [18, 19, 1], p, false).is_ok());
        // The transposed grid, or the product of another op, does not fit.
        assert!(at_tiles(t, [19, 18, 1], p, false).is_err());
        assert!(at_tiles(t, [18, 7, 1], p, false).is_err());
    }
}
