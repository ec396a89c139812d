//! Generated inputs against the parser and the model (not the engine): argument lists built from
//! tperf's own flags and hostile values, and configs with every size field drawn from edge values,
//! must give an error or an answer, never a panic. `TPERF_FUZZ_CASES` sets the cases per test
//! (default 10,000 each).

use crate::Cli;
use clap::Parser;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::cell::Cell;
use tperf_core::config::ModelConfig;
use tperf_core::cost::analysis::{self, Scenario, Workload};
use tperf_core::cost::hardware;
use tperf_core::schedule::{AttentionKernel, Options, Precision, Recompute};

fn cases() -> u32 {
    std::env::var("TPERF_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

const COMMANDS: &[&[&str]] = &[
    &["model"],
    &["plan", "fit"],
    &["plan", "train"],
    &["plan", "kv"],
    &["plan", "dp"],
    &["bench"],
    &["profile"],
    &["attention"],
    &["train"],
    &["generate"],
    &["hw", "list"],
    &["precision"],
    &["report"],
    &["study"],
];

const FLAGS: &[&str] = &[
    "--batch",
    "--seq",
    "--phase",
    "--dtype",
    "--attention",
    "--recompute",
    "--hw",
    "--gpus",
    "--zero1",
    "--json",
    "--csv",
    "--tokens",
    "--mfu",
    "--budget",
    "--contexts",
    "--sizes",
    "--steps",
    "--warmup",
    "--device",
    "--dims",
    "--seqs",
    "--prompt",
    "--max-new",
    "--top-k",
    "--top-p",
    "--temperature",
    "--lr",
    "--resume",
    "--override",
    "--no-kv-cache",
    "--no-fuse",
    "--all-layers",
    "--list",
    "--model-only",
    "--kernels",
];

const VALUES: &[&str] = &[
    "0",
    "1",
    "2",
    "-1",
    "7",
    "1024",
    "65536",
    "4294967297",
    "18446744073709551616",
    "1e300",
    "1e-300",
    "nan",
    "inf",
    "-inf",
    "",
    " ",
    "1,2,,4",
    "0,1",
    "small",
    "10B",
    "gpt2",
    "2T",
    "llama-405B",
    "report",
    "train",
    "decode",
    "prefill",
    "fwd_bwd",
    "bf16",
    "fp8",
    "flash",
    "naive",
    "full",
    "h100-sxm",
    "a100-80gb",
    "cpu",
    "cuda:99",
    "640GiB",
    "0GiB",
    "1e30GiB",
    "x.json",
    "💥",
    "--",
    "-",
    "0.5",
    "1.5",
];

/// `tperf model`'s own flags: those that take a value, and switches.
const MODEL_VALUED: &[&str] = &[
    "--batch",
    "--seq",
    "--phase",
    "--dtype",
    "--attention",
    "--recompute",
    "--hw",
    "--gpus",
];
const MODEL_SWITCHES: &[&str] = &[
    "--zero1",
    "--json",
    "--no-kv-cache",
    "--no-fuse",
    "--all-layers",
];
const MODEL_VALUES: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "8",
    "64",
    "1024",
    "4096",
    "99999999999",
    "-1",
    "",
    "train",
    "fwd_bwd",
    "forward",
    "prefill",
    "decode",
    "fp32",
    "bf16",
    "fp16",
    "flash",
    "naive",
    "none",
    "selective",
    "full",
    "h100-sxm",
    "a100-80gb",
    "cpu",
    "nope",
];

/// Half the lists are `tperf model` with its own flags (most parse, and reach the model); the
/// other half any command with any words (most are refused by the parser).
fn arg_list() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![model_arg_list(), any_arg_list()]
}

fn model_arg_list() -> impl Strategy<Value = Vec<String>> {
    let model = prop::sample::select(&["small", "gpt2-124m", "llama-125M", "report", "10B"][..]);
    let pair = prop_oneof![
        3 => (prop::sample::select(MODEL_VALUED), prop::sample::select(MODEL_VALUES))
            .prop_map(|(f, v)| vec![f.to_string(), v.to_string()]),
        1 => prop::sample::select(MODEL_SWITCHES).prop_map(|f| vec![f.to_string()]),
    ];
    (model, prop::collection::vec(pair, 0..5)).prop_map(|(m, pairs)| {
        let mut v = vec!["tperf".to_string(), "model".to_string(), m.to_string()];
        v.extend(pairs.into_iter().flatten());
        v
    })
}

fn any_arg_list() -> impl Strategy<Value = Vec<String>> {
    let command = prop::sample::select(COMMANDS);
    let model = prop::sample::select(&["small", "gpt2-124m", "llama-13B", "10B", "nope", ""][..]);
    let word = prop_oneof![
        prop::sample::select(FLAGS).prop_map(str::to_string),
        prop::sample::select(VALUES).prop_map(str::to_string),
    ];
    (command, model, prop::collection::vec(word, 0..8)).prop_map(|(c, m, rest)| {
        let mut v = vec!["tperf".to_string()];
        v.extend(c.iter().map(|s| s.to_string()));
        v.push(m.to_string());
        v.extend(rest);
        v
    })
}

/// What `tperf model` computes for parsed arguments, without printing: the load and the
/// analysis (memory timeline included).
fn model_answer(args: &crate::commands::model::ModelArgs) -> bool {
    let Some(spec) = args.model.as_deref() else {
        return false;
    };
    let Ok(m) = crate::load::load(spec) else {
        return false;
    };
    let Ok(hw) = hardware::find(&args.hw) else {
        return false;
    };
    let sc = Scenario {
        workload: args.phase,
        batch: args.batch.unwrap_or(m.default_batch),
        seq: args.seq.unwrap_or(m.default_seq),
        opts: args.schedule.options(),
    };
    // Huge steps are a valid question for the model, but a slow one to ask thousands of times.
    if sc.batch.saturating_mul(sc.seq) > 1 << 20 || m.config.n_layers > 48 {
        return false;
    }
    let _ = crate::commands::model::analyze_with_timeline(&m.config, &sc, &hw);
    true
}

#[test]
fn generated_argument_lists_never_panic_the_parser_or_the_model() {
    let (parsed, analysed) = (Cell::new(0u32), Cell::new(0u32));
    runner()
        .run(&arg_list(), |argv| {
            if let Ok(cli) = Cli::try_parse_from(&argv) {
                parsed.set(parsed.get() + 1);
                if let crate::Command::Model(args) = cli.command {
                    if model_answer(&args) {
                        analysed.set(analysed.get() + 1);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "{} argument lists: {} parsed, {} analysed by the model",
        cases(),
        parsed.get(),
        analysed.get()
    );
    assert!(parsed.get() >= cases() / 10 && analysed.get() >= cases() / 50);
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 1usize..=96,
        1 => prop::sample::select(&[0usize, 1, 2, 3, 7, 64, 4096, 1 << 20, 1 << 31, usize::MAX][..]),
    ]
}

fn config() -> impl Strategy<Value = ModelConfig> {
    let base = tperf_core::presets::find("gpt2-124m")
        .map(|p| p.config)
        .expect("a preset");
    (
        (size(), size(), size(), size()),
        (0usize..=4, size(), size(), size()),
        (any::<bool>(), any::<bool>(), prop::option::of(size())),
    )
        .prop_map(
            move |(
                (vocab, context, d_model, d_ff),
                (layers, heads, kv, head_dim),
                (tied, causal, window),
            )| {
                let mut c = base.clone();
                c.vocab_size = vocab;
                c.context = context;
                // Most draws keep d_model = heads × head_dim, so they pass validation and reach
                // the model; the rest test validation itself.
                c.d_model = if d_model % 4 == 0 {
                    d_model
                } else {
                    heads.saturating_mul(head_dim)
                };
                c.d_ff = d_ff;
                c.n_layers = layers;
                c.n_heads = heads;
                c.n_kv_heads = if kv % 3 == 0 { kv } else { heads };
                c.head_dim = head_dim;
                c.tied_embeddings = tied;
                c.causal = causal;
                c.sliding_window = window;
                c
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::sample::select(
            &[
                Workload::Train,
                Workload::FwdBwd,
                Workload::Forward,
                Workload::Prefill,
                Workload::Decode,
            ][..],
        ),
        prop_oneof![1usize..=8, Just(0usize)],
        prop_oneof![1usize..=128, Just(0usize)],
        prop::sample::select(&[Precision::Fp32, Precision::Bf16, Precision::Fp16][..]),
        prop::sample::select(&[AttentionKernel::Flash, AttentionKernel::Naive][..]),
        prop::sample::select(&[Recompute::None, Recompute::Selective, Recompute::Full][..]),
        any::<(bool, bool)>(),
    )
        .prop_map(
            |(workload, batch, seq, precision, attention, recompute, (kv, fused))| Scenario {
                workload,
                batch,
                seq,
                opts: Options {
                    precision,
                    attention,
                    kv_cache: kv,
                    recompute,
                    fused,
                    data_parallel: None,
                    grad_accum: 1,
                },
            },
        )
}

#[test]
fn generated_configs_never_panic_the_model() {
    let hw = hardware::detect_local_cpu();
    let analysed = Cell::new(0u32);
    runner()
        .run(&(config(), scenario()), |(cfg, sc)| {
            // Through the config file loader's path: serialised, parsed, validated.
            let text = serde_json::to_string(&cfg).expect("a config serialises");
            let Ok(parsed) = serde_json::from_str::<ModelConfig>(&text) else {
                return Ok(());
            };
            if parsed.validate().is_err() {
                return Ok(());
            }
            // A valid config far larger than the model needs to answer is skipped for time:
            // the analysis walks every op of every layer.
            if parsed.d_model.saturating_mul(parsed.n_layers.max(1)) > 1 << 24 {
                return Ok(());
            }
            analysed.set(analysed.get() + 1);
            let _ = analysis::analyze(&parsed, &sc, &hw);
            let _ = tperf_bench::fit::check_within(
                tperf_bench::device::Device::Cpu,
                &parsed,
                &sc,
                &tperf_bench::fit::Budget {
                    bytes: 1 << 30,
                    source: "fuzz".into(),
                },
            );
            Ok(())
        })
        .unwrap();
    eprintln!("{} configs: {} valid and analysed", cases(), analysed.get());
    assert!(analysed.get() >= cases() / 10);
}
