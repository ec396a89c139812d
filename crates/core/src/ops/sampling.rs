//! Sampling the next token from the last position's logits (b × V): divide by the temperature
//! V, max V, exp V, sum V, and a top-k selection or the cumulative draw V → 5V FLOPs per row.
//! Bytes: the io rule (logits read, b token ids written).

use super::Real;
use crate::rng::Rng;
use serde::Serialize;

/// How the next token is drawn. Temperature 0 means greedy (argmax).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_k: None,
            seed: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub b: usize,
    pub v: usize,
    pub sampling: Sampling,
}

impl Sample {
    pub fn flops(&self) -> u64 {
        5 * self.b as u64 * self.v as u64
    }
}

// Reference implementation

/// The next token of each of the b rows of `logits` (b × V). Temperature 0 takes the argmax (the
/// first on ties). Otherwise the k largest logits (all when top_k is None; ties broken by index)
/// are divided by the temperature, softmaxed, and one is drawn with the generator of stream
/// (`call`, row) of the seed, so that a run is reproducible and successive calls differ.
pub fn sample<F: Real>(s: &Sample, logits: &[F], call: u64, out: &mut [i32]) {
    let v = s.v;
    for (row, next) in out.iter_mut().enumerate().take(s.b) {
        let z: Vec<f64> = logits[row * v..(row + 1) * v]
            .iter()
            .map(|x| x.to_f64())
            .collect();
        let argmax = (0..v).fold(0, |best, j| if z[j] > z[best] { j } else { best });
        if s.sampling.temperature <= 0.0 {
            *next = argmax as i32;
            continue;
        }
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
        order.truncate(s.sampling.top_k.unwrap_or(v).clamp(1, v));
        let t = s.sampling.temperature;
        let weights: Vec<f64> = order
            .iter()
            .map(|&j| ((z[j] - z[argmax]) / t).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let stream = call.wrapping_mul(1 << 32).wrapping_add(row as u64);
        let mut u = Rng::for_stream(s.sampling.seed, stream).uniform() * total;
        let mut pick = order[order.len() - 1];
        for (&j, &w) in order.iter().zip(&weights) {
            if u < w {
                pick = j;
                break;
            }
            u -= w;
        }
        *next = pick as i32;
    }
}
