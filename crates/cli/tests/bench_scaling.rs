//! `tperf bench --ranks|--gpus N,… --scaling weak|strong` end to end on a tiny model: the real
//! multi-rank training measured beside the data-parallel model, and the settings it refuses
//! before running anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tperf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the tperf binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A GPT-2-style config of a few tens of thousands of parameters, byte vocabulary: a training
/// step takes milliseconds on one core.
fn tiny_config(dir: &Path) -> PathBuf {
    let cfg = serde_json::json!({
        "name": "tiny-scaling",
        "biases": {"attn_out": true, "lm_head": false, "mlp": true, "norm": true, "qkv": true},
        "causal": true, "context": 32, "d_ff": 128, "d_model": 32, "final_norm": true,
        "head_dim": 8, "mlp": "gelu", "n_heads": 4, "n_kv_heads": 4, "n_layers": 2,
        "norm": "layernorm", "norm_eps": 1e-5, "norm_placement": "pre",
        "positions": {"kind": "learned"}, "scale_embedding": false, "sliding_window": null,
        "tied_embeddings": true, "vocab_size": 256
    });
    let path = dir.join("tiny-scaling.json");
    std::fs::write(&path, cfg.to_string()).expect("write config");
    path
}

#[test]
fn weak_scaling_over_two_cpu_ranks_measures_both_rows_beside_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let json = dir.path().join("scaling.json");
    let started = Instant::now();
    let o = tperf(&[
        "bench",
        cfg.to_str().unwrap(),
        "--ranks",
        "1,2",
        "--scaling",
        "weak",
        "--batch",
        "2",
        "--seq",
        "16",
        "--warmup",
        "1",
        "--steps",
        "3",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let text = stdout(&o);
    // The table: one row per N, its first cells N, B per rank and the global batch.
    let cells = |line: &str| {
        line.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rows: Vec<String> = text.lines().map(cells).collect();
    assert!(rows.iter().any(|r| r == "1 2 2"), "{text}");
    assert!(rows.iter().any(|r| r == "2 2 4"), "{text}");
    assert!(text.contains("model has no TCP link"), "{text}");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["scaling"], "weak");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (r, world) in rows.iter().zip([1u64, 2]) {
        assert_eq!(r["world"], world);
        assert_eq!(r["global_batch"], 2 * world);
        assert_eq!(r["measured"]["n"], 3, "the warm-up step is excluded");
        for key in [
            "measured_step_seconds",
            "modelled_step_seconds",
            "measured_tokens_per_s",
            "efficiency",
            "modelled_efficiency",
        ] {
            let x = r[key].as_f64().unwrap();
            assert!(x.is_finite() && x > 0.0, "{key} = {x} at N = {world}");
        }
    }
    // N = 1 is the reference; one rank issues no collectives, two all-reduce the gradients.
    assert_eq!(rows[0]["efficiency"], 1.0);
    assert_eq!(rows[0]["modelled_comm_seconds"], 0.0);
    assert!(rows[1]["modelled_comm_seconds"].as_f64().unwrap() > 0.0);
    // Measured on CPU ranks: nothing to exchange alone, the gradients and loss over two.
    assert_eq!(rows[0]["measured_comm_seconds"], 0.0);
    let measured_comm = rows[1]["measured_comm_seconds"].as_f64().unwrap();
    let step = rows[1]["measured_step_seconds"].as_f64().unwrap();
    assert!(
        measured_comm > 0.0 && measured_comm < step,
        "{measured_comm} {step}"
    );
    // Exposed communication is the part of the comm stream's time the compute stream waits
    // for: never more than that time (up to rounding: makespan − compute is a difference).
    let exposed = rows[1]["modelled_exposed_comm_seconds"].as_f64().unwrap();
    let comm = rows[1]["modelled_comm_seconds"].as_f64().unwrap();
    assert!(
        exposed >= 0.0 && exposed <= comm * (1.0 + 1e-9),
        "{exposed} {comm}"
    );
}

#[test]
fn zero1_scaling_runs_the_ranks_under_zero1_and_models_its_collectives() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let run = |zero1: bool| {
        let json = dir.path().join(format!("scaling-{zero1}.json"));
        let mut args = vec![
            "bench",
            cfg.to_str().unwrap(),
            "--ranks",
            "1,2",
            "--scaling",
            "weak",
            "--batch",
            "2",
            "--seq",
            "16",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--json",
            json.to_str().unwrap(),
        ];
        if zero1 {
            args.push("--zero1");
        }
        let o = tperf(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (stdout(&o), v)
    };
    let (text, zero1) = run(true);
    assert!(text.contains("ZeRO-1 over --ranks 1,2"), "{text}");
    assert_eq!(zero1["mode"], "zero1");
    let (text, ddp) = run(false);
    assert!(text.contains("DDP over --ranks 1,2"), "{text}");
    assert_eq!(ddp["mode"], "ddp");
    let comm =
        |v: &serde_json::Value, i: usize| v["rows"][i]["modelled_comm_seconds"].as_f64().unwrap();
    // One rank is the plain step in both modes; at two, ZeRO-1's schedule differs from DDP's
    // (reduce-scatter + all-gather + the norm's all-reduce, not one all-reduce per bucket).
    assert_eq!(comm(&zero1, 0), 0.0);
    assert!(comm(&zero1, 1) > 0.0);
    assert_ne!(comm(&zero1, 1), comm(&ddp, 1));
    // The ZeRO-1 ranks ran: rank 0 spent time inside its collectives at N = 2.
    assert!(zero1["rows"][1]["measured_comm_seconds"].as_f64().unwrap() > 0.0);

    // `tperf report --scaling` draws both runs on one page, each with its table and plots.
    let page = dir.path().join("page");
    let o = tperf(&[
        "report",
        "--scaling",
        dir.path().join("scaling-true.json").to_str().unwrap(),
        dir.path().join("scaling-false.json").to_str().unwrap(),
        "--out",
        page.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(page.join("report.html")).unwrap();
    assert!(
        html.contains("weak scaling of tiny-scaling, ZeRO-1 over --ranks 1,2")
            && html.contains("weak scaling of tiny-scaling, DDP over --ranks 1,2"),
        "{html}"
    );
    assert_eq!(html.matches("<svg").count(), 6, "three plots per run");
    assert!(
        html.contains("--zero1"),
        "the command line is in the provenance"
    );
    // A file of another kind is refused, saying what --scaling reads.
    let o = tperf(&["report", "--scaling", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has no scaling rows"), "{}", stderr(&o));

    // Without --scaling there is nothing for --zero1 to apply to.
    let o = tperf(&["bench", cfg.to_str().unwrap(), "--zero1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--scaling"), "{}", stderr(&o));
}

#[test]
fn strong_scaling_refuses_a_global_batch_that_an_n_does_not_divide_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let o = tperf(&[
        "bench",
        cfg.to_str().unwrap(),
        "--ranks",
        "1,2,4",
        "--scaling",
        "strong",
        "--batch",
        "6",
        "--seq",
        "16",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--batch 6 does not split over N = 4 ranks") && err.contains("e.g. 8"),
        "{err}"
    );
    assert!(
        !err.contains("scaling: N ="),
        "nothing may run first: {err}"
    );
}

#[test]
fn gpus_beyond_the_machine_and_scaling_flags_that_do_not_fit_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let o = tperf(&[
        "bench",
        cfg.to_str().unwrap(),
        "--gpus",
        "1,64",
        "--scaling",
        "weak",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--gpus 1,64 needs a CUDA device per rank")
            && (err.contains("this machine has no CUDA GPU (0 found)")
                || err.contains("no CUDA GPU can be used on this machine")
                || err.contains("fewer than 64")),
        "{err}"
    );
    // Scaling flags that do not go together are refused with what to give instead.
    for (args, expected) in [
        (vec!["--ranks", "1,2"], "needs --scaling weak"),
        (vec!["--ranks", "2,4", "--scaling", "weak"], "include 1"),
        (
            vec!["--ranks", "1,2", "--scaling", "weak", "--device", "cuda"],
            "use --gpus N for GPUs",
        ),
        (
            vec!["--ranks", "1,2", "--scaling", "weak", "--batch", "1,2"],
            "give a single value",
        ),
    ] {
        let mut all = vec!["bench", cfg.to_str().unwrap()];
        all.extend(args.iter().copied());
        let o = tperf(&all);
        assert!(!o.status.success(), "{all:?}");
        assert!(stderr(&o).contains(expected), "{all:?}: {}", stderr(&o));
    }
}

#[test]
fn the_step_benchmark_writes_its_json_to_a_path_and_still_prints_it_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let json = dir.path().join("rows.json");
    let common = [
        "bench",
        cfg.to_str().unwrap(),
        "--phase",
        "forward",
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
        "--json",
    ];
    let mut to_file = common.to_vec();
    to_file.push(json.to_str().unwrap());
    let o = tperf(&to_file);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("rows written to"), "{}", stdout(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);

    let o = tperf(&common);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);
}
