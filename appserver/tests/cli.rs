//! The cmappserver binary's command line. (These tests also make cargo build
//! the binary before the workspace's integration tests run.)

use std::process::Command;

fn cmappserver() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cmappserver"))
}

#[test]
fn help_and_version() {
    let out = cmappserver().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--check-config"));
    let out = cmappserver().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cmappserver "));
}

#[test]
fn a_missing_configuration_file_is_named() {
    let out = cmappserver()
        .args(["--check-config", "--conf", "/nonexistent/cmappserver.conf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/cmappserver.conf: cannot read configuration file"),
        "{err}"
    );
}
