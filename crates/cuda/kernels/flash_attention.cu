// Flash attention (tperf_core::ops::flash_attention), FlashAttention-2 style, scalar f32 FMA.
//
// Forward: one block of 256 threads per (query tile of BQ rows, head, batch element). The
// block holds its Q tile in shared memory and walks the key range its rows can see (causal /
// sliding window: key tiles outside it are never loaded) in tiles of BK keys: K and V tiles in
// shared memory, S = Q·Kᵀ/√D in registers, the online softmax (running row max m and sum l,
// the accumulator rescaled by exp(m_old − m_new)), P through shared memory, O += P·V in
// registers. It writes O = acc/l and lse = m + ln l.
//
// Backward, from the saved lse: flash_bwd_di computes Dᵢ = rowsum(dO ⊙ O) into f32 scratch;
// then one block per (key tile of BK keys, key/value head, batch element) holds its K and V
// tiles and its dK, dV accumulators for the whole kernel, and walks the query heads of its
// group and the query tiles that can see its keys: S recomputed, P = exp(S − lse), dV += Pᵀ·dO,
// dP = dO·Vᵀ, dS = P ⊙ (dP − Dᵢ), dK += dSᵀ·Q/√D, and dQ += dS·K/√D by atomicAdd into f32
// scratch (several key tiles add to one query row). flash_bwd_dq then converts dQ into dqkv.
// dK and dV are written once per key, so every element of dqkv is written: the CPU zeroes dqkv
// and accumulates, which gives the same result.
//
// Thread layout: 256 threads as 16×16 (tx = tid % 16, ty = tid / 16). A thread owns the tile
// rows ty + 16a and the columns tx + 16c, so the 16 threads of a row sit in one half-warp and
// row reductions are four shuffles. Shared tiles keep one row per token with a row stride of
// DMAX + 1 floats, so the 16 different rows a half-warp reads at one column fall in 16 banks.
// Register arrays are indexed only by compile-time constants (fully unrolled loops).
//
// Variants by head size: DMAX = 64, 128 and 256 hold any D up to DMAX (columns past D are zero
// in shared memory and never stored). Shared memory per block is 66–140 KB (the >48 KiB opt-in),
// within both Hopper's 227 KB and Ampere's 163 KB.

#define FA_THREADS 256

__device__ __forceinline__ bool attn_visible(int causal, i64 window, i64 pos, i64 j) {
    return !causal || (j <= pos && (window < 0 || pos - j < window));
}

// Sum and max over the 16 threads of a half-warp (the threads of one tile row).
__device__ __forceinline__ float row16_sum(float v) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float row16_max(float v) {
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Loads rows [r0, r0 + ROWS) of a (rows, D) operand into a shared tile of stride DMAX + 1:
// element (r, e) of the operand at base + r·rs + e; rows at or past `valid` and columns past
// d are zero.
template <int DMAX, int ROWS>
__device__ __forceinline__ void load_tile(float* tile, const Buf& src, i64 base, i64 rs, int r0,
                                          int valid, int d) {
    for (int idx = threadIdx.x; idx < ROWS * DMAX; idx += FA_THREADS) {
        int r = idx / DMAX, e = idx % DMAX;
        int row = r0 + r;
        tile[r * (DMAX + 1) + e] = (row < valid && e < d) ? ld(src, base + (i64)row * rs + e) : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------------
// Forward

struct FwdArgs {
    int h, h_kv, tq, tk, d, causal;
    i64 window;
    float scale;
};

// K (and V) of key j of head g, batch b, at kv0 + b·k_sb + g·k_sh + j·k_sj + e.
template <int DMAX, int BQ, int BK>
__device__ __forceinline__ void flash_fwd(Buf qkv, Buf kb, i64 k0, i64 k_sb, i64 k_sh, i64 k_sj,
                                          Buf vb, i64 v0, i64 v_sb, i64 v_sh, i64 v_sj, Buf o,
                                          Buf lse, FwdArgs p) {
    constexpr int LD = DMAX + 1, PLD = BK + 1, RA = BQ / 16, CB = BK / 16, CD = DMAX / 16;
    extern __shared__ float smem[];
    float* Qs = smem;            // BQ × LD
    float* Ks = Qs + BQ * LD;    // BK × LD
    float* Vs = Ks + BK * LD;    // BK × LD
    float* Ps = Vs + BK * LD;    // BQ × PLD

    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int tiles = (p.tq + BQ - 1) / BQ;
    const int tile = (int)(blockIdx.x % tiles);
    const int head = (int)((blockIdx.x / tiles) % p.h);
    const i64 b = (i64)(blockIdx.x / tiles) / p.h;
    const int g = head / (p.h / p.h_kv);
    const int d = p.d;
    const i64 width = (i64)(p.h + 2 * p.h_kv) * d;
    const int i0 = tile * BQ, i1 = min(i0 + BQ, p.tq);
    const i64 off = p.tk - p.tq; // absolute position of query 0

    // Keys rows i0..i1 can see: [lo, hi).
    i64 lo = 0, hi = p.tk;
    if (p.causal) {
        hi = off + i1;
        if (p.window >= 0) lo = max((i64)0, off + i0 + 1 - p.window);
    }

    load_tile<DMAX, BQ>(Qs, qkv, b * p.tq * width + (i64)head * d, width, i0, p.tq, d);

    float m[RA], l[RA], acc[RA][CD];
#pragma unroll
    for (int a = 0; a < RA; ++a) {
        m[a] = NEG_INF;
        l[a] = 0.0f;
#pragma unroll
        for (int c = 0; c < CD; ++c) acc[a][c] = 0.0f;
    }
    const i64 kbase = k0 + b * k_sb + (i64)g * k_sh;
    const i64 vbase = v0 + b * v_sb + (i64)g * v_sh;

    for (i64 j0 = lo; j0 < hi; j0 += BK) {
        // The previous tile's readers of Ks, Vs and Ps are done (and Qs is loaded, the first
        // time).
        __syncthreads();
        load_tile<DMAX, BK>(Ks, kb, kbase + j0 * k_sj, k_sj, 0, (int)min((i64)BK, hi - j0), d);
        load_tile<DMAX, BK>(Vs, vb, vbase + j0 * v_sj, v_sj, 0, (int)min((i64)BK, hi - j0), d);
        __syncthreads();

        float s[RA][CB];
#pragma unroll
        for (int a = 0; a < RA; ++a)
#pragma unroll
            for (int c = 0; c < CB; ++c) s[a][c] = 0.0f;
        for (int e = 0; e < d; ++e) {
            float qa[RA], kc[CB];
#pragma unroll
            for (int a = 0; a < RA; ++a) qa[a] = Qs[(ty + 16 * a) * LD + e];
#pragma unroll
            for (int c = 0; c < CB; ++c) kc[c] = Ks[(tx + 16 * c) * LD + e];
#pragma unroll
            for (int a = 0; a < RA; ++a)
#pragma unroll
                for (int c = 0; c < CB; ++c) s[a][c] = fmaf(qa[a], kc[c], s[a][c]);
        }

#pragma unroll
        for (int a = 0; a < RA; ++a) {
            const int i = i0 + ty + 16 * a;
            const i64 pos = off + i;
            float mx = NEG_INF;
#pragma unroll
            for (int c = 0; c < CB; ++c) {
                const i64 j = j0 + tx + 16 * c;
                const bool vis = i < p.tq && j < hi && attn_visible(p.causal, p.window, pos, j);
                s[a][c] = vis ? s[a][c] * p.scale : NEG_INF;
                mx = fmaxf(mx, s[a][c]);
            }
            const float m_new = fmaxf(m[a], row16_max(mx));
            // A row with nothing visible yet keeps m = −∞; subtracting 0 then gives p = 0 and
            // a correction of 0 instead of NaN.
            const float m_use = m_new == NEG_INF ? 0.0f : m_new;
            const float corr = expf(m[a] - m_use);
            float sum = 0.0f;
#pragma unroll
            for (int c = 0; c < CB; ++c) {
                const float pv = expf(s[a][c] - m_use);
                sum += pv;
                Ps[(ty + 16 * a) * PLD + tx + 16 * c] = pv;
            }
            l[a] = l[a] * corr + row16_sum(sum);
            m[a] = m_new;
#pragma unroll
            for (int c = 0; c < CD; ++c) acc[a][c] *= corr;
        }
        __syncthreads();

        // O += P·V over the tile's keys (P is 0 and V rows are 0 past the visible range).
        const int nk = (int)min((i64)BK, hi - j0);
        for (int kk = 0; kk < nk; ++kk) {
            float pa[RA], vc[CD];
#pragma unroll
            for (int a = 0; a < RA; ++a) pa[a] = Ps[(ty + 16 * a) * PLD + kk];
#pragma unroll
            for (int c = 0; c < CD; ++c) vc[c] = Vs[kk * LD + tx + 16 * c];
#pragma unroll
            for (int a = 0; a < RA; ++a)
#pragma unroll
                for (int c = 0; c < CD; ++c) acc[a][c] = fmaf(pa[a], vc[c], acc[a][c]);
        }
    }

    const i64 hd = (i64)p.h * d;
#pragma unroll
    for (int a = 0; a < RA; ++a) {
        const int i = i0 + ty + 16 * a;
        if (i >= p.tq) continue;
        const float inv = 1.0f / l[a];
        const i64 orow = (b * p.tq + i) * hd + (i64)head * d;
#pragma unroll
        for (int c = 0; c < CD; ++c) {
            const int e = tx + 16 * c;
            if (e < d) st(o, orow + e, acc[a][c] * inv);
        }
        if (tx == 0) st(lse, (b * p.h + head) * p.tq + i, m[a] + logf(l[a]));
    }
}

#define FLASH_FWD_PARAMS                                                                         \
    Buf qkv, Buf kb, i64 k0, i64 k_sb, i64 k_sh, i64 k_sj, Buf vb, i64 v0, i64 v_sb, i64 v_sh,  \
        i64 v_sj, Buf o, Buf lse, int h, int h_kv, int tq, int tk, int d, int causal, i64 window, \
        float scale, const int* step
// `step`, when not null, holds the key count of a replayed decode step (graph.rs): the grid
// depends on the queries only, so one captured launch serves every cache length.
#define FLASH_FWD_ARGS                                                                           \
    qkv, kb, k0, k_sb, k_sh, k_sj, vb, v0, v_sb, v_sh, v_sj, o, lse,                            \
        FwdArgs{h, h_kv, tq, step ? step[0] : tk, d, causal, window, scale}

extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_fwd_d64(FLASH_FWD_PARAMS) {
    flash_fwd<64, 64, 64>(FLASH_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_fwd_d128(FLASH_FWD_PARAMS) {
    flash_fwd<128, 64, 64>(FLASH_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_fwd_d256(FLASH_FWD_PARAMS) {
    flash_fwd<256, 64, 32>(FLASH_FWD_ARGS);
}

// ---------------------------------------------------------------------------------------------
// Backward

// di[(b·H + h)·Tq + i] = Σ_e dO·O over row (b, i) of head h; one warp per row.
extern "C" __global__ void flash_bwd_di(Buf o, Buf dout, float* di, i64 rows, int h, int tq,
                                        int d) {
    const i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return; // uniform across the warp
    const i64 i = row % tq, head = (row / tq) % h, b = row / ((i64)tq * h);
    const i64 base = (b * tq + i) * h * d + head * d;
    float sum = 0.0f;
    for (int e = lane; e < d; e += 32) sum += ld(dout, base + e) * ld(o, base + e);
    sum = warp_sum(sum);
    if (lane == 0) di[row] = sum;
}

// dqkv's query part from the f32 dQ (B·Tq, H·D).
extern "C" __global__ void flash_bwd_dq(const float* dq, Buf dqkv, i64 n, i64 hd, i64 width) {
    FOR_EACH(idx, n) st(dqkv, (idx / hd) * width + idx % hd, dq[idx]);
}

struct BwdArgs {
    int h, h_kv, tq, tk, d, causal;
    i64 window;
    float scale;
};

template <int DMAX, int BK, int BQ>
__device__ __forceinline__ void flash_bwd(Buf qkv, Buf dout, Buf lse, const float* di, float* dq,
                                          Buf dqkv, BwdArgs p) {
    constexpr int LD = DMAX + 1, PLD = BQ + 1, RK = BK / 16, CQ = BQ / 16, CD = DMAX / 16;
    extern __shared__ float smem[];
    float* Ks = smem;            // BK × LD
    float* Vs = Ks + BK * LD;    // BK × LD
    float* Qs = Vs + BK * LD;    // BQ × LD
    float* dOs = Qs + BQ * LD;   // BQ × LD
    float* Ps = dOs + BQ * LD;   // BK × PLD (transposed: key row, query column)
    float* dSs = Ps + BK * PLD;  // BK × PLD
    float* Ls = dSs + BK * PLD;  // BQ
    float* Ds = Ls + BQ;         // BQ

    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int tiles = (p.tk + BK - 1) / BK;
    const int tile = (int)(blockIdx.x % tiles);
    const int g = (int)((blockIdx.x / tiles) % p.h_kv);
    const i64 b = (i64)(blockIdx.x / tiles) / p.h_kv;
    const int group = p.h / p.h_kv;
    const int d = p.d;
    const i64 width = (i64)(p.h + 2 * p.h_kv) * d, hd = (i64)p.h * d;
    const int j0 = tile * BK, j1 = min(j0 + BK, p.tk);
    const i64 off = p.tk - p.tq;

    // Query rows that see any key of [j0, j1): [qlo, qhi).
    i64 qlo = 0, qhi = p.tq;
    if (p.causal) {
        qlo = max((i64)0, j0 - off);
        if (p.window >= 0) qhi = min((i64)p.tq, j1 - 1 + p.window - off);
    }

    const i64 kvrow0 = b * p.tk * width;
    load_tile<DMAX, BK>(Ks, qkv, kvrow0 + (i64)(p.h + g) * d, width, j0, p.tk, d);
    load_tile<DMAX, BK>(Vs, qkv, kvrow0 + (i64)(p.h + p.h_kv + g) * d, width, j0, p.tk, d);

    float dk[RK][CD], dv[RK][CD];
#pragma unroll
    for (int a = 0; a < RK; ++a)
#pragma unroll
        for (int c = 0; c < CD; ++c) dk[a][c] = dv[a][c] = 0.0f;

    for (int r = 0; r < group; ++r) {
        const int head = g * group + r;
        const i64 qbase = b * p.tq * width + (i64)head * d;
        const i64 obase = b * p.tq * hd + (i64)head * d;
        const i64 lrow = (b * p.h + head) * p.tq;
        for (i64 i0 = qlo; i0 < qhi; i0 += BQ) {
            // The previous query tile's readers of Qs, dOs, Ps, dSs, Ls and Ds are done.
            __syncthreads();
            const int valid = (int)min((i64)BQ, qhi - i0);
            load_tile<DMAX, BQ>(Qs, qkv, qbase + i0 * width, width, 0, valid, d);
            load_tile<DMAX, BQ>(dOs, dout, obase + i0 * hd, hd, 0, valid, d);
            for (int q = tid; q < BQ; q += FA_THREADS) {
                Ls[q] = q < valid ? ld(lse, lrow + i0 + q) : 0.0f;
                Ds[q] = q < valid ? di[lrow + i0 + q] : 0.0f;
            }
            __syncthreads();

            // Sᵀ and dPᵀ for keys ty + 16a, queries tx + 16c.
            float s[RK][CQ], dp[RK][CQ];
#pragma unroll
            for (int a = 0; a < RK; ++a)
#pragma unroll
                for (int c = 0; c < CQ; ++c) s[a][c] = dp[a][c] = 0.0f;
            for (int e = 0; e < d; ++e) {
                float ka[RK], va[RK], qc[CQ], oc[CQ];
#pragma unroll
                for (int a = 0; a < RK; ++a) {
                    ka[a] = Ks[(ty + 16 * a) * LD + e];
                    va[a] = Vs[(ty + 16 * a) * LD + e];
                }
#pragma unroll
                for (int c = 0; c < CQ; ++c) {
                    qc[c] = Qs[(tx + 16 * c) * LD + e];
                    oc[c] = dOs[(tx + 16 * c) * LD + e];
                }
#pragma unroll
                for (int a = 0; a < RK; ++a)
#pragma unroll
                    for (int c = 0; c < CQ; ++c) {
                        s[a][c] = fmaf(ka[a], qc[c], s[a][c]);
                        dp[a][c] = fmaf(va[a], oc[c], dp[a][c]);
                    }
            }
#pragma unroll
            for (int a = 0; a < RK; ++a) {
                const int kk = ty + 16 * a;
                const i64 j = j0 + kk;
#pragma unroll
                for (int c = 0; c < CQ; ++c) {
                    const int q = tx + 16 * c;
                    const i64 i = i0 + q;
                    const bool vis = j < j1 && q < valid &&
                                     attn_visible(p.causal, p.window, off + i, j);
                    const float pv = vis ? expf(s[a][c] * p.scale - Ls[q]) : 0.0f;
                    Ps[kk * PLD + q] = pv;
                    dSs[kk * PLD + q] = pv * (dp[a][c] - Ds[q]);
                }
            }
            __syncthreads();

            // dV += Pᵀ·dO and dK += dSᵀ·Q (scaled at the end): keys ty + 16a, dims tx + 16c.
            for (int q = 0; q < valid; ++q) {
                float pa[RK], sa[RK], oc[CD], qc[CD];
#pragma unroll
                for (int a = 0; a < RK; ++a) {
                    pa[a] = Ps[(ty + 16 * a) * PLD + q];
                    sa[a] = dSs[(ty + 16 * a) * PLD + q];
                }
#pragma unroll
                for (int c = 0; c < CD; ++c) {
                    oc[c] = dOs[q * LD + tx + 16 * c];
                    qc[c] = Qs[q * LD + tx + 16 * c];
                }
#pragma unroll
                for (int a = 0; a < RK; ++a)
#pragma unroll
                    for (int c = 0; c < CD; ++c) {
                        dv[a][c] = fmaf(pa[a], oc[c], dv[a][c]);
                        dk[a][c] = fmaf(sa[a], qc[c], dk[a][c]);
                    }
            }

            // dQ += dS·K/√D: queries ty + 16a, dims tx + 16c, added into the f32 scratch.
            constexpr int RQ = BQ / 16;
            float dqa[RQ][CD];
#pragma unroll
            for (int a = 0; a < RQ; ++a)
#pragma unroll
                for (int c = 0; c < CD; ++c) dqa[a][c] = 0.0f;
            const int nk = j1 - j0;
            for (int kk = 0; kk < nk; ++kk) {
                float sa[RQ], kc[CD];
#pragma unroll
                for (int a = 0; a < RQ; ++a) sa[a] = dSs[kk * PLD + ty + 16 * a];
#pragma unroll
                for (int c = 0; c < CD; ++c) kc[c] = Ks[kk * LD + tx + 16 * c];
#pragma unroll
                for (int a = 0; a < RQ; ++a)
#pragma unroll
                    for (int c = 0; c < CD; ++c) dqa[a][c] = fmaf(sa[a], kc[c], dqa[a][c]);
            }
#pragma unroll
            for (int a = 0; a < RQ; ++a) {
                const int q = ty + 16 * a;
                if (q >= valid) continue;
                float* dst = dq + (b * p.tq + i0 + q) * hd + (i64)head * d;
#pragma unroll
                for (int c = 0; c < CD; ++c) {
                    const int e = tx + 16 * c;
                    if (e < d) atomicAdd(dst + e, dqa[a][c] * p.scale);
                }
            }
        }
    }

    // Each key of the tile is written once, by this block.
#pragma unroll
    for (int a = 0; a < RK; ++a) {
        const int j = j0 + ty + 16 * a;
        if (j >= j1) continue;
        const i64 row = (b * p.tk + j) * width;
#pragma unroll
        for (int c = 0; c < CD; ++c) {
            const int e = tx + 16 * c;
            if (e >= d) continue;
            st(dqkv, row + (i64)(p.h + g) * d + e, dk[a][c] * p.scale);
            st(dqkv, row + (i64)(p.h + p.h_kv + g) * d + e, dv[a][c]);
        }
    }
}

#define FLASH_BWD_PARAMS                                                                         \
    Buf qkv, Buf dout, Buf lse, const float* di, float* dq, Buf dqkv, int h, int h_kv, int tq,    \
        int tk, int d, int causal, i64 window, float scale
#define FLASH_BWD_ARGS                                                                           \
    qkv, dout, lse, di, dq, dqkv, BwdArgs{h, h_kv, tq, tk, d, causal, window, scale}

extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_bwd_d64(FLASH_BWD_PARAMS) {
    flash_bwd<64, 64, 64>(FLASH_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_bwd_d128(FLASH_BWD_PARAMS) {
    flash_bwd<128, 64, 32>(FLASH_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_bwd_d256(FLASH_BWD_PARAMS) {
    flash_bwd<256, 32, 32>(FLASH_BWD_ARGS);
}
