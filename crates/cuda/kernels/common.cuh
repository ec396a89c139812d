// Shared by every tperf kernel source: the tensor argument, dtype conversion, and reductions.
//
// A tensor reaches a kernel as a Buf: its device pointer and its dtype code. Kernels load and
// store through ld/st, which convert to and from f32, so one kernel serves fp32, bf16 and fp16
// storage and any mix of them (the mixed-precision policy keeps gradients and statistics in f32
// beside bf16 activations). The dtype switch is uniform across a warp, so it costs a few
// instructions, not divergence; specialised kernels can replace this where a measurement says so.
//
// Conversions use PTX cvt with round-to-nearest-even, the rounding the CPU backend emulates.

typedef unsigned short u16;
typedef long long i64;

#define NEG_INF __int_as_float(0xff800000)

// Programmatic dependent launch (Hopper and later). The host launches the kernels that
// signatures::EARLY_LAUNCH lists with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
// so the driver may start one while the kernel before it on the stream is still running; each
// such kernel starts with PDL_ENTRY(). The wait returns once every earlier grid has completed
// and its writes are visible, so nothing before it may touch global memory (read or write: a
// buffer the predecessor still reads may be this kernel's output). The trigger after it lets
// the next early kernel be scheduled onto free SMs while this one runs, so a chain of small
// kernels (a decode step's ~100 at batch 1, each a few µs) overlaps each launch with the
// previous kernel's work instead of paying it in series. A kernel launched without the
// attribute (or on an older GPU) runs both as no-ops.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_ENTRY() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#else
#define PDL_ENTRY()
#endif

#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2
#define DT_I32 3

struct Buf {
    void* p;
    int dt;
    int pad;
};

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((unsigned)h) << 16); }
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

__device__ __forceinline__ float ld(const Buf& b, i64 i) {
    switch (b.dt) {
    case DT_BF16: return bf16_to_f32(((const u16*)b.p)[i]);
    case DT_F16: return f16_to_f32(((const u16*)b.p)[i]);
    case DT_I32: return (float)((const int*)b.p)[i];
    default: return ((const float*)b.p)[i];
    }
}

__device__ __forceinline__ void st(const Buf& b, i64 i, float v) {
    switch (b.dt) {
    case DT_BF16: ((u16*)b.p)[i] = f32_to_bf16(v); break;
    case DT_F16: ((u16*)b.p)[i] = f32_to_f16(v); break;
    case DT_I32: ((int*)b.p)[i] = (int)v; break;
    default: ((float*)b.p)[i] = v;
    }
}

__device__ __forceinline__ int ld_i32(const Buf& b, i64 i) { return ((const int*)b.p)[i]; }

// Global-space vector accesses: where a pointer comes from memory (a table of tensors) rather
// than a kernel parameter the compiler cannot prove it global and would emit generic LD/ST; the
// PTX says global (LDG.E.128 / STG.E.128 in the SASS).
__device__ __forceinline__ float4 ldg_f4(const void* p) {
    float4 v;
    asm("ld.global.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ uint2 ldg_u2(const void* p) {
    uint2 v;
    asm("ld.global.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}
__device__ __forceinline__ void stg_f4(void* p, float4 v) {
    asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};"
                 :
                 : "l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
                 : "memory");
}
__device__ __forceinline__ void stg_u2(void* p, uint2 v) {
    asm volatile("st.global.v2.u32 [%0], {%1, %2};" : : "l"(p), "r"(v.x), "r"(v.y) : "memory");
}

// Four consecutive elements from index i (a multiple of 4) of a float tensor whose element i
// is aligned to four elements (16 bytes for f32, 8 for the 16-bit dtypes).
__device__ __forceinline__ void ld4(const void* p, int dt, i64 i, float v[4]) {
    if (dt == DT_F32) {
        float4 f = ldg_f4((const float*)p + i);
        v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
    } else {
        uint2 u = ldg_u2((const u16*)p + i);
        u16 h[4] = {(u16)(u.x & 0xffffu), (u16)(u.x >> 16), (u16)(u.y & 0xffffu), (u16)(u.y >> 16)};
#pragma unroll
        for (int k = 0; k < 4; k++) v[k] = dt == DT_BF16 ? bf16_to_f32(h[k]) : f16_to_f32(h[k]);
    }
}

__device__ __forceinline__ void st4(void* p, int dt, i64 i, const float v[4]) {
    if (dt == DT_F32) {
        stg_f4((float*)p + i, make_float4(v[0], v[1], v[2], v[3]));
    } else {
        u16 h[4];
#pragma unroll
        for (int k = 0; k < 4; k++) h[k] = dt == DT_BF16 ? f32_to_bf16(v[k]) : f32_to_f16(v[k]);
        stg_u2((u16*)p + i, make_uint2(h[0] | ((unsigned)h[1] << 16), h[2] | ((unsigned)h[3] << 16)));
    }
}

// Eight consecutive elements from index i (a multiple of 8) of a tensor whose element i is
// 16-byte aligned: one 16-byte load for a 16-bit dtype, two for f32.
__device__ __forceinline__ void ld8(const Buf& b, i64 i, float v[8]) {
    if (b.dt == DT_F32) {
        const float4* p = (const float4*)((const float*)b.p + i);
        float4 lo = p[0], hi = p[1];
        v[0] = lo.x; v[1] = lo.y; v[2] = lo.z; v[3] = lo.w;
        v[4] = hi.x; v[5] = hi.y; v[6] = hi.z; v[7] = hi.w;
    } else {
        uint4 u = *(const uint4*)((const u16*)b.p + i);
        unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            u16 h0 = (u16)(w[k] & 0xffffu), h1 = (u16)(w[k] >> 16);
            v[2 * k] = b.dt == DT_BF16 ? bf16_to_f32(h0) : f16_to_f32(h0);
            v[2 * k + 1] = b.dt == DT_BF16 ? bf16_to_f32(h1) : f16_to_f32(h1);
        }
    }
}

__device__ __forceinline__ void st8(const Buf& b, i64 i, const float v[8]) {
    if (b.dt == DT_F32) {
        float4* p = (float4*)((float*)b.p + i);
        p[0] = make_float4(v[0], v[1], v[2], v[3]);
        p[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
        unsigned w[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            u16 h0 = b.dt == DT_BF16 ? f32_to_bf16(v[2 * k]) : f32_to_f16(v[2 * k]);
            u16 h1 = b.dt == DT_BF16 ? f32_to_bf16(v[2 * k + 1]) : f32_to_f16(v[2 * k + 1]);
            w[k] = h0 | ((unsigned)h1 << 16);
        }
        *(uint4*)((u16*)b.p + i) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

// Grid-stride loop over n elements.
#define FOR_EACH(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n); i += (i64)gridDim.x * blockDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the trailing barrier lets the caller reuse it.
__device__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    v = warp_sum(v);
    __syncthreads();
    return v;
}
__device__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : NEG_INF;
    v = warp_max(v);
    __syncthreads();
    return v;
}

// Activations, by the codes of act_code (cuda/src/ops/activation.rs): GELU (tanh approximation),
// ReLU, SiLU; each mirrors tperf_core's ops/activation.rs.
#define ACT_GELU 0
#define ACT_RELU 1
#define ACT_SILU 2

// √(2/π) and the cubic coefficient of GELU's tanh approximation (ops/activation.rs).
#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float act_fwd(int kind, float x) {
    switch (kind) {
    case ACT_GELU: {
        float inner = GELU_K * (x + GELU_C * x * x * x);
        return 0.5f * x * (1.0f + tanhf(inner));
    }
    case ACT_RELU: return fmaxf(x, 0.0f);
    default: return x * sigmoidf_(x);
    }
}

__device__ __forceinline__ float act_grad(int kind, float x) {
    switch (kind) {
    case ACT_GELU: {
        float inner = GELU_K * (x + GELU_C * x * x * x);
        float t = tanhf(inner);
        float dinner = GELU_K * (1.0f + 3.0f * GELU_C * x * x);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dinner;
    }
    case ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
    default: {
        float s = sigmoidf_(x);
        return s * (1.0f + x * (1.0f - s));
    }
    }
}

// RoPE's frequency f of a pair (θ^(−2i/D)) rescaled by the model's long-context bands
// (tperf_core::config::RopeBands::apply, in the same order of operations): a wavelength
// λ = 2π/f below keep_below is kept, above divide_above divided by factor, and between blended
// linearly in 1/λ. No scaling is factor 1 with both bands 0; linear scaling, both bands 0.
__device__ __forceinline__ double rope_scale_freq(double f, double factor, double keep_below,
                                                  double divide_above) {
    if (factor == 1.0 && keep_below == 0.0 && divide_above == 0.0) return f;
    double wavelength = 2.0 * 3.14159265358979323846 / f;
    if (wavelength < keep_below) return f;
    if (wavelength > divide_above) return f / factor;
    double s = (1.0 / wavelength - 1.0 / divide_above) / (1.0 / keep_below - 1.0 / divide_above);
    return (1.0 - s) * f / factor + s * f;
}
