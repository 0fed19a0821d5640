//! A hostile network and a hostile peer (issue 16): connection floods that
//! never authenticate, a cmappserver impostor that breaks the protocol,
//! oversized client strings, forged log lines, handshake-failure floods and
//! lost output. Real binaries, real TLS, key material made at test time.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cmapp_tests::fixture::Fixture;
use cmapp_tests::keys::{self, Keys};
use cmapp_tests::mgr::Mgr;
use cmapp_tests::peer::{self, FakeServer, Flood, RawClient};
use cmapp_tests::WAIT;
use common::message::{ErrorKind, Event, ExitStatus, Exited, Launch, Request, Started};
use nix::sys::signal::Signal;

fn fixture(extra: &str) -> Fixture {
    Fixture::new(extra)
}

/// `cmappmgr SUB -node SERVER --conf CONF --no_syslog EXTRA...`
fn cmd(f: &Fixture, sub: &str, extra: &[&str]) -> Mgr {
    let node = f.server.node();
    let mut args = vec![sub, "-node", &node, "--conf", f.conf.to_str().unwrap(), "--no_syslog"];
    args.extend_from_slice(extra);
    Mgr::spawn_args(&args)
}

fn launch(run: &[&str], name: Option<String>) -> Request {
    Request::Launch(Launch {
        run: run.iter().map(|s| s.to_string()).collect(),
        name,
        attach_only: None,
        forward: None,
    })
}

fn logs(run: &[&str], name: Option<String>, follow: bool) -> Request {
    Request::Logs(common::message::Logs {
        run: run.iter().map(|s| s.to_string()).collect(),
        name,
        tail: 1,
        follow,
    })
}

#[test]
fn a_connection_follows_at_most_four_logs_at_once() {
    let f = fixture("");
    let rt = peer::runtime();
    rt.block_on(async {
        let mut c = RawClient::connect(f.server.addr, &f.keys).await;
        for i in 0..4 {
            // No file yet: an empty tail, then the follow runs on.
            match c.call(&logs(&["/bin/app", &i.to_string()], None, true)).await {
                Event::LogLines(l) => assert!(l.end && l.lines.is_empty(), "{l:?}"),
                other => panic!("{other:?}"),
            }
        }
        match c.call(&logs(&["/bin/app", "5"], None, true)).await {
            Event::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Limit, "{e:?}");
                assert!(e.message.contains("at most 4"), "{}", e.message);
            }
            other => panic!("a fifth follow: {other:?}"),
        }
        // The connection still answers.
        assert!(matches!(c.call(&Request::List).await, Event::Processes(_)));
    });
}

// ---------------------------------------------------------------------------
// Finding 1: unauthenticated connections cannot lock a manager out.

#[test]
fn five_thousand_unauthenticated_connections_do_not_lock_out_a_manager() {
    let hard = peer::raise_nofile();
    assert!(
        hard >= 12_000,
        "the flood needs an open-file limit of 12000 or more (hard limit {hard})"
    );
    let f = fixture("handshakeLogInterval=1\n");
    // An authenticated session from before the flood must never be dropped.
    let mut watcher = Mgr::spawn(&f.conf, &f.server.node(), 10.0, &[], &["/bin/sleep", "1000"]);
    watcher.err.wait_for("started", WAIT).unwrap();

    let flood = Flood::start(f.server.addr, 5000);
    assert!(
        flood.wait_opened(5000, Duration::from_secs(60)),
        "only {} flood connections opened",
        flood.opened.load(Ordering::Relaxed)
    );
    let mut worst = Duration::ZERO;
    for round in 0..10 {
        // The slow half keeps handshaking: a few more bytes each between checks.
        assert!(flood.wait_dripped(2500 * (round + 1), Duration::from_secs(60)));
        let t0 = Instant::now();
        let mut check = cmd(&f, "check", &["--timeout", "30"]);
        let code = check.code_within(Duration::from_secs(40));
        let took = t0.elapsed();
        worst = worst.max(took);
        assert_eq!(code, 0, "{}", check.err.text());
        assert!(
            took < Duration::from_secs(1),
            "a legitimate check took {took:?} with {} unauthenticated connections held ({} opened); stderr:\n{}",
            flood.held.load(Ordering::Relaxed),
            flood.opened.load(Ordering::Relaxed),
            check.err.text()
        );
    }
    eprintln!(
        "worst check {worst:?}; flood: {} held now, {} opened in total; server: {:?}",
        flood.held.load(Ordering::Relaxed),
        flood.opened.load(Ordering::Relaxed),
        f.server.log.snapshot().iter().rfind(|l| l.contains("shed"))
    );
    assert!(watcher.running(), "{}", watcher.err.text());
    assert!(
        !watcher.err.contains("lost") && !watcher.err.contains("reconnect"),
        "the authenticated session was dropped: {}",
        watcher.err.text()
    );
    drop(flood);
    watcher.signal(Signal::SIGTERM);
    assert_eq!(watcher.code(), 0, "{}", watcher.err.text());
}

#[test]
fn authenticated_sessions_beyond_max_connections_are_refused_and_none_is_dropped() {
    let f = fixture("maxConnections=2\n");
    let rt = peer::runtime();
    rt.block_on(async {
        let mut a = RawClient::connect(f.server.addr, &f.keys).await;
        let mut b = RawClient::connect(f.server.addr, &f.keys).await;
        let mut check = cmd(&f, "check", &["--timeout", "2"]);
        assert_eq!(check.code_within(Duration::from_secs(10)), 1, "{}", check.err.text());
        assert!(check.err.contains("connection limit"), "{}", check.err.text());
        for c in [&mut a, &mut b] {
            let ev = c.call(&Request::Ping(common::message::Ping { seq: 7 })).await;
            assert!(matches!(ev, Event::Pong(_)), "{ev:?}");
        }
    });
}

// ---------------------------------------------------------------------------
// Finding 5: a misbehaving server cannot keep the manager alive or confuse it.

fn fake_fixture() -> (tempfile::TempDir, Keys, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys::pinned(tmp.path(), "");
    let conf = keys::manager_conf(
        tmp.path(),
        "cmappmgr.conf",
        &keys.client_private,
        &keys.client_trust,
        "",
    );
    (tmp, keys, conf)
}

fn started() -> Event {
    Event::Started(Started {
        id: "fake-1".into(),
        service: "/bin/true".into(),
        pid: 4242,
        started_at_ms: 0,
        attached: false,
        exited: false,
    })
}

#[test]
fn a_server_that_answers_launch_but_never_pings_cannot_keep_the_manager_alive() {
    let (_tmp, keys, conf) = fake_fixture();
    let fake = FakeServer::start(&keys, |mut c| async move {
        c.welcome().await;
        while let Some(req) = c.request().await {
            if let Request::Launch(_) = req {
                c.wr.write(&started()).await.unwrap();
            }
        }
    });
    let t0 = Instant::now();
    let mut m = Mgr::spawn(&conf, &fake.node(), 4.0, &[], &["/bin/true"]);
    let code = m.code_within(Duration::from_secs(30));
    assert_eq!(code, 1, "{}", m.err.text());
    assert!(
        t0.elapsed() < Duration::from_secs(9),
        "cmappserver_timeout 4 but the manager ran {:?}",
        t0.elapsed()
    );
    assert!(m.err.contains("Lost the node"), "{}", m.err.text());
}

#[test]
fn garbage_before_the_welcome_is_a_protocol_error() {
    let (_tmp, keys, conf) = fake_fixture();
    for garbage in [&b"\x00\x01not json{{"[..], br#"{"type":"pong","seq":1}"#, b"[]"] {
        let body = garbage.to_vec();
        let fake = FakeServer::start(&keys, move |mut c| {
            let body = body.clone();
            async move {
                c.hello().await;
                c.raw_frame(&body).await;
                let _ = c.request().await;
            }
        });
        let t0 = Instant::now();
        let mut m = Mgr::spawn(&conf, &fake.node(), 30.0, &[], &["/bin/true"]);
        assert_eq!(m.code(), 76, "{}", m.err.text());
        assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
        assert!(!m.err.contains("PROGRAM EXIT CODE"), "{}", m.err.text());
    }
    // An oversized frame announced before the welcome, too.
    let fake = FakeServer::start(&keys, |mut c| async move {
        c.hello().await;
        let tls = c.wr.get_mut();
        tokio::io::AsyncWriteExt::write_all(tls, &(64u32 << 20).to_be_bytes())
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::flush(tls).await.unwrap();
        let _ = c.request().await;
    });
    let mut m = Mgr::spawn(&conf, &fake.node(), 30.0, &[], &["/bin/true"]);
    assert_eq!(m.code(), 76, "{}", m.err.text());
}

#[test]
fn an_exit_status_out_of_range_is_a_protocol_error() {
    let (_tmp, keys, conf) = fake_fixture();
    for status in [
        ExitStatus::Code(999),
        ExitStatus::Code(-1),
        ExitStatus::Signal(i32::MAX),
        ExitStatus::Signal(0),
        ExitStatus::Signal(-5),
        ExitStatus::SpawnFailed {
            code: 999,
            error: "x".into(),
        },
    ] {
        let sent = status.clone();
        let fake = FakeServer::start(&keys, move |mut c| {
            let status = sent.clone();
            async move {
                c.welcome().await;
                while let Some(req) = c.request().await {
                    match req {
                        Request::Launch(_) => {
                            c.wr.write(&started()).await.unwrap();
                            let ex = Exited {
                                id: "fake-1".into(),
                                pid: 4242,
                                status: status.clone(),
                                exited_at_ms: 0,
                                tail: Vec::new(),
                            };
                            c.wr.write(&Event::Exited(ex)).await.unwrap();
                        }
                        Request::Ping(p) => c.wr.write(&Event::Pong(p)).await.unwrap(),
                        Request::Ack(a) => c.wr.write(&Event::Acked(a)).await.unwrap(),
                        _ => {}
                    }
                }
            }
        });
        let mut m = Mgr::spawn(&conf, &fake.node(), 10.0, &[], &["/bin/true"]);
        assert_eq!(m.code(), 76, "{status:?}: {}", m.err.text());
        assert!(!m.err.contains("PROGRAM EXIT CODE"), "{status:?}: {}", m.err.text());
        assert!(m.err.contains("out of range"), "{status:?}: {}", m.err.text());
    }
}

// ---------------------------------------------------------------------------
// Finding 6: client-supplied strings are bounded; listings always fit.

#[test]
fn oversized_client_strings_are_refused_with_a_clear_error() {
    let f = fixture("");
    let rt = peer::runtime();
    rt.block_on(async {
        let mut c = RawClient::connect(f.server.addr, &f.keys).await;
        let huge = "n".repeat(600 * 1024);
        let cases: Vec<(Request, &str)> = vec![
            (launch(&["/bin/sleep", "1000"], Some(huge.clone())), "name"),
            (launch(&["/bin/sleep", &huge], None), "run string"),
            (
                launch(&vec!["x"; 5000].iter().map(|s| &**s).collect::<Vec<_>>(), None),
                "arguments",
            ),
            (
                Request::Stop(common::message::Stop {
                    id: huge.clone(),
                    grace_ms: None,
                }),
                "id",
            ),
            (logs(&[&huge], None, false), "run string"),
            (logs(&["/bin/sleep"], Some(huge.clone()), false), "name"),
        ];
        for (req, what) in cases {
            match c.call(&req).await {
                Event::Error(e) => {
                    assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
                    assert!(e.message.contains(what) && e.message.contains("limit"), "{}", e.message);
                    assert!(
                        e.message.len() < 1024,
                        "the error echoes the input: {} bytes",
                        e.message.len()
                    );
                }
                other => panic!("{what}: answered with {}", other.kind()),
            }
        }
    });
    let mut status = cmd(&f, "status", &[]);
    assert_eq!(status.code(), 0, "{}", status.err.text());
    assert!(f.server.log.contains("limit"), "{}", f.server.log.text());
}

#[test]
fn status_lists_every_process_however_large_the_listing() {
    let f = fixture("maxProcesses=40\n");
    let rt = peer::runtime();
    // 40 uncollected exits, each with a 60 KB argument: 2.4 MB of listing,
    // more than twice the frame cap.
    let big = "a".repeat(60 * 1024);
    rt.block_on(async {
        let mut c = RawClient::connect(f.server.addr, &f.keys).await;
        for i in 0..40 {
            let tag = format!("p{i}");
            match c.call(&launch(&["/bin/true", &tag, &big], None)).await {
                Event::Started(_) => {}
                other => panic!("answered with {}", other.kind()),
            }
        }
    });
    let mut status = cmd(&f, "status", &["--json"]);
    assert_eq!(status.code(), 0, "{}", status.err.text());
    let v: serde_json::Value = serde_json::from_str(&status.out.text()).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(40));
    let mut table = cmd(&f, "status", &[]);
    assert_eq!(table.code(), 0, "{}", table.err.text());
    assert_eq!(
        table
            .out
            .snapshot()
            .iter()
            .filter(|l| l.contains("/bin/true p"))
            .count(),
        40
    );
}

// ---------------------------------------------------------------------------
// Finding 7: logs cannot be forged or flooded, and say what happened.

#[test]
fn control_characters_in_a_name_are_escaped_in_the_log_and_in_status() {
    let f = fixture("");
    let evil = "web\nERROR cmappserver: FORGED line\x1b[31m";
    let m = Mgr::spawn(
        &f.conf,
        &f.server.node(),
        10.0,
        &["-name", evil],
        &["/bin/sleep", "1000"],
    );
    m.err.wait_for("started", WAIT).unwrap();
    f.server.log.wait_for("started", WAIT).unwrap();
    for (who, lines) in [("server", f.server.log.snapshot()), ("manager", m.err.snapshot())] {
        assert!(
            !lines.iter().any(|l| l.starts_with("ERROR cmappserver: FORGED")),
            "{who} log has a forged line:\n{}",
            lines.join("\n")
        );
        assert!(
            lines.iter().any(|l| l.contains(r"web\nERROR cmappserver: FORGED line")),
            "{who} log does not show the name escaped:\n{}",
            lines.join("\n")
        );
    }
    for (who, lines) in [("server", f.server.log.snapshot()), ("manager", m.err.snapshot())] {
        assert!(
            !lines.iter().any(|l| l.contains('\x1b')),
            "{who} log has a raw escape sequence"
        );
    }
    let mut status = cmd(&f, "status", &[]);
    assert_eq!(status.code(), 0, "{}", status.err.text());
    let out = status.out.snapshot();
    assert!(!out.iter().any(|l| l.contains('\x1b')), "{out:?}");
    assert!(!out.iter().any(|l| l.starts_with("ERROR")), "{out:?}");
    assert!(out.iter().any(|l| l.contains(r"web\nERROR")), "{out:?}");
}

#[test]
fn failed_handshakes_are_summarised_not_logged_one_by_one() {
    let f = fixture("handshakeLogInterval=1\n");
    for _ in 0..300 {
        let mut s = std::net::TcpStream::connect(f.server.addr).unwrap();
        std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut sink);
    }
    let summary = f
        .server
        .log
        .wait_for("failed TLS handshakes", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no summary; log:\n{}", f.server.log.text()));
    assert!(summary.contains("127.0.0.1"), "{summary}");
    let single = f
        .server
        .log
        .snapshot()
        .iter()
        .filter(|l| l.contains("TLS handshake failed"))
        .count();
    assert!(single <= 10, "{single} one-by-one warnings:\n{}", f.server.log.text());
    let counted: u64 = f
        .server
        .log
        .snapshot()
        .iter()
        .filter(|l| l.contains("failed TLS handshakes"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
        .sum();
    assert_eq!(counted as usize + single, 300, "{}", f.server.log.text());
}

#[test]
fn output_dropped_for_a_slow_manager_is_reported_as_such() {
    let f = fixture("");
    // Every line forwarded, and the rate limit no bound: only the manager is slow.
    let conf = f.mgr_conf(
        "fast.conf",
        "forwardOutput=yes\nforwardLinesPerSecond=1000000\nforwardBytesPerSecond=1G\n",
    );
    let m = Mgr::spawn(
        &conf,
        &f.server.node(),
        60.0,
        &[],
        &["/bin/sh", "-c", "sleep 1; seq 1 2000000; sleep 1000"],
    );
    m.err.wait_for("started", WAIT).unwrap();
    // The manager stops reading; the application writes on.
    m.signal(Signal::SIGSTOP);
    f.server
        .log
        .wait_for("cmappmgr reads output slower", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));
    m.signal(Signal::SIGCONT);
    let line = m.expect_line(
        "cmappmgr read them slower than the application wrote them",
        Duration::from_secs(30),
    );
    assert!(line.contains("output lines dropped"), "{line}");
    assert!(!m.err.contains("nobody was reading"), "{}", m.err.text());
}

#[test]
fn a_trusted_certificate_without_its_key_is_named_as_such() {
    let f = fixture("");
    let tmp = tempfile::tempdir().unwrap();
    let other = keys::pinned(tmp.path(), "-other");
    // The manager's own (pinned, trusted) certificate, signed for with another key.
    let cert = common::tls::load_key_store(&f.keys.client_private, "").unwrap().certs;
    let wrong_key = common::tls::load_key_store(&other.client_private, "").unwrap().key;
    let rt = peer::runtime();
    let result = rt.block_on(peer::handshake_with_key(f.server.addr, cert, wrong_key));
    assert!(result.is_err(), "the server accepted a certificate without its key");
    let line = f
        .server
        .log
        .wait_for("TLS handshake failed", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));
    assert!(line.contains("does not hold its private key"), "{line}");
    assert!(!line.contains("not in the trust store"), "{line}");
}

// ---------------------------------------------------------------------------
// A TLS scanner as a peer: what an auditor's tool sees of a running server.

#[test]
fn sslscan_sees_tls_1_3_only_strong_ciphers_and_a_required_client_certificate() {
    let f = fixture("");
    let out = std::process::Command::new("sslscan")
        .args([
            "--no-colour",
            "--show-client-cas",
            "--no-heartbleed",
            "--no-compression",
        ])
        .arg(f.server.node())
        .output()
        .expect("sslscan is needed (Debian package sslscan; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for (protocol, state) in [
        ("SSLv2", "disabled"),
        ("SSLv3", "disabled"),
        ("TLSv1.0", "disabled"),
        ("TLSv1.1", "disabled"),
        ("TLSv1.2", "disabled"),
        ("TLSv1.3", "enabled"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [protocol, state]),
            "sslscan does not report {protocol} {state}:\n{text}"
        );
    }
    let ciphers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Accepted") || l.starts_with("Preferred"))
        .collect();
    assert!(!ciphers.is_empty(), "no cipher accepted?\n{text}");
    const STRONG: [&str; 3] = [
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    ];
    for c in &ciphers {
        let words: Vec<&str> = c.split_whitespace().collect();
        assert_eq!(words.get(1), Some(&"TLSv1.3"), "{c}");
        let bits: u32 = words.get(2).and_then(|b| b.parse().ok()).unwrap_or(0);
        assert!(bits >= 128, "weak cipher: {c}");
        assert!(
            words.get(4).is_some_and(|n| STRONG.contains(n)),
            "unexpected cipher: {c}"
        );
    }
    // The client certificate is required: a handshake without one is refused.
    let no_cert = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-tls1_3", "-connect", &f.server.node()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let said = cmapp_tests::stdout_and_stderr(&no_cert);
    // (the server's TLS 1.3 alert 116, certificate_required)
    assert!(said.contains("certificate required"), "{said}");
}
