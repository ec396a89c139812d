// The bias gradient of the matmul (tperf_core::ops::matmul, ops/matmul.rs): the product
// itself is cuBLASLt's, so this column sum is the only kernel the matmul launches.

// db[j] = Σ_rows dy[r, j]: one thread per column, rows strided through (coalesced across the
// columns of a warp). f32 accumulation.
extern "C" __global__ void column_sum(Buf dy, Buf db, i64 rows, i64 cols) {
    FOR_EACH(j, cols) {
        float s = 0.0f;
        for (i64 r = 0; r < rows; r++) s += ld(dy, r * cols + j);
        st(db, j, s);
    }
}
