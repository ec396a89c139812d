// LayerNorm and RMSNorm, forward (plain, or with the residual add fused in front) and backward.
// Each mirrors the CPU backend (crates/cpu/src/kernels/{layernorm,rmsnorm}.rs): statistics in
// f32, two passes for the variance (mean first, then squared deviations), rstd = 1/√(var + ε).
//
// One kernel serves both norms: with `rms` set the mean is taken as 0, which makes every
// expression below the RMSNorm one exactly ((x − 0)² = x², (x − 0)·rstd = x·rstd, dn − 0 = dn).
//
// Forward: one block per row. The row is read again on each pass (from L1/L2) instead of being
// staged, and every output element is written in the last pass by the thread that read its
// inputs there, after the block reductions' barriers: so an output may alias an input.
//
// Vectorised variants of both (norm_forward_vec, norm_backward_vec, below) run where C is a
// multiple of 8 and the pointers allow 16-byte accesses; the plain kernels take every other case.
//
// Backward (norm_backward): a grid of G blocks strides over the rows (block b takes
// rows b, b + G, ...), writes dx, and sums its rows' dγ = Σ dy·x̂ and dβ = Σ dy per column; the
// G partial sums go to a scratch buffer and `norm_weight_grads` adds them up in a fixed order. No
// atomics: the result is deterministic.

// The norm's input at i: x, or a + b when the residual add is fused. The sum is recomputed in
// f32 on every pass, as the CPU normalises the f32 sum before it is rounded to its storage.
__device__ __forceinline__ float norm_in(const Buf& a, const Buf& b, int residual, i64 i) {
    return residual ? ld(a, i) + ld(b, i) : ld(a, i);
}

// a (rows, c) [+ b] → y = (x − μ)·rstd·γ [+ β]; sum = a + b when residual.
// stats per row: (μ, rstd) for LayerNorm, (rstd) for RMSNorm.
extern "C" __global__ void norm_forward(Buf a, Buf b, Buf gamma, Buf beta, Buf sum, Buf y,
                                        Buf stats, int c, int rms, int residual, int has_beta,
                                        float eps) {
    PDL_ENTRY();
    __shared__ float scratch[32];
    const i64 row = blockIdx.x;
    const i64 base = row * c;
    const float cf = (float)c;
    float mean = 0.0f;
    if (!rms) {
        float s = 0.0f;
        for (int j = threadIdx.x; j < c; j += blockDim.x) s += norm_in(a, b, residual, base + j);
        mean = block_sum(s, scratch) / cf;
    }
    float q = 0.0f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float d = norm_in(a, b, residual, base + j) - mean;
        q += d * d;
    }
    const float var = block_sum(q, scratch) / cf;
    const float rstd = 1.0f / sqrtf(var + eps);
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float x = norm_in(a, b, residual, base + j);
        if (residual) st(sum, base + j, x);
        float v = (x - mean) * rstd * ld(gamma, j);
        if (has_beta) v += ld(beta, j);
        st(y, base + j, v);
    }
    if (threadIdx.x == 0) {
        if (rms) {
            st(stats, row, rstd);
        } else {
            st(stats, 2 * row, mean);
            st(stats, 2 * row + 1, rstd);
        }
    }
}

// dx = rstd·(dn − mean(dn) − x̂·mean(dn·x̂)), dn = γ·dy, x̂ = (x − μ)·rstd; added into dx when
// `accumulate`. Block b's column sums land in partials[b·width ..][..width]: dγ in [0, c), dβ in
// [c, 2c) when has_beta (width = c or 2c).
//
// The sums accumulate in dynamic shared memory (width floats), or straight in the block's slice
// of `partials` when `acc_global` (rows too wide for shared memory). Thread t only ever updates
// columns t, t + blockDim.x, ... of each half, so the updates need no synchronisation; the
// barriers around them order the zeroing and the final copy, which split the slots differently.
extern "C" __global__ void norm_backward(Buf x, Buf stats, Buf gamma, Buf dy, Buf dx,
                                         float* partials, i64 rows, int c, int rms, int has_beta,
                                         int accumulate, int acc_global) {
    extern __shared__ float smem[];
    __shared__ float scratch[32];
    const int width = has_beta ? 2 * c : c;
    float* out = partials + (i64)blockIdx.x * width;
    float* acc = acc_global ? out : smem;
    for (int j = threadIdx.x; j < width; j += blockDim.x) acc[j] = 0.0f;
    __syncthreads();
    const float cf = (float)c;
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const i64 base = row * c;
        const float mean = rms ? 0.0f : ld(stats, 2 * row);
        const float rstd = rms ? ld(stats, row) : ld(stats, 2 * row + 1);
        float s_dn = 0.0f, s_dn_xhat = 0.0f;
        for (int j = threadIdx.x; j < c; j += blockDim.x) {
            float dn = ld(gamma, j) * ld(dy, base + j);
            float xhat = (ld(x, base + j) - mean) * rstd;
            s_dn += dn;
            s_dn_xhat += dn * xhat;
        }
        const float mean_dn = rms ? 0.0f : block_sum(s_dn, scratch) / cf;
        const float mean_dn_xhat = block_sum(s_dn_xhat, scratch) / cf;
        for (int j = threadIdx.x; j < c; j += blockDim.x) {
            float g = ld(dy, base + j);
            float xhat = (ld(x, base + j) - mean) * rstd;
            float d = rstd * (ld(gamma, j) * g - mean_dn - xhat * mean_dn_xhat);
            if (accumulate) d = ld(dx, base + j) + d;
            st(dx, base + j, d);
            acc[j] += g * xhat;
            if (has_beta) acc[c + j] += g;
        }
    }
    if (!acc_global) {
        __syncthreads();
        for (int j = threadIdx.x; j < width; j += blockDim.x) out[j] = acc[j];
    }
}

// The vectorised kernels (ops/norms.rs picks them when C is a multiple of 8, C ≤ 8192, and
// every pointer 16-byte aligned): thread t owns the 8-column chunk 8t.. of a row and holds it in
// registers, so a row is read from memory once, by 16-byte loads all in flight together, and the
// statistics' passes run on registers. The one-block-per-row and warp-per-row kernels they
// replaced read the row two or three times with one outstanding load per thread (latency-bound
// on the H200: 15 µs for a 1024 × 2560 bf16 forward, 31 µs for its backward, against ~3 µs of
// traffic). Two chunks a thread (C up to 16384) took the backward to 118 registers, one
// 320-thread block an SM.

// As norm_forward, one block per row.
extern "C" __global__ void __launch_bounds__(1024)
    norm_forward_vec(Buf a, Buf b, Buf gamma, Buf beta, Buf sum, Buf y, Buf stats, int c,
                     int rms, int residual, int has_beta, float eps) {
    PDL_ENTRY();
    __shared__ float scratch[32];
    const i64 row = blockIdx.x;
    const i64 base = row * c;
    const float cf = (float)c;
    const int j = 8 * threadIdx.x;
    const bool mine = j < c;
    float x[8];
    float s = 0.0f;
    if (mine) {
        ld8(a, base + j, x);
        if (residual) {
            float add[8];
            ld8(b, base + j, add);
#pragma unroll
            for (int e = 0; e < 8; e++) x[e] += add[e];
        }
#pragma unroll
        for (int e = 0; e < 8; e++) s += x[e];
    }
    const float mean = rms ? 0.0f : block_sum(s, scratch) / cf;
    float q = 0.0f;
    if (mine) {
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const float d = x[e] - mean;
            q += d * d;
        }
    }
    const float var = block_sum(q, scratch) / cf;
    const float rstd = 1.0f / sqrtf(var + eps);
    if (mine) {
        float g[8], v[8], bt[8];
        ld8(gamma, j, g);
        if (has_beta) ld8(beta, j, bt);
        if (residual) st8(sum, base + j, x);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            v[e] = (x[e] - mean) * rstd * g[e];
            if (has_beta) v[e] += bt[e];
        }
        st8(y, base + j, v);
    }
    if (threadIdx.x == 0) {
        if (rms) {
            st(stats, row, rstd);
        } else {
            st(stats, 2 * row, mean);
            st(stats, 2 * row + 1, rstd);
        }
    }
}

// Σ over the block of N values at once (one pair of barriers for all; blockDim.x a multiple of
// 32); every thread gets each, every value summed in the same order whatever N is.
// `scratch` holds 32·N floats; the trailing barrier lets the caller reuse it.
template <int N> __device__ __forceinline__ void block_sum_n(float* v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int n = 0; n < N; n++) v[n] = warp_sum(v[n]);
    if (lane == 0) {
#pragma unroll
        for (int n = 0; n < N; n++) scratch[32 * n + warp] = v[n];
    }
    __syncthreads();
#pragma unroll
    for (int n = 0; n < N; n++) v[n] = warp_sum(lane < warps ? scratch[32 * n + lane] : 0.0f);
    __syncthreads();
}

// As norm_backward: block b strides over rows b, b + G, ...; the thread's dγ (and dβ) column
// sums stay in registers across its rows and land in partials[b] at the end, which
// norm_weight_grads adds up as before. Σ dn and Σ dn·x̂ share one reduction. How many rows a
// block takes is the host's choice (ops/norms.rs): each pass is a full memory latency after the
// last, so fewer rows a block is faster until the partial sums (G·width floats) cost more.
// A pass takes R rows (b + kG, k < R) at once: every load of the R rows (dy, x, and dx when
// accumulating) is issued before the one reduction of their 2R sums. The first version took a
// row a pass and loaded dx after the reduction, two latencies a row (15.5 µs at 1024 × 2560
// bf16 on the H200, 5× the traffic's time); a prefetch of the next row inside that loop spilled
// at the 64-register cap of 1024 threads. So R = 2 runs where C ≤ 4096 (at most 512 threads:
// norm_backward_vec2, held to 96 registers, 99 unbounded, so that two of the 2.7B seed's
// 320-thread blocks fit an SM), R = 1 above; both give the same bits (the same sums, each
// in the same order, and the rows added into dγ in order).
// dβ's sums are compiled in only where there is a β (the _beta kernels).
template <bool BETA, int R>
__device__ __forceinline__ void norm_backward_vec_impl(Buf x, Buf stats, Buf gamma, Buf dy,
                                                       Buf dx, float* partials, i64 rows, int c,
                                                       int rms, int accumulate) {
    __shared__ float scratch[64 * R];
    const int width = BETA ? 2 * c : c;
    const float cf = (float)c;
    const int j = 8 * threadIdx.x;
    const bool mine = j < c;
    const i64 grid = gridDim.x;
    // Without a β the compiler drops db: nothing reads it.
    float dg[8], db[8], g[8];
#pragma unroll
    for (int e = 0; e < 8; e++) dg[e] = db[e] = 0.0f;
    if (mine) ld8(gamma, j, g);
    for (i64 row0 = blockIdx.x; row0 < rows; row0 += R * grid) {
        float d[R][8], xv[R][8], prev[R][8], mean[R], rstd[R], sums[2 * R];
#pragma unroll
        for (int k = 0; k < R; k++) {
            const i64 row = row0 + k * grid;
            mean[k] = 0.0f;
            rstd[k] = 0.0f;
            if (row < rows) {
                mean[k] = rms ? 0.0f : ld(stats, 2 * row);
                rstd[k] = rms ? ld(stats, row) : ld(stats, 2 * row + 1);
                if (mine) {
                    ld8(dy, row * c + j, d[k]);
                    ld8(x, row * c + j, xv[k]);
                    if (accumulate) ld8(dx, row * c + j, prev[k]);
                }
            }
        }
#pragma unroll
        for (int k = 0; k < R; k++) {
            float s_dn = 0.0f, s_dn_xhat = 0.0f;
            if (mine && row0 + k * grid < rows) {
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    xv[k][e] = (xv[k][e] - mean[k]) * rstd[k]; // x̂ from here on
                    const float t = g[e] * d[k][e];
                    s_dn += t;
                    s_dn_xhat += t * xv[k][e];
                }
            }
            sums[2 * k] = s_dn;
            sums[2 * k + 1] = s_dn_xhat;
        }
        block_sum_n<2 * R>(sums, scratch);
#pragma unroll
        for (int k = 0; k < R; k++) {
            const i64 row = row0 + k * grid;
            if (mine && row < rows) {
                const float mean_dn = rms ? 0.0f : sums[2 * k] / cf;
                const float mean_dn_xhat = sums[2 * k + 1] / cf;
                float out[8];
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    const float v =
                        rstd[k] * (g[e] * d[k][e] - mean_dn - xv[k][e] * mean_dn_xhat);
                    out[e] = accumulate ? prev[k][e] + v : v;
                    dg[e] += d[k][e] * xv[k][e];
                    if (BETA) db[e] += d[k][e];
                }
                st8(dx, row * c + j, out);
            }
        }
    }
    if (!mine) return;
    // 16-byte stores: partials rows are width floats, a multiple of 8, from a 16-byte aligned
    // scratch block.
    float* out = partials + (i64)blockIdx.x * width;
    float4* dst = (float4*)(out + j);
    dst[0] = make_float4(dg[0], dg[1], dg[2], dg[3]);
    dst[1] = make_float4(dg[4], dg[5], dg[6], dg[7]);
    if (BETA) {
        dst = (float4*)(out + c + j);
        dst[0] = make_float4(db[0], db[1], db[2], db[3]);
        dst[1] = make_float4(db[4], db[5], db[6], db[7]);
    }
}

#define NORM_BWD_VEC_PARAMS                                                                      \
    Buf x, Buf stats, Buf gamma, Buf dy, Buf dx, float *partials, i64 rows, int c, int rms,       \
        int accumulate
#define NORM_BWD_VEC_ARGS x, stats, gamma, dy, dx, partials, rows, c, rms, accumulate
extern "C" __global__ void __launch_bounds__(1024) norm_backward_vec(NORM_BWD_VEC_PARAMS) {
    norm_backward_vec_impl<false, 1>(NORM_BWD_VEC_ARGS);
}
extern "C" __global__ void __launch_bounds__(1024) norm_backward_vec_beta(NORM_BWD_VEC_PARAMS) {
    norm_backward_vec_impl<true, 1>(NORM_BWD_VEC_ARGS);
}
extern "C" __global__ void __maxnreg__(96) norm_backward_vec2(NORM_BWD_VEC_PARAMS) {
    norm_backward_vec_impl<false, 2>(NORM_BWD_VEC_ARGS);
}
extern "C" __global__ void __maxnreg__(96) norm_backward_vec2_beta(NORM_BWD_VEC_PARAMS) {
    norm_backward_vec_impl<true, 2>(NORM_BWD_VEC_ARGS);
}

// dγ[j] = Σ_b partials[b][j] (and dβ from columns c..2c), overwritten. Block (32, NWG_ROWS):
// 32 columns, the blocks' partials split between NWG_ROWS thread rows, whose sums are added in a
// fixed order. 32 thread rows (8 before: 3.3 µs for 256 × 2560 partials, 32 dependent-latency
// loads a thread over 80 blocks) leave a thread 8 loads.
#define NWG_ROWS 32
extern "C" __global__ void norm_weight_grads(const float* partials, int blocks, int width, int c,
                                             Buf dgamma, Buf dbeta) {
    __shared__ float tile[NWG_ROWS][32];
    const int j = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (j < width) {
        for (int b = threadIdx.y; b < blocks; b += NWG_ROWS) s += partials[(i64)b * width + j];
    }
    tile[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < width) {
        float t = 0.0f;
        for (int k = 0; k < NWG_ROWS; k++) t += tile[k][threadIdx.x];
        if (j < c) {
            st(dgamma, j, t);
        } else {
            st(dbeta, j - c, t);
        }
    }
}
