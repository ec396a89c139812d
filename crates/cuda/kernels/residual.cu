// The residual add (tperf_core::ops::residual).

extern "C" __global__ void residual_add(Buf a, Buf b, Buf y, i64 n) {
    PDL_ENTRY();
    FOR_EACH(i, n) st(y, i, ld(a, i) + ld(b, i));
}
