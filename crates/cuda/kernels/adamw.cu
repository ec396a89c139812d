// One AdamW update of every parameter without a host synchronisation: the clipping scale comes
// from the global gradient norm that grad_norm.cu left in device memory. Mirrors
// crates/cpu/src/kernels/adamw.rs and tperf_core::ops::adamw. The table and its walk are
// tensor_table.cuh's.
//
// Roofline (bytes per parameter, f32 state and gradients, bf16 copy): AdamW reads θ, g, m, v
// (16 B) and writes θ, m, v (12 B) and the copy (2 B): 30 B/param, so at the H200's ~4.8 TB/s
// a 2.7B-parameter step is ≥ 17 ms.
//
// The items are small (2048 elements, 61 KB of traffic) so that the one wave's shares are even:
// a 2.7B layer's 78.6M parameters are 38,400 items, 72.7 per block of 528; with the
// 8192-element items and 1056 blocks it had before, 9.1 items a block, the last round ran 96
// blocks of 1056 (the kernel measured 1.27× its roofline on the H200).

// Elements per work item: a multiple of 4 (vector width), ADAM_PER float4 per thread of the
// OPT_THREADS a block has. The loads of a thread's ADAM_PER vectors are all issued before the
// first is used, so a thread has several independent 16-byte loads in flight.
#define ADAM_CHUNK 2048
#define ADAM_PER (ADAM_CHUNK / (4 * OPT_THREADS))

// One parameter of AdamW's table (ops/adamw.rs adam_table, 64 bytes). dt packs the dtype
// codes of θ, g, m, v, copy in 4 bits each, from the low end.
struct AdamTensor {
    void* theta;
    const void* g;
    void* m;
    void* v;
    void* copy; // null when there is none
    i64 n;
    i64 first_item;
    int dt;
    int flags; // bit 0: weight decay applies (2-D); bit 1: every pointer is 16-byte aligned
};

// The per-step constants of one AdamW update.
struct AdamConsts {
    float b1, b2, one_b1, one_b2, c1, c2, lr, eps, wd, clip;
};

// One element's update: the CPU's arithmetic, in its order and in f32 with every operation
// rounded on its own (the _rn intrinsics keep the compiler from fusing a multiply and an add
// into an FMA), so the two backends agree to the last bit on f32 state.
__device__ __forceinline__ void adam_elem(const AdamConsts& k, float wd, float g, float& m,
                                          float& v, float& th) {
    float gi = __fmul_rn(g, k.clip);
    m = __fadd_rn(__fmul_rn(k.b1, m), __fmul_rn(k.one_b1, gi));
    v = __fadd_rn(__fmul_rn(k.b2, v), __fmul_rn(__fmul_rn(k.one_b2, gi), gi));
    float denom = __fadd_rn(__fsqrt_rn(__fdiv_rn(v, k.c2)), k.eps);
    float step = __fadd_rn(__fdiv_rn(__fdiv_rn(m, k.c1), denom), __fmul_rn(wd, th));
    th = __fsub_rn(th, __fmul_rn(k.lr, step));
}

// One AdamW update of every parameter of `table`, in place on θ, m and v, with the gradient
// factor derived here from the global norm of the stored gradients, which carry the loss scale S
// (AdamW::grad_factor: clip(‖g‖/S)/S with AdamWParams::clip_scale's clip = max/(‖g‖/S + 1e-6)
// when ‖g‖/S > max, in f64, then rounded to f32 once; for S = 1 it is the clip alone). When
// S > 1 and the norm is not finite (an fp16 gradient overflowed) the step is skipped: every
// thread returns before writing, leaving θ, m, v and the copies unchanged, and nothing goes back
// to the host. The bias corrections c1 = 1 − β₁ᵗ, c2 = 1 − β₂ᵗ come from the host (f64, rounded
// to f32) like the other hyperparameters; weight decay applies where the descriptor says. A copy
// receives θ in its storage dtype. lr, c1 and c2 change from step to step: in a replayed graph
// they come from device memory, `step` = {lr, c1, c2} (graph.rs); eagerly `step` is null.
// `norm_squared` (ZeRO-1): the norm tensor holds the ranks' summed Σg², whose root is the norm.
extern "C" __global__ void __launch_bounds__(OPT_THREADS, OPT_BLOCKS_PER_SM)
    adamw_update_multi(const AdamTensor* table, int count, i64 items, Buf norm, float b1,
                       float b2, float c1, float c2, float lr, float eps, float wd, int clip_on,
                       double max_norm, double grad_scale, int norm_squared, const float* step) {
    if (step) {
        lr = step[0];
        c1 = step[1];
        c2 = step[2];
    }
    const double input = (double)ld(norm, 0);
    const double measured = norm_squared ? sqrt(input) : input;
    if (grad_scale > 1.0 && !isfinite(measured)) return;
    const double gn = measured / grad_scale;
    double c = 1.0;
    if (clip_on && gn > max_norm) c = max_norm / (gn + 1e-6);
    AdamConsts k;
    k.b1 = b1;
    k.b2 = b2;
    k.one_b1 = __fsub_rn(1.0f, b1);
    k.one_b2 = __fsub_rn(1.0f, b2);
    k.c1 = c1;
    k.c2 = c2;
    k.lr = lr;
    k.eps = eps;
    k.clip = (float)(c / grad_scale);
    int at = blockIdx.x < items ? find_tensor(table, count, blockIdx.x) : 0;
    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        at = next_tensor(table, count, at, item);
        const AdamTensor t = table[at];
        const float twd = (t.flags & 1) ? wd : 0.0f;
        const int dth = t.dt & 15, dg = (t.dt >> 4) & 15, dm = (t.dt >> 8) & 15,
                  dv = (t.dt >> 12) & 15, dc = (t.dt >> 16) & 15;
        i64 lo = (item - t.first_item) * ADAM_CHUNK;
        i64 hi = min(lo + (i64)ADAM_CHUNK, t.n);
        i64 vec_end = (t.flags & 2) ? lo + ((hi - lo) & ~(i64)3) : lo;
        // Every load of the item first (ADAM_PER × 4 vectors a thread), then the updates and
        // the stores: the stores' memory clobber keeps later loads behind them.
        float th[ADAM_PER][4], g[ADAM_PER][4], m[ADAM_PER][4], v[ADAM_PER][4];
#pragma unroll
        for (int r = 0; r < ADAM_PER; r++) {
            const i64 i = lo + 4 * ((i64)threadIdx.x + r * OPT_THREADS);
            if (i < vec_end) {
                ld4(t.theta, dth, i, th[r]);
                ld4(t.g, dg, i, g[r]);
                ld4(t.m, dm, i, m[r]);
                ld4(t.v, dv, i, v[r]);
            }
        }
#pragma unroll
        for (int r = 0; r < ADAM_PER; r++) {
            const i64 i = lo + 4 * ((i64)threadIdx.x + r * OPT_THREADS);
            if (i < vec_end) {
#pragma unroll
                for (int e = 0; e < 4; e++) adam_elem(k, twd, g[r][e], m[r][e], v[r][e], th[r][e]);
                st4(t.m, dm, i, m[r]);
                st4(t.v, dv, i, v[r]);
                st4(t.theta, dth, i, th[r]);
                if (t.copy) st4(t.copy, dc, i, th[r]);
            }
        }
        Buf bth = buf_of(t.theta, dth), bg = buf_of((void*)t.g, dg), bm = buf_of(t.m, dm),
            bv = buf_of(t.v, dv), bc = buf_of(t.copy, dc);
        for (i64 i = vec_end + threadIdx.x; i < hi; i += blockDim.x) {
            float th = ld(bth, i), m = ld(bm, i), v = ld(bv, i);
            adam_elem(k, twd, ld(bg, i), m, v, th);
            st(bm, i, m);
            st(bv, i, v);
            st(bth, i, th);
            if (t.copy) st(bc, i, th);
        }
    }
}
