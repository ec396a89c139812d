//! `tperf bench serve`: a benchmark client for any OpenAI-compatible server, after vLLM's
//! `vllm bench serve` — prompts from a random or ShareGPT dataset, sent on a gamma arrival
//! process (or under a concurrency cap), streamed and timed chunk by chunk, summarised with
//! vLLM's metrics (TTFT, TPOT, ITL, E2EL, throughputs, goodput), and, for several clients,
//! the service each received over time and the largest gap between them.

pub mod arrivals;
pub mod client;
pub mod dataset;
pub mod engine_steps;
pub mod fairness;
pub mod in_process;
pub mod metrics;
pub mod sse;
pub mod summary;

use arrivals::Arrivals;
use client::Scheduled;
use dataset::RequestSpec;
use thiserror::Error;
use tperf_core::rng::Rng;

#[derive(Debug, Error)]
pub enum ServeBenchError {
    #[error("{0}")]
    Invalid(String),
    #[error("dataset: {0}")]
    Dataset(String),
}

/// Splits the requests among clients in proportion to their rates (equal shares when every
/// rate is infinite), gives each client its own arrival process at its rate, and merges them
/// in time order. Requests keep their dataset order within a client.
pub fn schedule(
    specs: Vec<RequestSpec>,
    client_rates: &[f64],
    burstiness: f64,
    seed: u64,
) -> Result<Vec<Scheduled>, ServeBenchError> {
    let invalid = |s: String| Err(ServeBenchError::Invalid(s));
    if client_rates.is_empty() {
        return invalid("at least one client is needed".into());
    }
    if client_rates.iter().any(|r| r.is_nan() || *r <= 0.0) {
        return invalid(format!("request rates must be positive: {client_rates:?}"));
    }
    if !(burstiness > 0.0 && burstiness.is_finite()) {
        return invalid(format!(
            "--burstiness {burstiness} must be a positive number"
        ));
    }
    let infinite = client_rates.iter().filter(|r| r.is_infinite()).count();
    if infinite != 0 && infinite != client_rates.len() {
        return invalid("client rates must be all finite or all inf".into());
    }
    let weights: Vec<f64> = if infinite > 0 {
        vec![1.0; client_rates.len()]
    } else {
        client_rates.to_vec()
    };
    let counts = shares(specs.len(), &weights);
    let mut out = Vec::with_capacity(specs.len());
    let mut specs = specs.into_iter();
    for (c, (&rate, &n)) in client_rates.iter().zip(&counts).enumerate() {
        let mut rng = Rng::for_stream(seed, c as u64);
        let times = Arrivals { rate, burstiness }.times(n, &mut rng);
        for at_s in times {
            let spec = specs
                .next()
                .expect("the shares sum to the number of requests");
            out.push(Scheduled {
                spec,
                client: c,
                at_s,
            });
        }
    }
    out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    Ok(out)
}

/// `n` split in proportion to `weights` by largest remainder.
fn shares(n: usize, weights: &[f64]) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| n as f64 * w / total).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let missing = n - counts.iter().sum::<usize>();
    for &i in order.iter().take(missing) {
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataset::Prompt;

    fn specs(n: usize) -> Vec<RequestSpec> {
        (0..n)
            .map(|i| RequestSpec {
                prompt: Prompt::Text(format!("p{i}")),
                prompt_len: 1,
                output_len: 1,
            })
            .collect()
    }

    #[test]
    fn requests_split_by_rate_and_merge_in_time_order() {
        assert_eq!(shares(10, &[4.0, 1.0]), vec![8, 2]);
        assert_eq!(shares(7, &[1.0, 1.0, 1.0]).iter().sum::<usize>(), 7);
        let s = schedule(specs(100), &[40.0, 10.0], 1.0, 0).unwrap();
        assert_eq!(s.iter().filter(|r| r.client == 0).count(), 80);
        assert!(s.windows(2).all(|w| w[0].at_s <= w[1].at_s));
        let all = schedule(specs(6), &[f64::INFINITY; 3], 1.0, 0).unwrap();
        assert!(all.iter().all(|r| r.at_s == 0.0));
        assert_eq!(all.iter().filter(|r| r.client == 2).count(), 2);
        assert!(schedule(specs(2), &[f64::INFINITY, 1.0], 1.0, 0).is_err());
        assert!(schedule(specs(2), &[1.0], 0.0, 0).is_err());
        assert!(schedule(specs(2), &[0.0], 1.0, 0).is_err());
    }
}
