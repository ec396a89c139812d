//! GPT-2-style weight initialisation through the Backend: every matrix and embedding table from
//! normal(0, 0.02), the projections that write into the residual stream (attention output, MLP
//! down) scaled by 1/√(2L) so that the stream's variance does not grow with depth (GPT-2 §2.3),
//! norm gains 1, biases 0, and AdamW's moments 0.

use super::{Param, Transformer};
use crate::backend::{Backend, BackendError};
use crate::rng::Rng;

const STD: f64 = 0.02;

impl Transformer {
    /// Writes initial values into every parameter (and its low-precision copy, and zeroes its
    /// AdamW moments when training). Each tensor draws from its own stream of `seed`, so a change
    /// in one shape leaves the others' values as they were.
    pub fn init_weights(&self, be: &mut impl Backend, seed: u64) -> Result<(), BackendError> {
        let w = &self.weights;
        let residual_std = STD / (2.0 * self.cfg.n_layers as f64).sqrt();
        let mut fills: Vec<(&Param, Fill)> = vec![(&w.token_embedding, Fill::Normal(STD))];
        fills.extend(w.position_embedding.iter().map(|p| (p, Fill::Normal(STD))));
        for l in &w.layers {
            for norm in [&l.attn_norm, &l.mlp_norm] {
                fills.push((&norm.gain, Fill::Const(1.0)));
                fills.extend(norm.bias.iter().map(|p| (p, Fill::Const(0.0))));
            }
            fills.push((&l.qkv, Fill::Normal(STD)));
            fills.push((&l.attn_out, Fill::Normal(residual_std)));
            fills.push((&l.mlp_in, Fill::Normal(STD)));
            fills.push((&l.mlp_out, Fill::Normal(residual_std)));
            for bias in [
                &l.qkv_bias,
                &l.attn_out_bias,
                &l.mlp_in_bias,
                &l.mlp_out_bias,
            ] {
                fills.extend(bias.iter().map(|p| (p, Fill::Const(0.0))));
            }
        }
        if let Some(norm) = &w.final_norm {
            fills.push((&norm.gain, Fill::Const(1.0)));
            fills.extend(norm.bias.iter().map(|p| (p, Fill::Const(0.0))));
        }
        fills.extend(w.lm_head.iter().map(|p| (p, Fill::Normal(STD))));
        fills.extend(w.lm_head_bias.iter().map(|p| (p, Fill::Const(0.0))));
        debug_assert_eq!(
            fills.len(),
            w.all_params().len(),
            "every parameter is initialised once"
        );

        // AdamW's moments need no write: a backend's fresh tensors are zero (Backend::alloc).
        for (stream, (param, fill)) in fills.into_iter().enumerate() {
            let n = param.numel() as usize;
            let values = match fill {
                Fill::Normal(std) => normal_values(seed, stream as u64, n, std),
                Fill::Const(c) => vec![c; n],
            };
            be.write_f32(&param.master, &values)?;
            if let Some(copy) = &param.copy {
                be.write_f32(copy, &values)?;
            }
        }
        Ok(())
    }
}

/// Values drawn per block of [`BLOCK`] elements, each block from its own stream, so that blocks
/// are drawn on all cores at once and the values do not depend on the number of cores. (A
/// 1.5B-parameter model is 1.5 billion Box–Muller draws: about 30 s on one core.)
const BLOCK: usize = 1 << 16;

fn normal_values(seed: u64, stream: u64, n: usize, std: f64) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let blocks: Vec<(usize, &mut [f32])> = out.chunks_mut(BLOCK).enumerate().collect();
    let per_thread = blocks.len().div_ceil(threads).max(1);
    let mut groups: Vec<Vec<(usize, &mut [f32])>> = Vec::new();
    let mut it = blocks.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per_thread).collect());
    }
    std::thread::scope(|s| {
        for group in groups {
            s.spawn(move || {
                for (b, block) in group {
                    let mut rng = Rng::for_stream(seed ^ stream.rotate_left(32), b as u64);
                    for x in block.iter_mut() {
                        *x = (rng.normal() * std) as f32;
                    }
                }
            });
        }
    });
    out
}

#[derive(Clone, Copy)]
enum Fill {
    Normal(f64),
    Const(f32),
}
