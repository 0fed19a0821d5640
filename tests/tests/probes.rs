//! The built-in probes against real kernel objects.
//!
//! LAN probe: two network namespaces joined by a veth pair; the probe runs in
//! the guest namespace and pings the host end. Faults: the host's address
//! removed (pings fail, the link stays up), the guest's link set down, the
//! host's link set down (no carrier), an outage shorter than the threshold.
//! Each runs on an ICMP datagram socket (ping_group_range opened inside the
//! namespace) and on a raw socket (range closed).
//!
//! Disk probe: loop devices over sparse files (truncating the file makes
//! reads fail with EIO) and over a file on a FUSE filesystem that blocks
//! reads on demand (the read times out).
//!
//! The tests that create kernel objects need root and fail without it.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cmapp_tests::loopdev::{sparse_file, HangFs, LoopDev};
use cmapp_tests::netpair::NetPair;
use cmapp_tests::output::Lines;
use cmapp_tests::{require_root, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const ROOT: &str = "network namespaces / loop devices";

/// A running probe with its output captured line by line.
#[derive(Debug)]
struct Probe {
    child: Child,
    out: Lines,
    err: Lines,
    status: Option<ExitStatus>,
}

impl Probe {
    /// `cmappserver SUBCOMMAND ARGS...`, inside network namespace `netns` if given.
    fn spawn(netns: Option<&str>, subcommand: &str, args: &[&str]) -> Probe {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(cmapp_tests::bin("cmappserver"));
                c
            }
            None => Command::new(cmapp_tests::bin("cmappserver")),
        };
        let mut child = cmd
            .arg(subcommand)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cmappserver");
        let (out, err) = (Lines::default(), Lines::default());
        out.follow(child.stdout.take().unwrap());
        err.follow(child.stderr.take().unwrap());
        Probe {
            child,
            out,
            err,
            status: None,
        }
    }

    fn net(netns: &str, args: &[&str]) -> Probe {
        Probe::spawn(Some(netns), "net-mon", args)
    }

    fn disk(args: &[&str]) -> Probe {
        Probe::spawn(None, "disk-mon", args)
    }

    fn output(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.out.text(), self.err.text())
    }

    /// Waits for the `n`-th log line containing `needle`.
    fn wait_line_nth(&self, needle: &str, n: usize) -> String {
        self.out
            .wait_for_nth(needle, n, WAIT)
            .unwrap_or_else(|| panic!("no {needle:?} line (#{n}) within {WAIT:?}; {}", self.output()))
    }

    fn wait_line(&self, needle: &str) -> String {
        self.wait_line_nth(needle, 1)
    }

    /// Waits for the probe to end by itself; returns its exit status.
    fn wait_exit(&mut self) -> ExitStatus {
        if self.status.is_none() {
            let mut child_status = None;
            let ended = cmapp_tests::wait_until(WAIT, || {
                child_status = self.child.try_wait().expect("try_wait");
                child_status.is_some()
            });
            assert!(ended, "the probe did not exit within {WAIT:?}; {}", self.output());
            self.status = child_status;
            // Nothing (no stuck reader process, say) may keep its stdout open.
            assert!(
                self.out.wait_closed(Duration::from_secs(5)),
                "stdout still open after exit"
            );
            assert!(
                self.err.wait_closed(Duration::from_secs(5)),
                "stderr still open after exit"
            );
        }
        self.status.unwrap()
    }

    /// Waits for the exit and returns the code (panics if a signal ended it).
    fn code(&mut self) -> i32 {
        let status = self.wait_exit();
        status
            .code()
            .unwrap_or_else(|| panic!("the probe ended by a signal: {status:?}; {}", self.output()))
    }

    /// The last line of the log (the reason, after an exit).
    fn last_line(&self) -> String {
        self.out.snapshot().last().cloned().unwrap_or_default()
    }

    /// SIGTERM, then the status it ended with.
    fn terminate(&mut self) -> ExitStatus {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the probe already ended; {}",
            self.output()
        );
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        self.wait_exit()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run("ip", args);
}

// ---------------------------------------------------------------- LAN probe

/// The kind of ICMP socket a test wants the probe to use.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Socket {
    /// ping_group_range opened in the guest namespace.
    Datagram,
    /// ping_group_range closed: only root's raw socket works.
    Raw,
}

/// A fresh pair whose guest namespace offers the probe the `socket` kind.
fn lan(tag: &str, socket: Socket) -> NetPair {
    require_root(ROOT);
    let net = NetPair::new(tag);
    let range = match socket {
        Socket::Datagram => "net.ipv4.ping_group_range=0 2147483647",
        Socket::Raw => "net.ipv4.ping_group_range=1 0",
    };
    run("ip", &["netns", "exec", &net.guest_ns, "sysctl", "-q", "-w", range]);
    // NetPair::new has waited until both ends have their carrier.
    net
}

/// The start line's words for the socket kind.
fn socket_words(socket: Socket) -> &'static str {
    match socket {
        Socket::Datagram => "(ICMP datagram socket)",
        Socket::Raw => "(raw ICMP socket)",
    }
}

/// The probe in the guest namespace, pinging the host end every 0.2 s.
fn lan_probe(net: &NetPair, extra: &[&str]) -> Probe {
    let mut args = vec![
        "--lan",
        &net.guest_if,
        "--ip",
        &net.host_ip,
        "--polling_interval",
        "0.2",
    ];
    args.extend_from_slice(extra);
    Probe::net(&net.guest_ns, &args)
}

/// (a) The target stops answering, the link stays up: the probe fails after
/// about probe_count × polling_interval, with the ping message.
fn pings_fail(socket: Socket) {
    let net = lan("a", socket);
    let mut probe = lan_probe(&net, &["--probe_count", "3", "--log_level", "2"]);
    probe.wait_line(socket_words(socket));
    probe.wait_line_nth(&format!("reply from {} through {}", net.host_ip, net.guest_if), 2);
    let cut = Instant::now();
    ip(&[
        "-n",
        &net.host_ns,
        "addr",
        "del",
        &format!("{}/24", net.host_ip),
        "dev",
        &net.host_if,
    ]);
    assert_eq!(probe.code(), 1, "{}", probe.output());
    let took = cut.elapsed();
    let last = probe.last_line();
    let expected = format!(
        "cmapp_net_mon: 3 consecutive pings from {} to {} got no reply",
        net.guest_if, net.host_ip
    );
    assert!(last.contains(&expected), "last line {last:?}; {}", probe.output());
    assert!(!probe.out.contains("is down"), "{}", probe.output());
    // Three whole intervals of silence, give or take the one under way.
    assert!(
        took >= Duration::from_millis(500),
        "failed after only {took:?}; {}",
        probe.output()
    );
    assert!(
        took < Duration::from_secs(4),
        "failed only after {took:?}; {}",
        probe.output()
    );
}

#[test]
fn lan_pings_fail_datagram_socket() {
    pings_fail(Socket::Datagram);
}

#[test]
fn lan_pings_fail_raw_socket() {
    pings_fail(Socket::Raw);
}

/// (b) The watched link goes down: the probe fails at the next poll, with
/// the interface message, long before probe_count misses.
fn link_down(socket: Socket) {
    let net = lan("b", socket);
    let mut probe = lan_probe(&net, &["--probe_count", "10", "--log_level", "2"]);
    probe.wait_line(socket_words(socket));
    probe.wait_line("reply from");
    let cut = Instant::now();
    ip(&["-n", &net.guest_ns, "link", "set", &net.guest_if, "down"]);
    assert_eq!(probe.code(), 1, "{}", probe.output());
    let took = cut.elapsed();
    let last = probe.last_line();
    assert!(
        last.ends_with(&format!("cmapp_net_mon: interface {} is down", net.guest_if)),
        "last line {last:?}; {}",
        probe.output()
    );
    assert!(
        took < Duration::from_secs(2),
        "failed only after {took:?}; {}",
        probe.output()
    );
}

#[test]
fn lan_link_down_datagram_socket() {
    link_down(Socket::Datagram);
}

#[test]
fn lan_link_down_raw_socket() {
    link_down(Socket::Raw);
}

/// The far end goes down: the watched interface loses its carrier.
#[test]
fn lan_peer_link_down_is_no_carrier() {
    let net = lan("d", Socket::Raw);
    let mut probe = lan_probe(&net, &["--probe_count", "10", "--log_level", "2"]);
    probe.wait_line("reply from");
    ip(&["-n", &net.host_ns, "link", "set", &net.host_if, "down"]);
    assert_eq!(probe.code(), 1, "{}", probe.output());
    let last = probe.last_line();
    let expected = format!("interface {} is down (no carrier)", net.guest_if);
    assert!(last.ends_with(&expected), "last line {last:?}; {}", probe.output());
}

/// (c) An outage shorter than probe_count polls is survived, and logged at
/// log level 1 (misses and recovery, not every ping); the guest log file
/// gets the same lines; SIGTERM ends the probe at once.
fn short_outage(socket: Socket) {
    let net = lan("c", socket);
    let dir = tempfile::tempdir().unwrap();
    let guest_log = dir.path().join("guest.log");
    let guest_log_arg = guest_log.display().to_string();
    let mut probe = Probe::net(
        &net.guest_ns,
        &[
            "-lan", // the original's Perl parser took single-dash long options
            &net.guest_if,
            "--ip",
            &net.host_ip,
            "--polling_interval",
            "0.3",
            "--probe_count",
            "4",
            "--log_level",
            "1",
            "--guest_logfile",
            &guest_log_arg,
            "--host_logfile",
            "/var/adm/never-written-by-the-guest.log",
        ],
    );
    probe.wait_line(socket_words(socket));
    let host_addr = format!("{}/24", net.host_ip);
    ip(&["-n", &net.host_ns, "addr", "del", &host_addr, "dev", &net.host_if]);
    probe.wait_line("got no reply");
    ip(&["-n", &net.host_ns, "addr", "add", &host_addr, "dev", &net.host_if]);
    let recovered = probe.wait_line(&format!("{} replies again through {}", net.host_ip, net.guest_if));
    assert!(
        ["after 1 missed", "after 2 missed", "after 3 missed"]
            .iter()
            .any(|m| recovered.contains(m)),
        "{recovered}"
    );
    assert!(probe.out.contains("(1 of 4 misses)"), "{}", probe.output());
    assert!(
        !probe.out.contains("reply from"),
        "level 1 logs no single ping; {}",
        probe.output()
    );

    let status = probe.terminate();
    assert_eq!(
        status.signal(),
        Some(Signal::SIGTERM as i32),
        "{status:?}; {}",
        probe.output()
    );
    let stdout = probe.out.text();
    let file = std::fs::read_to_string(&guest_log).unwrap();
    assert_eq!(
        file.trim_end(),
        stdout.trim_end(),
        "the guest log file differs from stdout"
    );
    assert!(!Path::new("/var/adm/never-written-by-the-guest.log").exists());
}

#[test]
fn lan_short_outage_survived_datagram_socket() {
    short_outage(Socket::Datagram);
}

#[test]
fn lan_short_outage_survived_raw_socket() {
    short_outage(Socket::Raw);
}

/// IPv6 targets work the same way.
#[test]
fn lan_ipv6_pings_fail() {
    let net = lan("6", Socket::Datagram);
    let (host6, guest6) = ("fd00:c0a4::1", "fd00:c0a4::2");
    ip(&[
        "-n",
        &net.host_ns,
        "addr",
        "add",
        &format!("{host6}/64"),
        "dev",
        &net.host_if,
        "nodad",
    ]);
    ip(&[
        "-n",
        &net.guest_ns,
        "addr",
        "add",
        &format!("{guest6}/64"),
        "dev",
        &net.guest_if,
        "nodad",
    ]);
    let args = [
        "--lan",
        &net.guest_if,
        "--ip",
        host6,
        "--polling_interval",
        "0.2",
        "--probe_count",
        "3",
        "--log_level",
        "2",
    ];
    let mut probe = Probe::net(&net.guest_ns, &args);
    probe.wait_line_nth(&format!("reply from {host6}"), 2);
    ip(&[
        "-n",
        &net.host_ns,
        "addr",
        "del",
        &format!("{host6}/64"),
        "dev",
        &net.host_if,
    ]);
    assert_eq!(probe.code(), 1, "{}", probe.output());
    let expected = format!("3 consecutive pings from {} to {host6} got no reply", net.guest_if);
    assert!(probe.last_line().contains(&expected), "{}", probe.output());
}

/// A missing interface fails at once (it needs no namespace of its own).
#[test]
fn lan_missing_interface_fails() {
    let mut probe = Probe::spawn(None, "net-mon", &["--lan", "cmnosuch0", "--ip", "10.233.250.1"]);
    assert_eq!(probe.code(), 1, "{}", probe.output());
    assert!(
        probe
            .last_line()
            .ends_with("cmapp_net_mon: interface cmnosuch0 does not exist"),
        "{}",
        probe.output()
    );
}

#[test]
fn lan_bad_options_exit_64_with_usage() {
    let dir = tempfile::tempdir().unwrap();
    let unwritable = dir.path().join("no/such/dir/guest.log");
    let unwritable = unwritable.to_str().unwrap();
    let incomplete: &[&[&str]] = &[
        &[],
        &["--lan", "lo"],
        &["--ip", "127.0.0.1"],
        &["--lan", "lo", "--ip", "nowhere"],
    ];
    let wrong: &[&[&str]] = &[
        &["--polling_interval", "0"],
        &["--polling_interval", "-2"],
        &["--polling_interval", "soon"],
        &["--probe_count", "0"],
        &["--log_level", "3"],
        &["--host_logfile", "relative.log"],
        &["--host_logfile", ""],
        &["--guest_logfile", unwritable],
        &["--bogus"],
        &["--probe_count"],
    ];
    let complete = wrong.iter().map(|extra| {
        let mut args = vec!["--lan", "lo", "--ip", "127.0.0.1"];
        args.extend_from_slice(extra);
        args
    });
    let cases = incomplete.iter().map(|c| c.to_vec()).chain(complete);
    for args in cases {
        let mut probe = Probe::spawn(None, "net-mon", &args);
        assert_eq!(probe.code(), 64, "{args:?}: {}", probe.output());
        assert!(
            probe.out.snapshot().is_empty(),
            "{args:?}: nothing may be logged; {}",
            probe.output()
        );
        let err = probe.err.text();
        let says_why = err.contains("Usage:") || err.contains("cannot open guest log file");
        assert!(says_why, "{args:?}: no usage message; {}", probe.output());
    }
}

// --------------------------------------------------------------- disk probe

/// Two disks read every 0.2 s; one's backing file truncated: reads past
/// its end fail with EIO and the probe fails naming that device.
#[test]
fn disk_io_error_fails_naming_the_device() {
    require_root(ROOT);
    let dir = tempfile::tempdir().unwrap();
    let good = LoopDev::attach(&sparse_file(&dir.path().join("good.img"), 64 << 20));
    let bad_file = sparse_file(&dir.path().join("bad.img"), 64 << 20);
    let bad = LoopDev::attach(&bad_file);
    let args = ["-t", "0.2", "-D", "7", "--io-timeout", "5", &good.name(), &bad.name()];
    let mut probe = Probe::disk(&args);
    probe.wait_line_nth(&format!("{} readable", bad.name()), 3);
    probe.wait_line_nth(&format!("{} readable", good.name()), 3);
    // The last block is read at every poll, so the shrink shows at the next.
    assert!(probe
        .out
        .contains(&format!("bytes of {} at offset {}", bad.name(), (64 << 20) - 4096)));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bad_file)
        .unwrap()
        .set_len(0)
        .unwrap();
    let cut = Instant::now();
    assert_eq!(probe.code(), 1, "{}", probe.output());
    assert!(
        cut.elapsed() < Duration::from_secs(3),
        "noticed only after {:?}",
        cut.elapsed()
    );
    let last = probe.last_line();
    let expected = format!("cmapp_disk_mon: read of {} at offset ", bad.name());
    assert!(last.contains(&expected), "last line {last:?}; {}", probe.output());
    assert!(last.contains("Input/output error"), "last line {last:?}");
}

/// A read that hangs (FUSE under the loop device) trips the I/O timeout:
/// the probe exits 1 within about the timeout, though its reader stays
/// stuck until the hang is released.
#[test]
fn disk_hang_times_out() {
    require_root(ROOT);
    let dir = tempfile::tempdir().unwrap();
    let fs = HangFs::mount(dir.path(), 16 << 20);
    let dev = LoopDev::attach(&fs.image);
    let mut probe = Probe::disk(&["-t", "0.2", "-D", "6", "--io-timeout", "1", &dev.name()]);
    probe.wait_line_nth("readable", 2);
    fs.hang();
    let hung = Instant::now();
    assert_eq!(probe.code(), 1, "{}", probe.output());
    let took = hung.elapsed();
    let last = probe.last_line();
    let expected = format!("cmapp_disk_mon: read of {} timed out after 1 s", dev.name());
    assert!(last.ends_with(&expected), "last line {last:?}; {}", probe.output());
    assert!(took >= Duration::from_millis(900), "timed out after only {took:?}");
    assert!(took < Duration::from_secs(4), "timed out only after {took:?}");
    fs.release();
    drop(dev);
    drop(fs);
}

/// A device that is not there fails the first poll.
#[test]
fn disk_missing_device_fails() {
    let mut probe = Probe::disk(&["-t", "0.2", "/dev/cmapp-no-such-disk"]);
    assert_eq!(probe.code(), 1, "{}", probe.output());
    let last = probe.last_line();
    assert!(
        last.ends_with(
            "cmapp_disk_mon: open of /dev/cmapp-no-such-disk failed: No such file or directory (os error 2)"
        ),
        "last line {last:?}"
    );
}

/// A healthy disk keeps the probe running until SIGTERM, which ends it at once.
#[test]
fn disk_probe_stops_on_sigterm() {
    require_root(ROOT);
    let dir = tempfile::tempdir().unwrap();
    let dev = LoopDev::attach(&sparse_file(&dir.path().join("disk.img"), 64 << 20));
    let mut probe = Probe::disk(&["--poll_interval", "0.2", "--log_level", "6", &dev.name()]);
    probe.wait_line_nth("readable", 2);
    let status = probe.terminate();
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status:?}");
}

#[test]
fn disk_bad_options_exit_64_with_usage() {
    let cases: &[&[&str]] = &[
        &[],
        &["-t", "1"],
        &["-t", "0", "/dev/null"],
        &["-t", "-1", "/dev/null"],
        &["--poll-interval", "x", "/dev/null"],
        &["-D", "8", "/dev/null"],
        &["-O", "relative.log", "/dev/null"],
        &["--io-timeout", "0", "/dev/null"],
        &["--bogus", "/dev/null"],
        &["/dev/null", "-t"],
    ];
    for args in cases {
        let mut probe = Probe::disk(args);
        assert_eq!(probe.code(), 64, "{args:?}: {}", probe.output());
        assert!(
            probe.out.snapshot().is_empty(),
            "{args:?}: nothing may be logged; {}",
            probe.output()
        );
        assert!(
            probe.err.text().contains("Usage:"),
            "{args:?}: no usage message; {}",
            probe.output()
        );
    }
}
