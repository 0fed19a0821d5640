//! systemd readiness over a real `NOTIFY_SOCKET` (a datagram socket the
//! test binds, as systemd does): READY=1 only once the listeners are bound
//! and the state directory adopted, STATUS= with the process count,
//! WATCHDOG=1 at the period WATCHDOG_USEC asks for, STOPPING=1 on SIGTERM,
//! and none of the variables reach the applications.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use cmapp_tests::keys::{self, Keys};
use cmapp_tests::mgr::{pid_in, Mgr};
use cmapp_tests::server::Server;
use cmapp_tests::WAIT;

/// The test's end of the protocol.
struct Notify {
    sock: UnixDatagram,
    env: Vec<(String, String)>,
}

impl Notify {
    fn bind(dir: &Path, watchdog: Option<Duration>) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let mut env = vec![("NOTIFY_SOCKET".to_string(), path.display().to_string())];
        if let Some(w) = watchdog {
            env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
        }
        Notify { sock, env }
    }

    /// The next datagram, or None after `limit`.
    fn recv(&self, limit: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Datagrams until one contains `needle` (which is returned).
    fn wait_for(&self, needle: &str) -> String {
        let end = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some(m) if m.contains(needle) => return m,
                Some(m) => seen.push(m),
                None => break,
            }
        }
        panic!("no notification with {needle:?}; got {seen:?}");
    }
}

fn setup(dir: &Path) -> (Keys, std::path::PathBuf) {
    let keys = keys::pinned(dir, "");
    let conf = keys::manager_conf(dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    (keys, conf)
}

#[test]
fn ready_is_sent_once_listening_and_status_follows_the_process_count() {
    let tmp = tempfile::tempdir().unwrap();
    let (keys, conf) = setup(tmp.path());
    let notify = Notify::bind(tmp.path(), None);
    let server = Server::start_with(
        &tmp.path().join("srv"),
        &keys,
        "",
        cmapp_tests::bin("cmappserver"),
        None,
        notify.env.clone(),
    );
    let first = notify.recv(WAIT).expect("a notification");
    assert_eq!(first, "READY=1\nSTATUS=0 monitored processes (limit 30)\n");
    // Ready means a manager can connect now.
    std::net::TcpStream::connect(server.addr).expect("listening when READY=1 arrives");

    let mut m = Mgr::spawn(&conf, &server.node(), 10.0, &["-stop_on_halt"], &["/bin/sleep", "600"]);
    m.err.wait_for("started", WAIT).expect("started");
    assert_eq!(notify.wait_for("STATUS="), "STATUS=1 monitored processes (limit 30)\n");

    // The application does not inherit the protocol's variables (all of its
    // output forwarded: only the last lines come with the exit by default).
    let mut env = Mgr::spawn(&conf, &server.node(), 10.0, &["-forward_output"], &["/usr/bin/env"]);
    assert_eq!(env.code(), 0, "{}", env.err.text());
    let out = env.out.text();
    assert!(out.contains("PATH="), "env printed nothing: {out}");
    assert!(!out.contains("NOTIFY_SOCKET") && !out.contains("WATCHDOG_"), "{out}");

    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.code(), 0);
    assert_eq!(notify.wait_for("STATUS="), "STATUS=0 monitored processes (limit 30)\n");
}

#[test]
fn ready_waits_for_the_adoption_of_running_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let (keys, conf) = setup(tmp.path());
    let mut server = Server::start(&tmp.path().join("srv"), &keys, "");
    let mut m = Mgr::spawn(&conf, &server.node(), 10.0, &[], &["/bin/sleep", "600"]);
    let pid = pid_in(&m.err.wait_for("started", WAIT).expect("started"));
    m.kill9();
    server.kill9();

    // The next server, run by "systemd", reports the adopted process in its
    // first notification: READY=1 came after the adoption.
    let notify = Notify::bind(tmp.path(), None);
    server.env = notify.env.clone();
    server.restart(None);
    let first = notify.recv(WAIT).expect("a notification");
    assert_eq!(first, "READY=1\nSTATUS=1 monitored processes (limit 30)\n");
    assert!(cmapp_tests::alive(pid));
}

#[test]
fn the_watchdog_is_fed_and_a_stop_is_announced() {
    let tmp = tempfile::tempdir().unwrap();
    let (keys, _conf) = setup(tmp.path());
    let notify = Notify::bind(tmp.path(), Some(Duration::from_millis(400)));
    let mut server = Server::start_with(
        &tmp.path().join("srv"),
        &keys,
        "",
        cmapp_tests::bin("cmappserver"),
        None,
        notify.env.clone(),
    );
    assert!(notify.recv(WAIT).expect("ready").starts_with("READY=1\n"));
    // A quarter of the 400 ms interval: several pings well within one interval.
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(notify.wait_for("WATCHDOG=1"), "WATCHDOG=1\n");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "pings too slow: {:?}",
        t0.elapsed()
    );
    assert!(server.term().success());
    notify.wait_for("STOPPING=1");
}
