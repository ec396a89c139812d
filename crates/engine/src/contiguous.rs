//! One prompt at a time over the contiguous KV cache (B = 1, capacity prompt + max_new), or
//! without a cache (each step recomputes the prefix): the loop `tperf generate` ran before the
//! paged engine, kept as the reference the engine is tested against, for `--no-kv-cache`, and
//! for `--contiguous-kv` (its decode steps repeat exactly, so a backend may replay them from a
//! CUDA graph).

use crate::EngineError;
use std::time::{Duration, Instant};
use tperf_core::backend::{repeated_step, Backend};
use tperf_core::ops::sampling::Sampling;
use tperf_core::schedule::{alloc_step_tokens, Transformer};

#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    /// Generated tokens (an end-of-text token included).
    pub tokens: usize,
    /// Prefill through the first token read back on the host.
    pub first: Option<Duration>,
    /// Every later token.
    pub rest: Duration,
}

/// Prefill and decode `max_new` tokens after `prompt`, calling `on_token` with each (an
/// `eot` ends the generation unprinted). With a KV cache (`model.opts.kv_cache`) the prefill
/// fills it and each step feeds one token; without one each step runs the whole sequence so far.
pub fn generate<B: Backend>(
    be: &mut B,
    model: &Transformer,
    prompt: &[u32],
    max_new: usize,
    sampling: Sampling,
    eot: Option<u32>,
    mut on_token: impl FnMut(u32),
) -> Result<Timing, EngineError> {
    let mut timing = Timing::default();
    if max_new == 0 {
        return Ok(timing);
    }
    let mut cache = if model.opts.kv_cache {
        Some(model.alloc_kv_cache(be, 1, prompt.len() + max_new)?)
    } else {
        None
    };
    let mut seq: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let mut result = Ok(());
    for i in 0..max_new {
        let started = Instant::now();
        let step = (|| -> Result<i32, EngineError> {
            let feed: &[i32] = match (&cache, i) {
                (Some(_), 0) | (None, _) => &seq,
                (Some(_), _) => &seq[seq.len() - 1..],
            };
            let tokens = alloc_step_tokens(be, 1, feed.len())?;
            be.write_i32(&tokens, feed)?;
            let next = match &mut cache {
                // Decode steps with a cache repeat (one token in, the position in device
                // memory, the sampler's stream on the backend): a backend may capture one with
                // its sampling and replay it (CUDA graphs); only the id comes back.
                Some(cache) if i > 0 => repeated_step(be, "decode", |be| {
                    let logits = model.step_logits(be, tokens, Some(&mut *cache))?;
                    model.sample(be, logits, sampling)
                })?,
                Some(cache) => {
                    let logits = model.step_logits(be, tokens, Some(cache))?;
                    model.sample(be, logits, sampling)?
                }
                None => {
                    let logits = model.step_logits(be, tokens, None)?;
                    model.sample(be, logits, sampling)?
                }
            };
            let ids = be.read_f32(&next);
            be.free(next);
            Ok(ids?.first().copied().unwrap_or(0.0) as i32)
        })();
        let next = match step {
            Ok(t) => t,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let dt = started.elapsed();
        if i == 0 {
            timing.first = Some(dt);
        } else {
            timing.rest += dt;
        }
        timing.tokens += 1;
        if eot.is_some_and(|eot| eot as i32 == next) {
            break;
        }
        seq.push(next);
        on_token(next as u32);
    }
    if let Some(cache) = cache {
        model.free_kv_cache(be, cache);
    }
    result.map(|()| timing)
}
