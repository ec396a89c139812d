// Sampling the next token on the device (ops/sampling.rs is the reference and the spec): one
// block per row of V logits, one launch for the whole batch; only the ids are written.
//
// Floor per row: V logits read once (greedy: V·2 bytes in bf16, 100 KB at V = 50257; B32 3.2 MB,
// ~0.7 µs of H200 HBM) and ~2V FLOPs for the max. A stochastic draw rereads the row (from L1/L2)
// once per pass below: 3 passes with a temperature only, about 21 with top-k and top-p (each
// radix search is 4 histogram passes and 2 index-order passes), ~5V FLOPs a pass.
//
// How the reference's draw is reproduced without sorting V logits:
// - The candidates, in the reference's order (descending logit, ties by index), are a prefix of
//   one total order on (key desc, index asc), key the logit's bits mapped so that unsigned order
//   is float order (total_cmp's: -0 < +0). Top-k and top-p each cut that prefix shorter, so a
//   set of candidates is one bound: the element it ends at.
// - "The first element at which the running measure reaches x" (the k-th element by count, the
//   nucleus's last element by mass, the drawn element by mass ≥ u + 1) is a radix search: four
//   8-bit digits of the key, a 256-bin histogram of count and mass per digit, then the ties at
//   the final key in index order by a block prefix scan.
// - Weights are exp((z − z_max)/T) in fixed point (units of 2^-40, ≤ 2^40 each), so every sum is
//   exact in any order: histograms built with atomics are deterministic, and the only departures
//   from the reference (which sums f64 in order) are the weights' f32 exp (≤ ~2 ulp) and the
//   2^-40 truncation. A draw whose u lies within that rounding of a boundary between two
//   candidates may pick the neighbour; nothing else differs. Greedy is exact.
// - Without top-k and top-p the reference walks the candidates in index order, so the draw is
//   one index-order prefix scan.
// - The random u is the reference's: SplitMix64 (crates/core/src/rng.rs) for stream
//   (call·2^32 + row) of the shared seed, or stream 0 of a row's own seed. `call` is a device
//   counter this kernel advances itself (the last block to finish adds one), so a step replayed
//   from a CUDA graph draws anew each time.
//
// NaN logits are outside the contract (the reference's comparisons with NaN differ); a row whose
// weights all vanish (+inf logits) falls back to its argmax.

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
// Words of one setting in `params`: seed (lo, hi), temperature f64 (lo, hi), top_p f64 (lo, hi),
// top_k (1..=V; V when unset). ops/sampling.rs writes them.
#define SETTING_WORDS 7
#define FIXED_ONE 1099511627776.0 // 2^40

typedef unsigned long long u64;

struct SampleShared {
    unsigned hist_n[256];
    u64 hist_m[256];
    u64 warp_u64[SAMPLE_WARPS];
    float warp_val[SAMPLE_WARPS];
    int warp_idx[SAMPLE_WARPS];
    int bin;
    u64 before;
    int first_thread;
    int found;
    u64 call;
};

// A candidate set: the elements up to (key kb, index ib) in (key desc, index asc) order.
struct Bound {
    unsigned kb;
    int ib;
};

struct Row {
    Buf z;
    i64 base;
    int v;
    double zmax;
    double inv_t;
};

__device__ __forceinline__ u64 splitmix_next(u64& s) {
    s += 0x9E3779B97F4A7C15ull;
    u64 z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Rng::for_stream(seed, stream).uniform().
__device__ double stream_uniform(u64 seed, u64 stream) {
    u64 s = seed ^ (stream * 0xD1B54A32D192ED03ull);
    splitmix_next(s);
    return (double)(splitmix_next(s) >> 11) / 9007199254740992.0;
}

__device__ __forceinline__ unsigned order_key(float f) {
    unsigned b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ bool in_bound(unsigned k, int j, Bound b) {
    return k > b.kb || (k == b.kb && j <= b.ib);
}

__device__ __forceinline__ u64 weight(const Row& r, float f) {
    float w = expf((float)(((double)f - r.zmax) * r.inv_t));
    return (u64)((double)w * FIXED_ONE);
}

__device__ u64 block_sum_u64(u64 v, SampleShared& sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) sh.warp_u64[warp] = v;
    __syncthreads();
    v = lane < SAMPLE_WARPS ? sh.warp_u64[lane] : 0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    return v;
}

// Exclusive prefix of v over the threads in index order (and the block total).
__device__ u64 block_exclusive_u64(u64 v, u64* total, SampleShared& sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u64 incl = v;
    for (int o = 1; o < 32; o <<= 1) {
        u64 t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    if (lane == 31) sh.warp_u64[warp] = incl;
    __syncthreads();
    u64 w = lane < SAMPLE_WARPS ? sh.warp_u64[lane] : 0;
    u64 wincl = w;
    for (int o = 1; o < 32; o <<= 1) {
        u64 t = __shfl_up_sync(0xffffffffu, wincl, o);
        if (lane >= o) wincl += t;
    }
    u64 warp_before = __shfl_sync(0xffffffffu, wincl - w, warp);
    *total = __shfl_sync(0xffffffffu, wincl, 31);
    __syncthreads();
    return warp_before + incl - v;
}

__device__ u64 set_mass(const Row& r, Bound b, SampleShared& sh) {
    u64 m = 0;
    for (int j = threadIdx.x; j < r.v; j += SAMPLE_THREADS) {
        float f = ld(r.z, r.base + j);
        if (in_bound(order_key(f), j, b)) m += weight(r, f);
    }
    return block_sum_u64(m, sh);
}

// The first element in index order of {j in b, key_j == key when tie_only} at which `acc` plus
// the running measure (count, or mass when by_mass) reaches x; -1 when none does.
__device__ int find_in_index_order(const Row& r, Bound b, bool tie_only, unsigned key,
                                   bool by_mass, u64 acc, u64 x, SampleShared& sh) {
    int chunk = (r.v + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    int lo = min(r.v, (int)threadIdx.x * chunk), hi = min(r.v, lo + chunk);
    u64 mine = 0;
    int count = 0;
    for (int j = lo; j < hi; ++j) {
        float f = ld(r.z, r.base + j);
        unsigned k = order_key(f);
        if (in_bound(k, j, b) && (!tie_only || k == key)) {
            mine += by_mass ? weight(r, f) : 1;
            ++count;
        }
    }
    if (threadIdx.x == 0) {
        sh.first_thread = SAMPLE_THREADS;
        sh.found = -1;
    }
    u64 total;
    u64 before = acc + block_exclusive_u64(mine, &total, sh);
    if (count > 0 && before + mine >= x) atomicMin(&sh.first_thread, (int)threadIdx.x);
    __syncthreads();
    if ((int)threadIdx.x == sh.first_thread) {
        u64 run = before;
        for (int j = lo; j < hi; ++j) {
            float f = ld(r.z, r.base + j);
            unsigned k = order_key(f);
            if (in_bound(k, j, b) && (!tie_only || k == key)) {
                run += by_mass ? weight(r, f) : 1;
                if (run >= x) {
                    sh.found = j;
                    break;
                }
            }
        }
    }
    __syncthreads();
    int found = sh.found;
    __syncthreads();
    return found;
}

// The first element of set b in (key desc, index asc) order at which the running measure reaches
// x, as the bound that ends there; ib = -1 when none does (x above the set's measure).
__device__ Bound find_desc(const Row& r, Bound b, bool by_mass, u64 x, SampleShared& sh) {
    unsigned prefix = 0;
    u64 acc = 0;
    int lane = threadIdx.x & 31;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += SAMPLE_THREADS) {
            sh.hist_n[i] = 0;
            sh.hist_m[i] = 0;
        }
        __syncthreads();
        unsigned high = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
        for (int j = threadIdx.x; j < r.v; j += SAMPLE_THREADS) {
            float f = ld(r.z, r.base + j);
            unsigned k = order_key(f);
            if (!in_bound(k, j, b) || (k & high) != prefix) continue;
            unsigned d = (k >> shift) & 255u;
            atomicAdd(&sh.hist_n[d], 1u);
            if (by_mass) atomicAdd(&sh.hist_m[d], weight(r, f));
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            // Lane l holds bins 255 − 8l down to 248 − 8l: the lanes in descending key order.
            u64 mine = 0;
            for (int i = 0; i < 8; ++i) {
                int bin = 255 - 8 * lane - i;
                mine += by_mass ? sh.hist_m[bin] : (u64)sh.hist_n[bin];
            }
            u64 incl = mine;
            for (int o = 1; o < 32; o <<= 1) {
                u64 t = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += t;
            }
            u64 run = acc + incl - mine;
            int bin_found = -1;
            u64 before = 0;
            for (int i = 0; i < 8; ++i) {
                int bin = 255 - 8 * lane - i;
                u64 m = by_mass ? sh.hist_m[bin] : (u64)sh.hist_n[bin];
                if (sh.hist_n[bin] > 0 && run + m >= x) {
                    bin_found = bin;
                    before = run;
                    break;
                }
                run += m;
            }
            unsigned hits = __ballot_sync(0xffffffffu, bin_found >= 0);
            int src = hits ? __ffs(hits) - 1 : 0;
            if (lane == src) {
                sh.bin = bin_found;
                sh.before = before;
            }
        }
        __syncthreads();
        int bin = sh.bin;
        u64 before = sh.before;
        __syncthreads();
        if (bin < 0) return Bound{0u, -1};
        prefix |= (unsigned)bin << shift;
        acc = before;
    }
    int j = find_in_index_order(r, b, true, prefix, by_mass, acc, x, sh);
    return Bound{prefix, j};
}

// This thread's share of a row's argmax (the first index on ties), to be merged across the block:
// (best, best_j) start at (−inf, v) and best_j stays v when the thread saw nothing.
//
// Why vectors: greedy decoding is this pass alone, and with one 2-byte load per iteration a
// thread's 49 loads of a 50257-logit row went one latency after another (33 µs for one row on
// the H200, against ~1 µs of traffic). Here the aligned body of the row is read as 16-byte words
// (8 bf16/f16 or 4 f32 logits), a few words a thread, all loads issued before the compares; the
// unaligned head and tail (rows of an odd V do not start on 16 bytes) are single loads. Each
// thread walks its own elements in increasing index, so keeping only strictly larger values
// keeps the first index on ties, and the merge breaks ties by index.
__device__ __forceinline__ void argmax_take(float f, int j, float& best, int& best_j, int v) {
    if (best_j == v || f > best) {
        best = f;
        best_j = j;
    }
}

__device__ void row_argmax(const Buf& z, i64 base, int v, float& best, int& best_j) {
    const int elem = z.dt == DT_F32 ? 4 : 2;
    const int per_word = 16 / elem;
    const char* p = (const char*)z.p + base * elem;
    // Elements before the first 16-byte boundary of the row, and whole words after it.
    int head = (int)(((16 - ((unsigned long long)p & 15)) & 15) / elem);
    if (head > v) head = v;
    const int words = (v - head) / per_word;
    const int tail = head + words * per_word;
    // The head comes first in index order, so it is taken first by its threads.
    for (int j = threadIdx.x; j < head; j += SAMPLE_THREADS) argmax_take(ld(z, base + j), j, best, best_j, v);
    const uint4* body = (const uint4*)(p + head * elem);
    constexpr int BATCH = 4;
    for (int w0 = threadIdx.x; w0 < words; w0 += BATCH * SAMPLE_THREADS) {
        uint4 u[BATCH];
#pragma unroll
        for (int b = 0; b < BATCH; ++b) {
            int w = w0 + b * SAMPLE_THREADS;
            if (w < words) u[b] = __ldg(body + w);
        }
#pragma unroll
        for (int b = 0; b < BATCH; ++b) {
            int w = w0 + b * SAMPLE_THREADS;
            if (w >= words) break;
            int j0 = head + w * per_word;
            unsigned word[4] = {u[b].x, u[b].y, u[b].z, u[b].w};
            if (z.dt == DT_F32) {
#pragma unroll
                for (int e = 0; e < 4; ++e) argmax_take(__uint_as_float(word[e]), j0 + e, best, best_j, v);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    u16 h = (u16)(word[e / 2] >> (16 * (e % 2)));
                    float f = z.dt == DT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
                    argmax_take(f, j0 + e, best, best_j, v);
                }
            }
        }
    }
    for (int j = tail + threadIdx.x; j < v; j += SAMPLE_THREADS) argmax_take(ld(z, base + j), j, best, best_j, v);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows(Buf logits, Buf ids, int v, const unsigned* params,
                                       int per_row, unsigned long long* counter) {
    PDL_ENTRY();
    __shared__ SampleShared sh;
    int row = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) sh.call = counter[0];

    // Argmax, the first index on ties.
    Row r;
    r.z = logits;
    r.base = (i64)row * v;
    r.v = v;
    float best = NEG_INF;
    int best_j = v;
    row_argmax(logits, r.base, v, best, best_j);
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oj = __shfl_xor_sync(0xffffffffu, best_j, o);
        if (oj < v && (best_j == v || ov > best || (ov == best && oj < best_j))) {
            best = ov;
            best_j = oj;
        }
    }
    if (lane == 0) {
        sh.warp_val[warp] = best;
        sh.warp_idx[warp] = best_j;
    }
    __syncthreads();
    best = sh.warp_val[lane];
    best_j = sh.warp_idx[lane];
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oj = __shfl_xor_sync(0xffffffffu, best_j, o);
        if (oj < v && (best_j == v || ov > best || (ov == best && oj < best_j))) {
            best = ov;
            best_j = oj;
        }
    }
    u64 call = sh.call;
    __syncthreads();

    const unsigned* w = params + (per_row ? row : 0) * SETTING_WORDS;
    u64 seed = (u64)w[0] | ((u64)w[1] << 32);
    double temperature = __hiloint2double((int)w[3], (int)w[2]);
    double top_p = __hiloint2double((int)w[5], (int)w[4]);
    int k = (int)w[6];
    int pick = best_j;
    if (temperature > 0.0) {
        r.zmax = (double)best;
        r.inv_t = 1.0 / temperature;
        bool nucleus = top_p < 1.0;
        Bound b = Bound{0u, v};
        bool ok = true;
        if (k < v) {
            b = find_desc(r, b, false, (u64)k, sh);
            ok = b.ib >= 0;
        }
        if (ok && nucleus) {
            u64 mass = set_mass(r, b, sh);
            u64 x = top_p > 0.0 ? (u64)ceil(top_p * (double)mass) : 0;
            b = find_desc(r, b, true, x, sh);
            ok = b.ib >= 0;
        }
        if (ok) {
            u64 total = set_mass(r, b, sh);
            u64 stream = per_row ? 0ull : call * 4294967296ull + (u64)row;
            double u = stream_uniform(seed, stream);
            u64 at = total > 0 ? min((u64)(u * (double)total), total - 1) : 0;
            if (k < v || nucleus) {
                Bound d = find_desc(r, b, true, at + 1, sh);
                if (d.ib >= 0) pick = d.ib;
            } else {
                int j = find_in_index_order(r, b, false, 0u, true, 0, at + 1, sh);
                if (j >= 0) pick = j;
            }
        }
    }
    if (threadIdx.x == 0) {
        ((int*)ids.p)[row] = pick;
        // The last block to finish advances the call counter: every block has read it by then.
        __threadfence();
        unsigned long long done = atomicAdd(&counter[1], 1ull);
        if (done == gridDim.x - 1) {
            counter[1] = 0;
            counter[0] = call + 1;
            __threadfence();
        }
    }
}
