// Tensor-core building blocks shared by flash_mma.cu (mma.sync, every sm_80+ GPU) and
// flash_wgmma.cu (Hopper's warpgroup MMA): cp.async copies into shared memory, ldmatrix,
// mma.sync.m16n8k16, packing two floats into one register of 16-bit values, and the
// causal/window visibility rule. compile.rs places this file between common.cuh and each of
// those two sources.

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// 16 bytes global → shared; `valid` false writes zeros and reads nothing (src must still be a
// mapped address, the caller passes the tile's base).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldsm4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2,
                                      unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void ldsm4t(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2,
                                       unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

// c += a·b on one 16×8 tile.
template <bool BF>
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
    if (BF) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// Two floats as one register of two 16-bit values, `lo` in the low half (round to nearest even,
// as st() rounds).
template <bool BF> __device__ __forceinline__ unsigned pack2(float lo, float hi) {
    unsigned r;
    if (BF)
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    else
        asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// 2^x by the SFU's one instruction (ex2.approx, flushing subnormal results to 0). exp2f is the
// same approximation wrapped in three more instructions that keep results below 2^−126
// subnormal; the softmax's exponents are ≤ 0 and such tiny probabilities vanish beside a row
// sum ≥ 1, so the flush changes nothing a 16-bit P could hold.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ bool mma_visible(int causal, i64 window, i64 pos, i64 j) {
    return !causal || (j <= pos && (window < 0 || pos - j < window));
}


// dQ's f32 atomics, four consecutive floats per instruction (sm_90's vector red: against one
// float per atomic it took the backward from 9.4 to 8.0 ms at D = 64, T = 16384 on the H200).
// A thread's accumulator pair (c0, c1) holds columns 2t, 2t + 1 of row g and (c2, c3) the same
// columns of row g + 8; lanes t and t ^ 1 swap halves so that the even lane adds four columns
// of row g and the odd lane four of row g + 8, one 16-byte red each, so the even lanes' `row_g`
// must be 16-byte aligned (the host aligns the dQ scratch; D/WD columns a warp are 8k).
__device__ __forceinline__ void dq_add(float* row_g, i64 row_stride, const float (&c)[4],
                                       float scale, int lane, bool ok_g, bool ok_g8) {
    const bool odd = lane & 1;
    // The even lane sends its row g + 8 pair and receives its neighbour's row g pair.
    const float send0 = odd ? c[0] : c[2], send1 = odd ? c[1] : c[3];
    const float got0 = __shfl_xor_sync(0xffffffffu, send0, 1);
    const float got1 = __shfl_xor_sync(0xffffffffu, send1, 1);
    float v[4];
    if (odd) {
        v[0] = got0, v[1] = got1, v[2] = c[2], v[3] = c[3];
    } else {
        v[0] = c[0], v[1] = c[1], v[2] = got0, v[3] = got1;
    }
    // The even lane's columns start at its own 2t, the odd lane's at its neighbour's.
    float* dst = odd ? row_g - 2 + 8 * row_stride : row_g;
    if (!(odd ? ok_g8 : ok_g)) return;
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(v[0] * scale),
                 "f"(v[1] * scale), "f"(v[2] * scale), "f"(v[3] * scale)
                 : "memory");
#else
    // Vector reds are sm_90's; older devices add one float at a time.
#pragma unroll
    for (int e = 0; e < 4; ++e) atomicAdd(dst + e, v[e] * scale);
#endif
}

// The flash forward's scalars, and the one parameter list the tensor-core forwards of
// flash_mma.cu and flash_wgmma.cu take (the scalar kernels of flash_attention.cu take it too).
struct MmaFwdArgs {
    int h, h_kv, tq, tk, d, causal;
    i64 window;
    float scale;
};

#define MMA_FWD_PARAMS                                                                           \
    Buf qkv, Buf kb, i64 k0, i64 k_sb, i64 k_sh, i64 k_sj, Buf vb, i64 v0, i64 v_sb, i64 v_sh,  \
        i64 v_sj, Buf o, Buf lse, int h, int h_kv, int tq, int tk, int d, int causal, i64 window, \
        float scale, const int* step
// `step`, when not null, holds the key count of a replayed decode step (graph.rs), as in
// flash_attention.cu. `d` is the kernel's D (the host checks); it is kept so that both sources
// take one argument list.
#define MMA_FWD_ARGS                                                                             \
    qkv, kb, k0, k_sb, k_sh, k_sj, vb, v0, v_sb, v_sh, v_sj, o, lse,                            \
        MmaFwdArgs{h, h_kv, tq, step ? step[0] : tk, d, causal, window, scale}

// The flash backward's scalars and parameter list (flash_mma.cu, flash_wgmma.cu).
struct MmaBwdArgs {
    int h, h_kv, tq, tk, d, causal;
    i64 window;
    float scale;
};

#define MMA_BWD_PARAMS                                                                           \
    Buf qkv, Buf dout, Buf lse, const float* di, float* dq, Buf dqkv, int h, int h_kv, int tq,    \
        int tk, int d, int causal, i64 window, float scale
#define MMA_BWD_ARGS                                                                             \
    qkv, dout, lse, di, dq, dqkv, MmaBwdArgs{h, h_kv, tq, tk, d, causal, window, scale}
