//! The packages built by `packaging/build.sh`, once per revision (the build
//! is cached by cargo; concurrent tests wait on the script's lock).

use std::path::{Path, PathBuf};
use std::process::Command;

/// One revision's packages and the binaries inside them.
#[derive(Debug, Clone)]
pub struct Built {
    pub mgr_deb: PathBuf,
    pub server_deb: PathBuf,
    pub mgr_rpm: PathBuf,
    pub server_rpm: PathBuf,
    pub mgr_bin: PathBuf,
    pub server_bin: PathBuf,
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds (or finds, when up to date) the packages of `revision`.
pub fn build(revision: u32) -> Built {
    let target = crate::bin_dir().parent().unwrap().to_path_buf();
    let out = target.join("packages-test");
    let run = Command::new(repo().join("packaging/build.sh"))
        .args(["--revision", &revision.to_string(), "--out"])
        .arg(&out)
        .output()
        .expect("packaging/build.sh");
    let log = crate::stdout_and_stderr(&run);
    assert!(run.status.success(), "packaging/build.sh failed:\n{log}");
    let version = common::SOFTWARE_VERSION;
    let find = |p: String| {
        let path = out.join(&p);
        assert!(path.exists(), "packaging/build.sh made no {p}:\n{log}");
        path
    };
    let bin = target.join("x86_64-unknown-linux-gnu/release");
    Built {
        mgr_deb: find(format!("cmappmgr_{version}-{revision}_amd64.deb")),
        server_deb: find(format!("cmappserver_{version}-{revision}_amd64.deb")),
        mgr_rpm: find(format!("cmappmgr-{version}-{revision}.x86_64.rpm")),
        server_rpm: find(format!("cmappserver-{version}-{revision}.x86_64.rpm")),
        mgr_bin: bin.join("cmappmgr"),
        server_bin: bin.join("cmappserver"),
    }
}
