// Pointwise activations (tperf_core::ops::activation), forward and backward; the `kind` codes
// and act/act' are common.cuh's, shared with the gated MLPs (gated.cu).

extern "C" __global__ void activation_forward(Buf x, Buf y, i64 n, int kind) {
    PDL_ENTRY();
    FOR_EACH(i, n) st(y, i, act_fwd(kind, ld(x, i)));
}

// dx = dy·act'(x)
extern "C" __global__ void activation_backward(Buf x, Buf dy, Buf dx, i64 n, int kind) {
    FOR_EACH(i, n) st(dx, i, ld(dy, i) * act_grad(kind, ld(x, i)));
}
