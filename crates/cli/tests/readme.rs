//! Every command line of the README's examples runs, so the README cannot drift from the tool.
//!
//! Each example is listed below exactly as the README writes it (its comment left out), with the
//! substitutions that make it small: a tiny config for a preset that would take minutes, fewer
//! steps, paths in a temporary folder. An example the table does not list, or a listed one the
//! README no longer has, fails the test. Examples for a GPU run only where there is one; without
//! one they must fail saying what to do.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, PartialEq)]
enum Needs {
    Cpu,
    Gpu,
}

/// (the README's command, substitutions, what it needs). `{tiny}` is a tiny config, `{tmp}` the
/// temporary folder, `{text}` a text file, `{results}` a study's results.json.
type Example = (&'static str, &'static [(&'static str, &'static str)], Needs);

const EXAMPLES: &[Example] = &[
    ("tperf model small", &[], Needs::Cpu),
    (
        "tperf model gpt2-124m --phase decode --seq 1024 --dtype bf16",
        &[],
        Needs::Cpu,
    ),
    (
        "tperf model path/to/config.json --hw a100-80gb --batch 1 --seq 4096 --recompute full",
        &[("path/to/config.json", "bench/configs/llama-405b-class.json")],
        Needs::Cpu,
    ),
    ("tperf model small --attention naive --json", &[], Needs::Cpu),
    ("tperf plan fit --gpus 1,4 --hw h100-sxm", &[], Needs::Cpu),
    (
        "tperf plan train gpt2-124m --tokens 10B --gpus 8 --mfu 0.4",
        &[],
        Needs::Cpu,
    ),
    (
        "tperf plan kv bench/configs/llama-405b-class.json --budget 640GiB --dtype bf16",
        &[],
        Needs::Cpu,
    ),
    ("tperf plan dp gpt2-355m --gpus 2,4,8", &[], Needs::Cpu),
    ("tperf model gpt2-124m --gpus 8 --zero1", &[], Needs::Cpu),
    ("tperf hw list", &[], Needs::Cpu),
    ("tperf hw measure", &[], Needs::Cpu),
    ("tperf hw measure --device cuda", &[], Needs::Gpu),
    (
        "tperf calibrate --device cpu",
        &[("--device cpu", "--device cpu --steps 1 --out {tmp}/cal.json")],
        Needs::Cpu,
    ),
    (
        "tperf bench small --batch 1 --seq 128",
        &[("small", "{tiny}"), ("128", "16")],
        Needs::Cpu,
    ),
    (
        "tperf bench --sizes small,medium --warmup 0,1,2 --steps 5",
        &[("small,medium", "{tiny},{tiny}"), ("--steps 5", "--steps 1")],
        Needs::Cpu,
    ),
    (
        "tperf bench small --batch 1,2,4 --seq 64 --phase fwd_bwd --dtype fp32,bf16 --out rows.jsonl",
        &[("small", "{tiny}"), ("64", "16"), ("rows.jsonl", "{tmp}/rows.jsonl")],
        Needs::Cpu,
    ),
    (
        "tperf bench gpt2-124m --ranks 1,2,4 --scaling weak --batch 2 --seq 128 --steps 5 --json scaling.json",
        &[
            ("gpt2-124m", "{tiny}"),
            ("1,2,4", "1,2"),
            ("128", "16"),
            ("--steps 5", "--steps 2 --warmup 1"),
            ("scaling.json", "{tmp}/scaling.json"),
        ],
        Needs::Cpu,
    ),
    (
        "tperf profile small --batch 1 --seq 128 --trace trace.json",
        &[("small", "{tiny}"), ("128", "16"), ("trace.json", "{tmp}/trace.json")],
        Needs::Cpu,
    ),
    (
        "tperf attention --dims 16,64 --seqs 256,1024,4096",
        &[("256,1024,4096", "64,128")],
        Needs::Cpu,
    ),
    ("tperf precision", &[], Needs::Cpu),
    (
        "tperf bench --sizes small,medium --dtype fp32,bf16 --batch 4 --seq 256 --device cuda",
        &[],
        Needs::Gpu,
    ),
    (
        "tperf bench gpt2-124m --phase decode --seq 384 --batch 1,32,128 --dtype bf16 --device cuda --temperature 0 --back-to-back",
        &[],
        Needs::Gpu,
    ),
    (
        "tperf profile small --batch 4 --seq 256 --dtype bf16 --device cuda",
        &[],
        Needs::Gpu,
    ),
    (
        "tperf profile small --batch 4 --seq 256 --dtype bf16 --device cuda --counters",
        &[],
        Needs::Gpu,
    ),
    ("tperf counters", &[], Needs::Gpu),
    ("tperf conformance", &[], Needs::Gpu),
    (
        "tperf report tperf-out/<run-id>/results.json",
        &[("tperf-out/<run-id>/results.json", "{results}")],
        Needs::Cpu,
    ),
    (
        "tperf train gpt2-124m --data book.txt --steps 2000 --batch 8 --seq 256 --checkpoint run.safetensors",
        &[
            ("gpt2-124m", "{tiny}"),
            ("book.txt", "{text}"),
            ("2000", "3"),
            ("--batch 8", "--batch 2"),
            ("256", "16"),
            ("run.safetensors", "{tmp}/run.safetensors"),
        ],
        Needs::Cpu,
    ),
    (
        "tperf train gpt2-124m --data book.txt --steps 2000 --batch 8 --seq 256 --resume run.safetensors",
        &[
            ("gpt2-124m", "{tiny}"),
            ("book.txt", "{text}"),
            ("2000", "3"),
            ("--batch 8", "--batch 2"),
            ("256", "16"),
            ("run.safetensors", "{tmp}/run.safetensors"),
        ],
        Needs::Cpu,
    ),
    (
        "tperf train gpt2-124m --synthetic --steps 200 --batch 8 --seq 256 --ranks 2",
        &[
            ("gpt2-124m", "{tiny}"),
            ("200", "2"),
            ("--batch 8", "--batch 2"),
            ("256", "16"),
        ],
        Needs::Cpu,
    ),
    (
        "tperf train gpt2-124m --synthetic --steps 200 --batch 8 --seq 256 --dtype bf16 --gpus 4",
        &[],
        Needs::Gpu,
    ),
    (
        "tperf bench gpt2-124m --gpus 1,2,4,8 --scaling strong --batch 64 --seq 1024 --dtype bf16",
        &[],
        Needs::Gpu,
    ),
    (
        "tperf generate run.safetensors --prompt \"Once upon a time\" --max-new 200 --temperature 0.8",
        &[("run.safetensors", "{tmp}/run.safetensors"), ("200", "5")],
        Needs::Cpu,
    ),
    (
        "tperf generate small --prompt \"hello\" --no-kv-cache",
        &[("small", "{tiny}")],
        Needs::Cpu,
    ),
    (
        "tperf generate gpt2 --prompt \"hello\" --dtype bf16 --device cuda --no-graphs",
        &[],
        Needs::Gpu,
    ),
    (
        "tperf generate small --prompt \"hello\" --top-k 50 --top-p 0.9 --temperature 0.8",
        &[("small", "{tiny}")],
        Needs::Cpu,
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The command lines of the README's Examples block, each without its comment.
fn readme_examples() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = text.find("## Examples").expect("an Examples section");
    let block = &text[start..];
    let open = block.find("```sh\n").expect("a code block") + "```sh\n".len();
    let close = block[open..].find("```").expect("the block ends") + open;
    block[open..close]
        .lines()
        .map(|l| strip_comment(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The line up to a `#` that starts a shell comment (after a space, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted && prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// Words as the shell splits them, for the double quotes the README uses.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

fn has_gpu() -> bool {
    Path::new("/proc/driver/nvidia/version").exists()
}

#[test]
fn the_examples_table_parses_like_a_shell() {
    assert_eq!(
        words("tperf generate x --prompt \"Once upon a time\" --top-k 5"),
        [
            "tperf",
            "generate",
            "x",
            "--prompt",
            "Once upon a time",
            "--top-k",
            "5"
        ]
    );
    assert_eq!(strip_comment("tperf a \"#b\"  # c"), "tperf a \"#b\"  ");
}

#[test]
fn every_readme_example_runs() {
    let readme = readme_examples();
    let listed: Vec<&str> = EXAMPLES.iter().map(|e| e.0).collect();
    for line in &readme {
        assert!(
            listed.contains(&line.as_str()),
            "the README example `{line}` is not in tests/readme.rs: add it (with what makes it small)"
        );
    }
    for l in &listed {
        assert!(
            readme.iter().any(|r| r == l),
            "tests/readme.rs lists `{l}`, which the README no longer has"
        );
    }

    let tmp = tempfile::tempdir().unwrap();
    let tiny = tmp.path().join("tiny.json");
    let cfg = serde_json::json!({
        "name": "tiny",
        "biases": {"attn_out": true, "lm_head": false, "mlp": true, "norm": true, "qkv": true},
        "causal": true, "context": 32, "d_ff": 64, "d_model": 16, "final_norm": true,
        "head_dim": 8, "mlp": "gelu", "n_heads": 2, "n_kv_heads": 2, "n_layers": 1,
        "norm": "layernorm", "norm_eps": 1e-5, "norm_placement": "pre",
        "positions": {"kind": "learned"}, "scale_embedding": false, "sliding_window": null,
        "tied_embeddings": true, "vocab_size": 256
    });
    std::fs::write(&tiny, cfg.to_string()).unwrap();
    let text = tmp.path().join("book.txt");
    std::fs::write(
        &text,
        "It was the best of times, it was the worst of times. ".repeat(40),
    )
    .unwrap();
    // `tperf report` re-renders a study's results: a model-only study writes one.
    let study = tmp.path().join("study");
    let o = Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args(["study", "--model-only", "--out"])
        .arg(&study)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results = std::fs::read_dir(&study)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("results.json"))
        .find(|p| p.exists())
        .expect("results.json");

    let place = |w: &str| {
        w.replace("{tiny}", tiny.to_str().unwrap())
            .replace("{tmp}", tmp.path().to_str().unwrap())
            .replace("{text}", text.to_str().unwrap())
            .replace("{results}", results.to_str().unwrap())
    };
    for (line, subs, needs) in EXAMPLES {
        if *needs == Needs::Gpu && has_gpu() {
            eprintln!("not run here (a GPU example; scripts/gpu-check.sh runs the GPU's): {line}");
            continue;
        }
        let mut small = line.to_string();
        for (from, to) in subs.iter() {
            assert!(small.contains(from), "`{from}` is not in `{line}`");
            small = small.replacen(from, to, 1);
        }
        let args: Vec<String> = words(&small).iter().skip(1).map(|w| place(w)).collect();
        let o = Command::new(env!("CARGO_BIN_EXE_tperf"))
            .args(&args)
            .current_dir(root())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        match needs {
            Needs::Cpu => assert!(o.status.success(), "`{line}` as `{args:?}` failed: {err}"),
            // Without a GPU, a GPU example fails at once and says what to do.
            Needs::Gpu => {
                assert_eq!(o.status.code(), Some(2), "`{line}`: {err}");
                assert!(
                    err.contains("--device cpu") || err.contains("needs a CUDA device"),
                    "`{line}`: {err}"
                );
            }
        }
    }
}
