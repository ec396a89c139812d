// The matmul's own kernels (tperf_core::ops::matmul, ops/matmul.rs): the products are cuBLASLt's
// except a few rows' (gemv_rows below); the bias gradient is this column sum.

// db[j] = Σ_rows dy[r, j], the bias gradient of a backward product. A block owns COLSUM_COLS
// adjacent columns (blockIdx.x) and its COLSUM_WARPS warps split the rows (warp w takes rows w,
// w + COLSUM_WARPS, …), a lane a column: each warp load is one row's 32 adjacent elements
// (coalesced), and 32 rows of every column are in flight at once. The warps' partial sums meet in
// shared memory and warp 0 adds them in a fixed order, so the result is the same on every run
// (no atomics) and no scratch buffer is needed. f32 accumulation.
//
// Why not one thread a column looping over all the rows (the kernel this replaced): each thread
// then waits on m dependent loads, and gpt2's n = 768 columns made 3 blocks of the H200's 132
// SMs: 50–64 µs for m = 1024 (session 14's calibration samples), where reading dy once is under
// 1 µs. Here n = 768 is 24 blocks of 1024 threads, m/32 loads a thread, eight at a time.
#define COLSUM_COLS 32
#define COLSUM_WARPS 32
extern "C" __global__ void column_sum(Buf dy, Buf db, i64 rows, i64 cols) {
    __shared__ float part[COLSUM_WARPS][COLSUM_COLS + 1];
    const int lane = threadIdx.x, warp = threadIdx.y;
    const i64 j = (i64)blockIdx.x * COLSUM_COLS + lane;
    float s = 0.0f;
    if (j < cols) {
        // Eight rows an iteration, their loads issued before any add: a plain loop (even with
        // #pragma unroll) keeps its exit test between iterations, so each load waits for the
        // one before it (the SASS showed one LDG in flight a thread).
        const i64 W = COLSUM_WARPS;
        i64 r = warp;
        for (; r + 7 * W < rows; r += 8 * W) {
            float v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) v[u] = ld(dy, (r + u * W) * cols + j);
            s += ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
        }
        for (; r < rows; r += W) s += ld(dy, r * cols + j);
    }
    part[warp][lane] = s;
    __syncthreads();
    if (warp == 0 && j < cols) {
        float t = 0.0f;
        for (int w = 0; w < COLSUM_WARPS; w++) t += part[w][lane];
        st(db, j, t);
    }
}

// Y[r, j] = S[r·stride + j] for j < n: a product cuBLASLt wrote at a padded row stride (ops/matmul.rs,
// `padded_product`: rows of an odd width do not start on 16 bytes, which holds cuBLASLt to its
// alignment-1 kernels) copied into the output's packed rows. Same dtype on both sides, so the
// f32 round trip of ld/st is exact.
//
// A flat grid-stride loop: 17.6 µs for gpt2's B128 logits on the H200 (CUPTI, session 12's
// lmhead-broken/profile-decode-b128.txt), where a 2-D grid of one row a block-row measured
// 31.2 (final/profile-decode-b128.txt).
extern "C" __global__ void narrow_rows(Buf s, Buf y, i64 rows, int stride, int n) {
    PDL_ENTRY();
    FOR_EACH(i, rows * n) {
        const i64 r = i / n, j = i - r * n;
        st(y, i, ld(s, r * stride + j));
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
//
// gemv_rows_split: the block's warps share each column group instead, each taking a quarter of
// K, their sums added through shared memory. At one row a layer's products are small (1.2–4.7
// MB of W for gpt2-124m) and bound by how many loads are in flight, not by bandwidth: W must
// be nearly all in flight at once to pass ~3 TB/s at ~1 µs of latency. With one warp a group,
// mlp.proj (K = 3072, N = 768) ran 96 blocks whose warps walked K in six dependent steps: 6.8 µs
// for 4.7 MB, 0.69 TB/s (CUPTI, gpt2-124m B1 on the H200, session 11). Split, the same product
// runs 384 blocks whose warps walk a quarter of K each, in two steps. ops/matmul.rs picks it for
// the narrower products (N below 4 column groups a block per SM), where it gives more blocks.
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

__device__ __forceinline__ void gemv_store(Buf bias, Buf pre, Buf act, int n, int act_kind, int r,
                                           i64 j, float v) {
    if (bias.p) v += ld(bias, j);
    st(pre, (i64)r * n + j, v);
    if (act_kind >= 0) st(act, (i64)r * n + j, act_fwd(act_kind, v));
}

// KSPLIT warps of a block share a column group, warp w taking the w-th of KSPLIT slices of K's
// words (1: each warp its own group); UNROLL 16-byte words of each column in flight per lane.
template <int KSPLIT, int UNROLL>
__device__ __forceinline__ void gemv_body(Buf x, Buf w, Buf bias, Buf pre, Buf act, int m, int k,
                                          int n, int act_kind) {
    extern __shared__ uint4 xs[];
    __shared__ float partial[KSPLIT][GEMV_MAX_ROWS][GEMV_COLS];
    const int words = k / 8;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint4* wg = (const uint4*)w.p;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    const i64 groups = ((i64)n + GEMV_COLS - 1) / GEMV_COLS;
    const int slice = (words + KSPLIT - 1) / KSPLIT;
    const int c_begin = KSPLIT == 1 ? 0 : min(words, warp * slice);
    const int c_end = KSPLIT == 1 ? words : min(words, c_begin + slice);
    const i64 first = KSPLIT == 1 ? (i64)blockIdx.x * GEMV_WARPS + warp : (i64)blockIdx.x;
    const i64 stride = KSPLIT == 1 ? (i64)gridDim.x * GEMV_WARPS : (i64)gridDim.x;
    // Every W word of one step of a column group, before the arithmetic.
    uint4 wv[UNROLL][GEMV_COLS];
    auto load_w = [&](i64 j0, int c0) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
            for (int q = 0; q < GEMV_COLS; ++q) {
                const int c = c0 + 32 * u;
                wv[u][q] = (c < c_end && j0 + q < n) ? __ldg(wg + (j0 + q) * words + c) : zero;
            }
    };
    // The first step's W loads are issued before X is staged: they do not depend on it, so the
    // two global round trips overlap instead of following each other (at one row a product is
    // a few µs, most of it such latency).
    if (first < groups) load_w(first * GEMV_COLS, c_begin + lane);
    bool prefetched = true;
    const uint4* xg = (const uint4*)x.p;
    for (int i = threadIdx.x; i < m * words; i += GEMV_THREADS) xs[i] = xg[i];
    __syncthreads();
    // Split, `grp` is the same for the whole block, so the barriers below are uniform.
    for (i64 grp = first; grp < groups; grp += stride) {
        const i64 j0 = grp * GEMV_COLS;
        float acc[GEMV_MAX_ROWS][GEMV_COLS];
#pragma unroll
        for (int r = 0; r < GEMV_MAX_ROWS; ++r)
#pragma unroll
            for (int q = 0; q < GEMV_COLS; ++q) acc[r][q] = 0.0f;
        for (int c0 = c_begin + lane; c0 < c_end; c0 += 32 * UNROLL) {
            if (!prefetched) load_w(j0, c0);
            prefetched = false;
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int c = c0 + 32 * u;
                if (c >= c_end) break;
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
                if (lane == 0) {
                    if (KSPLIT == 1) {
                        if (j0 + q < n) gemv_store(bias, pre, act, n, act_kind, r, j0 + q, v);
                    } else {
                        partial[warp][r][q] = v;
                    }
                }
            }
        }
        if (KSPLIT > 1) {
            __syncthreads();
            const int t = threadIdx.x, r = t / GEMV_COLS, q = t % GEMV_COLS;
            if (r < m && j0 + q < n) {
                float v = 0.0f;
#pragma unroll
                for (int s = 0; s < KSPLIT; ++s) v += partial[s][r][q];
                gemv_store(bias, pre, act, n, act_kind, r, j0 + q, v);
            }
            __syncthreads();
        }
    }
}

// act_kind: an ACT_* code, or −1 for none (then `act` is not written).
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_rows(Buf x, Buf w, Buf bias, Buf pre,
                                                                     Buf act, int m, int k, int n,
                                                                     int act_kind) {
    PDL_ENTRY();
    gemv_body<1, GEMV_UNROLL>(x, w, bias, pre, act, m, k, n, act_kind);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_rows_split(Buf x, Buf w, Buf bias,
                                                                           Buf pre, Buf act, int m,
                                                                           int k, int n,
                                                                           int act_kind) {
    PDL_ENTRY();
    gemv_body<GEMV_WARPS, GEMV_UNROLL>(x, w, bias, pre, act, m, k, n, act_kind);
}
