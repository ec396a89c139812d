// GeGLU (ops/geglu.rs): y = gelu(g)·u with [g | u] the two halves of a row of h (rows, 2F); the
// backward writes both halves of dh. Elementwise, one thread per output element.

extern "C" __global__ void geglu_forward(Buf h, Buf y, i64 rows, i64 f) {
    FOR_EACH(i, rows * f) {
        i64 r = i / f, j = i % f;
        float g = ld(h, r * 2 * f + j), u = ld(h, r * 2 * f + f + j);
        st(y, i, act_fwd(ACT_GELU, g) * u);
    }
}

extern "C" __global__ void geglu_backward(Buf h, Buf dy, Buf dh, i64 rows, i64 f) {
    FOR_EACH(i, rows * f) {
        i64 r = i / f, j = i % f;
        float g = ld(h, r * 2 * f + j), u = ld(h, r * 2 * f + f + j), d = ld(dy, i);
        st(dh, r * 2 * f + j, d * u * act_grad(ACT_GELU, g));
        st(dh, r * 2 * f + f + j, d * act_fwd(ACT_GELU, g));
    }
}
