//! The `tperf` command: model, measure and explain the cost of training and running
//! transformers.

mod commands;
#[cfg(test)]
mod fuzz_tests;
mod load;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tperf",
    version,
    about = "A transformer performance lab: model, measure and explain where the time and memory go",
    long_about = "tperf models the cost of training and running transformers op by op (FLOPs, bytes, \
arithmetic intensity, roofline time, memory), for any config on any GPU, without running it; \
measures the same schedule on this machine (the CPU backend, or an NVIDIA GPU with --device \
cuda[:N]) with the model's prediction beside every number; and explains it in tables, traces and an HTML report.\n\n\
Conventions: a FLOP is one add or one multiply (a matmul (m×k)(k×n) is 2mkn); causal attention \
counts the unmasked pairs; bytes are the minimum traffic (each input read once, each output \
written once); backward FLOPs come from each op's real backward computation."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analyse a model without running it: parameters, per-op FLOPs/bytes/roofline, memory, step time.
    Model(commands::model::ModelArgs),
    /// Sizing questions: what fits, how long training takes, KV-cache budgets, data-parallel cost.
    Plan(commands::plan::PlanArgs),
    /// Measure steps on this machine, with the model's prediction beside each.
    Bench(commands::bench::BenchArgs),
    /// Time every op of one step beside its model: per-op tables, a trace, the memory timeline.
    Profile(commands::profile::ProfileArgs),
    /// The student report's experiment: estimated against counted (Nsight Compute) FLOPs and DRAM bytes over batch sizes.
    Counters(commands::counters::CountersArgs),
    /// Naive against flash attention across head sizes and sequence lengths: time and memory.
    Attention(commands::attention::AttentionArgs),
    /// Check the CUDA backend against the CPU backend, op by op and model by model.
    Conformance(commands::conformance::ConformanceArgs),
    /// The hardware table, and this machine's measured ceilings.
    Hw(commands::hw::HwArgs),
    /// Fit the model to this machine: per-op curves from measured workloads, and their error on held-out ones.
    Calibrate(commands::calibrate::CalibrateArgs),
    /// Mixed precision with numbers: accumulation error, dtypes by policy, norm statistics.
    Precision(commands::precision::PrecisionArgs),
    /// Re-render the HTML report of a results.json.
    Report(commands::report::ReportArgs),
    /// The main job: model the seed's sizes here and on a reference GPU, measure here, write the report.
    Study(commands::study::StudyArgs),
    /// Train a model for real (CPU or GPU): progress, evaluation, checkpoints, resume, Ctrl-C.
    Train(commands::train::TrainArgs),
    /// Generate text from a checkpoint (or a preset's random weights), with timing: TTFT, TPOT, tokens/s.
    Generate(commands::generate::GenerateArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (continuous batching, paged KV cache).
    Serve(commands::serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(args) => commands::model::run(args),
        Command::Plan(args) => commands::plan::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Profile(args) => commands::profile::run(args),
        Command::Counters(args) => commands::counters::run(args),
        Command::Attention(args) => commands::attention::run(args),
        Command::Conformance(args) => commands::conformance::run(args),
        Command::Hw(args) => commands::hw::run(args),
        Command::Calibrate(args) => commands::calibrate::run(args),
        Command::Precision(args) => commands::precision::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Study(args) => commands::study::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Serve(args) => commands::serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            if e.is::<commands::Interrupted>() || e.is::<commands::Stopped>() {
                ExitCode::from(130)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

/// The error and its causes, joined by ": ", leaving out a cause whose text the message already
/// holds (an error that prints its source and also returns it as `source()` would otherwise read
/// "X: X").
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Cli;

    #[test]
    fn an_error_chain_does_not_repeat_its_cause() {
        let e = anyhow::anyhow!("cannot replace /tmp: Is a directory")
            .context("saving the checkpoint failed at step 3: cannot replace /tmp: Is a directory")
            .context("tperf train");
        assert_eq!(
            super::error_chain(&e),
            "tperf train: saving the checkpoint failed at step 3: cannot replace /tmp: Is a directory"
        );
    }
    use clap::CommandFactory;

    /// Clap checks the whole command definition: types, defaults, conflicts.
    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
