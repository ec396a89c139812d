//! Cross-entropy over rows in parallel; the backward works in place over a copy of the logits
//! (or over the logits themselves when the schedule fuses it).

use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::ops::cross_entropy::{CrossEntropy, CrossEntropyBackwardIo, CrossEntropyIo};

fn logsumexp(z: &[f32]) -> f32 {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    max + z.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

pub fn forward(ce: &CrossEntropy, z: &[f32], targets: &[i32], losses: &mut [f32]) {
    losses
        .par_iter_mut()
        .zip(z.par_chunks(ce.v))
        .zip(targets.par_iter())
        .for_each(|((l, row), &t)| *l = logsumexp(row) - row[t as usize]);
}

/// Overwrites each row of `z` (the logits) with S·(softmax − onehot)/n, S = `ce.grad_scale`.
pub fn backward_in_place(ce: &CrossEntropy, z: &mut [f32], targets: &[i32]) {
    // S/n in f64, rounded once: for S = 1 it is the correctly rounded 1/n, as 1.0 / n as f32 is
    // (n < 2²⁴ is exact in f32, and f64 → f32 double rounding of a quotient is innocuous), and a
    // power-of-two S scales it exactly.
    let scale = (ce.grad_scale / ce.n as f64) as f32;
    z.par_chunks_mut(ce.v)
        .zip(targets.par_iter())
        .for_each(|(row, &t)| {
            let lse = logsumexp(row);
            for x in row.iter_mut() {
                *x = (*x - lse).exp() * scale;
            }
            row[t as usize] -= scale;
        });
}

/// The op's dispatch: named operands in, kernel out.
pub(crate) fn exec(cx: &mut Exec<'_>, ce: &CrossEntropy) -> Result<(), BackendError> {
    let io: CrossEntropyIo = cx.call.operands(ce)?;
    let targets = cx.i32(&io.targets)?;
    cx.check_ids(targets, ce.v, "target")?;
    forward(ce, &cx.f32(&io.logits)?, targets, cx.outs.f32(&io.losses)?);
    Ok(())
}

pub(crate) fn exec_backward(cx: &mut Exec<'_>, ce: &CrossEntropy) -> Result<(), BackendError> {
    let io: CrossEntropyBackwardIo = cx.call.operands(ce)?;
    let targets = cx.i32(&io.targets)?;
    cx.check_ids(targets, ce.v, "target")?;
    // In place when dlogits is the logits' buffer (then the logits are not readable as an input).
    let logits = if io.logits.id != io.dlogits.id {
        Some(&cx.f32(&io.logits)?)
    } else {
        None
    };
    let dz = cx.outs.f32(&io.dlogits)?;
    if let Some(z) = logits {
        dz.copy_from_slice(z);
    }
    backward_in_place(ce, dz, targets);
    Ok(())
}
