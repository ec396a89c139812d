//! A scenario — what a step does, at which batch and sequence length, with which options — and
//! the runner that issues exactly that step on any backend. The Meta backend's record of a step
//! and a compute backend's measurement of it come from the same calls, so their ops join by
//! position with nothing to keep in sync.

use super::{alloc_step_tokens, KvCache, Options, Transformer};
use crate::backend::{repeated_step, Backend, BackendError};
use crate::config::ModelConfig;
use crate::error::UnknownName;
use crate::ops::adamw::AdamWParams;
use crate::ops::sampling::Sampling;
use crate::tensor::Tensor;
use serde::Serialize;
use std::str::FromStr;

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Forward, backward and AdamW over B sequences of T tokens.
    Train,
    /// Forward and backward without the optimizer (the seed's "forward + backward").
    FwdBwd,
    /// A forward with the loss, keeping nothing (the seed's forward benchmark).
    Forward,
    /// The prompt of T tokens for B sequences, filling the KV cache, sampling one token each.
    Prefill,
    /// One new token for each of B sequences whose context already holds T − 1 tokens.
    Decode,
}

impl Workload {
    pub const fn name(self) -> &'static str {
        match self {
            Workload::Train => "train",
            Workload::FwdBwd => "fwd_bwd",
            Workload::Forward => "forward",
            Workload::Prefill => "prefill",
            Workload::Decode => "decode",
        }
    }

    /// Tokens a step processes or produces.
    pub fn tokens_per_step(self, batch: usize, seq: usize) -> u64 {
        match self {
            Workload::Decode => batch as u64,
            _ => (batch * seq) as u64,
        }
    }

    /// Whether the step needs gradients (and so a model built for training).
    pub fn trains(self) -> bool {
        matches!(self, Workload::Train | Workload::FwdBwd)
    }
}

impl FromStr for Workload {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s.to_ascii_lowercase().as_str() {
            "train" | "training" | "step" => Ok(Workload::Train),
            "fwd_bwd" | "fwd-bwd" | "fwdbwd" | "forward-backward" => Ok(Workload::FwdBwd),
            "forward" | "fwd" => Ok(Workload::Forward),
            "prefill" => Ok(Workload::Prefill),
            "decode" => Ok(Workload::Decode),
            other => Err(UnknownName::new(
                "phase",
                other,
                "train, fwd_bwd, forward, prefill or decode",
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Scenario {
    pub workload: Workload,
    pub batch: usize,
    pub seq: usize,
    pub opts: Options,
}

/// A model on a backend, ready to run one scenario's step again and again.
pub struct StepRunner {
    pub model: Transformer,
    pub scenario: Scenario,
    cache: Option<KvCache>,
    steps: u64,
    /// How prefill and decode steps draw their token (temperature 1 unless set).
    pub sampling: Sampling,
}

impl StepRunner {
    /// Allocates the model (for training when the workload trains) and, for generation with a
    /// KV cache, a cache of `seq` positions. Weights are left as the backend allocated them:
    /// call `model.init_weights` on a compute backend.
    pub fn new(
        be: &mut impl Backend,
        cfg: &ModelConfig,
        sc: Scenario,
    ) -> Result<Self, BackendError> {
        let model = Transformer::new(be, cfg, sc.opts, sc.workload.trains())?;
        let cache = match sc.workload {
            Workload::Prefill | Workload::Decode if sc.opts.kv_cache => {
                Some(model.alloc_kv_cache(be, sc.batch, sc.seq)?)
            }
            _ => None,
        };
        Ok(StepRunner {
            model,
            scenario: sc,
            cache,
            steps: 0,
            sampling: Sampling::default(),
        })
    }

    /// Synthetic token ids, different each step, so no two steps see the same batch.
    fn fill(&self, be: &mut impl Backend, t: &Tensor) -> Result<(), BackendError> {
        let v = self.model.cfg.vocab_size as u64;
        let salt = self.steps.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let ids: Vec<i32> = (0..t.numel())
            .map(|i| ((i.wrapping_mul(2_654_435_761).wrapping_add(salt) >> 7) % v) as i32)
            .collect();
        be.write_i32(t, &ids)
    }

    /// One step; everything it allocates is freed before it returns.
    pub fn step(&mut self, be: &mut impl Backend, hyper: AdamWParams) -> Result<(), BackendError> {
        let Scenario {
            workload,
            batch: b,
            seq: t,
            ..
        } = self.scenario;
        let m = &self.model;
        let sampling = self.sampling;
        match workload {
            Workload::Train | Workload::FwdBwd | Workload::Forward => {
                let (tokens, targets) = m.alloc_inputs(be, b, t, true)?;
                let targets = targets.expect("asked for targets");
                self.fill(be, &tokens)?;
                self.fill(be, &targets)?;
                // Under gradient accumulation a training step takes K micro-batches of B.
                let mut more = Vec::new();
                if workload == Workload::Train {
                    for _ in 1..m.opts.micro_steps() {
                        let (tk, tg) = m.alloc_inputs(be, b, t, true)?;
                        let tg = tg.expect("asked for targets");
                        self.fill(be, &tk)?;
                        self.fill(be, &tg)?;
                        more.push((tk, tg));
                    }
                }
                // The step proper repeats identically (the ids differ, written above), so a
                // backend may capture and replay it.
                repeated_step(be, workload.name(), |be| match workload {
                    Workload::Train => {
                        let step = AdamWParams {
                            step: self.steps + 1,
                            ..hyper
                        };
                        let mut micro = vec![(tokens, targets)];
                        micro.append(&mut more);
                        for losses in m.train_step_micro(be, micro, step)? {
                            be.free(losses);
                        }
                        Ok(())
                    }
                    Workload::FwdBwd => {
                        let state = m.forward_train(be, tokens, targets)?;
                        let losses = m.backward(be, state)?;
                        be.free(losses);
                        Ok(())
                    }
                    _ => {
                        let state = m.forward_eval(be, tokens, Some(targets))?;
                        m.free_state(be, state);
                        Ok(())
                    }
                })?;
            }
            Workload::Prefill | Workload::Decode => match &mut self.cache {
                None => {
                    let tokens = alloc_step_tokens(be, b, t)?;
                    self.fill(be, &tokens)?;
                    let next = repeated_step(be, workload.name(), |be| {
                        let logits = m.step_logits(be, tokens, None)?;
                        m.sample(be, logits, sampling)
                    })?;
                    be.free(next);
                }
                Some(cache) => {
                    // Prefill starts from an empty cache; decode appends at position T − 1.
                    let (pos, new) = if workload == Workload::Prefill {
                        (0, t)
                    } else {
                        (t - 1, 1)
                    };
                    cache.len = pos;
                    let tokens = alloc_step_tokens(be, b, new)?;
                    let v = m.cfg.vocab_size as i32;
                    let ids: Vec<i32> = (0..b * new).map(|i| (i as i32 * 31 + 7) % v).collect();
                    be.write_i32(&tokens, &ids)?;
                    // The forward and the sampling repeat (the same position every step; the
                    // sampler's per-call stream lives on the backend), so a backend may capture
                    // the whole step.
                    let next = repeated_step(be, workload.name(), |be| {
                        let logits = m.step_logits(be, tokens, Some(&mut *cache))?;
                        m.sample(be, logits, sampling)
                    })?;
                    be.free(next);
                }
            },
        }
        self.steps += 1;
        Ok(())
    }

    pub fn free(self, be: &mut impl Backend) {
        if let Some(cache) = self.cache {
            self.model.free_kv_cache(be, cache);
        }
        self.model.free(be);
    }
}
