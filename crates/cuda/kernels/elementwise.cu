// Elementwise and data-movement kernels: activations, the gated MLPs (SwiGLU, GeGLU), the residual add, casts, RoPE,
// the embedding gather and its scatter-add, the KV-cache append, take-last, and the bias
// gradient (a column sum). Each mirrors its reference in tperf_core::ops.

extern "C" __global__ void activation_forward(Buf x, Buf y, i64 n, int kind) {
    FOR_EACH(i, n) st(y, i, act_fwd(kind, ld(x, i)));
}

// dx = dy·act'(x)
extern "C" __global__ void activation_backward(Buf x, Buf dy, Buf dx, i64 n, int kind) {
    FOR_EACH(i, n) st(dx, i, ld(dy, i) * act_grad(kind, ld(x, i)));
}

// The gated MLPs: h (rows, 2F) = [g | u], y (rows, F) = act(g)·u with `kind` an ACT_* code:
// SwiGLU (ACT_SILU, ops/elementwise.rs) and GeGLU (ACT_GELU, ops/geglu.rs). The backward writes
// both halves of dh: dg = dy·u·act'(g), du = dy·act(g).
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

extern "C" __global__ void residual_add(Buf a, Buf b, Buf y, i64 n) {
    FOR_EACH(i, n) st(y, i, ld(a, i) + ld(b, i));
}

// Conversion between storage dtypes: the rounding happens in st.
extern "C" __global__ void cast(Buf src, Buf dst, i64 n) {
    FOR_EACH(i, n) st(dst, i, ld(src, i));
}

// RoPE in place on the query and key heads of qkv (rows, (Hq + 2Hkv)·D); `sign` −1 is the
// backward (the inverse rotation). The angle pos·f (f = θ^(−2i/D) through rope_inv_freq's
// scaling bands) and its cosine and sine are taken in double, as the reference does, then
// rounded to f32.
extern "C" __global__ void rope_rows(Buf qkv, i64 rows, int t, int pos_offset, int rotated_heads,
                                     int row_width, int d, double theta, double factor,
                                     double keep_below, double divide_above, double sign,
                                     const int* step) {
    if (step) pos_offset = step[0]; // a replayed decode step's position (graph.rs)
    i64 pairs = (i64)rotated_heads * (d / 2);
    FOR_EACH(idx, rows * pairs) {
        i64 row = idx / pairs, rem = idx % pairs;
        int head = (int)(rem / (d / 2)), i = (int)(rem % (d / 2));
        int pos = (int)(row % t) + pos_offset;
        double a = sign * (double)pos * rope_inv_freq(theta, i, d, factor, keep_below, divide_above);
        float c = (float)cos(a), s = (float)sin(a);
        i64 base = row * row_width + (i64)head * d + 2 * i;
        float x0 = ld(qkv, base), x1 = ld(qkv, base + 1);
        st(qkv, base, x0 * c - x1 * s);
        st(qkv, base + 1, x0 * s + x1 * c);
    }
}

// out (n, C) = wte[tokens]·s + position term. positions: 0 none, 1 learned (wpe), 2 sinusoidal.
extern "C" __global__ void embedding_forward(Buf tokens, Buf wte, Buf wpe, Buf out, i64 n, int c,
                                             int t, int pos_offset, int positions, float scale,
                                             const int* step) {
    if (step) pos_offset = step[0]; // a replayed decode step's position (graph.rs)
    FOR_EACH(idx, n * c) {
        i64 i = idx / c;
        int j = (int)(idx % c);
        int tok = ld_i32(tokens, i);
        int p = (int)(i % t) + pos_offset;
        float v = ld(wte, (i64)tok * c + j) * scale;
        if (positions == 1) {
            v += ld(wpe, (i64)p * c + j);
        } else if (positions == 2) {
            double ii = (double)(j / 2);
            double angle = (double)p * exp(-(2.0 * ii / (double)c) * log(10000.0));
            v += (float)((j % 2 == 0) ? sin(angle) : cos(angle));
        }
        st(out, idx, v);
    }
}

// dwte[tokens[i]] += dout[i]·s (and dwpe[pos(i)] += dout[i]). Two tokens may share a row, so the
// adds are atomic; the gradients are f32 (the mixed-precision policy keeps them so).
extern "C" __global__ void embedding_backward(Buf tokens, Buf dout, float* dwte, float* dwpe,
                                              i64 n, int c, int t, int pos_offset, float scale) {
    FOR_EACH(idx, n * c) {
        i64 i = idx / c;
        int j = (int)(idx % c);
        int tok = ld_i32(tokens, i);
        float g = ld(dout, idx);
        atomicAdd(&dwte[(i64)tok * c + j], g * scale);
        if (dwpe) {
            int p = (int)(i % t) + pos_offset;
            atomicAdd(&dwpe[(i64)p * c + j], g);
        }
    }
}

// Copies the new tokens' keys and values from qkv (B·t_new, (Hq + 2Hkv)·D) into the caches
// (B, Hkv, capacity, D) at positions pos..pos + t_new.
extern "C" __global__ void kv_append(Buf qkv, Buf kc, Buf vc, int b, int t_new, int h_q, int h_kv,
                                     int d, int pos, int capacity, const int* step) {
    if (step) pos = step[0]; // a replayed decode step's position (graph.rs)
    i64 total = (i64)b * t_new * h_kv * d;
    i64 width = (i64)(h_q + 2 * h_kv) * d;
    FOR_EACH(idx, total) {
        int e = (int)(idx % d);
        i64 r = idx / d;
        int g = (int)(r % h_kv);
        r /= h_kv;
        int i = (int)(r % t_new);
        int bb = (int)(r / t_new);
        i64 row = ((i64)bb * t_new + i) * width;
        i64 dst = (((i64)bb * h_kv + g) * capacity + pos + i) * d + e;
        st(kc, dst, ld(qkv, row + (i64)(h_q + g) * d + e));
        st(vc, dst, ld(qkv, row + (i64)(h_q + h_kv + g) * d + e));
    }
}

// out (B, C) = x[b, T − 1, :]
extern "C" __global__ void take_last(Buf x, Buf out, int b, int t, int c) {
    FOR_EACH(idx, (i64)b * c) {
        i64 bb = idx / c, j = idx % c;
        st(out, idx, ld(x, (bb * t + t - 1) * c + j));
    }
}

// db[j] = Σ_rows dy[r, j]: one thread per column, rows strided through (coalesced across the
// columns of a warp). f32 accumulation.
extern "C" __global__ void column_sum(Buf dy, Buf db, i64 rows, i64 cols) {
    FOR_EACH(j, cols) {
        float s = 0.0f;
        for (i64 r = 0; r < rows; r++) s += ld(dy, r * cols + j);
        st(db, j, s);
    }
}
