//! Temporary files being written are removed on request (the second Ctrl-C's path). A test
//! binary of its own: `remove_temporary_files` removes every file registered in the process, so
//! beside the training tests (which save checkpoints through registered temporaries, in
//! parallel threads) it would delete their files mid-save.

use tperf_runtime::checkpoint;

#[test]
fn temporary_files_being_written_are_removed_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join(".run.safetensors.tmp-1");
    std::fs::write(&tmp, b"half a checkpoint").unwrap();
    let guard = checkpoint::InFlight::register(&tmp);
    checkpoint::remove_temporary_files();
    assert!(!tmp.exists());
    drop(guard);
    // Once a write is done its path is no longer listed: a later file of that name stays.
    std::fs::write(&tmp, b"x").unwrap();
    checkpoint::remove_temporary_files();
    assert!(tmp.exists());
}
