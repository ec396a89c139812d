// The gated MLPs SwiGLU (tperf_core::ops::swiglu; ACT_SILU, host side ops/elementwise.rs) and
// GeGLU (tperf_core::ops::geglu; ACT_GELU, ops/geglu.rs) in one file: one kernel pair that differs
// only in the activation code `kind`, so the two ops share it rather than each keeping a copy.
// h (rows, 2F) = [g | u], y (rows, F) = act(g)·u; the backward writes both halves of dh:
// dg = dy·u·act'(g), du = dy·act(g).
//
// Bytes (16-bit h, y): the forward reads 4F and writes 2F a row, the backward reads 6F and
// writes 4F: 63 and 105 MB at the 2.7B seed's 1024 × 10240, 13 and 22 µs at 4.8 TB/s.
//
// Grid (x, y): x covers a row's columns, y groups of GATED_FWD_ROWS (GATED_BWD_ROWS) rows,
// grid-stride past the grid's limit, so no element index is divided back into (row, column).
// Where F is a multiple of 8 and the buffers 16-byte aligned, a thread takes 8 consecutive
// columns of each of its rows with one 16-byte access per operand and row (two for f32), every
// load of its rows issued before the first is used: 8 (forward) or 6 (backward) 16-byte loads in
// flight a thread. The kernels before took 4 columns of one row, two or three 8-byte loads a
// thread, and measured 2.1× and 2.4× their roofline on the H200. Otherwise one column at a time.
#define GATED_THREADS 256
#define GATED_FWD_ROWS 4
#define GATED_BWD_ROWS 2

__device__ __forceinline__ bool gated_vec(i64 f, const void* a, const void* b, const void* c) {
    return (f & 7) == 0 && (((unsigned long long)a | (unsigned long long)b | (unsigned long long)c) & 15) == 0;
}

extern "C" __global__ void __launch_bounds__(GATED_THREADS)
    gated_forward(Buf h, Buf y, i64 rows, i64 f, int kind) {
    const bool vec = gated_vec(f, h.p, y.p, h.p);
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 r0 = (i64)blockIdx.y * GATED_FWD_ROWS; r0 < rows; r0 += (i64)gridDim.y * GATED_FWD_ROWS) {
        if (vec) {
            for (i64 j = 8 * ((i64)blockIdx.x * blockDim.x + threadIdx.x); j < f; j += 8 * stride) {
                float g[GATED_FWD_ROWS][8], u[GATED_FWD_ROWS][8];
#pragma unroll
                for (int k = 0; k < GATED_FWD_ROWS; k++) {
                    if (r0 + k < rows) {
                        ld8(h, (r0 + k) * 2 * f + j, g[k]);
                        ld8(h, (r0 + k) * 2 * f + f + j, u[k]);
                    }
                }
#pragma unroll
                for (int k = 0; k < GATED_FWD_ROWS; k++) {
                    if (r0 + k < rows) {
                        float o[8];
#pragma unroll
                        for (int e = 0; e < 8; e++) o[e] = act_fwd(kind, g[k][e]) * u[k][e];
                        st8(y, (r0 + k) * f + j, o);
                    }
                }
            }
        } else {
            for (i64 r = r0; r < min(r0 + GATED_FWD_ROWS, rows); r++) {
                const i64 hg = r * 2 * f, hu = hg + f, yr = r * f;
                for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < f; j += stride) {
                    st(y, yr + j, act_fwd(kind, ld(h, hg + j)) * ld(h, hu + j));
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(GATED_THREADS)
    gated_backward(Buf h, Buf dy, Buf dh, i64 rows, i64 f, int kind) {
    const bool vec = gated_vec(f, h.p, dy.p, dh.p);
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 r0 = (i64)blockIdx.y * GATED_BWD_ROWS; r0 < rows; r0 += (i64)gridDim.y * GATED_BWD_ROWS) {
        if (vec) {
            for (i64 j = 8 * ((i64)blockIdx.x * blockDim.x + threadIdx.x); j < f; j += 8 * stride) {
                float g[GATED_BWD_ROWS][8], u[GATED_BWD_ROWS][8], d[GATED_BWD_ROWS][8];
#pragma unroll
                for (int k = 0; k < GATED_BWD_ROWS; k++) {
                    if (r0 + k < rows) {
                        ld8(h, (r0 + k) * 2 * f + j, g[k]);
                        ld8(h, (r0 + k) * 2 * f + f + j, u[k]);
                        ld8(dy, (r0 + k) * f + j, d[k]);
                    }
                }
#pragma unroll
                for (int k = 0; k < GATED_BWD_ROWS; k++) {
                    if (r0 + k < rows) {
                        float dg[8], du[8];
#pragma unroll
                        for (int e = 0; e < 8; e++) {
                            dg[e] = d[k][e] * u[k][e] * act_grad(kind, g[k][e]);
                            du[e] = d[k][e] * act_fwd(kind, g[k][e]);
                        }
                        st8(dh, (r0 + k) * 2 * f + j, dg);
                        st8(dh, (r0 + k) * 2 * f + f + j, du);
                    }
                }
            }
        } else {
            for (i64 r = r0; r < min(r0 + GATED_BWD_ROWS, rows); r++) {
                const i64 hg = r * 2 * f, hu = hg + f, yr = r * f;
                for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < f; j += stride) {
                    float g = ld(h, hg + j), u = ld(h, hu + j), d = ld(dy, yr + j);
                    st(dh, hg + j, d * u * act_grad(kind, g));
                    st(dh, hu + j, d * act_fwd(kind, g));
                }
            }
        }
    }
}
