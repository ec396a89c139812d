//! The backward pass and the optimizer step, written against the same Backend as the forward.
//! Activation gradients are allocated as they are needed and freed as soon as they are used, and
//! the forward's saved tensors are freed once the backward has read them for the last time, so
//! the Meta record's memory timeline falls through the backward as a real run's does.

use super::{act_kind, Emit, ForwardState, Keep, Kv, NormOut, Param, Saved, Transformer};
use crate::backend::{Backend, BackendError};
use crate::dtype::DType;
use crate::ops::activation::{Activation, ActivationBackwardIo};
use crate::ops::adamw::{AdamW, AdamWIo, AdamWParams};
use crate::ops::cast::{Cast, CastIo};
use crate::ops::cross_entropy::CrossEntropyBackwardIo;
use crate::ops::embedding::EmbeddingBackwardIo;
use crate::ops::geglu::{GeGlu, GeGluBackwardIo};
use crate::ops::grad_norm::{GradNorm, GradNormIo};
use crate::ops::layernorm::LayerNormBackwardIo;
use crate::ops::matmul::{Matmul, MatmulBackwardIo};
use crate::ops::rmsnorm::RmsNormBackwardIo;
use crate::ops::rope::RopeIo;
use crate::ops::swiglu::{SwiGlu, SwiGluBackwardIo};
use crate::ops::{Op, Phase};
use crate::schedule::{AttentionKernel, NormParams, Recompute};
use crate::tensor::{MemCategory, Tensor};

impl Transformer {
    /// The backward pass of a training forward: weight gradients into each parameter's grad
    /// buffer (overwritten, not accumulated). Consumes the state and returns the per-token
    /// losses for the caller to read and free. A model built with gradient accumulation
    /// (K > 1) is refused: its last micro-step adds an accumulator that only the earlier
    /// micro-steps fill, so one backward alone would add garbage; run
    /// [`Transformer::train_step_micro`] or [`Transformer::backward_micro`] for each micro-step.
    pub fn backward(
        &self,
        be: &mut impl Backend,
        state: ForwardState,
    ) -> Result<Tensor, BackendError> {
        let k = self.opts.micro_steps();
        if k > 1 {
            self.free_state(be, state);
            return Err(BackendError::InvalidInput {
                op: "backward",
                label: "grad_accum",
                backend: "schedule",
                why: format!(
                    "this model accumulates gradients over {k} micro-steps; call backward_micro \
                     for micro-steps 0..{k} (or train_step_micro), not backward once"
                ),
            });
        }
        self.backward_micro(be, state, 0)
    }

    /// The backward of micro-step `micro` (0-based) of K = `opts.grad_accum`: as
    /// [`Transformer::backward`], and each completed gradient is copied into its accumulator
    /// (the first), added into it (the middle ones), or has the accumulator added into it (the
    /// last, whose buckets the collectives then reduce).
    pub fn backward_micro(
        &self,
        be: &mut impl Backend,
        state: ForwardState,
        micro: usize,
    ) -> Result<Tensor, BackendError> {
        debug_assert!(state.training, "backward needs a training forward");
        let ForwardState {
            b,
            t,
            tokens,
            targets,
            losses,
            logits,
            layers,
            final_norm,
            head_input,
            ..
        } = state;
        let n = b * t;
        let (c, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let mut e = Emit::new(be, Phase::Backward);
        e.streams.buckets = self.grad_buckets(micro);
        let targets = targets.expect("training forwards carry targets");

        // Loss: dlogits = S·(softmax − onehot)/n, written over the logits when fused. S is the
        // policy's loss scale (FP16_LOSS_SCALE under fp16, else 1): every gradient below carries
        // it, and the optimizer step divides it out.
        let dlogits = if self.opts.fused {
            logits.clone()
        } else {
            e.alloc(
                "d.logits",
                &[n, v],
                self.act_dtype(),
                MemCategory::ActivationGradients,
            )?
        };
        let ce = self.cross_entropy(n);
        let io = CrossEntropyBackwardIo {
            logits: logits.clone(),
            targets: targets.clone(),
            dlogits: dlogits.clone(),
        };
        e.run(ce, Op::CrossEntropyBackward, io, "loss")?;
        if !self.opts.fused {
            e.be.free(logits);
        }
        let dhead = e.alloc(
            "d.head_in",
            &[n, c],
            self.act_dtype(),
            MemCategory::ActivationGradients,
        )?;
        let w = &self.weights;
        self.linear_backward(
            &mut e,
            &head_input,
            w.lm_head_weight(),
            w.lm_head_bias.as_ref(),
            &dlogits,
            None,
            &dhead,
            false,
            "lm_head",
        )?;
        e.be.free(dlogits);

        let mut dres = match (final_norm, &w.final_norm) {
            (
                Some(NormOut {
                    stream,
                    normed,
                    stats,
                }),
                Some(params),
            ) => {
                let dres = e.alloc(
                    "d.stream",
                    &[n, c],
                    self.act_dtype(),
                    MemCategory::ActivationGradients,
                )?;
                self.norm_backward(
                    &mut e,
                    &stream,
                    &stats,
                    params,
                    &dhead,
                    &dres,
                    false,
                    "final_norm",
                )?;
                for x in [dhead, normed, stats, stream] {
                    e.be.free(x);
                }
                dres
            }
            _ => {
                // No final norm: the output layer read the stream itself.
                e.be.free(head_input);
                dhead
            }
        };

        for (l, saved) in layers.into_iter().enumerate().rev() {
            e.layer = Some(l);
            dres = self.block_backward(&mut e, l, saved, dres, b, t)?;
        }
        e.layer = None;

        let io = EmbeddingBackwardIo {
            tokens: tokens.clone(),
            dx: dres.clone(),
            dwte: w.token_embedding.grad().clone(),
            dwpe: w.position_embedding.as_ref().map(|p| p.grad().clone()),
        };
        let op = self.embedding_op(b, t, 0);
        e.run(op, Op::EmbeddingBackward, io, "embedding")?;
        e.grads_done(std::iter::once(&w.token_embedding).chain(&w.position_embedding))?;
        e.flush_grads()?;
        for x in [dres, tokens, targets] {
            e.be.free(x);
        }
        Ok(losses.expect("training forwards compute the loss"))
    }

    /// Linear backward: dx = dy·W (added into dx when `accumulate`), dW = dyᵀ·x, db = Σ dy.
    /// With a fused activation, dy is the gradient of act(h) and h is read to apply act'(h).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        x: &Tensor,
        w: &Param,
        bias: Option<&Param>,
        dy: &Tensor,
        fused_pre_activation: Option<&Tensor>,
        dx: &Tensor,
        accumulate: bool,
        label: &'static str,
    ) -> Result<(), BackendError> {
        let mut mm = Matmul::new(x.shape[0], x.shape[1], w.master.shape[0], bias.is_some());
        mm.activation = fused_pre_activation.and(act_kind(self.cfg.mlp));
        mm.accumulate_dx = accumulate;
        let io = MatmulBackwardIo {
            x: x.clone(),
            w: w.w().clone(),
            dy: dy.clone(),
            pre: fused_pre_activation.cloned(),
            dx_in: accumulate.then(|| dx.clone()),
            dx: dx.clone(),
            dw: w.grad().clone(),
            db: bias.map(|b| b.grad().clone()),
        };
        e.run(mm, Op::MatmulBackward, io, label)?;
        e.grads_done(std::iter::once(w).chain(bias))
    }

    /// Norm backward: dx (added into it when `accumulate`), dγ, dβ.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        x: &Tensor,
        stats: &Tensor,
        params: &NormParams,
        dy: &Tensor,
        dx: &Tensor,
        accumulate: bool,
        label: &'static str,
    ) -> Result<(), BackendError> {
        let dx_in = accumulate.then(|| dx.clone());
        match self.norm_op(x.shape[0], false, accumulate) {
            Op::LayerNorm(ln) => {
                let io = LayerNormBackwardIo {
                    x: x.clone(),
                    stats: stats.clone(),
                    gamma: params.gain.w().clone(),
                    dy: dy.clone(),
                    dx_in,
                    dx: dx.clone(),
                    dgamma: params.gain.grad().clone(),
                    dbeta: params.bias.as_ref().map(|b| b.grad().clone()),
                };
                e.run(ln, Op::LayerNormBackward, io, label)
            }
            Op::RmsNorm(rn) => {
                let io = RmsNormBackwardIo {
                    x: x.clone(),
                    rstd: stats.clone(),
                    gamma: params.gain.w().clone(),
                    dy: dy.clone(),
                    dx_in,
                    dx: dx.clone(),
                    dgamma: params.gain.grad().clone(),
                };
                e.run(rn, Op::RmsNormBackward, io, label)
            }
            _ => unreachable!("norm_op returns a norm"),
        }?;
        e.grads_done(std::iter::once(&params.gain).chain(params.bias.as_ref()))
    }

    fn take(slot: &mut Option<Tensor>, what: &str) -> Tensor {
        slot.take()
            .unwrap_or_else(|| panic!("the forward kept no {what}: schedule bug"))
    }

    /// One block's backward. `dres` is the gradient of the block's output stream; returns the
    /// gradient of its input stream.
    fn block_backward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        l: usize,
        saved: Saved,
        dres: Tensor,
        b: usize,
        t: usize,
    ) -> Result<Tensor, BackendError> {
        let cfg = &self.cfg;
        let p = &self.weights.layers[l];
        let n = b * t;
        let dt = self.act_dtype();
        let grad = |e: &mut Emit<'_, _>, name: &str, width: usize| {
            e.alloc(
                format!("h{l}.d_{name}"),
                &[n, width],
                dt,
                MemCategory::ActivationGradients,
            )
        };
        let mut s = if self.opts.recompute == Recompute::Full {
            self.recompute_block(e, l, saved, b, t)?
        } else {
            saved
        };
        let pre = self.pre_norm();

        // Post-norm: back through norm2 first. d_s2 becomes the MLP branch's output gradient
        // and, after the fc backward adds into it, the gradient of x2.
        let d_branch = if pre {
            dres
        } else {
            let ds2 = grad(e, "s2", cfg.d_model)?;
            let (s2, st2) = (Self::take(&mut s.s2, "s2"), Self::take(&mut s.st2, "st2"));
            self.norm_backward(e, &s2, &st2, &p.mlp_norm, &dres, &ds2, false, "mlp.norm")?;
            for x in [dres, s2, st2] {
                e.be.free(x);
            }
            ds2
        };

        // --- MLP ----------------------------------------------------------------------
        let h = Self::take(&mut s.h, "h");
        let g = match s.g.take() {
            Some(g) => g,
            None => {
                let g = e.alloc(
                    format!("h{l}.mlp_g"),
                    &[n, cfg.d_ff],
                    dt,
                    MemCategory::Activations,
                )?;
                e.phase = Phase::Recompute;
                self.mlp_activation(e, &h, &g)?;
                e.phase = Phase::Backward;
                g
            }
        };
        let dg = grad(e, "g", cfg.d_ff)?;
        self.linear_backward(
            e,
            &g,
            &p.mlp_out,
            p.mlp_out_bias.as_ref(),
            &d_branch,
            None,
            &dg,
            false,
            "mlp.proj",
        )?;
        e.be.free(g);
        let (mlp_in, mlp_in_grad, accumulate) = if pre {
            (
                Self::take(&mut s.n2, "n2"),
                grad(e, "n2", cfg.d_model)?,
                false,
            )
        } else {
            (Self::take(&mut s.x2, "x2"), d_branch.clone(), true)
        };
        let bias = p.mlp_in_bias.as_ref();
        match act_kind(cfg.mlp) {
            Some(_) if self.opts.fused => {
                self.linear_backward(
                    e,
                    &mlp_in,
                    &p.mlp_in,
                    bias,
                    &dg,
                    Some(&h),
                    &mlp_in_grad,
                    accumulate,
                    "mlp.fc",
                )?;
            }
            _ => {
                let dh = grad(e, "h", cfg.mlp_in_dim())?;
                self.activation_backward(e, &h, &dg, &dh)?;
                self.linear_backward(
                    e,
                    &mlp_in,
                    &p.mlp_in,
                    bias,
                    &dh,
                    None,
                    &mlp_in_grad,
                    accumulate,
                    "mlp.fc",
                )?;
                e.be.free(dh);
            }
        }
        for x in [dg, h, mlp_in] {
            e.be.free(x);
        }

        // Between the halves: pre-norm adds norm2's input gradient into the stream gradient;
        // post-norm goes back through norm1 into a fresh gradient of s1.
        let d_attn_branch = if pre {
            let (x2, st2) = (Self::take(&mut s.x2, "x2"), Self::take(&mut s.st2, "st2"));
            self.norm_backward(
                e,
                &x2,
                &st2,
                &p.mlp_norm,
                &mlp_in_grad,
                &d_branch,
                true,
                "mlp.norm",
            )?;
            for x in [mlp_in_grad, x2, st2] {
                e.be.free(x);
            }
            d_branch
        } else {
            let ds1 = grad(e, "s1", cfg.d_model)?;
            let (s1, st1) = (Self::take(&mut s.s1, "s1"), Self::take(&mut s.st1, "st1"));
            self.norm_backward(
                e,
                &s1,
                &st1,
                &p.attn_norm,
                &d_branch,
                &ds1,
                false,
                "attn.norm",
            )?;
            for x in [d_branch, s1, st1] {
                e.be.free(x);
            }
            ds1
        };

        // --- attention ----------------------------------------------------------------
        let attn = Self::take(&mut s.attn, "attn");
        let dattn = grad(e, "attn", cfg.attn_dim())?;
        self.linear_backward(
            e,
            &attn,
            &p.attn_out,
            p.attn_out_bias.as_ref(),
            &d_attn_branch,
            None,
            &dattn,
            false,
            "attn.proj",
        )?;
        let qkv = Self::take(&mut s.qkv, "qkv");
        let dqkv = grad(e, "qkv", cfg.qkv_dim())?;
        let saved = match self.opts.attention {
            AttentionKernel::Naive => s.probs.take(),
            AttentionKernel::Flash => Some(Self::take(&mut s.lse, "lse")),
        };
        self.attention_core(b, t, t, false, Some(l))
            .backward(e, &qkv, &attn, &dattn, saved, &dqkv)?;
        for x in [attn, dattn, qkv] {
            e.be.free(x);
        }
        if let crate::config::Positions::Rope { theta, scaling } = cfg.positions {
            let io = RopeIo {
                positions: None,
                qkv: dqkv.clone(),
            };
            e.run(
                self.rope_op(b, t, 0, theta, scaling),
                Op::RopeBackward,
                io,
                "attn.rope",
            )?;
        }
        let x = Self::take(&mut s.x, "x");
        let dres = if pre {
            let n1 = Self::take(&mut s.n1, "n1");
            let dn1 = grad(e, "n1", cfg.d_model)?;
            self.linear_backward(
                e,
                &n1,
                &p.qkv,
                p.qkv_bias.as_ref(),
                &dqkv,
                None,
                &dn1,
                false,
                "attn.qkv",
            )?;
            let st1 = Self::take(&mut s.st1, "st1");
            self.norm_backward(
                e,
                &x,
                &st1,
                &p.attn_norm,
                &dn1,
                &d_attn_branch,
                true,
                "attn.norm",
            )?;
            for t in [n1, dn1, st1] {
                e.be.free(t);
            }
            d_attn_branch
        } else {
            self.linear_backward(
                e,
                &x,
                &p.qkv,
                p.qkv_bias.as_ref(),
                &dqkv,
                None,
                &d_attn_branch,
                true,
                "attn.qkv",
            )?;
            d_attn_branch
        };
        e.be.free(dqkv);
        e.be.free(x);
        s.free_all(e.be); // nothing should remain; a leftover would be a schedule bug
        Ok(dres)
    }

    /// The standalone activation's backward: dh from h and dg.
    fn activation_backward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        h: &Tensor,
        dg: &Tensor,
        dh: &Tensor,
    ) -> Result<(), BackendError> {
        let n = h.shape[0];
        match act_kind(self.cfg.mlp) {
            Some(kind) => {
                let act = Activation {
                    numel: n * self.cfg.d_ff,
                    kind,
                };
                let io = ActivationBackwardIo {
                    x: h.clone(),
                    dy: dg.clone(),
                    dx: dh.clone(),
                };
                e.run(act, Op::ActivationBackward, io, "mlp.act")
            }
            None if self.cfg.mlp == crate::config::Mlp::GeGlu => {
                let op = GeGlu {
                    n,
                    f: self.cfg.d_ff,
                };
                let io = GeGluBackwardIo {
                    h: h.clone(),
                    dg: dg.clone(),
                    dh: dh.clone(),
                };
                e.run(op, Op::GeGluBackward, io, "mlp.act")
            }
            None => {
                let op = SwiGlu {
                    n,
                    f: self.cfg.d_ff,
                };
                let io = SwiGluBackwardIo {
                    h: h.clone(),
                    dg: dg.clone(),
                    dh: dh.clone(),
                };
                e.run(op, Op::SwiGluBackward, io, "mlp.act")
            }
        }
    }

    /// Full recomputation: re-run block `l`'s forward from its saved input, keeping everything.
    fn recompute_block(
        &self,
        e: &mut Emit<'_, impl Backend>,
        l: usize,
        mut saved: Saved,
        b: usize,
        t: usize,
    ) -> Result<Saved, BackendError> {
        let x = Self::take(&mut saved.x, "x");
        saved.free_all(e.be);
        e.phase = Phase::Recompute;
        let (mut again, next, pending) =
            self.block_forward(e, l, x, None, b, t, Keep::ALL, true, &Kv::Local)?;
        e.phase = Phase::Backward;
        // The block's outputs are not needed again (the backward already holds their
        // gradient); free those the saved set does not also hold.
        if !again.holds(&next) {
            e.be.free(next);
        }
        if let Some(y) = pending {
            e.be.free(y);
        }
        Ok(again)
    }

    // ---------------------------------------------------------------------------------------
    // Optimizer
    // ---------------------------------------------------------------------------------------

    /// Global gradient norm, then AdamW over each group of parameters (the tensors outside the
    /// blocks, then each block), refreshing the low-precision weight copies under a mixed
    /// policy (inside AdamW when fused, by a cast otherwise). The gradients carry the loss scale
    /// S of the backward: GradNorm measures them as they are, and AdamW (told S) unscales them and
    /// the norm, and under S > 1 skips the step when the norm is not finite (an fp16 overflow),
    /// so the masters, moments and copies keep their values; the unfused cast then rewrites the
    /// same copies.
    /// Fused, AdamW rewrites the low-precision copies itself; unfused, a cast does after it.
    pub fn optimizer_step(
        &self,
        be: &mut impl Backend,
        hyper: AdamWParams,
    ) -> Result<(), BackendError> {
        debug_assert!(self.training);
        let mut e = Emit::new(be, Phase::Optimizer);
        let w = &self.weights;
        let all = w.all_params();
        let numel = self.optimizer_numel(&all);
        let grads: Vec<Tensor> = all.iter().map(|p| p.grad().clone()).collect();
        let norm = e.alloc("grad_norm", &[1], DType::F32, MemCategory::Io)?;
        self.before_grad_norm(&mut e);
        let io = GradNormIo {
            grads,
            norm: norm.clone(),
        };
        let shards = self.optimizer_shards();
        e.run(GradNorm { numel, shards }, Op::GradNorm, io, "grad_norm")?;
        self.after_grad_norm(&mut e, &norm)?;
        let mut groups = vec![(None, w.outer_params())];
        groups.extend(
            w.layers
                .iter()
                .enumerate()
                .map(|(l, lp)| (Some(l), lp.params())),
        );
        for (layer, params) in groups {
            e.layer = layer;
            let numel = self.optimizer_numel(&params);
            let masters: Vec<Tensor> = params.iter().map(|p| p.master.clone()).collect();
            let copies: Vec<Tensor> = params.iter().filter_map(|p| p.copy.clone()).collect();
            let io = AdamWIo {
                norm: norm.clone(),
                theta: masters.clone(),
                grads: params.iter().map(|p| p.grad().clone()).collect(),
                m: params.iter().filter_map(|p| p.m.clone()).collect(),
                v: params.iter().filter_map(|p| p.v.clone()).collect(),
                copies: if self.opts.fused {
                    copies.clone()
                } else {
                    Vec::new()
                },
            };
            let adamw = AdamW {
                numel,
                hyper,
                // The gradients hold the sum of K micro-steps' means: AdamW divides K out with S.
                grad_scale: self.loss_scale() * self.opts.micro_steps() as f64,
                shards,
            };
            e.run(adamw, Op::AdamW, io, "adamw")?;
            if !self.opts.fused && !copies.is_empty() {
                let io = CastIo {
                    src: masters,
                    dst: copies,
                };
                e.run(Cast { numel }, Op::Cast, io, "cast")?;
            }
            self.after_adamw(&mut e, &params)?;
        }
        e.be.free(norm);
        Ok(())
    }

    /// One whole training step: forward, backward, optimizer. Returns the per-token losses.
    /// A model that accumulates gradients takes its K micro-batches through
    /// [`Transformer::train_step_micro`].
    pub fn train_step(
        &self,
        be: &mut impl Backend,
        tokens: Tensor,
        targets: Tensor,
        hyper: AdamWParams,
    ) -> Result<Tensor, BackendError> {
        let mut losses = self.train_step_micro(be, vec![(tokens, targets)], hyper)?;
        Ok(losses.remove(0))
    }

    /// One optimizer step over K = `opts.grad_accum` micro-batches (tokens, targets), each a
    /// forward and a backward; returns each micro-batch's per-token losses.
    pub fn train_step_micro(
        &self,
        be: &mut impl Backend,
        micro_batches: Vec<(Tensor, Tensor)>,
        hyper: AdamWParams,
    ) -> Result<Vec<Tensor>, BackendError> {
        let k = self.opts.micro_steps();
        if micro_batches.len() != k {
            let got = micro_batches.len();
            for (tokens, targets) in micro_batches {
                be.free(tokens);
                be.free(targets);
            }
            return Err(BackendError::InvalidInput {
                op: "train_step",
                label: "grad_accum",
                backend: "schedule",
                why: format!("{got} micro-batches for a model that accumulates {k}"),
            });
        }
        let mut losses = Vec::with_capacity(k);
        for (i, (tokens, targets)) in micro_batches.into_iter().enumerate() {
            let state = self.forward_train(be, tokens, targets)?;
            losses.push(self.backward_micro(be, state, i)?);
        }
        self.optimizer_step(be, hyper)?;
        Ok(losses)
    }
}
