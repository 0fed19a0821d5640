//! The cmappmgr binary's command line. (These tests also make cargo build
//! the binary before the workspace's integration tests run.)

use std::process::Command;

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_cmappmgr"))
        .args(["-node", "g"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-service"));
    let out = Command::new(env!("CARGO_BIN_EXE_cmappmgr"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cmappserver_timeout"));
}
