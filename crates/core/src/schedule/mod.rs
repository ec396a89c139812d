//! The one schedule: the model's work — forward, backward, AdamW step, prefill, decode step —
//! written once as op calls against [`Backend`]. The Meta backend turns it into the analytic
//! model; the compute backends run it. Options (precision, attention kernel, KV cache,
//! recomputation, fusion) change it for all of them at once.
//!
//! Buffer conventions for every op call (the backends rely on them):
//!   tokens, targets    (B·T) i32
//!   residual stream    (B·T, C); norm statistics (B·T, 2) f32 for LayerNorm (mean, rstd),
//!                      (B·T, 1) for RMSNorm (rstd)
//!   qkv                (B·T, (H + 2H_kv)·D): all query heads, then key heads, then value heads
//!   attention scores   (B, H, Tq, Tk); flash log-sum-exp (B, H, Tq) f32
//!   attention output   (B·T, H·D)
//!   KV cache           (B, H_kv, T_cap, D) per layer, keys and values
//!   logits             (rows, V)
//! Each call's input and output lists are documented where it is issued.

pub mod init;
pub mod options;
pub mod weights;

pub use options::{AttentionKernel, DataParallel, Options, Precision, Recompute, FP16_LOSS_SCALE};
pub use weights::{LayerParams, NormParams, Param, Weights};

use crate::backend::{Backend, BackendError, OpCall, Stream};
use crate::config::{Mlp, ModelConfig, Norm, NormPlacement, Positions, RopeScaling};
use crate::dtype::DType;
use crate::ops::activation::{Activation, ActivationIo, ActivationKind};
use crate::ops::attention::Attention;
use crate::ops::cross_entropy::{CrossEntropy, CrossEntropyIo};
use crate::ops::embedding::{Embedding, EmbeddingIo, PositionTable};
use crate::ops::geglu::{GeGlu, GeGluIo};
use crate::ops::kv_cache::{KvAppend, KvAppendIo};
use crate::ops::layernorm::{LayerNorm, LayerNormIo};
use crate::ops::matmul::{Matmul, MatmulIo};
use crate::ops::operands::Operands;
use crate::ops::residual::{ResidualAdd, ResidualAddIo};
use crate::ops::rmsnorm::{RmsNorm, RmsNormIo};
use crate::ops::rope::{Rope, RopeIo};
use crate::ops::swiglu::{SwiGlu, SwiGluIo};
use crate::ops::{Op, Phase};
use crate::tensor::{MemCategory, Tensor, TensorName, TensorSpec};

/// A model instance on a backend: its config, options and parameters.
pub struct Transformer {
    pub cfg: ModelConfig,
    pub opts: Options,
    pub weights: Weights,
    pub training: bool,
}

/// What the forward pass leaves for the backward pass.
pub struct ForwardState {
    pub b: usize,
    pub t: usize,
    pub tokens: Tensor,
    pub targets: Option<Tensor>,
    /// Per-token losses (B·T) f32, when targets were given.
    pub losses: Option<Tensor>,
    /// (rows, V): B·T rows in training and plain forward, B rows in prefill and decode.
    pub logits: Tensor,
    /// Whether activations were kept for a backward.
    training: bool,
    layers: Vec<Saved>,
    final_norm: Option<NormOut>,
    /// The stream the output layer read (the final norm's output, or the last stream).
    head_input: Tensor,
}

/// A KV cache: per layer, keys and values of (B, H_kv, T_cap, D).
pub struct KvCache {
    pub b: usize,
    pub capacity: usize,
    /// Positions filled so far.
    pub len: usize,
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

/// A norm's result: the stream it normalised (a new residual sum, or its input when nothing
/// was added), the normalised output and the statistics.
#[derive(Clone, Debug)]
struct NormOut {
    stream: Tensor,
    normed: Tensor,
    stats: Tensor,
}

/// What one block keeps for its backward, one slot per tensor; None when the policy dropped it.
///   pre-norm:  x → norm1 → n1 → qkv … attn → proj; x2 = x + proj → norm2 → n2 → h → g → y
///   post-norm: x → qkv … attn → proj; s1 = x + proj → norm1 → x2 → h → g → y;
///              s2 = x2 + y → norm2 → (next block's x)
#[derive(Default)]
struct Saved {
    /// The block's input stream.
    x: Option<Tensor>,
    n1: Option<Tensor>,
    st1: Option<Tensor>,
    qkv: Option<Tensor>,
    probs: Option<Tensor>,
    lse: Option<Tensor>,
    attn: Option<Tensor>,
    /// Post-norm: the first residual sum (norm1's input).
    s1: Option<Tensor>,
    /// Pre-norm: the mid-block stream (norm2's input); post-norm: norm1's output.
    x2: Option<Tensor>,
    n2: Option<Tensor>,
    st2: Option<Tensor>,
    /// MLP pre-activation (B·T, F or 2F).
    h: Option<Tensor>,
    /// MLP activation output (B·T, F).
    g: Option<Tensor>,
    /// Post-norm: the second residual sum (norm2's input).
    s2: Option<Tensor>,
}

impl Saved {
    fn slots(&mut self) -> [&mut Option<Tensor>; 14] {
        [
            &mut self.x,
            &mut self.n1,
            &mut self.st1,
            &mut self.qkv,
            &mut self.probs,
            &mut self.lse,
            &mut self.attn,
            &mut self.s1,
            &mut self.x2,
            &mut self.n2,
            &mut self.st2,
            &mut self.h,
            &mut self.g,
            &mut self.s2,
        ]
    }

    fn holds(&mut self, t: &Tensor) -> bool {
        self.slots()
            .iter()
            .any(|s| s.as_ref().is_some_and(|x| x.id == t.id))
    }

    /// Free whatever is still held.
    fn free_all(mut self, be: &mut impl Backend) {
        for slot in self.slots() {
            if let Some(t) = slot.take() {
                be.free(t);
            }
        }
    }
}

/// Which intermediates a forward keeps.
#[derive(Clone, Copy)]
struct Keep {
    /// Everything the backward reads directly (norm outputs, qkv, attention output, h, …).
    inputs: bool,
    /// Large and cheap to recompute: attention probabilities, the MLP activation output.
    cheap: bool,
}

impl Keep {
    const NOTHING: Keep = Keep {
        inputs: false,
        cheap: false,
    };
    const ALL: Keep = Keep {
        inputs: true,
        cheap: true,
    };
}

/// Where a forward's keys and values come from and go to.
enum Kv<'a> {
    /// Attention reads K and V from the fused qkv buffer of the same tokens.
    Local,
    /// New keys and values are appended to the cache at `pos`, and attention reads the cache.
    Cached { cache: &'a KvCache, pos: usize },
    /// A ragged batch: new keys and values go to their slots of a paged cache, and attention
    /// reads each sequence's blocks.
    Paged(&'a ragged::PagedStep<'a>),
}

/// The schedule's view of one call: backend, phase, block index.
struct Emit<'a, B: Backend> {
    be: &'a mut B,
    phase: Phase,
    layer: Option<usize>,
    /// Data-parallel gradient buckets and cross-stream waits (data_parallel.rs).
    streams: data_parallel::StreamState,
}

impl<'a, B: Backend> Emit<'a, B> {
    /// Ops of `phase` outside the blocks, on the compute stream.
    fn new(be: &'a mut B, phase: Phase) -> Self {
        Emit {
            be,
            phase,
            layer: None,
            streams: Default::default(),
        }
    }

    /// Issues `wrap(desc)` (e.g. `Op::RmsNorm`) on its named operands.
    fn run<D: Clone, I: Operands<D>>(
        &mut self,
        desc: D,
        wrap: fn(D) -> Op,
        io: I,
        label: &'static str,
    ) -> Result<(), BackendError> {
        let call = OpCall::new(desc, wrap, io, label, self.layer, self.phase);
        let waits = std::mem::take(&mut self.streams.waits);
        self.be.exec(call.on_stream(Stream::Compute, &waits))
    }

    fn alloc(
        &mut self,
        name: impl ScheduleName,
        shape: &[usize],
        dtype: DType,
        category: MemCategory,
    ) -> Result<Tensor, BackendError> {
        let name = name.into_name();
        self.be.alloc(TensorSpec::new(name, shape, dtype, category))
    }

    /// Keep `t` in `slot` or free it now.
    fn keep_or_free(&mut self, t: Tensor, keep: bool, slot: &mut Option<Tensor>) {
        if keep {
            *slot = Some(t);
        } else {
            self.be.free(t);
        }
    }
}

/// A buffer name as the schedule writes it: a literal is kept as it is ([`TensorName::fixed`]:
/// nothing copied at each allocation), a run-time string or a [`TensorName`] as given.
trait ScheduleName {
    fn into_name(self) -> TensorName;
}

impl ScheduleName for &'static str {
    fn into_name(self) -> TensorName {
        TensorName::fixed(self)
    }
}

impl ScheduleName for String {
    fn into_name(self) -> TensorName {
        TensorName::Owned(self)
    }
}

impl ScheduleName for TensorName {
    fn into_name(self) -> TensorName {
        self
    }
}

fn act_kind(mlp: Mlp) -> Option<ActivationKind> {
    match mlp {
        Mlp::Gelu => Some(ActivationKind::Gelu),
        Mlp::Relu => Some(ActivationKind::Relu),
        // Gated units are ops of their own (they read both halves of h).
        Mlp::SwiGlu | Mlp::GeGlu => None,
    }
}

impl Transformer {
    /// Allocates the parameters (and, when training, gradients and AdamW state) on `be`.
    /// The config must have been validated.
    pub fn new(
        be: &mut impl Backend,
        cfg: &ModelConfig,
        opts: Options,
        training: bool,
    ) -> Result<Self, BackendError> {
        debug_assert!(cfg.validate().is_ok());
        let shards = opts.zero1().map_or(1, |d| d.world);
        let accumulate = opts.micro_steps() > 1;
        let weights = Weights::allocate(be, cfg, opts.precision, training, (shards, accumulate))?;
        Ok(Transformer {
            cfg: cfg.clone(),
            opts,
            weights,
            training,
        })
    }

    pub fn free(self, be: &mut impl Backend) {
        self.weights.free(be);
    }

    fn act_dtype(&self) -> DType {
        self.opts.precision.compute_dtype()
    }

    /// The loss scale S of a training step (options.rs: FP16_LOSS_SCALE for fp16, else 1): the
    /// cross-entropy backward multiplies the gradient by it and AdamW divides it out.
    fn loss_scale(&self) -> f64 {
        self.opts.precision.loss_scale()
    }

    /// The loss over n tokens, carrying the step's loss scale (the forward ignores it).
    fn cross_entropy(&self, n: usize) -> CrossEntropy {
        CrossEntropy {
            n,
            v: self.cfg.vocab_size,
            grad_scale: self.loss_scale(),
        }
    }

    fn stats_width(&self) -> usize {
        match self.cfg.norm {
            Norm::LayerNorm => 2,
            Norm::RmsNorm => 1,
        }
    }

    fn keep_policy(&self, training: bool) -> Keep {
        if !training {
            return Keep::NOTHING;
        }
        match self.opts.recompute {
            Recompute::None => Keep::ALL,
            Recompute::Selective => Keep {
                inputs: true,
                cheap: false,
            },
            Recompute::Full => Keep::NOTHING,
        }
    }

    fn pre_norm(&self) -> bool {
        self.cfg.norm_placement == NormPlacement::Pre
    }

    // ---------------------------------------------------------------------------------------
    // Forward
    // ---------------------------------------------------------------------------------------

    /// Allocates the token (and target) buffers of a batch: (B, T) i32. A compute backend's
    /// caller fills them before the forward; the Meta backend needs no data.
    pub fn alloc_inputs(
        &self,
        be: &mut impl Backend,
        b: usize,
        t: usize,
        with_targets: bool,
    ) -> Result<(Tensor, Option<Tensor>), BackendError> {
        let tokens = be.alloc(TensorSpec::new(
            TensorName::fixed("tokens"),
            &[b, t],
            DType::I32,
            MemCategory::Io,
        ))?;
        let targets = if with_targets {
            Some(be.alloc(TensorSpec::new(
                TensorName::fixed("targets"),
                &[b, t],
                DType::I32,
                MemCategory::Io,
            ))?)
        } else {
            None
        };
        Ok((tokens, targets))
    }

    /// The training forward: embeddings, blocks, output layer and loss, keeping what the
    /// backward needs under the recompute policy.
    pub fn forward_train(
        &self,
        be: &mut impl Backend,
        tokens: Tensor,
        targets: Tensor,
    ) -> Result<ForwardState, BackendError> {
        debug_assert!(
            self.training,
            "forward_train needs a model built for training"
        );
        self.forward(be, tokens, Some(targets), true)
    }

    /// A plain forward that keeps no activations: logits for every position and, with
    /// targets, the loss. This is the seed's "forward pass" benchmark. Free the returned
    /// state with [`Transformer::free_state`].
    pub fn forward_eval(
        &self,
        be: &mut impl Backend,
        tokens: Tensor,
        targets: Option<Tensor>,
    ) -> Result<ForwardState, BackendError> {
        self.forward(be, tokens, targets, false)
    }

    fn forward(
        &self,
        be: &mut impl Backend,
        tokens: Tensor,
        targets: Option<Tensor>,
        training: bool,
    ) -> Result<ForwardState, BackendError> {
        let (b, t) = (tokens.shape[0], tokens.shape[1]);
        let n = b * t;
        let mut e = Emit::new(be, Phase::Forward);
        let x0 = self.embed(&mut e, &tokens, b, t, 0)?;
        let keep = self.keep_policy(training);
        let mut layers = Vec::with_capacity(self.cfg.n_layers);
        let (mut stream, mut pending) = (x0, None);
        for l in 0..self.cfg.n_layers {
            e.layer = Some(l);
            let (saved, next, branch) =
                self.block_forward(&mut e, l, stream, pending, b, t, keep, training, &Kv::Local)?;
            layers.push(saved);
            stream = next;
            pending = branch;
        }
        e.layer = None;
        // The last block's mid stream is read by its norm2 backward when inputs are kept.
        let (final_norm, head_input) = self.final_norm(&mut e, stream, pending, n, keep.inputs)?;
        let logits = e.alloc(
            "logits",
            &[n, self.cfg.vocab_size],
            self.act_dtype(),
            MemCategory::Activations,
        )?;
        self.lm_head(&mut e, &head_input, &logits)?;
        let losses = match &targets {
            Some(targets) => {
                let losses = e.alloc("losses", &[n], DType::F32, MemCategory::Io)?;
                let ce = self.cross_entropy(n);
                let io = CrossEntropyIo {
                    logits: logits.clone(),
                    targets: targets.clone(),
                    losses: losses.clone(),
                };
                e.run(ce, Op::CrossEntropy, io, "loss")?;
                Some(losses)
            }
            None => None,
        };
        let mut state = ForwardState {
            b,
            t,
            tokens,
            targets,
            losses,
            logits,
            training,
            layers,
            final_norm,
            head_input,
        };
        if !training {
            // No backward follows: only the logits and losses stay for the caller.
            if let Some(fin) = state.final_norm.take() {
                e.be.free(fin.stream);
                e.be.free(fin.stats);
            }
            e.be.free(state.head_input.clone());
        }
        Ok(state)
    }

    /// Frees what a forward left: inputs, logits, losses, and anything kept for a backward
    /// that will not run.
    pub fn free_state(&self, be: &mut impl Backend, state: ForwardState) {
        be.free(state.tokens);
        if let Some(t) = state.targets {
            be.free(t);
        }
        if let Some(l) = state.losses {
            be.free(l);
        }
        be.free(state.logits);
        for saved in state.layers {
            saved.free_all(be);
        }
        if let Some(fin) = state.final_norm {
            be.free(fin.stream);
            be.free(fin.stats);
            be.free(fin.normed);
        } else if state.training {
            be.free(state.head_input);
        }
    }

    /// Token (and position) embedding of `t` positions starting at `pos`.
    fn embed(
        &self,
        e: &mut Emit<'_, impl Backend>,
        tokens: &Tensor,
        b: usize,
        t: usize,
        pos: usize,
    ) -> Result<Tensor, BackendError> {
        let n = b * t;
        let x = e.alloc(
            "x.emb",
            &[n, self.cfg.d_model],
            self.act_dtype(),
            MemCategory::Activations,
        )?;
        let w = &self.weights;
        let io = EmbeddingIo {
            tokens: tokens.clone(),
            wte: w.token_embedding.w().clone(),
            wpe: w.position_embedding.as_ref().map(|p| p.w().clone()),
            positions: None,
            x: x.clone(),
        };
        e.run(self.embedding_op(b, t, pos), Op::Embedding, io, "embedding")?;
        Ok(x)
    }

    fn embedding_op(&self, b: usize, t: usize, pos: usize) -> Embedding {
        Embedding {
            n: b * t,
            c: self.cfg.d_model,
            vocab: self.cfg.vocab_size,
            t,
            pos_offset: pos,
            per_row: false,
            positions: match self.cfg.positions {
                Positions::Learned => PositionTable::Learned,
                Positions::Sinusoidal => PositionTable::Sinusoidal,
                Positions::Rope { .. } => PositionTable::None,
            },
            scale: self.cfg.scale_embedding,
            accumulate: self.cfg.tied_embeddings,
        }
    }

    /// Normalise `base` + `add` (the pending residual branch, freed here), or `base` alone.
    /// `base` is freed once summed unless `keep_base` (the backward reads it). Fused, the norm
    /// adds the branch itself and writes the sum; unfused, a residual add writes it first.
    #[allow(clippy::too_many_arguments)]
    fn add_norm(
        &self,
        e: &mut Emit<'_, impl Backend>,
        base: Tensor,
        add: Option<Tensor>,
        keep_base: bool,
        params: &NormParams,
        name: &TensorName,
        label: &'static str,
    ) -> Result<NormOut, BackendError> {
        let (n, c) = (base.shape[0], self.cfg.d_model);
        let dt = self.act_dtype();
        let fused = self.opts.fused && add.is_some();
        let stream = match &add {
            Some(_) => e.alloc(
                name.with_suffix(".sum"),
                &[n, c],
                dt,
                MemCategory::Activations,
            )?,
            None => base.clone(),
        };
        if let (Some(a), false) = (&add, fused) {
            let io = ResidualAddIo {
                a: base.clone(),
                b: a.clone(),
                sum: stream.clone(),
            };
            e.run(
                ResidualAdd { numel: n * c },
                Op::ResidualAdd,
                io,
                "residual",
            )?;
        }
        let normed = e.alloc(
            name.with_suffix(".out"),
            &[n, c],
            dt,
            MemCategory::Activations,
        )?;
        let stats = e.alloc(
            name.with_suffix(".stats"),
            &[n, self.stats_width()],
            DType::F32,
            MemCategory::Activations,
        )?;
        let (x, residual) = match (&add, fused) {
            (Some(a), true) => (base.clone(), Some((a.clone(), stream.clone()))),
            _ => (stream.clone(), None),
        };
        let gamma = params.gain.w().clone();
        match self.norm_op(n, fused, false) {
            Op::LayerNorm(ln) => {
                let io = LayerNormIo {
                    x,
                    add: residual.as_ref().map(|r| r.0.clone()),
                    gamma,
                    beta: params.bias.as_ref().map(|b| b.w().clone()),
                    sum: residual.map(|r| r.1),
                    y: normed.clone(),
                    stats: stats.clone(),
                };
                e.run(ln, Op::LayerNorm, io, label)?;
            }
            Op::RmsNorm(rn) => {
                let io = RmsNormIo {
                    x,
                    add: residual.as_ref().map(|r| r.0.clone()),
                    gamma,
                    sum: residual.map(|r| r.1),
                    y: normed.clone(),
                    rstd: stats.clone(),
                };
                e.run(rn, Op::RmsNorm, io, label)?;
            }
            _ => unreachable!("norm_op returns a norm"),
        }
        if let Some(a) = add {
            e.be.free(a);
            if !keep_base {
                e.be.free(base);
            }
        }
        Ok(NormOut {
            stream,
            normed,
            stats,
        })
    }

    fn norm_op(&self, n: usize, residual: bool, accumulate: bool) -> Op {
        let c = self.cfg.d_model;
        match self.cfg.norm {
            Norm::LayerNorm => Op::LayerNorm(LayerNorm {
                n,
                c,
                bias: self.cfg.biases.norm,
                eps: self.cfg.norm_eps,
                residual,
                accumulate,
            }),
            Norm::RmsNorm => Op::RmsNorm(RmsNorm {
                n,
                c,
                eps: self.cfg.norm_eps,
                residual,
                accumulate,
            }),
        }
    }

    /// Linear layer y = x·Wᵀ + b, and act(y) too when an activation is fused into the
    /// epilogue (`act` is its output).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        e: &mut Emit<'_, impl Backend>,
        x: &Tensor,
        w: &Param,
        bias: Option<&Param>,
        y: &Tensor,
        act: Option<(ActivationKind, &Tensor)>,
        label: &'static str,
    ) -> Result<(), BackendError> {
        let mut mm = Matmul::new(x.shape[0], x.shape[1], w.master.shape[0], bias.is_some());
        mm.activation = act.map(|(kind, _)| kind);
        let io = MatmulIo {
            x: x.clone(),
            w: w.w().clone(),
            bias: bias.map(|b| b.w().clone()),
            y: y.clone(),
            act: act.map(|(_, g)| g.clone()),
        };
        e.run(mm, Op::Matmul, io, label)
    }

    /// The attention core of a block: this model's heads and mask at Tq queries over Tk keys.
    fn attention_core(
        &self,
        b: usize,
        tq: usize,
        tk: usize,
        kv_cache: bool,
        layer: Option<usize>,
    ) -> AttentionCore {
        let shape = Attention {
            b,
            h: self.cfg.n_heads,
            h_kv: self.cfg.n_kv_heads,
            tq,
            tk,
            d: self.cfg.head_dim,
            causal: self.cfg.causal,
            window: self.cfg.sliding_window,
            kv_cache,
        };
        AttentionCore {
            kernel: self.opts.attention,
            shape,
            dtype: self.act_dtype(),
            layer,
        }
    }

    /// One transformer block. Returns what it keeps, the stream it leaves, and the pending
    /// branch output (pre-norm: added by the next norm; post-norm: None).
    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        l: usize,
        stream: Tensor,
        pending: Option<Tensor>,
        b: usize,
        t: usize,
        keep: Keep,
        training: bool,
        kv: &Kv<'_>,
    ) -> Result<(Saved, Tensor, Option<Tensor>), BackendError> {
        let cfg = &self.cfg;
        let p = &self.weights.layers[l];
        let n = b * t;
        let dt = self.act_dtype();
        let mut s = Saved::default();
        let name = |what| TensorName::layer(l, what);

        // --- attention half -----------------------------------------------------------
        // The previous block's mid stream (pre-norm) is read by that block's norm2 backward.
        let (x, attn_input) = if self.pre_norm() {
            let out = self.add_norm(
                e,
                stream,
                pending,
                keep.inputs,
                &p.attn_norm,
                &name("ln_1"),
                "attn.norm",
            )?;
            e.keep_or_free(out.stats, keep.inputs, &mut s.st1);
            (out.stream, out.normed)
        } else {
            debug_assert!(pending.is_none());
            (stream.clone(), stream)
        };
        let qkv = e.alloc(
            name("qkv"),
            &[n, cfg.qkv_dim()],
            dt,
            MemCategory::Activations,
        )?;
        self.linear(
            e,
            &attn_input,
            &p.qkv,
            p.qkv_bias.as_ref(),
            &qkv,
            None,
            "attn.qkv",
        )?;
        if self.pre_norm() {
            e.keep_or_free(attn_input, keep.inputs, &mut s.n1);
        }
        let attn = self.attention_forward(e, l, &qkv, b, t, keep, &mut s, kv)?;
        e.keep_or_free(qkv, keep.inputs, &mut s.qkv);
        let proj = e.alloc(
            name("attn_proj"),
            &[n, cfg.d_model],
            dt,
            MemCategory::Activations,
        )?;
        self.linear(
            e,
            &attn,
            &p.attn_out,
            p.attn_out_bias.as_ref(),
            &proj,
            None,
            "attn.proj",
        )?;
        e.keep_or_free(attn, keep.inputs, &mut s.attn);

        // --- MLP half -----------------------------------------------------------------
        // The block input is kept whenever training: norm1 (pre) or the qkv matmul (post) reads
        // it, and full recomputation restarts from it.
        let mlp_input = if self.pre_norm() {
            let out = self.add_norm(
                e,
                x.clone(),
                Some(proj),
                training,
                &p.mlp_norm,
                &name("ln_2"),
                "mlp.norm",
            )?;
            e.keep_or_free(out.stats, keep.inputs, &mut s.st2);
            s.x2 = Some(out.stream); // handed back as the next stream below
            out.normed
        } else {
            let out = self.add_norm(
                e,
                x.clone(),
                Some(proj),
                training,
                &p.attn_norm,
                &name("ln_1"),
                "attn.norm",
            )?;
            e.keep_or_free(out.stream, keep.inputs, &mut s.s1);
            e.keep_or_free(out.stats, keep.inputs, &mut s.st1);
            out.normed
        };
        if training {
            s.x = Some(x);
        }
        let h = e.alloc(
            name("mlp_h"),
            &[n, cfg.mlp_in_dim()],
            dt,
            MemCategory::Activations,
        )?;
        let g = e.alloc(name("mlp_g"), &[n, cfg.d_ff], dt, MemCategory::Activations)?;
        self.mlp_in_forward(e, l, &mlp_input, &h, &g)?;
        e.keep_or_free(h, keep.inputs, &mut s.h);
        let y = e.alloc(
            name("mlp_y"),
            &[n, cfg.d_model],
            dt,
            MemCategory::Activations,
        )?;
        self.linear(
            e,
            &g,
            &p.mlp_out,
            p.mlp_out_bias.as_ref(),
            &y,
            None,
            "mlp.proj",
        )?;
        e.keep_or_free(g, keep.cheap, &mut s.g);

        if self.pre_norm() {
            e.keep_or_free(mlp_input, keep.inputs, &mut s.n2);
            let mid = s.x2.take().expect("set above");
            if keep.inputs {
                s.x2 = Some(mid.clone());
            }
            Ok((s, mid, Some(y)))
        } else {
            let out = self.add_norm(
                e,
                mlp_input.clone(),
                Some(y),
                keep.inputs,
                &p.mlp_norm,
                &name("ln_2"),
                "mlp.norm",
            )?;
            if keep.inputs {
                s.x2 = Some(mlp_input);
            }
            e.keep_or_free(out.stream, keep.inputs, &mut s.s2);
            e.keep_or_free(out.stats, keep.inputs, &mut s.st2);
            Ok((s, out.normed, None))
        }
    }

    /// The attention core of block `l`, reading q from `qkv` and keys and values from `qkv`
    /// or the cache; returns the attention output (B·T, H·D).
    /// With a cache, the new keys and values are appended first and attention reads the cache.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        l: usize,
        qkv: &Tensor,
        b: usize,
        t: usize,
        keep: Keep,
        s: &mut Saved,
        kv: &Kv<'_>,
    ) -> Result<Tensor, BackendError> {
        let cfg = &self.cfg;
        let pos = match kv {
            Kv::Local => 0,
            Kv::Cached { pos, .. } => *pos,
            Kv::Paged(paged) => return self.paged_attention_forward(e, l, qkv, paged),
        };
        if let Positions::Rope { theta, scaling } = cfg.positions {
            let io = RopeIo {
                positions: None,
                qkv: qkv.clone(),
            };
            e.run(
                self.rope_op(b, t, pos, theta, scaling),
                Op::Rope,
                io,
                "attn.rope",
            )?;
        }
        let (tk, cache) = match kv {
            Kv::Local | Kv::Paged(_) => (t, None),
            Kv::Cached { cache, pos } => {
                let append = KvAppend {
                    b,
                    t_new: t,
                    h_kv: cfg.n_kv_heads,
                    d: cfg.head_dim,
                    pos: *pos,
                };
                let io = KvAppendIo {
                    qkv: qkv.clone(),
                    k_cache: cache.k[l].clone(),
                    v_cache: cache.v[l].clone(),
                };
                e.run(append, Op::KvAppend, io, "attn.kv_append")?;
                (pos + t, Some((&cache.k[l], &cache.v[l])))
            }
        };
        let attn = e.alloc(
            TensorName::layer(l, "attn"),
            &[b * t, cfg.attn_dim()],
            self.act_dtype(),
            MemCategory::Activations,
        )?;
        let core = self.attention_core(b, t, tk, cache.is_some(), Some(l));
        let saved = core.forward(e, qkv, cache, &attn)?;
        match self.opts.attention {
            AttentionKernel::Naive => e.keep_or_free(saved, keep.cheap, &mut s.probs),
            AttentionKernel::Flash => e.keep_or_free(saved, keep.inputs, &mut s.lse),
        }
        Ok(attn)
    }

    fn rope_op(&self, b: usize, t: usize, pos: usize, theta: f64, scaling: RopeScaling) -> Rope {
        Rope {
            b,
            t,
            h_q: self.cfg.n_heads,
            h_kv: self.cfg.n_kv_heads,
            d: self.cfg.head_dim,
            pos_offset: pos,
            per_row: false,
            theta,
            scaling,
        }
    }

    /// The MLP's first projection and activation, writing h (pre-activation) and g: one matmul
    /// with the activation in its epilogue when fused (GELU/ReLU), else a matmul then the
    /// activation (or SwiGLU).
    fn mlp_in_forward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        l: usize,
        x: &Tensor,
        h: &Tensor,
        g: &Tensor,
    ) -> Result<(), BackendError> {
        let p = &self.weights.layers[l];
        let bias = p.mlp_in_bias.as_ref();
        match act_kind(self.cfg.mlp) {
            Some(kind) if self.opts.fused => {
                self.linear(e, x, &p.mlp_in, bias, h, Some((kind, g)), "mlp.fc")
            }
            _ => {
                self.linear(e, x, &p.mlp_in, bias, h, None, "mlp.fc")?;
                self.mlp_activation(e, h, g)
            }
        }
    }

    /// The standalone activation g = act(h) (or SwiGLU of h's two halves).
    fn mlp_activation(
        &self,
        e: &mut Emit<'_, impl Backend>,
        h: &Tensor,
        g: &Tensor,
    ) -> Result<(), BackendError> {
        let n = h.shape[0];
        match act_kind(self.cfg.mlp) {
            Some(kind) => {
                let act = Activation {
                    numel: n * self.cfg.d_ff,
                    kind,
                };
                let io = ActivationIo {
                    x: h.clone(),
                    y: g.clone(),
                };
                e.run(act, Op::Activation, io, "mlp.act")
            }
            None if self.cfg.mlp == Mlp::GeGlu => {
                let op = GeGlu {
                    n,
                    f: self.cfg.d_ff,
                };
                let io = GeGluIo {
                    h: h.clone(),
                    g: g.clone(),
                };
                e.run(op, Op::GeGlu, io, "mlp.geglu")
            }
            None => {
                let op = SwiGlu {
                    n,
                    f: self.cfg.d_ff,
                };
                let io = SwiGluIo {
                    h: h.clone(),
                    g: g.clone(),
                };
                e.run(op, Op::SwiGlu, io, "mlp.swiglu")
            }
        }
    }

    /// The final norm (with the last pending branch added), or the bare residual sum.
    /// Returns the norm's buffers (kept for the backward) and the output layer's input.
    fn final_norm(
        &self,
        e: &mut Emit<'_, impl Backend>,
        stream: Tensor,
        pending: Option<Tensor>,
        n: usize,
        keep_base: bool,
    ) -> Result<(Option<NormOut>, Tensor), BackendError> {
        match &self.weights.final_norm {
            Some(params) => {
                let name = TensorName::fixed("ln_f");
                let out =
                    self.add_norm(e, stream, pending, keep_base, params, &name, "final_norm")?;
                let head_input = out.normed.clone();
                Ok((Some(out), head_input))
            }
            None => match pending {
                Some(add) => {
                    let c = self.cfg.d_model;
                    let sum = e.alloc(
                        "x.final",
                        &[n, c],
                        self.act_dtype(),
                        MemCategory::Activations,
                    )?;
                    let io = ResidualAddIo {
                        a: stream.clone(),
                        b: add.clone(),
                        sum: sum.clone(),
                    };
                    e.run(
                        ResidualAdd { numel: n * c },
                        Op::ResidualAdd,
                        io,
                        "residual",
                    )?;
                    if !keep_base {
                        e.be.free(stream);
                    }
                    e.be.free(add);
                    Ok((None, sum))
                }
                None => Ok((None, stream)),
            },
        }
    }

    /// Output layer: logits = x·W_outᵀ (+ b).
    fn lm_head(
        &self,
        e: &mut Emit<'_, impl Backend>,
        x: &Tensor,
        logits: &Tensor,
    ) -> Result<(), BackendError> {
        let w = &self.weights;
        self.linear(
            e,
            x,
            w.lm_head_weight(),
            w.lm_head_bias.as_ref(),
            logits,
            None,
            "lm_head",
        )
    }
}

mod attention;
pub mod attention_only;
pub mod ragged;
use attention::AttentionCore;
mod backward;
mod data_parallel;
mod inference;
pub mod scenario;
pub use inference::alloc_step_tokens;
