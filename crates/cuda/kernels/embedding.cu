// The embedding, mirroring tperf_core::ops::embedding: out[i] = wte[tokens[i]]·s + the position
// term of row i, and its backward dwte[tokens[i]] += dout[i]·s, dwpe[pos(i)] += dout[i]. Token
// ids (and per-row positions) are range-checked on the host before a launch.

// The position of row i: positions[i] for a ragged batch, else i mod t + pos_offset.
__device__ __forceinline__ int embedding_position(const Buf& positions, i64 i, int t,
                                                  int pos_offset) {
    return positions.p ? ld_i32(positions, i) : (int)(i % t) + pos_offset;
}

// The sinusoidal table at (p, j), in double as the reference takes it.
__device__ __forceinline__ float sinusoid(int p, int j, int c) {
    double ii = (double)(j / 2);
    double angle = (double)p * exp(-(2.0 * ii / (double)c) * log(10000.0));
    return (float)((j % 2 == 0) ? sin(angle) : cos(angle));
}

// out (n, C). kind: 0 no position term, 1 learned (wpe), 2 sinusoidal. A thread gathers 8
// consecutive columns of a row (one 16-byte access per operand in a 16-bit dtype) when `vec` (C a
// multiple of 8, the tables and out 16-byte aligned), else one.
extern "C" __global__ void embedding_forward(Buf tokens, Buf wte, Buf wpe, Buf positions, Buf out,
                                             i64 n, int c, int t, int pos_offset, int kind,
                                             float scale, int vec, const int* step) {
    if (step) pos_offset = step[0]; // a replayed decode step's position (graph.rs)
    const int width = vec ? 8 : 1;
    const int groups = c / width;
    FOR_EACH(idx, n * groups) {
        const i64 i = idx / groups;
        const int j = (int)(idx - i * groups) * width;
        const i64 src = (i64)ld_i32(tokens, i) * c + j;
        const int p = embedding_position(positions, i, t, pos_offset);
        if (vec) {
            float v[8], w[8];
            ld8(wte, src, v);
            if (kind == 1) ld8(wpe, (i64)p * c + j, w);
#pragma unroll
            for (int e = 0; e < 8; e++) {
                float pos = kind == 1 ? w[e] : kind == 2 ? sinusoid(p, j + e, c) : 0.0f;
                v[e] = v[e] * scale + pos;
            }
            st8(out, i * c + j, v);
        } else {
            float pos = kind == 1 ? ld(wpe, (i64)p * c + j) : kind == 2 ? sinusoid(p, j, c) : 0.0f;
            st(out, i * c + j, ld(wte, src) * scale + pos);
        }
    }
}

// dwte (V, C), f32: a warp per vocabulary row v, deterministic and without atomics. The warp
// scans the n token ids 128 at a time (4 a lane; a ballot per 32 says which rows hold v) and adds
// each matching row of dout, in ascending row order, into accumulators in registers: lane l owns
// columns 8l .. 8l + 7 (+ 256, + 512, + 768) when `vec` (C a multiple of 8, dout 16-byte aligned),
// else l, l + 32, ..., so a row of up to EMB_COLS columns is 32 registers a lane (wider rows go
// EMB_COLS columns at a time, each scanning the ids again). The sum starts from the row's old
// value when `accumulate` (the tied output layer's part) and from 0 otherwise, and adds in the
// reference's order (ascending token row), so the sum does not depend on scheduling. Rows no
// token names are written 0 (this replaces zeroing the table first: the same bytes, one launch
// fewer), or left alone when accumulating.
//
// Cost: every row reads the ids (from L1) n/32 ballots' worth, V·n/32 in all: at the seed's
// sizes (V 10⁴, n 1024) ~3·10⁵ warp steps beside the 31 MB the table's write takes. It grows as
// V·n: at GPT-2's vocabulary and 8k tokens the scan would take about twice the write.
#define EMB_COLS 1024
extern "C" __global__ void embedding_backward(Buf tokens, Buf dout, float* dwte, i64 n, int vocab,
                                              int c, float scale, int accumulate, int vec) {
    const int lane = threadIdx.x & 31;
    const i64 warps = ((i64)gridDim.x * blockDim.x) >> 5;
    const int* ids = (const int*)tokens.p;
    for (i64 v = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; v < vocab; v += warps) {
        for (int c0 = 0; c0 < c; c0 += EMB_COLS) {
            // Column of slot k of this lane.
#define EMB_COL(k) (vec ? c0 + 256 * ((k) >> 3) + 8 * lane + ((k) & 7) : c0 + lane + 32 * (k))
            float acc[32];
#pragma unroll
            for (int k = 0; k < 32; k++) acc[k] = 0.0f;
            bool hit = false;
            for (i64 j0 = 0; j0 < n; j0 += 128) {
                int tok[4];
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const i64 j = j0 + 32 * q + lane;
                    tok[q] = j < n ? ids[j] : -1;
                }
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    unsigned mask = __ballot_sync(0xffffffffu, tok[q] == v);
                    if (mask && !hit) {
                        hit = true;
                        if (accumulate) {
                            const float* old = dwte + v * c;
#pragma unroll
                            for (int k = 0; k < 32; k++) {
                                const int col = EMB_COL(k);
                                if (col < c) acc[k] = old[col];
                            }
                        }
                    }
                    while (mask) {
                        const i64 i = j0 + 32 * q + __ffs(mask) - 1;
                        mask &= mask - 1;
                        if (vec) {
#pragma unroll
                            for (int s = 0; s < 4; s++) {
                                const int col = c0 + 256 * s + 8 * lane;
                                if (col < c) {
                                    float g[8];
                                    ld8(dout, i * c + col, g);
#pragma unroll
                                    for (int e = 0; e < 8; e++) acc[8 * s + e] += g[e] * scale;
                                }
                            }
                        } else {
#pragma unroll
                            for (int k = 0; k < 32; k++) {
                                const int col = EMB_COL(k);
                                if (col < c) acc[k] += ld(dout, i * c + col) * scale;
                            }
                        }
                    }
                }
            }
            if (accumulate && !hit) continue;
            float* row = dwte + v * c;
            if (vec) {
#pragma unroll
                for (int s = 0; s < 4; s++) {
                    const int col = c0 + 256 * s + 8 * lane;
                    if (col < c) {
                        float4* p = (float4*)(row + col);
                        p[0] = make_float4(acc[8 * s], acc[8 * s + 1], acc[8 * s + 2], acc[8 * s + 3]);
                        p[1] = make_float4(acc[8 * s + 4], acc[8 * s + 5], acc[8 * s + 6], acc[8 * s + 7]);
                    }
                }
            } else {
#pragma unroll
                for (int k = 0; k < 32; k++) {
                    const int col = EMB_COL(k);
                    if (col < c) row[col] = acc[k];
                }
            }
#undef EMB_COL
        }
    }
}

// dwpe (P, C), f32, of a learned table: row p sums dout over the rows at position p, which in a
// contiguous batch are b·t + p − pos_offset for each sequence b (ascending, the reference's
// order); rows outside pos_offset .. pos_offset + t are 0. One thread per element, no atomics.
extern "C" __global__ void embedding_position_backward(Buf dout, float* dwpe, i64 table_rows,
                                                       int b, int t, int pos_offset, int c) {
    FOR_EACH(idx, table_rows * c) {
        const i64 p = idx / c;
        const int j = (int)(idx - p * c);
        const i64 q = p - pos_offset;
        float s = 0.0f;
        if (q >= 0 && q < t) {
            for (int bb = 0; bb < b; bb++) s += ld(dout, ((i64)bb * t + q) * c + j);
        }
        dwpe[idx] = s;
    }
}
