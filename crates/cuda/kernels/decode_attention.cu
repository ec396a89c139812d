// Decode attention (flash-decoding) over a KV cache, paged or contiguous: a few queries per
// sequence against its keys, the keys split across blocks so that the grid fills the GPU, then
// a reduce. The flash forward (flash_attention.cu) tiles 64 query rows, which for one query
// wastes 63/64 of its work; here one block reads its chunk of K and V once for every query head
// of the GQA group and every query of the unit (R = (H/H_kv)·Tq ≤ DEC_MAX_ROWS rows).
//
// A *unit* is what shares keys: in a paged batch (schedule/ragged.rs) one packed row (Tq = 1;
// its sequence, position and context length come from row_seq, positions and ctx_lens) or,
// with a `units` table, a run of up to Tq consecutive packed rows of one sequence (a prefill
// chunk's queries, at consecutive positions: units[2u] is its first row, units[2u + 1] how many;
// the rows past that count are computed on nothing and not written), in a contiguous cache
// (B, H_kv, capacity, D) one batch element (Tq queries at the last Tq positions of Tk keys; Tk
// from `step` in a replayed decode step). The contiguous cache is the paged
// layout with one block of `capacity` keys per sequence and the identity block table, so one
// addressing rule serves both: key j of KV head g of sequence s lives at
//     ((block · H_kv + g) · block_size + j % block_size) · D,  block = table[s, j / block_size]
// (block = s when there is no table).
//
// Floor at gpt2-124m B32, context 384, H 12 (MHA), d 64, bf16, per layer: K and V read once,
// 2·B·H_kv·Tk·d·2 bytes = 37.7 MB → 7.8 µs at 4.8 TB/s; FLOPs 4·B·H·Tk·d = 37.7 MFLOP (nothing).
// At B1 the whole layer's K and V are 1.2 MB: latency, not bandwidth, bounds it, so the kernel
// keeps many independent 16-byte loads in flight per thread.
//
// Each split kernel (decode_split_r2, _r2_deep, _r8): block (u·H_kv + g, split) takes the keys
// [split·chunk, +chunk) of what the unit's queries see. A warp is 32/LPK key groups of LPK lanes; a key group reads a key row
// as LPK vectors of 8 elements (16-byte loads for the 16-bit dtypes, two for f32; LPK the power
// of two ≥ D/8), its lanes' partial dot products summed by shuffles. Each key group walks its own
// keys (DEC_UNROLL at a time, their K and V loads issued together) with its own online softmax
// (m, l) and output slice in registers — no barrier in the loop; the key groups then merge, by
// shuffles within a warp and through shared memory across warps. One split writes O and lse
// itself; several write unnormalised partials (O, m, l) to `part`, and the last of them to finish
// (counted in `arrivals`, one counter per unit and KV head) combines them:
// O = Σ_s O_s·e^(m_s − M) / Σ_s l_s·e^(m_s − M), lse = M + log L, as the flash
// forward writes them (a row that sees no key: NaN and −∞ there too).

#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)
// Rows (query heads of a group × queries of a unit) one block holds in registers, the largest
// head dim, and the keys each key group loads per step. attention.rs and paged.rs check the
// first two (larger shapes take the flash forward or the paged prefill kernel).
#define DEC_MAX_ROWS 8
#define DEC_MAX_D 256
#define DEC_UNROLL 4

// 8 elements of a K or V row: one 16-byte word for the 16-bit dtypes, two for f32.
template <int DT> struct Vec8 {
    uint4 w[DT == DT_F32 ? 2 : 1];
};

__device__ __forceinline__ uint4 dec_ldg_u4(const void* p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

__device__ __forceinline__ unsigned u4_word(const uint4& u, int i) {
    return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

// Elements i·8 .. i·8 + 7 of `base` (8-element aligned).
template <int DT> __device__ __forceinline__ Vec8<DT> ld_vec8(const void* base, i64 i) {
    Vec8<DT> v;
    if (DT == DT_F32) {
        const float* p = (const float*)base + i;
        v.w[0] = dec_ldg_u4(p);
        v.w[DT == DT_F32 ? 1 : 0] = dec_ldg_u4(p + 4);
    } else {
        v.w[0] = dec_ldg_u4((const u16*)base + i);
    }
    return v;
}

// Element k (a constant after unrolling) of v as f32.
template <int DT> __device__ __forceinline__ float vec8_at(const Vec8<DT>& v, int k) {
    if (DT == DT_F32) return __uint_as_float(u4_word(v.w[(k >> 2) & (DT == DT_F32 ? 1 : 0)], k & 3));
    const unsigned word = u4_word(v.w[0], k >> 1);
    const u16 half = (k & 1) ? (u16)(word >> 16) : (u16)(word & 0xffffu);
    return DT == DT_BF16 ? bf16_to_f32(half) : f16_to_f32(half);
}

// What every decode kernel argument list carries (the host's one argument builder mirrors it).
#define DEC_PARAMS                                                                              \
    Buf qkv, Buf kp, Buf vp, Buf block_table, Buf row_seq, Buf positions, Buf ctx_lens, Buf units, \
        float *part, unsigned *arrivals, Buf o, Buf lse, int h, int h_kv, int tq, int tk, int d,  \
        int block_size,                                                                         \
        int max_blocks, int causal, i64 window, float scale, int chunk, const int *step

// The block's shared memory for RMAX rows, declared once in the kernel (each dtype's body would
// otherwise get its own copy). Sized by RMAX, not DEC_MAX_ROWS: 42 KB for every kernel was, with
// the registers, what held decode_split_r2_deep to 3 blocks an SM (ncu at gpt2-124m B128 on the
// H200: 18.75% theoretical occupancy, DRAM 47% of peak); the two-row kernels need 11 KB, and
// their registers are now the only limit.
template <int RMAX> struct DecShared {
    float qs[RMAX * DEC_MAX_D];
    float w_acc[DEC_WARPS][RMAX * DEC_MAX_D];
    float w_m[DEC_WARPS][RMAX], w_l[DEC_WARPS][RMAX];
    int last;
};

// The splits' partials of unit-and-KV-head `ug` combined into O (units, Tq, H, d) and lse
// (units, H, Tq; none when lse is the null buffer), by the block that finished last. The
// partials were written by other blocks, so they are read through L2 (ld.global.cg): L1 is not
// coherent across blocks.
__device__ __forceinline__ void reduce_splits(const float* base, Buf o, Buf lse, i64 ug, i64 row0, int count,
                                              int h, int h_kv, int tq, int d, int splits) {
    const i64 u = ug / h_kv;
    const int g = (int)(ug % h_kv);
    const int group = h / h_kv, rows = group * tq, rd = rows * d;
    const i64 stride = (i64)rows * (d + 2);
    for (int i = threadIdx.x; i < rd; i += blockDim.x) {
        const int r = i / d, e = i % d;
        float m = NEG_INF;
        for (int s = 0; s < splits; ++s) m = fmaxf(m, __ldcg(base + s * stride + rd + r));
        const float m_use = m == NEG_INF ? 0.0f : m;
        float l = 0.0f, x = 0.0f;
        for (int s = 0; s < splits; ++s) {
            const float* ps = base + s * stride;
            const float w = expf(__ldcg(ps + rd + r) - m_use);
            l = fmaf(__ldcg(ps + rd + rows + r), w, l);
            x = fmaf(__ldcg(ps + i), w, x);
        }
        const int head = g * group + r / tq, q = r % tq;
        if (q >= count) continue;
        st(o, ((row0 + q) * h + head) * d + e, x / l);
        if (e == 0 && lse.p) st(lse, (u * h + head) * tq + q, m + logf(l));
    }
}

template <int DT, int RMAX, bool PREFETCH>
__device__ __forceinline__ void decode_split_body(DecShared<RMAX>& sh, DEC_PARAMS) {
    // Keys a key group loads per step: DEC_UNROLL of 16 bytes per lane, or half as many of
    // f32's 32, so both dtypes keep the same bytes in flight and registers.
    constexpr int UN = DT == DT_F32 ? DEC_UNROLL / 2 : DEC_UNROLL;
    float* qs = sh.qs;
    float(*w_acc)[RMAX * DEC_MAX_D] = sh.w_acc;
    float(*w_m)[RMAX] = sh.w_m;
    float(*w_l)[RMAX] = sh.w_l;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int lpk = 1;
    while (lpk * 8 < d) lpk <<= 1;
    const int kpw = 32 / lpk, sub = lane % lpk, kl = lane / lpk;
    const int nkg = DEC_WARPS * kpw;
    const bool lane_on = sub * 8 < d;
    const int e0 = sub * 8;
    const int split = blockIdx.y, splits = gridDim.y;
    const i64 ug = blockIdx.x, u = ug / h_kv;
    const int g = (int)(ug % h_kv);
    const int group = h / h_kv, rows = group * tq, rd = rows * d;
    const i64 width = (i64)(h + 2 * h_kv) * d;

    // The unit's first packed row and how many it has (query q of the unit is row row0 + q),
    // its sequence, its keys, and its first query's position.
    i64 row0 = u * tq;
    int count = tq;
    if (units.p) {
        row0 = ld_i32(units, 2 * u);
        count = ld_i32(units, 2 * u + 1);
    }
    i64 seq, p0;
    int ctx;
    if (row_seq.p) {
        seq = ld_i32(row_seq, row0);
        ctx = ld_i32(ctx_lens, seq);
        p0 = ld_i32(positions, row0);
    } else {
        seq = u;
        ctx = step ? step[0] : tk;
        p0 = (i64)ctx - tq;
    }
    // Query q sees keys [lo_q, hi_q): causal up to its position (the last `window` of them),
    // else all of them. The block walks the union, the first query's lo to the last one's hi.
    const i64 hi_first = causal ? min(p0 + 1, (i64)ctx) : (i64)ctx;
    const i64 hi_last = causal ? min(p0 + count, (i64)ctx) : (i64)ctx;
    const i64 lo_first = (causal && window >= 0) ? max(hi_first - window, (i64)0) : 0;
    // Key indices fit 32 bits (the host refuses more keys than i32::MAX): 64-bit compares and
    // products were a good part of the loop's instructions (ncu at gpt2-124m B128 on the H200:
    // issue-bound at ~180 instructions per key and lane, DRAM 47% of peak).
    const int j_lo = (int)max(lo_first, (i64)split * chunk);
    const int j_hi = (int)min(hi_last, (i64)split * chunk + chunk);

    // Row r is query r % tq of head g·group + r / tq; q pre-scaled.
    for (int i = tid; i < rd; i += DEC_THREADS) {
        const int r = i / d, e = i % d;
        qs[r * DEC_MAX_D + e] = r % tq < count
            ? ld(qkv, (row0 + r % tq) * width + (i64)(g * group + r / tq) * d + e) * scale
            : 0.0f;
    }
    __syncthreads();

    float m[RMAX], l[RMAX], acc[RMAX][8];
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
        m[r] = NEG_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) acc[r][k] = 0.0f;
    }
    // Row r sees keys [lo_r[r], hi_r[r]) of this split (causal up to its position, the last
    // `window` of them), fixed for the whole walk.
    int lo_r[RMAX], hi_r[RMAX];
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
        const i64 pos = p0 + r % tq;
        const i64 hi = causal ? min(pos + 1, (i64)ctx) : (i64)ctx;
        const i64 lo = (causal && window >= 0) ? max(hi - window, (i64)0) : 0;
        // A row past the unit's count sees nothing (m stays −∞) and is not written.
        hi_r[r] = r % tq < count ? (int)min(hi, (i64)j_hi) : 0;
        lo_r[r] = (int)lo;
    }
    // Where key j's row starts: block b's rows of KV head g are one run of block_size · d
    // elements at (b · H_kv + g) · block_size · d; a contiguous cache is one block per sequence.
    // Paged blocks of a power-of-two size (16 by default) divide by a shift.
    const i64 block_elems = (i64)h_kv * block_size * d;
    const i64 head_off = (i64)g * block_size * d + e0;
    const i64 table = seq * max_blocks;
    const bool bs_pow2 = (block_size & (block_size - 1)) == 0;
    const int bs_shift = __ffs(block_size) - 1;
    auto key_at = [&](int j) -> i64 {
        if (!block_table.p) return seq * block_elems + head_off + (i64)j * d;
        const int blk = bs_pow2 ? j >> bs_shift : j / block_size;
        const int off = bs_pow2 ? j & (block_size - 1) : j % block_size;
        return (i64)ld_i32(block_table, table + blk) * block_elems + head_off + off * d;
    };

    // Key group kl's keys of the step at jw: K and V rows (zero past j_hi or past D).
    auto load_step = [&](int jw, Vec8<DT>(&kv)[UN], Vec8<DT>(&vv)[UN]) {
#pragma unroll
        for (int x = 0; x < UN; ++x) {
            const int j = jw + kl + x * nkg;
            if (j < j_hi && lane_on) {
                const i64 at = key_at(j);
                kv[x] = ld_vec8<DT>(kp.p, at);
                vv[x] = ld_vec8<DT>(vp.p, at);
            } else {
#pragma unroll
                for (int w = 0; w < (DT == DT_F32 ? 2 : 1); ++w) {
                    kv[x].w[w] = make_uint4(0, 0, 0, 0);
                    vv[x].w[w] = make_uint4(0, 0, 0, 0);
                }
            }
        }
    };
    // The loop bound depends on the warp only, so that every lane reaches the shuffles. With
    // PREFETCH the next step's loads are issued before this step's arithmetic (two steps in
    // flight, for chunks of many steps; it costs registers, and a one-step chunk nothing gains).
    const int stride = nkg * UN;
    Vec8<DT> kv[UN], vv[UN];
    const int jw0 = j_lo + warp * kpw;
    if (jw0 < j_hi) load_step(jw0, kv, vv);
    for (int jw = jw0; jw < j_hi; jw += stride) {
        Vec8<DT> kn[UN], vn[UN];
        if (PREFETCH) {
            if (jw + stride < j_hi) load_step(jw + stride, kn, vn);
        } else if (jw != jw0) {
            load_step(jw, kv, vv);
        }
        int js[UN];
#pragma unroll
        for (int x = 0; x < UN; ++x) js[x] = jw + kl + x * nkg;
#pragma unroll
        for (int r = 0; r < RMAX; ++r) {
            if (r >= rows) break;
            float q[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) q[k] = lane_on ? qs[r * DEC_MAX_D + e0 + k] : 0.0f;
            float s[UN];
            float mx = NEG_INF;
#pragma unroll
            for (int x = 0; x < UN; ++x) {
                float dot = 0.0f;
#pragma unroll
                for (int k = 0; k < 8; ++k) dot = fmaf(q[k], vec8_at<DT>(kv[x], k), dot);
                for (int off = lpk >> 1; off > 0; off >>= 1)
                    dot += __shfl_xor_sync(0xffffffffu, dot, off);
                s[x] = (js[x] >= lo_r[r] && js[x] < hi_r[r]) ? dot : NEG_INF;
                mx = fmaxf(mx, s[x]);
            }
            const float m_new = fmaxf(m[r], mx);
            // A row with nothing visible yet keeps m = −∞ (the flash forward's rule).
            const float m_use = m_new == NEG_INF ? 0.0f : m_new;
            const float corr = expf(m[r] - m_use);
            float p[UN], psum = 0.0f;
#pragma unroll
            for (int x = 0; x < UN; ++x) {
                p[x] = expf(s[x] - m_use);
                psum += p[x];
            }
            l[r] = l[r] * corr + psum;
            m[r] = m_new;
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                float a = acc[r][k] * corr;
#pragma unroll
                for (int x = 0; x < UN; ++x) a = fmaf(p[x], vec8_at<DT>(vv[x], k), a);
                acc[r][k] = a;
            }
        }
        if (PREFETCH) {
#pragma unroll
            for (int x = 0; x < UN; ++x) {
                kv[x] = kn[x];
                vv[x] = vn[x];
            }
        }
    }

    // Merge the warp's key groups (lanes lpk apart hold the same dimensions), then the warps.
    for (int off = lpk; off < 32; off <<= 1) {
#pragma unroll
        for (int r = 0; r < RMAX; ++r) {
            if (r >= rows) break;
            const float m_o = __shfl_xor_sync(0xffffffffu, m[r], off);
            const float l_o = __shfl_xor_sync(0xffffffffu, l[r], off);
            const float mm = fmaxf(m[r], m_o);
            const float mu = mm == NEG_INF ? 0.0f : mm;
            const float a = expf(m[r] - mu), b = expf(m_o - mu);
            l[r] = l[r] * a + l_o * b;
            m[r] = mm;
#pragma unroll
            for (int k = 0; k < 8; ++k)
                acc[r][k] = acc[r][k] * a + __shfl_xor_sync(0xffffffffu, acc[r][k], off) * b;
        }
    }
    if (lane < lpk) {
#pragma unroll
        for (int r = 0; r < RMAX; ++r) {
            if (r >= rows) break;
            if (lane_on) {
#pragma unroll
                for (int k = 0; k < 8; ++k)
                    if (e0 + k < d) w_acc[warp][r * DEC_MAX_D + e0 + k] = acc[r][k];
            }
            if (lane == 0) {
                w_m[warp][r] = m[r];
                w_l[warp][r] = l[r];
            }
        }
    }
    __syncthreads();
    float* pp = part + (ug * splits + split) * (i64)rows * (d + 2);
    for (int i = tid; i < rd; i += DEC_THREADS) {
        const int r = i / d, e = i % d;
        float mm = NEG_INF;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) mm = fmaxf(mm, w_m[w][r]);
        const float mu = mm == NEG_INF ? 0.0f : mm;
        float ll = 0.0f, x = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) {
            const float c = expf(w_m[w][r] - mu);
            ll = fmaf(w_l[w][r], c, ll);
            x = fmaf(w_acc[w][r * DEC_MAX_D + e], c, x);
        }
        if (splits == 1) {
            const int head = g * group + r / tq, q = r % tq;
            if (q >= count) continue;
            st(o, ((row0 + q) * h + head) * d + e, x / ll);
            if (e == 0 && lse.p) st(lse, (u * h + head) * tq + q, mm + logf(ll));
        } else {
            pp[i] = x;
            if (e == 0) {
                pp[rd + r] = mm;
                pp[rd + rows + r] = ll;
            }
        }
    }
    if (splits == 1) return;
    // The last of the unit's splits to finish combines them (a separate reduce kernel cost a
    // launch per layer and step: 3.4 µs at gpt2-124m B1 on the H200, more than the work). Each
    // block's writes are fenced before it counts itself in; the last one resets the counter,
    // so the next launch (or graph replay) finds it zero.
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        const unsigned done = atomicAdd(&arrivals[ug], 1u);
        sh.last = done == (unsigned)splits - 1;
        if (sh.last) arrivals[ug] = 0;
    }
    __syncthreads();
    if (!sh.last) return;
    __threadfence();
    reduce_splits(part + ug * splits * (i64)rows * (d + 2), o, lse, ug, row0, count, h, h_kv, tq, d, splits);
}

// Pass 1, one kernel per register budget and loop: rows ≤ 2 (a decode step of MHA, or two
// queries) in decode_split_r2 (chunks of one step: no prefetch, fewer registers) and
// decode_split_r2_deep (long chunks, prefetching), up to DEC_MAX_ROWS in decode_split_r8
// (prefetching) — the smaller bodies need far fewer registers, so more blocks fit an SM. The K
// and V pools share one dtype (the host checks); qkv, O and lse any.
#define DEC_DISPATCH(RMAX, PREFETCH)                                                                      \
    __shared__ DecShared<RMAX> sh;                                                              \
    switch (kp.dt) {                                                                            \
    case DT_BF16:                                                                               \
        decode_split_body<DT_BF16, RMAX, PREFETCH>(sh, qkv, kp, vp, block_table, row_seq, positions,      \
                                         ctx_lens, units, part, arrivals, o, lse, h, h_kv, tq, tk, d,            \
                                         block_size, max_blocks, causal, window, scale, chunk,  \
                                         step);                                                 \
        break;                                                                                  \
    case DT_F16:                                                                                \
        decode_split_body<DT_F16, RMAX, PREFETCH>(sh, qkv, kp, vp, block_table, row_seq, positions,       \
                                        ctx_lens, units, part, arrivals, o, lse, h, h_kv, tq, tk, d,             \
                                        block_size, max_blocks, causal, window, scale, chunk,   \
                                        step);                                                  \
        break;                                                                                  \
    default:                                                                                    \
        decode_split_body<DT_F32, RMAX, PREFETCH>(sh, qkv, kp, vp, block_table, row_seq, positions,       \
                                        ctx_lens, units, part, arrivals, o, lse, h, h_kv, tq, tk, d,             \
                                        block_size, max_blocks, causal, window, scale, chunk,   \
                                        step);                                                  \
    }

extern "C" __global__ void __launch_bounds__(DEC_THREADS) decode_split_r2(DEC_PARAMS) {
    PDL_ENTRY();
    DEC_DISPATCH(2, false)
}

// Registers (165) hold this kernel to 3 blocks an SM. Bounded to 128 (4 blocks) it spilled 64
// bytes and measured slower: 63.1 against 57.5 µs a layer at gpt2-124m B128 on the H200
// (bench-results/2026-12-03-h200-session11/decode-ab).
extern "C" __global__ void __launch_bounds__(DEC_THREADS) decode_split_r2_deep(DEC_PARAMS) {
    PDL_ENTRY();
    DEC_DISPATCH(2, true)
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) decode_split_r8(DEC_PARAMS) {
    PDL_ENTRY();
    DEC_DISPATCH(DEC_MAX_ROWS, true)
}
