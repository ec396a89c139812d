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
// Backward: norm_backward_rows (a warp per row, below) where a warp's column sums fit in shared
// memory; for wider rows, norm_backward: a grid of G blocks strides over the rows (block b takes
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

// norm_backward with one warp per row: the same arithmetic, for rows whose per-warp column sums
// fit in shared memory (ops/norms.rs picks it). A block of W warps strides over the rows, warp w
// of block b taking rows bW + w, bW + w + GW, ...: the row's two sums are warp shuffles (no
// block barrier per row, unlike one block per row), and every row of the grid is in flight at
// once at the seed's sizes (1024 rows = 128 blocks of 8 warps). Lane l handles columns
// 8l .. 8l + 7, 8l + 256 .. when `vec` (C a multiple of 8, every pointer 16-byte aligned: one
// 16-byte load per bf16 operand, two per f32 one), else columns l, l + 32, ... one at a time.
// The second pass reads the row again, from L1. dγ and dβ of the warp's rows accumulate in the
// warp's own slice of shared memory (width floats, written only by its lanes, each its own
// columns); at the end the block adds its W slices in a fixed order into partials[b], which
// norm_weight_grads sums as before. No atomics: deterministic.
extern "C" __global__ void norm_backward_rows(Buf x, Buf stats, Buf gamma, Buf dy, Buf dx,
                                              float* partials, i64 rows, int c, int rms,
                                              int has_beta, int accumulate, int vec) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int width = has_beta ? 2 * c : c;
    float* acc = smem + (i64)warp * width;
    for (int j = lane; j < width; j += 32) acc[j] = 0.0f;
    __syncwarp();
    const float cf = (float)c;
    for (i64 row = (i64)blockIdx.x * warps + warp; row < rows; row += (i64)gridDim.x * warps) {
        const i64 base = row * c;
        const float mean = rms ? 0.0f : ld(stats, 2 * row);
        const float rstd = rms ? ld(stats, row) : ld(stats, 2 * row + 1);
        float s_dn = 0.0f, s_dn_xhat = 0.0f;
        if (vec) {
            for (int j = 8 * lane; j < c; j += 256) {
                float g[8], d[8], xv[8];
                ld8(gamma, j, g);
                ld8(dy, base + j, d);
                ld8(x, base + j, xv);
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    float dn = g[e] * d[e];
                    s_dn += dn;
                    s_dn_xhat += dn * ((xv[e] - mean) * rstd);
                }
            }
        } else {
            for (int j = lane; j < c; j += 32) {
                float dn = ld(gamma, j) * ld(dy, base + j);
                s_dn += dn;
                s_dn_xhat += dn * ((ld(x, base + j) - mean) * rstd);
            }
        }
        const float mean_dn = rms ? 0.0f : warp_sum(s_dn) / cf;
        const float mean_dn_xhat = warp_sum(s_dn_xhat) / cf;
        if (vec) {
            for (int j = 8 * lane; j < c; j += 256) {
                float g[8], d[8], xv[8], out[8], prev[8];
                ld8(gamma, j, g);
                ld8(dy, base + j, d);
                ld8(x, base + j, xv);
                if (accumulate) ld8(dx, base + j, prev);
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    float xhat = (xv[e] - mean) * rstd;
                    float v = rstd * (g[e] * d[e] - mean_dn - xhat * mean_dn_xhat);
                    out[e] = accumulate ? prev[e] + v : v;
                    acc[j + e] += d[e] * xhat;
                    if (has_beta) acc[c + j + e] += d[e];
                }
                st8(dx, base + j, out);
            }
        } else {
            for (int j = lane; j < c; j += 32) {
                float g = ld(dy, base + j);
                float xhat = (ld(x, base + j) - mean) * rstd;
                float v = rstd * (ld(gamma, j) * g - mean_dn - xhat * mean_dn_xhat);
                if (accumulate) v = ld(dx, base + j) + v;
                st(dx, base + j, v);
                acc[j] += g * xhat;
                if (has_beta) acc[c + j] += g;
            }
        }
    }
    __syncthreads();
    float* out = partials + (i64)blockIdx.x * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        float t = 0.0f;
        for (int w = 0; w < warps; w++) t += smem[(i64)w * width + j];
        out[j] = t;
    }
}

// dγ[j] = Σ_b partials[b][j] (and dβ from columns c..2c), overwritten. Block (32, NWG_ROWS):
// 32 columns, the blocks' partials split between NWG_ROWS thread rows, whose sums are added in a
// fixed order.
#define NWG_ROWS 8
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
