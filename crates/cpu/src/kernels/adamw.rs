//! AdamW over one parameter tensor in parallel chunks, optionally writing the rounded
//! low-precision copy in the same pass (the fused schedule's form).

use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::comm::shard_range;
use tperf_core::dtype::DType;
use tperf_core::ops::adamw::{AdamW, AdamWIo, AdamWParams};
use tperf_core::ops::cast::round_to;
use tperf_core::tensor::Tensor;

const CHUNK: usize = 1 << 14;

#[allow(clippy::too_many_arguments)]
pub fn update(
    p: &AdamWParams,
    decay: bool,
    clip: f32,
    theta: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    copy: Option<(&mut [f32], DType)>,
) {
    let t = p.step.max(1) as i32;
    let (b1, b2) = (p.beta1 as f32, p.beta2 as f32);
    let c1 = (1.0 - p.beta1.powi(t)) as f32;
    let c2 = (1.0 - p.beta2.powi(t)) as f32;
    let (lr, eps) = (p.lr as f32, p.eps as f32);
    let wd = if decay { p.weight_decay as f32 } else { 0.0 };
    theta
        .par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .zip(g.par_chunks(CHUNK))
        .for_each(|((theta, (m, v)), g)| {
            for i in 0..theta.len() {
                let gi = g[i] * clip;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                theta[i] -= lr * ((m[i] / c1) / ((v[i] / c2).sqrt() + eps) + wd * theta[i]);
            }
        });
    if let Some((copy, dtype)) = copy {
        copy.par_iter_mut()
            .zip(theta.par_iter())
            .for_each(|(c, &t)| *c = round_to(dtype, t));
    }
}

/// The op's dispatch: one AdamW step over a group of parameters (under ZeRO-1, over this
/// rank's shard of each θ, g and copy, with m and v the shard).
pub(crate) fn exec(cx: &mut Exec<'_>, adam: &AdamW) -> Result<(), BackendError> {
    let io: AdamWIo = cx.call.operands(adam)?;
    let rank = super::collective::shard_rank(cx, adam.shards)?;
    let norm = &cx.f32(&io.norm)?;
    cx.check_len("norm", norm.len(), 1)?;
    // clip(‖g‖/S)/S: unscales the loss-scaled gradients and clips them in one factor (1/S is
    // exact for a power-of-two S, so this is (g/S)·clip). None: a non-finite norm under loss
    // scaling means an fp16 gradient overflowed, and the step leaves θ, m, v and the copies as
    // they are.
    let Some(factor) = adam.grad_factor(f64::from(norm[0])) else {
        return Ok(());
    };
    let clip = factor as f32;
    for i in 0..io.theta.len() {
        let n = io.theta[i].numel() as usize;
        let shard = shard_range(n, rank, adam.shards);
        let own = shard.len();
        let g = &cx.f32(&io.grads[i])?[shard.clone()];
        // Weight decay applies to matrices, not to gains, biases or other vectors.
        let decay = io.theta[i].shape.len() == 2;
        let moments = |m: &Tensor| {
            if (m.numel() as usize) < own {
                Err(cx.invalid(format!(
                    "a moment of {} elements for a shard of {own}",
                    m.numel()
                )))
            } else {
                Ok(0..own)
            }
        };
        let (mr, vr) = (moments(&io.m[i])?, moments(&io.v[i])?);
        match io.copies.get(i) {
            Some(copy) => {
                let [theta, m, v, c] = cx.outs.f32s([&io.theta[i], &io.m[i], &io.v[i], copy])?;
                update(
                    &adam.hyper,
                    decay,
                    clip,
                    &mut theta[shard.clone()],
                    g,
                    &mut m[mr],
                    &mut v[vr],
                    Some((&mut c[shard], copy.dtype)),
                );
            }
            None => {
                let [theta, m, v] = cx.outs.f32s([&io.theta[i], &io.m[i], &io.v[i]])?;
                update(
                    &adam.hyper,
                    decay,
                    clip,
                    &mut theta[shard],
                    g,
                    &mut m[mr],
                    &mut v[vr],
                    None,
                );
            }
        }
    }
    Ok(())
}
