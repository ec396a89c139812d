// Naive attention (tperf_core::ops::attention): the score matrix is materialised.
//
// Every product of the three ops and their backwards is one call of attn_gemm, a batched
// strided GEMM whose operands are described by strides alone, so that Q, K and V are read in
// place from the fused qkv buffer or the KV caches, the (B, H, Tq, Tk) score buffers and the
// (B·Tq, H·D) attention output, with no copy:
//
//   C[z](M×N) = alpha · Σ_{r<R} A[z, r](M×K) · B[z, r](K×N)
//
// z runs over batch × heads (nh heads per batch element). Element (m, k) of A[z, r] is at
//   a0 + batch·a_sb + (head / a_hdiv)·a_sh + r·a_sr + m·a_sm + k·a_sk
// and likewise for B (strides b_sk, b_sn) and C (no r, no divisor). The head divisor maps a
// query head to its key/value head under grouped-query attention (H / H_kv); the sum over r
// sums the query heads of a group into one key/value head's gradient. C is overwritten, with
// the whole sum taken in f32 and rounded once to C's dtype, as the CPU backend does.
//
// The scores keep every entry unmasked (the softmax applies the causal / window mask, and
// writes 0 for masked probabilities), exactly as the reference does.

#define GT 64  // tile rows and columns of C
#define GK 16  // depth of one K step
#define GPAD 4 // padding of the shared tiles' rows

extern "C" __global__ void __launch_bounds__(256)
    attn_gemm(Buf A, i64 a0, i64 a_sb, i64 a_sh, int a_hdiv, i64 a_sr, i64 a_sm, i64 a_sk,
              Buf B, i64 b0, i64 b_sb, i64 b_sh, int b_hdiv, i64 b_sr, i64 b_sk, i64 b_sn,
              Buf C, i64 c0, i64 c_sb, i64 c_sh, i64 c_sm, i64 c_sn, int M, int N, int K,
              int R, int nh, float alpha) {
    __shared__ float As[GK][GT + GPAD]; // As[k][m]
    __shared__ float Bs[GK][GT + GPAD]; // Bs[k][n]
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const i64 tiles_n = (N + GT - 1) / GT, tiles_m = (M + GT - 1) / GT;
    i64 blk = blockIdx.x;
    const int m0 = (int)(blk % tiles_m) * GT;
    blk /= tiles_m;
    const int n0 = (int)(blk % tiles_n) * GT;
    blk /= tiles_n;
    const i64 batch = blk / nh;
    const int head = (int)(blk % nh);
    const i64 abase = a0 + batch * a_sb + (i64)(head / a_hdiv) * a_sh;
    const i64 bbase = b0 + batch * b_sb + (i64)(head / b_hdiv) * b_sh;
    const i64 cbase = c0 + batch * c_sb + (i64)head * c_sh;
    // Load order: along the operand's unit stride where it has one, so a warp reads
    // consecutive elements.
    const bool a_k_fast = a_sk == 1, b_n_fast = b_sn == 1;

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int r = 0; r < R; ++r) {
        for (int k0 = 0; k0 < K; k0 += GK) {
#pragma unroll
            for (int t = 0; t < GT * GK / 256; ++t) {
                int idx = tid + t * 256;
                int mm = a_k_fast ? idx / GK : idx % GT;
                int kk = a_k_fast ? idx % GK : idx / GT;
                int m = m0 + mm, k = k0 + kk;
                As[kk][mm] = (m < M && k < K)
                                 ? ld(A, abase + (i64)r * a_sr + (i64)m * a_sm + (i64)k * a_sk)
                                 : 0.0f;
                int nn = b_n_fast ? idx % GT : idx / GK;
                int kb = b_n_fast ? idx / GT : idx % GK;
                int n = n0 + nn, kq = k0 + kb;
                Bs[kb][nn] = (n < N && kq < K)
                                 ? ld(B, bbase + (i64)r * b_sr + (i64)kq * b_sk + (i64)n * b_sn)
                                 : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < GK; ++kk) {
                float a[4], b[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
                for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
            // The next step overwrites the tiles.
            __syncthreads();
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty + 16 * i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int n = n0 + tx + 16 * j;
            if (n < N) st(C, cbase + (i64)m * c_sm + (i64)n * c_sn, alpha * acc[i][j]);
        }
    }
}

// Whether query i (0-based among the last Tq of Tk positions, so at absolute position
// pos = Tk − Tq + i) sees key j. window < 0: no window.
__device__ __forceinline__ bool attn_visible(int causal, i64 window, i64 pos, i64 j) {
    return !causal || (j <= pos && (window < 0 || pos - j < window));
}

// P = softmax over the visible keys of each row of S (B·H·Tq rows of Tk); masked entries 0.
// One block per row. As the CPU: p = exp(s − max), then p·(1/Σp).
extern "C" __global__ void attn_softmax(Buf s, Buf p, int tq, int tk, int causal, i64 window) {
    __shared__ float scratch[32];
    const i64 row = blockIdx.x;
    const i64 pos = (i64)(tk - tq) + row % tq;
    const i64 base = row * tk;
    float mx = NEG_INF;
    for (int j = threadIdx.x; j < tk; j += blockDim.x)
        if (attn_visible(causal, window, pos, j)) mx = fmaxf(mx, ld(s, base + j));
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < tk; j += blockDim.x)
        if (attn_visible(causal, window, pos, j)) sum += expf(ld(s, base + j) - mx);
    sum = block_sum(sum, scratch);
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < tk; j += blockDim.x) {
        float e = attn_visible(causal, window, pos, j) ? expf(ld(s, base + j) - mx) : 0.0f;
        st(p, base + j, e * inv);
    }
}

// dS = P ⊙ (dP − Σ_j P·dP), one block per row. Safe in place (ds = dp): every read of dP
// precedes the block reduction's barrier, and each thread then rewrites only what it reads.
extern "C" __global__ void attn_softmax_backward(Buf p, Buf dp, Buf ds, int tk) {
    __shared__ float scratch[32];
    const i64 base = (i64)blockIdx.x * tk;
    float inner = 0.0f;
    for (int j = threadIdx.x; j < tk; j += blockDim.x) inner += ld(p, base + j) * ld(dp, base + j);
    inner = block_sum(inner, scratch);
    for (int j = threadIdx.x; j < tk; j += blockDim.x) {
        float pj = ld(p, base + j);
        st(ds, base + j, pj * (ld(dp, base + j) - inner));
    }
}
