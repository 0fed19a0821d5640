//! The packages installed on this machine as an admin would (root): the
//! .deb with dpkg (install, configure keys, start, upgrade while an
//! application is monitored, remove, purge) and the .rpm into a root
//! directory. Serialised by a lock file: dpkg installs into `/`.
//!
//! This container's policy-rc.d forbids maintainer scripts to start or stop
//! services (exit 101, as in most containers), so where a maintainer script
//! asks invoke-rc.d to act, the test checks that it asked and then runs the
//! same action of the init script itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use cmapp_tests::mgr::{pid_in, Mgr};
use cmapp_tests::packages::{self, Built};
use cmapp_tests::{alive, require_root, WAIT};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

const OPT: &str = "/opt/hp/cmappserver";
const PIDFILE: &str = "/run/cmappserver.pid";

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = cmapp_tests::stdout_and_stderr(&out);
    (out.status.code().unwrap_or(-1), text)
}

fn bash(script: &str) -> (i32, String) {
    run(Command::new("bash").arg("-c").arg(script))
}

fn ok(what: &str, (code, out): (i32, String)) -> String {
    assert_eq!(code, 0, "{what} failed:\n{out}");
    out
}

fn lock() -> Flock<std::fs::File> {
    let f = std::fs::File::create("/run/lock/cmapp-packages-test.lock").unwrap();
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap()
}

fn daemon_pid() -> Option<u32> {
    std::fs::read_to_string(PIDFILE).ok()?.trim().parse().ok()
}

/// Leaves the machine as it was: daemon and applications gone, packages purged.
struct Cleanup {
    apps: Vec<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = daemon_pid() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for &app in &self.apps {
            let _ = killpg(Pid::from_raw(app as i32), Signal::SIGKILL);
        }
        purge();
    }
}

fn purge() {
    let _ = run(Command::new("dpkg").args(["--purge", "cmappserver", "cmappmgr"]));
}

fn installed_version(pkg: &str) -> String {
    let (_, out) = run(Command::new("dpkg-query").args(["-W", "-f", "${Status} ${Version}", pkg]));
    out
}

fn init(action: &str) -> (i32, String) {
    run(Command::new("/etc/init.d/cmappserver").arg(action))
}

fn rc_links() -> Vec<PathBuf> {
    let mut links = Vec::new();
    for rl in ["0", "1", "2", "3", "4", "5", "6", "S"] {
        for e in std::fs::read_dir(format!("/etc/rc{rl}.d"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().ends_with("cmappserver") {
                links.push(e.path());
            }
        }
    }
    links
}

fn start_links() -> Vec<PathBuf> {
    rc_links()
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('S'))
        .collect()
}

#[test]
fn deb_install_upgrade_under_a_monitored_application_remove_and_purge() {
    require_root("dpkg installs into /");
    let _lock = lock();
    let rev1: Built = packages::build(1);
    let rev2: Built = packages::build(2);
    purge(); // what an interrupted run may have left
    let mut cleanup = Cleanup { apps: Vec::new() };
    let tmp = tempfile::tempdir().unwrap();

    // Install: nothing is enabled or started without keys, and it says why.
    let out = ok(
        "dpkg -i",
        run(Command::new("dpkg").arg("-i").arg(&rev1.server_deb).arg(&rev1.mgr_deb)),
    );
    println!("dpkg -i:\n{out}");
    assert!(out.contains("not enabled: it needs its keys first"), "{out}");
    assert!(start_links().is_empty(), "enabled without keys: {:?}", start_links());
    assert!(daemon_pid().is_none());
    assert!(Path::new("/var/lib/cmappserver").is_dir());
    assert_eq!(
        std::fs::read_link("/etc/cmcluster/modules/tkit/vtn/vtn").unwrap(),
        Path::new("vtn.1"),
        "the Serviceguard module's link"
    );
    let (code, out) = run(Command::new("cmappserver").arg("--check-config"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cmappserver keygen") && out.contains("cmappmgr keygen"),
        "{out}"
    );
    let (code, out) = init("start");
    assert_eq!(code, 6, "not configured: {out}");
    assert!(out.contains("cmappserver keygen"), "{out}");

    // Documentation and completions where the tools look for them.
    for name in ["cmappmgr", "cmappserver"] {
        let out = ok("man -w", run(Command::new("man").args(["-w", name])));
        assert_eq!(out.trim(), format!("/usr/share/man/man1/{name}.1.gz"));
    }
    let out = ok(
        "bash completion",
        bash(
            ". /usr/share/bash-completion/completions/cmappserver; \
            COMP_WORDS=(cmappserver --check); COMP_CWORD=1; COMP_LINE='cmappserver --check'; COMP_POINT=19; \
            _cmappserver cmappserver --check cmappserver; echo \"${COMPREPLY[@]}\"",
        ),
    );
    assert_eq!(out.trim(), "--check-config");
    let out = ok(
        "fish completion",
        run(Command::new("fish").args(["-c", "complete -C 'cmappmgr vm st'"])),
    );
    assert!(
        out.lines().any(|l| l.starts_with("start")),
        "fish found no vendor completion: {out}"
    );
    let out = ok("zsh fpath", run(Command::new("zsh").args(["-fc", "print -l $fpath"])));
    assert!(out.lines().any(|l| l == "/usr/share/zsh/vendor-completions"), "{out}");

    // The installed unit is clean, and its exposure is what the README says.
    let (code, out) = run(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/cmappserver.service"]));
    assert_eq!((code, out.trim()), (0, ""), "systemd-analyze verify");
    let (_, out) = run(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        "/lib/systemd/system/cmappserver.service",
    ]));
    let exposure = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("")
        .to_string();
    println!("{exposure}");
    let readme = std::fs::read_to_string(packages::repo().join("README.md")).unwrap();
    let level = exposure
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("?");
    assert!(
        readme.contains(&format!("exposure {level}")),
        "README does not report exposure {level}: {exposure}"
    );

    // Keys as the man page says, and an edited configuration file.
    ok(
        "cmappserver keygen",
        run(Command::new("cmappserver").args(["keygen", "--name", "guest-under-test"])),
    );
    let host = tmp.path().join("host");
    ok(
        "cmappmgr keygen",
        run(Command::new("cmappmgr")
            .args(["keygen", "--name", "host-under-test", "--dir"])
            .arg(&host)),
    );
    std::fs::copy(host.join("client.public"), format!("{OPT}/client.public")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let edited = format!("\n# edited by the test\nlisten=127.0.0.1:{port}\n");
    let conf = format!("{OPT}/cmappserver.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&edited);
    std::fs::write(&conf, &text).unwrap();
    ok("check-config", run(Command::new("cmappserver").arg("--check-config")));
    ok("init.d start", init("start"));
    let first = daemon_pid().expect("pid file");

    // An application, monitored by the installed cmappserver.
    let mgr_conf = tmp.path().join("cmappmgr.conf");
    std::fs::write(
        &mgr_conf,
        format!(
            "keyStore={}\ntrustStore={OPT}/server.public\n",
            host.join("client.private").display()
        ),
    )
    .unwrap();
    let node = format!("127.0.0.1:{port}");
    let mut m = Mgr::spawn(&mgr_conf, &node, 60.0, &[], &["/bin/sleep", "600"]);
    let app = pid_in(
        &m.err
            .wait_for("started", WAIT)
            .unwrap_or_else(|| panic!("{}", m.err.text())),
    );
    cleanup.apps.push(app);

    // Upgrade to the rebuilt package: the edited file is kept, the daemon is
    // restarted (postinst asks for try-restart), the application is not.
    let out = ok(
        "dpkg -i (upgrade)",
        run(Command::new("dpkg").arg("-i").arg(&rev2.server_deb)),
    );
    println!("dpkg -i (upgrade):\n{out}");
    assert!(installed_version("cmappserver").ends_with(&format!("{}-2", common::SOFTWARE_VERSION)));
    assert!(
        std::fs::read_to_string(&conf).unwrap().ends_with(&edited),
        "the edited configuration was replaced"
    );
    assert!(!Path::new(&format!("{conf}.dpkg-dist")).exists() && !Path::new(&format!("{conf}.dpkg-new")).exists());
    assert!(
        out.contains("policy-rc.d denied execution of try-restart"),
        "postinst did not ask for a restart:\n{out}"
    );
    assert!(alive(app), "the upgrade touched the application");
    ok("init.d try-restart", init("try-restart"));
    let second = daemon_pid().expect("pid file");
    assert_ne!(first, second, "the daemon was restarted");
    assert!(!alive(first));
    let exe = std::fs::read_link(format!("/proc/{second}/exe")).unwrap();
    assert_eq!(exe, Path::new(&format!("{OPT}/cmappserver")), "runs the new binary");
    assert!(alive(app), "the restart touched the application");
    assert!(m.running(), "the manager stays attached");
    let status = ok(
        "cmappmgr status",
        run(Command::new("cmappmgr")
            .args(["status", "-node", &node, "--no_syslog", "--conf"])
            .arg(&mgr_conf)),
    );
    assert!(status.contains(&app.to_string()), "{status}");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());

    // Remove: prerm asks to stop the daemon; only configuration is left.
    let out = ok(
        "dpkg -r",
        run(Command::new("dpkg").args(["-r", "cmappserver", "cmappmgr"])),
    );
    println!("dpkg -r:\n{out}");
    assert!(
        out.contains("policy-rc.d denied execution of stop"),
        "prerm did not stop the daemon:\n{out}"
    );
    ok(
        "init.d stop",
        run(Command::new("/bin/sh").arg("/etc/init.d/cmappserver").arg("stop")),
    );
    for gone in [
        "/usr/sbin/cmappmgr",
        "/usr/sbin/cmappserver",
        "/opt/hp/cmappserver/cmappserver",
        "/opt/hp/cmappserver/cmapp_net_mon.pl",
        "/lib/systemd/system/cmappserver.service",
        "/usr/share/man/man1/cmappmgr.1.gz",
    ] {
        assert!(std::fs::symlink_metadata(gone).is_err(), "{gone} is left after remove");
    }
    for kept in [
        "/etc/cmappmgr.conf",
        "/etc/init.d/cmappserver",
        &conf,
        "/opt/hp/cmappserver/server.private",
    ] {
        assert!(Path::new(kept).exists(), "{kept} (configuration) is gone after remove");
    }

    // Purge: nothing left, the applications' output logs included (the
    // application here writes none: one stands in for them).
    std::fs::create_dir_all("/var/log/cmappserver").unwrap();
    std::fs::write("/var/log/cmappserver/app-0000.log", "a line\n").unwrap();
    let out = ok(
        "dpkg -P",
        run(Command::new("dpkg").args(["-P", "cmappserver", "cmappmgr"])),
    );
    println!("dpkg -P:\n{out}");
    for gone in [
        "/opt/hp",
        "/var/lib/cmappserver",
        "/var/log/cmappserver",
        "/etc/cmappmgr.conf",
        "/etc/init.d/cmappserver",
        PIDFILE,
    ] {
        assert!(std::fs::symlink_metadata(gone).is_err(), "{gone} is left after purge");
    }
    assert!(rc_links().is_empty(), "init links left: {:?}", rc_links());
    let (_, listed) = run(Command::new("dpkg").args(["-l", "cmappserver", "cmappmgr"]));
    assert!(
        !listed.lines().any(|l| l.starts_with("ii") || l.starts_with("rc")),
        "{listed}"
    );
}

#[test]
fn rpm_installs_into_a_root_directory() {
    require_root("rpm --root writes files owned by root");
    let built = packages::build(1);
    let root = tempfile::tempdir().unwrap();
    // --noscripts: the scriptlets run chrooted into the root directory,
    // which has no shell; --nodeps: nor a glibc.
    let out = ok(
        "rpm -i --root",
        run(Command::new("rpm")
            .args(["-i", "--nodeps", "--noscripts", "--root"])
            .arg(root.path())
            .arg(&built.mgr_rpm)
            .arg(&built.server_rpm)),
    );
    println!("{out}");
    for pkg in ["cmappmgr", "cmappserver"] {
        let files = ok(
            "rpm -ql",
            run(Command::new("rpm").args(["-ql", "--root"]).arg(root.path()).arg(pkg)),
        );
        println!("rpm -ql {pkg}:\n{files}");
        for f in files.lines() {
            let p = root.path().join(f.trim_start_matches('/'));
            assert!(
                std::fs::symlink_metadata(&p).is_ok(),
                "{pkg}: {f} listed but not installed"
            );
        }
    }
    let link = std::fs::read_link(root.path().join("usr/sbin/cmappserver")).unwrap();
    assert_eq!(link, Path::new("/opt/hp/cmappserver/cmappserver"));
    let state = std::fs::metadata(root.path().join("var/lib/cmappserver")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(state.permissions().mode() & 0o777, 0o700);
}
