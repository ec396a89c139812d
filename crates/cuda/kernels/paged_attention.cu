// Paged attention over a ragged batch (tperf_core::ops::paged_attention, schedule/ragged.rs):
// the general kernel, one block per (row, head), two passes over the keys, for the shapes
// flash-decoding (decode_attention.cu, which reads the same pools through the same block table,
// and which ops/paged_attention.rs picks where it fits) does not take: GQA groups past its
// rows, head dims that are not a multiple of 8 or above 256.
//
// Pools are (num_blocks, H_kv, block_size, D); a sequence's key j lives in block
// block_table[s, j / block_size] at offset j % block_size.

#define PAGED_THREADS 128

// Element offset of key j of kv head g of the sequence whose block table row starts at `table`.
__device__ __forceinline__ i64 paged_base(const Buf& block_table, i64 table, int j, int g,
                                          int h_kv, int block_size, int d) {
    i64 block = ld_i32(block_table, table + j / block_size);
    return ((block * h_kv + g) * block_size + j % block_size) * d;
}

// One block per (row, head): pass 1 finds the row's max score and softmax denominator (each
// thread an online pair over its keys, then combined), pass 2 walks the keys in tiles of
// PAGED_THREADS, each thread one key's probability into shared memory, then each thread adds
// p·v into its output dimensions. Dynamic shared memory: D floats of q.
extern "C" __global__ void paged_attention(Buf qkv, Buf kp, Buf vp, Buf positions, Buf row_seq,
                                           Buf ctx_lens, Buf block_table, Buf out, int h,
                                           int h_kv, int d, int block_size, int max_blocks,
                                           int causal, int window) {
    PDL_ENTRY();
    extern __shared__ float q[];
    __shared__ float p[PAGED_THREADS];
    __shared__ float scratch[32];
    i64 r = blockIdx.x;
    int head = blockIdx.y;
    int g = head / (h / h_kv);
    int s = ld_i32(row_seq, r);
    int pos = ld_i32(positions, r);
    int ctx = ld_i32(ctx_lens, s);
    int hi = causal ? min(pos + 1, ctx) : ctx;
    int lo = (causal && window > 0) ? max(hi - window, 0) : 0;
    i64 width = (i64)(h + 2 * h_kv) * d;
    float scale = rsqrtf((float)d);
    for (int e = threadIdx.x; e < d; e += blockDim.x) q[e] = ld(qkv, r * width + (i64)head * d + e) * scale;
    __syncthreads();
    const i64 table = (i64)s * max_blocks;
    // Pass 1: max and denominator.
    float m = NEG_INF, l = 0.0f;
    for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        i64 kb = paged_base(block_table, table, j, g, h_kv, block_size, d);
        float dot = 0.0f;
        for (int e = 0; e < d; e++) dot += q[e] * ld(kp, kb + e);
        float m2 = fmaxf(m, dot);
        l = l * expf(m - m2) + expf(dot - m2);
        m = m2;
    }
    float row_max = block_max(m, scratch);
    float denom = block_sum(m == NEG_INF ? 0.0f : l * expf(m - row_max), scratch);
    // Pass 2: output.
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}; // dimensions threadIdx.x + k·blockDim.x, d ≤ 512
    for (int t0 = lo; t0 < hi; t0 += blockDim.x) {
        int j = t0 + threadIdx.x;
        if (j < hi) {
            i64 kb = paged_base(block_table, table, j, g, h_kv, block_size, d);
            float dot = 0.0f;
            for (int e = 0; e < d; e++) dot += q[e] * ld(kp, kb + e);
            p[threadIdx.x] = expf(dot - row_max) / denom;
        }
        __syncthreads();
        int tile = min((int)blockDim.x, hi - t0);
        for (int jj = 0; jj < tile; jj++) {
            i64 vb = paged_base(block_table, table, t0 + jj, g, h_kv, block_size, d);
            float pj = p[jj];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                int e = threadIdx.x + k * blockDim.x;
                if (e < d) acc[k] += pj * ld(vp, vb + e);
            }
        }
        __syncthreads();
    }
    i64 o = (r * h + head) * d;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        int e = threadIdx.x + k * blockDim.x;
        if (e < d) st(out, o + e, acc[k]);
    }
}
