// Cross-entropy fused with softmax over logits z (n, V) of any storage dtype, one block per row,
// mirroring crates/cpu/src/kernels/cross_entropy.rs:
//   forward   loss[i] = logsumexp(z[i]) − z[i][t_i]                    (f32 per row)
//   backward  dz[i][j] = S·exp(z[i][j] − lse_i)/n, minus S/n at j = t_i (in place when dz is z)
//             with S the loss scale (1 = none), passed folded into the one factor `scale` = S/n
//
// logsumexp is taken in one pass with the online form: each thread keeps a running maximum m and
// Σ exp(x − m), rescaling the sum when the maximum grows; the block then merges the threads'
// pairs. exp never sees a positive argument, so nothing overflows. Targets are checked to lie in
// 0..V on the host before a launch.

// Adds x to the running (max, sum) pair. A −∞ logit adds nothing (exp(−∞) = 0); skipping it
// while the maximum is still −∞ avoids the NaN of −∞ − (−∞). A NaN logit makes the sum NaN.
__device__ __forceinline__ void lse_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.0f;
        m = x;
    } else if (m != NEG_INF) {
        s += expf(x - m);
    }
}

// Merges pair (m2, s2) into (m, s).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    float hi = fmaxf(m, m2);
    if (hi == NEG_INF) return;  // both empty: s and s2 are 0
    s = s * expf(m - hi) + s2 * expf(m2 - hi);
    m = hi;
}

// logsumexp of the block's pairs (blockDim.x a multiple of 32); every thread gets it. The
// trailing barrier lets the caller overwrite what it read before.
__device__ float block_lse(float m, float s) {
    __shared__ float sm[32], ss[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    m = lane < warps ? sm[lane] : NEG_INF;
    s = lane < warps ? ss[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    __syncthreads();
    return m + logf(s);
}

__device__ __forceinline__ float row_lse(const Buf& z, i64 base, int v) {
    float m = NEG_INF, s = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) lse_add(m, s, ld(z, base + j));
    return block_lse(m, s);
}

extern "C" __global__ void cross_entropy_forward(Buf z, Buf targets, Buf losses, int v) {
    const i64 row = blockIdx.x;
    const i64 base = row * v;
    const float lse = row_lse(z, base, v);
    if (threadIdx.x == 0) st(losses, row, lse - ld(z, base + ld_i32(targets, row)));
}

// z and dz may be the same buffer: every element is read for the logsumexp before the block's
// barriers, then read and overwritten by one thread.
extern "C" __global__ void cross_entropy_backward(Buf z, Buf targets, Buf dz, int v, float scale) {
    const i64 row = blockIdx.x;
    const i64 base = row * v;
    const float lse = row_lse(z, base, v);
    const int t = ld_i32(targets, row);
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float p = expf(ld(z, base + j) - lse) * scale;
        if (j == t) p -= scale;
        st(dz, base + j, p);
    }
}
