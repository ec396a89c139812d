// Cross-entropy fused with softmax over logits z (n, V) of any storage dtype, mirroring
// crates/cpu/src/kernels/cross_entropy.rs:
//   forward   loss[i] = logsumexp(z[i]) − z[i][t_i]                    (f32 per row)
//   backward  dz[i][j] = S·exp(z[i][j] − lse_i)/n, minus S/n at j = t_i (in place when dz is z)
//             with S the loss scale (1 = none), passed folded into the one factor `scale` = S/n
//
// A row is reduced by a group of threads: the whole block (one row per block) for a large
// vocabulary, else one warp (`warp_rows`, which ops/cross_entropy.rs sets below V = 4096: (blockDim.x / 32 rows per block, so a small
// vocabulary does not leave 7 of 8 warps idle). logsumexp is one pass with the online form: each
// thread keeps a running maximum m and Σ exp(x − m), and takes its elements 8 at a time (one
// 16-byte load in a 16-bit dtype) when `vec`: the 8's maximum first, one rescale of the sum, then
// 8 exponentials, instead of a compare and a rescale per element. The group then merges the
// threads' pairs. exp never sees a positive argument, so nothing overflows; exponentials are the
// hardware's exp2 on x·log₂e (__expf), relative error ~2⁻²¹ + |x|·2⁻²⁴, within the f32
// tolerance. Targets are checked to lie in 0..V on the host before a launch.
//
// Vector accesses need 16-byte alignment: a row starts at z + i·V, so for V not a multiple of 8
// each row's first elements up to the next multiple of 8 (and the last few) go one at a time.

// Adds x to the running (max, sum) pair. A −∞ logit adds nothing (exp(−∞) = 0); skipping it
// while the maximum is still −∞ avoids the NaN of −∞ − (−∞). A NaN logit makes the sum NaN.
__device__ __forceinline__ void lse_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * __expf(m - x) + 1.0f;
        m = x;
    } else if (m != NEG_INF) {
        s += __expf(x - m);
    }
}

// Adds 8 values: one rescale to the larger maximum, then their exponentials. fmaxf drops a NaN
// from the maximum, but its exponential still makes the sum NaN.
__device__ __forceinline__ void lse_add8(float& m, float& s, const float x[8]) {
    float hi = m;
#pragma unroll
    for (int e = 0; e < 8; e++) hi = fmaxf(hi, x[e]);
    if (hi == NEG_INF) return; // all −∞ (so far): nothing to add
    float acc = s * __expf(m - hi);
#pragma unroll
    for (int e = 0; e < 8; e++) acc += __expf(x[e] - hi);
    s = acc;
    m = hi;
}

// Merges pair (m2, s2) into (m, s).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    float hi = fmaxf(m, m2);
    if (hi == NEG_INF) return; // both empty: s and s2 are 0
    s = s * __expf(m - hi) + s2 * __expf(m2 - hi);
    m = hi;
}

__device__ __forceinline__ void warp_lse_merge(float& m, float& s) {
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
}

// logsumexp of the group's pairs; every thread of the group gets it. For a block (blockDim.x a
// multiple of 32) the trailing barrier lets the caller overwrite what it read before.
__device__ float group_lse(float m, float s, bool whole_block) {
    __shared__ float sm[32], ss[32];
    warp_lse_merge(m, s);
    if (whole_block) {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
        if (lane == 0) {
            sm[warp] = m;
            ss[warp] = s;
        }
        __syncthreads();
        m = lane < warps ? sm[lane] : NEG_INF;
        s = lane < warps ? ss[lane] : 0.0f;
        warp_lse_merge(m, s);
        __syncthreads();
    }
    return m + logf(s);
}

// The row a thread's group reduces, the thread's index in it and the group's size.
struct CeGroup {
    i64 row;
    int tid, size;
    bool whole_block;
};

__device__ __forceinline__ CeGroup ce_group(int warp_rows) {
    CeGroup g;
    g.whole_block = !warp_rows;
    if (warp_rows) {
        g.row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        g.tid = threadIdx.x & 31;
        g.size = 32;
    } else {
        g.row = blockIdx.x;
        g.tid = threadIdx.x;
        g.size = blockDim.x;
    }
    return g;
}

// The row's elements split for vector access: [base, base + lead) and [body_end, base + v) one
// at a time, [base + lead, body_end) 8 at a time from 16-byte aligned indices.
struct CeSplit {
    i64 lead_end, body_end, end;
};

__device__ __forceinline__ CeSplit ce_split(i64 base, int v, int vec) {
    CeSplit p;
    p.end = base + v;
    if (!vec) {
        p.lead_end = p.body_end = base;
        return p;
    }
    p.lead_end = min(p.end, (base + 7) & ~(i64)7);
    p.body_end = p.lead_end + ((p.end - p.lead_end) & ~(i64)7);
    return p;
}

// logsumexp of row g.row of z (every thread of the group gets it).
__device__ __forceinline__ float ce_row_lse(const Buf& z, const CeGroup& g, const CeSplit& p, i64 base) {
    float m = NEG_INF, s = 0.0f;
#pragma unroll 4
    for (i64 j = p.lead_end + 8 * (i64)g.tid; j < p.body_end; j += 8 * (i64)g.size) {
        float x[8];
        ld8(z, j, x);
        lse_add8(m, s, x);
    }
    for (i64 j = base + g.tid; j < p.lead_end; j += g.size) lse_add(m, s, ld(z, j));
    for (i64 j = p.body_end + g.tid; j < p.end; j += g.size) lse_add(m, s, ld(z, j));
    return group_lse(m, s, g.whole_block);
}

extern "C" __global__ void cross_entropy_forward(Buf z, Buf targets, Buf losses, i64 n, int v,
                                                 int warp_rows, int vec) {
    const CeGroup g = ce_group(warp_rows);
    if (g.row >= n) return; // a whole warp (warp_rows) or a whole block: no barrier is skipped
    const i64 base = g.row * v;
    const float lse = ce_row_lse(z, g, ce_split(base, v, vec), base);
    if (g.tid == 0) st(losses, g.row, lse - ld(z, base + ld_i32(targets, g.row)));
}

// z and dz may be the same buffer: every element is read for the logsumexp before the group's
// reduction, then read and overwritten by the one thread that read it first.
extern "C" __global__ void cross_entropy_backward(Buf z, Buf targets, Buf dz, i64 n, int v,
                                                  float scale, int warp_rows, int vec) {
    const CeGroup g = ce_group(warp_rows);
    if (g.row >= n) return;
    const i64 base = g.row * v;
    const CeSplit p = ce_split(base, v, vec);
    const float lse = ce_row_lse(z, g, p, base);
    const i64 t = base + ld_i32(targets, g.row);
#pragma unroll 4
    for (i64 j = p.lead_end + 8 * (i64)g.tid; j < p.body_end; j += 8 * (i64)g.size) {
        float x[8];
        ld8(z, j, x);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            x[e] = __expf(x[e] - lse) * scale;
            if (j + e == t) x[e] -= scale;
        }
        st8(dz, j, x);
    }
    for (int part = 0; part < 2; part++) {
        const i64 from = part == 0 ? base : p.body_end, to = part == 0 ? p.lead_end : p.end;
        for (i64 j = from + g.tid; j < to; j += g.size) {
            float x = __expf(ld(z, j) - lse) * scale;
            if (j == t) x -= scale;
            st(dz, j, x);
        }
    }
}
