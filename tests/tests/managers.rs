//! What the original's administrators rely on: halting cmappmgr leaves the
//! application running unless asked otherwise, several managers may watch
//! one process, and the log lines they scrape (the last output of a failure
//! in syslog, no spurious ack warnings).
//! Every test runs the real binaries over loopback with keys made at test time.

use cmapp_tests::fixture::Fixture;
use cmapp_tests::mgr::{monitor_args, pid_in, Mgr};
use cmapp_tests::{alive, sleeps, wait_until, WAIT};
use nix::sys::signal::Signal;

// ---------------------------------------------------------------- halting

#[test]
fn sigterm_leaves_the_application_running_by_default_and_a_new_manager_reattaches() {
    let f = Fixture::new("");
    let mut m = f.mgr(&["/bin/sleep", "1000"]);
    let app = pid_in(&m.err.wait_for("started", WAIT).unwrap());
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(m.err.contains("keeps running"), "{}", m.err.text());
    assert!(alive(app), "the application was stopped:\n{}", m.err.text());
    assert!(!m.err.contains("PROGRAM EXIT CODE"), "{}", m.err.text());

    // The cluster's next start of the service finds the same process.
    let mut again = f.mgr(&["/bin/sleep", "1000"]);
    let line = again
        .err
        .wait_for("attached to running", WAIT)
        .unwrap_or_else(|| panic!("{}", again.err.text()));
    assert_eq!(pid_in(&line), app);
    assert!(again.running());
}

#[test]
fn stop_on_halt_is_chosen_by_the_option_or_the_configuration_file() {
    let f = Fixture::new("");
    let stopping = f.mgr_conf("stopping.conf", "stopOnHalt=yes\n");

    // From the configuration file.
    let mut m = Mgr::spawn(&stopping, &f.server.node(), 10.0, &[], &["/bin/sleep", "1001"]);
    let app = pid_in(&m.err.wait_for("started", WAIT).unwrap());
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(m.err.contains("stopped on request"), "{}", m.err.text());
    assert!(wait_until(WAIT, || !alive(app)), "the application survived");

    // -detach on the command line wins over the file.
    let mut m = Mgr::spawn(&stopping, &f.server.node(), 10.0, &["-detach"], &["/bin/sleep", "1002"]);
    let app = pid_in(&m.err.wait_for("started", WAIT).unwrap());
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(alive(app), "the application was stopped:\n{}", m.err.text());

    // Both at once is a usage error.
    let mut m = f.mgr_with(&["-detach", "-stop_on_halt"], &["/bin/true"]);
    assert_eq!(m.code(), 64, "{}", m.err.text());

    // A bad value of the key is an error naming the file and the line.
    let bad = f.mgr_conf("bad.conf", "stopOnHalt=perhaps\n");
    let mut m = Mgr::spawn(&bad, &f.server.node(), 10.0, &[], &["/bin/true"]);
    assert_eq!(m.code(), 78, "{}", m.err.text());
    assert!(
        m.err
            .contains(&format!("{}:3: stopOnHalt=perhaps is not yes or no", bad.display())),
        "{}",
        m.err.text()
    );
}

// ------------------------------------------------------- several managers

/// A script that waits for `flag`, prints a line and exits 5.
fn gated(flag: &std::path::Path) -> String {
    format!(
        "while [ ! -e {} ]; do sleep 0.02; done; echo shared-line; exit 5",
        flag.display()
    )
}

/// Two managers with the same run string (configuration `conf`): the first
/// starts the process, the second attaches to it. Returns both and the pid.
fn two_watching(f: &Fixture, conf: &std::path::Path, run: &[&str]) -> (Mgr, Mgr, u32) {
    let first = Mgr::spawn(conf, &f.server.node(), 10.0, &[], run);
    let app = pid_in(&first.err.wait_for("started", WAIT).unwrap());
    let second = Mgr::spawn(conf, &f.server.node(), 10.0, &[], run);
    let line = second
        .err
        .wait_for("attached to running", WAIT)
        .unwrap_or_else(|| panic!("{}", second.err.text()));
    assert_eq!(pid_in(&line), app);
    let note = f
        .server
        .log
        .wait_for("managers now watch", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));
    assert!(note.contains("INFO") && note.contains("2 managers now watch"), "{note}");
    (first, second, app)
}

/// `cmappmgr status --json` against the fixture's server: the listed processes.
fn status(f: &Fixture) -> Vec<serde_json::Value> {
    let conf = f.conf.to_str().unwrap();
    let mut s = Mgr::spawn_args(&[
        "status",
        "--node",
        &f.server.node(),
        "--conf",
        conf,
        "--json",
        "--no_syslog",
    ]);
    assert_eq!(s.code(), 0, "{}", s.err.text());
    serde_json::from_str::<serde_json::Value>(&s.out.text())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn two_managers_with_one_run_string_both_get_the_output_and_the_exit() {
    let f = Fixture::new("");
    let flag = f.dir.join("go");
    let script = gated(&flag);
    let run = ["/bin/sh", "-c", script.as_str()];
    let (mut first, mut second, _) = two_watching(&f, &f.conf, &run);

    // The second manager stopped by SIGSTOP: it cannot acknowledge yet.
    second.signal(Signal::SIGSTOP);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(first.code(), 5, "{}", first.err.text());
    assert!(first.out.contains("shared-line"), "{}", first.out.text());
    assert!(first.err.contains("PROGRAM EXIT CODE 5"), "{}", first.err.text());
    // The first has acknowledged (and had the reply); the record stays
    // for the second, which was attached at the exit.
    let listed = status(&f);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["exit"]["code"], 5, "{listed:?}");

    second.signal(Signal::SIGCONT);
    assert_eq!(second.code(), 5, "{}", second.err.text());
    assert!(second.out.contains("shared-line"), "{}", second.out.text());
    assert!(second.err.contains("PROGRAM EXIT CODE 5"), "{}", second.err.text());
    assert!(!second.err.contains("not acknowledged"), "{}", second.err.text());
    // Both acknowledged: the record is gone.
    assert!(wait_until(WAIT, || f.records() == 0), "the record stayed");
    assert!(status(&f).is_empty());
}

#[test]
fn killing_one_of_two_managers_mid_run_leaves_the_other_its_exit() {
    let f = Fixture::new("");
    let flag = f.dir.join("go");
    let script = gated(&flag);
    let run = ["/bin/sh", "-c", script.as_str()];
    let (first, _) = second_killed_first_collects(&f, &run, &flag);
    assert!(first.out.contains("shared-line"), "{}", first.out.text());
}

/// Two managers watch the [`gated`] process `run`; the newer one is killed,
/// the process ends (`flag`), the older one reports and acknowledges its
/// exit. Returns the older manager (exited) and the process's pid.
fn second_killed_first_collects(f: &Fixture, run: &[&str], flag: &std::path::Path) -> (Mgr, u32) {
    let (mut first, mut second, app) = two_watching(f, &f.conf, run);
    second.kill9();
    f.server
        .log
        .wait_for("1 manager now watches", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));
    std::fs::write(flag, "").unwrap();
    assert_eq!(first.code(), 5, "{}", first.err.text());
    (first, app)
}

#[test]
fn a_manager_gone_silent_does_not_hold_the_exit_status_forever() {
    // The server closes a connection silent for 1 s and waits as long again
    // for its manager to come back; the managers ping every 0.2 s.
    let f = Fixture::new("idleTimeout=1\n");
    let conf = f.mgr_conf("fast.conf", "pingInterval=0.2\n");
    let flag = f.dir.join("go");
    let script = gated(&flag);
    let run = ["/bin/sh", "-c", script.as_str()];
    let (mut first, mut silent, _) = two_watching(&f, &conf, &run);

    // Attached at the exit, and never acknowledging it.
    silent.signal(Signal::SIGSTOP);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(first.code(), 5, "{}", first.err.text());
    f.server
        .log
        .wait_for("no longer waiting for", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));
    assert!(wait_until(WAIT, || f.records() == 0), "the record stayed");
    silent.kill9();
}

#[test]
fn both_managers_get_an_exit_that_happened_while_cmappserver_was_down() {
    let mut f = Fixture::new("");
    let flag = f.dir.join("go");
    let script = gated(&flag);
    let run = ["/bin/sh", "-c", script.as_str()];
    let (mut first, mut second, app) = two_watching(&f, &f.conf, &run);

    // The second comes back late; the process ends while no server runs.
    second.signal(Signal::SIGSTOP);
    f.server.kill9();
    std::fs::write(&flag, "").unwrap();
    assert!(wait_until(WAIT, || !alive(app)), "the application did not end");
    f.server.restart(None);

    // The first re-attaches and collects the exit...
    assert_eq!(first.code(), 5, "{}", first.err.text());
    assert!(first.err.contains("re-attached"), "{}", first.err.text());
    // ...and the record stays for the second, which gets the same.
    second.signal(Signal::SIGCONT);
    assert_eq!(second.code(), 5, "{}", second.err.text());
    assert!(second.err.contains("PROGRAM EXIT CODE 5"), "{}", second.err.text());
}

#[test]
fn an_exit_kept_for_an_absent_manager_survives_a_restart_beside_a_new_run_of_the_service() {
    // Sessions silent for 5 s are closed; the managers here ping every 0.2 s.
    let mut f = Fixture::new("idleTimeout=5\n");
    let conf = f.mgr_conf("fast.conf", "pingInterval=0.2\n");
    let flag = f.dir.join("go");
    let script = gated(&flag);
    let run = ["/bin/sh", "-c", script.as_str()];
    let (mut first, mut absent, _) = two_watching(&f, &conf, &run);

    // The second goes silent; the server closes its connection...
    absent.signal(Signal::SIGSTOP);
    f.server
        .log
        .wait_for("1 manager now watches", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));
    // ...and the process ends: the first collects the exit.
    std::fs::write(&flag, "").unwrap();
    assert_eq!(first.code(), 5, "{}", first.err.text());
    // The cluster starts the service again: a new process beside the kept exit.
    std::fs::remove_file(&flag).unwrap();
    let mut again = Mgr::spawn(&conf, &f.server.node(), 10.0, &[], &run);
    let new_pid = pid_in(&again.err.wait_for("started", WAIT).unwrap());

    // cmappserver restarts: two records for one service.
    f.server.kill9();
    f.server.restart(None);
    absent.signal(Signal::SIGCONT);
    assert_eq!(absent.code(), 5, "{}", absent.err.text());
    assert!(absent.err.contains("PROGRAM EXIT CODE 5"), "{}", absent.err.text());
    let line = again
        .err
        .wait_for("re-attached", WAIT)
        .unwrap_or_else(|| panic!("{}", again.err.text()));
    assert_eq!(pid_in(&line), new_pid);
    assert!(again.running(), "{}", again.err.text());
}

/// Found by the fault campaign's checker: of two managers watching a
/// process, one was killed (the exit stays owed to it) and the other
/// acknowledged the exit; cmappserver then restarted before the record
/// went, filed it as the service's current process, and the cluster's next
/// start attached to it and reported the old exit again, starting nothing.
#[test]
fn an_exit_collected_before_a_restart_is_not_handed_to_the_next_start() {
    let mut f = Fixture::new("");
    let flag = f.dir.join("go");
    let script = gated(&flag);
    let run = ["/bin/sh", "-c", script.as_str()];
    let (_, app) = second_killed_first_collects(&f, &run, &flag);
    assert_eq!(f.records(), 1, "the exit is kept for the killed manager");

    f.server.kill9();
    f.server.restart(None);
    std::fs::remove_file(&flag).unwrap();
    let mut again = Mgr::spawn(&f.conf, &f.server.node(), 10.0, &[], &run);
    assert!(
        wait_until(WAIT, || again.err.contains("started ")
            || again.err.contains("attached to running")),
        "{}",
        again.err.text()
    );
    assert!(
        !again.err.contains("attached to running"),
        "the next start was handed the collected exit:\n{}",
        again.err.text()
    );
    let line = again.err.wait_for("started ", WAIT).unwrap();
    assert_ne!(pid_in(&line), app);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(again.code(), 5, "{}", again.err.text());
}

// ------------------------------------------------------------- log lines

#[test]
fn a_failing_application_leaves_its_last_output_lines_in_syslog() {
    let f = Fixture::new("");
    let socket = f.dir.join("syslog.sock");
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    syslog.set_nonblocking(true).unwrap();
    let run = |script: &str| {
        let mut args = monitor_args(&f.conf, &f.server.node(), 10.0, &[], &["/bin/sh", "-c", script]);
        args.retain(|a| a != "--no_syslog");
        Mgr::spawn_env(None, &args, &[("CMAPP_SYSLOG_SOCKET", socket.to_str().unwrap())])
    };
    let drain = || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = syslog.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got
    };

    let mut ok = run("echo all-is-$((1 + 1)); exit 0");
    assert_eq!(ok.code(), 0, "{}", ok.err.text());
    let logged = drain();
    assert!(logged.iter().any(|l| l.contains("PROGRAM EXIT CODE 0")), "{logged:?}");
    assert!(!logged.iter().any(|l| l.contains("all-is-2")), "{logged:?}");

    let mut failed =
        run("for i in 1 2 3 4 5 6 7; do echo step-$i >&2; done; x=unreadable; echo \"disk /dev/sdx $x\" >&2; exit 3");
    assert_eq!(failed.code(), 3, "{}", failed.err.text());
    let logged = drain();
    let at = |needle: &str| logged.iter().position(|l| l.contains(needle));
    // The last five lines (one stream: their order is certain), then the exit code.
    let tail = ["step-4", "step-5", "step-6", "step-7", "disk /dev/sdx unreadable"];
    let positions: Vec<Option<usize>> = tail.iter().map(|n| at(n)).collect();
    assert!(positions.iter().all(Option::is_some), "{logged:?}");
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{logged:?}");
    assert!(at("step-3").is_none(), "more than five lines: {logged:?}");
    assert!(at("PROGRAM EXIT CODE 3") > positions[4], "{logged:?}");
    // In syslog only: the package log already has the output once.
    let err = failed.err.snapshot();
    assert_eq!(
        err.iter().filter(|l| l.contains("disk /dev/sdx unreadable")).count(),
        1,
        "{}",
        failed.err.text()
    );
    assert_eq!(err.iter().filter(|l| l.contains("step-7")).count(), 1);
}

/// A scripted cmappserver: answers the hello and the launch, then holds back
/// the answer to the manager's first ping and sends it between the process's
/// exit and the reply to the manager's ack — the order a real server produces
/// when a ping crosses the exit on the wire.
fn scripted_server(
    keys: &cmapp_tests::keys::Keys,
) -> (std::net::SocketAddr, std::thread::JoinHandle<Result<(), String>>) {
    use common::message::{Ack, Event, ExitStatus, Exited, Hello, Ping, Request, Started, Welcome};
    common::tls::install_crypto_provider();
    let key = common::tls::load_key_store(&keys.server_private, "serverpw").unwrap();
    let trust = common::tls::load_trust_store(&keys.server_trust, "public").unwrap();
    let cfg = common::tls::server_config(key, trust).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let e = |e: &dyn std::fmt::Display| e.to_string();
            let listener = tokio::net::TcpListener::from_std(listener).map_err(|x| e(&x))?;
            let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
                .await
                .map_err(|x| e(&x))?
                .map_err(|x| e(&x))?;
            let tls = tokio_rustls::TlsAcceptor::from(cfg)
                .accept(tcp)
                .await
                .map_err(|x| e(&x))?;
            let (mut rd, mut wr) = common::connection::split(tls);
            let next = |r: Result<Option<Request>, common::connection::ConnectionError>| match r {
                Ok(Some(req)) => Ok(req),
                Ok(None) => Err("the manager closed the connection".to_string()),
                Err(x) => Err(e(&x)),
            };
            let _: Option<Hello> = rd.read().await.map_err(|x| e(&x))?;
            let welcome = Welcome {
                protocol: common::message::PROTOCOL_VERSION,
                software: "scripted".into(),
                monitored: 0,
                max_processes: 30,
            };
            wr.write(&welcome).await.map_err(|x| e(&x))?;
            let Request::Launch(_) = next(rd.read().await)? else {
                return Err("expected a launch".into());
            };
            let id = "scripted-1".to_string();
            let started = Started {
                id: id.clone(),
                service: "scripted".into(),
                pid: 4242,
                started_at_ms: common::message::now_ms(),
                attached: false,
                exited: false,
            };
            wr.write(&Event::Started(started)).await.map_err(|x| e(&x))?;
            let seq = loop {
                if let Request::Ping(p) = next(rd.read().await)? {
                    break p.seq;
                }
            };
            let exited = Exited {
                id: id.clone(),
                pid: 4242,
                status: ExitStatus::Code(7),
                exited_at_ms: common::message::now_ms(),
                tail: vec![],
            };
            wr.write(&Event::Exited(exited)).await.map_err(|x| e(&x))?;
            wr.write(&Event::Pong(Ping { seq })).await.map_err(|x| e(&x))?;
            loop {
                match next(rd.read().await)? {
                    Request::Ack(a) if a.id == id => {
                        // The manager waits for this reply; it is not an
                        // error here if it has gone already.
                        let _ = wr.write(&Event::Acked(Ack { id })).await;
                        break;
                    }
                    Request::Ping(p) => wr.write(&Event::Pong(p)).await.map_err(|x| e(&x))?,
                    other => return Err(format!("unexpected {other:?}")),
                }
            }
            // Until the manager closes.
            while let Ok(Some(_)) = rd.read::<Request>().await {}
            Ok(())
        })
    });
    (addr, handle)
}

#[test]
fn a_pong_between_the_exit_and_the_ack_reply_is_not_a_missing_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = cmapp_tests::keys::pinned(tmp.path(), "");
    let conf = cmapp_tests::keys::manager_conf(
        tmp.path(),
        "m.conf",
        &keys.client_private,
        &keys.client_trust,
        "pingInterval=0.2\n",
    );
    let (addr, server) = scripted_server(&keys);
    let mut m = Mgr::spawn(&conf, &addr.to_string(), 10.0, &[], &["/bin/true"]);
    assert_eq!(m.code(), 7, "{}", m.err.text());
    server.join().unwrap().unwrap();
    assert!(m.err.contains("PROGRAM EXIT CODE 7"), "{}", m.err.text());
    assert!(!m.err.contains("not acknowledged"), "{}", m.err.text());
}

/// `cmappmgr check` retries until its timeout, also when the connection is
/// lost after the welcome, before the pong (a guest's migration switching
/// over at that instant; seen once in
/// `guest_vm::monitoring_survives_a_live_migration_of_the_guest`): the
/// server here drops its first connection there and answers on the second.
/// One that drops every connection is tried until the timeout, and no
/// longer.
#[test]
fn check_tries_again_when_the_connection_is_lost_before_the_pong() {
    use cmapp_tests::peer::FakeServer;
    use common::message::{Event, Request};
    use std::sync::atomic::{AtomicU64, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let keys = cmapp_tests::keys::pinned(tmp.path(), "");
    let conf = cmapp_tests::keys::manager_conf(tmp.path(), "m.conf", &keys.client_private, &keys.client_trust, "");
    let conf = conf.to_str().unwrap();
    // Answers the hello and reads the ping; closes the first `drops`
    // connections there without an answer, and pongs on the next.
    let pong_after = |drops: u64| {
        let pinged = std::sync::Arc::new(AtomicU64::new(0));
        FakeServer::start(&keys, move |mut c| {
            let pinged = pinged.clone();
            async move {
                c.welcome().await;
                let Some(Request::Ping(p)) = c.request().await else {
                    return;
                };
                if pinged.fetch_add(1, Ordering::SeqCst) < drops {
                    return; // lost: closed without an answer
                }
                c.wr.write(&Event::Pong(p)).await.unwrap();
                while c.request().await.is_some() {}
            }
        })
    };
    let check = |fake: &FakeServer, timeout: &str| {
        let node = fake.node();
        Mgr::run_in(
            None,
            &[
                "check",
                "-node",
                &node,
                "--conf",
                conf,
                "--timeout",
                timeout,
                "--no_syslog",
            ],
            WAIT,
        )
    };

    let fake = pong_after(1);
    let (code, m) = check(&fake, "10");
    assert_eq!(code, 0, "{}", m.err.text());
    assert_eq!(fake.accepted.load(Ordering::SeqCst), 2, "{}", m.err.text());

    let fake = pong_after(u64::MAX);
    let began = std::time::Instant::now();
    let (code, m) = check(&fake, "1");
    let took = began.elapsed();
    assert_eq!(code, 1, "unreachable: {}", m.err.text());
    assert!(
        took < std::time::Duration::from_secs(3),
        "a 1 s check took {took:?}:\n{}",
        m.err.text()
    );
    let tries = fake.accepted.load(Ordering::SeqCst);
    assert!(tries >= 2, "tried {tries} time(s) in 1 s:\n{}", m.err.text());
}

// ---------------------------------------------------------- a delayed ack

/// A TCP relay to `to`. Server to manager passes at once; manager to server
/// passes at once too, until `hold` is set: then the next bytes (and what
/// queues behind them) wait `delay` before going on, as behind a lost
/// segment's retransmission or a short one-way partition.
struct HeldRelay {
    addr: std::net::SocketAddr,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn held_relay(to: std::net::SocketAddr, delay: std::time::Duration) -> HeldRelay {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = Arc::new(AtomicBool::new(false));
    let held = hold.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let (Ok(client), Ok(server)) = (client, TcpStream::connect(to)) else {
                return;
            };
            let (mut back_from, mut back_to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut back_from, &mut back_to);
                let _ = back_to.shutdown(Shutdown::Write);
            });
            let held = held.clone();
            std::thread::spawn(move || {
                let (mut from, mut to) = (client, server);
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if held.swap(false, Ordering::SeqCst) {
                        std::thread::sleep(delay);
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
            });
        }
    });
    HeldRelay { addr, hold }
}

/// A manager reports the exit once the server has its acknowledgement, so
/// that the cluster's next start of the service starts it again. Had the
/// manager left before the acknowledgement arrived (it was held up 2.5 s on
/// the way), the next manager would attach to the old record and report the
/// same exit a second time, starting nothing (found in review of d203bb7).
#[test]
fn an_acknowledgement_held_up_on_the_way_does_not_hand_the_old_exit_to_the_next_start() {
    let f = Fixture::new("");
    let (flag, runs) = (f.dir.join("go"), f.dir.join("runs"));
    // The first run waits for the flag and exits 3; any later run exits 0.
    let script = format!(
        "if [ -e {r} ]; then exit 0; fi; : > {r}; while [ ! -e {g} ]; do sleep 0.02; done; exit 3",
        r = runs.display(),
        g = flag.display()
    );
    let run = ["/bin/sh", "-c", script.as_str()];
    let relay = held_relay(f.server.addr, std::time::Duration::from_millis(2500));
    let mut first = Mgr::spawn(&f.conf, &relay.addr.to_string(), 10.0, &[], &run);
    first
        .err
        .wait_for("started", WAIT)
        .unwrap_or_else(|| panic!("{}", first.err.text()));
    relay.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(first.code(), 3, "{}", first.err.text());

    // The cluster starts the service again at once.
    let mut again = f.mgr(&run);
    let code = again.code();
    assert!(
        !again.err.contains("attached to running"),
        "the next start attached to the old record:\n{}",
        again.err.text()
    );
    assert_eq!(code, 0, "{}", again.err.text());
}

// -------------------------------------------------------------- idle cost

/// An idle manager wakes up twice per ping interval: its ping clock (it
/// sends the ping) and the pong. With tokio's timer wheel for the clock it
/// woke three times: the wheel wakes a parked runtime at a slot boundary on
/// the way to each deadline (issue 14: the host cost of 1000 idle managers).
/// Voluntary context switches count the sleeps only, not preemptions by a
/// loaded machine.
#[test]
fn an_idle_manager_wakes_up_twice_per_ping() {
    let f = Fixture::new("");
    let conf = f.mgr_conf("ping.conf", "pingInterval=0.2\n");
    let mut m = Mgr::spawn(&conf, &f.server.node(), 10.0, &[], &["/bin/sleep", "1000"]);
    m.err
        .wait_for("started", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    // The steady state: the launch and the first pings are behind.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (s0, t0) = (sleeps(m.pid()), std::time::Instant::now());
    std::thread::sleep(std::time::Duration::from_secs(4));
    let (s1, window) = (sleeps(m.pid()), t0.elapsed());
    let pings = window.as_secs_f64() / 0.2;
    let per_ping = (s1 - s0) as f64 / pings;
    assert!(m.running(), "{}", m.err.text());
    assert!(
        // At least the ping clock's own wake-up: fewer means no pings at
        // all (or a process whose /proc could not be read).
        (1.0..=2.3).contains(&per_ping),
        "{} sleeps in {window:?} ({pings:.0} pings): {per_ping:.2} per ping, 1 to 2 expected",
        s1 - s0
    );
}
