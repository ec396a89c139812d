//! Fairness between clients, measured as the Virtual Token Counter paper measures it (Sheng et
//! al., "Fairness in Serving Large Language Models", OSDI 2024): the service a client receives
//! is its input tokens plus twice its output tokens (w_p = 1, w_q = 2), and a scheduler is fair
//! when two clients that are both backlogged over an interval receive service that differs by
//! a bounded amount over it, however long the interval.
//!
//! From the client side: a request's input tokens count as served when its first chunk
//! arrives (the prompt has been prefilled), its output tokens as their chunks arrive; a client
//! is backlogged while it has a request sent and not finished. Time is cut into buckets; the
//! gap between clients f and g over a run of buckets in which both are backlogged throughout
//! is the largest |W_f(t1, t2) − W_g(t1, t2)| over bucket boundaries t1 < t2 within the run.

use super::metrics::RequestOutcome;
use serde::Serialize;

pub const INPUT_WEIGHT: f64 = 1.0;
pub const OUTPUT_WEIGHT: f64 = 2.0;

#[derive(Clone, Debug, Serialize)]
pub struct Fairness {
    pub bucket_s: f64,
    /// service[client][bucket]: weighted tokens received in the bucket.
    pub service: Vec<Vec<f64>>,
    /// backlogged[client][bucket]: a request of the client was in flight all through it.
    pub backlogged: Vec<Vec<bool>>,
    pub total_service: Vec<f64>,
    /// The largest service gap between two clients both backlogged, and which two.
    pub max_gap: f64,
    pub max_gap_clients: Option<(usize, usize)>,
}

pub fn fairness(outcomes: &[RequestOutcome], clients: usize, bucket_s: f64) -> Fairness {
    let end = outcomes.iter().map(|r| r.done_s()).fold(0.0, f64::max);
    let buckets = ((end / bucket_s).ceil() as usize).max(1);
    let mut service = vec![vec![0.0; buckets]; clients];
    let bucket_of = |t: f64| ((t / bucket_s) as usize).min(buckets - 1);
    for r in outcomes.iter().filter(|r| r.client < clients) {
        let Some(&first) = r.chunk_s.first() else {
            continue;
        };
        let s = &mut service[r.client];
        s[bucket_of(r.sent_s + first)] += INPUT_WEIGHT * r.prompt_tokens as f64;
        // A chunk may carry several tokens; without per-chunk counts, the output tokens are
        // spread evenly over the chunks (one each when the server streams token by token).
        let per_chunk = if r.ok() {
            r.output_tokens as f64 / r.chunk_s.len() as f64
        } else {
            1.0
        };
        for &c in &r.chunk_s {
            s[bucket_of(r.sent_s + c)] += OUTPUT_WEIGHT * per_chunk;
        }
    }
    let mut backlogged = vec![vec![false; buckets]; clients];
    for (c, row) in backlogged.iter_mut().enumerate() {
        let mut spans: Vec<(f64, f64)> = outcomes
            .iter()
            .filter(|r| r.client == c)
            .map(|r| (r.sent_s, r.done_s()))
            .collect();
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut merged: Vec<(f64, f64)> = Vec::new();
        for (a, b) in spans {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        for (i, cell) in row.iter_mut().enumerate() {
            let (lo, hi) = (i as f64 * bucket_s, (i + 1) as f64 * bucket_s);
            *cell = merged.iter().any(|&(a, b)| a <= lo && b >= hi);
        }
    }
    let mut max_gap = 0.0;
    let mut max_gap_clients = None;
    for f in 0..clients {
        for g in f + 1..clients {
            let gap = pair_gap(&service[f], &service[g], &backlogged[f], &backlogged[g]);
            if gap > max_gap {
                max_gap = gap;
                max_gap_clients = Some((f, g));
            }
        }
    }
    Fairness {
        bucket_s,
        total_service: service.iter().map(|s| s.iter().sum()).collect(),
        service,
        backlogged,
        max_gap,
        max_gap_clients,
    }
}

/// Over each run of buckets where both are backlogged, the running difference D of their
/// service from the run's start: the largest |W_f − W_g| over a sub-interval is max D − min D.
fn pair_gap(sf: &[f64], sg: &[f64], bf: &[bool], bg: &[bool]) -> f64 {
    let (mut best, mut d, mut lo, mut hi) = (0.0f64, 0.0, 0.0f64, 0.0f64);
    for i in 0..sf.len() {
        if bf[i] && bg[i] {
            d += sf[i] - sg[i];
            lo = lo.min(d);
            hi = hi.max(d);
            best = best.max(hi - lo);
        } else {
            (d, lo, hi) = (0.0, 0.0, 0.0);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's requests back to back over [0, 10 s), each of one chunk per second.
    fn busy(client: usize, tokens_per_s: u64, from: f64, to: f64) -> Vec<RequestOutcome> {
        let mut out = vec![];
        let mut t = from;
        while t < to {
            out.push(RequestOutcome {
                client,
                sent_s: t,
                prompt_tokens: 0,
                output_tokens: tokens_per_s,
                chunk_s: vec![0.5],
                ttft_s: 0.5,
                e2el_s: 1.0,
                ..Default::default()
            });
            t += 1.0;
        }
        out
    }

    #[test]
    fn the_gap_grows_under_unequal_service_and_stops_when_one_leaves() {
        // Client 0 gets 3 tokens a second, client 1 one; both backlogged for 10 s, then client
        // 1 alone for 5 s more, which adds nothing to the gap.
        let mut rs = busy(0, 3, 0.0, 10.0);
        rs.extend(busy(1, 1, 0.0, 15.0));
        let f = fairness(&rs, 2, 1.0);
        assert_eq!(f.service[0].len(), 15);
        assert_eq!(f.total_service, vec![60.0, 30.0]);
        assert!(f.backlogged[0][..10].iter().all(|&b| b) && !f.backlogged[0][10]);
        // 10 s × (6 − 2) weighted tokens per second.
        assert_eq!(f.max_gap, 40.0);
        assert_eq!(f.max_gap_clients, Some((0, 1)));
        // Equal service: no gap.
        let mut even = busy(0, 2, 0.0, 10.0);
        even.extend(busy(1, 2, 0.0, 10.0));
        assert_eq!(fairness(&even, 2, 1.0).max_gap, 0.0);
    }

    #[test]
    fn the_gap_is_the_largest_swing_not_the_final_difference() {
        // D rises by 4 for 3 buckets and falls by 4 for 3: the final difference is 0, the gap 12.
        let sf = [4.0, 4.0, 4.0, 0.0, 0.0, 0.0];
        let sg = [0.0, 0.0, 0.0, 4.0, 4.0, 4.0];
        let all = [true; 6];
        assert_eq!(pair_gap(&sf, &sg, &all, &all), 12.0);
        let mut broken = all;
        broken[3] = false;
        assert_eq!(pair_gap(&sf, &sg, &all, &broken), 12.0);
        broken[1] = false;
        assert_eq!(pair_gap(&sf, &sg, &all, &broken), 8.0);
    }
}
