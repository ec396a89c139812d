// The gated MLPs SwiGLU (tperf_core::ops::swiglu; ACT_SILU, host side ops/swiglu.rs) and
// GeGLU (tperf_core::ops::geglu; ACT_GELU, ops/geglu.rs) in one file, launched by ops/gated.rs:
// one kernel pair that differs only in the activation code `kind`, so the two ops share it
// rather than each keeping a copy.
// h (rows, 2F) = [g | u], y (rows, F) = act(g)·u; the backward writes both halves of dh:
// dg = dy·u·act'(g), du = dy·act(g).
//
// Grid (x, y): y strides over the rows, x over a row's columns, so no element index is divided
// back into (row, column). Where F is a multiple of 4 and the buffers 16-byte aligned, a thread
// takes 4 consecutive columns with one vector access per operand (16 bytes for f32, 8 for the
// 16-bit dtypes); otherwise one column at a time.
__device__ __forceinline__ bool gated_vec(i64 f, const void* a, const void* b, const void* c) {
    return (f & 3) == 0 && (((unsigned long long)a | (unsigned long long)b | (unsigned long long)c) & 15) == 0;
}

extern "C" __global__ void gated_forward(Buf h, Buf y, i64 rows, i64 f, int kind) {
    const bool vec = gated_vec(f, h.p, y.p, h.p);
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 r = blockIdx.y; r < rows; r += gridDim.y) {
        const i64 hg = r * 2 * f, hu = hg + f, yr = r * f;
        if (vec) {
            for (i64 j = 4 * ((i64)blockIdx.x * blockDim.x + threadIdx.x); j < f; j += 4 * stride) {
                float g[4], u[4], o[4];
                ld4(h.p, h.dt, hg + j, g);
                ld4(h.p, h.dt, hu + j, u);
#pragma unroll
                for (int e = 0; e < 4; e++) o[e] = act_fwd(kind, g[e]) * u[e];
                st4(y.p, y.dt, yr + j, o);
            }
        } else {
            for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < f; j += stride) {
                st(y, yr + j, act_fwd(kind, ld(h, hg + j)) * ld(h, hu + j));
            }
        }
    }
}

extern "C" __global__ void gated_backward(Buf h, Buf dy, Buf dh, i64 rows, i64 f, int kind) {
    const bool vec = gated_vec(f, h.p, dy.p, dh.p);
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 r = blockIdx.y; r < rows; r += gridDim.y) {
        const i64 hg = r * 2 * f, hu = hg + f, yr = r * f;
        if (vec) {
            for (i64 j = 4 * ((i64)blockIdx.x * blockDim.x + threadIdx.x); j < f; j += 4 * stride) {
                float g[4], u[4], d[4], dg[4], du[4];
                ld4(h.p, h.dt, hg + j, g);
                ld4(h.p, h.dt, hu + j, u);
                ld4(dy.p, dy.dt, yr + j, d);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    dg[e] = d[e] * u[e] * act_grad(kind, g[e]);
                    du[e] = d[e] * act_fwd(kind, g[e]);
                }
                st4(dh.p, dh.dt, hg + j, dg);
                st4(dh.p, dh.dt, hu + j, du);
            }
        } else {
            for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < f; j += stride) {
                float g = ld(h, hg + j), u = ld(h, hu + j), d = ld(dy, yr + j);
                st(dh, hg + j, d * u * act_grad(kind, g));
                st(dh, hu + j, d * act_fwd(kind, g));
            }
        }
    }
}
