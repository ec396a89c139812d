//! What the engine counts, read as a snapshot and written in Prometheus' text format.

use std::fmt::Write;

/// Upper bounds (seconds) of the latency histograms: 1 ms to 80 s, as vLLM's.
pub const LATENCY_BUCKETS_S: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0,
];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Per bucket of [`LATENCY_BUCKETS_S`] (not cumulative), and one past the last.
    pub counts: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, s: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS_S.len() + 1];
        }
        let at = LATENCY_BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.counts[at] += 1;
        self.sum_s += s;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            cum += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum_s);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    /// Finished requests by reason: stop, length, cancelled, error.
    pub finished: [u64; 4],
    pub preemptions: u64,
    pub steps: u64,
    /// Wall time of the steps that ran rows, split where the engine hands the step to the
    /// model: `device` is the model's part (inputs written, the ragged forward and the per-row
    /// sampling issued, the sampled ids read back, so on a GPU it ends when the device has
    /// finished), `host` the engine's own part around it (scheduling, the block manager,
    /// each sampled token's handling: detokenising, stop strings, the sinks that feed the
    /// HTTP streams). Over `steps` steps; the benchmark reads them to cost the host per step.
    pub step_host_seconds: f64,
    pub step_device_seconds: f64,
    /// Sequences scheduled, summed over the steps (÷ steps: the mean running batch).
    pub step_sequences: u64,
    /// Token rows the steps computed (a decode row is one token, a prefill chunk its length).
    pub step_tokens: u64,
    /// The same split for the decode-only steps among `steps` (every row one token: the steps a
    /// backend may replay from a CUDA graph); the rest carried prefill, eagerly. Serving's
    /// throughput is decided by how the two kinds cost, so `/metrics` keeps them apart.
    pub decode_steps: u64,
    pub decode_step_host_seconds: f64,
    pub decode_step_device_seconds: f64,
    pub decode_step_sequences: u64,
    /// The part of `step_device_seconds` (and of the decode-only steps' share) the host spent
    /// blocked on the sampled ids, waiting for the device to finish the step; the rest of the
    /// device part is the host issuing it (layout, inputs written, launches or a graph replay).
    pub step_wait_seconds: f64,
    pub decode_step_wait_seconds: f64,
    /// Arrival to the first generated token.
    pub ttft: Histogram,
    /// Between successive tokens of a request.
    pub itl: Histogram,
}

impl Metrics {
    /// The Prometheus text exposition (names prefixed `tperf:` in vLLM's manner).
    pub fn prometheus(&self, model: &str) -> String {
        let mut o = String::new();
        let label = format!("model_name=\"{}\"", model.replace(['"', '\\', '\n'], "_"));
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{label}}} {v}"
            );
        };
        gauge(
            &mut o,
            "tperf_num_requests_running",
            "Requests in the running batch.",
            self.running as f64,
        );
        gauge(
            &mut o,
            "tperf_num_requests_waiting",
            "Requests waiting to be admitted.",
            self.waiting as f64,
        );
        gauge(
            &mut o,
            "tperf_kv_blocks_used",
            "KV cache blocks held by requests.",
            self.kv_blocks_used as f64,
        );
        gauge(
            &mut o,
            "tperf_kv_blocks_total",
            "KV cache blocks in the pool.",
            self.kv_blocks_total as f64,
        );
        let usage = if self.kv_blocks_total > 0 {
            self.kv_blocks_used as f64 / self.kv_blocks_total as f64
        } else {
            0.0
        };
        gauge(
            &mut o,
            "tperf_kv_cache_usage_perc",
            "Fraction of KV cache blocks in use.",
            usage,
        );
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{label}}} {v}"
            );
        };
        counter(
            &mut o,
            "tperf_prompt_tokens_total",
            "Prompt tokens prefilled (recomputation excluded).",
            self.prompt_tokens,
        );
        counter(
            &mut o,
            "tperf_generation_tokens_total",
            "Tokens generated.",
            self.generation_tokens,
        );
        counter(
            &mut o,
            "tperf_num_preemptions_total",
            "Requests preempted for KV blocks (recomputed later).",
            self.preemptions,
        );
        counter(
            &mut o,
            "tperf_engine_steps_total",
            "Engine steps run.",
            self.steps,
        );
        let name = "tperf_engine_step_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Wall time of the engine's steps, by part: the model's (device: the forward, sampling and the ids read back) and the engine's own (host: scheduling, block manager, token handling, detokenising, streaming).\n# TYPE {name} summary"
        );
        for (part, seconds) in [
            ("host", self.step_host_seconds),
            ("device", self.step_device_seconds),
        ] {
            let _ = writeln!(
                o,
                "{name}_sum{{{label},part=\"{part}\"}} {seconds}\n{name}_count{{{label},part=\"{part}\"}} {}",
                self.steps
            );
        }
        counter(
            &mut o,
            "tperf_engine_step_sequences_total",
            "Sequences scheduled, summed over the steps (divided by the steps: the mean batch).",
            self.step_sequences,
        );
        counter(
            &mut o,
            "tperf_engine_step_tokens_total",
            "Token rows computed, summed over the steps (decode rows and prefill chunks).",
            self.step_tokens,
        );
        let name = "tperf_engine_decode_step_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} The decode-only steps among tperf_engine_step_seconds (every row one token; the others carried prefill), by the same parts.\n# TYPE {name} summary"
        );
        for (part, seconds) in [
            ("host", self.decode_step_host_seconds),
            ("device", self.decode_step_device_seconds),
        ] {
            let _ = writeln!(
                o,
                "{name}_sum{{{label},part=\"{part}\"}} {seconds}\n{name}_count{{{label},part=\"{part}\"}} {}",
                self.decode_steps
            );
        }
        counter(
            &mut o,
            "tperf_engine_decode_step_sequences_total",
            "Sequences of the decode-only steps, summed over them.",
            self.decode_step_sequences,
        );
        let seconds = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{label}}} {v}"
            );
        };
        seconds(
            &mut o,
            "tperf_engine_step_wait_seconds_total",
            "Of the steps' device part, the time the host waited for the device to finish (the rest is the host issuing the step).",
            self.step_wait_seconds,
        );
        seconds(
            &mut o,
            "tperf_engine_decode_step_wait_seconds_total",
            "The same for the decode-only steps.",
            self.decode_step_wait_seconds,
        );
        let name = "tperf_request_success_total";
        let _ = writeln!(
            o,
            "# HELP {name} Finished requests by reason.\n# TYPE {name} counter"
        );
        for (i, reason) in ["stop", "length", "cancelled", "error"].iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}{{{label},finished_reason=\"{reason}\"}} {}",
                self.finished[i]
            );
        }
        self.ttft.write(
            &mut o,
            "tperf_time_to_first_token_seconds",
            "Arrival to the first generated token.",
        );
        self.itl.write(
            &mut o,
            "tperf_inter_token_latency_seconds",
            "Time between successive tokens of a request.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let mut h = Histogram::default();
        h.observe(0.0005);
        h.observe(0.003);
        h.observe(100.0);
        let m = Metrics {
            ttft: h,
            ..Metrics::default()
        };
        let text = m.prometheus("m");
        assert!(text.contains("tperf_time_to_first_token_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("tperf_time_to_first_token_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("tperf_time_to_first_token_seconds_bucket{le=\"80\"} 2"));
        assert!(text.contains("tperf_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("tperf_time_to_first_token_seconds_count 3"));
        assert!(text.contains("tperf_kv_blocks_used{model_name=\"m\"} 0"));
    }

    /// The benchmark finds the step split by these exact names and labels.
    #[test]
    fn the_step_split_is_a_summary_per_part() {
        let m = Metrics {
            steps: 4,
            step_host_seconds: 0.25,
            step_device_seconds: 1.5,
            step_sequences: 10,
            step_tokens: 300,
            decode_steps: 3,
            decode_step_host_seconds: 0.125,
            decode_step_device_seconds: 0.75,
            decode_step_sequences: 6,
            step_wait_seconds: 1.25,
            decode_step_wait_seconds: 0.5,
            ..Metrics::default()
        };
        let text = m.prometheus("m");
        for line in [
            "tperf_engine_step_tokens_total{model_name=\"m\"} 300",
            "tperf_engine_decode_step_seconds_sum{model_name=\"m\",part=\"host\"} 0.125",
            "tperf_engine_decode_step_seconds_count{model_name=\"m\",part=\"device\"} 3",
            "tperf_engine_decode_step_seconds_sum{model_name=\"m\",part=\"device\"} 0.75",
            "tperf_engine_decode_step_sequences_total{model_name=\"m\"} 6",
            "tperf_engine_step_wait_seconds_total{model_name=\"m\"} 1.25",
            "tperf_engine_decode_step_wait_seconds_total{model_name=\"m\"} 0.5",
            "tperf_engine_step_seconds_sum{model_name=\"m\",part=\"host\"} 0.25",
            "tperf_engine_step_seconds_count{model_name=\"m\",part=\"host\"} 4",
            "tperf_engine_step_seconds_sum{model_name=\"m\",part=\"device\"} 1.5",
            "tperf_engine_step_seconds_count{model_name=\"m\",part=\"device\"} 4",
            "tperf_engine_step_sequences_total{model_name=\"m\"} 10",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
