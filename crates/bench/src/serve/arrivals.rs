//! When requests are sent: vLLM's arrival process. Inter-arrival times are gamma distributed
//! with shape k = burstiness and scale θ = 1/(rate·k), so their mean is 1/rate whatever the
//! burstiness and their coefficient of variation is 1/√k: k = 1 is a Poisson process, k < 1
//! burstier, k > 1 more regular. An infinite rate sends everything at time 0.

use tperf_core::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arrivals {
    /// Requests per second; infinite: all at once.
    pub rate: f64,
    pub burstiness: f64,
}

impl Arrivals {
    /// Send times in seconds from the start, the first at 0 (as vLLM sends its first request
    /// at once and sleeps between the rest).
    pub fn times(&self, n: usize, rng: &mut Rng) -> Vec<f64> {
        let mut t = 0.0;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 && self.rate.is_finite() {
                t += gamma(rng, self.burstiness) / (self.rate * self.burstiness);
            }
            out.push(t);
        }
        out
    }
}

/// A sample of Gamma(shape, 1), by Marsaglia and Tsang's squeeze method (2000) for shape ≥ 1
/// and, below 1, by the boost Gamma(k) = Gamma(k + 1)·U^(1/k).
pub fn gamma(rng: &mut Rng, shape: f64) -> f64 {
    debug_assert!(shape > 0.0);
    if shape < 1.0 {
        let u = 1.0 - rng.uniform();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal();
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = 1.0 - rng.uniform();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_cv(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt() / mean)
    }

    /// Over 200k samples the mean is within about 0.5% and the CV within about 1% at 3σ; the
    /// tolerances leave room beyond that.
    #[test]
    fn inter_arrivals_have_mean_one_over_rate_and_cv_one_over_root_burstiness() {
        for (rate, k) in [(4.0, 1.0), (10.0, 0.25), (0.5, 4.0), (100.0, 0.5)] {
            let mut rng = Rng::new(7);
            let t = Arrivals {
                rate,
                burstiness: k,
            }
            .times(200_001, &mut rng);
            let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            assert!(gaps.iter().all(|&g| g >= 0.0));
            let (mean, cv) = mean_cv(&gaps);
            assert!(
                (mean * rate - 1.0).abs() < 0.02,
                "rate {rate} k {k}: mean {mean}"
            );
            let want = 1.0 / f64::sqrt(k);
            assert!(
                (cv - want).abs() / want < 0.03,
                "rate {rate} k {k}: cv {cv}"
            );
        }
    }

    #[test]
    fn an_infinite_rate_sends_everything_at_once() {
        let t = Arrivals {
            rate: f64::INFINITY,
            burstiness: 1.0,
        }
        .times(5, &mut Rng::new(1));
        assert_eq!(t, vec![0.0; 5]);
    }
}
