//! Ctrl-C sets the stop flag. In a file of its own: the handler is process-wide and can be
//! installed once, and this test sends SIGINT to its own process.
#![cfg(unix)]

use std::time::{Duration, Instant};
use tperf_runtime::train::StopFlag;

#[test]
fn sigint_sets_the_stop_flag_instead_of_killing_the_process() {
    let stop = StopFlag::new();
    stop.install_ctrlc_handler().unwrap();
    assert!(!stop.is_requested());
    let status = std::process::Command::new("kill")
        .args(["-INT", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stop.is_requested() {
        assert!(
            Instant::now() < deadline,
            "SIGINT did not reach the handler"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A second handler cannot be installed.
    assert!(StopFlag::new().install_ctrlc_handler().is_err());
}
