// Flash attention forward on Hopper's warpgroup MMA (wgmma.mma_async, sm_90a; compile.rs builds
// this source for sm_90a on an sm_90 device and for nothing else) for bf16 and fp16 at head
// sizes 64 and 128, f32 accumulation: the same algorithm, masks and outputs (O, lse) as
// flash_mma.cu's forward, which it replaces there (ops/attention.rs, `mma_variant`). A second
// forward, warp-specialised (a producer warpgroup, a K/V ring on mbarriers, two consumer
// warpgroups in ping-pong; the default, TPERF_FLASH_WGMMA=plain selects the first), follows the
// first; its section says why and how. The backward comes last, and after it a
// warp-specialised backward (TPERF_FLASH_WGMMA_BWD=ws).
//
// Why: mma.sync multiplies 16×8×16 per warp instruction and needs its B fragments loaded by
// ldmatrix from shared memory every time; the forward of flash_mma.cu was issue-bound at
// 225–270 TFLOP/s (ncu: ~45% issue busy, 8–12 warps an SM). wgmma multiplies 64×N×16 per
// warpgroup instruction with both B and (for S = Q·Kᵀ) A read by the tensor cores straight
// from shared memory, and Q needs no registers at all.
//
// A block is two warpgroups (256 threads) over a 128-row query tile, 64 rows a warpgroup, and
// walks 128-key tiles of K and V, double-buffered by cp.async (tile t + 1 loads while tile t
// computes), each tile:
//   S = Q·Kᵀ        wgmma m64n128k16 × D/16, Q and K both K-major from shared memory;
//   online softmax  on S in registers, in base 2, masks only on tiles that need them (as in
//                   flash_mma.cu);
//   O += P·V        wgmma m64nDk16 × 8, P from registers (the accumulator layout of S is the
//                   A-fragment layout, as with mma.sync) rounded to 16 bits, V N-major
//                   (transposed) from shared memory.
// The accumulator layout per warp is mma.sync's C (warp w of a warpgroup owns rows 16w..16w+15;
// lane 4g + t holds, in each 8-column chunk i, elements 4i..4i+3 = (g, 8i + 2t..+1) and
// (g + 8, 8i + 2t..+1)), so the softmax and the epilogue are flash_mma.cu's.
//
// Shared memory holds every tile in the 128-byte swizzle wgmma reads: D/64 panels of rows × 64
// columns (128 bytes a row); 16-byte chunk c of row r sits at chunk c ^ (r % 8) of its row.
// Each panel starts 1024-byte aligned (the swizzle repeats every 8 rows and applies to address
// bits). Descriptors: K-major operands (Q, K) step 32 bytes along K inside a panel, stride 1024
// bytes per 8 rows; the N-major V steps 16 rows (2048 bytes) per k16, 1024 bytes per 8 keys, and
// its leading offset is the panel stride (the next 64 columns of D).
//
// Shared bytes: (128 + 4·128)·D·2 + 1024 alignment slack: 81 KB at D = 64, 161 KB at 128.
// Registers per thread: S 64, O D/2, P 32.

#define WG_BQ 128
#define WG_BK 128
#define WG_THREADS 256

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait_all() {
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Pins the registers of `d` at this point: the compiler must not move their reads or writes into
// a wgmma's asynchronous window (between its issue and the wait).
template <int R> __device__ __forceinline__ void wgmma_hold(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// cp.async writes shared memory through the generic proxy, wgmma reads it through the async
// proxy: this orders the first before the second (with the barrier after it).
__device__ __forceinline__ void fence_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

typedef unsigned long long u64;

// A shared-memory matrix descriptor of a 128-byte-swizzled operand at shared address `addr`:
// `lead` and `stride` bytes as the PTX ISA defines them for its majorness (see the top).
__device__ __forceinline__ u64 smem_desc(unsigned addr, unsigned lead, unsigned stride) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)((lead & 0x3FFFF) >> 4) << 16) |
           ((u64)((stride & 0x3FFFF) >> 4) << 32) | ((u64)1 << 62);
}

// Rows [0, ROWS) of a (rows, D) operand, row r at src + r·rs, into the swizzled tile at shared
// address `tile` by cp.async; rows at or past `valid` are zero.
template <int D, int ROWS>
__device__ __forceinline__ void load_swizzled(unsigned tile, const u16* src, i64 rs, int valid) {
    constexpr int CH = D / 8, CHUNKS = ROWS * CH;
    static_assert(CHUNKS % WG_THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int k = 0; k < CHUNKS / WG_THREADS; ++k) {
        const int idx = threadIdx.x + k * WG_THREADS;
        const int r = idx / CH, c = idx % CH;
        const bool ok = r < valid;
        const unsigned dst = tile + (c / 8) * (ROWS * 128) + r * 128 + (((c % 8) ^ (r % 8)) * 16);
        cp_async16(dst, src + (ok ? (i64)r * rs : 0) + c * 8, ok);
    }
}

// d (+)= A·B, m64n64k16, A and B both K-major from shared memory (descriptors `a`, `b`);
// `accumulate` 0 overwrites d.
template <bool BF>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], u64 a, u64 b, int accumulate) {
    if (BF)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                     "%32, %33, p, 1, 1, 0, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "l"(a), "l"(b), "r"(accumulate));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                     "%32, %33, p, 1, 1, 0, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "l"(a), "l"(b), "r"(accumulate));
}

// d (+)= A·B, m64n128k16, A and B both K-major from shared memory (descriptors `a`, `b`);
// `accumulate` 0 overwrites d.
template <bool BF>
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], u64 a, u64 b, int accumulate) {
    if (BF)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                     "%64, %65, p, 1, 1, 0, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "l"(a), "l"(b), "r"(accumulate));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                     "%64, %65, p, 1, 1, 0, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "l"(a), "l"(b), "r"(accumulate));
}

// d (+)= A·B, m64n64k16, A from registers (the m16n8k16 A fragment layout per warp), B
// N-major (transposed) from shared memory.
template <bool BF>
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const unsigned (&a)[4], u64 b,
                                              int accumulate) {
    if (BF)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                     "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                     "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}

// d (+)= A·B, m64n128k16, A from registers (the m16n8k16 A fragment layout per warp), B
// N-major (transposed) from shared memory.
template <bool BF>
__device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const unsigned (&a)[4], u64 b,
                                              int accumulate) {
    if (BF)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                     "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                     "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}

// d (+)= A·B, m64n32k16, A M-major and B N-major (both transposed) from shared memory.
template <bool BF>
__device__ __forceinline__ void wgmma_ss_tt_n32(float (&d)[16], u64 a, u64 b, int accumulate) {
    if (BF)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                     "%16, %17, p, 1, 1, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                     : "l"(a), "l"(b), "r"(accumulate));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                     "%16, %17, p, 1, 1, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                     : "l"(a), "l"(b), "r"(accumulate));
}

// d (+)= A·B, m64n64k16, A M-major and B N-major (both transposed) from shared memory.
template <bool BF>
__device__ __forceinline__ void wgmma_ss_tt_n64(float (&d)[32], u64 a, u64 b, int accumulate) {
    if (BF)
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                     "%32, %33, p, 1, 1, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "l"(a), "l"(b), "r"(accumulate));
    else
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                     "%32, %33, p, 1, 1, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "l"(a), "l"(b), "r"(accumulate));
}


// The masks and the online softmax of one S tile (rows g and g + 8 of this thread): S becomes
// P = exp2(S·scale·log2(e) − m) in place, m and l move on, and `corr` is the factor O (summed
// under the old m) must be multiplied by.
template <int BK>
__device__ __forceinline__ void wg_softmax(float (&s)[BK / 2], float (&m)[2], float (&l)[2],
                                           float (&corr)[2], float sl2, bool masked, i64 pos0,
                                           i64 j0, i64 hi, const MmaFwdArgs& p, int lane) {
    constexpr int NT = BK / 8;
    if (masked) {
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const i64 pos = pos0 + (e / 2) * 8;
                const i64 j = j0 + t * 8 + (lane % 4) * 2 + (e % 2);
                if (!(j < hi && mma_visible(p.causal, p.window, pos, j))) s[t * 4 + e] = NEG_INF;
            }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        // The max of the raw scores, scaled once (sl2 > 0).
        float raw = NEG_INF;
#pragma unroll
        for (int t = 0; t < NT; ++t) raw = fmaxf(raw, fmaxf(s[t * 4 + 2 * r], s[t * 4 + 2 * r + 1]));
        raw = fmaxf(raw, __shfl_xor_sync(0xffffffffu, raw, 1));
        raw = fmaxf(raw, __shfl_xor_sync(0xffffffffu, raw, 2));
        const float mx = fmaxf(m[r], raw * sl2);
        // A row with nothing visible yet keeps m = −∞; subtracting 0 gives p = 0 and a
        // correction of 0 rather than NaN.
        const float mu = mx == NEG_INF ? 0.0f : mx;
        corr[r] = fast_exp2(m[r] - mu);
        m[r] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; ++e) {
                s[t * 4 + e] = fast_exp2(fmaf(s[t * 4 + e], sl2, -mu));
                sum += s[t * 4 + e];
            }
        l[r] = l[r] * corr[r] + sum;
    }
}

// P's A fragments (16 keys each) from the S accumulators, rounded to 16 bits.
template <int BK, bool BF>
__device__ __forceinline__ void wg_pack_p(unsigned (&pa)[BK / 16][4], const float (&s)[BK / 2]) {
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
        pa[kk][0] = pack2<BF>(s[8 * kk + 0], s[8 * kk + 1]);
        pa[kk][1] = pack2<BF>(s[8 * kk + 2], s[8 * kk + 3]);
        pa[kk][2] = pack2<BF>(s[8 * kk + 4], s[8 * kk + 5]);
        pa[kk][3] = pack2<BF>(s[8 * kk + 6], s[8 * kk + 7]);
    }
}

template <int D, bool BF>
__device__ __forceinline__ void wg_fwd(Buf qkv, Buf kb, i64 k0, i64 k_sb, i64 k_sh, i64 k_sj,
                                       Buf vb, i64 v0, i64 v_sb, i64 v_sh, i64 v_sj, Buf o,
                                       Buf lse, MmaFwdArgs p) {
    static_assert(D == 64 || D == 128, "wgmma forward: D = 64 or 128");
    constexpr int BQ = WG_BQ, BK = WG_BK, KT = D / 16, OT = D / 8;
    // Bytes of one panel (64 columns) of a Q tile and of a K or V tile.
    constexpr unsigned QPANEL = BQ * 128, KPANEL = BK * 128;
    constexpr unsigned QBYTES = BQ * D * 2, KBYTES = BK * D * 2;
    extern __shared__ __align__(16) u16 wg_smem[];
    const unsigned base = (smem_addr(wg_smem) + 1023u) & ~1023u;
    const unsigned Qs = base, Ks = Qs + QBYTES, Vs = Ks + 2 * KBYTES; // K, V: 2 buffers each

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wg = warp / 4, wq = warp % 4; // warpgroup, and warp within it
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
    const u16* kg = (const u16*)kb.p + k0 + b * k_sb + (i64)g * k_sh;
    const u16* vg = (const u16*)vb.p + v0 + b * v_sb + (i64)g * v_sh;
    // Key tile t (keys lo + t·BK..) of K or V into buffer t % 2.
    auto load_k = [&](int t) {
        const i64 j = lo + (i64)t * BK;
        load_swizzled<D, BK>(Ks + (t % 2) * KBYTES, kg + j * k_sj, k_sj, (int)min((i64)BK, hi - j));
    };
    auto load_v = [&](int t) {
        const i64 j = lo + (i64)t * BK;
        load_swizzled<D, BK>(Vs + (t % 2) * KBYTES, vg + j * v_sj, v_sj, (int)min((i64)BK, hi - j));
    };
    const int n = lo < hi ? (int)((hi - lo + BK - 1) / BK) : 0;

    float acc[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) acc[i] = 0.0f;
    // Running max (log2 units, of scaled scores) and this thread's share of the row sum, rows
    // g and g + 8 of the warp's 16.
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f}, corr[2];
    const float sl2 = p.scale * LOG2E;
    const int qr = wg * 64 + wq * 16 + lane / 4; // tile row of elements 0, 1 (2, 3: + 8)
    const i64 pos0 = off + i0 + qr;              // its query's position among the keys
    const unsigned qwg = Qs + wg * 64 * 128;     // this warpgroup's 64 rows of Q
    // Masks are needed past the visible range's end, across the causal diagonal, and where the
    // window's lower edge cuts the tile (the block's last row sees the fewest old keys).
    auto needs_mask = [&](i64 j0) {
        return j0 + BK > hi ||
               (p.causal && (j0 + BK - 1 > off + i0 ||
                             (p.window >= 0 && off + i0 + BQ - 1 - j0 >= p.window)));
    };
    // S = Q·Kᵀ of key tile t over D in steps of 16: 32 bytes along a panel's rows, then the
    // next panel. Issued, not waited for.
    auto issue_s = [&](float (&s)[BK / 2], int t) {
        const unsigned kt = Ks + (t % 2) * KBYTES;
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            const unsigned step = (kk % 4) * 32;
            const u64 qd = smem_desc(qwg + (kk / 4) * QPANEL + step, 16, 1024);
            const u64 kd = smem_desc(kt + (kk / 4) * KPANEL + step, 16, 1024);
            wgmma_ss_n128<BF>(s, qd, kd, kk > 0);
        }
    };
    // O += P·V of key tile t, 16 keys a step. Issued, not waited for.
    auto issue_pv = [&](const unsigned (&pa)[BK / 16][4], int t) {
        const unsigned vt = Vs + (t % 2) * KBYTES;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            const u64 vd = smem_desc(vt + kk * 16 * 128, KPANEL, 1024);
            if constexpr (D == 64)
                wgmma_rs_n64<BF>(acc, pa[kk], vd, 1);
            else
                wgmma_rs_n128<BF>(acc, pa[kk], vd, 1);
        }
    };

    // The loop is software-pipelined (FlashAttention-3's intra-warpgroup overlap): while the
    // tensor cores run P_{t−1}·V_{t−1}, the warps compute the softmax of S_t. Iteration t holds
    // K_t and V_{t−1} and loads K_{t+1} and V_t into the buffers K_{t−1} and V_{t−2} left.
    unsigned pa[BK / 16][4];
    if (n > 0) {
        load_swizzled<D, BQ>(Qs, qg, width, i1 - i0);
        load_k(0);
        cp_async_commit();
        load_v(0);
        if (n > 1) load_k(1);
        cp_async_commit();
        asm volatile("cp.async.wait_group 1;\n" ::: "memory"); // Q and K_0
        fence_async_shared();
        __syncthreads();

        float s[BK / 2];
        wgmma_fence();
        issue_s(s, 0);
        wgmma_commit();
        wgmma_wait_all();
        wgmma_hold(s);
        wg_softmax<BK>(s, m, l, corr, sl2, needs_mask(lo), pos0, lo, hi, p, lane);
        wg_pack_p<BK, BF>(pa, s);
        cp_async_wait_all();
        fence_async_shared();
        __syncthreads();
    }
    for (int t = 1; t < n; ++t) {
        const i64 j0 = lo + (i64)t * BK;
        if (t + 1 < n) load_k(t + 1);
        load_v(t);
        cp_async_commit();

        float s[BK / 2];
        wgmma_hold(acc);
        wgmma_fence();
        issue_s(s, t);
        wgmma_commit();
        issue_pv(pa, t - 1);
        wgmma_commit();
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); // S_t
        wgmma_hold(s);
        wg_softmax<BK>(s, m, l, corr, sl2, needs_mask(j0), pos0, j0, hi, p, lane);
        wgmma_wait_all(); // P_{t−1}·V_{t−1}: O and P's registers are free again
        wgmma_hold(acc);
#pragma unroll
        for (int i = 0; i < OT; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i * 4 + e] *= corr[e / 2];
        wg_pack_p<BK, BF>(pa, s);

        // K_{t+1} and V_t have landed (and are visible to wgmma); every warp is done with K_t
        // and V_{t−1}.
        cp_async_wait_all();
        fence_async_shared();
        __syncthreads();
    }
    if (n > 0) {
        wgmma_hold(acc);
        wgmma_fence();
        issue_pv(pa, n - 1);
        wgmma_commit();
        wgmma_wait_all();
        wgmma_hold(acc);
    }

    const i64 hd = (i64)p.h * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int i = i0 + qr + 8 * r;
        if (i >= p.tq) continue;
        const float inv = 1.0f / sum;
        u16* orow = (u16*)o.p + (b * p.tq + i) * hd + (i64)head * D + (lane % 4) * 2;
#pragma unroll
        for (int t = 0; t < OT; ++t)
            *(unsigned*)(orow + t * 8) =
                pack2<BF>(acc[t * 4 + 2 * r] * inv, acc[t * 4 + 2 * r + 1] * inv);
        if (lane % 4 == 0) st(lse, (b * p.h + head) * p.tq + i, (m[r] + log2f(sum)) * LN2);
    }
}

// One block of two warpgroups an SM (161 KB of shared memory at D = 128; registers at D = 64).
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) flash_wgmma_fwd_d64_bf16(MMA_FWD_PARAMS) {
    wg_fwd<64, true>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) flash_wgmma_fwd_d64_f16(MMA_FWD_PARAMS) {
    wg_fwd<64, false>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) flash_wgmma_fwd_d128_bf16(MMA_FWD_PARAMS) {
    wg_fwd<128, true>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) flash_wgmma_fwd_d128_f16(MMA_FWD_PARAMS) {
    wg_fwd<128, false>(MMA_FWD_ARGS);
}

// ---------------------------------------------------------------------------------------------
// Forward, warp-specialised (the default; FlashAttention-3's producer/consumer split
// and inter-warpgroup ping-pong)
//
// Why: the forward above is 1 block an SM of two warpgroups that load, multiply and run the
// softmax in one chain per tile, tied together by a __syncthreads per tile; ncu (D = 64,
// T = 16384) had the tensor pipe 33% busy and no eligible warp 58% of cycles. Here a block is
// three warpgroups (384 threads) over the same 128-row query tile and 128-key tiles:
//   warpgroup 0, the producer: only copies (Q once, then K_t and V_t into a ring of S stages
//     each), its registers given back (setmaxnreg.dec to WGS_PRODUCER_REGS);
//   warpgroups 1 and 2, the consumers: 64 query rows each, the loop of the forward above (S_t
//     and P_{t−1}·V_{t−1} issued together, the softmax of S_t under P_{t−1}·V_{t−1}), with the
//     producer's registers (setmaxnreg.inc to WGS_CONSUMER_REGS).
// No block-wide barrier after the start; three kinds of barrier instead:
//   full_k[s], full_v[s] (mbarrier, 128 arrivals): each producer thread's cp.async copies of a
//     stage arrive on it when they land (cp.async.mbarrier.arrive.noinc), so a consumer that
//     waits on its phase sees the whole tile (then fence.proxy.async: cp.async writes through
//     the generic proxy, wgmma reads through the async proxy);
//   empty_k[s], empty_v[s] (mbarrier, 8 arrivals, lane 0 of each consumer warp once its wgmma
//     that read the stage has completed): the producer waits on one before refilling the stage
//     (K_t is free once S_t is, V_t once P_t·V_t is, so K and V have barriers of their own);
//   turns (named barriers 1 and 2, 256 threads): consumer c waits on bar.sync 1 + c before
//     issuing a tile's products and lets the other go (bar.arrive 2 − c) right after issuing,
//     so the two warpgroups' products reach the tensor cores alternately and one warpgroup's
//     softmax runs while the other's products do. Consumer 1 opens with an arrive (consumer 0
//     goes first) and skips the arrive after its last turn (nobody waits for it), so arrivals
//     and waits pair exactly.
// Copies: cp.async (16 bytes a thread) rather than the copy engine (TMA): K and V are strided
// views (the packed qkv, or a cache with its own strides), the tile layout is the swizzle the
// forward above already writes, rows past the end are zero-filled by a source size of 0, and
// the kernel keeps MMA_FWD_PARAMS (a tensor map would have to be built on the host per call
// and per view). The producer's 128 threads copy 16 (D = 64) or 32 (D = 128) chunks a tile each.
// Stages: 3 at D = 64 (16 + 3·2·16 = 112 KB), 2 at D = 128 (32 + 2·2·32 = 160 KB; 3 is 224 KB,
// inside the 227 KB limit, but leaves nothing for L1); kernels of the other depths (2 and 4 at
// 64, 3 at 128) are there for TPERF_FLASH_WS_STAGES measurements.
// Shared bytes: (128 + 2·S·128)·D·2 + 1024 alignment slack + the barriers (8 bytes each).

#define WGS_THREADS 384
#define WGS_PRODUCER_REGS 24
#define WGS_CONSUMER_REGS 240

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase of parity `parity` of the barrier has completed.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    unsigned done;
    do {
        asm volatile("{\n.reg .pred p;\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    } while (!done);
}
// One arrival on `bar` when every cp.async this thread has issued so far has landed (noinc: the
// barrier's count already includes it).
__device__ __forceinline__ void cp_async_arrive(unsigned bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void named_sync(unsigned id) {
    asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void named_arrive(unsigned id) {
    asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory");
}

// load_swizzled for the producer's 128 threads (`ptid` 0..127), lean on registers (the producer
// runs on WGS_PRODUCER_REGS): a thread's 16-byte column c is the same in every row it copies
// (rows r0, r0 + 128 / (D / 8), ...), so is its swizzle (the row step is a multiple of 8), and
// its source and destination move by one fixed step a row; the loop is not unrolled.
template <int D, int ROWS>
__device__ __forceinline__ void ws_load(unsigned tile, const u16* src, i64 rs, int valid,
                                        int ptid) {
    constexpr int CH = D / 8, RSTEP = 128 / CH;
    static_assert(ROWS % RSTEP == 0, "every producer thread copies the same number of chunks");
    const int r0 = ptid / CH, c = ptid % CH;
    unsigned dst = tile + (c / 8) * (ROWS * 128) + r0 * 128 + (((c % 8) ^ (r0 % 8)) * 16);
    const u16* at = src + (i64)r0 * rs + c * 8;
    const i64 step = RSTEP * rs;
#pragma unroll 1
    for (int r = r0; r < ROWS; r += RSTEP, dst += RSTEP * 128, at += step) {
        const bool ok = r < valid;
        cp_async16(dst, ok ? at : src, ok);
    }
}

template <int D, bool BF, int S>
__device__ __forceinline__ void ws_fwd(Buf qkv, Buf kb, i64 k0, i64 k_sb, i64 k_sh, i64 k_sj,
                                       Buf vb, i64 v0, i64 v_sb, i64 v_sh, i64 v_sj, Buf o,
                                       Buf lse, MmaFwdArgs p) {
    static_assert(D == 64 || D == 128, "wgmma forward: D = 64 or 128");
    constexpr int BQ = WG_BQ, BK = WG_BK, KT = D / 16, OT = D / 8;
    constexpr unsigned QPANEL = BQ * 128, KPANEL = BK * 128;
    constexpr unsigned QBYTES = BQ * D * 2, KBYTES = BK * D * 2;
    extern __shared__ __align__(16) u16 wg_smem[];
    const unsigned base = (smem_addr(wg_smem) + 1023u) & ~1023u;
    const unsigned Qs = base, Ks = Qs + QBYTES, Vs = Ks + S * KBYTES; // K, V: S stages each
    // The barriers, 8 bytes each: Q's, then full_k, full_v, empty_k, empty_v (S each).
    const unsigned bars = Vs + S * KBYTES;
    const unsigned q_full = bars;
    auto full_k = [&](int t) { return bars + 8u * (1 + t % S); };
    auto full_v = [&](int t) { return bars + 8u * (1 + S + t % S); };
    auto empty_k = [&](int t) { return bars + 8u * (1 + 2 * S + t % S); };
    auto empty_v = [&](int t) { return bars + 8u * (1 + 3 * S + t % S); };
    // The phase parity of key tile t's use of its stage.
    auto phase = [&](int t) { return (unsigned)((t / S) & 1); };

    const int tid = threadIdx.x, role = tid / 128; // 0 the producer, 1 and 2 the consumers
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
    const int n = lo < hi ? (int)((hi - lo + BK - 1) / BK) : 0;

    if (tid == 0) {
        mbar_init(q_full, 128);
        for (int s = 0; s < S; ++s) {
            mbar_init(full_k(s), 128);
            mbar_init(full_v(s), 128);
            mbar_init(empty_k(s), 8);
            mbar_init(empty_v(s), 8);
        }
    }
    __syncthreads(); // the barriers are initialised; the only block-wide barrier

    if (role == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(WGS_PRODUCER_REGS));
        if (n == 0) return;
        const u16* qg = (const u16*)qkv.p + (b * p.tq + i0) * width + (i64)head * D;
        const u16* kg = (const u16*)kb.p + k0 + b * k_sb + (i64)g * k_sh;
        const u16* vg = (const u16*)vb.p + v0 + b * v_sb + (i64)g * v_sh;
        ws_load<D, BQ>(Qs, qg, width, i1 - i0, tid);
        cp_async_arrive(q_full);
        const u16* kt = kg + lo * k_sj;
        const u16* vt = vg + lo * v_sj;
        i64 left = hi - lo; // keys from this tile's first to the visible range's end
#pragma unroll 1
        for (int t = 0; t < n; ++t, kt += BK * k_sj, vt += BK * v_sj, left -= BK) {
            const int valid = (int)min((i64)BK, left);
            const unsigned at = (t % S) * KBYTES;
            // The stage's previous tile, t − S, has been released by every consumer warp.
            if (t >= S) mbar_wait(empty_k(t), phase(t) ^ 1);
            ws_load<D, BK>(Ks + at, kt, k_sj, valid, tid);
            cp_async_arrive(full_k(t));
            if (t >= S) mbar_wait(empty_v(t), phase(t) ^ 1);
            ws_load<D, BK>(Vs + at, vt, v_sj, valid, tid);
            cp_async_arrive(full_v(t));
        }
        // Nothing of this thread's may still be in flight when it exits.
        asm volatile("cp.async.wait_all;\n" ::: "memory");
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(WGS_CONSUMER_REGS));
        const int c = role - 1, warp = tid / 32, lane = tid % 32, wq = warp % 4;
        const unsigned mine = 1 + c, other = 2 - c; // turn barriers

        float acc[D / 2];
#pragma unroll
        for (int i = 0; i < D / 2; ++i) acc[i] = 0.0f;
        float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f}, corr[2];
        const float sl2 = p.scale * LOG2E;
        const int qr = c * 64 + wq * 16 + lane / 4; // tile row of elements 0, 1 (2, 3: + 8)
        const i64 pos0 = off + i0 + qr;
        const unsigned qwg = Qs + c * 64 * 128;
        auto needs_mask = [&](i64 j0) {
            return j0 + BK > hi ||
                   (p.causal && (j0 + BK - 1 > off + i0 ||
                                 (p.window >= 0 && off + i0 + BQ - 1 - j0 >= p.window)));
        };
        auto issue_s = [&](float (&s)[BK / 2], int t) {
            const unsigned kt = Ks + (t % S) * KBYTES;
#pragma unroll
            for (int kk = 0; kk < KT; ++kk) {
                const unsigned step = (kk % 4) * 32;
                const u64 qd = smem_desc(qwg + (kk / 4) * QPANEL + step, 16, 1024);
                const u64 kd = smem_desc(kt + (kk / 4) * KPANEL + step, 16, 1024);
                wgmma_ss_n128<BF>(s, qd, kd, kk > 0);
            }
        };
        auto issue_pv = [&](const unsigned (&pa)[BK / 16][4], int t) {
            const unsigned vt = Vs + (t % S) * KBYTES;
#pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk) {
                const u64 vd = smem_desc(vt + kk * 16 * 128, KPANEL, 1024);
                if constexpr (D == 64)
                    wgmma_rs_n64<BF>(acc, pa[kk], vd, 1);
                else
                    wgmma_rs_n128<BF>(acc, pa[kk], vd, 1);
            }
        };
        // Every thread of the warp has waited for the products that read the stage.
        auto release = [&](unsigned bar) {
            __syncwarp();
            if (lane == 0) mbar_arrive(bar);
        };

        // Turns: 0 issues S_0, t issues S_t and P_{t−1}·V_{t−1}, n issues P_{n−1}·V_{n−1}.
        unsigned pa[BK / 16][4];
        if (n > 0) {
            mbar_wait(q_full, 0);
            if (c == 1) named_arrive(other);
            mbar_wait(full_k(0), 0);
            fence_async_shared();
            named_sync(mine);
            float s[BK / 2];
            wgmma_fence();
            issue_s(s, 0);
            wgmma_commit();
            named_arrive(other); // turn 0 is never the last
            wgmma_wait_all();
            wgmma_hold(s);
            release(empty_k(0));
            wg_softmax<BK>(s, m, l, corr, sl2, needs_mask(lo), pos0, lo, hi, p, lane);
            wg_pack_p<BK, BF>(pa, s);
        }
        for (int t = 1; t < n; ++t) {
            const i64 j0 = lo + (i64)t * BK;
            mbar_wait(full_k(t), phase(t));
            mbar_wait(full_v(t - 1), phase(t - 1));
            fence_async_shared();
            named_sync(mine);
            float s[BK / 2];
            wgmma_hold(acc);
            wgmma_fence();
            issue_s(s, t);
            wgmma_commit();
            issue_pv(pa, t - 1);
            wgmma_commit();
            named_arrive(other);
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); // S_t
            wgmma_hold(s);
            release(empty_k(t));
            wg_softmax<BK>(s, m, l, corr, sl2, needs_mask(j0), pos0, j0, hi, p, lane);
            wgmma_wait_all(); // P_{t−1}·V_{t−1}: O and P's registers are free again
            wgmma_hold(acc);
            release(empty_v(t - 1));
#pragma unroll
            for (int i = 0; i < OT; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i * 4 + e] *= corr[e / 2];
            wg_pack_p<BK, BF>(pa, s);
        }
        if (n > 0) {
            mbar_wait(full_v(n - 1), phase(n - 1));
            fence_async_shared();
            named_sync(mine);
            wgmma_hold(acc);
            wgmma_fence();
            issue_pv(pa, n - 1);
            wgmma_commit();
            if (c == 0) named_arrive(other); // consumer 1's last turn lets nobody go
            wgmma_wait_all();
            wgmma_hold(acc);
        }

        const i64 hd = (i64)p.h * D;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float sum = l[r];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const int i = i0 + qr + 8 * r;
            if (i >= p.tq) continue;
            const float inv = 1.0f / sum;
            u16* orow = (u16*)o.p + (b * p.tq + i) * hd + (i64)head * D + (lane % 4) * 2;
#pragma unroll
            for (int t = 0; t < OT; ++t)
                *(unsigned*)(orow + t * 8) =
                    pack2<BF>(acc[t * 4 + 2 * r] * inv, acc[t * 4 + 2 * r + 1] * inv);
            if (lane % 4 == 0) st(lse, (b * p.h + head) * p.tq + i, (m[r] + log2f(sum)) * LN2);
        }
    }
}

// One block of one producer and two consumer warpgroups an SM. The plain names take the default
// stages (3 at D = 64, 2 at 128); `_s<S>` names are the other depths, for TPERF_FLASH_WS_STAGES.
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_fwd_d64_s2_bf16(MMA_FWD_PARAMS) {
    ws_fwd<64, true, 2>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_fwd_d64_s2_f16(MMA_FWD_PARAMS) {
    ws_fwd<64, false, 2>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_fwd_d64_bf16(MMA_FWD_PARAMS) {
    ws_fwd<64, true, 3>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_fwd_d64_f16(MMA_FWD_PARAMS) {
    ws_fwd<64, false, 3>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_fwd_d64_s4_bf16(MMA_FWD_PARAMS) {
    ws_fwd<64, true, 4>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_fwd_d64_s4_f16(MMA_FWD_PARAMS) {
    ws_fwd<64, false, 4>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_fwd_d128_bf16(MMA_FWD_PARAMS) {
    ws_fwd<128, true, 2>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_fwd_d128_f16(MMA_FWD_PARAMS) {
    ws_fwd<128, false, 2>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_fwd_d128_s3_bf16(MMA_FWD_PARAMS) {
    ws_fwd<128, true, 3>(MMA_FWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_fwd_d128_s3_f16(MMA_FWD_PARAMS) {
    ws_fwd<128, false, 3>(MMA_FWD_ARGS);
}

// ---------------------------------------------------------------------------------------------
// Backward
//
// The dK/dV/dQ kernel of flash_mma.cu's backward (the same grid: one block per 128 keys, KV
// head and batch element, after flash_bwd_di; dQ added into the f32 scratch that flash_bwd_dq
// converts) on wgmma. Warpgroup w owns keys 64w..64w + 63 of the block and their dK and dV
// accumulators (64 × D each, in registers for the whole kernel). For each 64-row query tile of
// the group's heads that sees the block's keys (Q, dO, lse and Dᵢ double-buffered by cp.async):
//   Sᵀ = K_w·Qᵀ, dPᵀ = V_w·dOᵀ    m64n64k16 × D/16 each, all four operands K-major in shared
//                                 memory;
//   Pᵀ = exp2(Sᵀ·scale·log2(e) − lse·log2(e)), dSᵀ = Pᵀ ⊙ (dPᵀ − Dᵢ) in registers (masked only
//                                 where needed); dSᵀ also to shared memory, swizzled;
//   dV_w += Pᵀ·dO, dK_w += dSᵀ·Q  m64nDk16 × 4 each, Pᵀ and dSᵀ from registers as A fragments,
//                                 dO and Q N-major;
//   dQ = dS·K / √D                m64n(D/2)k16 × 8: warpgroup w computes columns
//                                 w·D/2..(w + 1)·D/2 over all 128 keys, dS M-major (the stored
//                                 dSᵀ) and K N-major; added to the scratch by 16-byte vector
//                                 reds (dq_add). Deferring the adds to the next tile's Sᵀ and
//                                 dPᵀ (a second dSᵀ buffer, the accumulator live across the
//                                 loop) measured slower on the H200: 5.92 against 5.02 ms at
//                                 D = 64, T = 16384, 9.57 against 8.91 at 128 (254 registers
//                                 and 288 bytes of spills), so each tile adds its own.
// Shared bytes: (2·128 + 4·64)·D·2 for K, V and two buffers each of Q and dO, 16 KB of dSᵀ,
// 1 KB of lse and Dᵢ, 1 KB alignment slack: 82 KB at D = 64, 146 KB at 128. Registers per
// thread: dK and dV D/2 each, Sᵀ and dPᵀ 32 each, dQ D/4.

#define WGB_BQ 64
#define WGB_BK 128

template <int D, bool BF>
__device__ __forceinline__ void wg_bwd(Buf qkv, Buf dout, Buf lse, const float* di, float* dq,
                                       Buf dqkv, MmaBwdArgs p) {
    static_assert(D == 64 || D == 128, "wgmma backward: D = 64 or 128");
    constexpr int BQ = WGB_BQ, BK = WGB_BK, KT = D / 16, NT = BQ / 8, OT = D / 8;
    constexpr unsigned KPANEL = BK * 128, QPANEL = BQ * 128; // bytes of 64 columns
    constexpr unsigned KBYTES = BK * D * 2, QBYTES = BQ * D * 2, SBYTES = BK * BQ * 2;
    extern __shared__ __align__(16) u16 wg_smem[];
    const unsigned base = (smem_addr(wg_smem) + 1023u) & ~1023u;
    const unsigned Ks = base, Vs = Ks + KBYTES, Qs = Vs + KBYTES; // Q, dO: 2 buffers each
    const unsigned dOs = Qs + 2 * QBYTES, dSs = dOs + 2 * QBYTES; // dSᵀ: key rows, 64 queries
    float* Ls = (float*)((char*)wg_smem + (dSs + SBYTES - smem_addr(wg_smem))); // 2 × BQ
    float* Ds = Ls + 2 * BQ;                                                     // 2 × BQ

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wg = warp / 4, wq = warp % 4;
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

    const u16* base_g = (const u16*)qkv.p + b * p.tk * width;
    load_swizzled<D, BK>(Ks, base_g + j0 * width + (i64)(p.h + g) * D, width, j1 - j0);
    load_swizzled<D, BK>(Vs, base_g + j0 * width + (i64)(p.h + p.h_kv + g) * D, width, j1 - j0);

    // Query tile `it` (head g·group + it / nq, rows from qlo + (it % nq)·BQ) into buffer `bf`.
    auto load_q = [&](int it, int bf) {
        const int head = g * group + it / nq;
        const i64 i0 = qlo + (i64)(it % nq) * BQ;
        const int valid = (int)min((i64)BQ, qhi - i0);
        load_swizzled<D, BQ>(Qs + bf * QBYTES,
                             (const u16*)qkv.p + (b * p.tq + i0) * width + (i64)head * D, width,
                             valid);
        load_swizzled<D, BQ>(dOs + bf * QBYTES,
                             (const u16*)dout.p + (b * p.tq + i0) * hd + (i64)head * D, hd, valid);
        const i64 row = (b * p.h + head) * p.tq + i0;
        for (int q = tid; q < BQ; q += WG_THREADS) {
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
    fence_async_shared();
    __syncthreads();

    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.0f;

    const float sl2 = p.scale * LOG2E;
    const int kr = wg * 64 + wq * 16 + lane / 4; // block key of elements 0, 1 (2, 3: + 8)
    const unsigned kw = Ks + wg * 64 * 128, vw = Vs + wg * 64 * 128; // this warpgroup's keys

    int bf = 0;
    for (int it = 0; it < total; ++it, bf ^= 1) {
        if (it + 1 < total) load_q(it + 1, bf ^ 1);
        cp_async_commit();
        const int head = g * group + it / nq;
        const i64 i0 = qlo + (i64)(it % nq) * BQ;
        const unsigned Qt = Qs + bf * QBYTES, dOt = dOs + bf * QBYTES;
        const float* Lt = Ls + bf * BQ;
        const float* Dt = Ds + bf * BQ;

        float s[BQ / 2], dp[BQ / 2];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            const unsigned step = (kk % 4) * 32;
            const unsigned kp = (kk / 4) * KPANEL + step, qp = (kk / 4) * QPANEL + step;
            wgmma_ss_n64<BF>(s, smem_desc(kw + kp, 16, 1024), smem_desc(Qt + qp, 16, 1024),
                             kk > 0);
            wgmma_ss_n64<BF>(dp, smem_desc(vw + kp, 16, 1024), smem_desc(dOt + qp, 16, 1024),
                             kk > 0);
        }
        wgmma_commit();
        wgmma_wait_all();
        wgmma_hold(s);
        wgmma_hold(dp);

        const bool masked =
            i0 + BQ > qhi || j0 + BK > p.tk ||
            (p.causal && (j0 + BK - 1 > off + i0 ||
                          (p.window >= 0 && off + i0 + BQ - 1 - j0 >= p.window)));
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int q = t * 8 + (lane % 4) * 2 + (e % 2);
                float pv = fast_exp2(fmaf(s[t * 4 + e], sl2, -Lt[q] * LOG2E));
                if (masked) {
                    const i64 i = i0 + q, j = j0 + kr + (e / 2) * 8;
                    if (!(i < qhi && j < j1 && mma_visible(p.causal, p.window, off + i, j)))
                        pv = 0.0f;
                }
                s[t * 4 + e] = pv;
                dp[t * 4 + e] = pv * (dp[t * 4 + e] - Dt[q]);
            }

        // dSᵀ to shared memory for dQ: key row kr (and kr + 8), query pairs, in the swizzle.
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const int q = t * 8 + (lane % 4) * 2;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int key = kr + 8 * r;
                const unsigned at = dSs + key * 128 + (((q / 8) ^ (key % 8)) * 16) + (q % 8) * 2;
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at),
                             "r"(pack2<BF>(dp[t * 4 + 2 * r], dp[t * 4 + 2 * r + 1]))
                             : "memory");
            }
        }

        // dV += Pᵀ·dO, dK += dSᵀ·Q over the tile's 64 queries, 16 a step.
        unsigned pa[BQ / 16][4], sa[BQ / 16][4];
        wg_pack_p<BQ, BF>(pa, s);
        wg_pack_p<BQ, BF>(sa, dp);
        wgmma_hold(dv);
        wgmma_hold(dk);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk) {
            const u64 od = smem_desc(dOt + kk * 16 * 128, QPANEL, 1024);
            const u64 qd = smem_desc(Qt + kk * 16 * 128, QPANEL, 1024);
            if constexpr (D == 64) {
                wgmma_rs_n64<BF>(dv, pa[kk], od, 1);
                wgmma_rs_n64<BF>(dk, sa[kk], qd, 1);
            } else {
                wgmma_rs_n128<BF>(dv, pa[kk], od, 1);
                wgmma_rs_n128<BF>(dk, sa[kk], qd, 1);
            }
        }
        wgmma_commit();
        fence_async_shared();
        __syncthreads(); // dSᵀ is complete

        // dQ columns wg·D/2.. of the tile: dS (64 queries × 128 keys) · K.
        constexpr int DQ = D / 2;
        // Columns wg·D/2.. of K: warpgroup 1's are the second panel at D = 128, and the second
        // half of each 128-byte row (64 bytes in) at D = 64.
        const unsigned kcol = D == 128 ? wg * KPANEL : wg * 64;
        float acc[DQ / 2];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            const u64 sd = smem_desc(dSs + kk * 16 * 128, SBYTES, 1024);
            const u64 kd = smem_desc(Ks + kcol + kk * 16 * 128, KPANEL, 1024);
            if constexpr (D == 64)
                wgmma_ss_tt_n32<BF>(acc, sd, kd, kk > 0);
            else
                wgmma_ss_tt_n64<BF>(acc, sd, kd, kk > 0);
        }
        wgmma_commit();
        wgmma_wait_all();
        wgmma_hold(acc);
        wgmma_hold(dv);
        wgmma_hold(dk);

        {
            const i64 i = i0 + wq * 16 + lane / 4;
            float* dst = dq + (b * p.tq + i) * hd + (i64)head * D + wg * DQ + (lane % 4) * 2;
#pragma unroll
            for (int t = 0; t < DQ / 8; ++t) {
                const float c[4] = {acc[t * 4], acc[t * 4 + 1], acc[t * 4 + 2], acc[t * 4 + 3]};
                dq_add(dst + t * 8, hd, c, p.scale, lane, i < qhi, i + 8 < qhi);
            }
        }

        // The next tile has landed; every warp is done with this tile's buffers and dSᵀ.
        cp_async_wait_all();
        fence_async_shared();
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
                pack2<BF>(dk[t * 4 + 2 * r] * p.scale, dk[t * 4 + 2 * r + 1] * p.scale);
            *(unsigned*)(row + (i64)(p.h + p.h_kv + g) * D + t * 8) =
                pack2<BF>(dv[t * 4 + 2 * r], dv[t * 4 + 2 * r + 1]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) flash_wgmma_bwd_d64_bf16(MMA_BWD_PARAMS) {
    wg_bwd<64, true>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) flash_wgmma_bwd_d64_f16(MMA_BWD_PARAMS) {
    wg_bwd<64, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) flash_wgmma_bwd_d128_bf16(MMA_BWD_PARAMS) {
    wg_bwd<128, true>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) flash_wgmma_bwd_d128_f16(MMA_BWD_PARAMS) {
    wg_bwd<128, false>(MMA_BWD_ARGS);
}

// ---------------------------------------------------------------------------------------------
// Backward, warp-specialised (TPERF_FLASH_WGMMA_BWD=ws; FlashAttention-3's producer/consumer
// split applied to the backward above)
//
// Why: ncu on the backward above (D = 64, T = 16384) had the tensor pipe 29% busy, issue slots
// 39% busy and no eligible warp 61% of cycles: each warpgroup runs one serial chain a tile
// (Sᵀ, dPᵀ → wait → Pᵀ, dSᵀ → dV, dK → block barrier → dQ → wait → reds) and the block barrier
// that hands over the cp.async double buffer ties the loads to it as well. Here a block is
// three warpgroups (384 threads), the same grid, keys, query tiles and arithmetic:
//   warpgroup 0, the producer: K and V of the block once, then each query tile's Q, dO, lse and
//     Dᵢ into a ring of S stages; its registers given back (setmaxnreg.dec to WSB_PRODUCER_REGS);
//   warpgroups 1 and 2, the consumers: keys 64c..64c + 63 each (c = 0, 1) and their dK, dV in
//     registers, the per-tile chain of the backward above with the producer's registers
//     (setmaxnreg.inc to WSB_CONSUMER_REGS).
// No block-wide barrier after the start. Barriers:
//   kv_full (mbarrier, 128 arrivals): K and V have landed (cp.async.mbarrier.arrive.noinc per
//     producer thread);
//   full[s] (128 arrivals): the stage's Q, dO, lse and Dᵢ have landed;
//   empty[s] (8 arrivals, lane 0 of each consumer warp; 256, every consumer thread, in ws4):
//     the warp's dV += Pᵀ·dO and dK += dSᵀ·Q of the stage's tile have completed (the last
//     reads of Q and dO; lse and Dᵢ are read by plain loads before them), so the producer may
//     refill it;
//   named barrier 1 (256 consumer threads): both halves of dSᵀ (128 keys × 64 queries) are in
//     shared memory before either consumer's dQ reads them. dSᵀ is double-buffered (tile t
//     writes buffer t % 2): a consumer writes buffer t % 2 again at tile t + 2, after passing the
//     barrier of tile t + 1, which the other reaches only after waiting for its dQ of tile t; so
//     one barrier a tile suffices (the backward above needs two: before dQ and after it).
// Within a consumer, at D = 64 the next tile's Sᵀ and dPᵀ are issued right after this tile's dQ
// and run on the tensor cores while this tile's dQ goes out by vector reds (WSB_EARLY_S). At
// D = 128 that would hold dK, dV (128), Sᵀ, dPᵀ (64), dQ (32) and the P, dS fragments (32)
// together, past the 240 registers a consumer has, so each iteration issues its own Sᵀ, dPᵀ
// at its top, as the backward above does (compiled with Sᵀ and dPᵀ carried across the loop,
// ptxas serialised every wgmma and spilled 160 bytes; as is, 24 bytes of scalars).
// dQ keeps the backward above's scheme (split by columns across the two consumers, 16-byte
// vector reds into the f32 scratch): splitting it by keys instead would free the consumers of
// each other but double the reds (each would add 64 × D a tile): by estimate the reds already
// carry 4.3 GB into L2 at D = 64, T = 16384, H = 16 (2048 blocks × 128 tiles on average × 16 KB),
// not measured apart from the rest.
// Stages: 3 at D = 64, 2 at D = 128 (the `_s2`, `_s3` kernels are the other depths, for
// TPERF_FLASH_WGMMA_BWD=ws2|ws3 measurements).
// Variants for A/B runs (wsbwd-gpu.sh; none measured yet). ncu of ws at D = 64, T = 16384 had
// 1 block an SM (12 warps), issue slots 44% busy, no eligible warp 56% of cycles: the two
// consumers run each tile's Pᵀ, dSᵀ in step (the dSᵀ barrier holds them together) while the
// tensor cores wait, and that step was ~100 instructions per 8-query group in the SASS of
// ws (both mask paths and their branches interleaved, uniform 64-bit mask arithmetic).
//   ws4 (LEAN): the per-tile loop is wsb_pds, compiled once with masks and once without (33
//     instructions a group unmasked, NVRTC 13.5), and every consumer thread releases a stage.
//   ws5 (LEAN, DEFER; D = 64): ws4 with each tile's dV, dK issued after the next tile's Sᵀ,
//     dPᵀ so that they run under the reds and the next Pᵀ, dSᵀ; two fragment sets live at once
//     (184 bytes of stack: loop-invariant descriptors and addresses spilled, ~16 local loads
//     and 2 stores a tile). At D = 128 the registers do not allow it (dK, dV alone are 128).
// Shared bytes: (2·128 + 2·S·64)·D·2 for K, V and the ring's Q and dO, 2 × 16 KB of dSᵀ,
// 2·S·64·4 of lse and Dᵢ, 8·(1 + 2·S) of barriers, 1 KB alignment slack: 115 KB at D = 64
// (S = 3), 162 KB at D = 128 (S = 2), 195 KB at D = 128, S = 3.

#define WSB_PRODUCER_REGS 24
#define WSB_CONSUMER_REGS 240

// Pins 32-bit registers as wgmma_hold pins floats: an A fragment a wgmma reads from registers
// must stay allocated until the wait that completes it, not only until its issue.
template <int R> __device__ __forceinline__ void wgmma_hold_u(unsigned (&a)[R][4]) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[i][e])::"memory");
}

// Where a block of the backward works: its key tile [j0, j1) of KV head g in batch element b,
// and the query rows that see any of those keys, [qlo, qhi), in nq tiles a head (`total`
// tiles over the group's heads, head-major). Each warpgroup of ws_bwd computes this after the
// role split: values live across setmaxnreg would have to fit the producer's 24 registers and
// were spilled there.
struct WsbGeom {
    i64 b, qlo, qhi;
    int g, group, j0, j1, nq, total;
};

__device__ __forceinline__ WsbGeom wsb_geom(const MmaBwdArgs& p, int bk, int bq) {
    WsbGeom w;
    const int tiles = (p.tk + bk - 1) / bk;
    const int tile = (int)(blockIdx.x % tiles);
    w.g = (int)((blockIdx.x / tiles) % p.h_kv);
    w.b = (i64)(blockIdx.x / tiles) / p.h_kv;
    w.group = p.h / p.h_kv;
    w.j0 = tile * bk;
    w.j1 = min(w.j0 + bk, p.tk);
    const i64 off = (i64)p.tk - p.tq;
    w.qlo = 0;
    w.qhi = p.tq;
    if (p.causal) {
        w.qlo = max((i64)0, w.j0 - off);
        if (p.window >= 0) w.qhi = min((i64)p.tq, w.j1 - 1 + p.window - off);
    }
    w.nq = w.qhi > w.qlo ? (int)((w.qhi - w.qlo + bq - 1) / bq) : 0;
    w.total = w.group * w.nq;
    return w;
}

// The mask of one backward tile in 32-bit terms (ws_bwd computes it per tile): element
// (q, kr + 8r) is visible when q < qn, kr + 8r < kn and (not causal, or 0 ≤ dist < win) with
// dist = base + q − 8r.
struct WsbMask {
    int qn, kn, base, win;
    bool causal;
};

// Pᵀ = exp2(Sᵀ·scale·log2(e) − lse·log2(e)) and dSᵀ = Pᵀ ⊙ (dPᵀ − Dᵢ) of one consumer's 64 keys ×
// 64 queries (ws4, the lean form of ws_bwd's loop): packed into the A fragments `pa`, `sa` and
// dSᵀ stored, swizzled, into the tile at shared address `dSt`. MASKED is a template parameter
// so that the tiles clear of every edge (all but ~2 of a causal block's, T = 16384) carry no
// mask arithmetic at all; the NVRTC 13 build of the loop with a runtime `masked` interleaved
// both paths and their branches in each 8-query group. Element e of group t is query
// q0 + e % 2, key kr + 8·(e / 2) with q0 = 8t + 2·(lane % 4); keys kr and kr + 8 share their
// swizzle (kr % 8 = lane / 4), so one row address serves both (+ 8 rows = 1024 bytes).
template <bool MASKED, int NT, bool BF>
__device__ __forceinline__ void wsb_pds(const float (&s)[NT * 4], const float (&dp)[NT * 4],
                                        unsigned (&pa)[NT / 2][4], unsigned (&sa)[NT / 2][4],
                                        const float* Lt, const float* Dt, float sl2, unsigned dSt,
                                        int kr, int lane, const WsbMask& mk) {
    const unsigned row = dSt + kr * 128 + (lane % 4) * 4;
    const int sw = lane / 4;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        const int q0 = t * 8 + (lane % 4) * 2;
        const float2 lq = *(const float2*)(Lt + q0), dq2 = *(const float2*)(Dt + q0);
        const float nl[2] = {-lq.x * LOG2E, -lq.y * LOG2E}, dd[2] = {dq2.x, dq2.y};
        float pv[4], ds[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            pv[e] = fast_exp2(fmaf(s[t * 4 + e], sl2, nl[e % 2]));
            if constexpr (MASKED) {
                const int q = q0 + (e % 2), dist = mk.base + q - (e / 2) * 8;
                const bool seen = q < mk.qn && kr + (e / 2) * 8 < mk.kn &&
                                  (!mk.causal || (dist >= 0 && dist < mk.win));
                if (!seen) pv[e] = 0.0f;
            }
            ds[e] = pv[e] * (dp[t * 4 + e] - dd[e % 2]);
        }
        const unsigned at = row + ((t ^ sw) * 16);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            pa[t / 2][(t % 2) * 2 + r] = pack2<BF>(pv[2 * r], pv[2 * r + 1]);
            const unsigned packed = pack2<BF>(ds[2 * r], ds[2 * r + 1]);
            sa[t / 2][(t % 2) * 2 + r] = packed;
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at + r * 1024), "r"(packed) : "memory");
        }
    }
}

template <int D, bool BF, int S, bool LEAN, bool DEFER>
__device__ __forceinline__ void ws_bwd(Buf qkv, Buf dout, Buf lse, const float* di, float* dq,
                                       Buf dqkv, MmaBwdArgs p) {
    static_assert(D == 64 || D == 128, "wgmma backward: D = 64 or 128");
    static_assert(!DEFER || (LEAN && D == 64), "ws5 (DEFER) is the lean loop at D = 64");
    constexpr int BQ = WGB_BQ, BK = WGB_BK, KT = D / 16, NT = BQ / 8, OT = D / 8;
    constexpr unsigned KPANEL = BK * 128, QPANEL = BQ * 128; // bytes of 64 columns
    constexpr unsigned KBYTES = BK * D * 2, QBYTES = BQ * D * 2, SBYTES = BK * BQ * 2;
    constexpr bool WSB_EARLY_S = D == 64;
    extern __shared__ __align__(16) u16 wg_smem[];
    const unsigned base = (smem_addr(wg_smem) + 1023u) & ~1023u;
    const unsigned Ks = base, Vs = Ks + KBYTES, Qs = Vs + KBYTES; // Q, dO: S stages each
    const unsigned dOs = Qs + S * QBYTES, dSs = dOs + S * QBYTES; // dSᵀ: 2 buffers
    // lse, Dᵢ: S × BQ f32 each. The ring's only buffers read by plain loads (LDS), so the only
    // ones compute-sanitizer's racecheck sees read (wgmma reads Q and dO through the async
    // proxy, which it does not track). On the H200 it reported the producer's 4-byte cp.async
    // into them (the write) against the consumers' float2 loads of them (the reads), 32 hazards
    // per read instruction for every refill of a stage and none for a stage's first fill, in
    // all six launches of the ring test: the write of tile it against the reads of tile it − S,
    // a write-after-read. It is ordered: each consumer thread's loads come before its warp's
    // __syncwarp, lane 0's mbarrier.arrive on empty (release, CTA scope, cumulative over the
    // warp's prior accesses) completes the phase the producer's try_wait (acquire) waits for,
    // and only then does the producer issue the cp.async; the read-after-write side
    // (cp.async.mbarrier.arrive.noinc on full, try_wait) racecheck accepts, as no first fill is
    // reported. So a limit of the tool, not a race. Most likely it does not carry the phase of
    // an mbarrier that one lane arrives on for its warp back to the other lanes' loads (across
    // __syncwarp); FlashAttention's SM100 backward met the same report with its lse and dPsum,
    // bulk copies on mbarriers (AI/RACECHECK_TMA_HAZARD.md in its repository). ws4 and ws5
    // (LEAN) have every consumer thread arrive (empty counts 256), so each reader's loads are
    // ordered by its own release; wsbwd-gpu.sh runs racecheck on ws, ws4 and ws5 to show
    // whether the tool then sees the order. A named barrier cannot carry it: the producer runs
    // up to S tiles ahead of the consumers, and a barrier would tie it to them tile by tile.
    const unsigned Ls = dSs + 2 * SBYTES, Ds = Ls + S * BQ * 4;
    const unsigned bars = Ds + S * BQ * 4; // kv_full, full[S], empty[S], 8 bytes each
    const unsigned kv_full = bars;
    auto full = [&](int it) { return bars + 8u * (1 + it % S); };
    auto empty = [&](int it) { return bars + 8u * (1 + S + it % S); };
    auto phase = [&](int it) { return (unsigned)((it / S) & 1); };
    // A pointer to the f32 at shared address `at` (lse and Dᵢ are read by plain loads).
    auto shared_f32 = [&](unsigned at) {
        return (const float*)((const char*)wg_smem + (at - smem_addr(wg_smem)));
    };

    const int tid = threadIdx.x, role = tid / 128; // 0 the producer, 1 and 2 the consumers
    if (tid == 0) {
        mbar_init(kv_full, 128);
        for (int s = 0; s < S; ++s) {
            mbar_init(full(s), 128);
            mbar_init(empty(s), LEAN ? 256 : 8);
        }
    }
    __syncthreads(); // the barriers are initialised; the only block-wide barrier

    if (role == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(WSB_PRODUCER_REGS));
        const WsbGeom w = wsb_geom(p, BK, BQ);
        const i64 b = w.b, qlo = w.qlo, qhi = w.qhi;
        const int g = w.g, group = w.group, j0 = w.j0, j1 = w.j1, nq = w.nq, total = w.total;
        const i64 width = (i64)(p.h + 2 * p.h_kv) * D, hd = (i64)p.h * D;
        if (total == 0) return; // the consumers write zeros and wait for nothing
        const u16* kv = (const u16*)qkv.p + (b * p.tk + j0) * width;
        ws_load<D, BK>(Ks, kv + (i64)(p.h + g) * D, width, j1 - j0, tid);
        ws_load<D, BK>(Vs, kv + (i64)(p.h + p.h_kv + g) * D, width, j1 - j0, tid);
        cp_async_arrive(kv_full);
#pragma unroll 1
        for (int it = 0; it < total; ++it) {
            const int head = g * group + it / nq;
            const i64 i0 = qlo + (i64)(it % nq) * BQ;
            const int valid = (int)min((i64)BQ, qhi - i0);
            const unsigned at = (it % S) * QBYTES;
            // The stage's previous tile, it − S, has been released by every consumer warp.
            if (it >= S) mbar_wait(empty(it), phase(it) ^ 1);
            ws_load<D, BQ>(Qs + at, (const u16*)qkv.p + (b * p.tq + i0) * width + (i64)head * D,
                           width, valid, tid);
            ws_load<D, BQ>(dOs + at, (const u16*)dout.p + (b * p.tq + i0) * hd + (i64)head * D,
                           hd, valid, tid);
            // Threads 0..63 copy lse, 64..127 Dᵢ, one row each; rows past the end are zero.
            const int q = tid % BQ;
            const bool ok = q < valid;
            const i64 row = (b * p.h + head) * p.tq + i0 + (ok ? q : 0);
            const float* src = tid < BQ ? (const float*)lse.p + row : di + row;
            const unsigned dst = (tid < BQ ? Ls : Ds) + ((it % S) * BQ + q) * 4;
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
                         "r"(ok ? 4 : 0)
                         : "memory");
            cp_async_arrive(full(it));
        }
        // Nothing of this thread's may still be in flight when it exits.
        asm volatile("cp.async.wait_all;\n" ::: "memory");
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(WSB_CONSUMER_REGS));
    const WsbGeom w = wsb_geom(p, BK, BQ);
    const i64 b = w.b, qlo = w.qlo, qhi = w.qhi;
    const int g = w.g, group = w.group, j0 = w.j0, j1 = w.j1, nq = w.nq, total = w.total;
    const i64 width = (i64)(p.h + 2 * p.h_kv) * D, hd = (i64)p.h * D;
    const i64 off = (i64)p.tk - p.tq;
    const int c = role - 1, warp = tid / 32, lane = tid % 32, wq = warp % 4;
    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.0f;

    const float sl2 = p.scale * LOG2E;
    const int kr = c * 64 + wq * 16 + lane / 4; // block key of elements 0, 1 (2, 3: + 8)
    const unsigned kw = Ks + c * 64 * 128, vw = Vs + c * 64 * 128; // this consumer's keys
    constexpr int DQ = D / 2;
    // Columns c·D/2.. of K: consumer 1's are the second panel at D = 128, and the second half
    // of each 128-byte row (64 bytes in) at D = 64.
    const unsigned kcol = D == 128 ? c * KPANEL : c * 64;

    // Sᵀ = K_c·Qᵀ and dPᵀ = V_c·dOᵀ of query tile `it`, issued and committed, not waited for.
    auto issue_sdp = [&](int it, float (&s)[BQ / 2], float (&dp)[BQ / 2]) {
        const unsigned at = (it % S) * QBYTES;
        mbar_wait(full(it), phase(it));
        fence_async_shared();
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            const unsigned step = (kk % 4) * 32;
            const unsigned kp = (kk / 4) * KPANEL + step, qp = (kk / 4) * QPANEL + step;
            wgmma_ss_n64<BF>(s, smem_desc(kw + kp, 16, 1024), smem_desc(Qs + at + qp, 16, 1024),
                             kk > 0);
            wgmma_ss_n64<BF>(dp, smem_desc(vw + kp, 16, 1024),
                             smem_desc(dOs + at + qp, 16, 1024), kk > 0);
        }
        wgmma_commit();
    };

    // Query tile `it` from its issued Sᵀ and dPᵀ on.
    auto tile = [&](int it, float (&s)[BQ / 2], float (&dp)[BQ / 2]) {
        unsigned pa[BQ / 16][4], sa[BQ / 16][4];
        const int head = g * group + it / nq;
        const i64 i0 = qlo + (i64)(it % nq) * BQ;
        const unsigned at = (it % S) * QBYTES, dSt = dSs + (it % 2) * SBYTES;
        const float* Lt = shared_f32(Ls + (it % S) * BQ * 4);
        const float* Dt = shared_f32(Ds + (it % S) * BQ * 4);

        wgmma_wait_all(); // Sᵀ, dPᵀ of this tile (everything earlier has completed)
        wgmma_hold(s);
        wgmma_hold(dp);

        const bool masked =
            i0 + BQ > qhi || j0 + BK > p.tk ||
            (p.causal && (j0 + BK - 1 > off + i0 ||
                          (p.window >= 0 && off + i0 + BQ - 1 - j0 >= p.window)));
        // The mask in 32-bit terms: element (q, kr + 8r) is query i0 + q, key j0 + kr + 8r, at
        // distance dist = base + q − 8r behind it, visible when q < qn, kr + 8r < kn and (not
        // causal, or 0 ≤ dist < win). Distances inside a tile fit an int; the window is clamped.
        const int qn = (int)min((i64)BQ, qhi - i0), kn = j1 - j0;
        const int base = (int)(off + i0 - j0) - kr;
        const int win = p.window < 0 ? 0x7fffffff : (int)min(p.window, (i64)0x7fffffff);
        if constexpr (LEAN) {
            const WsbMask mk{qn, kn, base, win, p.causal != 0};
            if (masked)
                wsb_pds<true, NT, BF>(s, dp, pa, sa, Lt, Dt, sl2, dSt, kr, lane, mk);
            else
                wsb_pds<false, NT, BF>(s, dp, pa, sa, Lt, Dt, sl2, dSt, kr, lane, mk);
        } else {
            // One 8-query column group t at a time: Pᵀ and dSᵀ of its 4 elements, packed into
            // the A fragments (group t is half of 16-query step t / 2) and dSᵀ stored, so that
            // Sᵀ and dPᵀ die group by group rather than all living beside the packed fragments
            // (at D = 128 dK and dV already hold 128 registers).
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                const int q0 = t * 8 + (lane % 4) * 2;
                const float2 lq = *(const float2*)(Lt + q0), dq2 = *(const float2*)(Dt + q0);
                float pv[4], ds[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float l = e % 2 ? lq.y : lq.x, dd = e % 2 ? dq2.y : dq2.x;
                    pv[e] = fast_exp2(fmaf(s[t * 4 + e], sl2, -l * LOG2E));
                    if (masked) {
                        const int q = q0 + (e % 2), dist = base + q - (e / 2) * 8;
                        const bool seen = q < qn && kr + (e / 2) * 8 < kn &&
                                          (!p.causal || (dist >= 0 && dist < win));
                        if (!seen) pv[e] = 0.0f;
                    }
                    ds[e] = pv[e] * (dp[t * 4 + e] - dd);
                }
                // Elements (e, e + 1) are keys kr (e = 0) and kr + 8 (e = 2), queries q0, q0 + 1.
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    pa[t / 2][(t % 2) * 2 + r] = pack2<BF>(pv[2 * r], pv[2 * r + 1]);
                    const unsigned packed = pack2<BF>(ds[2 * r], ds[2 * r + 1]);
                    sa[t / 2][(t % 2) * 2 + r] = packed;
                    const int key = kr + 8 * r;
                    const unsigned at_s =
                        dSt + key * 128 + (((q0 / 8) ^ (key % 8)) * 16) + (q0 % 8) * 2;
                    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at_s), "r"(packed)
                                 : "memory");
                }
            }
        }

        // dV += Pᵀ·dO, dK += dSᵀ·Q over the tile's 64 queries, 16 a step.
        wgmma_hold(dv);
        wgmma_hold(dk);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk) {
            const u64 od = smem_desc(dOs + at + kk * 16 * 128, QPANEL, 1024);
            const u64 qd = smem_desc(Qs + at + kk * 16 * 128, QPANEL, 1024);
            if constexpr (D == 64) {
                wgmma_rs_n64<BF>(dv, pa[kk], od, 1);
                wgmma_rs_n64<BF>(dk, sa[kk], qd, 1);
            } else {
                wgmma_rs_n128<BF>(dv, pa[kk], od, 1);
                wgmma_rs_n128<BF>(dk, sa[kk], qd, 1);
            }
        }
        wgmma_commit();
        fence_async_shared();
        named_sync(1); // both consumers' halves of dSᵀ are complete

        // dQ columns c·D/2.. of the tile: dS (64 queries × 128 keys) · K.
        float acc[DQ / 2];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            const u64 sd = smem_desc(dSt + kk * 16 * 128, SBYTES, 1024);
            const u64 kd = smem_desc(Ks + kcol + kk * 16 * 128, KPANEL, 1024);
            if constexpr (D == 64)
                wgmma_ss_tt_n32<BF>(acc, sd, kd, kk > 0);
            else
                wgmma_ss_tt_n64<BF>(acc, sd, kd, kk > 0);
        }
        wgmma_commit();
        if constexpr (WSB_EARLY_S) {
            // The next tile's products run under this tile's reds; dV, dK and dQ complete
            // first (groups complete in order).
            if (it + 1 < total) {
                issue_sdp(it + 1, s, dp);
                asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
            } else {
                wgmma_wait_all();
            }
        } else {
            wgmma_wait_all();
        }
        wgmma_hold(acc);
        wgmma_hold(dv);
        wgmma_hold(dk);
        wgmma_hold_u(pa);
        wgmma_hold_u(sa);
        // This warp has read the last of the stage (Q and dO, by the products just completed).
        if constexpr (LEAN) {
            mbar_arrive(empty(it)); // every thread, for its own reads of lse and Dᵢ
        } else {
            __syncwarp();
            if (lane == 0) mbar_arrive(empty(it));
        }

        {
            const i64 i = i0 + wq * 16 + lane / 4;
            float* dst = dq + (b * p.tq + i) * hd + (i64)head * D + c * DQ + (lane % 4) * 2;
#pragma unroll
            for (int t = 0; t < DQ / 8; ++t) {
                const float v[4] = {acc[t * 4], acc[t * 4 + 1], acc[t * 4 + 2], acc[t * 4 + 3]};
                dq_add(dst + t * 8, hd, v, p.scale, lane, i < qhi, i + 8 < qhi);
            }
        }
    };

    if constexpr (DEFER) {
        // ws5: tile it's dV += Pᵀ·dO, dK += dSᵀ·Q run on the tensor cores under tile it's dQ
        // reds and tile it + 1's Pᵀ, dSᵀ (both consumers reach that part of the loop together,
        // held by the dSᵀ barrier, and in ws4 the tensor cores idle through it). Iteration it,
        // with Pᵀ, dSᵀ of tile it in registers and dSᵀ in shared memory:
        //   dSᵀ barrier; issue dQ of it, Sᵀ, dPᵀ of it + 1, dV, dK of it (three groups);
        //   wait for all but the last (dQ, Sᵀ, dPᵀ); tile it's reds; Pᵀ, dSᵀ of it + 1 into the
        //   other fragment set; wait for the rest (dV, dK of it), release its stage.
        // Nothing is in flight across the loop's back edge: with dV, dK pending from one
        // iteration into the next, ptxas (NVRTC 13.5) took the accumulators read after a
        // partial wait for in flight and serialised every wgmma (C7514, C7515). After the last
        // tile its own Sᵀ, dPᵀ are issued once more (its stage is not yet released), discarded,
        // so that every iteration commits the same groups. The fragments of consecutive tiles
        // alternate between two sets (the loop is unrolled by two) rather than being copied.
        // dSᵀ's double buffer keeps its argument: a consumer writes buffer (it + 1) % 2 after
        // the barrier of tile it, which the other passes only after waiting for its dQ of
        // tile it − 1.
        float s[BQ / 2], dp[BQ / 2], acc[DQ / 2];
        unsigned pa0[BQ / 16][4], sa0[BQ / 16][4], pa1[BQ / 16][4], sa1[BQ / 16][4];
        // Pᵀ, dSᵀ of tile it (its Sᵀ, dPᵀ complete) into `pa`, `sa` and shared memory.
        auto pds = [&](int it, unsigned (&pa)[BQ / 16][4], unsigned (&sa)[BQ / 16][4]) {
            const i64 i0 = qlo + (i64)(it % nq) * BQ;
            const unsigned dSt = dSs + (it % 2) * SBYTES;
            const float* Lt = shared_f32(Ls + (it % S) * BQ * 4);
            const float* Dt = shared_f32(Ds + (it % S) * BQ * 4);
            const bool masked =
                i0 + BQ > qhi || j0 + BK > p.tk ||
                (p.causal && (j0 + BK - 1 > off + i0 ||
                              (p.window >= 0 && off + i0 + BQ - 1 - j0 >= p.window)));
            const WsbMask mk{(int)min((i64)BQ, qhi - i0), j1 - j0, (int)(off + i0 - j0) - kr,
                             p.window < 0 ? 0x7fffffff : (int)min(p.window, (i64)0x7fffffff),
                             p.causal != 0};
            if (masked)
                wsb_pds<true, NT, BF>(s, dp, pa, sa, Lt, Dt, sl2, dSt, kr, lane, mk);
            else
                wsb_pds<false, NT, BF>(s, dp, pa, sa, Lt, Dt, sl2, dSt, kr, lane, mk);
        };
        auto body = [&](int it, unsigned (&pa)[BQ / 16][4], unsigned (&sa)[BQ / 16][4],
                        unsigned (&pa_next)[BQ / 16][4], unsigned (&sa_next)[BQ / 16][4]) {
            const int head = g * group + it / nq;
            const i64 i0 = qlo + (i64)(it % nq) * BQ;
            const unsigned at = (it % S) * QBYTES, dSt = dSs + (it % 2) * SBYTES;
            fence_async_shared();
            named_sync(1); // both consumers' halves of dSᵀ are complete
            wgmma_hold_u(pa);
            wgmma_hold_u(sa);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk) {
                const u64 sd = smem_desc(dSt + kk * 16 * 128, SBYTES, 1024);
                const u64 kd = smem_desc(Ks + kcol + kk * 16 * 128, KPANEL, 1024);
                wgmma_ss_tt_n32<BF>(acc, sd, kd, kk > 0);
            }
            wgmma_commit();
            issue_sdp(it + 1 < total ? it + 1 : it, s, dp);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < BQ / 16; ++kk) {
                const u64 od = smem_desc(dOs + at + kk * 16 * 128, QPANEL, 1024);
                const u64 qd = smem_desc(Qs + at + kk * 16 * 128, QPANEL, 1024);
                wgmma_rs_n64<BF>(dv, pa[kk], od, 1);
                wgmma_rs_n64<BF>(dk, sa[kk], qd, 1);
            }
            wgmma_commit();
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); // dQ, Sᵀ, dPᵀ
            wgmma_hold(acc);
            wgmma_hold(s);
            wgmma_hold(dp);
            {
                const i64 i = i0 + wq * 16 + lane / 4;
                float* dst = dq + (b * p.tq + i) * hd + (i64)head * D + c * DQ + (lane % 4) * 2;
#pragma unroll
                for (int t = 0; t < DQ / 8; ++t) {
                    const float v[4] = {acc[t * 4], acc[t * 4 + 1], acc[t * 4 + 2],
                                        acc[t * 4 + 3]};
                    dq_add(dst + t * 8, hd, v, p.scale, lane, i < qhi, i + 8 < qhi);
                }
            }
            if (it + 1 < total) pds(it + 1, pa_next, sa_next);
            wgmma_wait_all(); // dV, dK of tile it
            wgmma_hold(dv);
            wgmma_hold(dk);
            wgmma_hold_u(pa);
            wgmma_hold_u(sa);
            mbar_arrive(empty(it)); // every thread, as in ws4
        };
        if (total > 0) {
            mbar_wait(kv_full, 0);
            issue_sdp(0, s, dp);
            wgmma_wait_all();
            wgmma_hold(s);
            wgmma_hold(dp);
            pds(0, pa0, sa0);
        }
#pragma unroll 1
        for (int it = 0; it < total; it += 2) {
            body(it, pa0, sa0, pa1, sa1);
            if (it + 1 < total) body(it + 1, pa1, sa1, pa0, sa0);
        }
    } else if constexpr (WSB_EARLY_S) {
        // Sᵀ and dPᵀ carry over: tile it + 1's are issued inside tile it.
        float s[BQ / 2], dp[BQ / 2];
        if (total > 0) {
            mbar_wait(kv_full, 0);
            issue_sdp(0, s, dp);
        }
#pragma unroll 1
        for (int it = 0; it < total; ++it) tile(it, s, dp);
    } else {
        // Sᵀ and dPᵀ are the iteration's own, as in the backward above: carried across the
        // loop beside dK and dV, they cost ptxas its registers (serialised wgmma, spills).
        if (total > 0) mbar_wait(kv_full, 0);
#pragma unroll 1
        for (int it = 0; it < total; ++it) {
            float s[BQ / 2], dp[BQ / 2];
            issue_sdp(it, s, dp);
            tile(it, s, dp);
        }
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
                pack2<BF>(dk[t * 4 + 2 * r] * p.scale, dk[t * 4 + 2 * r + 1] * p.scale);
            *(unsigned*)(row + (i64)(p.h + p.h_kv + g) * D + t * 8) =
                pack2<BF>(dv[t * 4 + 2 * r], dv[t * 4 + 2 * r + 1]);
        }
    }
}

// One block of one producer and two consumer warpgroups an SM. The plain names take the default
// stages (3 at D = 64, 2 at 128); `_s<S>` names are the other depth, for
// TPERF_FLASH_WGMMA_BWD=ws2|ws3.
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_bwd_d64_bf16(MMA_BWD_PARAMS) {
    ws_bwd<64, true, 3, false, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_bwd_d64_f16(MMA_BWD_PARAMS) {
    ws_bwd<64, false, 3, false, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_bwd_d64_s2_bf16(MMA_BWD_PARAMS) {
    ws_bwd<64, true, 2, false, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_bwd_d64_s2_f16(MMA_BWD_PARAMS) {
    ws_bwd<64, false, 2, false, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_bwd_d128_bf16(MMA_BWD_PARAMS) {
    ws_bwd<128, true, 2, false, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_bwd_d128_f16(MMA_BWD_PARAMS) {
    ws_bwd<128, false, 2, false, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_bwd_d128_s3_bf16(MMA_BWD_PARAMS) {
    ws_bwd<128, true, 3, false, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws_bwd_d128_s3_f16(MMA_BWD_PARAMS) {
    ws_bwd<128, false, 3, false, false>(MMA_BWD_ARGS);
}
// ws4 (TPERF_FLASH_WGMMA_BWD=ws4): the default depths with the lean loop (wsb_pds) and the
// stage released by every consumer thread (see the lse/Dᵢ ring's comment in ws_bwd).
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws4_bwd_d64_bf16(MMA_BWD_PARAMS) {
    ws_bwd<64, true, 3, true, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws4_bwd_d64_f16(MMA_BWD_PARAMS) {
    ws_bwd<64, false, 3, true, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws4_bwd_d128_bf16(MMA_BWD_PARAMS) {
    ws_bwd<128, true, 2, true, false>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws4_bwd_d128_f16(MMA_BWD_PARAMS) {
    ws_bwd<128, false, 2, true, false>(MMA_BWD_ARGS);
}
// ws5 (TPERF_FLASH_WGMMA_BWD=ws5, D = 64): ws4 with each tile's dV, dK deferred under the next
// tile's Pᵀ, dSᵀ (the DEFER loop in ws_bwd).
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws5_bwd_d64_bf16(MMA_BWD_PARAMS) {
    ws_bwd<64, true, 3, true, true>(MMA_BWD_ARGS);
}
extern "C" __global__ void __launch_bounds__(WGS_THREADS, 1) flash_wgmma_ws5_bwd_d64_f16(MMA_BWD_PARAMS) {
    ws_bwd<64, false, 3, true, true>(MMA_BWD_ARGS);
}
