//! Measured hardware entries as a user meets them: `--hw measured:PATH` holds the roofline to
//! the entry's ceilings, a bad entry is a clear error, and `hw measure --device cuda` on a
//! machine without a GPU says so and fails. None of this needs a GPU.

use std::path::Path;
use std::process::{Command, Output};
use tperf_core::cost::hardware::{self, Basis};
use tperf_core::cost::measured::{Ceiling, HardwareEntry, Sets, Unit};

fn tperf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args(args)
        .output()
        .expect("the tperf binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An H200 entry whose every ceiling is half the datasheet's, as if measured.
fn half_h200(path: &Path) -> HardwareEntry {
    let h200 = hardware::find("h200").unwrap();
    let row = |name: &str, unit, value, sets| Ceiling {
        name: name.into(),
        group: "synthetic".into(),
        unit,
        value,
        datasheet: None,
        sets: Some(sets),
        method: "written by the test".into(),
    };
    let rows = vec![
        row(
            "gemm bf16",
            Unit::FlopsPerS,
            h200.peak_bf16_flops / 2.0,
            Sets::PeakBf16Flops,
        ),
        row(
            "gemm fp16",
            Unit::FlopsPerS,
            h200.peak_f16_flops / 2.0,
            Sets::PeakF16Flops,
        ),
        row(
            "gemm fp32",
            Unit::FlopsPerS,
            h200.peak_f32_flops / 2.0,
            Sets::PeakF32Flops,
        ),
        row(
            "dram copy",
            Unit::BytesPerS,
            h200.mem_bw_bytes_per_s / 2.0,
            Sets::MemBwBytesPerS,
        ),
    ];
    let e = HardwareEntry::new(
        h200,
        "cuda:0 synthetic".into(),
        rows,
        vec![],
        serde_json::Value::Null,
    );
    e.save(path).unwrap();
    e
}

fn step_seconds(args: &[&str]) -> f64 {
    let o = tperf(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["predicted"]["step_seconds"].as_f64().unwrap()
}

#[test]
fn an_entry_round_trips_through_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("h200.json");
    let saved = half_h200(&path);
    let loaded = HardwareEntry::load(&path).unwrap();
    assert_eq!(loaded, saved);
    assert_eq!(loaded.hardware.basis, Basis::Measured);
    assert_eq!(loaded.datasheet.basis, Basis::Datasheet);
}

#[test]
fn measured_ceilings_change_the_modelled_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h200.json");
    half_h200(&path);
    let key = format!("measured:{}", path.display());
    let common = ["model", "gpt2-124m", "--dtype", "bf16", "--json"];
    let sheet = step_seconds(&[&common[..], &["--hw", "h200"]].concat());
    let measured = step_seconds(&[&common[..], &["--hw", &key]].concat());
    // Every op's compute and memory time doubles, so the step (their per-op maxima) does too.
    let ratio = measured / sheet;
    assert!((ratio - 2.0).abs() < 1e-6, "{measured} / {sheet} = {ratio}");

    let o = tperf(&["model", "gpt2-124m", "--hw", &key]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("measured ceilings"), "{text}");
    let o = tperf(&["model", "gpt2-124m", "--hw", "h200"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("datasheet ceilings"), "{text}");
}

#[test]
fn missing_corrupt_and_foreign_entries_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.json");
    let corrupt = dir.path().join("corrupt.json");
    std::fs::write(
        &corrupt,
        "{ \"format\": \"tperf-hardware-entry/1\", \"hardware\": ",
    )
    .unwrap();
    let foreign = dir.path().join("foreign.json");
    std::fs::write(&foreign, "{\"key\": \"h200\"}").unwrap();
    let truncated = dir.path().join("truncated.json");
    std::fs::write(
        &truncated,
        "{\"format\": \"tperf-hardware-entry/1\", \"device\": \"x\"}",
    )
    .unwrap();
    for (file, says) in [
        (&missing, "cannot read the hardware entry"),
        (&corrupt, "is not a tperf hardware entry"),
        (&foreign, "has format `(none)`"),
        (&truncated, "is not a tperf hardware entry"),
    ] {
        let key = format!("measured:{}", file.display());
        let o = tperf(&["model", "small", "--hw", &key]);
        assert!(!o.status.success(), "{key} was accepted");
        let err = stderr(&o);
        assert!(err.contains(says), "{key}: {err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
    let o = tperf(&["model", "small", "--hw", "measured:"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs a file"), "{}", stderr(&o));
}

#[test]
fn a_gpu_measurement_without_a_gpu_says_so_and_fails() {
    if tperf_cuda::device_count().is_ok_and(|n| n > 0) {
        eprintln!("skipped: this machine has a GPU");
        return;
    }
    let o = tperf(&["hw", "measure", "--device", "cuda"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("--device cuda"), "{err}");
    assert!(err.contains("measures the CPU"), "{err}");
}

#[test]
fn the_cpu_measurement_saves_an_entry_in_the_common_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpu.json");
    let o = tperf(&[
        "hw",
        "measure",
        "--sizes",
        "64",
        "--repeats",
        "1",
        "--save",
        path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = HardwareEntry::load(&path).unwrap();
    assert_eq!(e.hardware.basis, Basis::Measured);
    assert!(e
        .ceilings
        .iter()
        .any(|c| c.sets == Some(Sets::PeakF32Flops)));
    assert_eq!(e.hardware.peak_bf16_flops, e.hardware.peak_f32_flops);
}
