// The KV-cache appends (tperf_core::ops::kv_cache): into the contiguous cache of one batch, and
// into the paged pools of a ragged batch (schedule/ragged.rs). Pools are (num_blocks, H_kv,
// block_size, D); slot = block · block_size + offset.

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

// Row r's keys and values (from qkv (n, (H + 2H_kv)·D)) into slot slots[r] of the pools.
extern "C" __global__ void paged_kv_append(Buf qkv, Buf slots, Buf kp, Buf vp, i64 n, int h_q,
                                           int h_kv, int d, int block_size) {
    PDL_ENTRY();
    i64 width = (i64)(h_q + 2 * h_kv) * d;
    FOR_EACH(idx, n * h_kv * d) {
        int e = (int)(idx % d);
        i64 rg = idx / d;
        int g = (int)(rg % h_kv);
        i64 r = rg / h_kv;
        i64 slot = ld_i32(slots, r);
        i64 dst = (((slot / block_size) * h_kv + g) * block_size + slot % block_size) * d + e;
        st(kp, dst, ld(qkv, r * width + (i64)(h_q + g) * d + e));
        st(vp, dst, ld(qkv, r * width + (i64)(h_q + h_kv + g) * d + e));
    }
}
