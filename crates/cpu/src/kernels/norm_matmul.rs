//! The pre-norm and its product as one op: the norm's rows into a temporary, rounded to the
//! activations' dtype as the unfused norm's output is when it is stored, then the product. So
//! the fused op gives the two ops' results bit for bit; on the CPU the fusion saves nothing but
//! the temporary's trip through the tensor store (the GPU's saving is a kernel launch).

use super::{layernorm, matmul, rmsnorm};
use crate::exec::Exec;
use tperf_core::backend::BackendError;
use tperf_core::ops::cast::round_to;
use tperf_core::ops::norm_matmul::{NormMatmul, NormMatmulIo, PreNorm};

/// The op's dispatch: named operands in, kernels out.
pub(crate) fn exec(cx: &mut Exec<'_>, op: &NormMatmul) -> Result<(), BackendError> {
    let io: NormMatmulIo = cx.call.operands(op)?;
    let (rows, c) = (op.rows(), op.width());
    let (x, gamma) = (&cx.f32(&io.x)?, &cx.f32(&io.gamma)?);
    let (add_data, beta_data) = (cx.f32_opt(&io.add)?, cx.f32_opt(&io.beta)?);
    let (add, beta) = (add_data.as_deref(), beta_data.as_deref());
    cx.check_len("x", x.len(), rows * c)?;
    let mut normed = vec![0.0f32; rows * c];
    let mut stats = vec![0.0f32; 2 * rows];
    match (op.norm, add, &io.sum) {
        (PreNorm::Layer(ln), Some(add), Some(sum)) => {
            let sum = cx.outs.f32(sum)?;
            layernorm::residual_forward(&ln, x, add, gamma, beta, sum, &mut normed, &mut stats);
        }
        (PreNorm::Layer(ln), _, _) => {
            layernorm::forward(&ln, x, gamma, beta, &mut normed, &mut stats)
        }
        (PreNorm::Rms(rn), Some(add), Some(sum)) => {
            let sum = cx.outs.f32(sum)?;
            let stats = &mut stats[..rows];
            rmsnorm::residual_forward(&rn, x, add, gamma, sum, &mut normed, stats);
        }
        (PreNorm::Rms(rn), _, _) => {
            rmsnorm::forward(&rn, x, gamma, &mut normed, &mut stats[..rows])
        }
    }
    let stored = io.y.dtype;
    normed.iter_mut().for_each(|v| *v = round_to(stored, *v));
    let w = &cx.f32(&io.w)?;
    cx.check_len("W", w.len(), op.mm.n * c)?;
    let bias_data = cx.f32_opt(&io.bias)?;
    let bias = bias_data.as_deref();
    match &io.act {
        Some(act) => {
            let [y, act] = cx.outs.f32s([&io.y, act])?;
            matmul::forward(&op.mm, &normed, w, bias, y, Some(act));
        }
        None => matmul::forward(&op.mm, &normed, w, bias, cx.outs.f32(&io.y)?, None),
    }
    Ok(())
}
