//! The model's parameters as the schedule allocates them, with their gradients and AdamW state
//! when training. Shapes follow nn.Linear: a weight is (out_features, in_features).

use super::options::Precision;
use crate::backend::{Backend, BackendError};
use crate::config::{ModelConfig, Norm, Positions};
use crate::dtype::DType;
use crate::tensor::{MemCategory, Tensor, TensorSpec};

/// One parameter tensor and everything that goes with it.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    /// The weight of record: fp32 when training, the compute dtype for inference.
    pub master: Tensor,
    /// The low-precision copy the forward and backward read, under a mixed training policy.
    pub copy: Option<Tensor>,
    pub grad: Option<Tensor>,
    /// AdamW's first and second moments.
    pub m: Option<Tensor>,
    pub v: Option<Tensor>,
    /// The f32 sum of the micro-steps' gradients under gradient accumulation (K > 1).
    pub acc: Option<Tensor>,
}

impl Param {
    /// The tensor the forward and backward read.
    pub fn w(&self) -> &Tensor {
        self.copy.as_ref().unwrap_or(&self.master)
    }

    pub fn numel(&self) -> u64 {
        self.master.numel()
    }

    pub fn grad(&self) -> &Tensor {
        self.grad
            .as_ref()
            .expect("gradients are allocated for training schedules only")
    }
}

#[derive(Clone, Debug)]
pub struct NormParams {
    pub gain: Param,
    pub bias: Option<Param>,
}

#[derive(Clone, Debug)]
pub struct LayerParams {
    pub attn_norm: NormParams,
    /// (H + 2H_kv)D × C
    pub qkv: Param,
    pub qkv_bias: Option<Param>,
    /// C × HD
    pub attn_out: Param,
    pub attn_out_bias: Option<Param>,
    pub mlp_norm: NormParams,
    /// F × C, or 2F × C for SwiGLU (gate rows first, then up)
    pub mlp_in: Param,
    pub mlp_in_bias: Option<Param>,
    /// C × F
    pub mlp_out: Param,
    pub mlp_out_bias: Option<Param>,
}

#[derive(Clone, Debug)]
pub struct Weights {
    /// V × C
    pub token_embedding: Param,
    /// T_max × C, learned positions only
    pub position_embedding: Option<Param>,
    pub layers: Vec<LayerParams>,
    pub final_norm: Option<NormParams>,
    /// V × C; None when tied to the token embedding
    pub lm_head: Option<Param>,
    pub lm_head_bias: Option<Param>,
}

impl LayerParams {
    pub fn params(&self) -> Vec<&Param> {
        let mut out = vec![&self.attn_norm.gain];
        out.extend(self.attn_norm.bias.as_ref());
        out.push(&self.qkv);
        out.extend(self.qkv_bias.as_ref());
        out.push(&self.attn_out);
        out.extend(self.attn_out_bias.as_ref());
        out.push(&self.mlp_norm.gain);
        out.extend(self.mlp_norm.bias.as_ref());
        out.push(&self.mlp_in);
        out.extend(self.mlp_in_bias.as_ref());
        out.push(&self.mlp_out);
        out.extend(self.mlp_out_bias.as_ref());
        out
    }
}

impl Weights {
    /// Parameters outside the blocks (embeddings, final norm, output layer).
    pub fn outer_params(&self) -> Vec<&Param> {
        let mut out = vec![&self.token_embedding];
        out.extend(self.position_embedding.as_ref());
        if let Some(n) = &self.final_norm {
            out.push(&n.gain);
            out.extend(n.bias.as_ref());
        }
        out.extend(self.lm_head.as_ref());
        out.extend(self.lm_head_bias.as_ref());
        out
    }

    pub fn all_params(&self) -> Vec<&Param> {
        let mut out = self.outer_params();
        for l in &self.layers {
            out.extend(l.params());
        }
        out
    }

    /// The output layer's weight: its own, or the token embedding when tied.
    pub fn lm_head_weight(&self) -> &Param {
        self.lm_head.as_ref().unwrap_or(&self.token_embedding)
    }

    /// `moment_shards` > 1 allocates AdamW's moments as one rank's 1/W shard of each
    /// parameter (ZeRO-1), flat; `accumulate` a gradient accumulator per parameter.
    pub(crate) fn allocate(
        be: &mut impl Backend,
        cfg: &ModelConfig,
        precision: Precision,
        training: bool,
        (moment_shards, accumulate): (usize, bool),
    ) -> Result<Weights, BackendError> {
        let mut alloc = Allocator {
            be,
            precision,
            training,
            moment_shards,
            accumulate,
        };
        let (c, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
        let token_embedding = alloc.param("wte", &[v, c])?;
        let position_embedding = match cfg.positions {
            Positions::Learned => Some(alloc.param("wpe", &[cfg.context, c])?),
            Positions::Rope { .. } | Positions::Sinusoidal => None,
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = |s: &str| format!("h{l}.{s}");
            layers.push(LayerParams {
                attn_norm: alloc.norm(cfg, &p("ln_1"))?,
                qkv: alloc.param(&p("attn.qkv.w"), &[cfg.qkv_dim(), c])?,
                qkv_bias: alloc.maybe(cfg.biases.qkv, &p("attn.qkv.b"), &[cfg.qkv_dim()])?,
                attn_out: alloc.param(&p("attn.proj.w"), &[c, cfg.attn_dim()])?,
                attn_out_bias: alloc.maybe(cfg.biases.attn_out, &p("attn.proj.b"), &[c])?,
                mlp_norm: alloc.norm(cfg, &p("ln_2"))?,
                mlp_in: alloc.param(&p("mlp.fc.w"), &[cfg.mlp_in_dim(), c])?,
                mlp_in_bias: alloc.maybe(cfg.biases.mlp, &p("mlp.fc.b"), &[cfg.mlp_in_dim()])?,
                mlp_out: alloc.param(&p("mlp.proj.w"), &[c, f])?,
                mlp_out_bias: alloc.maybe(cfg.biases.mlp, &p("mlp.proj.b"), &[c])?,
            });
        }
        let final_norm = if cfg.final_norm {
            Some(alloc.norm(cfg, "ln_f")?)
        } else {
            None
        };
        let lm_head = if cfg.tied_embeddings {
            None
        } else {
            Some(alloc.param("lm_head.w", &[v, c])?)
        };
        let lm_head_bias = alloc.maybe(cfg.biases.lm_head, "lm_head.b", &[v])?;
        Ok(Weights {
            token_embedding,
            position_embedding,
            layers,
            final_norm,
            lm_head,
            lm_head_bias,
        })
    }

    pub(crate) fn free(self, be: &mut impl Backend) {
        let params: Vec<Param> = self.all_params().into_iter().cloned().collect();
        for p in params {
            for t in [Some(p.master), p.copy, p.grad, p.m, p.v, p.acc]
                .into_iter()
                .flatten()
            {
                be.free(t);
            }
        }
    }
}

struct Allocator<'a, B: Backend> {
    be: &'a mut B,
    precision: Precision,
    training: bool,
    moment_shards: usize,
    accumulate: bool,
}

impl<B: Backend> Allocator<'_, B> {
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<Param, BackendError> {
        let compute = self.precision.compute_dtype();
        let master_dtype = if self.training { DType::F32 } else { compute };
        let spec = |suffix: &str, dtype, category| {
            TensorSpec::new(format!("{name}{suffix}"), shape, dtype, category)
        };
        let numel: usize = shape.iter().product();
        let moment_shape = [numel.div_ceil(self.moment_shards.max(1))];
        let moment = |suffix: &str| {
            let shape = if self.moment_shards > 1 {
                &moment_shape[..]
            } else {
                shape
            };
            TensorSpec::new(
                format!("{name}{suffix}"),
                shape,
                DType::F32,
                MemCategory::OptimizerState,
            )
        };
        let master = self
            .be
            .alloc(spec("", master_dtype, MemCategory::Weights))?;
        let copy = if self.training && self.precision.is_mixed() {
            Some(
                self.be
                    .alloc(spec(".copy", compute, MemCategory::Weights))?,
            )
        } else {
            None
        };
        let (grad, m, v) = if self.training {
            (
                Some(
                    self.be
                        .alloc(spec(".grad", DType::F32, MemCategory::Gradients))?,
                ),
                Some(self.be.alloc(moment(".adam_m"))?),
                Some(self.be.alloc(moment(".adam_v"))?),
            )
        } else {
            (None, None, None)
        };
        let acc = if self.training && self.accumulate {
            Some(
                self.be
                    .alloc(spec(".grad_acc", DType::F32, MemCategory::Gradients))?,
            )
        } else {
            None
        };
        Ok(Param {
            name: name.to_string(),
            master,
            copy,
            grad,
            m,
            v,
            acc,
        })
    }

    fn maybe(
        &mut self,
        on: bool,
        name: &str,
        shape: &[usize],
    ) -> Result<Option<Param>, BackendError> {
        if on {
            self.param(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    fn norm(&mut self, cfg: &ModelConfig, name: &str) -> Result<NormParams, BackendError> {
        let c = cfg.d_model;
        Ok(NormParams {
            gain: self.param(&format!("{name}.w"), &[c])?,
            bias: self.maybe(
                cfg.norm == Norm::LayerNorm && cfg.biases.norm,
                &format!("{name}.b"),
                &[c],
            )?,
        })
    }
}
