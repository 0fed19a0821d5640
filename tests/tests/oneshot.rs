//! The one-shot verbs for cluster managers (`cmappmgr start|monitor|stop|watch`)
//! against a real cmappserver: OCF exit codes one to one, an exit reported
//! once, the stop of a whole process group, and the watcher that pushes an
//! exit to a command the moment it happens.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cmapp_tests::keys::{self, Keys};
use cmapp_tests::mgr::{pid_in, Mgr};
use cmapp_tests::server::Server;
use cmapp_tests::{alive, sleeps, wait_until, WAIT};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Fields drop in order: the server (and its processes) before the directory.
struct Guest {
    server: Server,
    conf: PathBuf,
    dir: PathBuf,
    _keys: Keys,
    _tmp: tempfile::TempDir,
}

fn guest() -> Guest {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let keys = keys::pinned(&dir, "");
    let server = Server::start(&dir, &keys, "stopGracePeriod=2\n");
    let conf = keys::manager_conf(&dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    Guest {
        server,
        conf,
        dir,
        _keys: keys,
        _tmp: tmp,
    }
}

/// `cmappmgr VERB -node NODE -cmappserver_timeout T --conf C --no_syslog [extra] -service RUN...`
fn verb_args(verb: &str, conf: &Path, node: &str, timeout: f64, extra: &[&str], run: &[&str]) -> Vec<String> {
    let mut a = vec![verb.to_string()];
    a.extend(cmapp_tests::mgr::monitor_args(conf, node, timeout, extra, run));
    a
}

impl Guest {
    /// Runs a verb to completion; returns its exit code and its run.
    fn verb(&self, verb: &str, run: &[&str]) -> (i32, Mgr) {
        self.verb_with(verb, &[], run)
    }

    fn verb_with(&self, verb: &str, extra: &[&str], run: &[&str]) -> (i32, Mgr) {
        let args = verb_args(verb, &self.conf, &self.server.node(), 5.0, extra, run);
        Mgr::run_in(None, &args, WAIT + Duration::from_secs(20))
    }

    fn watch(&self, on_exit: &str, extra: &[&str], run: &[&str]) -> Mgr {
        let mut e = vec!["-on_exit", on_exit];
        e.extend_from_slice(extra);
        Mgr::spawn_args(&verb_args("watch", &self.conf, &self.server.node(), 5.0, &e, run))
    }

    /// Starts `run` and returns the application's pid.
    fn start(&self, run: &[&str]) -> u32 {
        let (code, m) = self.verb("start", run);
        assert_eq!(code, 0, "start: {}", m.err.text());
        pid_in(&m.expect_line("started", WAIT))
    }
}

const APP: &[&str] = &["/bin/sh", "-c", "sleep 1000 & wait"];

#[test]
fn start_launches_once_and_returns_while_the_application_runs() {
    let g = guest();
    let pid = g.start(APP);
    assert!(alive(pid), "the application must keep running after start returns");
    // A second start attaches: same process, no second copy.
    let (code, m) = g.verb("start", APP);
    assert_eq!(code, 0, "{}", m.err.text());
    assert_eq!(pid_in(&m.expect_line("already running", WAIT)), pid);
    let (code, m) = g.verb("monitor", APP);
    assert_eq!(code, 0, "{}", m.err.text());
}

#[test]
fn monitor_reports_an_exit_once_with_its_code() {
    let g = guest();
    let pid = g.start(APP);
    // The whole group: the shell and its `sleep`, which would outlive the test.
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(wait_until(WAIT, || !alive(pid)));
    // The status may take a moment to reach the server: 0 until it has.
    let (code, m) = loop {
        let (code, m) = g.verb("monitor", APP);
        if code != 0 {
            break (code, m);
        }
    };
    assert_eq!(code, 7, "{}", m.err.text());
    assert!(m.err.contains("PROGRAM EXIT CODE 137"), "{}", m.err.text());
    // Acknowledged: the next monitor says "not running" without the code.
    let (code, m) = g.verb("monitor", APP);
    assert_eq!(code, 7, "{}", m.err.text());
    assert!(
        !m.err.contains("PROGRAM EXIT CODE"),
        "reported twice:\n{}",
        m.err.text()
    );
    assert!(m.err.contains("is not running"), "{}", m.err.text());
    assert!(
        wait_until(WAIT, || g.server.recorded().is_empty()),
        "the record must be gone once acknowledged"
    );
}

#[test]
fn stop_stops_the_process_group_and_returns_once_it_is_gone() {
    let g = guest();
    let marker = g.dir.join("grandchild");
    let script = format!("sleep 1000 & echo $! > {}; wait", marker.display());
    let run = ["/bin/sh", "-c", script.as_str()];
    let pid = g.start(&run);
    assert!(wait_until(WAIT, || std::fs::read_to_string(&marker)
        .is_ok_and(|s| s.ends_with('\n'))));
    let grandchild: u32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    let (code, m) = g.verb("stop", &run);
    assert_eq!(code, 0, "{}", m.err.text());
    // Gone when stop returns (zombies aside, which their parent reaps).
    assert!(
        !alive(pid) && !alive(grandchild),
        "stop returned before the group was gone"
    );
    // The record's directory is deleted off the reply path, a moment after the ack.
    assert!(
        wait_until(WAIT, || g.server.recorded().is_empty()),
        "{:?}",
        g.server.recorded()
    );
    // Stopping what does not run is success; monitor says not running.
    let (code, m) = g.verb("stop", &run);
    assert_eq!(code, 0, "{}", m.err.text());
    assert!(m.err.contains("nothing to stop"), "{}", m.err.text());
    assert_eq!(g.verb("monitor", &run).0, 7);
}

#[test]
fn stop_kills_a_process_that_ignores_term_after_the_grace() {
    let g = guest();
    let run = ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"];
    let pid = g.start(&run);
    let t0 = Instant::now();
    let (code, m) = g.verb("stop", &run);
    assert_eq!(code, 0, "{}", m.err.text());
    assert!(!alive(pid));
    assert!(t0.elapsed() >= Duration::from_secs(2), "KILL came before the grace");
    assert!(m.err.contains("SIGKILL"), "{}", m.err.text());
}

#[test]
fn ocf_exit_codes_for_what_goes_wrong() {
    let g = guest();
    // The program is not installed in the guest: 5.
    let (code, m) = g.verb("start", &["/nonexistent/app"]);
    assert_eq!(code, 5, "{}", m.err.text());
    assert!(m.err.contains("PROGRAM EXIT CODE 127"), "{}", m.err.text());
    // A run string that cannot be split: 2 (bad argument).
    let (code, m) = g.verb("start", &["/bin/sh -c 'unbalanced"]);
    assert_eq!(code, 2, "{}", m.err.text());
    // A bad command line: 2.
    let (code, m) = Mgr::run_in(None, &["monitor", "-node", "g", "-bogus", "-service", "x"], WAIT);
    assert_eq!(code, 2, "{}", m.err.text());
    // An unusable configuration: 6.
    let bad = g.dir.join("bad.conf");
    std::fs::write(&bad, "keyStore=/nonexistent\n").unwrap();
    let (code, m) = Mgr::run_in(None, &verb_args("monitor", &bad, &g.server.node(), 5.0, &[], APP), WAIT);
    assert_eq!(code, 6, "{}", m.err.text());
}

#[test]
fn an_unreachable_guest_is_1_after_the_timeout_saying_so() {
    let g = guest();
    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let node = free.local_addr().unwrap().to_string();
    drop(free);
    let t0 = Instant::now();
    let (code, m) = Mgr::run_in(None, &verb_args("monitor", &g.conf, &node, 1.0, &[], APP), WAIT);
    assert_eq!(code, 1, "{}", m.err.text());
    assert!(t0.elapsed() >= Duration::from_secs(1), "gave up before the timeout");
    assert!(m.err.contains("Could not connect to the node"), "{}", m.err.text());
    assert!(m.err.contains("unreachable for 1 s"), "{}", m.err.text());
}

/// A report command that writes what it was told to `file`.
fn reporter(dir: &Path, file: &Path) -> String {
    let script = dir.join("report.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$CMAPP_EXIT_CODE $1\" >> {f}.tmp && mv {f}.tmp {f}\n",
            f = file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!("{} resource-1", script.display())
}

#[test]
fn the_watcher_reports_an_exit_the_moment_it_happens_and_only_once() {
    let g = guest();
    let reported = g.dir.join("reported");
    let pid = g.start(APP);
    let mut w = g.watch(&reporter(&g.dir, &reported), &[], APP);
    w.expect_line("watching", WAIT);
    let t0 = Instant::now();
    // The whole group: the shell and its `sleep`, which would outlive the test.
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(wait_until(WAIT, || reported.exists()), "{}", w.err.text());
    let took = t0.elapsed();
    assert_eq!(w.code(), 0, "{}", w.err.text());
    assert_eq!(std::fs::read_to_string(&reported).unwrap(), "137 resource-1\n");
    assert!(took < Duration::from_secs(2), "reported after {took:?}");
    assert!(w.err.contains("PROGRAM EXIT CODE 137"), "{}", w.err.text());
    // The watcher acknowledged it: the monitor does not report it again.
    let (code, m) = g.verb("monitor", APP);
    assert_eq!(code, 7, "{}", m.err.text());
    assert!(
        !m.err.contains("PROGRAM EXIT CODE"),
        "reported twice:\n{}",
        m.err.text()
    );
}

#[test]
fn a_watcher_started_after_the_exit_still_reports_it_once() {
    let g = guest();
    let reported = g.dir.join("reported");
    let pid = g.start(APP);
    // The whole group: the shell and its `sleep`, which would outlive the test.
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(wait_until(WAIT, || g.server.log.contains("killed by signal 9")));
    let mut w = g.watch(&reporter(&g.dir, &reported), &[], APP);
    assert_eq!(w.code(), 0, "{}", w.err.text());
    assert_eq!(std::fs::read_to_string(&reported).unwrap(), "137 resource-1\n");
    // A second watcher finds nothing to watch and reports nothing.
    let mut w = g.watch(&reporter(&g.dir, &reported), &[], APP);
    assert_eq!(w.code(), 0, "{}", w.err.text());
    assert!(w.err.contains("is not running"), "{}", w.err.text());
    assert_eq!(std::fs::read_to_string(&reported).unwrap(), "137 resource-1\n");
}

#[test]
fn a_stopped_watcher_reports_nothing_and_leaves_the_application_running() {
    let g = guest();
    let reported = g.dir.join("reported");
    let pid = g.start(APP);
    let mut w = g.watch(&reporter(&g.dir, &reported), &[], APP);
    w.expect_line("watching", WAIT);
    w.signal(Signal::SIGTERM);
    assert_eq!(w.code(), 0, "{}", w.err.text());
    assert!(alive(pid), "a watcher never stops the application");
    // Then the stop verb: nothing reported, the application gone.
    let (code, m) = g.verb("stop", APP);
    assert_eq!(code, 0, "{}", m.err.text());
    assert!(!alive(pid));
    assert!(!reported.exists(), "a stop on request is not a failure");
}

#[test]
fn the_watcher_does_not_outlive_the_process_it_is_tied_to() {
    let g = guest();
    let reported = g.dir.join("reported");
    let pid = g.start(APP);
    let mut executor = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
    let tie = executor.id().to_string();
    let mut w = g.watch(&reporter(&g.dir, &reported), &["-while_pid", &tie], APP);
    w.expect_line("watching", WAIT);
    executor.kill().unwrap();
    executor.wait().unwrap();
    assert_eq!(w.code(), 0, "{}", w.err.text());
    assert!(w.err.contains("is gone"), "{}", w.err.text());
    assert!(alive(pid));
    assert!(!reported.exists());
}

/// The watcher the OCF agent starts (`-while_pid` its executor) has no timer
/// but its pings: it learns of the executor's end from a pidfd, and its ping
/// clock wakes it once per ping (then the pong). It read `/proc` every half
/// second and its pings went through tokio's timer wheel (issue 14: the
/// host's cost of idle managers).
#[test]
fn an_idle_watcher_tied_to_a_process_wakes_up_only_for_its_pings() {
    let g = guest();
    let conf = keys::manager_conf(
        &g.dir,
        "ping.conf",
        &g._keys.client_private,
        &g._keys.client_trust,
        "pingInterval=0.2\n",
    );
    let reported = g.dir.join("reported");
    let pid = g.start(APP);
    let mut executor = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
    let tie = executor.id().to_string();
    let on_exit = reporter(&g.dir, &reported);
    let args = verb_args(
        "watch",
        &conf,
        &g.server.node(),
        5.0,
        &["-on_exit", &on_exit, "-while_pid", &tie],
        APP,
    );
    let mut w = Mgr::spawn_args(&args);
    w.expect_line("watching", WAIT);
    std::thread::sleep(Duration::from_millis(500));
    let (s0, t0) = (sleeps(w.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let (s1, window) = (sleeps(w.pid()), t0.elapsed());
    let pings = window.as_secs_f64() / 0.2;
    let per_ping = (s1 - s0) as f64 / pings;
    // Its end still comes at once when the executor goes.
    executor.kill().unwrap();
    executor.wait().unwrap();
    assert_eq!(w.code(), 0, "{}", w.err.text());
    assert!(w.err.contains("is gone"), "{}", w.err.text());
    assert!(alive(pid));
    assert!(
        // At least the ping clock's own wake-up: fewer means no pings at
        // all (or a process whose /proc could not be read).
        (1.0..=2.3).contains(&per_ping),
        "{} sleeps in {window:?} ({pings:.0} pings): {per_ping:.2} per ping, 1 to 2 expected",
        s1 - s0
    );
}

#[test]
fn the_watcher_rides_out_a_server_restart_and_still_reports() {
    let mut g = guest();
    let reported = g.dir.join("reported");
    let pid = g.start(APP);
    let mut w = g.watch(&reporter(&g.dir, &reported), &[], APP);
    w.expect_line("watching", WAIT);
    g.server.kill9();
    g.server.restart(None);
    // The whole group: the shell and its `sleep`, which would outlive the test.
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert_eq!(w.code(), 0, "{}", w.err.text());
    assert_eq!(
        std::fs::read_to_string(&reported).ok().as_deref(),
        Some("137 resource-1\n"),
        "{}\nserver:\n{}",
        w.err.text(),
        g.server.log.text()
    );
}
