//! Monitoring that survives cmappserver crashes, restarts and upgrades,
//! network partitions and guest reboots, with no exit code lost.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cmapp_tests::keys::{self, Keys};
use cmapp_tests::mgr::{monitor_args, pid_in, Mgr};
use cmapp_tests::netpair::NetPair;
use cmapp_tests::server::Server;
use cmapp_tests::{alive, usage, wait_until, WAIT};

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    keys: Keys,
    conf: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let keys = keys::pinned(&dir, "");
    let conf = keys::manager_conf(&dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    Fixture {
        _tmp: tmp,
        dir,
        keys,
        conf,
    }
}

/// An app that runs until `flag` exists, then exits with `code`.
fn waits_for(flag: &Path, code: i32) -> String {
    format!("while [ ! -e {} ]; do sleep 0.05; done; exit {code}", flag.display())
}

/// The record directory of the process with this pid.
fn record_of(server: &Server, pid: u32) -> PathBuf {
    let r = server.recorded().into_iter().find(|r| r.pid == pid).expect("recorded");
    server.state_dir.join("procs").join(r.id)
}

/// kill -9 the server under 30 watched applications, or replace its binary:
/// every application keeps its pid, no manager exits, and the one that ended
/// during the outage reports its real exit code.
fn survive_outage(upgrade: bool) {
    let f = fixture();
    let (v1, v2) = (f.dir.join("v1/cmappserver"), f.dir.join("v2/cmappserver"));
    for p in [&v1, &v2] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(cmapp_tests::bin("cmappserver"), p).unwrap();
    }
    let mut server = Server::start_bin(&f.dir.join("srv"), &f.keys, "", v1.clone());
    let flags: Vec<PathBuf> = (0..30).map(|i| f.dir.join(format!("flag{i}"))).collect();
    let mut managers: Vec<Mgr> = flags
        .iter()
        .enumerate()
        .map(|(i, flag)| {
            Mgr::spawn(
                &f.conf,
                &server.node(),
                30.0,
                &[],
                &["/bin/sh", "-c", &waits_for(flag, 40 + i as i32)],
            )
        })
        .collect();
    let pids: Vec<u32> = managers
        .iter()
        .map(|m| {
            pid_in(
                &m.err
                    .wait_for("started", WAIT)
                    .unwrap_or_else(|| panic!("{}", m.err.text())),
            )
        })
        .collect();

    server.kill9();
    if upgrade {
        // A package upgrade replaces the binary the shims were started from.
        std::fs::remove_file(&v1).unwrap();
    }
    // Application 7 ends while nobody is listening: its shim records the status.
    std::fs::write(&flags[7], "").unwrap();
    let exit_file = record_of(&server, pids[7]).join("exit.json");
    assert!(
        wait_until(WAIT, || exit_file.exists()),
        "exit not recorded during the outage"
    );

    server.restart(if upgrade { Some(v2) } else { None });
    server
        .log
        .wait_for("ended while cmappserver was away", WAIT)
        .unwrap_or_else(|| panic!("{}", server.log.text()));

    assert_eq!(managers[7].code(), 47, "{}", managers[7].err.text());
    assert!(managers[7].err.contains("PROGRAM EXIT CODE 47"));
    for (i, m) in managers.iter_mut().enumerate() {
        if i == 7 {
            continue;
        }
        m.err
            .wait_for("re-attached", WAIT)
            .unwrap_or_else(|| panic!("manager {i} did not re-attach: {}", m.err.text()));
        assert!(m.running(), "manager {i} exited: {}", m.err.text());
        assert!(alive(pids[i]), "application {i} died");
    }
    // Same pids, recorded by the restarted server (the collected record of
    // application 7 is deleted off the reply path: wait for it to go).
    let mut before: Vec<u32> = pids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 7)
        .map(|(_, p)| *p)
        .collect();
    before.sort();
    let after = || {
        let mut after: Vec<u32> = server.recorded().iter().map(|r| r.pid).collect();
        after.sort();
        after
    };
    assert!(wait_until(WAIT, || after() == before), "{:?} != {before:?}", after());
    // And an exit after the restart still arrives.
    std::fs::write(&flags[3], "").unwrap();
    assert_eq!(managers[3].code(), 43, "{}", managers[3].err.text());
}

#[test]
fn kill_9_of_the_server_loses_no_application_and_no_exit_code() {
    survive_outage(false);
}

#[test]
fn an_upgrade_to_a_new_binary_adopts_the_running_applications() {
    survive_outage(true);
}

#[test]
fn a_maintenance_stop_is_announced_and_managers_wait_for_the_server() {
    let f = fixture();
    let mut server = Server::start(&f.dir.join("srv"), &f.keys, "");
    let flag = f.dir.join("flag");
    let mut m = Mgr::spawn(
        &f.conf,
        &server.node(),
        30.0,
        &[],
        &["/bin/sh", "-c", &waits_for(&flag, 5)],
    );
    let pid = pid_in(&m.err.wait_for("started", WAIT).unwrap());
    assert!(server.term().success());
    m.err
        .wait_for("stopping for maintenance", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    assert!(alive(pid), "the application was stopped with the server");
    server.restart(None);
    m.err
        .wait_for("re-attached", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    std::fs::write(&flag, "").unwrap();
    assert_eq!(m.code(), 5, "{}", m.err.text());
}

#[test]
fn after_a_guest_reboot_a_reattaching_manager_is_told_its_process_is_gone() {
    let f = fixture();
    let mut server = Server::start_with(
        &f.dir.join("srv"),
        &f.keys,
        "",
        cmapp_tests::bin("cmappserver"),
        None,
        vec![("CMAPPSERVER_BOOT_ID".into(), "boot-1".into())],
    );
    let mut m = Mgr::spawn(&f.conf, &server.node(), 30.0, &[], &["/bin/sleep", "1000"]);
    let pid = pid_in(&m.err.wait_for("started", WAIT).unwrap());
    // The "reboot": everything in the guest dies, and the boot id changes.
    server.kill9();
    for r in server.recorded() {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(r.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(r.shim_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(wait_until(WAIT, || !alive(pid)));
    server.env = vec![("CMAPPSERVER_BOOT_ID".into(), "boot-2".into())];
    server.restart(None);
    assert_eq!(m.code(), 69, "{}", m.err.text());
    assert!(m.err.contains("is gone"), "{}", m.err.text());
    // The cluster's restart of the service starts it afresh.
    let again = Mgr::spawn(&f.conf, &server.node(), 30.0, &[], &["/bin/sleep", "1000"]);
    again
        .err
        .wait_for("started", WAIT)
        .unwrap_or_else(|| panic!("{}", again.err.text()));
}

/// A guest cmappserver in a network namespace and a host namespace for
/// its managers, which ping every 0.25 s: a dead link is noticed after
/// 1 s, well inside their timeout.
/// (Fields drop in this order: the server first, its directory, then the
/// namespaces.)
struct NetGuest {
    _server: Server,
    _f: Fixture,
    net: NetPair,
    node: String,
    conf: PathBuf,
    flag: PathBuf,
}

impl NetGuest {
    fn new(tag: &str) -> NetGuest {
        let net = NetPair::new(tag);
        let f = fixture();
        let extra = format!("listen={}:5315\n", net.guest_ip);
        let server = Server::start_with(
            &f.dir.join("srv"),
            &f.keys,
            &extra,
            cmapp_tests::bin("cmappserver"),
            Some(net.guest_ns.clone()),
            Vec::new(),
        );
        let conf = keys::manager_conf(
            &f.dir,
            "fast-ping.conf",
            &f.keys.client_private,
            &f.keys.client_trust,
            "pingInterval=0.25\n",
        );
        NetGuest {
            node: server.node(),
            flag: f.dir.join("flag"),
            net,
            _f: f,
            _server: server,
            conf,
        }
    }

    /// A manager in the host namespace of an application that exits 12
    /// once `flag` exists.
    fn manager(&self, timeout: f64) -> Mgr {
        let run = ["/bin/sh", "-c", &waits_for(&self.flag, 12)];
        Mgr::spawn_in(
            Some(&self.net.host_ns),
            &monitor_args(&self.conf, &self.node, timeout, &[], &run),
        )
    }

    /// A manager that has started the application, and its pid.
    fn started(&self, timeout: f64) -> (Mgr, u32) {
        let m = self.manager(timeout);
        let pid = pid_in(
            &m.err
                .wait_for("started", WAIT)
                .unwrap_or_else(|| panic!("{}", m.err.text())),
        );
        (m, pid)
    }
}

#[test]
fn a_short_partition_is_invisible_and_a_long_one_ends_the_manager_at_the_timeout() {
    let g = NetGuest::new("p");
    let (net, flag) = (&g.net, &g.flag);
    let timeout = 4.0;
    let (mut m, pid) = g.started(timeout);

    // Shorter than the timeout: the manager loses the connection (pings go
    // unanswered), reconnects once the link is back, and the cluster sees nothing.
    net.partition();
    m.err
        .wait_for("lost", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    net.heal();
    m.err
        .wait_for("re-attached", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    assert!(m.running() && alive(pid));

    // Longer than the timeout: the manager exits 1 at about the timeout,
    // while the application keeps running in the guest.
    net.partition();
    let cut = Instant::now();
    assert_eq!(m.code_within(Duration::from_secs(30)), 1, "{}", m.err.text());
    let took = cut.elapsed().as_secs_f64();
    assert!(
        took > timeout - 1.5 && took < timeout + 3.0,
        "exited {took:.1} s after the cut (timeout {timeout} s)"
    );
    assert!(m.err.contains("Lost the node"), "{}", m.err.text());
    assert!(alive(pid), "the application died with the link");

    // After the link comes back, a new manager re-attaches to it and gets its exit code.
    net.heal();
    let mut again = g.manager(timeout);
    let line = again
        .err
        .wait_for("attached to running", WAIT)
        .unwrap_or_else(|| panic!("{}", again.err.text()));
    assert_eq!(pid_in(&line), pid);
    std::fs::write(flag, "").unwrap();
    assert_eq!(again.code(), 12, "{}", again.err.text());
}

/// Found by the fault campaign: two outages, each shorter than the
/// timeout, with the guest reachable for 1.2 s between them. The manager
/// loses its connection in the first and reconnects; its connection
/// attempt, started while the guest was cut off, waited in TCP's SYN
/// retransmission (1 s apart a few times, then 2 s, 4 s, ... apart) across
/// the heal and through the whole reachable window, and the manager gave
/// up at its timeout during the second outage though the guest had been
/// reachable in time. A manager must see a window of little more than a
/// second. The packets are dropped by the network (the guest's address
/// gone), not by a link down or a silenced guest: with those, ARP's and
/// the guest's own SYN-ACK retries, each on its own 1 s clock, happen to
/// reconnect the old code too.
#[test]
fn two_short_outages_close_together_are_invisible() {
    let g = NetGuest::new("w");
    let (net, flag) = (&g.net, &g.flag);
    let timeout = 10.0;
    let (mut m, pid) = g.started(timeout);
    // The lengths are the point of the test. The manager gives the
    // connection up about 1 s into the first outage and starts
    // reconnecting at once. Its SYN is resent 1, 2, 3, 4 and 5 s later,
    // then 7 s later (net.ipv4.tcp_syn_linear_timeouts=4; without it 1, 3,
    // 7 s later). The guest is reachable from 5.25 s to 6.45 s after that
    // start, between two of those; the manager last heard from it just
    // before the first cut, so unless it is answered in that window it
    // gives up during the second outage, which ends past its timeout. Each
    // outage (about 6.5 s, then 3 s) is shorter than the timeout.
    let (until_heal, window, second) = (
        Duration::from_millis(5250),
        Duration::from_millis(1200),
        Duration::from_millis(3000),
    );
    let cut_at = Instant::now();
    net.drop_all();
    // The premise: the manager is reconnecting while the guest is cut off.
    m.err.wait_for("lost", Duration::from_secs(3)).unwrap_or_else(|| {
        panic!(
            "the connection was not given up within 3 s of the cut: {}",
            m.err.text()
        )
    });
    let reconnecting = Instant::now();
    std::thread::sleep(until_heal);
    net.undrop_all();
    let healed = Instant::now();
    let first = healed - cut_at;
    std::thread::sleep(window);
    let cut_at = Instant::now();
    net.drop_all();
    std::thread::sleep(second);
    net.undrop_all();
    eprintln!(
        "cut off {:.2} s (reconnecting after {:.2} s), reachable {:.2} s, cut off {:.2} s",
        first.as_secs_f64(),
        (reconnecting - (healed - first)).as_secs_f64(),
        (cut_at - healed).as_secs_f64(),
        cut_at.elapsed().as_secs_f64()
    );
    assert!(
        first < Duration::from_secs_f64(timeout),
        "the first outage took {first:?}"
    );

    // Re-attached in the window, then again after the second outage.
    assert!(
        wait_until(WAIT, || m
            .err
            .snapshot()
            .iter()
            .filter(|l| l.contains("re-attached"))
            .count()
            >= 2
            || !m.running()),
        "{}",
        m.err.text()
    );
    assert!(
        m.running(),
        "the manager gave up after two outages shorter than its timeout: {}",
        m.err.text()
    );
    assert!(alive(pid), "the application died with the link");
    std::fs::write(flag, "").unwrap();
    assert_eq!(m.code(), 12, "{}", m.err.text());
}

/// Relaunch churn across the process limit, with dropped connections: the
/// server's file descriptors, zombies, threads and memory must not grow.
/// `CMAPP_SOAK_SECS` changes its length (default 120 s).
/// A relay in front of `to` on `listener`: from `after` on, it accepts
/// connections; the first `swallow` it reads whatever they send and answers
/// nothing (as when a handshake's segments are lost), every later one it
/// relays. Returns how many connections it has accepted.
fn swallowing_relay(
    listener: std::net::TcpListener,
    to: std::net::SocketAddr,
    swallow: usize,
    after: Duration,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::io::Read;
    use std::net::{Shutdown, TcpStream};
    use std::sync::atomic::Ordering;
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            if count.fetch_add(1, Ordering::SeqCst) < swallow {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client, &mut std::io::sink());
                });
                continue;
            }
            let Ok(server) = TcpStream::connect(to) else { return };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        if std::io::Write::write_all(&mut into, &buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown(Shutdown::Write);
                });
            }
        }
    });
    accepted
}

/// A listener on loopback whose queue of one is full (the returned
/// connection fills it): a manager's SYNs are dropped, as by a silent
/// guest, until that connection is accepted.
fn full_listener() -> (std::net::TcpListener, std::net::TcpStream) {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).unwrap();
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let listener = std::net::TcpListener::from(fd);
    let filler = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    (listener, filler)
}

/// Found by the fault campaign: a manager's one TLS handshake, begun as the
/// guest came back from a partition, went unanswered for 6 s though the
/// guest was reachable again for 2.6 s of them and served the other
/// managers; the manager gave up at its timeout. Over a connection the
/// guest answered only after a silence, a handshake unanswered for 2 s now
/// gets a second connection beside it. Over one answered at once it does
/// not: a slow handshake there is a busy server (every manager reconnecting
/// after a restart), which a second one would only slow down further.
#[test]
fn a_handshake_left_unanswered_after_a_silent_guest_gets_a_second_connection() {
    use std::sync::atomic::Ordering;
    let f = fixture();
    let server = Server::start(&f.dir.join("srv"), &f.keys, "");
    let flag = f.dir.join("go");
    let app = waits_for(&flag, 7);
    let run = ["/bin/sh", "-c", app.as_str()];

    // Answered at once, the handshake never: one connection, exit 1 at the timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = listener.local_addr().unwrap();
    let accepted = swallowing_relay(listener, server.addr, 1, Duration::ZERO);
    let mut m = Mgr::spawn(&f.conf, &relay.to_string(), 3.0, &[], &run);
    assert_eq!(m.code(), 1, "{}", m.err.text());
    assert!(m.err.contains("TLS handshake"), "{}", m.err.text());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a second connection to a busy server"
    );

    // Silent for 2 s, then the first connection's handshake unanswered: a
    // second connection gets through within the timeout.
    let (listener, _filler) = full_listener();
    let relay = listener.local_addr().unwrap();
    let accepted = swallowing_relay(listener, server.addr, 2, Duration::from_secs(2));
    let mut m = Mgr::spawn(&f.conf, &relay.to_string(), 8.0, &[], &run);
    m.err
        .wait_for("started", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    assert!(accepted.load(Ordering::SeqCst) >= 3);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(m.code(), 7, "{}", m.err.text());
}

/// The phases of one connection attempt share the manager's deadline. A
/// guest whose TCP answers after 2 s (the listen queue full until then, so
/// the manager's SYNs are dropped) and whose TLS never does: the manager
/// gives up at its timeout (4 s), not 4 s after its TCP connect (each phase
/// had the whole limit: 6.5 s here; the fault campaign saw a manager give
/// up 9 s after its start with a 6 s timeout).
#[test]
fn a_manager_gives_up_at_its_timeout_however_its_attempt_was_split_between_tcp_and_tls() {
    let f = fixture();
    let (listener, _filler) = full_listener();
    let addr = listener.local_addr().unwrap();
    let t0 = Instant::now();
    let mut m = Mgr::spawn(&f.conf, &addr.to_string(), 4.0, &[], &["/bin/true"]);
    // Accepted after 2 s and never answered.
    let accepted = swallowing_relay(listener, addr, usize::MAX, Duration::from_secs(2));
    let code = m.code_within(Duration::from_secs(30));
    let took = t0.elapsed();
    assert_eq!(code, 1, "{}", m.err.text());
    assert!(m.err.contains("TLS handshake"), "{}", m.err.text());
    assert!(
        took < Duration::from_millis(5300),
        "gave up after {took:?}:\n{}",
        m.err.text()
    );
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[test]
fn soak_churn_leaks_nothing() {
    let secs: u64 = std::env::var("CMAPP_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let f = fixture();
    // Each round kills a manager before its process exits; the exit is kept
    // for that manager for idleTimeout after its connection closed (README,
    // "several managers"). A short idleTimeout (still above the managers'
    // 2.5 s ping interval) lets the final count see every record released.
    let server = Server::start(&f.dir.join("srv"), &f.keys, "maxProcesses=8\nidleTimeout=5\n");
    let spid = server.pid();
    let round = |n: u64| {
        // 10 launches against a limit of 8: some are refused; one manager is
        // killed mid-run and replaced, and its successor collects the exit.
        let launch = |i: u64| {
            Mgr::spawn(
                &f.conf,
                &server.node(),
                10.0,
                &[],
                &["/bin/sh", "-c", &format!("sleep 0.3; exit {}", (n + i) % 50)],
            )
        };
        let mut ms = vec![launch(0)];
        ms[0]
            .err
            .wait_for("started", WAIT)
            .expect("first launch of a round starts");
        ms.extend((1..10).map(launch));
        ms[0].kill9();
        let mut refused = 0;
        for (i, m) in ms.iter_mut().enumerate().skip(1) {
            match m.code() {
                75 => refused += 1,
                c => assert_eq!(c as u64, (n + i as u64) % 50, "{}", m.err.text()),
            }
        }
        let run = format!("sleep 0.3; exit {}", n % 50);
        let mut successor = Mgr::spawn(&f.conf, &server.node(), 10.0, &[], &["/bin/sh", "-c", &run]);
        let c = successor.code();
        assert!(c as u64 == n % 50, "successor got {c}: {}", successor.err.text());
        refused
    };
    // Warm up, then measure.
    round(0);
    let start = usage(spid);
    let t0 = Instant::now();
    let mut rounds = 1;
    let mut refused = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        refused += round(rounds);
        rounds += 1;
    }
    // Let the last exits settle before the final count.
    assert!(
        wait_until(WAIT, || server.recorded().is_empty()),
        "records left: {:?}",
        server.recorded()
    );
    let end = usage(spid);
    eprintln!(
        "soak: {rounds} rounds in {secs} s, {refused} launches refused at the limit; start {start:?}, end {end:?}"
    );
    assert!(refused > 0, "the limit was never reached");
    assert_eq!(end.zombies, 0, "zombies left");
    assert!(end.fds <= start.fds + 2, "file descriptors grew: {start:?} → {end:?}");
    assert!(end.threads <= start.threads + 2, "threads grew: {start:?} → {end:?}");
    assert!(end.rss_kb <= start.rss_kb + 4096, "memory grew: {start:?} → {end:?}");
}

#[test]
fn a_killed_supervisor_reports_the_status_lost_and_leaves_no_unmonitored_copy() {
    let f = fixture();
    let server = Server::start(&f.dir.join("srv"), &f.keys, "");
    let mut m = Mgr::spawn(&f.conf, &server.node(), 10.0, &[], &["/bin/sleep", "1000"]);
    let pid = pid_in(&m.err.wait_for("started", WAIT).unwrap());
    let shim = server
        .recorded()
        .into_iter()
        .find(|r| r.pid == pid)
        .expect("recorded")
        .shim_pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(m.code(), 70, "{}", m.err.text());
    assert!(m.err.contains("exit status lost"), "{}", m.err.text());
    assert!(
        wait_until(WAIT, || !alive(pid)),
        "the unmonitored application still runs"
    );
    server
        .log
        .wait_for("can no longer be monitored and was killed", WAIT)
        .unwrap();
}

/// A launch cut short by a crash of cmappserver (the debug-only
/// `CMAPP_TEST_FAULT=fault`), and what follows: the manager, reconnecting,
/// finds the one record the crash left (`left` checks it), cmappserver is
/// restarted without the fault, and the manager's launch must start the
/// application (`echo x >> ran; exit code`) once and end with its code.
/// Returns the restarted server.
fn launch_cut_short(fault: &str, code: i32, left: impl FnOnce(&Path)) -> Server {
    let f = fixture();
    let mut server = Server::start_with_env(&f.dir.join("srv"), &f.keys, "CMAPP_TEST_FAULT", fault);
    let ran = f.dir.join("ran");
    let app = format!("echo x >> {}; exit {code}", ran.display());
    let mut m = Mgr::spawn(&f.conf, &server.node(), 30.0, &[], &["/bin/sh", "-c", &app]);
    m.err
        .wait_for("reconnecting", WAIT)
        .unwrap_or_else(|| panic!("{}\n{}", m.err.text(), server.log.text()));
    let records: Vec<PathBuf> = std::fs::read_dir(server.state_dir.join("procs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(records.len(), 1, "the crash left the launch's record behind");
    left(&records[0]);
    server.kill9();
    server.env.clear();
    server.restart(None);
    assert_eq!(m.code(), code, "{}\n{}", m.err.text(), server.log.text());
    assert!(m.err.contains(&format!("PROGRAM EXIT CODE {code}")), "{}", m.err.text());
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "x\n", "started once");
    server
}

/// cmappserver dies while launching, after the new record is written and
/// before its application is started (`CMAPP_TEST_FAULT=exit-before-shim`,
/// debug builds): after the restart the manager's launch starts the
/// application, and the manager ends with its real exit code, not with a
/// "lost" status (70) for an application that never ran.
#[test]
fn a_launch_cut_short_by_a_server_crash_is_started_after_the_restart_not_reported_lost() {
    let server = launch_cut_short("exit-before-shim", 33, |_| {});
    server
        .log
        .wait_for("discarding a launch that never started its application", WAIT)
        .unwrap_or_else(|| panic!("{}", server.log.text()));
}

/// A launch whose shim fails once told to start is removed, and cmappserver
/// crashes halfway through that removal (`CMAPP_TEST_FAULT=removal-cut-short`:
/// `unstarted` gone, `meta.json` left, as `remove_dir_all` may leave it).
/// The marker is renamed `withdrawn` before the removal, so the restarted
/// server discards the record and the manager's launch starts the
/// application; before, the record looked possibly started and the
/// manager was told its application was lost (70).
#[test]
fn a_removal_of_a_never_started_record_cut_short_by_a_crash_is_not_reported_lost() {
    launch_cut_short("removal-cut-short", 34, |record| {
        assert!(record.join("meta.json").exists() && !record.join("unstarted").exists());
    });
}

/// The same crash, in a launch made while the service's previous exit was
/// still owed to a manager that had gone (a second manager, killed): after
/// the restart the next launch starts the application afresh (the cut-short
/// launch discarded, the old exit kept by id for its `acked`); it neither
/// attaches to that old exit and reports it a second time, nor reports the
/// launch lost. The cut-short launch is left as the crash leaves it: its
/// `unstarted` marker, then its `meta.json`, and no shim.
#[test]
fn a_launch_cut_short_after_an_exit_still_owed_starts_afresh_not_the_old_exit_again() {
    let f = fixture();
    let mut server = Server::start(&f.dir.join("srv"), &f.keys, "idleTimeout=60\n");
    let (ran, flag) = (f.dir.join("ran"), f.dir.join("flag"));
    // 31 the first time, 32 the second.
    let app = format!(
        "echo x >> {r}; while [ ! -e {f} ]; do sleep 0.05; done; exit $((30 + $(wc -l < {r})))",
        r = ran.display(),
        f = flag.display()
    );
    let run = ["/bin/sh", "-c", app.as_str()];
    let mut a = Mgr::spawn(&f.conf, &server.node(), 30.0, &[], &run);
    a.err
        .wait_for("started", WAIT)
        .unwrap_or_else(|| panic!("{}", a.err.text()));
    let mut b = Mgr::spawn(&f.conf, &server.node(), 30.0, &[], &run);
    b.err
        .wait_for("attached to running", WAIT)
        .unwrap_or_else(|| panic!("{}", b.err.text()));
    b.kill9();
    std::fs::write(&flag, "").unwrap();
    assert_eq!(a.code(), 31, "{}", a.err.text());
    // The exit is still owed to b; the service's next launch, cut short.
    let procs = server.state_dir.join("procs");
    let old = std::fs::read_dir(&procs).unwrap().next().unwrap().unwrap().path();
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(old.join("meta.json")).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let id = format!("{now:x}-{:x}-ff", server.pid());
    meta["id"] = id.clone().into();
    meta["created_at_ms"] = now.into();
    let cut = procs.join(&id);
    std::fs::create_dir(&cut).unwrap();
    std::fs::write(cut.join("unstarted"), "").unwrap();
    std::fs::write(cut.join("meta.json"), meta.to_string()).unwrap();
    server.kill9();
    server.restart(None);
    let mut c = Mgr::spawn(&f.conf, &server.node(), 30.0, &[], &run);
    assert_eq!(c.code(), 32, "{}\n{}", c.err.text(), server.log.text());
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "x\nx\n", "started again");
    server
        .log
        .wait_for("discarding a launch that never started its application", WAIT)
        .unwrap_or_else(|| panic!("{}", server.log.text()));
}

/// A package upgrade or removal deletes the binary a running cmappserver was
/// started from: it still starts shims (and the probes, and the disk probe's
/// readers) from its own image, /proc/self/exe.
#[test]
fn a_server_whose_binary_file_was_removed_still_launches_applications_and_probes() {
    let f = fixture();
    let copy = f.dir.join("cmappserver-old");
    std::fs::copy(cmapp_tests::bin("cmappserver"), &copy).unwrap();
    let server = Server::start_bin(&f.dir.join("srv"), &f.keys, "", copy.clone());
    std::fs::remove_file(&copy).unwrap();

    let mut m = Mgr::spawn(&f.conf, &server.node(), 10.0, &[], &["/bin/sh", "-c", "exit 5"]);
    assert_eq!(m.code(), 5, "{}", m.err.text());
    // The disk probe runs as `cmappserver disk-mon` and starts a reader per
    // device, each from /proc/self/exe; a missing device fails it at once.
    let host_log = f.dir.join("disk.log");
    let o = format!("-O{}", host_log.display());
    let run = [
        "/opt/hp/cmappserver/cmapp_disk_mon",
        &o,
        "-t",
        "0.1",
        "/nonexistent/disk0",
    ];
    let mut m = Mgr::spawn_args(&monitor_args(&f.conf, &server.node(), 10.0, &[], &run));
    assert_eq!(m.code(), 1, "{}", m.err.text());
    let log = std::fs::read_to_string(&host_log).unwrap();
    assert!(log.contains("/nonexistent/disk0"), "{log}");
}

/// A process's arguments, without empty ones (the padding of a command
/// line rewritten in place, as the zygote's children have).
fn args_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// A process's parent (0 once it is gone).
fn parent_of(pid: u32) -> u32 {
    common::proc::stat(pid).map(|s| s.ppid).unwrap_or(0)
}

/// Every live shim (`cmappserver shim DIR`), with the directory it was
/// started in.
fn shims() -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let args = args_of(pid);
        if args.len() >= 3 && args[1] == "shim" && alive(pid) {
            found.push((pid, PathBuf::from(&args[2])));
        }
    }
    found
}

/// The shims started ahead of a launch (spares) of the server whose state
/// directory is `state`, still waiting in `spare/` and connected to their
/// server: (pid, directory name).
fn spares(state: &Path) -> Vec<(u32, String)> {
    let spare_dir = state.join("spare");
    shims()
        .into_iter()
        // A launched shim still shows the directory it was started in, now
        // renamed into procs/: only one still in spare/ is a spare.
        .filter(|(pid, dir)| dir.parent() == Some(spare_dir.as_path()) && dir.exists() && connected(*pid))
        .map(|(pid, dir)| (pid, dir.file_name().unwrap().to_string_lossy().into_owned()))
        .collect()
}

/// True when the shim `pid` has accepted a connection on its socket (a
/// connected Unix socket named `.../sock`, in /proc/net/unix, among its descriptors).
fn connected(pid: u32) -> bool {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            let link = link.to_string_lossy();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path; St 03: connected.
        f.len() >= 8 && f[5] == "03" && inodes.iter().any(|i| i == f[6]) && f[7].ends_with("/sock")
    })
}

/// Waits until exactly one spare of `server` waits, other than any of `not`.
fn one_spare(server: &Server, not: &[u32]) -> (u32, String) {
    let mut last = Vec::new();
    let found = wait_until(WAIT, || {
        last = spares(&server.state_dir);
        last.len() == 1 && !not.contains(&last[0].0)
    });
    assert!(
        found,
        "not exactly one new spare: {last:?} (not {not:?}); log:\n{}",
        server.log.text()
    );
    last.remove(0)
}

/// Runs `sh -c "exit CODE"` through `server` and checks the manager exits with it.
fn exits_with(f: &Fixture, server: &Server, code: i32) {
    let (got, m) = Mgr::run_in(
        None,
        &monitor_args(
            &f.conf,
            &server.node(),
            10.0,
            &[],
            &["/bin/sh", "-c", &format!("exit {code}")],
        ),
        WAIT,
    );
    assert_eq!(got, code, "{}", m.err.text());
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Launches `/bin/sleep 1000` (`-stop_on_halt`) and checks that it runs
/// under the shim `spare` started ahead: the manager, the application's pid
/// and its record.
fn sleeper_through(f: &Fixture, server: &Server, spare: u32) -> (Mgr, u32, cmapp_tests::server::Recorded) {
    let m = Mgr::spawn(
        &f.conf,
        &server.node(),
        10.0,
        &["-stop_on_halt"],
        &["/bin/sleep", "1000"],
    );
    let pid = pid_in(
        &m.err
            .wait_for("started", WAIT)
            .unwrap_or_else(|| panic!("{}", m.err.text())),
    );
    let rec = server.recorded().into_iter().find(|r| r.pid == pid).expect("recorded");
    assert_eq!(rec.shim_pid, spare, "the launch used the shim started before it");
    (m, pid, rec)
}

#[test]
fn a_launch_takes_the_shim_started_ahead_of_it_and_another_is_started_for_the_next() {
    let f = fixture();
    let server = Server::start(&f.dir.join("srv"), &f.keys, "");
    let state = server.state_dir.clone();
    let (spare, name) = one_spare(&server, &[]);
    assert!(
        state.join("spare").join(&name).join("unstarted").exists(),
        "the spare's record is marked unstarted ahead of the launch"
    );
    let (mut m, pid, rec) = sleeper_through(&f, &server, spare);
    assert!(!state.join("spare").join(&name).exists(), "its directory moved");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("procs").join(&rec.id).join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["id"], rec.id.as_str(), "filed under the id its meta.json names");
    assert!(
        state.join("procs").join(&rec.id).join("sock").exists(),
        "its socket moved with it"
    );
    let (next, _) = one_spare(&server, &[spare]);
    // A stop still reaches it through its socket's new place.
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(wait_until(WAIT, || !alive(pid)), "stopped");
    assert!(alive(next), "the next spare waits");
    assert!(server.recorded().iter().all(|r| r.shim_pid != next));
}

#[test]
fn a_server_killed_with_a_spare_waiting_restarts_clean_and_launches() {
    let f = fixture();
    let mut server = Server::start(&f.dir.join("srv"), &f.keys, "");
    let state = server.state_dir.clone();
    let flag = f.dir.join("flag");
    let mut m = Mgr::spawn(
        &f.conf,
        &server.node(),
        30.0,
        &[],
        &["/bin/sh", "-c", &waits_for(&flag, 9)],
    );
    let pid = pid_in(
        &m.err
            .wait_for("started", WAIT)
            .unwrap_or_else(|| panic!("{}", m.err.text())),
    );
    let (old, old_name) = one_spare(&server, &[]);
    server.kill9();
    // Its connection closed: the spare goes, with its directory, starting nothing.
    assert!(wait_until(WAIT, || !alive(old)), "the spare outlived its server");
    assert!(wait_until(WAIT, || !state.join("spare").join(&old_name).exists()));
    // What a hostile or crashed past may leave there: a spare's directory
    // with a meta.json (a crash between it and the rename), a file, and a
    // link to somewhere else. All of it goes, and nothing it names is touched.
    let left = state.join("spare/left");
    std::fs::create_dir(&left).unwrap();
    std::fs::write(left.join("meta.json"), "{}").unwrap();
    std::fs::write(state.join("spare/file"), "x").unwrap();
    let victim = f.dir.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), "x").unwrap();
    std::os::unix::fs::symlink(&victim, state.join("spare/link")).unwrap();

    server.restart(None);
    m.err
        .wait_for("re-attached", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    let (_, new_name) = one_spare(&server, &[old]);
    assert_eq!(entries(&state.join("spare")), [new_name], "only the new server's spare");
    assert!(victim.join("precious").exists(), "a link was followed");
    // Launches work, and the application that ran through it all reports its code.
    let (code, run) = Mgr::run_in(
        None,
        &monitor_args(&f.conf, &server.node(), 10.0, &[], &["/bin/sh", "-c", "exit 3"]),
        WAIT,
    );
    assert_eq!(code, 3, "{}", run.err.text());
    std::fs::write(&flag, "").unwrap();
    assert_eq!(m.code(), 9, "{}", m.err.text());
    assert!(!alive(pid));
}

#[test]
fn a_spare_killed_by_someone_is_replaced_and_launches_still_work() {
    let f = fixture();
    let server = Server::start(&f.dir.join("srv"), &f.keys, "");
    let state = server.state_dir.clone();
    let kill = |pid: u32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap()
    };
    let (first, first_name) = one_spare(&server, &[]);
    kill(first);
    let (second, _) = one_spare(&server, &[first]);
    assert!(
        wait_until(WAIT, || !state.join("spare").join(&first_name).exists()),
        "the dead spare's directory is left: {:?}",
        entries(&state.join("spare"))
    );
    let run = |code: i32| exits_with(&f, &server, code);
    run(4);
    // Killed just before a launch: the launch finds it gone and starts a shim itself.
    let (third, _) = one_spare(&server, &[first, second]);
    kill(third);
    run(5);
    one_spare(&server, &[first, second, third]);
}

/// Spares are forked by the server's zygote (their parent), and show the
/// command line an exec'd shim shows. A zygote killed by someone costs no
/// launch: the spare it forked still takes the next one, the spare after
/// it is exec'd by the server itself, and the one after that comes from a
/// new zygote.
#[test]
fn spares_come_from_the_zygote_and_a_killed_zygote_costs_no_launch() {
    let f = fixture();
    let server = Server::start(&f.dir.join("srv"), &f.keys, "");
    let (first, name) = one_spare(&server, &[]);
    let zygote = parent_of(first);
    assert_ne!(zygote, server.pid(), "the spare is not the server's child");
    assert_eq!(parent_of(zygote), server.pid());
    assert_eq!(args_of(zygote)[1..], ["zygote"]);
    let dir = server.state_dir.join("spare").join(&name);
    assert_eq!(args_of(first)[1..], ["shim", &*dir.to_string_lossy()]);
    let run = |code: i32| exits_with(&f, &server, code);
    // A forked shim that ended is reaped by the zygote (no zombie left).
    run(3);
    assert!(
        wait_until(WAIT, || common::proc::stat(first).is_none()),
        "the shim of the run is left: {:?}",
        common::proc::stat(first)
    );
    let (first, _) = one_spare(&server, &[first]);
    assert_eq!(parent_of(first), zygote, "the same zygote forks the next");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(WAIT, || !alive(zygote)));
    // The spare forked before the zygote died takes the next launch.
    let (mut m, pid, _) = sleeper_through(&f, &server, first);
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(wait_until(WAIT, || !alive(pid)));
    let (second, _) = one_spare(&server, &[first]);
    assert_eq!(parent_of(second), server.pid(), "exec'd while the zygote is gone");
    server
        .log
        .wait_for(
            "the zygote could not start a process supervisor, started directly",
            WAIT,
        )
        .unwrap_or_else(|| panic!("{}", server.log.text()));
    run(5);
    let (third, _) = one_spare(&server, &[first, second]);
    let again = parent_of(third);
    assert!(again != zygote && again != server.pid(), "a new zygote forked it");
    assert_eq!(parent_of(again), server.pid());
}

/// A zygote gone after it forked a shim and before it answered
/// (`CMAPP_TEST_FAULT=zygote-lost-first`): the server cannot know whether a
/// shim runs for that spare directory, so it removes the directory (the
/// orphan discards itself) and execs the spare in another: never two shims
/// on one directory. Launches work.
#[test]
fn a_zygote_lost_before_its_answer_never_leaves_two_shims_on_one_directory() {
    let f = fixture();
    let server = Server::start_with_env(&f.dir.join("srv"), &f.keys, "CMAPP_TEST_FAULT", "zygote-lost-first");
    let state = server.state_dir.clone();
    server
        .log
        .wait_for("no answer from the zygote", WAIT)
        .unwrap_or_else(|| panic!("{}", server.log.text()));
    let (spare, name) = one_spare(&server, &[]);
    assert_eq!(parent_of(spare), server.pid(), "exec'd after the zygote was lost");
    // The shim forked for the first directory goes, with its directory.
    let shims_in_spare = || {
        shims()
            .iter()
            .filter(|(_, dir)| dir.starts_with(state.join("spare")))
            .count()
    };
    assert!(
        wait_until(WAIT, || shims_in_spare() == 1
            && entries(&state.join("spare")) == [name.clone()]),
        "{} shims, spare/ holds {:?}",
        shims_in_spare(),
        entries(&state.join("spare"))
    );
    let (mut m, _, _) = sleeper_through(&f, &server, spare);
    // (Every zygote of this server has the fault: each loses its first
    // answer, and each time the spare is exec'd the same way.)
    one_spare(&server, &[spare]);
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
}

/// A spare killed after its hello and before the server filed it as ready
/// (`CMAPP_TEST_FAULT=first-spare-killed` makes that instant certain): its
/// end found no spare ready to replace, so the one filing it replaces it.
/// CI once saw no spare for 20 s after such a kill.
#[test]
fn a_spare_killed_before_it_was_filed_as_ready_is_replaced() {
    let f = fixture();
    let server = Server::start_with_env(&f.dir.join("srv"), &f.keys, "CMAPP_TEST_FAULT", "first-spare-killed");
    server
        .log
        .wait_for("ended before a launch took it; starting another", WAIT)
        .unwrap_or_else(|| panic!("{}", server.log.text()));
    let (spare, _) = one_spare(&server, &[]);
    let (mut m, _, _) = sleeper_through(&f, &server, spare);
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
}

/// A framed shim-protocol message (a big-endian length, then JSON).
fn read_frame(s: &mut std::os::unix::net::UnixStream) -> serde_json::Value {
    use std::io::Read;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// A shim started by hand in `<state>/spare/NAME`, as a server starts a
/// spare, connected to as its server: its process and the connection.
fn hand_spare(state: &Path, name: &str) -> (std::process::Child, std::os::unix::net::UnixStream) {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let dir = state.join("spare").join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut shim = std::process::Command::new(cmapp_tests::bin("cmappserver"))
        .arg("shim")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(shim.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "listening\n");
    let mut conn = std::os::unix::net::UnixStream::connect(dir.join("sock")).unwrap();
    let hello = read_frame(&mut conn);
    assert_eq!(hello["waiting"], true, "{hello}");
    (shim, conn)
}

/// The meta.json of a launch of `run` filed as `id`, as a server writes it
/// (after its `unstarted` marker).
fn meta_json(id: &str, run: &[&str]) -> String {
    let spec = common::service::ServiceSpec::parse(run.iter().map(|s| s.to_string()).collect(), None).unwrap();
    let mut meta = serde_json::to_value(&spec).unwrap();
    meta["id"] = id.into();
    meta["key"] = spec.key().into();
    meta["created_at_ms"] = 1u64.into();
    meta.to_string()
}

#[test]
fn a_spare_whose_server_dies_before_the_rename_starts_nothing_and_goes() {
    let f = fixture();
    let mut server = Server::start(&f.dir.join("srv"), &f.keys, "");
    server.term();
    let state = server.state_dir.clone();
    let ran = f.dir.join("ran");
    let app = format!("touch {}; exec sleep 1000", ran.display());
    // Without a meta.json, and with one (the server died between it and the rename).
    for (name, meta) in [("a", false), ("b", true)] {
        let (mut shim, conn) = hand_spare(&state, name);
        if meta {
            let dir = state.join("spare").join(name);
            std::fs::write(dir.join("unstarted"), "").unwrap();
            std::fs::write(dir.join("meta.json"), meta_json("r-b", &["/bin/sh", "-c", &app])).unwrap();
        }
        drop(conn);
        let status = cmapp_tests::server::wait_child(&mut shim).expect("the spare ends");
        assert!(status.success(), "{status:?}");
        assert!(!state.join("spare").join(name).exists(), "its directory is left");
        assert!(!ran.exists(), "a spare started its application");
    }
}

#[test]
fn a_spare_renamed_into_procs_whose_server_dies_before_start_is_adopted_and_started_by_the_next() {
    let f = fixture();
    let mut server = Server::start(&f.dir.join("srv"), &f.keys, "");
    server.term();
    let state = server.state_dir.clone();
    let ran = f.dir.join("ran");
    let flag = f.dir.join("flag");
    let app = format!("touch {}; {}", ran.display(), waits_for(&flag, 6));
    let run = ["/bin/sh", "-c", app.as_str()];
    let (mut shim, conn) = hand_spare(&state, "s");
    std::fs::write(state.join("spare/s/unstarted"), "").unwrap();
    std::fs::write(state.join("spare/s/meta.json"), meta_json("r-1", &run)).unwrap();
    std::fs::rename(state.join("spare/s"), state.join("procs/r-1")).unwrap();
    drop(conn);
    let log = state.join("procs/r-1/shim.log");
    assert!(
        wait_until(WAIT, || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("went before it said start"))),
        "the shim did not notice its server went"
    );
    assert!(
        shim.try_wait().unwrap().is_none(),
        "a filed shim waits for the next server"
    );
    assert!(!ran.exists(), "started without Start");

    server.restart(None);
    server
        .log
        .wait_for("re-attached to running process", WAIT)
        .unwrap_or_else(|| panic!("{}", server.log.text()));
    assert!(
        wait_until(WAIT, || ran.exists()),
        "the adopting server did not start it"
    );
    let rec = server
        .recorded()
        .into_iter()
        .find(|r| r.id == "r-1")
        .expect("pid recorded");
    assert_eq!(rec.shim_pid, shim.id());
    // The service's manager finds it running, with its pid, and gets its exit.
    let mut m = Mgr::spawn(&f.conf, &server.node(), 10.0, &[], &run);
    let line = m
        .err
        .wait_for("attached", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    assert_eq!(pid_in(&line), rec.pid, "{line}");
    std::fs::write(&flag, "").unwrap();
    assert_eq!(m.code(), 6, "{}", m.err.text());
    let _ = shim.wait();
}
