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
    /// Nucleus sampling: draw from the smallest set of most likely tokens whose probability
    /// reaches p (after top-k, when both are set). None or p ≥ 1: no cut.
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub b: usize,
    pub v: usize,
    /// Every row's setting, unless `per_row` gives each row its own.
    pub sampling: Sampling,
    /// Empty, or one setting per row (requests of a served batch each bring their own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_row: Vec<Sampling>,
}

impl Sample {
    pub fn flops(&self) -> u64 {
        5 * self.b as u64 * self.v as u64
    }
}

// Reference implementation

/// The next token of each of the b rows of `logits` (b × V). Temperature 0 takes the argmax (the
/// first on ties). Otherwise the candidates — every token in index order, or with top_k = k < V
/// the k largest logits in descending order (ties broken by index), cut further to the nucleus
/// of mass top_p — are divided by the temperature, softmaxed, and one is drawn. With one setting
/// for all rows the draw uses the generator of stream (`call`, row) of the seed, so that a run is
/// reproducible and successive calls differ; with a setting per row, row r uses stream 0 of its
/// own seed, so its draw does not depend on its place in the batch or on other requests (the
/// caller gives each step of a request its own seed).
///
/// O(V) per row without top-k, O(V + k log k) with it: a decode step of a 50k vocabulary must
/// not spend milliseconds sorting it (a full sort made sampling the slowest op of a GPU decode).
pub fn sample<F: Real>(s: &Sample, logits: &[F], call: u64, out: &mut [i32]) {
    let v = s.v;
    for (row, next) in out.iter_mut().enumerate().take(s.b) {
        let params = s.per_row.get(row).unwrap_or(&s.sampling);
        let z: Vec<f64> = logits[row * v..(row + 1) * v]
            .iter()
            .map(|x| x.to_f64())
            .collect();
        let argmax = (0..v).fold(0, |best, j| if z[j] > z[best] { j } else { best });
        if params.temperature <= 0.0 {
            *next = argmax as i32;
            continue;
        }
        let k = params.top_k.map_or(v, |k| k.clamp(1, v));
        let top_p = params.top_p.filter(|&p| p < 1.0);
        let desc = |a: &usize, b: &usize| z[*b].total_cmp(&z[*a]).then(a.cmp(b));
        let mut order: Vec<usize> = if k < v {
            let mut idx: Vec<usize> = (0..v).collect();
            idx.select_nth_unstable_by(k - 1, desc);
            idx.truncate(k);
            idx.sort_unstable_by(desc);
            idx
        } else {
            (0..v).collect()
        };
        let t = params.temperature;
        let mut weights: Vec<f64> = Vec::new();
        if let Some(p) = top_p {
            // The nucleus needs the candidates by descending probability.
            if k == v {
                order.sort_unstable_by(desc);
            }
            weights.extend(order.iter().map(|&j| ((z[j] - z[argmax]) / t).exp()));
            let total: f64 = weights.iter().sum();
            let mut mass = 0.0;
            let keep = weights
                .iter()
                .position(|&w| {
                    mass += w;
                    mass >= p.max(0.0) * total
                })
                .map_or(order.len(), |i| i + 1);
            order.truncate(keep);
            weights.truncate(keep);
        } else {
            weights.extend(order.iter().map(|&j| ((z[j] - z[argmax]) / t).exp()));
        }
        let total: f64 = weights.iter().sum();
        let mut rng = if s.per_row.is_empty() {
            Rng::for_stream(
                params.seed,
                call.wrapping_mul(1 << 32).wrapping_add(row as u64),
            )
        } else {
            Rng::for_stream(params.seed, 0)
        };
        let mut u = rng.uniform() * total;
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

crate::operands! {
    /// One token id (i32) per row of logits.
    pub struct SampleIo for Sample as s {
        inputs { logits }
        inplace {}
        outputs { ids }
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
            per_row: Vec::new(),
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
            ..Sampling::default()
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
            ..Sampling::default()
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

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // p = 0.1, 0.2, 0.3, 0.4 (by index): a nucleus of 0.65 is {3, 2}; of 0.75, {3, 2, 1}.
        let z: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let nucleus = |p: f64| Sampling {
            top_p: Some(p),
            seed: 5,
            ..Sampling::default()
        };
        let seen = |p: f64| {
            let mut seen = [false; 4];
            for call in 0..2000 {
                seen[draw(&z, nucleus(p), call) as usize] = true;
            }
            seen
        };
        assert_eq!(seen(0.65), [false, false, true, true]);
        assert_eq!(seen(0.75), [false, true, true, true]);
        assert_eq!(seen(0.3), [false, false, false, true]);
    }

    #[test]
    fn per_row_settings_do_not_depend_on_the_batch() {
        let (v, rows) = (50, 3);
        let logits: Vec<f32> = (0..v * rows)
            .map(|i| ((i * 37) % 11) as f32 * 0.3)
            .collect();
        let settings = [
            Sampling {
                temperature: 0.0,
                ..Sampling::default()
            },
            Sampling {
                temperature: 0.8,
                top_k: Some(5),
                seed: 1,
                ..Sampling::default()
            },
            Sampling {
                temperature: 1.3,
                top_p: Some(0.9),
                seed: 2,
                ..Sampling::default()
            },
        ];
        let batch = Sample {
            b: rows,
            v,
            sampling: Sampling::default(),
            per_row: settings.to_vec(),
        };
        let mut together = vec![0; rows];
        sample(&batch, &logits, 7, &mut together);
        for r in 0..rows {
            let alone = Sample {
                b: 1,
                v,
                sampling: Sampling::default(),
                per_row: vec![settings[r]],
            };
            let mut one = [0];
            sample(&alone, &logits[r * v..(r + 1) * v], 99, &mut one);
            assert_eq!(one[0], together[r], "row {r}");
        }
    }
}
