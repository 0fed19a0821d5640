//! The built-in probes end to end: cmappmgr on the "host" runs a probe in the
//! "guest" through cmappserver, exactly as a cluster service entry names it,
//! exits with the probe's failure code, and writes the probe's lines into the
//! host log file the entry names.

use std::path::Path;

use cmapp_tests::keys;
use cmapp_tests::loopdev::{sparse_file, LoopDev};
use cmapp_tests::mgr::{monitor_args, Mgr};
use cmapp_tests::netpair::NetPair;
use cmapp_tests::server::Server;
use cmapp_tests::{require_root, wait_until, WAIT};

fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}

#[test]
fn lan_probe_through_cmappmgr_fails_the_service_and_fills_the_host_log() {
    require_root("network namespaces");
    let net = NetPair::new("e");
    // The probe pings a second host address, so that taking it away fails
    // the pings without cutting the manager's own connection.
    let target = format!("{}.3", net.host_ip.rsplit_once('.').unwrap().0);
    net.host_ip_cmd(&["addr", "add", &format!("{target}/24"), "dev", &net.host_if]);

    let tmp = tempfile::tempdir().unwrap();
    let k = keys::pinned(tmp.path(), "");
    let server = Server::start_with(
        &tmp.path().join("srv"),
        &k,
        &format!("listen={}:5315\n", net.guest_ip),
        cmapp_tests::bin("cmappserver"),
        Some(net.guest_ns.clone()),
        Vec::new(),
    );
    let conf = keys::manager_conf(tmp.path(), "m.conf", &k.client_private, &k.client_trust, "");
    let host_log = tmp.path().join("vm1_lan0.log");
    let host_log_s = host_log.display().to_string();
    let run = [
        "/opt/hp/cmappserver/cmapp_net_mon.pl",
        "--lan",
        &net.guest_if,
        "--ip",
        &target,
        "--host_logfile",
        &host_log_s,
        "--log_level",
        "2",
        "--probe_count",
        "3",
        "--polling_interval",
        "0.2",
    ];
    let mut m = Mgr::spawn_in(
        Some(&net.host_ns),
        &monitor_args(&conf, &server.node(), 10.0, &[], &run),
    );
    m.err
        .wait_for("started", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    // The probe's lines reach the host's own log file.
    let reply = format!("reply from {target}");
    assert!(
        wait_until(WAIT, || file_contains(&host_log, &reply)),
        "no ping lines in the host log"
    );

    net.host_ip_cmd(&["addr", "del", &format!("{target}/24"), "dev", &net.host_if]);
    assert_eq!(m.code(), 1, "{}", m.err.text());
    assert!(m.err.contains("PROGRAM EXIT CODE 1"), "{}", m.err.text());
    let log = std::fs::read_to_string(&host_log).unwrap();
    assert!(
        log.contains(&format!("3 consecutive pings from {} to {target}", net.guest_if)),
        "{log}"
    );
}

#[test]
fn disk_probe_through_cmappmgr_fails_the_service_naming_the_device() {
    require_root("loop devices");
    let tmp = tempfile::tempdir().unwrap();
    let backing = sparse_file(&tmp.path().join("disk.img"), 64 << 20);
    let dev = LoopDev::attach(&backing);
    let k = keys::pinned(tmp.path(), "");
    let server = Server::start(&tmp.path().join("srv"), &k, "");
    let conf = keys::manager_conf(tmp.path(), "m.conf", &k.client_private, &k.client_trust, "");
    let host_log = tmp.path().join("vm1_npiv_disk_mon.log");
    let host_log_s = host_log.display().to_string();
    let name = dev.name();
    let run = [
        "/opt/hp/cmappserver/cmapp_disk_mon",
        "-O",
        &host_log_s,
        "-D",
        "6",
        "-t",
        "0.2",
        &name,
    ];
    let mut m = Mgr::spawn_args(&monitor_args(&conf, &server.node(), 10.0, &[], &run));
    m.err
        .wait_for("started", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    assert!(
        wait_until(WAIT, || file_contains(&host_log, "readable")),
        "no poll lines in the host log"
    );

    // Reads past the backing file's new end fail with EIO.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&backing)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(m.code(), 1, "{}", m.err.text());
    let log = std::fs::read_to_string(&host_log).unwrap();
    assert!(
        log.contains(&format!("read of {name}")) && log.contains("Input/output error"),
        "{log}"
    );
}

#[test]
fn an_unopenable_host_log_file_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys::pinned(tmp.path(), "");
    let server = Server::start(&tmp.path().join("srv"), &k, "");
    let conf = keys::manager_conf(tmp.path(), "m.conf", &k.client_private, &k.client_trust, "");
    let run = [
        "/opt/hp/cmappserver/cmapp_disk_mon",
        "-O",
        "/nonexistent/dir/x.log",
        "/dev/null",
    ];
    let mut m = Mgr::spawn_args(&monitor_args(&conf, &server.node(), 10.0, &[], &run));
    assert_eq!(m.code(), 78, "{}", m.err.text());
    assert!(
        m.err.contains("cannot open the host log file /nonexistent/dir/x.log"),
        "{}",
        m.err.text()
    );
    assert!(server.recorded().is_empty(), "something was started");
}

/// Runs a probe that fails at once (`args` with `{}` replaced by the host log
/// file's path) and checks that its fatal line reached the host log file:
/// cmappmgr saw the file in that spelling.
fn host_log_spelling(probe: &str, args: &[&str], fatal: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys::pinned(tmp.path(), "");
    let server = Server::start(&tmp.path().join("srv"), &k, "");
    let conf = keys::manager_conf(tmp.path(), "m.conf", &k.client_private, &k.client_trust, "");
    let host_log = tmp.path().join("host.log");
    let path = host_log.display().to_string();
    let args: Vec<String> = args.iter().map(|a| a.replace("{}", &path)).collect();
    let mut run = vec![probe];
    run.extend(args.iter().map(String::as_str));
    let mut m = Mgr::spawn_args(&monitor_args(&conf, &server.node(), 10.0, &[], &run));
    assert_eq!(m.code(), 1, "{}", m.err.text());
    let log = std::fs::read_to_string(&host_log)
        .unwrap_or_else(|e| panic!("no host log file written for {args:?} ({e}): {}", m.err.text()));
    assert!(log.contains(fatal), "{args:?}: {log}");
}

/// One test per spelling of the LAN probe's `--host_logfile` that the probe
/// accepts (the interface does not exist, so the probe fails at once).
macro_rules! net_spelling {
    ($($name:ident: [$($arg:expr),*];)*) => {$(
        #[test]
        fn $name() {
            host_log_spelling(
                "/opt/hp/cmappserver/cmapp_net_mon.pl",
                &["--lan", "nosuchlan0", "--ip", "127.0.0.1", $($arg),*],
                "interface nosuchlan0 does not exist",
            );
        }
    )*};
}

net_spelling! {
    host_log_as_host_logfile_space: ["--host_logfile", "{}"];
    host_log_as_host_logfile_equals: ["--host_logfile={}"];
    host_log_as_host_dash_logfile_space: ["--host-logfile", "{}"];
    host_log_as_host_dash_logfile_equals: ["--host-logfile={}"];
    host_log_as_single_dash_host_logfile: ["-host_logfile", "{}"];
    host_log_as_single_dash_host_logfile_equals: ["-host_logfile={}"];
}

/// The same for the disk probe's `-O` / `--log-file` (the device does not
/// exist, so the probe fails at its first poll).
macro_rules! disk_spelling {
    ($($name:ident: [$($arg:expr),*];)*) => {$(
        #[test]
        fn $name() {
            host_log_spelling(
                "/opt/hp/cmappserver/cmapp_disk_mon",
                &[$($arg,)* "-t", "0.1", "/nonexistent/disk0"],
                "/nonexistent/disk0",
            );
        }
    )*};
}

disk_spelling! {
    host_log_as_short_o_space: ["-O", "{}"];
    host_log_as_short_o_attached: ["-O{}"];
    host_log_as_short_o_after_other_shorts: ["-D6", "-O{}"];
    host_log_as_log_file_space: ["--log-file", "{}"];
    host_log_as_log_file_equals: ["--log-file={}"];
    host_log_as_log_underscore_file_space: ["--log_file", "{}"];
    host_log_as_log_underscore_file_equals: ["--log_file={}"];
}
