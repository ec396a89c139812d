// The last position of each sequence (tperf_core::ops::take_last).

// out (B, C) = x[b, T − 1, :]
extern "C" __global__ void take_last(Buf x, Buf out, int b, int t, int c) {
    PDL_ENTRY();
    FOR_EACH(idx, (i64)b * c) {
        i64 bb = idx / c, j = idx % c;
        st(out, idx, ld(x, (bb * t + t - 1) * c + j));
    }
}
