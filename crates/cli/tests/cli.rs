//! The `tperf` binary as a user meets it: its outputs as data, and its errors on bad input.

use std::process::{Command, Output};

fn tperf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args(args)
        .output()
        .expect("the tperf binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn model_json_has_the_documented_fields() {
    let o = tperf(&[
        "model",
        "gpt2-124m",
        "--batch",
        "2",
        "--seq",
        "128",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["params"]["total"], 124_439_808);
    for key in ["forward", "backward", "optimizer"] {
        assert!(v["flops"][key].as_u64().unwrap() > 0, "flops.{key}");
    }
    assert!(v["memory"]["peak_bytes"].as_u64().unwrap() > 0);
    for cat in [
        "weights",
        "gradients",
        "optimizer_state",
        "activations",
        "kv_cache",
    ] {
        assert!(v["memory"][cat].is_u64(), "memory.{cat}");
    }
    assert!(v["predicted"]["step_seconds"].as_f64().unwrap() > 0.0);
    let ops = v["ops"].as_array().unwrap();
    assert!(ops.len() > 100);
    for field in [
        "name",
        "layer",
        "phase",
        "flops",
        "bytes",
        "intensity",
        "bound",
        "seconds",
    ] {
        assert!(ops[0].get(field).is_some(), "ops[].{field}");
    }
    // Totals are the sum of the ops.
    let sum: u64 = ops.iter().map(|o| o["flops"].as_u64().unwrap()).sum();
    assert_eq!(sum, v["flops"]["total"].as_u64().unwrap());
    assert!(v["provenance"]["git_revision"].is_string());
}

#[test]
fn model_csv_is_one_row_per_op() {
    let o = tperf(&[
        "model",
        "small",
        "--phase",
        "forward",
        "--csv",
        "--all-layers",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("#,phase,layer,op,label"));
    // 1 embedding + 12 blocks × 9 ops + final norm + lm_head + loss
    assert_eq!(lines.count(), 1 + 12 * 9 + 3);
}

#[test]
fn text_output_names_the_conventions_and_the_fit() {
    let o = tperf(&["model", "report"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("causal attention counts the unmasked"));
    assert!(
        s.contains("13,828,878"),
        "the report model's parameter count"
    );
    assert!(s.contains("fits on h100-sxm"));
}

#[test]
fn a_config_file_is_analysed() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/configs/llama-405b-class.json"
    );
    let o = tperf(&[
        "model", path, "--batch", "1", "--seq", "8192", "--dtype", "bf16", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["params"]["total"], 405_853_388_800u64);
    assert_eq!(v["memory"]["fits"], false);
}

/// Each bad input: a non-zero exit, a message that says what to change, never a panic.
#[test]
fn bad_input_gets_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("tperf-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let malformed = dir.join("malformed.json");
    std::fs::write(&malformed, "{\"model_type\": \"llama\", ").unwrap();
    let bad_heads = dir.join("bad_heads.json");
    std::fs::write(
        &bad_heads,
        r#"{"model_type":"llama","hidden_size":96,"intermediate_size":64,"num_hidden_layers":2,
            "num_attention_heads":8,"num_key_value_heads":3,"vocab_size":100}"#,
    )
    .unwrap();
    let huge = dir.join("huge.json");
    std::fs::write(
        &huge,
        r#"{"model_type":"gpt2","n_embd":4294967296,"n_head":1,"n_layer":1}"#,
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["model", "smal"], "did you mean 'small'"),
        (vec!["model", malformed.to_str().unwrap()], "not valid JSON"),
        (
            vec!["model", bad_heads.to_str().unwrap()],
            "not divisible by n_kv_heads",
        ),
        (vec!["model", huge.to_str().unwrap()], "too large"),
        (vec!["model", "small", "--seq", "0"], "at least 1"),
        (
            vec!["model", "small", "--seq", "4096"],
            "exceeds the model's context",
        ),
        (vec!["model", "small", "--batch", "0"], "at least 1"),
        (
            vec!["model", "small", "--hw", "h10O"],
            "did you mean `h100-sxm`",
        ),
        (
            vec!["model", "small", "--dtype", "fp64"],
            "use one of fp32, bf16, fp16",
        ),
        (
            vec!["model", "small", "--phase", "sleep"],
            "use train, fwd_bwd, forward, prefill or decode",
        ),
        (
            vec!["plan", "train", "small", "--tokens", "1e9", "--mfu", "1.5"],
            "--mfu",
        ),
        (vec!["plan", "kv", "small", "--budget", "12"], "no unit"),
        (vec!["model", "/no/such/config.json"], "no such file"),
    ];
    for (args, expected) in cases {
        let o = tperf(&args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(expected),
            "{args:?}: expected '{expected}' in: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn plan_and_hw_commands_run() {
    for args in [
        vec!["hw", "list"],
        vec!["plan", "fit", "--gpus", "1,4"],
        vec!["plan", "train", "gpt2-124m", "--tokens", "10B"],
        vec!["plan", "kv", "small", "--budget", "40GiB"],
        vec!["plan", "dp", "small", "--gpus", "2,8"],
    ] {
        let o = tperf(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(!stdout(&o).is_empty());
    }
    let s = stdout(&tperf(&["plan", "fit", "--gpus", "1,4"]));
    assert!(s.contains("largest that trains on 1 × h100-sxm"));
}

#[test]
fn model_gpus_shows_the_collectives_exposed_time_and_memory_per_gpu() {
    let o = tperf(&[
        "model",
        "gpt2-124m",
        "--gpus",
        "8",
        "--batch",
        "2",
        "--seq",
        "128",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "Collectives per GPU (DDP over 8 GPUs",
        "all_reduce",
        "exposed communication",
        "Memory per GPU over 8 GPUs",
        "ZeRO-1",
    ] {
        assert!(text.contains(want), "missing {want}");
    }
    let json = |args: &[&str]| -> serde_json::Value {
        let o = tperf(args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let v = json(&["model", "gpt2-124m", "--gpus", "4", "--zero1", "--json"]);
    let dp = &v["data_parallel"];
    assert_eq!(dp["setting"]["world"], 4);
    let kinds: Vec<&str> = dp["collectives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["op"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"reduce_scatter") && kinds.contains(&"all_gather"));
    let state = |k: &str| dp["memory_per_gpu"][k]["max_by_category"]["optimizer_state"].as_u64();
    let (ddp, zero1) = (state("ddp").unwrap(), state("zero1").unwrap());
    assert!(
        zero1 * 4 >= ddp && zero1 * 4 < ddp + 4096,
        "{zero1} vs {ddp}"
    );
    let step = v["predicted"]["step_seconds"].as_f64().unwrap();
    let compute = dp["compute_seconds"].as_f64().unwrap();
    let exposed = dp["exposed_comm_seconds"].as_f64().unwrap();
    assert!((step - compute - exposed).abs() < 1e-12 && exposed > 0.0);
    // One GPU: no data-parallel section, no stream fields, as before.
    let one = json(&["model", "gpt2-124m", "--json"]);
    assert!(one.get("data_parallel").is_none());
    assert!(one.get("timing").is_none() && one["scenario"]["opts"].get("data_parallel").is_none());
    assert!(one["ops"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.get("stream").is_none()));
    for (args, expected) in [
        (vec!["model", "small", "--zero1"], "--gpus N"),
        (
            vec!["model", "small", "--gpus", "2", "--phase", "decode"],
            "training",
        ),
    ] {
        let o = tperf(&args);
        assert!(
            !o.status.success() && stderr(&o).contains(expected),
            "{args:?}"
        );
    }
}

#[test]
fn precision_prints_the_seed_accumulation_and_policies() {
    let o = tperf(&["precision"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "tensor(10.0001)",
        "tensor(9.9531, dtype=torch.float16)",
        "tensor(10.0021)",
        "bytes per parameter",
        "overflow",
    ] {
        assert!(text.contains(want), "missing {want}");
    }
    let o = tperf(&["precision", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["accumulation"][1]["result"], 9.953125);
    let schedules = v["policies"]["schedules"].as_array().unwrap();
    assert_eq!(schedules.len(), 6);
    assert_eq!(schedules[1]["precision"], "bf16");
    assert_eq!(schedules[1]["bytes_per_param"], 18.0);
    assert!(v["norm_statistics"]["cases"].as_array().unwrap().len() >= 40);
}

#[test]
fn precision_refuses_an_unknown_model() {
    let o = tperf(&["precision", "--model", "smal"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("small"), "{}", stderr(&o));
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tperf-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The study writes its folder: a self-contained report, the results document and the CSVs;
/// `tperf report` re-renders the same page from the results document.
#[test]
fn study_writes_a_self_contained_report_that_rerenders() {
    let out = scratch("study");
    let o = tperf(&["study", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let runs: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1);
    let run = runs[0].path();
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(
        html.matches("<svg").count() >= 9,
        "three plots per analysis"
    );
    for bad in ["http://", "https://", "src=", "href="] {
        assert!(!html.contains(bad), "report names {bad}");
    }
    // The findings open the page, and the study modelled alternatives for "would help most".
    assert!(
        html.find("id=\"findings\"") < html.find("<h2>Analyses</h2>"),
        "findings first"
    );
    assert!(
        html.contains("Would help most (the model):"),
        "alternatives modelled"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let timeline = results["analyses"][0]["memory"]["timeline"]
        .as_array()
        .unwrap();
    assert!(timeline.len() > 10);
    assert!(results["precision"]["accumulation"].is_array());
    // A CPU study has no counters and says exactly why, in the results and on the page.
    let why = results["counters"]["not_collected"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("CUDA devices only"), "{}", results["counters"]);
    assert!(html.contains("CUDA devices only"));
    // The serving section: saturation, the two sweeps, VTC and FCFS, drawn in the report.
    let serving = &results["serving"];
    assert!(
        serving["runs"].as_array().map_or(0, Vec::len) >= 9,
        "{serving}"
    );
    assert_eq!(serving["fairness"].as_array().map(Vec::len), Some(2));
    assert!(serving["runs"][0]["predicted"]["request_throughput"].as_f64() > Some(0.0));
    assert!(html.contains("<h2>Serving</h2>") && html.contains("service received per client"));
    let csv = std::fs::read_to_string(run.join("ops-0.csv")).unwrap();
    assert!(csv.starts_with("index,phase,layer,op"));
    // No temporary file is left behind.
    for f in std::fs::read_dir(&run).unwrap().flatten() {
        assert!(!f.file_name().to_string_lossy().starts_with('.'));
    }
    let again = out.join("again");
    let o = tperf(&[
        "report",
        run.join("results.json").to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html2 = std::fs::read_to_string(again.join("report.html")).unwrap();
    assert_eq!(html, html2, "re-rendering gives the same page");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn unwritable_output_folder_is_a_clear_error() {
    let o = tperf(&["study", "--out", "/proc/tperf-cannot-write-here"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot create the output folder /proc/tperf-cannot-write-here"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn report_refuses_what_is_not_a_results_document() {
    let dir = scratch("badresults");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("results.json");
    std::fs::write(&path, "{\"model\": 1}").unwrap();
    let o = tperf(&["report", path.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a tperf results document"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.join("report.html").exists());
    let o = tperf(&["report", "/nonexistent/results.json"]);
    assert!(stderr(&o).contains("cannot read /nonexistent/results.json"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_json_carries_the_memory_timeline() {
    let o = tperf(&["model", "small", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tl = v["memory"]["timeline"].as_array().unwrap();
    let peak = v["memory"]["peak_bytes"].as_u64().unwrap();
    // The thinned timeline keeps the peak.
    let max = tl
        .iter()
        .map(|p| p["total_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(max, peak);
    assert!(tl[0]["by_category"]["weights"].as_u64().unwrap() > 0);
}

/// The browser check (scripts/check-report.sh): the study's report loaded in headless Chromium
/// keeps its SVG plots in the DOM, renders non-blank with colour, and names no URL. Skips, with
/// a message, where Chromium is not installed.
#[test]
fn report_renders_in_headless_chromium() {
    let has_chromium = ["chromium", "chromium-browser"].iter().any(|c| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !has_chromium {
        eprintln!("skipped: chromium is not installed (apt-get install -y chromium)");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/check-report.sh");
    let o = Command::new("bash")
        .arg(script)
        .env("TPERF", env!("CARGO_BIN_EXE_tperf"))
        .output()
        .expect("bash runs");
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("check-report: passed"));
}

/// A tiny tperf config (the JSON `tperf model --json` prints under "config"), written to a
/// temporary file, so the measuring commands run in a moment.
fn tiny_config_file(dir: &std::path::Path) -> std::path::PathBuf {
    let o = tperf(&["model", "gpt2-124m", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut cfg = v["config"].clone();
    cfg["name"] = "tiny".into();
    cfg["vocab_size"] = 97.into();
    cfg["d_model"] = 32.into();
    cfg["d_ff"] = 64.into();
    cfg["n_layers"] = 2.into();
    cfg["n_heads"] = 4.into();
    cfg["n_kv_heads"] = 4.into();
    cfg["head_dim"] = 8.into();
    cfg["context"] = 64.into();
    let path = dir.join("tiny.json");
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    path
}

#[test]
fn bench_profile_and_attention_measure_beside_the_model() {
    let dir = std::env::temp_dir().join(format!("tperf-measure-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = tiny_config_file(&dir);
    let cfg = cfg.to_str().unwrap();

    let o = tperf(&[
        "bench",
        cfg,
        "--batch",
        "1,2",
        "--seq",
        "16",
        "--dtype",
        "fp32,bf16",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2 * 2 * 3,
        "batches × dtypes × the three default passes"
    );
    for r in rows {
        assert!(r["measured"]["median"].as_f64().unwrap() > 0.0);
        assert!(r["modelled_seconds"].as_f64().unwrap() > 0.0);
        assert_eq!(r["peak_bytes_measured"], r["peak_bytes_modelled"]);
    }

    // Decode steps greedy and back to back: the method is in the rows and the notes say it.
    let o = tperf(&[
        "bench",
        cfg,
        "--phase",
        "decode",
        "--batch",
        "2",
        "--seq",
        "16",
        "--warmup",
        "1",
        "--steps",
        "3",
        "--device",
        "cpu",
        "--temperature",
        "0",
        "--back-to-back",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("sample greedily") && text.contains("back to back: the timed steps"),
        "{text}"
    );
    let o = tperf(&[
        "bench",
        cfg,
        "--phase",
        "decode",
        "--batch",
        "1",
        "--seq",
        "16",
        "--warmup",
        "0",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--back-to-back",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &v["rows"][0];
    assert_eq!(row["method"]["timing"], "back-to-back");
    assert_eq!(row["method"]["sampling"]["temperature"], 1.0);
    assert!(row["measured"]["median"].as_f64().unwrap() > 0.0);

    let trace = dir.join("trace.json");
    let o = tperf(&[
        "profile",
        cfg,
        "--batch",
        "1",
        "--seq",
        "16",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("By op kind") && stdout(&o).contains("host work between ops"));
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert!(t["traceEvents"].as_array().unwrap().len() > 20);

    let o = tperf(&[
        "attention",
        "--dims",
        "8",
        "--seqs",
        "16,32",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for r in v["rows"].as_array().unwrap() {
        assert_eq!(
            r["measured"]["memory_before_backward_bytes"],
            r["predicted"]["memory_before_backward_bytes"]
        );
    }
    // The seed's largest naive case is predicted, not run, when it cannot fit.
    let o = tperf(&[
        "attention",
        "--batch",
        "64",
        "--dims",
        "16",
        "--seqs",
        "65536",
        "--kernels",
        "naive",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("out of memory"), "{}", stdout(&o));

    // --device cuda on a machine without a GPU is refused with what to do; with a GPU it runs
    // there.
    let o = tperf(&[
        "bench", cfg, "--device", "cuda", "--warmup", "0", "--steps", "1", "--phase", "forward",
    ]);
    assert!(
        (!o.status.success() && stderr(&o).contains("use --device cpu"))
            || stdout(&o).contains("cuda:0"),
        "{}",
        stderr(&o)
    );

    for (args, expected) in [
        (
            vec!["bench", cfg, "--device", "tpu"],
            "unknown device 'tpu'",
        ),
        (vec!["bench", cfg, "--steps", "0"], "not a positive integer"),
        (
            vec!["bench", cfg, "--temperature", "-1"],
            "--temperature -1 is not valid: use 0 (greedy) or a positive number",
        ),
        (
            vec!["bench", cfg, "--dtype", "fp8"],
            "use one of fp32, bf16, fp16",
        ),
        (vec!["bench", "--sizes", "smal"], "did you mean 'small'"),
        (
            vec!["bench", cfg, "--out", "/proc/no/such/rows.jsonl"],
            "--out /proc/no/such/rows.jsonl: cannot create /proc/no/such",
        ),
        (
            vec![
                "profile",
                cfg,
                "--trace",
                "/proc/no/such/trace.json",
                "--steps",
                "1",
                "--device",
                "cpu",
            ],
            // Checked before the profile runs, not after.
            "--trace /proc/no/such/trace.json: cannot create /proc/no/such",
        ),
    ] {
        let o = tperf(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Regression: `profile --json` panicked ("key must be a string") on the per-layer totals,
/// whose keys are Option<usize>.
#[test]
fn profile_json_is_valid_json_with_layer_keys() {
    let out = tperf(&["profile", "small", "--batch", "1", "--seq", "16", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let by_layer = &v["profile"]["analysis"]["by_layer"];
    assert!(by_layer["outside"].is_object(), "{by_layer}");
    assert!(by_layer["0"].is_object(), "{by_layer}");
}
