//! The packages as `packaging/build.sh` makes them (cargo-zigbuild for
//! glibc 2.17, cargo-deb, rpmbuild): lintian finds no error, the rpm
//! requirements are sane, every package has the files the README promises,
//! and no binary needs a glibc newer than 2.17. Installing, upgrading and
//! purging them is tests/tests/packages_root.rs.
//!
//! These tests build release binaries (minutes, once; then cached) and need
//! cargo-deb, cargo-zigbuild, ziglang, rpmbuild and lintian: ./test.sh
//! installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use cmapp_tests::packages::{self, Built};

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = cmapp_tests::stdout_and_stderr(&out);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_debs_pass_lintian_without_errors() {
    let built = packages::build(1);
    for deb in [&built.mgr_deb, &built.server_deb] {
        let (code, out) = run(Command::new("lintian").args(["--fail-on", "error", "--info"]).arg(deb));
        println!("lintian {}:\n{out}", deb.display());
        assert_eq!(code, 0, "lintian found errors in {}:\n{out}", deb.display());
        assert!(!out.lines().any(|l| l.starts_with("E: ")), "{out}");
    }
}

fn deb_files(deb: &Path) -> Vec<String> {
    let (code, out) = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    assert_eq!(code, 0, "{out}");
    // "-rwxr-xr-x root/root 123 2026-01-01 00:00 ./usr/sbin/cmappmgr [-> target]"
    out.lines()
        .map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" "))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

fn deb_conffiles(deb: &Path) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(tmp.path()));
    assert_eq!(code, 0, "{out}");
    std::fs::read_to_string(tmp.path().join("conffiles"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_debs_hold_the_original_paths_man_pages_completions_and_conffiles() {
    let built = packages::build(1);
    let mgr = deb_files(&built.mgr_deb);
    println!("{}:\n{}", built.mgr_deb.display(), mgr.join("\n"));
    for f in [
        "/usr/sbin/cmappmgr",
        "/etc/cmappmgr.conf",
        "/usr/share/man/man1/cmappmgr.1.gz",
        "/usr/share/bash-completion/completions/cmappmgr",
        "/usr/share/zsh/vendor-completions/_cmappmgr",
        "/usr/share/fish/vendor_completions.d/cmappmgr.fish",
        "/usr/share/doc/cmappmgr/copyright",
        "/usr/share/doc/cmappmgr/examples/package-services.conf",
        "/etc/cmcluster/modules/tkit/vtn/vtn.1",
        "/etc/cmcluster/scripts/tkit/vtn/tkit_module.sh",
        "/usr/lib/ocf/resource.d/cmapp/guestapp",
    ] {
        assert!(mgr.iter().any(|l| l == f), "cmappmgr.deb lacks {f}");
    }
    assert_eq!(
        deb_conffiles(&built.mgr_deb),
        [
            "/etc/cmappmgr.conf",
            "/etc/cmcluster/modules/tkit/vtn/vtn.1",
            "/etc/cmcluster/scripts/tkit/vtn/tkit_module.sh"
        ]
    );

    let srv = deb_files(&built.server_deb);
    println!("{}:\n{}", built.server_deb.display(), srv.join("\n"));
    for f in [
        "/opt/hp/cmappserver/cmappserver",
        "/opt/hp/cmappserver/cmapp_net_mon.pl -> cmappserver",
        "/opt/hp/cmappserver/cmapp_disk_mon -> cmappserver",
        "/usr/share/cmappserver/cmappserver.conf",
        "/usr/sbin/cmappserver -> /opt/hp/cmappserver/cmappserver",
        "/lib/systemd/system/cmappserver.service",
        "/etc/init.d/cmappserver",
        "/usr/share/man/man1/cmappserver.1.gz",
        "/usr/share/bash-completion/completions/cmappserver",
        "/usr/share/zsh/vendor-completions/_cmappserver",
        "/usr/share/fish/vendor_completions.d/cmappserver.fish",
    ] {
        assert!(srv.iter().any(|l| l == f), "cmappserver.deb lacks {f}");
    }
    // cmappserver.conf lives outside /etc, where Debian allows no conffile:
    // postinst copies it from /usr/share/cmappserver once (packages_root.rs).
    assert_eq!(deb_conffiles(&built.server_deb), ["/etc/init.d/cmappserver"]);
}

/// The glibc versions a requirement list or a symbol table names, highest last.
fn glibc_versions(text: &str) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut it = v.split('.');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn the_rpms_require_nothing_newer_than_glibc_2_17_and_list_their_files() {
    let built = packages::build(1);
    for (rpm, expect) in [
        (
            &built.mgr_rpm,
            &[
                "/usr/sbin/cmappmgr",
                "/etc/cmappmgr.conf",
                "/usr/share/man/man1/cmappmgr.1.gz",
                "/usr/lib/ocf/resource.d/cmapp/guestapp",
            ][..],
        ),
        (
            &built.server_rpm,
            &[
                "/opt/hp/cmappserver/cmappserver",
                "/opt/hp/cmappserver/cmapp_net_mon.pl",
                "/opt/hp/cmappserver/cmappserver.conf",
                "/usr/lib/systemd/system/cmappserver.service",
                "/etc/rc.d/init.d/cmappserver",
                "/var/lib/cmappserver",
            ][..],
        ),
    ] {
        let (code, reqs) = run(Command::new("rpm").args(["-qp", "--requires"]).arg(rpm));
        println!("rpm -qp --requires {}:\n{reqs}", rpm.display());
        assert_eq!(code, 0, "{reqs}");
        // glibc's libraries, rpm's own features, the scriptlets' shell, and
        // the package's own config() capability: nothing else.
        for line in reqs.lines() {
            let known = [
                "libc.so.6",
                "libm.so.6",
                "libdl.so.2",
                "libpthread.so.0",
                "rpmlib(",
                "/bin/sh",
                "config(",
            ]
            .iter()
            .any(|p| line.starts_with(p));
            assert!(known, "{}: unexpected requirement {line:?}", rpm.display());
        }
        let max = glibc_versions(&reqs).pop().expect("a GLIBC_ requirement");
        assert!(max <= (2, 17), "{} requires GLIBC_{}.{}", rpm.display(), max.0, max.1);

        let (code, files) = run(Command::new("rpm").args(["-qpl"]).arg(rpm));
        println!("rpm -qpl {}:\n{files}", rpm.display());
        assert_eq!(code, 0, "{files}");
        for f in expect {
            assert!(files.lines().any(|l| l == *f), "{} lacks {f}", rpm.display());
        }
        let (_, conf) = run(Command::new("rpm").args(["-qpc"]).arg(rpm));
        assert!(
            conf.lines().any(|l| l.ends_with(".conf")),
            "{}: no config file: {conf}",
            rpm.display()
        );
    }
}

fn max_glibc(binary: &Path) -> (u32, u32) {
    let (code, out) = run(Command::new("objdump").arg("-T").arg(binary));
    assert_eq!(code, 0, "objdump -T {}: {out}", binary.display());
    glibc_versions(&out)
        .pop()
        .unwrap_or_else(|| panic!("{} names no GLIBC_ version", binary.display()))
}

#[test]
fn the_packaged_binaries_need_glibc_2_17_at_most() {
    let built: Built = packages::build(1);
    for b in [&built.mgr_bin, &built.server_bin] {
        let (maj, min) = max_glibc(b);
        println!("{}: highest symbol version GLIBC_{maj}.{min}", b.display());
        assert!((maj, min) <= (2, 17), "{} needs GLIBC_{maj}.{min}", b.display());
    }
    // For the record: what a native build on this machine needs (the
    // benchmark's release build, when present).
    let native: PathBuf = cmapp_tests::bin_dir().parent().unwrap().join("release");
    for name in ["cmappmgr", "cmappserver"] {
        let b = native.join(name);
        if b.exists() {
            let (maj, min) = max_glibc(&b);
            println!(
                "{} (native build): highest symbol version GLIBC_{maj}.{min}",
                b.display()
            );
        }
    }
}
