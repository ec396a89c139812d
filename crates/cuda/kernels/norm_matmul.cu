// The pre-norm and its product as one kernel (tperf_core::ops::norm_matmul, ops/norm_matmul.rs)
// for a decode step's few rows: gemv.cuh's product with X staged normalised. Every block
// normalises all m rows itself — m·k values read from L2 and two block reductions, against the
// separate norm kernel's launch that this replaces (~3 µs at gpt2-124m B1 on the H200, 25 a
// step) — and block 0 writes the residual sum. The arithmetic is norm_forward_vec's (norms.cu):
// statistics in f32 from the f32 sum a + b, two passes for the variance, rstd = 1/√(var + ε);
// the normalised values are rounded to W's 16-bit dtype as the unfused norm's stored output is.
// More rows take the norm kernel and cuBLASLt (ops/norm_matmul.rs).

// The most rows the fused kernel normalises (gemv's two, ops/matmul.rs's GEMV_ROWS) and the
// widest row: one 8-element word a thread (K ≤ 8·GEMV_THREADS). ops/norm_matmul.rs sends wider
// rows to the norm kernel and cuBLASLt.
#define NORM_ROWS 2
#define NORM_MAX_K (8 * GEMV_THREADS)

// x = a (+ b) at element i..i+8 of the rows.
__device__ __forceinline__ void norm_in8(const Buf& a, const Buf& b, int residual, i64 i, float x[8]) {
    ld8(a, i, x);
    if (residual) {
        float add[8];
        ld8(b, i, add);
#pragma unroll
        for (int e = 0; e < 8; e++) x[e] += add[e];
    }
}

// Eight f32 values as one 16-byte word of dtype dt (bf16 or f16).
__device__ __forceinline__ uint4 pack8(const float v[8], int dt) {
    unsigned w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const u16 h0 = dt == DT_BF16 ? f32_to_bf16(v[2 * k]) : f32_to_f16(v[2 * k]);
        const u16 h1 = dt == DT_BF16 ? f32_to_bf16(v[2 * k + 1]) : f32_to_f16(v[2 * k + 1]);
        w[k] = h0 | ((unsigned)h1 << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// X staged normalised: row r is norm(a_r (+ b_r))·γ (+ β). `rms` takes the mean as 0 (RMSNorm,
// as norms.cu does). Thread t holds word t of every row in registers, read once together with
// γ and β: one round trip to L2, then the two block reductions (mean, then the squared
// deviations from the registers). The first version re-read the rows from L2 for each of its
// three passes: 14.4 µs for gpt2-124m's qkv at B1 on the H200, against 3.6 for the plain gemv
// and ~3 for the norm kernel it replaced (bench-results/2026-12-04-h200-session13/a).
struct NormStage {
    Buf a, b, gamma, beta, sum;
    int rms, residual, has_beta, one_pass;
    float eps;

    __device__ __forceinline__ void operator()(uint4* xs, int m, int k, int dt) const {
        __shared__ float scratch[32 * NORM_ROWS];
        const int i = threadIdx.x;
        const bool mine = i < k / 8;
        const float cf = (float)k;
        float x[NORM_ROWS][8], g[8], bt[8];
#pragma unroll
        for (int r = 0; r < NORM_ROWS; ++r) {
            if (mine && r < m) {
                norm_in8(a, b, residual, (i64)r * k + 8 * i, x[r]);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) x[r][e] = 0.0f;
            }
        }
        if (mine) {
            ld8(gamma, 8 * i, g);
            if (has_beta) ld8(beta, 8 * i, bt);
        }
        float mean[NORM_ROWS], acc[NORM_ROWS];
        if (one_pass && !rms) {
            // Σx and Σx² in one reduction: var = E[x²] − μ² (one barrier pair fewer).
            float sums[2 * NORM_ROWS];
#pragma unroll
            for (int r = 0; r < NORM_ROWS; ++r) {
                sums[r] = sums[NORM_ROWS + r] = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    sums[r] += x[r][e];
                    sums[NORM_ROWS + r] += x[r][e] * x[r][e];
                }
            }
            __shared__ float scratch2[32 * 2 * NORM_ROWS];
            block_sum_n<2 * NORM_ROWS>(sums, scratch2);
#pragma unroll
            for (int r = 0; r < NORM_ROWS; ++r) {
                mean[r] = sums[r] / cf;
                acc[r] = fmaxf(sums[NORM_ROWS + r] - cf * mean[r] * mean[r], 0.0f);
            }
        } else {
#pragma unroll
            for (int r = 0; r < NORM_ROWS; ++r) {
                acc[r] = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[r] += x[r][e];
            }
            if (!rms) block_sum_n<NORM_ROWS>(acc, scratch);
#pragma unroll
            for (int r = 0; r < NORM_ROWS; ++r) {
                mean[r] = rms ? 0.0f : acc[r] / cf;
                acc[r] = 0.0f;
                if (mine) {
#pragma unroll
                    for (int e = 0; e < 8; e++) {
                        const float d = x[r][e] - mean[r];
                        acc[r] += d * d;
                    }
                }
            }
            block_sum_n<NORM_ROWS>(acc, scratch);
        }
        if (!mine) return;
        const bool writes_sum = residual && blockIdx.x == 0;
#pragma unroll
        for (int r = 0; r < NORM_ROWS; ++r) {
            if (r < m) {
                const float rstd = 1.0f / sqrtf(acc[r] / cf + eps);
                if (writes_sum) st8(sum, (i64)r * k + 8 * i, x[r]);
                float v[8];
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    v[e] = (x[r][e] - mean[r]) * rstd * g[e];
                    if (has_beta) v[e] += bt[e];
                }
                xs[r * (k / 8) + i] = pack8(v, dt);
            }
        }
    }
};

// As gemv_rows and gemv_rows_split (matmul.cu), X replaced by the norm's inputs: a (m×k), b (the
// residual branch, when `residual`), γ, β (when `has_beta`); sum = a + b written when residual.
#define NORM_GEMV_PARAMS                                                                        \
    Buf a, Buf b, Buf gamma, Buf beta, Buf sum, Buf w, Buf bias, Buf pre, Buf act, int m, int k, \
        int n, int act_kind, int rms, int residual, int has_beta, int one_pass, float eps

extern "C" __global__ void __launch_bounds__(GEMV_THREADS) norm_gemv_rows(NORM_GEMV_PARAMS) {
    PDL_ENTRY();
    const NormStage stage{a, b, gamma, beta, sum, rms, residual, has_beta, one_pass, eps};
    gemv_body<1, GEMV_UNROLL>(stage, w, bias, pre, act, m, k, n, act_kind);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS) norm_gemv_rows_split(NORM_GEMV_PARAMS) {
    PDL_ENTRY();
    const NormStage stage{a, b, gamma, beta, sum, rms, residual, has_beta, one_pass, eps};
    gemv_body<GEMV_WARPS, GEMV_UNROLL>(stage, w, bias, pre, act, m, k, n, act_kind);
}
