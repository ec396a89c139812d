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

        for (stream, (param, fill)) in fills.into_iter().enumerate() {
            let n = param.numel() as usize;
            let values = match fill {
                Fill::Normal(std) => Rng::for_stream(seed, stream as u64).normal_vec(n, std),
                Fill::Const(c) => vec![c; n],
            };
            be.write_f32(&param.master, &values)?;
            if let Some(copy) = &param.copy {
                be.write_f32(copy, &values)?;
            }
            let zeros = vec![0.0; n];
            for moment in [&param.m, &param.v].into_iter().flatten() {
                be.write_f32(moment, &zeros)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Fill {
    Normal(f64),
    Const(f32),
}
