// Casts between storage dtypes (tperf_core::ops::cast).

// Conversion between storage dtypes: the rounding happens in st.
extern "C" __global__ void cast(Buf src, Buf dst, i64 n) {
    FOR_EACH(i, n) st(dst, i, ld(src, i));
}
