//! The guest-local attack surface: the state directory, the shim sockets,
//! the shims' version, and what a monitored process inherits. The attacker
//! is an unprivileged guest user (`nobody`, through `setpriv`) running
//! `cmapp-hostile`; the server runs as root, as in production.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cmapp_tests::keys::{self, Keys};
use cmapp_tests::libvirt::processes_mentioning;
use cmapp_tests::mgr::{pid_in, Mgr};
use cmapp_tests::output::Lines;
use cmapp_tests::server::{wait_child, Server};
use cmapp_tests::{alive, require_root, wait_until, WAIT};
use nix::sys::signal::Signal;

const NOBODY: u32 = 65534;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    keys: Keys,
    conf: PathBuf,
}

/// A test directory other users may traverse (as /var/lib is), so that only
/// the server's own modes stand between them and its state directory.
fn fixture() -> Fixture {
    require_root("the attacker runs as another user");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let keys = keys::pinned(&dir, "");
    let conf = keys::manager_conf(&dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    Fixture {
        _tmp: tmp,
        dir,
        keys,
        conf,
    }
}

/// A script that runs `prelude` and then execs the real cmappserver (so the
/// server's pid, and its /proc/self/exe, are the real binary's).
fn wrapper(dir: &Path, prelude: &str) -> PathBuf {
    let path = dir.join("cmappserver-wrapped");
    let text = format!(
        "#!/bin/sh\n{prelude}\nexec {} \"$@\"\n",
        cmapp_tests::bin("cmappserver").display()
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs `cmapp-hostile args` as `nobody`; returns its exit code and stdout.
fn as_nobody(args: &[&str]) -> (i32, String) {
    hostile(true, args)
}

fn hostile(unprivileged: bool, args: &[&str]) -> (i32, String) {
    let mut cmd = if unprivileged {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(cmapp_tests::bin("cmapp-hostile"));
        c
    } else {
        Command::new(cmapp_tests::bin("cmapp-hostile"))
    };
    let out = cmd.args(args).stdin(Stdio::null()).output().expect("run cmapp-hostile");
    let text = cmapp_tests::stdout_and_stderr(&out);
    (out.status.code().unwrap_or(-1), text)
}

/// An app that runs until `flag` exists, then exits with `code`.
fn waits_for(flag: &Path, code: i32) -> String {
    format!("while [ ! -e {} ]; do sleep 0.05; done; exit {code}", flag.display())
}

fn record_of(server: &Server, pid: u32) -> PathBuf {
    let r = server.recorded().into_iter().find(|r| r.pid == pid).expect("recorded");
    server.state_dir.join("procs").join(r.id)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// A server started with umask 000, and one watched application.
struct LooseUmask {
    f: Fixture,
    server: Server,
    mgr: Mgr,
    pid: u32,
    flag: PathBuf,
    record: PathBuf,
}

/// A manager whose application runs until `flag` exists, then exits 42;
/// returns it once started, with the application's pid, the flag and its record.
fn launch_waiting(f: &Fixture, server: &Server) -> (Mgr, u32, PathBuf, PathBuf) {
    let flag = f.dir.join("flag");
    let mgr = Mgr::spawn(
        &f.conf,
        &server.node(),
        30.0,
        &[],
        &["/bin/sh", "-c", &waits_for(&flag, 42)],
    );
    let pid = pid_in(
        &mgr.err
            .wait_for("started", WAIT)
            .unwrap_or_else(|| panic!("{}", mgr.err.text())),
    );
    let record = record_of(server, pid);
    (mgr, pid, flag, record)
}

fn loose_umask() -> LooseUmask {
    let f = fixture();
    let server = Server::start_bin(&f.dir.join("srv"), &f.keys, "", wrapper(&f.dir, "umask 000"));
    let (mgr, pid, flag, record) = launch_waiting(&f, &server);
    LooseUmask {
        f,
        server,
        mgr,
        pid,
        flag,
        record,
    }
}

#[test]
fn another_user_cannot_stop_an_application_through_its_shim_socket_even_under_a_loose_umask() {
    let mut t = loose_umask();
    let sock = t.record.join("sock");
    let (code, out) = as_nobody(&["stop", sock.to_str().unwrap()]);
    assert_eq!(code, 3, "the attacker reached the shim: {out}");
    assert!(alive(t.pid), "the application was stopped by another user: {out}");
    assert!(t.mgr.running(), "{}", t.mgr.err.text());
    // The tree has explicit modes, whatever the umask.
    let state = &t.server.state_dir;
    for (path, want) in [
        (state.clone(), 0o700),
        (state.join("procs"), 0o700),
        (t.record.clone(), 0o700),
        (t.record.join("meta.json"), 0o600),
        (t.record.join("pid.json"), 0o600),
        (sock.clone(), 0o600),
        (state.join("lock"), 0o600),
        (state.join("boot_id"), 0o600),
    ] {
        assert_eq!(mode(&path), want, "mode of {}", path.display());
    }
    // Loosened by hand, the socket still serves only the server's user.
    for (path, m) in [
        (state.clone(), 0o755),
        (state.join("procs"), 0o755),
        (t.record.clone(), 0o755),
        (sock.clone(), 0o777),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let (code, out) = as_nobody(&["stop", sock.to_str().unwrap()]);
    assert_eq!(code, 3, "the shim served another user: {out}");
    assert!(alive(t.pid), "the application was stopped by another user: {out}");
    std::fs::write(&t.flag, "").unwrap();
    assert_eq!(t.mgr.code(), 42, "{}", t.mgr.err.text());
    drop(t.server);
    drop(t.f);
}

#[test]
fn a_symlinked_temporary_exit_record_overwrites_no_file() {
    let mut t = loose_umask();
    let victim = t.f.dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let link = t.record.join(".exit.json.tmp");
    let (code, out) = as_nobody(&["symlink", link.to_str().unwrap(), victim.to_str().unwrap()]);
    assert_eq!(
        code, 3,
        "another user could plant a symlink in a record directory: {out}"
    );
    // Even a link the server's own user planted is not followed.
    let (code, out) = hostile(false, &["symlink", link.to_str().unwrap(), victim.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    std::fs::write(&t.flag, "").unwrap();
    assert_eq!(t.mgr.code(), 42, "{}", t.mgr.err.text());
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious",
        "the shim wrote through the symlink"
    );
    drop(t.server);
}

#[test]
fn symlinks_planted_at_the_next_record_ids_redirect_nothing() {
    let f = fixture();
    let server = Server::start_bin(&f.dir.join("srv"), &f.keys, "", wrapper(&f.dir, "umask 000"));
    let target = f.dir.join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    let procs = server.state_dir.join("procs");
    let (code, out) = as_nobody(&[
        "plant",
        procs.to_str().unwrap(),
        &server.pid().to_string(),
        target.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "another user could plant records: {out}");
    let (code, out) = Mgr::run_in(
        None,
        &cmapp_tests::mgr::monitor_args(&f.conf, &server.node(), 30.0, &[], &["/bin/sh", "-c", "exit 5"]),
        WAIT,
    );
    assert_eq!(code, 5, "{}", out.err.text());
    let written: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        written.is_empty(),
        "records written through planted symlinks: {written:?}"
    );
}

/// A process group leader the test owns: what a forged record would name.
struct Victim(std::process::Child);

impl Victim {
    fn start() -> Victim {
        use std::os::unix::process::CommandExt;
        Victim(Command::new("sleep").arg("1000").process_group(0).spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_forged_pid_record_makes_the_next_server_kill_nothing() {
    let f = fixture();
    let mut server = Server::start_bin(&f.dir.join("srv"), &f.keys, "", wrapper(&f.dir, "umask 000"));
    let procs = server.state_dir.join("procs");
    let victim = Victim::start();
    let (code, out) = as_nobody(&["forge", procs.to_str().unwrap(), &victim.pid().to_string()]);
    assert_eq!(code, 3, "another user could forge a record: {out}");
    // A record the server's user did not write (planted before this version,
    // or through a directory that was loose) is not trusted either.
    let (code, out) = hostile(false, &["forge", procs.to_str().unwrap(), &victim.pid().to_string()]);
    assert_eq!(code, 0, "{out}");
    let forged = procs.join("forged");
    for p in [forged.clone(), forged.join("meta.json"), forged.join("pid.json")] {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    server.kill9();
    server.restart(None);
    assert!(
        alive(victim.pid()),
        "the server killed the process a forged record named"
    );
    server
        .log
        .wait_for("forged", WAIT)
        .unwrap_or_else(|| panic!("the untrusted record is not named in the log:\n{}", server.log.text()));
    // The harness ends what records name; this one names the victim.
    std::fs::remove_dir_all(&forged).unwrap();
}

/// Runs cmappserver on a configuration until it exits; returns its code and stderr.
fn run_server(conf: &Path) -> (i32, String) {
    let mut child = Command::new(cmapp_tests::bin("cmappserver"))
        .arg("--conf")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Lines::default();
    log.follow(child.stderr.take().unwrap());
    let status = wait_child(&mut child);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    log.wait_closed(WAIT);
    (status.and_then(|s| s.code()).unwrap_or(-1), log.text())
}

fn server_conf(f: &Fixture, state: &Path, name: &str) -> PathBuf {
    let conf = f.dir.join(name);
    std::fs::write(
        &conf,
        format!(
            "keyStore={}\ntrustStore={}\nstateDir={}\nlisten=127.0.0.1:0\n",
            f.keys.server_private.display(),
            f.keys.server_trust.display(),
            state.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    conf
}

#[test]
fn the_server_refuses_a_state_directory_others_could_tamper_with() {
    let f = fixture();
    let parent = f.dir.join("var");
    let state = parent.join("state");
    std::fs::create_dir_all(state.join("procs")).unwrap();
    // Records of this boot: the server keeps (and so checks) them.
    std::fs::copy("/proc/sys/kernel/random/boot_id", state.join("boot_id")).unwrap();
    let conf = server_conf(&f, &state, "s.conf");
    let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    set(&parent, 0o755);

    set(&state, 0o777);
    let (code, log) = run_server(&conf);
    assert_eq!(code, 78, "{log}");
    assert!(
        log.contains(&format!("{} is writable by others (mode 0777)", state.display())),
        "{log}"
    );

    set(&state, 0o700);
    set(&parent, 0o775);
    let (code, log) = run_server(&conf);
    assert_eq!(code, 78, "{log}");
    assert!(
        log.contains(&format!("{} is writable by its group (mode 0775)", parent.display())),
        "{log}"
    );

    set(&parent, 0o755);
    set(&state.join("procs"), 0o757);
    let (code, log) = run_server(&conf);
    assert_eq!(code, 78, "{log}");
    assert!(
        log.contains(&format!(
            "{} is writable by others (mode 0757)",
            state.join("procs").display()
        )),
        "{log}"
    );

    set(&state.join("procs"), 0o700);
    std::os::unix::fs::chown(&state, Some(NOBODY), None).unwrap();
    let (code, log) = run_server(&conf);
    assert_eq!(code, 78, "{log}");
    assert!(
        log.contains(&format!("{} is owned by uid {NOBODY}", state.display())),
        "{log}"
    );
}

#[test]
fn a_second_connection_to_a_shim_steals_no_output_and_loses_no_stop() {
    let f = fixture();
    let server = Server::start(&f.dir.join("srv"), &f.keys, "");
    let flag = f.dir.join("tick");
    let app = format!(
        "while :; do if [ -e {0} ]; then rm {0}; echo tick; fi; sleep 0.05; done",
        flag.display()
    );
    let mut m = Mgr::spawn(
        &f.conf,
        &server.node(),
        30.0,
        &["-stop_on_halt"],
        &["/bin/sh", "-c", &app],
    );
    let pid = pid_in(
        &m.err
            .wait_for("started", WAIT)
            .unwrap_or_else(|| panic!("{}", m.err.text())),
    );
    let sock = record_of(&server, pid).join("sock");
    // The server's own user connects a second time, and holds on.
    let mut holder = Command::new(cmapp_tests::bin("cmapp-hostile"))
        .args(["hold", sock.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let held = Lines::default();
    held.follow(holder.stdout.take().unwrap());
    let refused = held.wait_for("refused", WAIT);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(refused.is_some(), "the shim accepted a second link: {}", held.text());
    // Output still reaches the manager, and a stop still stops.
    std::fs::write(&flag, "").unwrap();
    m.expect_line("tick", WAIT);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(wait_until(WAIT, || !alive(pid)), "the application outlived its stop");
}

#[test]
fn a_shim_of_another_version_never_starts_the_application() {
    let f = fixture();
    let server = Server::start_with_env(&f.dir.join("srv"), &f.keys, "CMAPPSERVER_TEST_SHIM_PROTOCOL", "99");
    let ran = f.dir.join("ran");
    let app = format!("touch {}; exec sleep 1000", ran.display());
    let (code, m) = Mgr::run_in(
        None,
        &cmapp_tests::mgr::monitor_args(&f.conf, &server.node(), 5.0, &[], &["/bin/sh", "-c", &app]),
        WAIT,
    );
    // cmappserver's own failure has its own code: not 75, "refused at the limit".
    assert_eq!(code, 71, "{}", m.err.text());
    assert!(
        m.err.contains("shim protocol 99"),
        "the manager was not told why: {}",
        m.err.text()
    );
    let state = server.state_dir.display().to_string();
    assert!(
        wait_until(WAIT, || processes_mentioning(&state).is_empty()),
        "the refused shim did not go away"
    );
    assert!(
        !ran.exists(),
        "the application was started by a shim whose hello was refused"
    );
    assert!(processes_mentioning(&ran.display().to_string()).is_empty());
}

#[test]
fn launches_still_work_after_the_servers_binary_file_was_removed() {
    let f = fixture();
    let copy = f.dir.join("old/cmappserver");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(cmapp_tests::bin("cmappserver"), &copy).unwrap();
    let server = Server::start_bin(&f.dir.join("srv"), &f.keys, "", copy.clone());
    // A package upgrade removes (or replaces) the file the server runs from.
    std::fs::remove_file(&copy).unwrap();
    let (code, m) = Mgr::run_in(
        None,
        &cmapp_tests::mgr::monitor_args(&f.conf, &server.node(), 10.0, &[], &["/bin/sh", "-c", "exit 3"]),
        WAIT,
    );
    assert_eq!(code, 3, "{}", m.err.text());
}

/// The output lines of a run of `run` under a server started by `prelude`
/// with configuration `extra` and environment `env`.
fn app_output(prelude: &str, extra: &str, env: Vec<(String, String)>, run: &[&str]) -> Vec<String> {
    let f = fixture();
    let server = Server::start_with(&f.dir.join("srv"), &f.keys, extra, wrapper(&f.dir, prelude), None, env);
    let (code, m) = Mgr::run_in(
        None,
        &cmapp_tests::mgr::monitor_args(&f.conf, &server.node(), 10.0, &["-forward_output"], run),
        WAIT,
    );
    assert_eq!(code, 0, "{}", m.err.text());
    m.out.snapshot()
}

#[test]
fn descriptors_the_daemon_inherited_never_reach_an_application() {
    let fds = app_output(
        "exec 7</etc/hostname 9>/dev/null",
        "",
        Vec::new(),
        &["/bin/ls", "/proc/self/fd"],
    );
    // 0-2, and 3: the directory ls is reading.
    let stray: Vec<&String> = fds
        .iter()
        .filter(|fd| !["0", "1", "2", "3"].contains(&fd.as_str()))
        .collect();
    assert!(stray.is_empty(), "descriptors leaked to the application: {fds:?}");
}

#[test]
fn the_application_gets_a_clean_environment_when_configured() {
    let env = vec![("CMAPP_SECRET".to_string(), "daemon-only".to_string())];
    let inherited = app_output("", "", env.clone(), &["/usr/bin/env"]);
    assert!(
        inherited.iter().any(|l| l == "CMAPP_SECRET=daemon-only"),
        "{inherited:?}"
    );
    let mut clean = app_output(
        "",
        "processEnvironment=clean\nenvironment=GREETING=hello world\nenvironment=LANG=C.UTF-8\n",
        env,
        &["/usr/bin/env"],
    );
    clean.sort();
    assert_eq!(
        clean,
        [
            "GREETING=hello world",
            "LANG=C.UTF-8",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
}

#[test]
fn the_daemons_oom_score_does_not_reach_the_application() {
    // The unit's OOMScoreAdjust=-500 cannot be reproduced without
    // CAP_SYS_RESOURCE; a raised score shows the same inheritance.
    let out = app_output(
        "echo 100 > /proc/self/oom_score_adj",
        "processOomScoreAdjust=300\n",
        Vec::new(),
        &["/bin/cat", "/proc/self/oom_score_adj"],
    );
    assert_eq!(out, ["300"]);
}

#[test]
fn configuration_and_trust_files_others_can_write_are_refused() {
    let f = fixture();
    let conf = server_conf(&f, &f.dir.join("state"), "s.conf");
    let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();

    set(&conf, 0o666);
    let (code, log) = run_server(&conf);
    assert_eq!(code, 78, "{log}");
    assert!(
        log.contains(&format!("{} is writable by others (mode 0666)", conf.display())),
        "{log}"
    );

    set(&conf, 0o644);
    set(&f.keys.server_trust, 0o664);
    let (code, log) = run_server(&conf);
    assert_eq!(code, 78, "{log}");
    assert!(log.contains(&f.keys.server_trust.display().to_string()), "{log}");
    assert!(
        log.contains("trust store is writable by its group (mode 0664)"),
        "{log}"
    );

    // The manager's side: its configuration, then its trust store.
    set(&f.conf, 0o646);
    let check = ["check", "-node", "127.0.0.1:9", "--conf", f.conf.to_str().unwrap()];
    let (code, m) = Mgr::run_in(None, &check, WAIT);
    assert_eq!(code, 78, "{}", m.err.text());
    assert!(m.err.contains("(mode 0646)"), "{}", m.err.text());
    set(&f.conf, 0o644);
    set(&f.keys.client_trust, 0o666);
    let (code, m) = Mgr::run_in(None, &check, WAIT);
    assert_eq!(code, 78, "{}", m.err.text());
    assert!(
        m.err.contains("trust store is writable by others (mode 0666)"),
        "{}",
        m.err.text()
    );
}

#[test]
fn a_shim_socket_served_by_another_user_is_not_adopted() {
    let f = fixture();
    let mut server = Server::start(&f.dir.join("srv"), &f.keys, "");
    let (mut m, pid, flag, record) = launch_waiting(&f, &server);
    let shim = server.recorded().into_iter().find(|r| r.pid == pid).unwrap().shim_pid;
    // The server and the shim die; another user's listener takes the socket's place.
    server.kill9();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim as i32), Signal::SIGKILL).unwrap();
    assert!(wait_until(WAIT, || !alive(shim)));
    let spot = f.dir.join("nobody");
    std::fs::create_dir(&spot).unwrap();
    std::os::unix::fs::chown(&spot, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut fake = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(cmapp_tests::bin("cmapp-hostile"))
        .args(["listen", spot.join("sock").to_str().unwrap(), &pid.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let said = Lines::default();
    said.follow(fake.stdout.take().unwrap());
    said.wait_for("listening", WAIT).expect("the fake shim listens");
    std::fs::rename(spot.join("sock"), record.join("sock")).unwrap();
    server.restart(None);
    // Not adopted: the status is lost, and the orphaned application is killed.
    let code = m.code();
    let _ = fake.kill();
    let _ = fake.wait();
    assert_eq!(
        code,
        70,
        "{}\nserver:\n{}\nfake shim:\n{}",
        m.err.text(),
        server.log.text(),
        said.text()
    );
    assert!(
        !said.contains("asked"),
        "the server talked to another user's socket: {}",
        said.text()
    );
    assert!(wait_until(WAIT, || !alive(pid)), "the orphaned application still runs");
    drop(flag);
}
