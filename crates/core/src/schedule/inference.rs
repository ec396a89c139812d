//! Inference: prefill and decode steps with a KV cache, and the cache-less decode step that
//! recomputes the whole prefix (what `--no-kv-cache` measures).

use super::{Emit, Keep, Kv, KvCache, Transformer};
use crate::backend::{Backend, BackendError};
use crate::dtype::DType;
use crate::ops::sampling::{Sample, SampleIo, Sampling};
use crate::ops::take_last::{TakeLast, TakeLastIo};
use crate::ops::{Op, Phase};
use crate::tensor::{MemCategory, Tensor, TensorName, TensorSpec};

impl Transformer {
    /// A KV cache for `b` sequences of up to `capacity` positions, in the compute dtype.
    pub fn alloc_kv_cache(
        &self,
        be: &mut impl Backend,
        b: usize,
        capacity: usize,
    ) -> Result<KvCache, BackendError> {
        let shape = [b, self.cfg.n_kv_heads, capacity, self.cfg.head_dim];
        let dt = self.act_dtype();
        let mut k = Vec::with_capacity(self.cfg.n_layers);
        let mut v = Vec::with_capacity(self.cfg.n_layers);
        for l in 0..self.cfg.n_layers {
            k.push(be.alloc(TensorSpec::new(
                TensorName::layer(l, "k_cache"),
                &shape,
                dt,
                MemCategory::KvCache,
            ))?);
            v.push(be.alloc(TensorSpec::new(
                TensorName::layer(l, "v_cache"),
                &shape,
                dt,
                MemCategory::KvCache,
            ))?);
        }
        Ok(KvCache {
            b,
            capacity,
            len: 0,
            k,
            v,
        })
    }

    pub fn free_kv_cache(&self, be: &mut impl Backend, cache: KvCache) {
        for t in cache.k.into_iter().chain(cache.v) {
            be.free(t);
        }
    }

    /// Runs `tokens` (B, T_new) through the model, appending their keys and values to `cache`
    /// (prefill when the cache is empty, a decode step when T_new = 1), and samples the next
    /// token of each sequence. Returns the sampled ids (B) i32; `tokens` is freed.
    pub fn generate_step(
        &self,
        be: &mut impl Backend,
        tokens: Tensor,
        cache: &mut KvCache,
        sampling: Sampling,
    ) -> Result<Tensor, BackendError> {
        let logits = self.step_logits(be, tokens, Some(cache))?;
        self.sample(be, logits, sampling)
    }

    /// A decode step without a cache: the whole prefix (B, T) is recomputed to produce one token.
    pub fn generate_step_uncached(
        &self,
        be: &mut impl Backend,
        tokens: Tensor,
        sampling: Sampling,
    ) -> Result<Tensor, BackendError> {
        let logits = self.step_logits(be, tokens, None)?;
        self.sample(be, logits, sampling)
    }

    /// The forward of a generate step up to the output layer: the logits (B, V) of the last
    /// position of each sequence, which the caller reads and frees. With a cache, the new keys
    /// and values are appended and `cache.len` advances; `tokens` is freed.
    pub fn step_logits(
        &self,
        be: &mut impl Backend,
        tokens: Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor, BackendError> {
        match cache {
            Some(cache) => {
                let t = tokens.shape[1];
                let logits = self.generate_forward(be, tokens, Some((&*cache, cache.len)))?;
                cache.len += t;
                Ok(logits)
            }
            None => self.generate_forward(be, tokens, None),
        }
    }

    /// Samples one token per row of `logits` (B, V), which are freed.
    pub fn sample(
        &self,
        be: &mut impl Backend,
        logits: Tensor,
        sampling: Sampling,
    ) -> Result<Tensor, BackendError> {
        let (b, v) = (logits.shape[0], logits.shape[1]);
        let mut e = Emit::new(be, Phase::Forward);
        let next = e.alloc("next_tokens", &[b], DType::I32, MemCategory::Io)?;
        let op = Sample {
            b,
            v,
            sampling,
            per_row: Vec::new(),
        };
        let io = SampleIo {
            logits: logits.clone(),
            ids: next.clone(),
        };
        e.run(op, Op::Sample, io, "sample")?;
        e.be.free(logits);
        Ok(next)
    }

    /// Samples one token per row of `logits` (S, V), row r with its own setting `per_row[r]`
    /// (the requests of a served batch each bring theirs); the ids (S) i32 are returned and the
    /// logits freed, so only S ids, never the logits, need to reach the host.
    pub fn sample_rows(
        &self,
        be: &mut impl Backend,
        logits: Tensor,
        per_row: Vec<Sampling>,
    ) -> Result<Tensor, BackendError> {
        let (b, v) = (logits.shape[0], logits.shape[1]);
        debug_assert_eq!(per_row.len(), b);
        let mut e = Emit::new(be, Phase::Forward);
        let next = e.alloc("next_tokens", &[b], DType::I32, MemCategory::Io)?;
        let op = Sample {
            b,
            v,
            sampling: per_row.first().copied().unwrap_or_default(),
            per_row,
        };
        let io = SampleIo {
            logits: logits.clone(),
            ids: next.clone(),
        };
        e.run(op, Op::Sample, io, "sample")?;
        e.be.free(logits);
        Ok(next)
    }

    fn generate_forward(
        &self,
        be: &mut impl Backend,
        tokens: Tensor,
        cache: Option<(&KvCache, usize)>,
    ) -> Result<Tensor, BackendError> {
        let (b, t) = (tokens.shape[0], tokens.shape[1]);
        let (c, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let dt = self.act_dtype();
        let mut e = Emit::new(be, Phase::Forward);
        let pos = cache.map_or(0, |(_, p)| p);
        let x0 = self.embed(&mut e, &tokens, b, t, pos)?;
        e.be.free(tokens);
        let (mut stream, mut pending) = (x0, None);
        for l in 0..self.cfg.n_layers {
            e.layer = Some(l);
            let kv = match cache {
                Some((cache, pos)) => Kv::Cached { cache, pos },
                None => Kv::Local,
            };
            let (_, next, branch) =
                self.block_forward(&mut e, l, stream, pending, b, t, Keep::NOTHING, false, &kv)?;
            stream = next;
            pending = branch;
        }
        e.layer = None;
        let (fin, head_input) = self.final_norm(&mut e, stream, pending, b * t, false)?;
        if let Some(fin) = fin {
            e.be.free(fin.stream);
            e.be.free(fin.stats);
        }
        // Only the last position of each sequence is sampled: B rows go to the output layer.
        let last = if t > 1 {
            let last = e.alloc("x.last", &[b, c], dt, MemCategory::Activations)?;
            let io = TakeLastIo {
                x: head_input.clone(),
                last: last.clone(),
            };
            e.run(TakeLast { b, t, c }, Op::TakeLast, io, "take_last")?;
            e.be.free(head_input);
            last
        } else {
            head_input
        };
        let logits = e.alloc("logits", &[b, v], dt, MemCategory::Activations)?;
        self.lm_head(&mut e, &last, &logits)?;
        e.be.free(last);
        Ok(logits)
    }
}

/// The token buffer for a generate step: (B, T_new) i32.
pub fn alloc_step_tokens(
    be: &mut impl Backend,
    b: usize,
    t: usize,
) -> Result<Tensor, BackendError> {
    be.alloc(TensorSpec::new(
        TensorName::fixed("tokens"),
        &[b, t],
        DType::I32,
        MemCategory::Io,
    ))
}
