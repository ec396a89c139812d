// The contiguous KV-cache append (tperf_core::ops::kv_cache); the paged one is paged.cu's.

// Copies the new tokens' keys and values from qkv (B·t_new, (Hq + 2Hkv)·D) into the caches
// (B, Hkv, capacity, D) at positions pos..pos + t_new.
extern "C" __global__ void kv_append(Buf qkv, Buf kc, Buf vc, int b, int t_new, int h_q, int h_kv,
                                     int d, int pos, int capacity, const int* step) {
    PDL_ENTRY();
    if (step) pos = step[0]; // a replayed decode step's position (graph.rs)
    i64 total = (i64)b * t_new * h_kv * d;
    i64 width = (i64)(h_q + 2 * h_kv) * d;
    FOR_EACH(idx, total) {
        int e = (int)(idx % d);
        i64 r = idx / d;
        int g = (int)(r % h_kv);
        r /= h_kv;
        int i = (int)(r % t_new);
        int bb = (int)(r / t_new);
        i64 row = ((i64)bb * t_new + i) * width;
        i64 dst = (((i64)bb * h_kv + g) * capacity + pos + i) * d + e;
        st(kc, dst, ld(qkv, row + (i64)(h_q + g) * d + e));
        st(vc, dst, ld(qkv, row + (i64)(h_q + h_kv + g) * d + e));
    }
}
