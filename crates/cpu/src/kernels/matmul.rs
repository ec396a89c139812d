//! Matmul through the `gemm` crate (packed, SIMD, multithreaded), with the bias and the fused
//! activation applied as epilogues over rows in parallel.

use super::{gemm_parallelism, strided_gemm};
use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::ops::activation::{act_derivative, act_forward};
use tperf_core::ops::matmul::{Matmul, MatmulBackwardIo, MatmulIo};

/// pre = x·Wᵀ + b, and act = act(pre) when an activation is fused. Shapes as the reference.
pub fn forward(
    mm: &Matmul,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    pre: &mut [f32],
    act: Option<&mut [f32]>,
) {
    let (m, k, n) = (mm.m, mm.k, mm.n);
    if let Some(b) = bias {
        pre.par_chunks_mut(n).for_each(|row| row.copy_from_slice(b));
    }
    // SAFETY: pre is m×n row-major (column stride 1, row stride n); x is m×k; Wᵀ is read from
    // W (n×k) as a k×n matrix with row stride 1 and column stride k. Lengths are checked by the
    // caller against the descriptor.
    unsafe {
        strided_gemm(
            gemm_parallelism(),
            (m, n, k),
            pre.as_mut_ptr(),
            n,
            bias.is_some(),
            (x.as_ptr(), 1, k),
            (w.as_ptr(), k, 1),
            1.0,
        );
    }
    if let (Some(kind), Some(act)) = (mm.activation, act) {
        act.par_chunks_mut(n.max(1))
            .zip(pre.par_chunks(n.max(1)))
            .for_each(|(a, p)| {
                a.iter_mut()
                    .zip(p)
                    .for_each(|(a, &p)| *a = act_forward(kind, p))
            });
    }
}

/// dx = dpre·W (+ dx), dW = dpreᵀ·x, db = Σ dpre, with dpre = dy·act'(pre) when an activation
/// is fused (formed in `scratch`, which grows to m×n once and is then reused).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    mm: &Matmul,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    pre: Option<&[f32]>,
    dx: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    scratch: &mut Vec<f32>,
) {
    let (m, k, n) = (mm.m, mm.k, mm.n);
    let dpre: &[f32] = match (mm.activation, pre) {
        (Some(kind), Some(pre)) => {
            scratch.resize(m * n, 0.0);
            scratch[..m * n]
                .par_iter_mut()
                .zip(dy.par_iter().zip(pre))
                .for_each(|(d, (&g, &h))| *d = g * act_derivative(kind, h));
            &scratch[..m * n]
        }
        _ => dy,
    };
    // SAFETY: strides as in `forward`; dW reads dpreᵀ (n×m) from dpre (m×n) with row stride 1
    // and column stride n.
    unsafe {
        strided_gemm(
            gemm_parallelism(),
            (m, k, n),
            dx.as_mut_ptr(),
            k,
            mm.accumulate_dx,
            (dpre.as_ptr(), 1, n),
            (w.as_ptr(), 1, k),
            1.0,
        );
        strided_gemm(
            gemm_parallelism(),
            (n, k, m),
            dw.as_mut_ptr(),
            k,
            false,
            (dpre.as_ptr(), n, 1),
            (x.as_ptr(), 1, k),
            1.0,
        );
    }
    if let Some(db) = db {
        // Columns split across threads; each sums its columns down all rows.
        const COLS: usize = 64;
        db.par_chunks_mut(COLS).enumerate().for_each(|(c, out)| {
            let j0 = c * COLS;
            out.iter_mut().for_each(|v| *v = 0.0);
            for row in dpre.chunks(n) {
                for (o, &d) in out.iter_mut().zip(&row[j0..]) {
                    *o += d;
                }
            }
        });
    }
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, mm: &Matmul) -> Result<(), BackendError> {
    let io: MatmulIo = cx.call.operands(mm)?;
    let (x, w) = (&cx.f32(&io.x)?, &cx.f32(&io.w)?);
    cx.check_len("x", x.len(), mm.m * mm.k)?;
    cx.check_len("W", w.len(), mm.n * mm.k)?;
    let bias_data = cx.f32_opt(&io.bias)?;
    let bias = bias_data.as_deref();
    match &io.act {
        Some(act) => {
            let [y, act] = cx.outs.f32s([&io.y, act])?;
            forward(mm, x, w, bias, y, Some(act));
        }
        None => forward(mm, x, w, bias, cx.outs.f32(&io.y)?, None),
    }
    Ok(())
}

pub(crate) fn exec_backward(cx: &mut Exec<'_>, mm: &Matmul) -> Result<(), BackendError> {
    let io: MatmulBackwardIo = cx.call.operands(mm)?;
    let (x, w, dy) = (&cx.f32(&io.x)?, &cx.f32(&io.w)?, &cx.f32(&io.dy)?);
    let pre_data = cx.f32_opt(&io.pre)?;
    let pre = pre_data.as_deref();
    // dx_in is dx's own buffer (an accumulation): the kernel adds into the output.
    match &io.db {
        Some(db) => {
            let [dx, dw, db] = cx.outs.f32s([&io.dx, &io.dw, db])?;
            backward(mm, x, w, dy, pre, dx, dw, Some(db), cx.scratch);
        }
        None => {
            let [dx, dw] = cx.outs.f32s([&io.dx, &io.dw])?;
            backward(mm, x, w, dy, pre, dx, dw, None, cx.scratch);
        }
    }
    Ok(())
}
