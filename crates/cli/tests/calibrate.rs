//! Calibration and the CPU's measured ceilings as a user meets them: `tperf calibrate` on the CPU
//! fits, saves and reports its error; `--refit` fits again from the samples the file keeps;
//! `--check` reads the file back; `--calibration` makes
//! `tperf model` and `tperf plan serve` say their times are calibrated; a broken file is a clear
//! error; and `tperf profile` on the CPU holds ops to ceilings measured on this machine (cached)
//! unless measuring is turned off. Each run is a few tiny CPU steps.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs tperf with its cache under `cache` (so the CPU's measured ceilings are this test's own).
fn tperf(cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tperf"));
    c.args(args)
        .env("XDG_CACHE_HOME", cache)
        .env_remove("TPERF_CPU_CEILINGS");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("the tperf binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tperf-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn calibrate_on_the_cpu_then_check_and_predict_with_it() {
    let dir = scratch("calibrate");
    let file = dir.join("cal.json");
    let f = file.to_str().unwrap();
    let o = tperf(
        &dir,
        &["calibrate", "--device", "cpu", "--steps", "1", "--out", f],
        &[],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for want in [
        "Fitted curves",
        "Error on the held-out workloads",
        "(leave-one-out)",
        "Where the calibrated step's error comes from",
        "per op (",
        "roofline → calibrated",
        "whole step",
        "saved the calibration",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["format"], "tperf-calibration/1");
    assert!(saved["provenance"]["git_revision"].is_string());
    assert!(!saved["held_out"].as_array().unwrap().is_empty());
    assert!(
        saved["error_held_out"]["op_calibrated"]["count"]
            .as_u64()
            .unwrap()
            > 0
    );

    // The samples are kept, so the fit can be made again from the file alone: the same fit on
    // the same samples gives the same curves and errors.
    let training_ops = saved["samples"]["training"][0]["ops"].as_array().unwrap();
    assert!(!training_ops.is_empty());
    let refit = dir.join("refit.json");
    let r = refit.to_str().unwrap();
    let o = tperf(&dir, &["calibrate", "--refit", f, "--out", r], &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("before → after the refit"), "{out}");
    assert!(
        out.contains("leave-one-out over the training workloads, before → after"),
        "{out}"
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&refit).unwrap()).unwrap();
    for key in [
        "groups",
        "overhead",
        "error_held_out",
        "error_training",
        "error_leave_one_out",
        "samples",
    ] {
        assert_eq!(again[key], saved[key], "{key} differs after the refit");
    }
    assert_eq!(again["provenance"]["refit_of"], f);
    // A file saved before samples were kept says what to do instead.
    let mut old = saved.clone();
    old.as_object_mut().unwrap().remove("samples");
    let old_file = dir.join("old.json");
    std::fs::write(&old_file, old.to_string()).unwrap();
    let o = tperf(
        &dir,
        &[
            "calibrate",
            "--refit",
            old_file.to_str().unwrap(),
            "--out",
            r,
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("run `tperf calibrate` again"),
        "{}",
        text(&o)
    );

    let o = tperf(
        &dir,
        &["calibrate", "--device", "cpu", "--steps", "1", "--check", f],
        &[],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("--check") && out.contains("Error on the held-out workloads"));
    assert!(
        !out.contains("saved the calibration"),
        "--check saves nothing"
    );

    let o = tperf(
        &dir,
        &["model", "small", "--hw", "cpu", "--calibration", f],
        &[],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("Step prediction (calibrated)"), "{out}");
    assert!(out.contains("step time at the roofline"), "{out}");

    let o = tperf(
        &dir,
        &["plan", "serve", "small", "--hw", "cpu", "--calibration", f],
        &[],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("(predicted, calibrated)"), "{out}");
    let o = tperf(&dir, &["plan", "serve", "small", "--hw", "cpu"], &[]);
    assert!(text(&o).contains("(predicted, roofline)"));

    // A file that is not a calibration is refused, naming it.
    std::fs::write(dir.join("bad.json"), "{\"format\": \"something-else\"}").unwrap();
    let bad = dir.join("bad.json");
    let o = tperf(
        &dir,
        &["model", "small", "--calibration", bad.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("bad.json"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_cpu_roofline_is_measured_on_this_machine_unless_turned_off() {
    let dir = scratch("cpu-ceilings");
    // A one-layer model of width 16: the step is nothing, the ceilings are what is tested.
    let tiny = dir.join("tiny.json");
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
    let args = [
        "profile",
        tiny.to_str().unwrap(),
        "--device",
        "cpu",
        "--batch",
        "1",
        "--seq",
        "8",
        "--warmup",
        "0",
        "--steps",
        "1",
    ];
    let o = tperf(&dir, &args, &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("measured this CPU's ceilings"), "{out}");
    assert!(out.contains("(measured on this machine)"), "{out}");
    let cache = dir.join("tperf/hardware/cpu-measured.json");
    assert!(cache.exists());
    // The second run reads the cache.
    let o = tperf(&dir, &args, &[]);
    let out = text(&o);
    assert!(!out.contains("measured this CPU's ceilings"), "{out}");
    assert!(out.contains("(measured on this machine)"), "{out}");
    // Turned off: the detected estimate, said so.
    let o = tperf(&dir, &args, &[("TPERF_CPU_CEILINGS", "detected")]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("detected ceilings"), "{out}");
    assert!(!out.contains("(measured on this machine)"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_time_limit_that_is_not_positive_is_refused_before_anything_is_measured() {
    let cache = scratch("time-limit");
    let out = scratch("time-limit-out").join("calibration.json");
    for limit in ["0", "-5", "NaN"] {
        // `--time-limit=-5`: as two words clap would read -5 as a flag of its own.
        let flag = format!("--time-limit={limit}");
        let o = tperf(
            &cache,
            &["calibrate", &flag, "--out", out.to_str().unwrap()],
            &[],
        );
        assert!(
            !o.status.success(),
            "--time-limit {limit} was accepted: {}",
            text(&o)
        );
        assert!(text(&o).contains("--time-limit"), "{}", text(&o));
        assert!(
            !out.exists(),
            "a calibration file was written for --time-limit {limit}"
        );
    }
}
