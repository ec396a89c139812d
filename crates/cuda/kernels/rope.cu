// RoPE in place on the query and key heads of qkv (rows, (Hq + 2Hkv)·D), mirroring
// tperf_core::ops::rope: pair (x₂ᵢ, x₂ᵢ₊₁) of a head at position p is rotated by
// sign·p·θ^(−2i/D); `sign` −1 is the backward (the inverse rotation). Row r's position is
// positions[r] when the op reads them per row (a ragged batch), else r mod t + pos_offset (or the
// replayed decode step's position, graph.rs): the contiguous batch is the per-row one with
// positions 0..t.
//
// A block per row (grid-stride past the grid's limit): its first D/2 threads take the cosine
// and sine of the row's D/2 angles into shared memory once, every thread rotates ROPE_JOBS
// groups of pairs (of one head each, blockDim.x jobs apart so that a warp's accesses stay
// contiguous): 4 pairs a group (8 elements: one 16-byte access in a 16-bit dtype, two in f32)
// when `vec` (D a multiple of 8 and qkv 16-byte aligned, the host checks), else one pair. A
// thread issues all its loads before the barrier that publishes the table, so their latency
// overlaps the trigonometry. The first version had a thread own 4 heads of a group to share the
// angle (192 blocks at the seed's size, 17% of the warps the SMs hold: 6 µs, 4.6× the roofline);
// the next a job a thread, 640-thread blocks at the 2.7B seed's 64 rotated heads of D = 80, of
// which an SM held one (53 registers): 1024 blocks in 7.8 waves, 18.7 µs against 4.4 of traffic.
// With 4 jobs a thread its blocks are 160 threads, several an SM, and every load in flight at
// once. The old kernel took cos and sin in double per element (19.5 µs).
//
// The angle: θ^(−2i/D) = step^i with step = θ^(−2/D) (the host computes it in double), taken
// by squaring in double (relative error ~10⁻¹⁵), rescaled by the model's long-context bands
// (factor, keep_below, divide_above: common.cuh's rope_scale_freq), times the position in double;
// then reduced to [−π, π] in double (a − k·2π by fma, which rounds once, then the part of 2π
// below double precision) and its cosine and sine taken in f32 on the reduced angle. Against the reference (cos and sin of the double angle,
// rounded to f32) that differs by about one f32 ulp of the result (2·10⁻⁷), at any position up to
// 2³¹; f32 trigonometry of the unreduced angle would lose ~p·10⁻⁷ radians.

// 2π = ROPE_2PI_HI (the nearest double) + ROPE_2PI_LO (the rest, 2.4·10⁻¹⁶): k·LO corrects the
// ~k·10⁻¹⁶ that reducing by HI alone would leave.
#define ROPE_2PI_HI 6.28318530717958623200
#define ROPE_2PI_LO 2.44929359829470635445e-16
#define ROPE_INV_2PI 0.15915494309189533577

__device__ __forceinline__ void rope_cos_sin(double a, float& c, float& s) {
    double k = rint(a * ROPE_INV_2PI);
    double r = fma(-k, ROPE_2PI_HI, a);
    r = fma(-k, ROPE_2PI_LO, r);
    sincosf((float)r, &s, &c);
}

// b^e for e ≥ 0 by squaring.
__device__ __forceinline__ double rope_pow(double b, int e) {
    double r = 1.0;
    while (e) {
        if (e & 1) r *= b;
        b *= b;
        e >>= 1;
    }
    return r;
}

// Shared memory: D/2 (cos, sin) pairs, D ≤ 2·ROPE_MAX_PAIRS. ROPE_JOBS: groups a thread
// rotates per pass (ops/rope.rs sizes the block by it, at most ROPE_THREADS). The launch bounds
// hold it to 64 registers (71 unbounded, 16 bytes of the trigonometry's spilled): 6 blocks of
// 160 threads an SM instead of 5, 1.3 waves of the 2.7B seed's 1024 rows instead of 1.6.
#define ROPE_MAX_PAIRS 256
#define ROPE_JOBS 4
#define ROPE_THREADS 256
extern "C" __global__ void __launch_bounds__(ROPE_THREADS, 4) rope(Buf qkv, Buf positions, i64 rows, int t, int pos_offset,
                                int rotated_heads, int row_width, int d, double freq_step,
                                double factor, double keep_below, double divide_above,
                                double sign, int vec, const int* step) {
    PDL_ENTRY();
    __shared__ float2 table[ROPE_MAX_PAIRS];
    if (step) pos_offset = step[0]; // a replayed decode step's position (graph.rs)
    const int half = d / 2;
    const int pairs = vec ? 4 : 1; // per job
    const int groups = half / pairs;
    const int jobs = rotated_heads * groups;
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const int pos = positions.p ? ld_i32(positions, row) : (int)(row % t) + pos_offset;
        const i64 base = row * row_width;
        for (int j0 = 0; j0 < jobs; j0 += ROPE_JOBS * blockDim.x) {
            float x[ROPE_JOBS][8];
#pragma unroll
            for (int k = 0; k < ROPE_JOBS; k++) {
                const int job = j0 + k * blockDim.x + threadIdx.x;
                if (job < jobs) {
                    const int head = job / groups, i0 = (job - head * groups) * pairs;
                    const i64 at = base + (i64)head * d + 2 * i0;
                    if (vec) {
                        ld8(qkv, at, x[k]);
                    } else {
                        x[k][0] = ld(qkv, at);
                        x[k][1] = ld(qkv, at + 1);
                    }
                }
            }
            if (j0 == 0) {
                for (int i = threadIdx.x; i < half; i += blockDim.x) {
                    float c, s;
                    double f = rope_scale_freq(rope_pow(freq_step, i), factor, keep_below, divide_above);
                    rope_cos_sin(sign * (double)pos * f, c, s);
                    table[i] = make_float2(c, s);
                }
                __syncthreads();
            }
#pragma unroll
            for (int k = 0; k < ROPE_JOBS; k++) {
                const int job = j0 + k * blockDim.x + threadIdx.x;
                if (job < jobs) {
                    const int head = job / groups, i0 = (job - head * groups) * pairs;
                    const i64 at = base + (i64)head * d + 2 * i0;
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        if (q < pairs) {
                            const float2 cs = table[i0 + q];
                            const float x0 = x[k][2 * q], x1 = x[k][2 * q + 1];
                            x[k][2 * q] = x0 * cs.x - x1 * cs.y;
                            x[k][2 * q + 1] = x0 * cs.y + x1 * cs.x;
                        }
                    }
                    if (vec) {
                        st8(qkv, at, x[k]);
                    } else {
                        st(qkv, at, x[k][0]);
                        st(qkv, at + 1, x[k][1]);
                    }
                }
            }
        }
        __syncthreads(); // the next row overwrites the table
    }
}
