// The kernels of `tperf hw measure --device cuda`: the simplest code that reaches each ceiling,
// so that what they measure is the hardware, not the kernel.

// Fills n elements of dst with values in [-1, 1) from a hash of (index, seed). GEMM inputs are
// filled so rather than zeroed: tensor cores multiplying zeros draw less power, hold a higher
// clock, and so flatter the ceiling.
extern "C" __global__ void fill_random(Buf dst, i64 n, int seed) {
    i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        unsigned long long x = (unsigned long long)i * 0x9E3779B97F4A7C15ull + (unsigned)seed;
        x ^= x >> 31;
        x *= 0xBF58476D1CE4E5B9ull;
        x ^= x >> 29;
        st(dst, i, (float)(x >> 40) * (1.0f / 8388608.0f) - 1.0f);
    }
}

// Copies n16 16-byte words: one 128-bit load and one 128-bit store per word (the widest a thread
// issues), grid-strided so consecutive threads touch consecutive words (coalesced). Each word
// moves 32 bytes of DRAM traffic: 16 read, 16 written.
extern "C" __global__ void copy_words(const int4* src, int4* dst, i64 n16) {
    i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += stride) {
        dst[i] = src[i];
    }
}

// Reads n16 16-byte words `passes` times. Loads are ld.global.cg (cache in L2, not in L1), so
// with a working set that fits in L2 every pass after the first is served by L2: the kernel's
// bytes over its time is the L2 read bandwidth. The load is volatile asm because a thread reads
// the same words in every pass, which the compiler could otherwise load once. The sum of
// everything read is stored only if it equals a value it almost never does, which keeps the
// loads live without adding traffic.
extern "C" __global__ void l2_read(const int4* src, i64 n16, int passes, int* sink) {
    i64 stride = (i64)gridDim.x * blockDim.x;
    i64 first = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    int acc = 0;
    for (int p = 0; p < passes; ++p) {
        for (i64 i = first; i < n16; i += stride) {
            int x, y, z, w;
            asm volatile("ld.global.cg.v4.s32 {%0, %1, %2, %3}, [%4];"
                         : "=r"(x), "=r"(y), "=r"(z), "=r"(w)
                         : "l"(src + i));
            acc += x ^ y ^ z ^ w;
        }
    }
    if (acc == 0x7A5C3E1F) {
        sink[0] = acc;
    }
}

// Does nothing: its launches measure the cost of a launch itself.
extern "C" __global__ void empty() {}
