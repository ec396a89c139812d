//! The server's own account of its steps, read from `/metrics` before and after a run: how
//! many steps it ran, how many sequences they carried, and how their wall time divides into
//! the model's part (device) and the engine's (host). Only tperf's engine publishes these
//! (`tperf_engine_step_seconds{part=…}`, `tperf_engine_step_sequences_total`); for any other
//! server [`StepTimes::parse`] finds nothing and the prediction stays the pure model.

/// Cumulative counters as one scrape shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTimes {
    pub steps: u64,
    pub sequences: u64,
    pub host_seconds: f64,
    pub device_seconds: f64,
    /// The decode-only steps among them (`tperf_engine_decode_step_seconds`) and the token
    /// rows of all steps; None from a server that does not split them.
    pub decode: Option<DecodeSteps>,
    pub tokens: Option<u64>,
    /// Of `device_seconds`, the host's wait for the device's result; None: not published.
    pub wait_seconds: Option<f64>,
}

/// The decode-only steps' counters (every row one token; the other steps carried prefill).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecodeSteps {
    pub steps: u64,
    pub sequences: u64,
    pub host_seconds: f64,
    pub device_seconds: f64,
    pub wait_seconds: f64,
}

/// One run's share of the counters: the difference of two scrapes.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct StepDelta {
    pub steps: u64,
    /// Mean sequences per step: the running batch the steps carried.
    pub mean_batch: f64,
    /// Mean host (engine) and device (model) seconds per step.
    pub host_seconds_per_step: f64,
    pub device_seconds_per_step: f64,
    /// Token rows per step (decode rows plus prefill chunks); None: not published.
    pub tokens_per_step: Option<f64>,
    /// The run's steps by kind, where the server splits them.
    pub by_kind: Option<StepKinds>,
}

/// A run's decode-only steps beside those that carried prefill: how many, and what each
/// kind cost a step (host and device), with the batch and tokens they carried.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepKinds {
    pub decode: KindDelta,
    pub with_prefill: KindDelta,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KindDelta {
    pub steps: u64,
    pub mean_batch: f64,
    pub host_seconds_per_step: f64,
    pub device_seconds_per_step: f64,
    /// Token rows per step; None where the server does not publish them.
    pub tokens_per_step: Option<f64>,
    /// Of the device part, the host's wait for the device's result a step (the rest is the
    /// host issuing the step); None where the server does not publish it.
    #[serde(default)]
    pub wait_seconds_per_step: Option<f64>,
}

/// One kind's counters over a run: steps, sequences, host, device and wait seconds, tokens.
struct KindTotals {
    steps: u64,
    sequences: f64,
    host: f64,
    device: f64,
    wait: Option<f64>,
    tokens: Option<f64>,
}

impl KindDelta {
    fn of(t: KindTotals) -> KindDelta {
        let n = t.steps.max(1) as f64;
        KindDelta {
            steps: t.steps,
            mean_batch: t.sequences / n,
            host_seconds_per_step: t.host / n,
            device_seconds_per_step: t.device / n,
            tokens_per_step: t.tokens.map(|x| x / n),
            wait_seconds_per_step: t.wait.map(|x| x / n),
        }
    }

    pub fn step_seconds(&self) -> f64 {
        self.host_seconds_per_step + self.device_seconds_per_step
    }
}

impl StepDelta {
    pub fn step_seconds(&self) -> f64 {
        self.host_seconds_per_step + self.device_seconds_per_step
    }
}

impl StepTimes {
    /// The counters in a Prometheus text exposition, or None when it has no step split (not
    /// a tperf server, or one from before the split was published).
    pub fn parse(text: &str) -> Option<StepTimes> {
        let mut host = None;
        let mut device = None;
        let mut steps = None;
        let mut sequences = None;
        let mut tokens = None;
        let mut decode = DecodeSteps::default();
        let mut decode_seen = 0;
        let mut wait = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name_labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (name, labels) = match name_labels.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (name_labels, ""),
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            let part = labels
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix("part="))
                .map(|p| p.trim_matches('"'));
            match (name, part) {
                ("tperf_engine_step_seconds_sum", Some("host")) => host = Some(v),
                ("tperf_engine_step_seconds_sum", Some("device")) => device = Some(v),
                ("tperf_engine_step_seconds_count", Some("host")) => steps = Some(v as u64),
                ("tperf_engine_step_sequences_total", _) => sequences = Some(v as u64),
                ("tperf_engine_step_tokens_total", _) => tokens = Some(v as u64),
                ("tperf_engine_decode_step_seconds_sum", Some("host")) => {
                    decode.host_seconds = v;
                    decode_seen |= 1;
                }
                ("tperf_engine_decode_step_seconds_sum", Some("device")) => {
                    decode.device_seconds = v;
                    decode_seen |= 2;
                }
                ("tperf_engine_decode_step_seconds_count", Some("host")) => {
                    decode.steps = v as u64;
                    decode_seen |= 4;
                }
                ("tperf_engine_decode_step_sequences_total", _) => decode.sequences = v as u64,
                ("tperf_engine_step_wait_seconds_total", _) => wait = Some(v),
                ("tperf_engine_decode_step_wait_seconds_total", _) => decode.wait_seconds = v,
                _ => {}
            }
        }
        Some(StepTimes {
            steps: steps?,
            sequences: sequences.unwrap_or(0),
            host_seconds: host?,
            device_seconds: device?,
            decode: (decode_seen == 7).then_some(decode),
            tokens,
            wait_seconds: wait,
        })
    }

    /// What ran between `before` and this scrape; None when no step did (or the server
    /// restarted between them and its counters went back).
    pub fn since(&self, before: &StepTimes) -> Option<StepDelta> {
        let steps = self.steps.checked_sub(before.steps).filter(|&n| n > 0)?;
        let n = steps as f64;
        let tokens = self
            .tokens
            .zip(before.tokens)
            .map(|(a, b)| a.saturating_sub(b) as f64);
        // The kinds are told apart only where both scrapes split them; the steps that carried
        // prefill are what the totals hold beyond the decode-only ones.
        let by_kind = self.decode.zip(before.decode).map(|(a, b)| {
            let d_steps = a.steps.saturating_sub(b.steps).min(steps);
            let d_seqs = a.sequences.saturating_sub(b.sequences) as f64;
            let d_host = a.host_seconds - b.host_seconds;
            let d_device = a.device_seconds - b.device_seconds;
            let all_seqs = self.sequences.saturating_sub(before.sequences) as f64;
            let all_wait = self
                .wait_seconds
                .zip(before.wait_seconds)
                .map(|(a, b)| a - b);
            let d_wait = all_wait.map(|_| a.wait_seconds - b.wait_seconds);
            StepKinds {
                decode: KindDelta::of(KindTotals {
                    steps: d_steps,
                    sequences: d_seqs,
                    host: d_host,
                    device: d_device,
                    wait: d_wait,
                    tokens: Some(d_seqs),
                }),
                with_prefill: KindDelta::of(KindTotals {
                    steps: steps - d_steps,
                    sequences: all_seqs - d_seqs,
                    host: self.host_seconds - before.host_seconds - d_host,
                    device: self.device_seconds - before.device_seconds - d_device,
                    wait: all_wait.zip(d_wait).map(|(w, d)| w - d),
                    tokens: tokens.map(|t| t - d_seqs),
                }),
            }
        });
        Some(StepDelta {
            steps,
            mean_batch: self.sequences.saturating_sub(before.sequences) as f64 / n,
            host_seconds_per_step: (self.host_seconds - before.host_seconds) / n,
            device_seconds_per_step: (self.device_seconds - before.device_seconds) / n,
            tokens_per_step: tokens.map(|t| t / n),
            by_kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP tperf_engine_steps_total Engine steps run.
tperf_engine_steps_total{model_name=\"m\"} 12
tperf_engine_step_seconds_sum{model_name=\"m\",part=\"host\"} 0.5
tperf_engine_step_seconds_count{model_name=\"m\",part=\"host\"} 10
tperf_engine_step_seconds_sum{model_name=\"m\",part=\"device\"} 2
tperf_engine_step_seconds_count{model_name=\"m\",part=\"device\"} 10
tperf_engine_step_sequences_total{model_name=\"m\"} 40
";

    #[test]
    fn a_run_is_the_difference_of_two_scrapes() {
        let before = StepTimes::parse(TEXT).unwrap();
        assert_eq!(
            before,
            StepTimes {
                steps: 10,
                sequences: 40,
                host_seconds: 0.5,
                device_seconds: 2.0,
                decode: None,
                tokens: None,
                wait_seconds: None,
            }
        );
        let after = StepTimes {
            steps: 14,
            sequences: 72,
            host_seconds: 0.7,
            device_seconds: 3.0,
            decode: None,
            tokens: None,
            wait_seconds: None,
        };
        let d = after.since(&before).unwrap();
        // 4 steps carried 32 sequences; 0.2 s of host and 1 s of device time among them.
        assert_eq!(d.steps, 4);
        assert_eq!(d.mean_batch, 8.0);
        assert!((d.host_seconds_per_step - 0.05).abs() < 1e-12);
        assert!((d.device_seconds_per_step - 0.25).abs() < 1e-12);
        assert!((d.step_seconds() - 0.3).abs() < 1e-12);
        assert_eq!(before.since(&before), None, "no step ran");
        assert_eq!(before.since(&after), None, "counters that went back");
        assert_eq!(d.by_kind, None, "a server that does not split the kinds");
    }

    #[test]
    fn the_steps_with_prefill_are_the_totals_beyond_the_decode_only_ones() {
        let split = "tperf_engine_step_tokens_total{model_name=\"m\"} 500
tperf_engine_decode_step_seconds_sum{model_name=\"m\",part=\"host\"} 0.25
tperf_engine_decode_step_seconds_count{model_name=\"m\",part=\"host\"} 8
tperf_engine_decode_step_seconds_sum{model_name=\"m\",part=\"device\"} 1.0
tperf_engine_decode_step_seconds_count{model_name=\"m\",part=\"device\"} 8
tperf_engine_decode_step_sequences_total{model_name=\"m\"} 24
tperf_engine_step_wait_seconds_total{model_name=\"m\"} 1.5
tperf_engine_decode_step_wait_seconds_total{model_name=\"m\"} 0.75
";
        let before = StepTimes::parse(&format!("{TEXT}{split}")).unwrap();
        assert_eq!(
            before.decode,
            Some(DecodeSteps {
                steps: 8,
                sequences: 24,
                host_seconds: 0.25,
                device_seconds: 1.0,
                wait_seconds: 0.75,
            })
        );
        assert_eq!(before.tokens, Some(500));
        // 6 more steps: 4 decode-only (20 sequences, 0.1 s host, 0.4 s device) and 2 with
        // prefill (8 sequences, 300 token rows, 0.3 s host, 1.6 s device).
        let after = StepTimes {
            steps: 16,
            sequences: 68,
            host_seconds: 0.9,
            device_seconds: 4.0,
            decode: Some(DecodeSteps {
                steps: 12,
                sequences: 44,
                host_seconds: 0.35,
                device_seconds: 1.4,
                wait_seconds: 1.05,
            }),
            tokens: Some(820),
            wait_seconds: Some(2.7),
        };
        let k = after.since(&before).unwrap().by_kind.unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert_eq!((k.decode.steps, k.with_prefill.steps), (4, 2));
        assert!(close(k.decode.mean_batch, 5.0) && close(k.with_prefill.mean_batch, 4.0));
        assert!(close(k.decode.host_seconds_per_step, 0.025));
        assert!(close(k.decode.device_seconds_per_step, 0.1));
        assert!(close(k.with_prefill.host_seconds_per_step, 0.15));
        assert!(close(k.with_prefill.device_seconds_per_step, 0.8));
        // 320 token rows in all, 20 of them the decode steps' single tokens.
        assert_eq!(k.decode.tokens_per_step, Some(5.0));
        assert_eq!(k.with_prefill.tokens_per_step, Some(150.0));
        // Waits: 1.2 s in all, 0.3 s of it the decode-only steps'.
        assert!(close(k.decode.wait_seconds_per_step.unwrap(), 0.075));
        assert!(close(k.with_prefill.wait_seconds_per_step.unwrap(), 0.45));
    }

    #[test]
    fn a_server_without_the_split_gives_none() {
        assert_eq!(StepTimes::parse("vllm:num_requests_running 3\n"), None);
        assert_eq!(StepTimes::parse(""), None);
    }
}
