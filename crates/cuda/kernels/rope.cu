// RoPE in place on the query and key heads of qkv (rows, (Hq + 2Hkv)·D), mirroring
// tperf_core::ops::rope: pair (x₂ᵢ, x₂ᵢ₊₁) of a head at position p is rotated by
// sign·p·θ^(−2i/D); `sign` −1 is the backward (the inverse rotation). Row r's position is
// positions[r] when the op reads them per row (a ragged batch), else r mod t + pos_offset (or the
// replayed decode step's position, graph.rs): the contiguous batch is the per-row one with
// positions 0..t.
//
// A thread owns a group of pairs of one row, 4 pairs (8 elements: one 16-byte access in a 16-bit
// dtype, two in f32) when `vec` (D a multiple of 8 and qkv 16-byte aligned, the host checks), else
// one pair, and rotates that group in ROPE_HEADS heads: the cosine and sine are computed once per
// (row, pair) and used ROPE_HEADS times (the old kernel took them in double per element, 16× its
// roofline). ROPE_HEADS = 4 keeps enough threads in flight to hide the memory latency (1024 rows
// × 6 head groups × 8 pair groups = 49k threads at the seed's small size) while amortising the
// angle; each thread loads its heads before it stores any, so the loads overlap.
//
// The angle: θ^(−2i/D) = step^i with step = θ^(−2/D) (the host computes it in double), taken
// by repeated multiplication in double (relative error ~i·1e-16), times the position in double;
// then reduced to [−π, π] in double (a − k·2π by fma, which rounds once, then the part of 2π
// below double precision) and its cosine and
// sine taken in f32 on the reduced angle. Against the reference (cos and sin of the double angle,
// rounded to f32) that differs by about one f32 ulp of the result (2·10⁻⁷), at any position up to
// 2³¹; f32 trigonometry of the unreduced angle would lose ~p·10⁻⁷ radians.

#define ROPE_HEADS 4

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

extern "C" __global__ void rope(Buf qkv, Buf positions, i64 rows, int t, int pos_offset,
                                int rotated_heads, int row_width, int d, double freq_step,
                                double sign, int vec, const int* step) {
    if (step) pos_offset = step[0]; // a replayed decode step's position (graph.rs)
    const int pairs = vec ? 4 : 1;  // per thread
    const int groups = (d / 2) / pairs;
    const int chunks = (rotated_heads + ROPE_HEADS - 1) / ROPE_HEADS;
    const i64 per_row = (i64)chunks * groups;
    FOR_EACH(idx, rows * per_row) {
        const i64 row = idx / per_row;
        const int rem = (int)(idx - row * per_row);
        const int chunk = rem / groups, g = rem - chunk * groups;
        const int pos = positions.p ? ld_i32(positions, row) : (int)(row % t) + pos_offset;
        const int i0 = g * pairs;
        const int h0 = chunk * ROPE_HEADS;
        const int heads = min(ROPE_HEADS, rotated_heads - h0);
        const i64 base = row * row_width + (i64)h0 * d + 2 * i0;
        if (vec) {
            float x[ROPE_HEADS][8];
#pragma unroll
            for (int h = 0; h < ROPE_HEADS; h++) {
                if (h < heads) ld8(qkv, base + (i64)h * d, x[h]);
            }
            float c[4], s[4];
            double inv = rope_pow(freq_step, i0);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                rope_cos_sin(sign * (double)pos * inv, c[k], s[k]);
                inv *= freq_step;
            }
#pragma unroll
            for (int h = 0; h < ROPE_HEADS; h++) {
                if (h < heads) {
                    float y[8];
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        float x0 = x[h][2 * k], x1 = x[h][2 * k + 1];
                        y[2 * k] = x0 * c[k] - x1 * s[k];
                        y[2 * k + 1] = x0 * s[k] + x1 * c[k];
                    }
                    st8(qkv, base + (i64)h * d, y);
                }
            }
        } else {
            float x0[ROPE_HEADS], x1[ROPE_HEADS];
#pragma unroll
            for (int h = 0; h < ROPE_HEADS; h++) {
                if (h < heads) {
                    x0[h] = ld(qkv, base + (i64)h * d);
                    x1[h] = ld(qkv, base + (i64)h * d + 1);
                }
            }
            float c, s;
            rope_cos_sin(sign * (double)pos * rope_pow(freq_step, i0), c, s);
#pragma unroll
            for (int h = 0; h < ROPE_HEADS; h++) {
                if (h < heads) {
                    st(qkv, base + (i64)h * d, x0[h] * c - x1[h] * s);
                    st(qkv, base + (i64)h * d + 1, x0[h] * s + x1[h] * c);
                }
            }
        }
    }
}
