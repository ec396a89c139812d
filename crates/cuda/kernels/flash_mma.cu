// Flash attention on tensor cores (tperf_core::ops::flash_attention) for 16-bit storage: q, k,
// v, o (and dout, dqkv in the backward) all bf16 or all fp16, head sizes 64, 80 and 128, f32
// accumulation. The same algorithm as flash_attention.cu (FlashAttention-2), which stays the
// fallback for every other case (ops/attention.rs, `mma_variant`, says when each runs). On
// Hopper (sm_90) flash_wgmma.cu's kernels replace these at D = 64 and 128; D = 80 stays here.
//
// Products are mma.sync.m16n8k16 (row.col, f32 accumulators) fed by ldmatrix from shared
// memory; K/V tiles arrive by 16-byte cp.async, double-buffered, so tile t+1 loads while tile t
// computes. Shared rows are D + 8 elements (16 bytes of padding): the eight 16-byte rows one
// ldmatrix phase reads then start 4 banks apart and never conflict.
//
// Fragment layouts (PTX ISA, m16n8k16 with 16-bit inputs), lane = 4·g + t:
// - A (16×16): a0 = (g, 2t..2t+1), a1 = (g + 8, 2t..), a2 = (g, 2t + 8..), a3 = (g + 8, 2t + 8..);
// - B (16×8, k × n): b0 = (k 2t..2t+1, n g), b1 = (k 2t + 8.., n g);
// - C (16×8): c0, c1 = (g, 2t..2t+1), c2, c3 = (g + 8, 2t..).
// A thread thus owns two rows (g and g + 8) of every accumulator tile, and a row's four owners
// are one quad: row max and sum are two xor-shuffles (1, 2). The S accumulator of Q·Kᵀ has
// exactly the layout of P's A fragments for P·V, so P is rounded to 16 bits in registers and
// never touches shared memory.
//
// Forward: one block of 4 warps per (query tile of 128 rows at D = 64, 64 at 128, head, batch
// element); each warp owns 32 (16) query rows, holds their Q fragments in registers for the
// whole kernel, and walks the key
// tiles (64 keys) the block's rows can see: S = Q·Kᵀ (ldmatrix of K rows is already the "col"
// B operand), the online softmax in base 2 (scores pre-multiplied by log2(e)/√D), O += P·V (V
// through ldmatrix.trans). Masking (causal, window, past Tk) runs only on tiles that need it.
// Query tiles are issued last-first: under a causal mask the late tiles see the most keys, and
// starting them first evens the tail.
//
// Floor per (64-query × 64-key) tile: 4·64·64·D FLOPs (Q·Kᵀ and P·V) against 2·64·D·2 bytes of
// K and V from L2 — 32 FLOPs per byte at any D, above the H200's ~20 FLOPs/byte of L2 bandwidth
// per SM, so the loop is tensor-core (and exp) bound, as FlashAttention-2 is. Registers: Q
// fragments D/4, O accumulators D/2, S 32 (per thread and 16 rows). Shared memory (BQ + 4·64)·
// (D + 8)·2 bytes: 55 KB at D = 64, 87 KB at D = 128; registers (254 and 247 from NVRTC 13.5;
// the H200's NVRTC 13.0 gives 255 and spills a little at D = 64) allow 2 blocks, 8 warps an SM. Measured (H200, causal B1 H16 T16384): 225–270 TFLOP/s, latency-bound (ncu:
// issue slots ~45% busy at 8–12 warps an SM), not yet at the shared-memory bound: each
// ldmatrix.x4 (4 cycles of the SM's 128 B/cycle) feeds 2 (MT = 1) or 4 (MT = 2) mma.

#define MMA_BK 64

// Rows [0, ROWS) of a (rows, D) operand, row r at src + r·rs, into a shared tile of row stride
// D + 8 by cp.async; rows at or past `valid` are zero.
template <int D, int ROWS, int THREADS, class RowAt>
__device__ __forceinline__ void load_rows_at(u16* tile, const RowAt& row_at, int valid) {
    // 16-byte chunks a row; when they do not share out evenly (D = 80 on 256 threads) the
    // last round leaves some threads idle.
    constexpr int CH = D / 8, CHUNKS = ROWS * CH, ROUNDS = (CHUNKS + THREADS - 1) / THREADS;
#pragma unroll
    for (int k = 0; k < ROUNDS; ++k) {
        const int idx = threadIdx.x + k * THREADS;
        if (CHUNKS % THREADS != 0 && idx >= CHUNKS) break;
        const int r = idx / CH, c = idx % CH;
        const bool ok = r < valid;
        cp_async16(smem_addr(tile + r * (D + 8) + c * 8), row_at(ok ? r : 0) + c * 8, ok);
    }
}
// The same for a strided operand: row r at src + r·rs.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_rows_async(u16* tile, const u16* src, i64 rs, int valid) {
    load_rows_at<D, ROWS, THREADS>(tile, [=](int r) { return src + (i64)r * rs; }, valid);
}

// ---------------------------------------------------------------------------------------------
// Forward

// Where a forward block's keys and values are: `at(j0)` gives the row function of the tile of
// keys from j0 (row r is key j0 + r) for load_rows_at. DenseKeys: a strided view, key j at
// base + j·stride. PagedKeys: the paged pools (num_blocks, H_kv, block_size, D) of one sequence,
// key j in block table[j / block_size] at offset j % block_size (`base` already at the KV head).
struct DenseKeys {
    const u16* base;
    i64 stride;
    __device__ __forceinline__ auto at(i64 j0) const {
        const u16* src = base + j0 * stride;
        const i64 rs = stride;
        return [=](int r) { return src + (i64)r * rs; };
    }
};
struct PagedKeys {
    const u16* base;
    const int* table; // this sequence's row of the block table
    i64 block_stride; // elements from one block to the next: H_kv · block_size · D
    int block_size, d;
    __device__ __forceinline__ auto at(i64 j0) const {
        const PagedKeys p = *this;
        return [=](int r) {
            const i64 j = j0 + r;
            return p.base + (i64)p.table[j / p.block_size] * p.block_stride +
                   (j % p.block_size) * p.d;
        };
    }
};

// One forward block's work: query rows [0, rows) at qg + i·q_stride (at positions q_pos + i),
// their output at og + i·o_stride and, when `lse` is not the null buffer, their log-sum-exp at
// lse[lse0 + i]; the keys [lo, hi) of `keys`/`vals`, masked by the causal rule and window.
// WARPS warps a block, each owning MT·16 consecutive query rows (MT m16 tiles): a K or V
// fragment loaded from shared memory feeds MT products, so MT = 2 halves the shared-memory
// traffic per tensor-core op (the loop's bound at MT = 1).
template <int D, int WARPS, int MT, bool BF, class Keys>
__device__ __forceinline__ void mma_fwd_tile(const u16* qg, i64 q_stride, int rows, i64 q_pos,
                                             const Keys& keys, const Keys& vals, i64 lo, i64 hi,
                                             int causal, i64 window, float scale, u16* og,
                                             i64 o_stride, Buf lse, i64 lse0) {
    constexpr int BQ = WARPS * 16 * MT, BK = MMA_BK, LD = D + 8, THREADS = WARPS * 32;
    constexpr int KT = D / 16, NT = BK / 8, OT = D / 8;
    extern __shared__ __align__(16) u16 mma_smem[];
    u16* Qs = mma_smem;         // BQ × LD
    u16* Ks = Qs + BQ * LD;     // 2 × BK × LD
    u16* Vs = Ks + 2 * BK * LD; // 2 × BK × LD
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    load_rows_async<D, BQ, THREADS>(Qs, qg, q_stride, rows);
    if (lo < hi) {
        const int valid = (int)min((i64)BK, hi - lo);
        load_rows_at<D, BK, THREADS>(Ks, keys.at(lo), valid);
        load_rows_at<D, BK, THREADS>(Vs, vals.at(lo), valid);
    }
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();

    // This warp's query rows as A fragments, one per 16 columns of D, per m16 tile.
    const u16* qrow0 =
        Qs + (warp * 16 * MT + (lane % 8) + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8;
    unsigned qf[MT][KT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int kk = 0; kk < KT; ++kk)
            ldsm4(smem_addr(qrow0 + mt * 16 * LD + kk * 16), qf[mt][kk][0], qf[mt][kk][1],
                  qf[mt][kk][2], qf[mt][kk][3]);

    float acc[MT][OT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int t = 0; t < OT; ++t)
            acc[mt][t][0] = acc[mt][t][1] = acc[mt][t][2] = acc[mt][t][3] = 0.0f;
    // Running max (log2 units, of scaled scores) and this thread's share of the row sum, for
    // rows g and g + 8 of each of the warp's m16 tiles.
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = NEG_INF, l[mt][0] = l[mt][1] = 0.0f;
    const float sl2 = scale * LOG2E;
    // ldmatrix row addresses of this lane within a tile: K (non-transposed, keys as B's n) and
    // V (transposed, keys as B's k).
    const int krow = (lane % 8) + (lane / 16) * 8, kcol = ((lane / 8) % 2) * 8;
    const int vrow = (lane % 8) + ((lane / 8) % 2) * 8, vcol = (lane / 16) * 8;
    const int qr = warp * 16 * MT + lane / 4; // tile row of c0/c1 in m16 tile 0 (c2/c3: + 8)

    int buf = 0;
    for (i64 j0 = lo; j0 < hi; j0 += BK, buf ^= 1) {
        // Tile t + 1 into the other buffer, whose readers finished before the barrier that
        // ended tile t − 1.
        if (j0 + BK < hi) {
            const i64 jn = j0 + BK;
            const int valid = (int)min((i64)BK, hi - jn);
            load_rows_at<D, BK, THREADS>(Ks + (buf ^ 1) * BK * LD, keys.at(jn), valid);
            load_rows_at<D, BK, THREADS>(Vs + (buf ^ 1) * BK * LD, vals.at(jn), valid);
        }
        cp_async_commit();
        const u16* Kt = Ks + buf * BK * LD;
        const u16* Vt = Vs + buf * BK * LD;

        float s[MT][NT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int t = 0; t < NT; ++t) s[mt][t][0] = s[mt][t][1] = s[mt][t][2] = s[mt][t][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                unsigned b0, b1, b2, b3;
                ldsm4(smem_addr(Kt + (np * 16 + krow) * LD + kk * 16 + kcol), b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816<BF>(s[mt][2 * np], qf[mt][kk], b0, b1);
                    mma16816<BF>(s[mt][2 * np + 1], qf[mt][kk], b2, b3);
                }
            }
        }

        // Masks are needed past the visible range's end, across the causal diagonal, and where
        // the window's lower edge cuts the tile (the block's last row sees the fewest old keys).
        const bool masked =
            j0 + BK > hi ||
            (causal && (j0 + BK - 1 > q_pos ||
                        (window >= 0 && q_pos + BQ - 1 - j0 >= window)));
        if (masked) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int t = 0; t < NT; ++t)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const i64 pos = q_pos + qr + mt * 16 + (e / 2) * 8;
                        const i64 j = j0 + t * 8 + (lane % 4) * 2 + (e % 2);
                        if (!(j < hi && mma_visible(causal, window, pos, j)))
                            s[mt][t][e] = NEG_INF;
                    }
        }

#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = m[mt][r];
#pragma unroll
                for (int t = 0; t < NT; ++t)
                    mx = fmaxf(mx, fmaxf(s[mt][t][2 * r], s[mt][t][2 * r + 1]) * sl2);
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                // A row with nothing visible yet keeps m = −∞; subtracting 0 gives p = 0 and a
                // correction of 0 rather than NaN.
                const float mu = mx == NEG_INF ? 0.0f : mx;
                const float corr = fast_exp2(m[mt][r] - mu);
                m[mt][r] = mx;
                float sum = 0.0f;
#pragma unroll
                for (int t = 0; t < NT; ++t)
#pragma unroll
                    for (int e = 2 * r; e < 2 * r + 2; ++e) {
                        s[mt][t][e] = fast_exp2(fmaf(s[mt][t][e], sl2, -mu));
                        sum += s[mt][t][e];
                    }
                l[mt][r] = l[mt][r] * corr + sum;
#pragma unroll
                for (int t = 0; t < OT; ++t) {
                    acc[mt][t][2 * r] *= corr;
                    acc[mt][t][2 * r + 1] *= corr;
                }
            }

        // O += P·V, P's A fragments straight from the S accumulators.
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                a[mt][0] = pack2<BF>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                a[mt][1] = pack2<BF>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                a[mt][2] = pack2<BF>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                a[mt][3] = pack2<BF>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                unsigned b0, b1, b2, b3;
                ldsm4t(smem_addr(Vt + (kk * 16 + vrow) * LD + dp * 16 + vcol), b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816<BF>(acc[mt][2 * dp], a[mt], b0, b1);
                    mma16816<BF>(acc[mt][2 * dp + 1], a[mt], b2, b3);
                }
            }
        }

        // Tile t + 1 has landed and every warp is done with tile t's buffers.
        cp_async_wait_all();
        __syncthreads();
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float sum = l[mt][r];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const int i = qr + mt * 16 + 8 * r;
            if (i >= rows) continue;
            const float inv = 1.0f / sum;
            u16* orow = og + i * o_stride + (lane % 4) * 2;
#pragma unroll
            for (int t = 0; t < OT; ++t)
                *(unsigned*)(orow + t * 8) =
                    pack2<BF>(acc[mt][t][2 * r] * inv, acc[mt][t][2 * r + 1] * inv);
            if (lane % 4 == 0 && lse.p) st(lse, lse0 + i, (m[mt][r] + log2f(sum)) * LN2);
        }
}

// The dense forward: one block per (query tile of BQ rows, head, batch element), over a
// strided K and V (a KV cache or the packed qkv itself).
template <int D, int WARPS, int MT, bool BF>
__device__ __forceinline__ void mma_fwd(Buf qkv, Buf kb, i64 k0, i64 k_sb, i64 k_sh, i64 k_sj,
                                        Buf vb, i64 v0, i64 v_sb, i64 v_sh, i64 v_sj, Buf o,
                                        Buf lse, MmaFwdArgs p) {
    constexpr int BQ = WARPS * 16 * MT;
    const int tiles = (p.tq + BQ - 1) / BQ;
    const int tile = tiles - 1 - (int)(blockIdx.x % tiles);
    const int head = (int)((blockIdx.x / tiles) % p.h);
    const i64 b = (i64)(blockIdx.x / tiles) / p.h;
    const int g = head / (p.h / p.h_kv);
    const i64 width = (i64)(p.h + 2 * p.h_kv) * D;
    const int i0 = tile * BQ, i1 = min(i0 + BQ, p.tq);
    const i64 off = (i64)p.tk - p.tq;

    i64 lo = 0, hi = p.tk;
    if (p.causal) {
        hi = off + i1;
        if (p.window >= 0) lo = max((i64)0, off + i0 + 1 - p.window);
    }
    const u16* qg = (const u16*)qkv.p + (b * p.tq + i0) * width + (i64)head * D;
    const DenseKeys keys{(const u16*)kb.p + k0 + b * k_sb + (i64)g * k_sh, k_sj};
    const DenseKeys vals{(const u16*)vb.p + v0 + b * v_sb + (i64)g * v_sh, v_sj};
    const i64 hd = (i64)p.h * D;
    u16* og = (u16*)o.p + (b * p.tq + i0) * hd + (i64)head * D;
    mma_fwd_tile<D, WARPS, MT, BF>(qg, width, i1 - i0, off + i0, keys, vals, lo, hi, p.causal,
                                   p.window, p.scale, og, hd, lse,
                                   (b * p.h + head) * p.tq + i0);
}

// Paged prefill (tperf_core::ops::paged_attention, ops/paged_attention.rs): the rows of a ragged
// batch's prefill chunks against the paged pools, on tensor cores. `units` holds (first packed
// row, rows ≤ BQ) pairs, each a run of one sequence's consecutive rows at consecutive positions;
// one block per (unit, head), heads of a unit adjacent (the GQA group's blocks read the same
// keys from L2). Decode rows stay with flash-decoding (decode_attention.cu), whose units read
// the keys once for one or two queries where a 64-row tile would waste the rest.
#define PAGED_MMA_PARAMS                                                                          \
    Buf qkv, Buf kp, Buf vp, Buf block_table, Buf row_seq, Buf positions, Buf ctx_lens, Buf units, \
        Buf o, int h, int h_kv, int block_size, int max_blocks, int causal, i64 window,          \
        float scale
#define PAGED_MMA_ARGS                                                                            \
    qkv, kp, vp, block_table, row_seq, positions, ctx_lens, units, o, h, h_kv, block_size,       \
        max_blocks, causal, window, scale

template <int D, int WARPS, int MT, bool BF>
__device__ __forceinline__ void paged_mma_fwd(PAGED_MMA_PARAMS) {
    const i64 unit = blockIdx.x / h;
    const int head = (int)(blockIdx.x % h);
    const int g = head / (h / h_kv);
    const i64 r0 = ld_i32(units, 2 * unit);
    const int rows = ld_i32(units, 2 * unit + 1);
    const int s = ld_i32(row_seq, r0);
    const i64 q_pos = ld_i32(positions, r0);
    const i64 ctx = ld_i32(ctx_lens, s);
    i64 lo = 0, hi = ctx;
    if (causal) {
        hi = min(ctx, q_pos + rows);
        if (window >= 0) lo = max((i64)0, q_pos + 1 - window);
    }
    const i64 width = (i64)(h + 2 * h_kv) * D;
    const i64 block_stride = (i64)h_kv * block_size * D;
    const int* table = (const int*)block_table.p + (i64)s * max_blocks;
    const i64 head_off = (i64)g * block_size * D;
    const PagedKeys keys{(const u16*)kp.p + head_off, table, block_stride, block_size, D};
    const PagedKeys vals{(const u16*)vp.p + head_off, table, block_stride, block_size, D};
    const i64 hd = (i64)h * D;
    mma_fwd_tile<D, WARPS, MT, BF>((const u16*)qkv.p + r0 * width + (i64)head * D, width, rows,
                                   q_pos, keys, vals, lo, hi, causal, window, scale,
                                   (u16*)o.p + r0 * hd + (i64)head * D, hd, Buf{nullptr, 0, 0},
                                   0);
}

// D = 64: 4 warps of 32 query rows (128-row tiles; 254 registers, 2 blocks an SM). D = 128:
// 4 warps of 16 rows (64-row tiles): 32 rows would need 64 more registers of Q fragments than
// 255 leave, and reloading them from shared memory per tile spilled and ran 7% slower; 8 warps
// of 16 rows ran as fast (H200, 2026-12-02).
extern "C" __global__ void __launch_bounds__(128) flash_mma_fwd_d64_bf16(MMA_FWD_PARAMS) {
    mma_fwd<64, 4, 2, true>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) flash_mma_fwd_d64_f16(MMA_FWD_PARAMS) {
    mma_fwd<64, 4, 2, false>(MMA_FWD_ARGS);
}
// D = 80 (the seed's 2.7B, phi-2): as 128, 16 rows a warp.
extern "C" __global__ void __launch_bounds__(128) flash_mma_fwd_d80_bf16(MMA_FWD_PARAMS) {
    mma_fwd<80, 4, 1, true>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) flash_mma_fwd_d80_f16(MMA_FWD_PARAMS) {
    mma_fwd<80, 4, 1, false>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) flash_mma_fwd_d128_bf16(MMA_FWD_PARAMS) {
    mma_fwd<128, 4, 1, true>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) flash_mma_fwd_d128_f16(MMA_FWD_PARAMS) {
    mma_fwd<128, 4, 1, false>(MMA_FWD_ARGS);
}
// The paged prefill kernels: the dense forward's tiles (BQ = 128 rows at D = 64, 64 at 80 and
// 128), so units of up to BQ rows.
extern "C" __global__ void __launch_bounds__(128) paged_mma_fwd_d64_bf16(PAGED_MMA_PARAMS) {
    paged_mma_fwd<64, 4, 2, true>(PAGED_MMA_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) paged_mma_fwd_d64_f16(PAGED_MMA_PARAMS) {
    paged_mma_fwd<64, 4, 2, false>(PAGED_MMA_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) paged_mma_fwd_d80_bf16(PAGED_MMA_PARAMS) {
    paged_mma_fwd<80, 4, 1, true>(PAGED_MMA_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) paged_mma_fwd_d80_f16(PAGED_MMA_PARAMS) {
    paged_mma_fwd<80, 4, 1, false>(PAGED_MMA_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) paged_mma_fwd_d128_bf16(PAGED_MMA_PARAMS) {
    paged_mma_fwd<128, 4, 1, true>(PAGED_MMA_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) paged_mma_fwd_d128_f16(PAGED_MMA_PARAMS) {
    paged_mma_fwd<128, 4, 1, false>(PAGED_MMA_ARGS);
}

// ---------------------------------------------------------------------------------------------
// Backward
//
// One block of 8 warps per (key tile of 128 keys, key/value head, batch element), after
// flash_bwd_di (flash_attention.cu) has written Dᵢ = rowsum(dO ⊙ O). K and V stay in shared
// memory; warp w owns keys 16w..16w + 15 of the tile and their dK and dV accumulators (f32, in
// registers for the whole kernel). The block walks the query heads of its group and the query
// tiles (BQ rows) that can see its keys, Q, dO, lse and Dᵢ double-buffered by cp.async:
//   Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (ldmatrix of Q and dO rows is B's "col" layout),
//   Pᵀ = exp2(Sᵀ·log2(e)/√D − lse·log2(e)), dSᵀ = Pᵀ ⊙ (dPᵀ − Dᵢ) (masked only where needed),
//   dV += Pᵀ·dO and dK += dSᵀ·Q (Pᵀ and dSᵀ as A fragments from the accumulators, dO and Q by
//   ldmatrix.trans),
//   dQ += dS·K/√D: dSᵀ goes through shared memory (the one product that needs the transposed
//   fragment), and each warp adds a 16-row slice of the tile's dQ into the f32 scratch with
//   16-byte vector atomics (red.global.add.v4.f32, see dq_add), which flash_bwd_dq converts
//   into dqkv.
// dK (scaled by 1/√D) and dV are written once per key at the end.
//
// Floor per (128-key × BQ-query) tile: 5 products of 2·128·BQ·D FLOPs (Sᵀ, dPᵀ, dV, dK, dQ)
// against 2·BQ·D·2 bytes of Q and dO read and BQ·D·4 bytes of dQ atomics: 160 FLOPs per byte
// at any BQ. The atomics were the first bound measured (ncu at 64 keys with scalar atomics: L2
// 55% busy, SM issue 24%); 128 keys halve them and the vector reds quarter their instructions.
// Registers: dK, dV accumulators D (per thread), Sᵀ and dPᵀ BQ/2, K and V fragments D/2 at
// D = 64. BQ = 64 at D = 64 (93 KB shared), 32 at D = 128 (113 KB); 255 registers allow one
// block, 8 warps an SM. NVRTC 13.0 (the H200's) spills here: ncu counted 0.3M local spill
// requests a launch at D = 64 and 1.7M at 128 (T = 4096), and SM issue ~25% busy at ~7 cycles
// per issued instruction: latency, not a pipe, bounds both kernels today. A split variant (dQ in a kernel of its own recomputing S and dP, no
// atomics) measured 8–17% slower than this one and was removed.

template <int D, int BQ, int WARPS, bool HOIST, bool BF>
__device__ __forceinline__ void mma_bwd(Buf qkv, Buf dout, Buf lse, const float* di, float* dq,
                                        Buf dqkv, MmaBwdArgs p) {
    constexpr int THREADS = WARPS * 32, BK = WARPS * 16, LD = D + 8, SLD = BQ + 8;
    constexpr int KT = D / 16, NT = BQ / 8, OT = D / 8;
    // dQ: BQ/16 warps along the rows, the rest split D's 16-column chunks, WP a warp (at
    // D = 80 five chunks over two warps: 3 and 2).
    constexpr int WQ = BQ / 16, WD = WARPS / WQ, CHUNKS = D / 16, WP = (CHUNKS + WD - 1) / WD;
    static_assert(WARPS % WQ == 0 && D % 16 == 0, "dQ's warp grid covers the tile");
    extern __shared__ __align__(16) u16 mma_smem[];
    u16* Ks = mma_smem;            // BK × LD
    u16* Vs = Ks + BK * LD;        // BK × LD
    u16* Qs = Vs + BK * LD;        // 2 × BQ × LD
    u16* dOs = Qs + 2 * BQ * LD;   // 2 × BQ × LD
    u16* dSs = dOs + 2 * BQ * LD;  // BK × SLD (dSᵀ: key row, query column)
    float* Ls = (float*)(dSs + BK * SLD); // 2 × BQ (lse, f32)
    float* Ds = Ls + 2 * BQ;              // 2 × BQ

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int tiles = (p.tk + BK - 1) / BK;
    const int tile = (int)(blockIdx.x % tiles);
    const int g = (int)((blockIdx.x / tiles) % p.h_kv);
    const i64 b = (i64)(blockIdx.x / tiles) / p.h_kv;
    const int group = p.h / p.h_kv;
    const i64 width = (i64)(p.h + 2 * p.h_kv) * D, hd = (i64)p.h * D;
    const int j0 = tile * BK, j1 = min(j0 + BK, p.tk);
    const i64 off = (i64)p.tk - p.tq;

    // Query rows that see any key of [j0, j1): [qlo, qhi).
    i64 qlo = 0, qhi = p.tq;
    if (p.causal) {
        qlo = max((i64)0, j0 - off);
        if (p.window >= 0) qhi = min((i64)p.tq, j1 - 1 + p.window - off);
    }
    const int nq = qhi > qlo ? (int)((qhi - qlo + BQ - 1) / BQ) : 0;
    const int total = group * nq;

    const u16* base = (const u16*)qkv.p + b * p.tk * width;
    load_rows_async<D, BK, THREADS>(Ks, base + j0 * width + (i64)(p.h + g) * D, width, j1 - j0);
    load_rows_async<D, BK, THREADS>(Vs, base + j0 * width + (i64)(p.h + p.h_kv + g) * D, width, j1 - j0);

    // Query tile `it` (head g·group + it / nq, rows from qlo + (it % nq)·BQ) into buffer `bf`.
    auto load_q = [&](int it, int bf) {
        const int head = g * group + it / nq;
        const i64 i0 = qlo + (i64)(it % nq) * BQ;
        const int valid = (int)min((i64)BQ, qhi - i0);
        load_rows_async<D, BQ, THREADS>(Qs + bf * BQ * LD,
                               (const u16*)qkv.p + (b * p.tq + i0) * width + (i64)head * D, width,
                               valid);
        load_rows_async<D, BQ, THREADS>(dOs + bf * BQ * LD,
                               (const u16*)dout.p + (b * p.tq + i0) * hd + (i64)head * D, hd,
                               valid);
        const i64 row = (b * p.h + head) * p.tq + i0;
        for (int q = tid; q < BQ; q += THREADS) {
            const bool ok = q < valid;
            const float* lsrc = (const float*)lse.p + row + (ok ? q : 0);
            const float* dsrc = di + row + (ok ? q : 0);
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(
                             smem_addr(Ls + bf * BQ + q)),
                         "l"(lsrc), "r"(ok ? 4 : 0)
                         : "memory");
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(
                             smem_addr(Ds + bf * BQ + q)),
                         "l"(dsrc), "r"(ok ? 4 : 0)
                         : "memory");
        }
    };
    if (total > 0) load_q(0, 0);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();

    float dk[OT][4], dv[OT][4];
#pragma unroll
    for (int t = 0; t < OT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[t][e] = dv[t][e] = 0.0f;

    const float sl2 = p.scale * LOG2E;
    // ldmatrix lane offsets: A fragments from row-major rows (K, V), B from rows as n (Q, dO
    // for Sᵀ, dPᵀ), B from rows as k (.trans: Q, dO for dK, dV; K for dQ), A from dSᵀ (.trans).
    const int arow = (lane % 8) + ((lane / 8) % 2) * 8, acol = (lane / 16) * 8;
    const int brow = (lane % 8) + (lane / 16) * 8, bcol = ((lane / 8) % 2) * 8;
    const int kr = warp * 16 + lane / 4; // tile key of c0/c1 (c2/c3: + 8)
    const u16* kfrag = Ks + (warp * 16 + arow) * LD + acol;
    const u16* vfrag = Vs + (warp * 16 + arow) * LD + acol;
    // With HOIST the warp's K and V rows stay in registers as A fragments for the whole kernel
    // (2·D/4 registers), instead of one ldmatrix each per 16 columns per query tile.
    unsigned kh[HOIST ? KT : 1][4], vh[HOIST ? KT : 1][4];
    if (HOIST) {
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            ldsm4(smem_addr(kfrag + kk * 16), kh[kk][0], kh[kk][1], kh[kk][2], kh[kk][3]);
            ldsm4(smem_addr(vfrag + kk * 16), vh[kk][0], vh[kk][1], vh[kk][2], vh[kk][3]);
        }
    }

    int bf = 0;
    for (int it = 0; it < total; ++it, bf ^= 1) {
        if (it + 1 < total) load_q(it + 1, bf ^ 1);
        cp_async_commit();
        const int head = g * group + it / nq;
        const i64 i0 = qlo + (i64)(it % nq) * BQ;
        const u16* Qt = Qs + bf * BQ * LD;
        const u16* dOt = dOs + bf * BQ * LD;
        const float* Lt = Ls + bf * BQ;
        const float* Dt = Ds + bf * BQ;

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[t][e] = dp[t][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            unsigned ka[4], va[4];
            if (HOIST) {
#pragma unroll
                for (int e = 0; e < 4; ++e) ka[e] = kh[HOIST ? kk : 0][e], va[e] = vh[HOIST ? kk : 0][e];
            } else {
                ldsm4(smem_addr(kfrag + kk * 16), ka[0], ka[1], ka[2], ka[3]);
                ldsm4(smem_addr(vfrag + kk * 16), va[0], va[1], va[2], va[3]);
            }
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                unsigned b0, b1, b2, b3;
                ldsm4(smem_addr(Qt + (np * 16 + brow) * LD + kk * 16 + bcol), b0, b1, b2, b3);
                mma16816<BF>(s[2 * np], ka, b0, b1);
                mma16816<BF>(s[2 * np + 1], ka, b2, b3);
                ldsm4(smem_addr(dOt + (np * 16 + brow) * LD + kk * 16 + bcol), b0, b1, b2, b3);
                mma16816<BF>(dp[2 * np], va, b0, b1);
                mma16816<BF>(dp[2 * np + 1], va, b2, b3);
            }
        }

        const bool masked =
            i0 + BQ > qhi || j0 + BK > p.tk ||
            (p.causal && (j0 + BK - 1 > off + i0 ||
                          (p.window >= 0 && off + i0 + BQ - 1 - j0 >= p.window)));
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int q = t * 8 + (lane % 4) * 2 + (e % 2);
                float pv = fast_exp2(fmaf(s[t][e], sl2, -Lt[q] * LOG2E));
                if (masked) {
                    const i64 i = i0 + q, j = j0 + kr + (e / 2) * 8;
                    if (!(i < qhi && j < j1 && mma_visible(p.causal, p.window, off + i, j)))
                        pv = 0.0f;
                }
                s[t][e] = pv;
                dp[t][e] = pv * (dp[t][e] - Dt[q]);
            }

        // dSᵀ to shared memory for dQ, as 16-bit pairs.
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const int q = t * 8 + (lane % 4) * 2;
            *(unsigned*)(dSs + kr * SLD + q) = pack2<BF>(dp[t][0], dp[t][1]);
            *(unsigned*)(dSs + (kr + 8) * SLD + q) = pack2<BF>(dp[t][2], dp[t][3]);
        }

        // dV += Pᵀ·dO, dK += dSᵀ·Q over the tile's queries.
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk) {
            const unsigned pa[4] = {pack2<BF>(s[2 * kk][0], s[2 * kk][1]),
                                    pack2<BF>(s[2 * kk][2], s[2 * kk][3]),
                                    pack2<BF>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack2<BF>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            const unsigned sa[4] = {pack2<BF>(dp[2 * kk][0], dp[2 * kk][1]),
                                    pack2<BF>(dp[2 * kk][2], dp[2 * kk][3]),
                                    pack2<BF>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                                    pack2<BF>(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
            for (int n = 0; n < D / 16; ++n) {
                unsigned b0, b1, b2, b3;
                ldsm4t(smem_addr(dOt + (kk * 16 + arow) * LD + n * 16 + acol), b0, b1, b2, b3);
                mma16816<BF>(dv[2 * n], pa, b0, b1);
                mma16816<BF>(dv[2 * n + 1], pa, b2, b3);
                ldsm4t(smem_addr(Qt + (kk * 16 + arow) * LD + n * 16 + acol), b0, b1, b2, b3);
                mma16816<BF>(dk[2 * n], sa, b0, b1);
                mma16816<BF>(dk[2 * n + 1], sa, b2, b3);
            }
        }
        __syncthreads(); // dSᵀ is complete

        // dQ rows 16·(warp % WQ).., 16-column chunks c0.. c0 + mine − 1 of the tile: dS·K.
        // `mine` is the same for every lane of a warp, so the guarded ldmatrix stays converged.
        {
            const int qw = (warp % WQ) * 16, c0 = (warp / WQ) * WP, cw = c0 * 16;
            // Where the chunks share out evenly (D = 64, 128) `mine` is the constant WP and the
            // guards below compile away (the kernels are then the ones before D = 80 existed).
            const int mine = CHUNKS % WD == 0 ? WP : min(WP, CHUNKS - c0);
            float acc[2 * WP][4];
#pragma unroll
            for (int t = 0; t < 2 * WP; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk) {
                unsigned a[4];
                ldsm4t(smem_addr(dSs + (kk * 16 + brow) * SLD + qw + bcol), a[0], a[1], a[2],
                       a[3]);
#pragma unroll
                for (int n = 0; n < WP; ++n) {
                    if (n >= mine) break;
                    unsigned b0, b1, b2, b3;
                    ldsm4t(smem_addr(Ks + (kk * 16 + arow) * LD + cw + n * 16 + acol), b0,
                           b1, b2, b3);
                    mma16816<BF>(acc[2 * n], a, b0, b1);
                    mma16816<BF>(acc[2 * n + 1], a, b2, b3);
                }
            }
            const i64 i = i0 + qw + lane / 4;
            float* dst = dq + (b * p.tq + i) * hd + (i64)head * D + cw + (lane % 4) * 2;
#pragma unroll
            for (int t = 0; t < 2 * WP; ++t) {
                if (t >= 2 * mine) break;
                dq_add(dst + t * 8, hd, acc[t], p.scale, lane, i < qhi, i + 8 < qhi);
            }
        }

        // The next tile has landed; every warp is done with this tile's buffers and dSᵀ.
        cp_async_wait_all();
        __syncthreads();
    }

    // Each key of the tile is written once, by this block.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int j = j0 + kr + 8 * r;
        if (j >= j1) continue;
        u16* row = (u16*)dqkv.p + (b * p.tk + j) * width + (lane % 4) * 2;
#pragma unroll
        for (int t = 0; t < OT; ++t) {
            *(unsigned*)(row + (i64)(p.h + g) * D + t * 8) =
                pack2<BF>(dk[t][2 * r] * p.scale, dk[t][2 * r + 1] * p.scale);
            *(unsigned*)(row + (i64)(p.h + p.h_kv + g) * D + t * 8) =
                pack2<BF>(dv[t][2 * r], dv[t][2 * r + 1]);
        }
    }
}

// 128 keys on 8 warps (against 64 on 4: half the dQ atomics and the Q/dO reads per key; 9.4 →
// 7.3 ms at D = 64, T = 16384, 19.2 → 13.3 at D = 128 with the vector reds). At D = 64 the K
// and V fragments stay in registers (another 3%); at 128 they do not fit.
extern "C" __global__ void __launch_bounds__(256) flash_mma_bwd_d64_bf16(MMA_BWD_PARAMS) {
    mma_bwd<64, 64, 8, true, true>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(256) flash_mma_bwd_d64_f16(MMA_BWD_PARAMS) {
    mma_bwd<64, 64, 8, true, false>(MMA_BWD_ARGS);
}
// D = 80: 64-query tiles as at 64, K and V fragments in shared memory (hoisted they spill).
extern "C" __global__ void __launch_bounds__(256) flash_mma_bwd_d80_bf16(MMA_BWD_PARAMS) {
    mma_bwd<80, 64, 8, false, true>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(256) flash_mma_bwd_d80_f16(MMA_BWD_PARAMS) {
    mma_bwd<80, 64, 8, false, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(256) flash_mma_bwd_d128_bf16(MMA_BWD_PARAMS) {
    mma_bwd<128, 32, 8, false, true>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(256) flash_mma_bwd_d128_f16(MMA_BWD_PARAMS) {
    mma_bwd<128, 32, 8, false, false>(MMA_BWD_ARGS);
}
