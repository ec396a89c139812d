// The matmul's own kernels (tperf_core::ops::matmul, ops/matmul.rs): the products are cuBLASLt's
// except a few rows' (gemv_rows below); the bias gradient is this column sum.

// db[j] = Σ_rows dy[r, j]: one thread per column, rows strided through (coalesced across the
// columns of a warp). f32 accumulation.
extern "C" __global__ void column_sum(Buf dy, Buf db, i64 rows, i64 cols) {
    FOR_EACH(j, cols) {
        float s = 0.0f;
        for (i64 r = 0; r < rows; r++) s += ld(dy, r * cols + j);
        st(db, j, s);
    }
}

// Y = X·Wᵀ + b (and act(Y) when an activation is fused) for a few rows of X: a decode step's
// linear layers, M = the batch (1..GEMV_MAX_ROWS), W (n×k) row-major in bf16 or f16.
//
// Why not cuBLASLt here: at M ≤ 8 the product is a matrix-vector pass over W, bound by reading W
// once (gpt2-124m's qkv: 3.5 MB, 0.7 µs at 4.8 TB/s). cuBLASLt chose split-K kernels with a
// separate reduce kernel for these shapes: 4.3–5.4 µs a product plus 1.7 µs of reduce on the
// H200 (profile of gpt2-124m decode B1), four products a layer.
//
// A block stages X (M·k 16-bit values, ≤ GEMV_MAX_X bytes) in shared memory, then each warp
// takes GEMV_COLS output columns at a time (grid-stride over column groups): its lanes read the
// columns' W rows as 16-byte words, GEMV_COLS·GEMV_UNROLL words in flight per lane, multiply
// them with the matching X words of every row (f32 accumulation), and sum across the warp by
// shuffles. Lane 0 writes pre = acc + b and act(pre).
#define GEMV_THREADS 128
#define GEMV_WARPS (GEMV_THREADS / 32)
#define GEMV_MAX_ROWS 8
#define GEMV_COLS 2
#define GEMV_UNROLL 2
#define GEMV_MAX_X 49152

// Σ of the 8 products of two 16-byte words of 16-bit values, added to acc.
__device__ __forceinline__ float dot8_acc(uint4 a, uint4 b, int dt, float acc) {
    const unsigned aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float a0, a1, b0, b1;
        if (dt == DT_BF16) {
            a0 = __uint_as_float(aw[i] << 16);
            a1 = __uint_as_float(aw[i] & 0xffff0000u);
            b0 = __uint_as_float(bw[i] << 16);
            b1 = __uint_as_float(bw[i] & 0xffff0000u);
        } else {
            a0 = f16_to_f32((u16)aw[i]);
            a1 = f16_to_f32((u16)(aw[i] >> 16));
            b0 = f16_to_f32((u16)bw[i]);
            b1 = f16_to_f32((u16)(bw[i] >> 16));
        }
        acc = fmaf(a0, b0, acc);
        acc = fmaf(a1, b1, acc);
    }
    return acc;
}

// act_kind: an ACT_* code, or −1 for none (then `act` is not written).
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_rows(Buf x, Buf w, Buf bias, Buf pre,
                                                                     Buf act, int m, int k, int n,
                                                                     int act_kind) {
    PDL_ENTRY();
    extern __shared__ uint4 xs[];
    const int words = k / 8;
    const uint4* xg = (const uint4*)x.p;
    for (int i = threadIdx.x; i < m * words; i += GEMV_THREADS) xs[i] = xg[i];
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint4* wg = (const uint4*)w.p;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    const i64 groups = ((i64)n + GEMV_COLS - 1) / GEMV_COLS;
    for (i64 grp = (i64)blockIdx.x * GEMV_WARPS + warp; grp < groups; grp += (i64)gridDim.x * GEMV_WARPS) {
        const i64 j0 = grp * GEMV_COLS;
        float acc[GEMV_MAX_ROWS][GEMV_COLS];
#pragma unroll
        for (int r = 0; r < GEMV_MAX_ROWS; ++r)
#pragma unroll
            for (int q = 0; q < GEMV_COLS; ++q) acc[r][q] = 0.0f;
        for (int c0 = lane; c0 < words; c0 += 32 * GEMV_UNROLL) {
            // Every W word of this step first, then the arithmetic.
            uint4 wv[GEMV_UNROLL][GEMV_COLS];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; ++u)
#pragma unroll
                for (int q = 0; q < GEMV_COLS; ++q) {
                    const int c = c0 + 32 * u;
                    wv[u][q] = (c < words && j0 + q < n) ? __ldg(wg + (j0 + q) * words + c) : zero;
                }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; ++u) {
                const int c = c0 + 32 * u;
                if (c >= words) break;
#pragma unroll
                for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
                    if (r >= m) break;
                    const uint4 xv = xs[r * words + c];
#pragma unroll
                    for (int q = 0; q < GEMV_COLS; ++q) acc[r][q] = dot8_acc(xv, wv[u][q], w.dt, acc[r][q]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
            if (r >= m) break;
#pragma unroll
            for (int q = 0; q < GEMV_COLS; ++q) {
                float v = acc[r][q];
                for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                const i64 j = j0 + q;
                if (lane == 0 && j < n) {
                    if (bias.p) v += ld(bias, j);
                    st(pre, (i64)r * n + j, v);
                    if (act_kind >= 0) st(act, (i64)r * n + j, act_fwd(act_kind, v));
                }
            }
        }
    }
}
