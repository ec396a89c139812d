//! What a new user hits (issue 15): memory predicted before every allocation, explicit devices
//! honoured, paths checked before work, `--resume` comparing every flag, a study that keeps its
//! finished sections when interrupted, and help that says what the tool does.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tperf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args(args)
        .output()
        .expect("the tperf binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A GPT-2-style config of a few tens of thousands of parameters.
fn tiny_config(dir: &Path, name: &str, vocab: usize) -> PathBuf {
    let cfg = serde_json::json!({
        "name": name,
        "biases": {"attn_out": true, "lm_head": false, "mlp": true, "norm": true, "qkv": true},
        "causal": true, "context": 32, "d_ff": 64, "d_model": 16, "final_norm": true,
        "head_dim": 8, "mlp": "gelu", "n_heads": 2, "n_kv_heads": 2, "n_layers": 1,
        "norm": "layernorm", "norm_eps": 1e-5, "norm_placement": "pre",
        "positions": {"kind": "learned"}, "scale_embedding": false, "sliding_window": null,
        "tied_embeddings": true, "vocab_size": vocab
    });
    let path = dir.join(format!("{name}.json"));
    fs::write(&path, cfg.to_string()).expect("write config");
    path
}

/// Refused with exit status 2, with `message` in stderr, in well under the time the run
/// would take; nothing was allocated (no signal, no abort).
fn refused_fast(args: &[&str], message: &str) {
    let started = Instant::now();
    let o = tperf(args);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    assert!(
        stderr(&o).contains(message),
        "{args:?}: wanted '{message}' in: {}",
        stderr(&o)
    );
    assert!(took < Duration::from_secs(30), "{args:?} took {took:?}");
}

#[test]
fn a_step_that_will_not_fit_is_refused_before_allocating() {
    let oom = "out of memory, predicted before allocating";
    refused_fast(
        &["profile", "small", "--batch", "100000", "--seq", "1024"],
        oom,
    );
    let o = tperf(&["profile", "small", "--batch", "100000", "--seq", "1024"]);
    // What would fit: the largest batch, with its prediction.
    assert!(stderr(&o).contains("--batch "), "{}", stderr(&o));
    assert!(stderr(&o).contains("GiB"), "{}", stderr(&o));
    refused_fast(
        &["train", "10B", "--batch", "1", "--seq", "64", "--synthetic"],
        oom,
    );
    refused_fast(&["generate", "10B", "--prompt", "hi"], oom);
    refused_fast(&["profile", "10B", "--phase", "forward"], oom);
    refused_fast(&["bench", "10B", "--phase", "forward", "--steps", "1"], oom);
}

fn has_gpu() -> bool {
    // A GPU machine runs `cuda`; this checks what the tool itself concludes.
    let o = tperf(&["hw", "list"]);
    o.status.success() && Path::new("/proc/driver/nvidia/version").exists()
}

#[test]
fn an_explicit_gpu_that_is_not_there_is_an_error_and_auto_falls_back_once() {
    if has_gpu() {
        eprintln!("skipped: this machine has a GPU");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "tiny", 256);
    for device in ["cuda", "cuda:7"] {
        let o = tperf(&[
            "bench",
            s(&cfg),
            "--device",
            device,
            "--steps",
            "1",
            "--warmup",
            "0",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("use --device cpu"), "{}", stderr(&o));
        let o = tperf(&[
            "train",
            s(&cfg),
            "--synthetic",
            "--steps",
            "1",
            "--device",
            device,
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("use --device cpu"), "{}", stderr(&o));
    }
    let o = tperf(&[
        "bench",
        s(&cfg),
        "--steps",
        "1",
        "--warmup",
        "0",
        "--phase",
        "forward",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).matches("running on the CPU").count(),
        1,
        "{}",
        stderr(&o)
    );
    // Progress without a terminal: a line per row.
    assert!(stderr(&o).contains("bench row 1/1"), "{}", stderr(&o));
}

fn train_args<'a>(cfg: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        cfg,
        "--synthetic",
        "--steps",
        "4",
        "--batch",
        "1",
        "--seq",
        "8",
        "--eval-every",
        "0",
        "--device",
        "cpu",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn paths_are_checked_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "tiny", 256);
    let folder = dir.path().join("a-folder");
    fs::create_dir(&folder).unwrap();
    for (flag, path, message) in [
        ("--checkpoint", s(&folder), "is a folder"),
        (
            "--checkpoint",
            "/proc/tperf-no/run.safetensors",
            "cannot create /proc/tperf-no",
        ),
        ("--log", s(&folder), "is a folder"),
    ] {
        let o = tperf(&train_args(s(&cfg), &[flag, path]));
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(message), "{}", stderr(&o));
        assert!(
            !stdout(&o).contains("summary"),
            "no step ran: {}",
            stdout(&o)
        );
        assert_eq!(
            stderr(&o).matches(message).count(),
            1,
            "said once: {}",
            stderr(&o)
        );
    }
    assert!(!dir.path().join("a-folder.csv").exists());
    let trace = tperf(&["profile", s(&cfg), "--trace", s(&folder), "--device", "cpu"]);
    assert!(stderr(&trace).contains("is a folder"), "{}", stderr(&trace));
}

#[test]
fn resume_refuses_changed_flags_unless_overridden_and_its_log_has_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "tiny", 256);
    let ckpt = dir.path().join("run.safetensors");
    let log = dir.path().join("run.csv");
    let o = tperf(&train_args(
        s(&cfg),
        &["--checkpoint", s(&ckpt), "--stop-at", "2"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    // A session that ran on past its last save before it was killed: rows 3 and 4 are in the
    // log but not in the checkpoint.
    let mut text = fs::read_to_string(&log).unwrap();
    text.push_str("3,1e-4,5.5,,8,0.001,8000.0,false\n4,1e-4,5.5,,8,0.001,8000.0,false\n");
    fs::write(&log, text).unwrap();

    let changed = [
        ("--batch", "2"),
        ("--lr", "0.001"),
        ("--seed", "7"),
        ("--dtype", "bf16"),
        ("--warmup", "1"),
        ("--weight-decay", "0"),
        ("--grad-clip", "0.5"),
        ("--min-lr-ratio", "0.5"),
        ("--steps", "6"),
        ("--attention", "naive"),
    ];
    for (flag, value) in changed {
        let mut args = train_args(s(&cfg), &["--resume", s(&ckpt)]);
        // The later value of a repeated flag is not what clap takes: replace it in place.
        match args.iter().position(|a| *a == flag) {
            Some(i) => args[i + 1] = value,
            None => args.extend([flag, value]),
        }
        let o = tperf(&args);
        assert_eq!(o.status.code(), Some(2), "{flag}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("{flag} "))
                && stderr(&o).contains(&format!("{value} now")),
            "{flag}: {}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("--override"), "{}", stderr(&o));
    }
    // A different model is named, with the checkpoint's.
    let other = tiny_config(dir.path(), "other", 128);
    let o = tperf(&train_args(s(&other), &["--resume", s(&ckpt)]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("holds tiny") && stderr(&o).contains("not other"),
        "{}",
        stderr(&o)
    );

    let mut args = train_args(s(&cfg), &["--resume", s(&ckpt), "--override"]);
    let i = args.iter().position(|a| *a == "--batch").unwrap();
    args[i + 1] = "2";
    let o = tperf(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--batch 1 in the checkpoint, 2 now"),
        "{}",
        stderr(&o)
    );
    let steps: Vec<u64> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4], "no duplicate step rows");
    // Nothing temporary is left beside the checkpoint.
    for f in fs::read_dir(dir.path()).unwrap().flatten() {
        assert!(
            !f.file_name().to_string_lossy().contains(".tmp-"),
            "{:?}",
            f.file_name()
        );
    }
}

#[test]
fn generate_refuses_a_tokenizer_other_than_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    // GPT-2's vocabulary, so the default tokenizer is gpt2.
    let cfg = tiny_config(dir.path(), "tiny-bpe", 50257);
    let ckpt = dir.path().join("bpe.safetensors");
    let mut args = train_args(s(&cfg), &["--checkpoint", s(&ckpt)]);
    let i = args.iter().position(|a| *a == "--steps").unwrap();
    args[i + 1] = "1";
    let o = tperf(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tperf(&[
        "generate",
        s(&ckpt),
        "--prompt",
        "hi",
        "--tokenizer",
        "byte",
        "--max-new",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("was trained with the gpt2 tokenizer"),
        "{}",
        stderr(&o)
    );
}

/// Sends SIGINT once the first section is on disk: the study stops after the measurement in
/// progress, says what it kept, exits 130, and leaves a valid results.json and its report.
#[test]
fn an_interrupted_study_keeps_its_finished_sections() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args(["study", "--device", "cpu", "--out", s(&out)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    let results = loop {
        let found = fs::read_dir(&out).ok().and_then(|mut d| {
            d.find_map(|e| e.ok().map(|e| e.path().join("results.json")))
                .filter(|p| p.exists())
        });
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "no section was written");
        std::thread::sleep(Duration::from_millis(20));
    };
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("interrupted: kept the model"),
        "{}",
        stderr(&o)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&results).unwrap()).expect("valid JSON");
    assert_eq!(doc["analyses"].as_array().map(Vec::len), Some(3));
    let run = results.parent().unwrap();
    assert!(run.join("report.html").is_file());
    for f in fs::read_dir(run).unwrap().flatten() {
        assert!(!f.file_name().to_string_lossy().starts_with('.'));
    }
    // The re-render reads it.
    let again = tperf(&["report", s(&results), "--out", s(&dir.path().join("again"))]);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn help_and_small_commands_say_what_the_tool_does_today() {
    let top = stdout(&tperf(&["--help"]));
    assert!(!top.contains("to come"), "{top}");
    let train = stdout(&tperf(&["train", "--help"]));
    assert!(!train.contains("(CPU backend)"), "{train}");

    let o = tperf(&["plan", "train", "gpt2-124m", "--tokens", "1e300"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--tokens 1e300 is more than"),
        "{}",
        stderr(&o)
    );

    // Every name `plan fit` lists is one `tperf model` takes.
    let fit = stdout(&tperf(&["plan", "fit", "--gpus", "1"]));
    for name in fit
        .split_whitespace()
        .filter(|w| w.starts_with("llama-"))
        .take(3)
    {
        let o = tperf(&["model", name]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
    }
    // The hint does not suggest what is already on.
    let o = tperf(&[
        "model",
        "llama-405B",
        "--batch",
        "1",
        "--recompute",
        "full",
        "--hw",
        "h100-sxm",
    ]);
    let text = stdout(&o);
    assert!(text.contains("to fit:"), "{text}");
    let hint = text.lines().find(|l| l.contains("to fit:")).unwrap();
    for on in ["--attention flash", "--recompute", "smaller --batch"] {
        assert!(!hint.contains(on), "{hint}");
    }

    let o = tperf(&["bench", "small", "--sizes", "medium"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

#[test]
fn profile_measures_the_forwards_peak() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "tiny", 256);
    let o = tperf(&[
        "profile",
        s(&cfg),
        "--batch",
        "1",
        "--seq",
        "8",
        "--warmup",
        "0",
        "--steps",
        "1",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o)
        .lines()
        .find(|l| l.contains("peak during the forward"))
        .map(str::to_string)
        .expect("the memory table");
    assert!(!line.contains(" 0 B"), "{line}");
}
