//! The counters path without a GPU: a fake `ncu` on a PATH of its own prints a CSV that the real
//! ncu printed on the H200 (tests/fixtures/ncu-small-forward-bf16.csv, trimmed to the columns
//! tperf reads), or the failures ncu reports; the parser, the join to the schedule's ops and the
//! messages are checked against it. The fixture holds the first 91 kernels of the step (the
//! embedding and blocks 0–8: the GPU call's time limit stopped ncu there), so the checks are on
//! the ops it reached.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tperf_bench::counters::{self, CounterReport, CountersError, MetricSet, Verdict};
use tperf_core::cost::analysis::{self, Scenario, Workload};
use tperf_core::cost::hardware;
use tperf_core::ops::OpClass;
use tperf_core::schedule::{Options, Precision};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ncu-small-forward-bf16.csv"
);

/// The scenario the fixture counted: `tperf profile small --phase forward --batch 1 --seq 64
/// --dtype bf16 --device cuda --warmup 1 --counted-step` under ncu.
fn fixture_analysis() -> analysis::Analysis {
    let cfg = tperf_core::presets::find("small").unwrap().config;
    let sc = Scenario {
        workload: Workload::Forward,
        batch: 1,
        seq: 64,
        opts: Options {
            precision: Precision::Bf16,
            ..Options::default()
        },
    };
    analysis::analyze(&cfg, &sc, &hardware::detect_local_cpu()).unwrap()
}

/// Held by every test for its whole run. Writing an executable while another test's thread
/// forks lets the child inherit the open file for a moment, and exec'ing it then fails with
/// "Text file busy" (ETXTBSY, seen in CI): the tests write and spawn their fakes one at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A folder of its own holding an executable `ncu` with `script` as its body.
fn fake_ncu(name: &str, script: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tperf-fake-ncu-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ncu = dir.join("ncu");
    std::fs::write(&ncu, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&ncu, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn child() -> Vec<OsString> {
    ["profile", "small", "--counted-step"]
        .iter()
        .map(OsString::from)
        .collect()
}

#[test]
fn the_fixture_joins_every_kernel_to_an_op_and_the_matmuls_count_2mnk() {
    let _one_at_a_time = one_at_a_time();
    let dir = fake_ncu(
        "fixture",
        &format!(
            "echo \"$@\" > \"$(dirname \"$0\")/args\"\necho 'tperf child output'\ncat '{FIXTURE}'"
        ),
    );
    let ncu = counters::find_ncu_in(None, Some(dir.clone().into_os_string())).unwrap();
    assert_eq!(ncu, dir.join("ncu"));
    let parsed =
        counters::collect(&ncu, Path::new("/path/to/tperf"), &child(), MetricSet::Full).unwrap();
    // ncu was asked for the counted step only, with the clocks left alone, and ran the child.
    let args = std::fs::read_to_string(dir.join("args")).unwrap();
    for needed in [
        "--clock-control none",
        "--csv",
        "--page raw",
        "--nvtx",
        "regex:tperf counted step",
        "/path/to/tperf profile small --counted-step",
    ] {
        assert!(args.contains(needed), "{needed} in {args}");
    }
    assert!(!parsed.kernels.is_empty());
    let a = fixture_analysis();
    let report = CounterReport::join(&a, parsed);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    let joined: usize = report.ops.iter().map(|o| o.counted.kernels).sum();
    assert_eq!(
        joined + report.outside_ops.kernels,
        report.kernels.len(),
        "every kernel is in an op or outside them all"
    );
    // The step is the sum of its parts.
    let ops_flops: f64 = report.ops.iter().map(|o| o.counted.flops()).sum();
    let total = ops_flops + report.outside_ops.flops();
    assert!((total - report.step.flops()).abs() <= 1e-9 * total.max(1.0));
    // Every matrix product ran on the tensor cores and counted the model's 2mnk within 1%.
    let mut matmuls = 0;
    for o in &report.ops {
        let r = &a.rows[o.index];
        if r.class == OpClass::Matmul && r.name == "matmul" && o.counted.kernels > 0 {
            matmuls += 1;
            let ratio = o.counted.flops() / o.model_flops as f64;
            assert!(
                (ratio - 1.0).abs() < 0.01,
                "op {} {} {}: counted {} against 2mnk {}",
                o.index,
                r.name,
                r.label,
                o.counted.flops(),
                o.model_flops
            );
            assert!(o.counted.tensor_flops > 0.99 * o.counted.flops());
            // Cold-L2 replay: the weights and the input are read once, within 10%.
            assert_eq!(o.verdict, Verdict::Matches, "op {} {}", o.index, r.label);
        }
        if o.counted.kernels > 0 {
            assert!(o.counted.seconds > 0.0, "op {} has a duration", o.index);
        }
    }
    // The flash kernel computes the whole 64×64 causal tile: twice the model's causal half.
    for o in &report.ops {
        let r = &a.rows[o.index];
        if r.name == "flash_attention" && o.counted.kernels > 0 {
            assert_eq!(o.verdict, Verdict::ExtraFlops, "op {}", o.index);
        }
    }
    // Blocks 0–8 have four matmuls each (qkv, attention out, the gated fc, the projection).
    assert_eq!(matmuls, 9 * 4);
}

#[test]
fn a_permission_error_says_so() {
    let _one_at_a_time = one_at_a_time();
    let dir = fake_ncu(
        "perm",
        "echo '==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU Performance Counters on the target device 0.' >&2\nexit 1",
    );
    let err = counters::collect(
        &dir.join("ncu"),
        Path::new("tperf"),
        &child(),
        MetricSet::Full,
    )
    .unwrap_err();
    assert!(matches!(err, CountersError::Permission), "{err}");
    assert!(err.to_string().contains("ERR_NVGPUCTRPERM"));
}

#[test]
fn a_gpu_without_counters_says_so() {
    let _one_at_a_time = one_at_a_time();
    let dir = fake_ncu(
        "virt",
        "echo '==ERROR== Failed to initialize the profiler: LibraryNotLoaded' >&2\nexit 1",
    );
    let err = counters::collect(
        &dir.join("ncu"),
        Path::new("tperf"),
        &child(),
        MetricSet::Full,
    )
    .unwrap_err();
    assert!(matches!(err, CountersError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("LibraryNotLoaded"), "{err}");
}

#[test]
fn no_ncu_on_the_path_says_so() {
    let _one_at_a_time = one_at_a_time();
    let empty = fake_ncu("none", "exit 0");
    std::fs::remove_file(empty.join("ncu")).unwrap();
    let err = counters::find_ncu_in(None, Some(empty.into_os_string())).unwrap_err();
    assert!(matches!(err, CountersError::NoNcu));
    assert!(err.to_string().contains("no `ncu` on the PATH"));
    // TPERF_NCU wins over the PATH.
    assert_eq!(
        counters::find_ncu_in(Some("/opt/ncu".into()), None).unwrap(),
        PathBuf::from("/opt/ncu")
    );
}

#[test]
fn a_profiler_that_fails_half_way_keeps_what_it_collected() {
    let _one_at_a_time = one_at_a_time();
    // The fixture cut after its first three kernels, then a non-zero exit.
    let text = std::fs::read_to_string(FIXTURE).unwrap();
    let head: Vec<&str> = text.lines().take(5).collect();
    let cut = std::env::temp_dir().join(format!("tperf-cut-{}.csv", std::process::id()));
    std::fs::write(&cut, head.join("\n")).unwrap();
    let dir = fake_ncu(
        "half",
        &format!(
            "cat '{}'\necho '==ERROR== The application returned an error code (11).' >&2\nexit 11",
            cut.display()
        ),
    );
    let parsed = counters::collect(
        &dir.join("ncu"),
        Path::new("tperf"),
        &child(),
        MetricSet::Full,
    )
    .unwrap();
    assert_eq!(parsed.kernels.len(), 3);
    let report = CounterReport::join(&fixture_analysis(), parsed);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("after counting 3 kernels")),
        "{:?}",
        report.notes
    );
}
