// The global gradient norm without a host synchronisation: Σ g² is reduced on the device into a
// one-element tensor, which AdamW (adamw.cu) reads there to derive its clipping scale. Mirrors
// crates/cpu/src/kernels/grad_norm.rs and tperf_core::ops::grad_norm. The table and its walk
// are tensor_table.cuh's.
//
// Roofline: the norm reads g once (4 B a parameter in f32), so at the H200's ~4.8 TB/s a
// 2.7B-parameter step is ≥ 2.3 ms.

// Elements per work item: a multiple of 4 (vector width), OPT_PER float4 per thread of the
// OPT_THREADS a block has. The loads of a thread's OPT_PER vectors are all issued before the
// first is used, so a thread has several independent 16-byte loads in flight.
#define NORM_CHUNK 8192
#define OPT_PER (NORM_CHUNK / (4 * OPT_THREADS))

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

// One gradient of the norm's table (ops/grad_norm.rs norm_table, 32 bytes).
struct NormTensor {
    const void* g;
    i64 n;
    i64 first_item; // index of its first work item; the table is sorted by it
    int dt;
    int aligned; // g is 16-byte aligned: the vector path applies
};

// Σ g² over every gradient of `table`, in f64: block b writes its sum to acc[b] (no atomics and
// nothing to zero beforehand; items go to blocks in a fixed order, so the result is
// deterministic).
extern "C" __global__ void __launch_bounds__(OPT_THREADS, OPT_BLOCKS_PER_SM)
    grad_sum_sq_multi(const NormTensor* table, int count, i64 items, double* acc) {
    double s = 0.0;
    int at = blockIdx.x < items ? find_tensor(table, count, blockIdx.x) : 0;
    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        at = next_tensor(table, count, at, item);
        const NormTensor t = table[at];
        i64 lo = (item - t.first_item) * NORM_CHUNK;
        i64 hi = min(lo + (i64)NORM_CHUNK, t.n);
        i64 vec_end = t.aligned ? lo + ((hi - lo) & ~(i64)3) : lo;
        float x[OPT_PER][4];
#pragma unroll
        for (int r = 0; r < OPT_PER; r++) {
            i64 i = lo + 4 * ((i64)threadIdx.x + r * OPT_THREADS);
            if (i < vec_end) ld4(t.g, t.dt, i, x[r]);
        }
#pragma unroll
        for (int r = 0; r < OPT_PER; r++) {
            i64 i = lo + 4 * ((i64)threadIdx.x + r * OPT_THREADS);
            if (i < vec_end) {
#pragma unroll
                for (int k = 0; k < 4; k++) s += (double)x[r][k] * (double)x[r][k];
            }
        }
        Buf g = buf_of((void*)t.g, t.dt);
        for (i64 i = vec_end + threadIdx.x; i < hi; i += blockDim.x) {
            double x = (double)ld(g, i);
            s += x * x;
        }
    }
    s = block_sum_f64(s);
    if (threadIdx.x == 0) acc[blockIdx.x] = s;
}

// norm = √(Σ_b acc[b]), one block; with `squared` (a ZeRO-1 shard) Σ itself, which an
// all-reduce then adds over the ranks (roots do not add).
extern "C" __global__ void grad_norm_finish(const double* acc, int blocks, int squared, Buf norm) {
    double s = 0.0;
    for (int b = threadIdx.x; b < blocks; b += blockDim.x) s += acc[b];
    s = block_sum_f64(s);
    if (threadIdx.x == 0) st(norm, 0, (float)(squared ? s : sqrt(s)));
}
