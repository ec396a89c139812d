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
    PDL_ENTRY();
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

// dwte[tokens[i]] += dout[i]·s (and dwpe[pos(i)] += dout[i]). Two tokens may share a row, so the
// adds are atomic; the gradients are f32 (the mixed-precision policy keeps them so). The host
// zeroes dwte first (unless accumulating) and dwpe.
//
// Measured against a deterministic alternative (a warp per vocabulary row scanning the ids and
// summing its rows in registers, writing every row, so no memset): on the H200 at the seed's
// size (V 10⁴, C 768, 1024 tokens) that took 25.4 µs, where this kernel and the memset take
// 4.9 + 7.7; the scan's V·n/32 ballot rounds outweighed the memset it saved.
extern "C" __global__ void embedding_backward(Buf tokens, Buf dout, float* dwte, float* dwpe,
                                              i64 n, int c, int t, int pos_offset, float scale) {
    FOR_EACH(idx, n * c) {
        i64 i = idx / c;
        int j = (int)(idx % c);
        int tok = ld_i32(tokens, i);
        float g = ld(dout, idx);
        atomicAdd(&dwte[(i64)tok * c + j], g * scale);
        if (dwpe) {
            int p = (int)(i % t) + pos_offset;
            atomicAdd(&dwpe[(i64)p * c + j], g);
        }
    }
}
