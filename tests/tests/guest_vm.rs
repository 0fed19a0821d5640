//! cmappmgr on the host, cmappserver in a real guest: a Debian cloud kernel
//! booted by `qemu-system-x86_64 -accel tcg` with an initramfs whose init
//! starts cmappserver (see `cmapp_tests::qemu`). The guest's two LANs are
//! bridges in a network namespace the test creates; cmappmgr runs in that
//! namespace. Each test boots its own guest (5 to 15 s to a daemon that
//! answers under TCG, depending on the machine's load) and tears everything
//! down whatever happens: QEMU is killed by its pid, the namespace is
//! deleted with its bridges and taps.
//!
//! Runs as root (CI does); needs qemu-system-x86, busybox-static, iproute2,
//! and Debian's package registry the first time (the kernel is cached in
//! `target/guest-cache/`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cmapp_tests::keys;
use cmapp_tests::mgr::{monitor_args, pid_in, Mgr};
use cmapp_tests::qemu::{self, Guest, Image, Kernel, Netns, Transport, VsockDevice};
use cmapp_tests::wait_until;
use nix::sys::signal::Signal;
use serde_json::json;

/// Bound on a guest's boot, from QEMU's start to an answer from cmappserver
/// (about 3 s on an idle machine; much more when other tests load the cores).
const BOOT: Duration = Duration::from_secs(90);
/// Bound on any single wait on the guest.
const WAIT: Duration = Duration::from_secs(30);

/// One test's world: key material, the guest's image, the namespace.
struct Lab {
    dir: PathBuf,
    image: Image,
    conf: PathBuf,
    net: Netns,
    _tmp: tempfile::TempDir,
}

fn lab() -> Lab {
    lab_for(Transport::Tcp)
}

fn lab_for(transport: Transport) -> Lab {
    qemu::require_prerequisites();
    let kernel = Kernel::cached(&qemu::cache_dir());
    let tmp = tempfile::Builder::new().prefix("cmapp-gvm-").tempdir().unwrap();
    // Absolute: QEMU's -daemonize changes its directory to /.
    let dir = tmp.path().canonicalize().unwrap();
    let keys = keys::pinned(&dir, "");
    let image = Image::build_for(&kernel, &keys, &dir.join("image"), transport);
    let conf = keys::manager_conf(&dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    let net = Netns::create();
    Lab {
        dir,
        image,
        conf,
        net,
        _tmp: tmp,
    }
}

impl Lab {
    /// Boots a guest and waits until its cmappserver answers.
    fn boot(&mut self, name: &str) -> Guest {
        let g = Guest::boot(&mut self.net, &self.image, &self.dir, name);
        let t = g.wait_ready(&self.net, &self.conf, BOOT);
        eprintln!(
            "guest {name}: cmappserver answered {:.1} s after QEMU started",
            t.as_secs_f64()
        );
        g
    }

    /// Boots a vsock-only guest (see [`Transport::Vsock`]) with its vsock
    /// device, and waits until its cmappserver answers through the device's
    /// socket. Returns the guest, and the device (`-node` is `device.node(PORT)`).
    fn boot_vsock(&mut self, name: &str) -> (Guest, VsockDevice) {
        let device = VsockDevice::start(&self.dir, name, 3);
        let g = Guest::boot_vsock(&mut self.net, &self.image, &self.dir, name, &device);
        let t = g.wait_ready_at(None, &self.conf, &device.node(qemu::PORT), BOOT);
        eprintln!(
            "guest {name}: cmappserver answered over vsock {:.1} s after QEMU started",
            t.as_secs_f64()
        );
        (g, device)
    }

    /// `cmappmgr -node NODE ...` in the test's own namespace (vsock needs no network).
    fn mgr_at(&self, node: &str, timeout: f64, run: &[&str]) -> Mgr {
        Mgr::spawn_in(None, &monitor_args(&self.conf, node, timeout, &[], run))
    }

    /// `cmappmgr -node GUEST -cmappserver_timeout T -service RUN...` in the namespace.
    fn mgr(&self, timeout: f64, run: &[&str]) -> Mgr {
        self.mgr_with(timeout, &[], run)
    }

    /// The same with extra options before `-service`.
    fn mgr_with(&self, timeout: f64, extra: &[&str], run: &[&str]) -> Mgr {
        Mgr::spawn_in(
            Some(&self.net.name),
            &monitor_args(&self.conf, &qemu::node(), timeout, extra, run),
        )
    }

    /// A short-lived command run in the guest through cmappmgr; its exit code.
    fn run_in_guest(&self, run: &[&str]) -> i32 {
        let mut m = self.mgr(20.0, run);
        let code = m.code_within(WAIT);
        assert!(m.err.contains("PROGRAM EXIT CODE"), "{run:?}: {}", m.err.text());
        code
    }
}

/// The pid in cmappmgr's "started SERVICE (pid N) on NODE" line.
fn started_pid(m: &Mgr) -> u32 {
    pid_in(&m.expect_line("started ", WAIT))
}

/// Scenarios 1 and 2: a command runs in the guest (its output says so) and
/// cmappmgr exits with its exit code; a process killed inside the guest is
/// reported with its signal.
#[test]
fn guest_applications_report_exit_codes_and_signals() {
    let mut lab = lab();
    let guest = lab.boot("a");
    // Its configuration asks for vsock:5315 too, but this guest has no vsock
    // driver: that listener is refused with a message, TCP serves.
    let console = guest.console_text();
    assert!(
        console.contains(&format!("cannot listen on vsock:{}", qemu::PORT))
            && console.contains("this kernel has no virtio-vsock support"),
        "{console}"
    );

    let mut m = lab.mgr(
        10.0,
        &["/bin/sh", "-c", "echo \"in $(uname -r) on $(hostname)\"; exit 7"],
    );
    assert_eq!(m.code_within(WAIT), 7, "{}", m.err.text());
    let here = format!("in {} on cmapp-guest", lab.image.kernel.version);
    assert!(
        m.out.contains(&here),
        "the output does not show the guest ({here}):\n{}",
        m.out.text()
    );
    assert!(m.err.contains("PROGRAM EXIT CODE 7"), "{}", m.err.text());
    assert!(m.err.contains(&format!("on {}", qemu::node())), "{}", m.err.text());

    // Killed from inside the guest by another cmappmgr's command.
    // Forwarded: the test reads the pid the running application prints.
    let mut victim = lab.mgr_with(
        10.0,
        &["-forward_output"],
        &["/bin/sh", "-c", "echo \"app-pid=$$\"; exec sleep 1000"],
    );
    let pid = started_pid(&victim);
    let echoed = victim
        .out
        .wait_for("app-pid=", WAIT)
        .unwrap_or_else(|| panic!("{}", victim.err.text()));
    assert_eq!(
        echoed.trim(),
        format!("app-pid={pid}"),
        "the pid cmappmgr reports is the application's own"
    );
    assert_eq!(lab.run_in_guest(&["/bin/kill", "-9", &pid.to_string()]), 0);
    assert_eq!(victim.code_within(WAIT), 128 + 9, "{}", victim.err.text());
    assert!(
        victim.err.contains("killed by signal 9 (SIGKILL)"),
        "{}",
        victim.err.text()
    );
    assert!(victim.err.contains("PROGRAM EXIT CODE 137"), "{}", victim.err.text());

    // The application killing itself is the same report.
    let mut m = lab.mgr(10.0, &["/bin/sh", "-c", "kill -TERM $$"]);
    assert_eq!(m.code_within(WAIT), 128 + 15, "{}", m.err.text());
    assert!(m.err.contains("killed by signal 15 (SIGTERM)"), "{}", m.err.text());
}

/// Scenario 3: the LAN probe watches the guest's second LAN; taking the
/// host side of that link down makes it fail with its exit code 1 and its
/// message, while cmappmgr's own connection (the first LAN) stays up.
#[test]
fn the_lan_probe_fails_when_the_host_side_of_its_lan_goes_down() {
    let mut lab = lab();
    let guest = lab.boot("a");
    let mut probe = lab.mgr(
        10.0,
        &[
            "/opt/hp/cmappserver/cmapp_net_mon.pl",
            "--lan",
            qemu::PROBED_LAN,
            "--ip",
            qemu::PROBED_HOST_ADDR,
            "--polling_interval",
            "0.5",
            "--probe_count",
            "3",
            "--log_level",
            "2",
        ],
    );
    probe.expect_line(&format!("watching {}", qemu::PROBED_LAN), WAIT);
    // Healthy first: two replies through the LAN.
    assert!(
        probe
            .out
            .wait_for_nth(&format!("reply from {}", qemu::PROBED_HOST_ADDR), 2, WAIT)
            .is_some(),
        "the probe saw no replies on a healthy LAN:\n{}\n{}",
        probe.out.text(),
        probe.err.text()
    );
    assert!(probe.running(), "{}", probe.err.text());

    lab.net.ip(&["link", "set", &guest.taps[1], "down"]);
    let down = Instant::now();
    assert_eq!(probe.code_within(WAIT), 1, "{}\n{}", probe.out.text(), probe.err.text());
    let took = down.elapsed();
    let failure = format!(
        "3 consecutive pings from {} to {} got no reply",
        qemu::PROBED_LAN,
        qemu::PROBED_HOST_ADDR
    );
    assert!(probe.out.contains(&failure), "no {failure:?} in:\n{}", probe.out.text());
    assert!(probe.err.contains("PROGRAM EXIT CODE 1"), "{}", probe.err.text());
    assert!(
        !probe.err.contains("lost"),
        "the management LAN must not be affected:\n{}",
        probe.err.text()
    );
    // Three missed pings of 0.5 s each, then the report over the other LAN.
    assert!(took >= Duration::from_millis(1000), "failed after only {took:?}");
    assert!(took <= Duration::from_secs(8), "failed only after {took:?}");
    eprintln!(
        "LAN probe: exit 1 reported {:.2} s after the link went down",
        took.as_secs_f64()
    );
}

/// Scenario 4: the guest is powered off under a running cmappmgr, which
/// exits 1 ("Lost the node") when cmappserver has been unreachable for its
/// timeout.
#[test]
fn a_powered_off_guest_makes_cmappmgr_exit_1_at_its_timeout() {
    const TIMEOUT: f64 = 6.0;
    let mut lab = lab();
    let guest = lab.boot("a");
    let mut m = lab.mgr(TIMEOUT, &["/bin/sleep", "1000"]);
    started_pid(&m);

    power_off_ends_the_manager_at_its_timeout(&guest, &mut m, TIMEOUT);
}

/// Powers the guest off (QMP `quit`) under `m`, a cmappmgr with
/// `cmappserver_timeout` `timeout` watching a process there, and checks that
/// it exits 1 ("Lost the node") about `timeout` later.
fn power_off_ends_the_manager_at_its_timeout(guest: &Guest, m: &mut Mgr, timeout: f64) {
    let mut qmp = guest.qmp();
    // The clock starts when the quit is sent: under load QEMU's monitor may
    // answer seconds later, after cmappmgr's own clock started.
    let off = Instant::now();
    qmp.execute("quit", json!({})).expect("QMP quit");
    assert!(wait_until(WAIT, || !guest.running()), "QEMU did not quit");
    assert_eq!(
        m.code_within(Duration::from_secs_f64(timeout) + WAIT),
        1,
        "{}",
        m.err.text()
    );
    let took = off.elapsed().as_secs_f64();
    assert!(m.err.contains("Lost the node"), "{}", m.err.text());
    // The original's line after a lost node, as the troubleshooting section shows.
    assert!(m.err.contains("PROGRAM EXIT CODE 1"), "{}", m.err.text());
    // The clock starts at the last message heard, at most one ping interval
    // (timeout / 4) before the power-off.
    let earliest = timeout - timeout / 4.0 - 0.5;
    assert!(
        (earliest..=timeout + 3.0).contains(&took),
        "cmappmgr exited {took:.2} s after the power-off; expected about {timeout} s:\n{}",
        m.err.text()
    );
    eprintln!("power-off: cmappmgr exited 1 after {took:.2} s (cmappserver_timeout {timeout} s)");
}

/// One `cmappmgr check` made while the guest migrates.
#[derive(Debug, Clone, Copy)]
struct Check {
    start: Instant,
    end: Instant,
    ok: bool,
}

/// Sets its flag when dropped (also while a panic unwinds).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Live migration: while cmappmgr monitors two applications in the guest,
/// the guest moves to a second QEMU; neither application restarts (same
/// pids), neither cmappmgr exits or even loses its connection, and an
/// application that exits afterwards is reported with its real exit code.
#[test]
fn monitoring_survives_a_live_migration_of_the_guest() {
    let mut lab = lab();
    let mut source = lab.boot("a");
    let mut first = lab.mgr(
        30.0,
        &[
            "/bin/sh",
            "-c",
            "echo first $$; while [ ! -e /tmp/finish ]; do sleep 0.2; done; echo finishing; exit 42",
        ],
    );
    let mut second = lab.mgr_with(
        30.0,
        &["-stop_on_halt"],
        &["/bin/sh", "-c", "echo second $$; exec sleep 100000"],
    );
    let pids = (started_pid(&first), started_pid(&second));
    let before = qemu::status(&lab.net, &lab.conf);
    let listed = |list: &[qemu::Listed], word: &str| {
        list.iter()
            .find(|p| p.service.contains(word))
            .cloned()
            .unwrap_or_else(|| panic!("no {word} process in {list:?}"))
    };
    assert_eq!(listed(&before, "first").pid, pids.0);
    assert_eq!(listed(&before, "second").pid, pids.1);

    let socket = lab.dir.join("migrate.sock");
    let destination = source.incoming(&mut lab.net, &lab.dir, "b", &socket);
    let mut qmp = source.qmp();
    qmp.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    )
    .expect("enable migration events");
    // QEMU's default 32 MiB/s cap is for real networks; this one is local.
    qmp.execute("migrate-set-parameters", json!({"max-bandwidth": 4u64 << 30}))
        .expect("raise the migration bandwidth");

    // Meanwhile, a cmappmgr check after another: when did the guest answer?
    let checks = Mutex::new(Vec::<Check>::new());
    let done = AtomicBool::new(false);
    let completed_at = Mutex::new(None::<Instant>);
    let (t_migrate, t_completed, info) = std::thread::scope(|s| {
        // However this block ends, the checking thread stops.
        let _stop = StopOnDrop(&done);
        let checker = s.spawn(|| {
            let node = qemu::node();
            let conf = lab.conf.to_str().unwrap();
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end {
                let start = Instant::now();
                let (code, _) = Mgr::run_in(
                    Some(&lab.net.name),
                    &["check", "--node", &node, "--conf", conf, "--timeout", "10"],
                    Duration::from_secs(20),
                );
                let c = Check {
                    start,
                    end: Instant::now(),
                    ok: code == 0,
                };
                let mut all = checks.lock().unwrap();
                all.push(c);
                // Stop after two successes begun once the migration completed.
                let completed = *completed_at.lock().unwrap();
                let after = completed.map_or(0, |t| all.iter().filter(|c| c.ok && c.start >= t).count());
                if after >= 2 || done.load(Ordering::SeqCst) {
                    break;
                }
            }
        });
        // Two checks before, for the usual round trip.
        assert!(
            wait_until(WAIT, || checks.lock().unwrap().iter().filter(|c| c.ok).count() >= 2),
            "cmappmgr check failed before the migration: {:?}",
            checks.lock().unwrap()
        );
        let t_migrate = Instant::now();
        qmp.execute("migrate", json!({"uri": format!("unix:{}", socket.display())}))
            .expect("QMP migrate");
        let ev = qmp.wait_event("MIGRATION", Duration::from_secs(60), |d| {
            matches!(d["status"].as_str(), Some("completed" | "failed" | "cancelled"))
        });
        let t_completed = Instant::now();
        *completed_at.lock().unwrap() = Some(t_completed);
        let ev = ev.unwrap_or_else(|| {
            panic!(
                "the migration did not end within 60 s: {:?}",
                qmp.execute("query-migrate", json!({}))
            )
        });
        if ev["data"]["status"] != "completed" {
            panic!(
                "the migration ended {}: {:?}",
                ev["data"]["status"],
                qmp.execute("query-migrate", json!({}))
            );
        }
        // The final figures (downtime) can lag the event by a moment.
        let mut info = json!({});
        wait_until(Duration::from_secs(5), || {
            info = qmp.execute("query-migrate", json!({})).expect("query-migrate");
            info["total-time"].as_u64().is_some_and(|t| t > 0)
        });
        checker.join().expect("the checking thread");
        (t_migrate, t_completed, info)
    });
    // The source may already be gone once the guest runs on the destination
    // (seen once in CI: its QMP socket closed before the quit); either way it
    // must not be running any more.
    let quit = qmp.execute("quit", json!({}));
    if let Err(e) = &quit {
        // Not a failure; said for whoever wonders why it had gone.
        eprintln!(
            "the source QEMU did not take the quit ({e}); its stderr:\n{}",
            source.stderr_text()
        );
    }
    assert!(
        wait_until(WAIT, || !source.running()),
        "the source QEMU did not quit ({quit:?})"
    );
    source.kill();
    let dest_status = destination
        .qmp()
        .execute("query-status", json!({}))
        .expect("query-status");
    assert_eq!(dest_status["status"], "running", "{dest_status}");

    // The monitoring gap, as a manager sees it: how long a check takes
    // usually, how long the one in flight at the switchover took, and when
    // the first check begun after the migration was answered.
    let checks = checks.into_inner().unwrap();
    let ok: Vec<&Check> = checks.iter().filter(|c| c.ok).collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let took = |c: &Check| ms(c.end - c.start);
    let first_after = ok
        .iter()
        .find(|c| c.start >= t_completed)
        .unwrap_or_else(|| panic!("no cmappmgr check succeeded after the migration: {checks:?}"));
    // Each check as start+duration, in ms from the migrate command.
    let timeline: Vec<String> = checks
        .iter()
        .map(|c| {
            let at = c
                .start
                .checked_duration_since(t_migrate)
                .map_or_else(|| -ms(t_migrate - c.start), ms);
            format!("{at:+.0}{}{:.0}", if c.ok { "+" } else { "+FAILED:" }, took(c))
        })
        .collect();
    let mut longest_gap = Duration::ZERO;
    for w in ok.windows(2) {
        longest_gap = longest_gap.max(w[1].end.duration_since(w[0].end));
    }
    eprintln!(
        "migration: QMP migrate → completed event {:.0} ms (QEMU: total {} ms, downtime {} ms, setup {} ms); \
         cmappmgr checks (start+duration, ms from the migrate command): {}; \
         migrate → answer to the first check begun after completion {:.0} ms (completion → that answer {:.0} ms); \
         {} checks, {} failed; longest interval between successful checks {:.0} ms",
        ms(t_completed - t_migrate),
        info["total-time"],
        info["downtime"],
        info["setup-time"],
        timeline.join(" "),
        ms(first_after.end - t_migrate),
        ms(first_after.end - t_completed),
        checks.len(),
        checks.len() - ok.len(),
        ms(longest_gap),
    );
    assert!(
        checks.len() == ok.len(),
        "a cmappmgr check failed during the migration: {checks:?}"
    );

    // Nothing restarted, nothing was lost, nobody exited.
    let after = qemu::status(&lab.net, &lab.conf);
    for (word, pid) in [("first", pids.0), ("second", pids.1)] {
        let p = listed(&after, word);
        assert_eq!(p.pid, pid, "{word} application restarted: {after:?}");
        assert!(p.running, "{word} application is not running: {after:?}");
    }
    for (m, word) in [(&mut first, "first"), (&mut second, "second")] {
        assert!(
            m.running(),
            "cmappmgr for the {word} application exited:\n{}",
            m.err.text()
        );
        assert!(
            !m.err.contains("lost"),
            "cmappmgr lost its connection:\n{}",
            m.err.text()
        );
    }

    // The first application ends after the migration: its own exit code.
    assert_eq!(lab.run_in_guest(&["/bin/touch", "/tmp/finish"]), 0);
    assert_eq!(first.code_within(WAIT), 42, "{}", first.err.text());
    assert!(first.out.contains("finishing"), "{}", first.out.text());
    assert!(first.err.contains("PROGRAM EXIT CODE 42"), "{}", first.err.text());
    assert!(!first.err.contains("re-attached"), "{}", first.err.text());

    // The second is still under control: a halt (with -stop_on_halt) stops it in the guest.
    second.signal(Signal::SIGTERM);
    assert_eq!(second.code_within(WAIT), 0, "{}", second.err.text());
    assert!(second.err.contains("stopped on request"), "{}", second.err.text());
    drop(destination);
}

/// Scenarios 1 and 2 over virtio-vsock alone: the guest has no network (its
/// interfaces down, no address) and its cmappserver listens on vsock only;
/// cmappmgr reaches it through the `vhost-user-vsock-pci` device's socket.
/// An exit code and a signal reach the host, `status` lists the guest's
/// processes. A live migration of this guest is refused by QEMU
/// (vhost-user-vsock is not migratable), and monitoring carries on.
#[test]
fn over_vsock_alone_exit_codes_and_signals_reach_the_host_and_migration_is_refused() {
    let mut lab = lab_for(Transport::Vsock);
    let (guest, device) = lab.boot_vsock("v");
    let node = device.node(qemu::PORT);

    let mut m = lab.mgr_at(
        &node,
        10.0,
        &[
            "/bin/sh",
            "-c",
            "echo \"eth0=$(cat /sys/class/net/eth0/operstate) eth1=$(cat /sys/class/net/eth1/operstate) \
             addresses=$(ip -o addr show | grep -vc ' lo ')\"; exit 7",
        ],
    );
    assert_eq!(m.code_within(WAIT), 7, "{}", m.err.text());
    assert!(
        m.out.contains("eth0=down eth1=down addresses=0"),
        "the guest has a network:\n{}",
        m.out.text()
    );
    assert!(m.err.contains("PROGRAM EXIT CODE 7"), "{}", m.err.text());

    // Killed from inside the guest by another cmappmgr's command.
    let mut victim = lab.mgr_at(&node, 10.0, &["/bin/sleep", "1000"]);
    let pid = started_pid(&victim);
    let listed = qemu::status_at(None, &lab.conf, &node);
    assert!(
        listed.iter().any(|p| p.pid == pid && p.running),
        "status does not list pid {pid}: {listed:?}"
    );
    let mut kill = lab.mgr_at(&node, 10.0, &["/bin/kill", "-9", &pid.to_string()]);
    assert_eq!(kill.code_within(WAIT), 0, "{}", kill.err.text());
    assert_eq!(victim.code_within(WAIT), 128 + 9, "{}", victim.err.text());
    assert!(
        victim.err.contains("killed by signal 9 (SIGKILL)"),
        "{}",
        victim.err.text()
    );

    // Live migration: QEMU refuses it for this device model.
    let mut watched = lab.mgr_at(&node, 10.0, &["/bin/sleep", "1000"]);
    let pid = started_pid(&watched);
    let mut qmp = guest.qmp();
    let refused = qmp
        .execute(
            "migrate",
            json!({"uri": format!("unix:{}", lab.dir.join("m.sock").display())}),
        )
        .expect_err("QEMU migrated a guest with a vhost-user-vsock device");
    assert!(
        refused.contains("non-migratable device") && refused.contains("vhost-user-vsock"),
        "{refused}"
    );
    let blocked = qmp.execute("query-migrate", json!({})).expect("query-migrate");
    eprintln!("live migration over vhost-user-vsock: refused: {refused}; {blocked}");
    // Monitoring carries on: the process ends, the host hears it.
    let mut kill = lab.mgr_at(&node, 10.0, &["/bin/kill", "-TERM", &pid.to_string()]);
    assert_eq!(kill.code_within(WAIT), 0, "{}", kill.err.text());
    assert_eq!(watched.code_within(WAIT), 128 + 15, "{}", watched.err.text());
}

/// Scenario 4 over vsock: the guest is powered off under a cmappmgr that
/// reaches it through its vsock device; cmappmgr exits 1 at its timeout.
#[test]
fn over_vsock_a_powered_off_guest_makes_cmappmgr_exit_1_at_its_timeout() {
    const TIMEOUT: f64 = 6.0;
    let mut lab = lab_for(Transport::Vsock);
    let (guest, device) = lab.boot_vsock("v");
    let mut m = lab.mgr_at(&device.node(qemu::PORT), TIMEOUT, &["/bin/sleep", "1000"]);
    started_pid(&m);
    power_off_ends_the_manager_at_its_timeout(&guest, &mut m, TIMEOUT);
}
