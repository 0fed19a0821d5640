//! The vsock transport without a VM: cmappmgr through a user-space vsock
//! device's Unix socket (the hybrid-vsock convention, played by
//! `cmapp_tests::vsock::HybridRelay` in front of a cmappserver on loopback),
//! AF_VSOCK on a host without a vsock transport, cmappserver's vsock
//! listener, and the name check of a vsock peer under CA trust. The guest
//! tests (`guest_vm.rs`) run the same over a real virtio-vsock device.

use cmapp_tests::fixture::Fixture;
use cmapp_tests::keys;
use cmapp_tests::mgr::{pid_in, Mgr};
use cmapp_tests::server::Server;
use cmapp_tests::vsock::HybridRelay;
use cmapp_tests::WAIT;

fn relay(f: &Fixture, port: u32) -> HybridRelay {
    HybridRelay::start(&f.dir.join("vsock.sock"), port, f.server.addr)
}

fn run(args: &[&str]) -> (i32, Mgr) {
    Mgr::run_in(None, args, WAIT)
}

#[test]
fn exit_codes_signals_check_and_status_through_a_hybrid_vsock_socket() {
    let f = Fixture::new("");
    let relay = relay(&f, 5315);
    let node = relay.node();

    let mut m = Mgr::spawn(&f.conf, &node, 10.0, &[], &["/bin/sh", "-c", "echo via-vsock; exit 7"]);
    assert_eq!(m.code(), 7, "{}", m.err.text());
    assert!(m.out.contains("via-vsock"), "{}", m.out.text());
    assert!(m.err.contains("PROGRAM EXIT CODE 7"), "{}", m.err.text());

    // A process killed by a signal, while a second manager watches it.
    let mut victim = Mgr::spawn(&f.conf, &node, 10.0, &[], &["/bin/sleep", "1000"]);
    let pid = pid_in(&victim.expect_line("started ", WAIT));
    let conf = f.conf.to_str().unwrap();
    let (code, status) = run(&["status", "--node", &node, "--conf", conf, "--json"]);
    assert_eq!(code, 0, "{}", status.err.text());
    assert!(status.out.contains("/bin/sleep 1000"), "{}", status.out.text());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(victim.code(), 137, "{}", victim.err.text());

    let (code, check) = run(&["check", "--node", &node, "--conf", conf]);
    assert_eq!(code, 0, "{}", check.err.text());
    assert!(
        relay.connects.load(std::sync::atomic::Ordering::SeqCst) >= 4,
        "every connection went through the vsock socket"
    );
}

#[test]
fn a_vsock_port_nobody_listens_on_is_unreachable_until_the_timeout() {
    let f = Fixture::new("");
    let relay = relay(&f, 5315);
    let node = format!("vsock-unix:{}:6000", relay.path.display());
    let conf = f.conf.to_str().unwrap();
    // --verbose: every attempt's error is logged (the last one may be cut
    // short by the deadline and say only "timed out").
    let (code, m) = run(&["check", "--node", &node, "--conf", conf, "--timeout", "1", "--verbose"]);
    assert_eq!(code, 1, "{}", m.err.text());
    assert!(
        m.err
            .contains("the vsock device closed the connection after CONNECT 6000: nothing listens on vsock port 6000"),
        "{}",
        m.err.text()
    );
    assert!(relay.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // No device at all: the socket path does not exist.
    let node = format!("vsock-unix:{}", f.dir.join("absent.sock").display());
    let (code, m) = run(&["check", "--node", &node, "--conf", conf, "--timeout", "1", "--verbose"]);
    assert_eq!(code, 1, "{}", m.err.text());
    assert!(
        m.err.contains("absent.sock failed: No such file or directory"),
        "{}",
        m.err.text()
    );
}

#[test]
fn bad_vsock_nodes_are_refused_with_the_reason() {
    let f = Fixture::new("");
    let conf = f.conf.to_str().unwrap();
    for (node, why) in [
        ("vsock:0", "is not a guest's vsock context id"),
        ("vsock:3:99999999999", "is not a vsock port"),
        ("vsock-unix:relative.sock", "must be an absolute path"),
        ("@vsock:3", "the name before '@' is empty"),
    ] {
        let (code, m) = run(&["check", "--node", node, "--conf", conf]);
        assert_eq!(code, 78, "{node}: {}", m.err.text());
        assert!(m.err.contains(why), "{node}: {}", m.err.text());
    }
}

/// This machine's kernel has AF_VSOCK but no transport to a guest (no
/// vhost_vsock): connect fails with ENODEV and cmappmgr says what that
/// means. A kernel without AF_VSOCK at all is a configuration error (78).
#[test]
fn af_vsock_without_a_transport_to_the_guest_is_explained() {
    let f = Fixture::new("");
    let conf = f.conf.to_str().unwrap();
    let (code, m) = run(&[
        "check",
        "--node",
        "vsock:3",
        "--conf",
        conf,
        "--timeout",
        "1",
        "--verbose",
    ]);
    let err = m.err.text();
    match code {
        1 => assert!(
            err.contains("connection to vsock:3:5315 failed")
                && (err.contains("no vsock transport reaches that CID")
                    || err.contains("nothing listens on that vsock port")),
            "{err}"
        ),
        78 => assert!(err.contains("this host's kernel has no AF_VSOCK support"), "{err}"),
        _ => panic!("unexpected exit {code}: {err}"),
    }
}

/// cmappserver listens on a vsock port beside TCP; one it cannot bind (here:
/// already taken by another server) is a warning naming it, and the TCP
/// listeners serve on.
#[test]
fn a_vsock_listener_that_cannot_bind_is_a_warning_and_tcp_serves_on() {
    let port = 40_000 + std::process::id() % 20_000;
    let listen = format!("listen=127.0.0.1:0\nlisten=vsock:{port}\n");
    let f = Fixture::new(&listen);
    f.server
        .log
        .wait_for(&format!("listening on vsock:{port}"), WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));

    let dir = f.dir.join("second");
    let second = Server::start(&dir, &f.keys, &listen);
    second
        .log
        .wait_for(&format!("cannot listen on vsock:{port}: "), WAIT)
        .unwrap_or_else(|| panic!("{}", second.log.text()));
    assert!(
        second.log.contains("another program listens on that port"),
        "{}",
        second.log.text()
    );
    let mut m = Mgr::spawn(&f.conf, &second.node(), 10.0, &[], &["/bin/sh", "-c", "exit 3"]);
    assert_eq!(m.code(), 3, "{}", m.err.text());

    // Only a vsock listener, and it cannot bind: nothing to serve on, exit 71.
    let only = format!("listen=vsock:{port}\n");
    let out = std::process::Command::new(cmapp_tests::bin("cmappserver"))
        .arg("--conf")
        .arg(write_conf(&f, "only.conf", &only))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(71), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on vsock:{port}")));
}

fn write_conf(f: &Fixture, name: &str, extra: &str) -> std::path::PathBuf {
    let path = f.dir.join(name);
    std::fs::write(
        &path,
        format!(
            "keyStore={}\ntrustStore={}\nstateDir={}\n{extra}",
            f.keys.server_private.display(),
            f.keys.server_trust.display(),
            f.dir.join(format!("{name}.state")).display()
        ),
    )
    .unwrap();
    path
}

/// Under CA trust a vsock address names no one: the manager must be told the
/// guest's name (`NAME@vsock...`), which is checked against the certificate
/// as a host name is over TCP.
#[test]
fn under_ca_trust_a_vsock_peer_is_checked_against_the_name_given() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let k = keys::ca(dir, "", &["guest1"]);
    let server = Server::start(&dir.join("server"), &k, "");
    let conf = keys::manager_conf(dir, "m.conf", &k.client_private, &k.client_trust, "");
    let conf = conf.to_str().unwrap();
    let relay = HybridRelay::start(&dir.join("v.sock"), 5315, server.addr);

    let (code, m) = run(&["check", "--node", &relay.node(), "--conf", conf]);
    assert_eq!(code, 78, "{}", m.err.text());
    assert!(
        m.err.contains("name the guest as its certificate does"),
        "{}",
        m.err.text()
    );

    let (code, m) = run(&["check", "--node", &format!("guest1@{}", relay.node()), "--conf", conf]);
    assert_eq!(code, 0, "{}", m.err.text());

    let (code, m) = run(&[
        "check",
        "--node",
        &format!("guest2@{}", relay.node()),
        "--conf",
        conf,
        "--timeout",
        "2",
    ]);
    assert_eq!(code, 77, "{}", m.err.text());
    assert!(m.err.contains("guest2"), "{}", m.err.text());
}

/// A broken vsock connection (the device reset, as a guest's vsock transport
/// reset does after a migration with kernel vhost-vsock) is a broken
/// connection like any other: the manager reconnects through the device,
/// re-attaches to its process, and still gets its exit code. The one-shot
/// verbs work through the device too.
#[test]
fn a_manager_reattaches_through_the_vsock_device_after_its_connection_breaks() {
    let f = Fixture::new("");
    let relay = relay(&f, 5315);
    let node = relay.node();
    let flag = f.dir.join("finish");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done; exit 9", flag.display());
    let mut m = Mgr::spawn(&f.conf, &node, 10.0, &[], &["/bin/sh", "-c", &script]);
    let pid = pid_in(&m.expect_line("started ", WAIT));

    relay.cut();
    let again = m.expect_line("re-attached to ", WAIT);
    assert_eq!(pid_in(&again), pid, "{again}");
    let conf = f.conf.to_str().unwrap();
    let one_shot = |verb: &str| {
        run(&[
            verb, "-node", &node, "--conf", conf, "-service", "/bin/sh", "-c", &script,
        ])
        .0
    };
    assert_eq!(one_shot("monitor"), 0, "the one-shot monitor sees the process running");
    std::fs::write(&flag, "").unwrap();
    assert_eq!(m.code(), 9, "{}", m.err.text());
}
