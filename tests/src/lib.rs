//! Test harness: locate the real binaries, make throwaway key material,
//! start servers on `127.0.0.1:0`, and wait on events rather than sleeps.

use std::path::PathBuf;

/// The directory cargo put the workspace's binaries in (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test-binary> → target/debug
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir").to_path_buf();
    dir
}

/// Path of one of the workspace's binaries; panics with a clear message if it
/// has not been built (cargo builds them when the whole workspace is tested).
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests for the whole workspace (cargo nextest run --workspace) so that cargo builds it",
        p.display()
    );
    p
}
