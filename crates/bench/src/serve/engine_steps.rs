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
                _ => {}
            }
        }
        Some(StepTimes {
            steps: steps?,
            sequences: sequences.unwrap_or(0),
            host_seconds: host?,
            device_seconds: device?,
        })
    }

    /// What ran between `before` and this scrape; None when no step did (or the server
    /// restarted between them and its counters went back).
    pub fn since(&self, before: &StepTimes) -> Option<StepDelta> {
        let steps = self.steps.checked_sub(before.steps).filter(|&n| n > 0)?;
        let n = steps as f64;
        Some(StepDelta {
            steps,
            mean_batch: self.sequences.saturating_sub(before.sequences) as f64 / n,
            host_seconds_per_step: (self.host_seconds - before.host_seconds) / n,
            device_seconds_per_step: (self.device_seconds - before.device_seconds) / n,
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
                device_seconds: 2.0
            }
        );
        let after = StepTimes {
            steps: 14,
            sequences: 72,
            host_seconds: 0.7,
            device_seconds: 3.0,
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
    }

    #[test]
    fn a_server_without_the_split_gives_none() {
        assert_eq!(StepTimes::parse("vllm:num_requests_running 3\n"), None);
        assert_eq!(StepTimes::parse(""), None);
    }
}
