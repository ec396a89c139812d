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
/// first on ties). Otherwise the candidates — every token in index order, or with top_k = k < V
/// the k largest logits in descending order (ties broken by index) — are divided by the
/// temperature, softmaxed, and one is drawn with the generator of stream (`call`, row) of the
/// seed, so that a run is reproducible and successive calls differ.
///
/// O(V) per row without top-k, O(V + k log k) with it: a decode step of a 50k vocabulary must
/// not spend milliseconds sorting it (a full sort made sampling the slowest op of a GPU decode).
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
        let k = s.sampling.top_k.map_or(v, |k| k.clamp(1, v));
        let order: Vec<usize> = if k < v {
            let desc = |a: &usize, b: &usize| z[*b].total_cmp(&z[*a]).then(a.cmp(b));
            let mut idx: Vec<usize> = (0..v).collect();
            idx.select_nth_unstable_by(k - 1, desc);
            idx.truncate(k);
            idx.sort_unstable_by(desc);
            idx
        } else {
            (0..v).collect()
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(logits: &[f32], sampling: Sampling, call: u64) -> i32 {
        let s = Sample {
            b: 1,
            v: logits.len(),
            sampling,
        };
        let mut out = [0];
        sample(&s, logits, call, &mut out);
        out[0]
    }

    #[test]
    fn greedy_takes_the_first_largest() {
        let z = [0.5f32, 2.0, -1.0, 2.0];
        let greedy = Sampling {
            temperature: 0.0,
            ..Sampling::default()
        };
        assert_eq!(draw(&z, greedy, 0), 1);
    }

    #[test]
    fn top_k_draws_only_among_the_k_largest() {
        // Ties at the k-th place go to the lower index, as a full descending sort would.
        let z = [1.0f32, 3.0, 0.0, 2.0, 2.0, -4.0, 2.5];
        let top3 = Sampling {
            temperature: 5.0,
            top_k: Some(3),
            seed: 9,
        };
        for call in 0..200 {
            let t = draw(&z, top3, call);
            assert!([1, 6, 3].contains(&t), "drew {t} outside the top 3");
        }
        let top1 = Sampling {
            top_k: Some(1),
            ..top3
        };
        assert_eq!(draw(&z, top1, 0), 1);
    }

    #[test]
    fn draws_follow_the_softmax() {
        // p ∝ exp(z / T): with z = ln(1), ln(2), ln(3), ln(4) and T = 1, p = 0.1, 0.2, 0.3, 0.4.
        let z: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let sampling = Sampling {
            temperature: 1.0,
            top_k: None,
            seed: 3,
        };
        let n = 20_000;
        let mut counts = [0usize; 4];
        for call in 0..n {
            counts[draw(&z, sampling, call as u64) as usize] += 1;
        }
        for (j, &c) in counts.iter().enumerate() {
            let p = (j + 1) as f64 / 10.0;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            let got = c as f64 / n as f64;
            assert!((got - p).abs() < 5.0 * sd, "token {j}: {got} vs {p}");
        }
    }
}

crate::operands! {
    /// One token id (i32) per row of logits.
    pub struct SampleIo for Sample as s {
        inputs { logits }
        inplace {}
        outputs { ids }
    }
}
