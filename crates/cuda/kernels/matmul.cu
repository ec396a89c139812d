// The matmul's own kernels (tperf_core::ops::matmul, ops/matmul.rs): the products are cuBLASLt's
// except a few rows' (gemv_rows below, on gemv.cuh's body); the bias gradient is this column sum.

// db[j] = Σ_rows dy[r, j]: one thread per column, rows strided through (coalesced across the
// columns of a warp). f32 accumulation.
extern "C" __global__ void column_sum(Buf dy, Buf db, i64 rows, i64 cols) {
    FOR_EACH(j, cols) {
        float s = 0.0f;
        for (i64 r = 0; r < rows; r++) s += ld(dy, r * cols + j);
        st(db, j, s);
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

// act_kind: an ACT_* code, or −1 for none (then `act` is not written).
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_rows(Buf x, Buf w, Buf bias, Buf pre,
                                                                     Buf act, int m, int k, int n,
                                                                     int act_kind) {
    PDL_ENTRY();
    gemv_body<1, GEMV_UNROLL>(CopyX{x}, w, bias, pre, act, m, k, n, act_kind);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_rows_split(Buf x, Buf w, Buf bias,
                                                                           Buf pre, Buf act, int m,
                                                                           int k, int n,
                                                                           int act_kind) {
    PDL_ENTRY();
    gemv_body<GEMV_WARPS, GEMV_UNROLL>(CopyX{x}, w, bias, pre, act, m, k, n, act_kind);
}
