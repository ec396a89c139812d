// Decode attention (flash-decoding): Tq ≤ 4 queries per sequence against Tk keys, the keys of
// each (batch, KV head) split across blocks so that the grid fills the GPU, then a reduce. The
// flash forward (flash_attention.cu) tiles 64 query rows, which for one query wastes 63/64 of
// its work and runs B·H blocks only; here one block reads its chunk of K and V once for every
// query head of the GQA group and every query (R = (H/H_kv)·Tq rows).
//
// Floor at gpt2-124m B32, context 384, H 12 (MHA), d 64, bf16, per layer: K and V read once,
// 2·B·H_kv·Tk·d·2 bytes = 2·32·12·384·64·2 = 37.7 MB → 7.8 µs at 4.8 TB/s; FLOPs 4·B·H·Tk·d =
// 37.7 MFLOP (nothing). The partials (splits·B·H_kv·R·(d+2) f32) are a few hundred KB, in L2.
//
// Pass 1 (decode_attn_split): block (split, b·H_kv + g) takes keys [split·chunk, +chunk) of the
// live Tk (in a replayed decode step `step` holds Tk; the grid follows the cache's capacity and
// chunks past Tk write an empty partial: m = −∞, l = 0). Per tile of 128 keys, one thread a key
// computes the R scores, one warp a row updates the online softmax (m, l), then the threads
// own (row, e) pairs of the output and accumulate P·V. The unnormalised O, m and l go to `part`.
// Pass 2 (decode_attn_reduce): per (b, g), O = Σ_s O_s·e^(m_s − M) / Σ_s l_s·e^(m_s − M) and
// lse = M + log L, as the flash forward writes them (a row that sees no key: NaN and −∞ there
// too).
//
// Loads go through ld() (any storage dtype, f32 arithmetic); 16-byte vector loads of K/V rows
// are the next step once a measurement says the loads, not the latency, bound it.

#define DEC_THREADS 128
#define DEC_TILE 128
#define DEC_WARPS (DEC_THREADS / 32)
// Rows (query heads of a group × queries) and rows × D that one block holds; larger groups use
// the flash forward (attention.rs checks).
#define DEC_MAX_ROWS 32
#define DEC_MAX_QD 4096
#define DEC_ACC (DEC_MAX_QD / DEC_THREADS)

__device__ __forceinline__ bool dec_visible(int causal, i64 window, i64 pos, i64 j) {
    return !causal || (j <= pos && (window < 0 || pos - j < window));
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS)
    decode_attn_split(Buf qkv, Buf kb, i64 k0, i64 k_sb, i64 k_sh, i64 k_sj, Buf vb, i64 v0,
                      i64 v_sb, i64 v_sh, i64 v_sj, float* part, int h, int h_kv, int tq, int tk,
                      int d, int causal, i64 window, float scale, int chunk, const int* step) {
    __shared__ float qs[DEC_MAX_QD];
    __shared__ float sc[DEC_MAX_ROWS * DEC_TILE];
    __shared__ float row_m[DEC_MAX_ROWS], row_l[DEC_MAX_ROWS], row_c[DEC_MAX_ROWS];
    if (step) tk = step[0];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int split = blockIdx.x, splits = gridDim.x;
    const int bg = blockIdx.y;
    const i64 b = bg / h_kv;
    const int g = bg % h_kv;
    const int group = h / h_kv, rows = group * tq, rd = rows * d;
    const i64 width = (i64)(h + 2 * h_kv) * d;
    const i64 off = (i64)tk - tq; // absolute position of query 0

    // Row r is query r % tq of head g·group + r / tq.
    for (int i = tid; i < rd; i += DEC_THREADS) {
        const int r = i / d, e = i % d;
        qs[i] = ld(qkv, (b * tq + r % tq) * width + (i64)(g * group + r / tq) * d + e);
    }
    if (tid < rows) {
        row_m[tid] = NEG_INF;
        row_l[tid] = 0.0f;
    }
    float acc[DEC_ACC];
#pragma unroll
    for (int a = 0; a < DEC_ACC; ++a) acc[a] = 0.0f;

    const i64 j_lo = (i64)split * chunk, j_hi = min((i64)tk, j_lo + chunk);
    const i64 kbase = k0 + b * k_sb + (i64)g * k_sh;
    const i64 vbase = v0 + b * v_sb + (i64)g * v_sh;
    for (i64 j0 = j_lo; j0 < j_hi; j0 += DEC_TILE) {
        // Q is loaded (the first time) and the previous tile's readers of sc are done.
        __syncthreads();
        const i64 j = j0 + tid;
        float s[DEC_MAX_ROWS];
#pragma unroll
        for (int r = 0; r < DEC_MAX_ROWS; ++r) s[r] = 0.0f;
        if (j < j_hi) {
            for (int e = 0; e < d; ++e) {
                const float kv = ld(kb, kbase + j * k_sj + e);
#pragma unroll
                for (int r = 0; r < DEC_MAX_ROWS; ++r)
                    if (r < rows) s[r] = fmaf(qs[r * d + e], kv, s[r]);
            }
        }
#pragma unroll
        for (int r = 0; r < DEC_MAX_ROWS; ++r) {
            if (r >= rows) break;
            const bool vis = j < j_hi && dec_visible(causal, window, off + r % tq, j);
            sc[r * DEC_TILE + tid] = vis ? s[r] * scale : NEG_INF;
        }
        __syncthreads();
        for (int r = warp; r < rows; r += DEC_WARPS) {
            float* row = sc + r * DEC_TILE;
            float mx = NEG_INF;
            for (int c = lane; c < DEC_TILE; c += 32) mx = fmaxf(mx, row[c]);
            mx = warp_max(mx);
            const float m_old = row_m[r];
            const float m_new = fmaxf(m_old, mx);
            // A row with nothing visible yet keeps m = −∞ (the flash forward's rule).
            const float m_use = m_new == NEG_INF ? 0.0f : m_new;
            float sum = 0.0f;
            for (int c = lane; c < DEC_TILE; c += 32) {
                const float p = expf(row[c] - m_use);
                row[c] = p;
                sum += p;
            }
            sum = warp_sum(sum);
            // Every lane has read row_m[r] (m_old) before lane 0 overwrites it: the shuffles
            // converge the warp in practice, but only a barrier says so (racecheck).
            __syncwarp();
            if (lane == 0) {
                const float corr = expf(m_old - m_use);
                row_l[r] = row_l[r] * corr + sum;
                row_m[r] = m_new;
                row_c[r] = corr;
            }
        }
        __syncthreads();
        const int nk = (int)min((i64)DEC_TILE, j_hi - j0);
#pragma unroll
        for (int a = 0; a < DEC_ACC; ++a) {
            const int i = tid + a * DEC_THREADS;
            if (i >= rd) break;
            const int r = i / d, e = i % d;
            const float* p = sc + r * DEC_TILE;
            float x = acc[a] * row_c[r];
            for (int kk = 0; kk < nk; ++kk) x = fmaf(p[kk], ld(vb, vbase + (j0 + kk) * v_sj + e), x);
            acc[a] = x;
        }
    }
    __syncthreads();
    float* pp = part + ((i64)bg * splits + split) * (i64)rows * (d + 2);
#pragma unroll
    for (int a = 0; a < DEC_ACC; ++a) {
        const int i = tid + a * DEC_THREADS;
        if (i < rd) pp[i] = acc[a];
    }
    if (tid < rows) {
        pp[rd + tid] = row_m[tid];
        pp[rd + rows + tid] = row_l[tid];
    }
}

// O (B, Tq, H, d) and lse (B, H, Tq) from the splits' partials; one block per (b, g).
extern "C" __global__ void decode_attn_reduce(const float* part, Buf o, Buf lse, int h, int h_kv,
                                              int tq, int d, int splits) {
    const int bg = blockIdx.x;
    const i64 b = bg / h_kv;
    const int g = bg % h_kv;
    const int group = h / h_kv, rows = group * tq, rd = rows * d;
    const i64 stride = (i64)rows * (d + 2);
    const float* base = part + (i64)bg * splits * stride;
    for (int i = threadIdx.x; i < rd; i += blockDim.x) {
        const int r = i / d, e = i % d;
        float m = NEG_INF;
        for (int s = 0; s < splits; ++s) m = fmaxf(m, base[s * stride + rd + r]);
        const float m_use = m == NEG_INF ? 0.0f : m;
        float l = 0.0f, x = 0.0f;
        for (int s = 0; s < splits; ++s) {
            const float* ps = base + s * stride;
            const float w = expf(ps[rd + r] - m_use);
            l = fmaf(ps[rd + rows + r], w, l);
            x = fmaf(ps[i], w, x);
        }
        const int head = g * group + r / tq, q = r % tq;
        st(o, ((b * tq + q) * h + head) * d + e, x / l);
        if (e == 0) st(lse, (b * h + head) * tq + q, m + logf(l));
    }
}
