//! The core pair over loopback: launch, exit codes, output, limits, TLS
//! rejections, bad frames, timeouts, re-attach, stop and detach.
//! Every test runs the real binaries with key material made at test time.

use std::path::Path;
use std::time::{Duration, Instant};

use cmapp_tests::fixture::Fixture;
use cmapp_tests::keys::{self, Keys};
use cmapp_tests::mgr::{pid_in, Mgr};
use cmapp_tests::server::Server;
use cmapp_tests::{alive, wait_until, WAIT};
use nix::sys::signal::Signal;

fn fixture(extra: &str) -> Fixture {
    Fixture::new(extra)
}

#[test]
fn exit_codes_and_signals_pass_through() {
    let f = fixture("");
    for (run, code) in [
        (vec!["/bin/sh", "-c", "exit 0"], 0),
        (vec!["/bin/sh", "-c", "exit 7"], 7),
        (vec!["/bin/sh -c 'exit 5'"], 5),
        (vec!["/bin/sh", "-c", "kill -9 $$"], 137),
        (vec!["/bin/sh", "-c", "kill -TERM $$"], 143),
    ] {
        let mut m = f.mgr(&run);
        assert_eq!(m.code(), code, "{run:?}: {}", m.err.text());
        assert!(
            m.err.contains(&format!("PROGRAM EXIT CODE {code}")),
            "{run:?}: {}",
            m.err.text()
        );
    }
}

#[test]
fn a_missing_program_exits_127_and_a_non_executable_one_126() {
    let f = fixture("");
    let mut m = f.mgr(&["/nonexistent/program", "x"]);
    assert_eq!(m.code(), 127, "{}", m.err.text());
    assert!(
        m.err.contains("/nonexistent/program: No such file or directory"),
        "{}",
        m.err.text()
    );

    let script = f.dir.join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let mut m = f.mgr(&[script.to_str().unwrap()]);
    assert_eq!(m.code(), 126, "{}", m.err.text());
    assert!(m.err.contains("Permission denied"), "{}", m.err.text());
}

#[test]
fn output_lines_reach_the_managers_stdout_and_stderr() {
    let f = fixture("");
    let mut m = f.mgr(&[
        "/bin/sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; printf 'no newline'; exit 3",
    ]);
    assert_eq!(m.code(), 3, "{}", m.err.text());
    assert!(m.out.contains("to-stdout"), "stdout: {}", m.out.text());
    assert!(m.out.contains("no newline"), "stdout: {}", m.out.text());
    assert!(m.err.contains("to-stderr"), "stderr: {}", m.err.text());
}

#[test]
fn the_run_string_is_never_given_to_a_shell() {
    let f = fixture("");
    let marker = f.dir.join("should-not-exist");
    let run = format!("/bin/echo a;touch {} $(touch {}) *", marker.display(), marker.display());
    let mut m = f.mgr(&[&run]);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(
        m.out.contains(&format!("a;touch {} $(touch", marker.display())),
        "{}",
        m.out.text()
    );
    assert!(!marker.exists(), "a shell ran the run string");
}

#[test]
fn the_31st_process_is_refused_and_the_first_30_keep_running() {
    let f = fixture("");
    let mut managers: Vec<Mgr> = (0..30)
        .map(|i| f.mgr(&["/bin/sleep", &format!("{}", 1000 + i)]))
        .collect();
    for m in &managers {
        m.err
            .wait_for("started", WAIT)
            .unwrap_or_else(|| panic!("not started: {}", m.err.text()));
    }
    let pids: Vec<u32> = f.server.recorded().iter().map(|r| r.pid).collect();
    assert_eq!(pids.len(), 30);

    let mut extra = f.mgr(&["/bin/sleep", "2000"]);
    assert_eq!(extra.code(), 75, "{}", extra.err.text());
    assert!(
        extra.err.contains("limit of 30 monitored processes reached"),
        "{}",
        extra.err.text()
    );

    for m in &mut managers {
        assert!(m.running(), "a manager exited: {}", m.err.text());
    }
    assert!(pids.iter().all(|&p| alive(p)), "a monitored process died");
}

#[test]
fn no_server_listening_exits_1_after_about_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys::pinned(tmp.path(), "");
    let conf = keys::manager_conf(tmp.path(), "m.conf", &keys.client_private, &keys.client_trust, "");
    // A port that was just free: bind, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    let mut m = Mgr::spawn(&conf, &format!("127.0.0.1:{port}"), 2.0, &[], &["/bin/true"]);
    assert_eq!(m.code(), 1, "{}", m.err.text());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(4000),
        "took {took:?}"
    );
    assert!(
        m.err
            .contains(&format!("Could not connect to the node 127.0.0.1:{port}")),
        "{}",
        m.err.text()
    );
    assert!(m.err.contains("Connection refused"), "{}", m.err.text());
    // The line admins scrape for, right after (as the original's guide shows).
    let lines = m.err.snapshot();
    let at = lines
        .iter()
        .position(|l| l.contains("Could not connect to the node"))
        .unwrap();
    assert!(
        lines.get(at + 1).is_some_and(|l| l.ends_with("PROGRAM EXIT CODE 1")),
        "{}",
        m.err.text()
    );
}

#[test]
fn a_restarted_manager_reattaches_and_gets_an_exit_that_happened_meanwhile() {
    let f = fixture("");
    let flag = f.dir.join("finish");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done; exit 9", flag.display());
    let run = ["/bin/sh", "-c", script.as_str()];

    let mut first = f.mgr(&run);
    let started = first.err.wait_for("started", WAIT).expect("started");
    let pid = pid_in(&started);
    first.kill9();

    // Same service string: attaches to the same process.
    let mut second = f.mgr(&run);
    let attached = second
        .err
        .wait_for("attached to running", WAIT)
        .unwrap_or_else(|| panic!("{}", second.err.text()));
    assert_eq!(pid_in(&attached), pid);
    second.kill9();

    // The process ends while no manager is attached...
    std::fs::write(&flag, "").unwrap();
    f.server.log.wait_for("exit code 9", WAIT).expect("server saw the exit");
    // ...and the next manager still gets its real exit code.
    let mut third = f.mgr(&run);
    assert_eq!(third.code(), 9, "{}", third.err.text());
    assert!(third.err.contains("PROGRAM EXIT CODE 9"));
    // Collected: a fourth manager starts a new process.
    std::fs::remove_file(&flag).unwrap();
    let fourth = f.mgr(&run);
    let started = fourth
        .err
        .wait_for("started", WAIT)
        .unwrap_or_else(|| panic!("{}", fourth.err.text()));
    assert_ne!(pid_in(&started), pid);
}

#[test]
fn sigterm_with_stop_on_halt_stops_the_application_and_its_grandchildren() {
    let f = fixture("stopGracePeriod=5\n");
    // TERM goes to the whole process group: the shell and its grandchild
    // (sleep) both die of it. (The KILL after the grace: the next test.)
    // Forwarded: the test reads the grandchild's pid from the running app.
    let mut m = f.mgr_with(
        &["-stop_on_halt", "-forward_output"],
        &["/bin/sh", "-c", "sleep 1000 & echo grandchild=$!; wait"],
    );
    let line = m.out.wait_for("grandchild=", WAIT).expect("grandchild pid");
    let grandchild: u32 = line.trim_start_matches("grandchild=").trim().parse().unwrap();
    let app = pid_in(&m.err.wait_for("started", WAIT).unwrap());
    assert!(alive(app) && alive(grandchild));
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(m.err.contains("stopped on request"), "{}", m.err.text());
    assert!(
        wait_until(WAIT, || !alive(app) && !alive(grandchild)),
        "application or grandchild survived"
    );
}

#[test]
fn a_process_that_ignores_term_is_killed_after_the_grace() {
    let f = fixture("stopGracePeriod=0.5\n");
    let mut m = f.mgr_with(
        &["-stop_on_halt", "-forward_output"],
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM; echo ready; while true; do sleep 0.05; done",
        ],
    );
    m.out.wait_for("ready", WAIT).expect("ready");
    let app = pid_in(&m.err.wait_for("started", WAIT).unwrap());
    let t0 = Instant::now();
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "killed before the grace ran out"
    );
    assert!(m.err.contains("SIGKILL"), "{}", m.err.text());
    assert!(wait_until(WAIT, || !alive(app)));
}

#[test]
fn detach_leaves_the_application_running() {
    let f = fixture("");
    let mut m = Mgr::spawn(&f.conf, &f.server.node(), 10.0, &["-detach"], &["/bin/sleep", "1000"]);
    let app = pid_in(&m.err.wait_for("started", WAIT).unwrap());
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(m.err.contains("detaching"), "{}", m.err.text());
    assert!(alive(app), "the application was stopped");
    // And a later manager re-attaches to it.
    let again = f.mgr(&["/bin/sleep", "1000"]);
    let line = again
        .err
        .wait_for("attached to running", WAIT)
        .unwrap_or_else(|| panic!("{}", again.err.text()));
    assert_eq!(pid_in(&line), app);
}

#[test]
fn heavy_output_and_a_grandchild_holding_stdout_do_not_hang_anything() {
    let f = fixture("");
    // Forwarded (within the rate limit), the heaviest path through the pair.
    let mut chatty = f.mgr_with(
        &["-forward_output"],
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do echo line $i; echo err $i >&2; i=$((i+1)); done; exit 3",
        ],
    );
    let mut holder = f.mgr(&["/bin/sh", "-c", "sleep 1000 & echo started-bg=$!; exit 4"]);
    let t0 = Instant::now();
    assert_eq!(holder.code(), 4, "{}", holder.err.text());
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "exit held up by the grandchild's open stdout"
    );
    // The grandchild is ours to end: left running it would hold every
    // descriptor it inherited (a CI lock, say) for 1000 s.
    let line = holder.out.wait_for("started-bg=", WAIT).expect("started-bg");
    let grandchild: i32 = line.trim_start_matches("started-bg=").trim().parse().unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(grandchild), Signal::SIGKILL);
    assert_eq!(chatty.code_within(Duration::from_secs(60)), 3, "{}", chatty.err.text());
    assert!(chatty.out.snapshot().len() > 100, "output was not forwarded");
}

#[test]
fn check_and_status_report_the_server() {
    let f = fixture("");
    let app = f.mgr(&["/bin/sleep", "1000"]);
    app.err.wait_for("started", WAIT).unwrap();
    let conf = f.conf.to_str().unwrap();
    let node = f.server.node();
    let mut check = Mgr::spawn_args(&["check", "-node", &node, "--conf", conf, "--no_syslog"]);
    assert_eq!(check.code(), 0, "{}", check.err.text());
    let line = check.out.wait_for("monitored processes", WAIT).unwrap();
    assert!(
        line.contains("cmappserver") && line.contains("1 monitored processes (limit 30)"),
        "{line}"
    );

    let mut status = Mgr::spawn_args(&["status", "--node", &node, "--conf", conf, "--json", "--no_syslog"]);
    assert_eq!(status.code(), 0, "{}", status.err.text());
    let v: serde_json::Value = serde_json::from_str(&status.out.text()).unwrap();
    assert_eq!(v[0]["service"], "/bin/sleep 1000");
    assert_eq!(v[0]["attached"], true);
    assert!(v[0]["exit"].is_null());

    let mut table = Mgr::spawn_args(&["status", "--node", &node, "--conf", conf, "--no_syslog"]);
    assert_eq!(table.code(), 0);
    assert!(
        table.out.contains("/bin/sleep 1000") && table.out.contains("running"),
        "{}",
        table.out.text()
    );
}

/// A pid file that cannot be written has its own exit code (73, EX_CANTCREAT),
/// not 1, which means "--check-config found a problem".
#[test]
fn an_unwritable_pid_file_exits_73_naming_it() {
    let f = fixture("");
    let conf = f.dir.join("second.conf");
    let text: String = std::fs::read_to_string(&f.server.conf)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("stateDir="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        &conf,
        format!("{text}stateDir={}\n", f.dir.join("second-state").display()),
    )
    .unwrap();
    let pid_file = f.dir.join("no/such/dir/cmappserver.pid");
    let mut child = std::process::Command::new(cmapp_tests::bin("cmappserver"))
        .arg("--conf")
        .arg(&conf)
        .arg("--pid-file")
        .arg(&pid_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    let ended = wait_until(WAIT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(ended, "cmappserver kept running without its pid file");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(73), "{err}");
    assert!(
        err.contains(&format!("cannot write the pid file {}", pid_file.display())),
        "{err}"
    );
}

/// `cmappserver --check-config --conf CONF`: its exit code and stderr.
fn check_config(conf: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(cmapp_tests::bin("cmappserver"))
        .args(["--check-config", "--conf"])
        .arg(conf)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_config_reports_every_problem() {
    let f = fixture("");
    let (code, err) = check_config(&f.server.conf);
    assert_eq!(code, Some(0), "{err}");

    let bad = f.dir.join("bad.conf");
    let missing = "keyStore=/nonexistent/server.private\ntrustStore=/nonexistent/client.public\n";
    std::fs::write(&bad, format!("{missing}bogus=1\n")).unwrap();
    let (code, err) = check_config(&bad);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("{}:3: unknown key \"bogus\"", bad.display())),
        "{err}"
    );

    std::fs::write(&bad, missing).unwrap();
    let (code, err) = check_config(&bad);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("/nonexistent/server.private") && err.contains("/nonexistent/client.public"),
        "both problems: {err}"
    );
}

/// Runs `openssl s_client` against the server with `input` on its stdin and
/// returns what it printed. Stdin stays open: s_client ends when the server
/// closes the connection (which every case here makes it do), so whatever the
/// server answered before closing has been read.
fn s_client(server: &Server, cert: Option<&Path>, input: &[u8]) -> String {
    use std::io::Write;
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_client", "-quiet", "-tls1_3", "-connect", &server.node()]);
    if let Some(c) = cert {
        cmd.arg("-cert").arg(c).arg("-key").arg(c);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    // Raw bytes: the frames' length headers are not text.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let exited = cmapp_tests::server::wait_child(&mut child);
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(stdin);
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    assert!(
        exited.is_some(),
        "the server did not close the connection; s_client printed:\n{text}"
    );
    text
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn oversized_and_garbage_frames_close_only_that_connection() {
    let f = fixture("");
    let mut app = f.mgr(&["/bin/sleep", "1000"]);
    app.err.wait_for("started", WAIT).unwrap();

    let cert = &f.keys.client_private;
    let hello = frame(br#"{"protocol":1,"software":"test"}"#);
    // An oversized frame announced right after a valid hello.
    let mut input = hello.clone();
    input.extend_from_slice(&(64u32 << 20).to_be_bytes());
    s_client(&f.server, Some(cert), &input);
    f.server
        .log
        .wait_for("frame larger than the", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));

    // Garbage JSON after a valid hello.
    let mut input = hello.clone();
    input.extend_from_slice(&frame(b"\x00\x01garbage{{"));
    let out = s_client(&f.server, Some(cert), &input);
    assert!(
        out.contains("bad_request"),
        "the server answers with an error first: {out}"
    );
    f.server
        .log
        .wait_for("malformed message", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));

    // A request of an unknown kind.
    let mut input = hello.clone();
    input.extend_from_slice(&frame(br#"{"type":"format_disk"}"#));
    s_client(&f.server, Some(cert), &input);
    f.server.log.wait_for_nth("malformed message", 2, WAIT).unwrap();

    // The attached manager noticed nothing, and the server still serves.
    assert!(app.running(), "{}", app.err.text());
    let mut m = f.mgr(&["/bin/sh", "-c", "exit 6"]);
    assert_eq!(m.code(), 6);
}

#[test]
fn a_peer_with_another_protocol_version_is_told_both_versions() {
    let f = fixture("");
    let out = s_client(
        &f.server,
        Some(&f.keys.client_private),
        &frame(br#"{"protocol":99,"software":"cmappmgr 9.0"}"#),
    );
    assert!(
        out.contains("protocol version mismatch: cmappmgr 9.0 speaks protocol 99"),
        "{out}"
    );
    assert!(out.contains("speaks protocol 1"), "{out}");
}

/// A client certificate the server does not trust, no certificate at all, and
/// a server the manager does not trust: each rejected, with a clear message.
fn tls_rejections(keys: &Keys, dir: &Path, other: &Keys) {
    let server = Server::start(&dir.join("srv"), keys, "");
    // Unknown client certificate.
    let conf = keys::manager_conf(
        dir,
        "unknown-client.conf",
        &other.client_private,
        &keys.client_trust,
        "",
    );
    let mut m = Mgr::spawn(&conf, &server.node(), 5.0, &[], &["/bin/true"]);
    assert_eq!(m.code(), 77, "{}", m.err.text());
    assert!(m.err.contains("rejected"), "{}", m.err.text());
    server
        .log
        .wait_for("TLS handshake failed", WAIT)
        .unwrap_or_else(|| panic!("{}", server.log.text()));

    // No client certificate: the handshake fails and no request is handled.
    let out = s_client(&server, None, &frame(br#"{"protocol":1}"#));
    assert!(!out.contains("max_processes"), "a welcome came back: {out}");
    server
        .log
        .wait_for_nth("TLS handshake failed", 2, WAIT)
        .unwrap_or_else(|| panic!("{}", server.log.text()));

    // A server certificate not in the manager's trust store.
    let conf = keys::manager_conf(dir, "wrong-trust.conf", &keys.client_private, &other.client_trust, "");
    let mut m = Mgr::spawn(&conf, &server.node(), 5.0, &[], &["/bin/true"]);
    assert_eq!(m.code(), 77, "{}", m.err.text());
    assert!(m.err.contains("not trusted"), "{}", m.err.text());

    // And the right keys work.
    let conf = keys::manager_conf(dir, "good.conf", &keys.client_private, &keys.client_trust, "");
    let mut m = Mgr::spawn(&conf, &server.node(), 5.0, &[], &["/bin/sh", "-c", "exit 2"]);
    assert_eq!(m.code(), 2, "{}", m.err.text());
}

#[test]
fn tls_rejections_in_pinned_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys::pinned(tmp.path(), "a");
    let other = keys::pinned(tmp.path(), "b");
    tls_rejections(&keys, tmp.path(), &other);
}

#[test]
fn tls_rejections_in_ca_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys::ca(tmp.path(), "a", &["127.0.0.1"]);
    let other = keys::ca(tmp.path(), "b", &["127.0.0.1"]);
    tls_rejections(&keys, tmp.path(), &other);
}

#[test]
fn ca_mode_checks_the_name_the_manager_connected_to() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys::ca(tmp.path(), "", &["guest1"]);
    let server = Server::start(&tmp.path().join("srv"), &keys, "");
    let conf = keys::manager_conf(tmp.path(), "m.conf", &keys.client_private, &keys.client_trust, "");
    let mut m = Mgr::spawn(&conf, &server.node(), 5.0, &[], &["/bin/true"]);
    assert_eq!(m.code(), 77, "{}", m.err.text());
    assert!(m.err.contains("127.0.0.1"), "{}", m.err.text());
}

#[test]
fn per_node_trust_store_is_chosen_by_node_name() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys::pinned(tmp.path(), "");
    let other = keys::pinned(tmp.path(), "x");
    let server = Server::start(&tmp.path().join("srv"), &keys, "");
    // Default trust store is wrong; the node-specific one is right.
    let extra = format!("trustStore=127.0.0.1:{}\n", keys.client_trust.display());
    let conf = keys::manager_conf(tmp.path(), "m.conf", &keys.client_private, &other.client_trust, &extra);
    let mut m = Mgr::spawn(&conf, &server.node(), 5.0, &[], &["/bin/sh", "-c", "exit 4"]);
    assert_eq!(m.code(), 4, "{}", m.err.text());
}

#[test]
fn keygen_makes_working_pinned_keys_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    let guest = tmp.path().join("guest");
    let run = |bin: &str, args: &[&str]| {
        std::process::Command::new(cmapp_tests::bin(bin))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(
        "cmappmgr",
        &["keygen", "--dir", host.to_str().unwrap(), "--name", "host1"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(
        "cmappserver",
        &["keygen", "--dir", guest.to_str().unwrap(), "--name", "guest1"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    for p in [host.join("client.private"), guest.join("server.private")] {
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            p.display()
        );
    }
    let again = run("cmappmgr", &["keygen", "--dir", host.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let keys = keys::from_keygen_dirs(&host, &guest, None);
    let server = Server::start(&tmp.path().join("srv"), &keys, "");
    let conf = keys::manager_conf(tmp.path(), "m.conf", &keys.client_private, &keys.client_trust, "");
    let mut m = Mgr::spawn(&conf, &server.node(), 5.0, &[], &["/bin/sh", "-c", "exit 8"]);
    assert_eq!(m.code(), 8, "{}", m.err.text());
}

#[test]
fn bad_command_lines_exit_64_with_usage() {
    for args in [
        vec!["-node", "x"],
        vec!["-service", "/bin/true"],
        vec!["-node", "x", "-cmappserver_timeout", "soon", "-service", "/bin/true"],
    ] {
        let mut m = Mgr::spawn_args(&args);
        assert_eq!(m.code(), 64, "{args:?}: {}", m.err.text());
        assert!(
            m.err.contains("error:") && m.err.contains("--help"),
            "{args:?}: {}",
            m.err.text()
        );
    }
}

#[test]
fn an_unreadable_manager_configuration_exits_78_naming_the_file() {
    let mut m = Mgr::spawn_args(&[
        "-node",
        "x",
        "--conf",
        "/nonexistent/cmappmgr.conf",
        "-service",
        "/bin/true",
    ]);
    assert_eq!(m.code(), 78);
    assert!(m.err.contains("/nonexistent/cmappmgr.conf"), "{}", m.err.text());
}

#[test]
fn keygen_ca_mode_issues_working_certificates_for_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, host, guest) = (tmp.path().join("ca"), tmp.path().join("host"), tmp.path().join("guest"));
    let run = |bin: &str, args: &[&str]| {
        let out = std::process::Command::new(cmapp_tests::bin(bin))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{bin} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: &Path| p.to_str().unwrap().to_string();
    run("cmappmgr", &["keygen", "ca", "--dir", &s(&ca)]);
    run(
        "cmappmgr",
        &[
            "keygen",
            "issue",
            "--ca-dir",
            &s(&ca),
            "--dir",
            &s(&host),
            "--name",
            "host1",
        ],
    );
    run(
        "cmappserver",
        &[
            "keygen",
            "issue",
            "--ca-dir",
            &s(&ca),
            "--dir",
            &s(&guest),
            "--name",
            "127.0.0.1",
        ],
    );
    let keys = keys::from_keygen_dirs(&host, &guest, Some(&ca.join("ca.public")));
    let server = Server::start(&tmp.path().join("srv"), &keys, "");
    let conf = keys::manager_conf(tmp.path(), "m.conf", &keys.client_private, &keys.client_trust, "");
    let mut m = Mgr::spawn(&conf, &server.node(), 5.0, &[], &["/bin/sh", "-c", "exit 11"]);
    assert_eq!(m.code(), 11, "{}", m.err.text());
}
