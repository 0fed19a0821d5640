//! `cmapp-docgen` as `packaging/generate.sh` runs it. Having an integration
//! test also makes `cargo nextest run --workspace` build the binary itself
//! (`target/debug/cmapp-docgen`), which `tests/tests/packaging_docs.rs` runs.

use std::process::Command;

const DOCGEN: &str = env!("CARGO_BIN_EXE_cmapp-docgen");

#[test]
fn without_a_directory_it_says_how_to_run_it_and_exits_64() {
    let out = Command::new(DOCGEN).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("usage: cmapp-docgen DIR"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_directory_it_cannot_write_is_named_and_exits_1() {
    let out = Command::new(DOCGEN).arg("/dev/null/docs").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write") && err.contains("/dev/null/docs"), "{err}");
}
