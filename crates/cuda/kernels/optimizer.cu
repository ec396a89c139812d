// The optimizer step without a host synchronisation: the global gradient norm is reduced on the
// device into a one-element tensor, and AdamW reads it there to derive its clipping scale.
// Mirrors crates/cpu/src/kernels/{grad_norm,adamw}.rs and tperf_core::ops::adamw.

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block in f64 (blockDim.x a multiple of 32); every thread gets it.
__device__ double block_sum_f64(double v) {
    __shared__ double scratch[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum_f64(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0;
    v = warp_sum_f64(v);
    __syncthreads();
    return v;
}

__device__ __forceinline__ double sum_sq(const Buf& g, i64 n) {
    double s = 0.0;
    FOR_EACH(i, n) {
        double x = (double)ld(g, i);
        s += x * x;
    }
    return s;
}

// Σ g² over up to eight gradient tensors (n = 0 for unused slots), in f64. Block b adds its sum
// to acc[b]: acc is zeroed before the first launch, the launches are ordered on the stream and no
// two blocks share a slot, so no atomics are needed and the result is deterministic.
extern "C" __global__ void grad_sum_sq(Buf g0, Buf g1, Buf g2, Buf g3, Buf g4, Buf g5, Buf g6,
                                       Buf g7, i64 n0, i64 n1, i64 n2, i64 n3, i64 n4, i64 n5,
                                       i64 n6, i64 n7, double* acc) {
    double s = sum_sq(g0, n0) + sum_sq(g1, n1) + sum_sq(g2, n2) + sum_sq(g3, n3) + sum_sq(g4, n4) +
               sum_sq(g5, n5) + sum_sq(g6, n6) + sum_sq(g7, n7);
    s = block_sum_f64(s);
    if (threadIdx.x == 0) acc[blockIdx.x] += s;
}

// norm = √(Σ_b acc[b]), one block.
extern "C" __global__ void grad_norm_finish(const double* acc, int blocks, Buf norm) {
    double s = 0.0;
    for (int b = threadIdx.x; b < blocks; b += blockDim.x) s += acc[b];
    s = block_sum_f64(s);
    if (threadIdx.x == 0) st(norm, 0, (float)sqrt(s));
}

// One AdamW update of one parameter tensor, in place on θ, m and v, with the gradient factor
// derived here from the global norm of the stored gradients, which carry the loss scale S
// (AdamW::grad_factor: clip(‖g‖/S)/S with AdamWParams::clip_scale's clip = max/(‖g‖/S + 1e-6)
// when ‖g‖/S > max, in f64, then rounded to f32 once; for S = 1 it is the clip alone). When
// S > 1 and the norm is not finite (an fp16 gradient overflowed) the step is skipped: every
// thread returns before writing, leaving θ, m, v and the copy unchanged, and nothing goes back
// to the host. The arithmetic is the CPU's, in its order and in f32 with every operation
// rounded on its own (the _rn intrinsics keep the compiler from fusing a multiply and an add
// into an FMA), so the two backends agree to the last bit on f32 state. The bias
// corrections c1 = 1 − β₁ᵗ, c2 = 1 − β₂ᵗ come from the host (f64, rounded to f32) like the
// other hyperparameters. `copy` (a null pointer when absent) receives θ in its storage dtype.
// lr and the bias corrections c1 = 1 − β₁ᵗ, c2 = 1 − β₂ᵗ change from step to step: in a replayed
// graph they come from device memory, `step` = {lr, c1, c2} (graph.rs); eagerly `step` is null.
extern "C" __global__ void adamw_update(Buf norm, Buf theta, Buf g, Buf m, Buf v, Buf copy, i64 n,
                                        float b1, float b2, float c1, float c2, float lr,
                                        float eps, float wd, int clip_on, double max_norm,
                                        double grad_scale, const float* step) {
    if (step) {
        lr = step[0];
        c1 = step[1];
        c2 = step[2];
    }
    const double measured = (double)ld(norm, 0);
    if (grad_scale > 1.0 && !isfinite(measured)) return;
    const double gn = measured / grad_scale;
    double c = 1.0;
    if (clip_on && gn > max_norm) c = max_norm / (gn + 1e-6);
    const float clip = (float)(c / grad_scale);
    const float one_b1 = __fsub_rn(1.0f, b1), one_b2 = __fsub_rn(1.0f, b2);
    FOR_EACH(i, n) {
        float gi = __fmul_rn(ld(g, i), clip);
        float mi = __fadd_rn(__fmul_rn(b1, ld(m, i)), __fmul_rn(one_b1, gi));
        float vi = __fadd_rn(__fmul_rn(b2, ld(v, i)), __fmul_rn(__fmul_rn(one_b2, gi), gi));
        st(m, i, mi);
        st(v, i, vi);
        float th = ld(theta, i);
        float denom = __fadd_rn(__fsqrt_rn(__fdiv_rn(vi, c2)), eps);
        float step = __fadd_rn(__fdiv_rn(__fdiv_rn(mi, c1), denom), __fmul_rn(wd, th));
        th = __fsub_rn(th, __fmul_rn(lr, step));
        st(theta, i, th);
        if (copy.p) st(copy, i, th);
    }
}
