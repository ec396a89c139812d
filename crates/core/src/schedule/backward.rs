//! The backward pass and the optimizer step, written against the same Backend as the forward.
//! Activation gradients are allocated as they are needed and freed as soon as they are used, and
//! the forward's saved tensors are freed once the backward has read them for the last time, so
//! the Meta record's memory timeline falls through the backward as a real run's does.

use super::{act_kind, Emit, ForwardState, Keep, Kv, NormOut, Param, Saved, Transformer};
use crate::backend::{Backend, BackendError};
use crate::dtype::DType;
use crate::ops::adamw::{AdamW, AdamWParams};
use crate::ops::cast::Cast;
use crate::ops::grad_norm::GradNorm;
use crate::ops::matmul::Matmul;
use crate::ops::{Op, Phase};
use crate::schedule::{AttentionKernel, NormParams, Recompute};
use crate::tensor::{MemCategory, Tensor};

impl Transformer {
    /// The backward pass of a training forward: weight gradients into each parameter's grad
    /// buffer (overwritten, not accumulated). Consumes the state and returns the per-token
    /// losses for the caller to read and free.
    pub fn backward(
        &self,
        be: &mut impl Backend,
        state: ForwardState,
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
        let mut e = Emit {
            be,
            phase: Phase::Backward,
            layer: None,
        };
        let targets = targets.expect("training forwards carry targets");

        // Loss: dlogits = S·(softmax − onehot)/n, written over the logits when fused. S is the
        // policy's loss scale (FP16_LOSS_SCALE under fp16, else 1): every gradient below carries
        // it, and the optimizer step divides it out.
        // inputs [logits, targets] → outputs [dlogits]
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
        e.op(
            Op::CrossEntropyBackward(ce),
            &[&logits, &targets],
            &[&dlogits],
            "loss",
        )?;
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

        // inputs [tokens, dx] → outputs [dwte, dwpe?]
        let mut outputs = vec![w.token_embedding.grad()];
        outputs.extend(w.position_embedding.as_ref().map(Param::grad));
        let op = Op::EmbeddingBackward(self.embedding_op(b, t, 0));
        e.op(op, &[&tokens, &dres], &outputs, "embedding")?;
        for x in [dres, tokens, targets] {
            e.be.free(x);
        }
        Ok(losses.expect("training forwards compute the loss"))
    }

    /// Linear backward: dx = dy·W (added into dx when `accumulate`), dW = dyᵀ·x, db = Σ dy.
    /// With a fused activation, dy is the gradient of act(h) and h is read to apply act'(h).
    /// inputs [x, W, dy, h?, dx?] → outputs [dx, dW, db?]
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
        let mut inputs = vec![x, w.w(), dy];
        inputs.extend(fused_pre_activation);
        if accumulate {
            inputs.push(dx);
        }
        let mut outputs = vec![dx, w.grad()];
        outputs.extend(bias.map(Param::grad));
        e.op(Op::MatmulBackward(mm), &inputs, &outputs, label)
    }

    /// Norm backward: dx (added into it when `accumulate`), dγ, dβ.
    /// inputs [x, stats, γ, dy, dx?] → outputs [dx, dγ, dβ?]
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
        let op = match self.norm_op(x.shape[0], false, accumulate) {
            Op::LayerNorm(l) => Op::LayerNormBackward(l),
            Op::RmsNorm(r) => Op::RmsNormBackward(r),
            _ => unreachable!("norm_op returns a norm"),
        };
        let mut inputs = vec![x, stats, params.gain.w(), dy];
        if accumulate {
            inputs.push(dx);
        }
        let mut outputs = vec![dx, params.gain.grad()];
        outputs.extend(params.bias.as_ref().map(Param::grad));
        e.op(op, &inputs, &outputs, label)
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
        let shape = self.attention_shape(b, t, t);
        match self.opts.attention {
            AttentionKernel::Naive => {
                let probs = match s.probs.take() {
                    Some(p) => p,
                    None => {
                        e.phase = Phase::Recompute;
                        let p = self.attention_probs(e, &shape, &qkv, None, l)?;
                        e.phase = Phase::Backward;
                        p
                    }
                };
                let dims = [b, cfg.n_heads, t, t];
                let dprobs = e.alloc(
                    format!("h{l}.d_probs"),
                    &dims,
                    dt,
                    MemCategory::ActivationGradients,
                )?;
                // inputs [dattn, qkv, probs] → outputs [dprobs, dqkv (V part)]
                e.op(
                    Op::AttnValueBackward(shape),
                    &[&dattn, &qkv, &probs],
                    &[&dprobs, &dqkv],
                    "attn.value",
                )?;
                let dscores = e.alloc(
                    format!("h{l}.d_scores"),
                    &dims,
                    dt,
                    MemCategory::ActivationGradients,
                )?;
                // inputs [probs, dprobs] → outputs [dscores]
                e.op(
                    Op::AttnSoftmaxBackward(shape),
                    &[&probs, &dprobs],
                    &[&dscores],
                    "attn.softmax",
                )?;
                e.be.free(dprobs);
                e.be.free(probs);
                // inputs [dscores, qkv] → outputs [dqkv (Q and K parts)]
                e.op(
                    Op::AttnScoresBackward(shape),
                    &[&dscores, &qkv],
                    &[&dqkv],
                    "attn.scores",
                )?;
                e.be.free(dscores);
            }
            AttentionKernel::Flash => {
                let lse = Self::take(&mut s.lse, "lse");
                // inputs [qkv, attn, dattn, lse] → outputs [dqkv]
                e.op(
                    Op::FlashAttentionBackward(shape),
                    &[&qkv, &attn, &dattn, &lse],
                    &[&dqkv],
                    "attn.flash",
                )?;
                e.be.free(lse);
            }
        }
        for x in [attn, dattn, qkv] {
            e.be.free(x);
        }
        if let crate::config::Positions::Rope { theta } = cfg.positions {
            // in place: inputs [dqkv] → outputs [dqkv]
            e.op(
                Op::RopeBackward(self.rope_op(b, t, 0, theta)),
                &[&dqkv],
                &[&dqkv],
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

    /// The standalone activation's backward: inputs [h, dg] → outputs [dh].
    fn activation_backward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        h: &Tensor,
        dg: &Tensor,
        dh: &Tensor,
    ) -> Result<(), BackendError> {
        let n = h.shape[0];
        let op = match act_kind(self.cfg.mlp) {
            Some(kind) => Op::ActivationBackward(crate::ops::activation::Activation {
                numel: n * self.cfg.d_ff,
                kind,
            }),
            None => Op::SwiGluBackward(crate::ops::swiglu::SwiGlu {
                n,
                f: self.cfg.d_ff,
            }),
        };
        e.op(op, &[h, dg], &[dh], "mlp.act")
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
    ///   grad_norm inputs [grads…] → outputs [norm]
    ///   adamw     inputs [norm, θ…, g…, m…, v…] → outputs [θ…, m…, v…, copies…(fused)]
    ///   cast      inputs [θ…] → outputs [copies…]
    pub fn optimizer_step(
        &self,
        be: &mut impl Backend,
        hyper: AdamWParams,
    ) -> Result<(), BackendError> {
        debug_assert!(self.training);
        let mut e = Emit {
            be,
            phase: Phase::Optimizer,
            layer: None,
        };
        let w = &self.weights;
        let all = w.all_params();
        let numel: u64 = all.iter().map(|p| p.numel()).sum();
        let grads: Vec<&Tensor> = all.iter().map(|p| p.grad()).collect();
        let norm = e.alloc("grad_norm", &[1], DType::F32, MemCategory::Io)?;
        e.op(
            Op::GradNorm(GradNorm { numel }),
            &grads,
            &[&norm],
            "grad_norm",
        )?;
        let mut groups = vec![(None, w.outer_params())];
        groups.extend(
            w.layers
                .iter()
                .enumerate()
                .map(|(l, lp)| (Some(l), lp.params())),
        );
        for (layer, params) in groups {
            e.layer = layer;
            let numel: u64 = params.iter().map(|p| p.numel()).sum();
            let mut inputs = vec![&norm];
            inputs.extend(params.iter().map(|p| &p.master));
            inputs.extend(params.iter().map(|p| p.grad()));
            inputs.extend(params.iter().filter_map(|p| p.m.as_ref()));
            inputs.extend(params.iter().filter_map(|p| p.v.as_ref()));
            let mut outputs: Vec<&Tensor> = params.iter().map(|p| &p.master).collect();
            outputs.extend(params.iter().filter_map(|p| p.m.as_ref()));
            outputs.extend(params.iter().filter_map(|p| p.v.as_ref()));
            let copies: Vec<&Tensor> = params.iter().filter_map(|p| p.copy.as_ref()).collect();
            if self.opts.fused {
                outputs.extend(copies.iter().copied());
            }
            e.op(
                Op::AdamW(AdamW {
                    numel,
                    hyper,
                    grad_scale: self.loss_scale(),
                }),
                &inputs,
                &outputs,
                "adamw",
            )?;
            if !self.opts.fused && !copies.is_empty() {
                let masters: Vec<&Tensor> = params.iter().map(|p| &p.master).collect();
                e.op(Op::Cast(Cast { numel }), &masters, &copies, "cast")?;
            }
        }
        e.be.free(norm);
        Ok(())
    }

    /// One whole training step: forward, backward, optimizer. Returns the per-token losses.
    pub fn train_step(
        &self,
        be: &mut impl Backend,
        tokens: Tensor,
        targets: Tensor,
        hyper: AdamWParams,
    ) -> Result<Tensor, BackendError> {
        let state = self.forward_train(be, tokens, targets)?;
        let losses = self.backward(be, state)?;
        self.optimizer_step(be, hyper)?;
        Ok(losses)
    }
}
