//! The global gradient norm's inner reduction.
//!
//! A plain `iter().sum()` over f32 is one long chain of dependent adds: the compiler may not
//! reassociate floating-point addition, so it neither vectorises nor overlaps them, and each add
//! waits out the previous one's latency (about 4 cycles) — about 1 GB/s per core, a fifth of
//! the memory bandwidth this op should run at. Sixteen independent partial sums (two AVX
//! registers' worth) break the chain: the compiler turns them into vector FMAs and the loop
//! becomes bandwidth-bound, as the roofline says it is.

use crate::exec::Exec;
use rayon::prelude::*;
use tperf_core::backend::BackendError;
use tperf_core::comm::shard_range;
use tperf_core::ops::grad_norm::{GradNorm, GradNormIo};

/// Σ x², summed in 16 f32 lanes and combined in f64 (a chunk is at most a few tens of
/// thousands of elements, so each lane adds up only a few thousand terms).
pub fn sum_of_squares(x: &[f32]) -> f64 {
    let mut lanes = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (acc, &v) in lanes.iter_mut().zip(c) {
            *acc += v * v;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v * v)).sum();
    lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + tail
}

/// The op's dispatch: ‖g‖ over every gradient tensor, summed in f64 (under ZeRO-1, Σg² over
/// this rank's shard of each, for the all-reduce that follows to add).
pub(crate) fn exec(cx: &mut Exec<'_>, g: &GradNorm) -> Result<(), BackendError> {
    let io: GradNormIo = cx.call.operands(g)?;
    let rank = super::collective::shard_rank(cx, g.shards)?;
    let grads = io
        .grads
        .iter()
        .map(|t| cx.f32(t))
        .collect::<Result<Vec<_>, BackendError>>()?;
    let sum: f64 = grads
        .par_iter()
        .map(|all| {
            let own = &all[shard_range(all.len(), rank, g.shards)];
            own.par_chunks(1 << 14).map(sum_of_squares).sum::<f64>()
        })
        .sum();
    cx.check_len("norm", io.norm.numel() as usize, 1)?;
    cx.outs.f32(&io.norm)?[0] = g.finish(sum) as f32;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_f64_sum_on_edge_lengths() {
        for n in [0usize, 1, 15, 16, 17, 1000, 16_384] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let want: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let got = sum_of_squares(&x);
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "n={n}: {got} vs {want}"
            );
        }
    }
}
