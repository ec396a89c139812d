// The row gathers of tperf_core::ops::take_last: the last position of each sequence of a batch,
// and the given rows of a ragged batch (each sequence's last token).

// out (B, C) = x[b, T − 1, :]
extern "C" __global__ void take_last(Buf x, Buf out, int b, int t, int c) {
    PDL_ENTRY();
    FOR_EACH(idx, (i64)b * c) {
        i64 bb = idx / c, j = idx % c;
        st(out, idx, ld(x, (bb * t + t - 1) * c + j));
    }
}

// out[s] = x[rows[s]]: (S, C) from (N, C).
extern "C" __global__ void take_rows(Buf x, Buf rows, Buf out, int s, int c) {
    PDL_ENTRY();
    FOR_EACH(idx, (i64)s * c) {
        i64 ss = idx / c, j = idx % c;
        st(out, idx, ld(x, (i64)ld_i32(rows, ss) * c + j));
    }
}
