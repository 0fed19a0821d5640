//! The VM lifecycle hooks (`cmappmgr vm ...`) against a real libvirtd with
//! the QEMU driver, started by the test itself in private namespaces (see
//! `cmapp_tests::libvirt`). One test function drives every libvirt scenario
//! in sequence, so one daemon serves them all; the command-line and
//! maintenance-file checks need no daemon and run on their own.
//!
//! Needs root, and the packages and user in `cmapp_tests::libvirt::SETUP`;
//! builds `cmappmgr` first (`cargo build -p appmgr`). The graceful-stop
//! scenario boots the Debian cloud kernel of the QEMU guest tests, fetched
//! once into `target/guest-cache/` (`cmapp_tests::qemu::Kernel::cached`;
//! needs Debian's package registry the first time).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cmapp_tests::libvirt::{self, GuestImage, Libvirtd, VmRun, GUEST_READY};
use cmapp_tests::qemu::{self, Kernel};
use cmapp_tests::{alive, wait_until, WAIT};
use nix::sys::signal::Signal;

/// Bound on a one-shot `cmappmgr vm` command.
const CMD: Duration = Duration::from_secs(60);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vm")
}

fn target_tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Runs `cmappmgr vm ARGS` to completion; returns the exit code and the run.
fn vm(args: &[&str]) -> (i32, VmRun) {
    VmRun::run(args, CMD)
}

/// Like [`vm`], asserting the exit code.
fn vm_expect(code: i32, args: &[&str]) -> VmRun {
    let (c, r) = vm(args);
    assert_eq!(
        c,
        code,
        "cmappmgr vm {args:?} exited {c}, expected {code}; stderr:\n{}",
        r.err.text()
    );
    r
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    for args in [
        &[][..],
        &["start"][..],
        &["frobnicate", "vm1"][..],
        &["monitor", "vm1", "--interval", "0"][..],
        &["stop", "vm1", "--timeout", "soon"][..],
        &["maintenance", "maybe", "vm1"][..],
        &["maintenance", "on", "vm1", "--maintenance-flag", "perhaps"][..],
    ] {
        let r = vm_expect(64, args);
        assert!(!r.err.text().is_empty(), "no usage message for {args:?}");
    }
    let r = vm_expect(0, &["--help"]);
    assert!(
        r.out
            .text()
            .contains("Exit codes: 0 success, 1 failure, 64 usage error"),
        "{}",
        r.out.text()
    );
    let r = vm_expect(0, &["monitor", "--help"]);
    assert!(r.out.text().contains("--interval"), "{}", r.out.text());
}

#[test]
fn maintenance_mode_is_a_file_in_tkit_dir_refused_without_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let tkit = tmp.path().join("pkg");
    std::fs::create_dir(&tkit).unwrap();
    let t = tkit.to_str().unwrap();
    let file = tkit.join("maintenance");

    let r = vm_expect(0, &["maintenance", "on", "vm1", "--tkit-dir", t]);
    assert!(file.exists());
    assert!(
        r.err.contains("Maintenance mode is enabled for the package vm1"),
        "{}",
        r.err.text()
    );
    let r = vm_expect(0, &["maintenance", "status", "vm1", "--tkit-dir", t]);
    assert_eq!(r.out.text().trim(), "on");
    vm_expect(0, &["maintenance", "on", "vm1", "--tkit-dir", t]);
    vm_expect(0, &["maintenance", "off", "vm1", "--tkit-dir", t]);
    assert!(!file.exists());
    let r = vm_expect(0, &["maintenance", "status", "vm1", "--tkit-dir", t]);
    assert_eq!(r.out.text().trim(), "off");
    vm_expect(0, &["maintenance", "off", "vm1", "--tkit-dir", t]);

    // MAINTENANCE_FLAG no: refused, with a clear message, and no file.
    let r = vm_expect(
        1,
        &["maintenance", "on", "vm1", "--tkit-dir", t, "--maintenance-flag", "no"],
    );
    assert!(
        r.err
            .contains("maintenance mode is not allowed for the package vm1 (MAINTENANCE_FLAG is no)"),
        "{}",
        r.err.text()
    );
    assert!(!file.exists());

    // The same from a package configuration file, as cmmakepkg writes it.
    let conf = tmp.path().join("vm1.conf");
    std::fs::write(
        &conf,
        format!("package_name vm1\ntkit/vtn/vtn/TKIT_DIR {t}\ntkit/vtn/vtn/MAINTENANCE_FLAG no\n"),
    )
    .unwrap();
    let c = conf.to_str().unwrap();
    let r = vm_expect(1, &["maintenance", "on", "vm1", "--package-conf", c]);
    assert!(r.err.contains("MAINTENANCE_FLAG is no"), "{}", r.err.text());
    assert!(!file.exists());
    // The command line wins over the file.
    vm_expect(
        0,
        &[
            "maintenance",
            "on",
            "vm1",
            "--package-conf",
            c,
            "--maintenance-flag",
            "yes",
        ],
    );
    assert!(file.exists());
    vm_expect(0, &["maintenance", "off", "vm1", "--package-conf", c]);
    assert!(!file.exists());

    // A TKIT_DIR that does not exist is an error, not a silent no-op.
    let missing = tmp.path().join("nope");
    let r = vm_expect(
        1,
        &["maintenance", "on", "vm1", "--tkit-dir", missing.to_str().unwrap()],
    );
    assert!(r.err.contains("is not a directory"), "{}", r.err.text());
}

/// One libvirt scenario.
type Step = fn(&Ctx);

/// Everything one libvirt scenario needs.
struct Ctx {
    lv: Libvirtd,
    /// A disk-less domain with no OS: runs until destroyed, ignores ACPI.
    a: String,
    tkit: PathBuf,
}

impl Ctx {
    fn uri(&self) -> &str {
        self.lv.uri()
    }

    fn tkit(&self) -> &str {
        self.tkit.to_str().unwrap()
    }

    /// `cmappmgr vm COMMAND ... --connect URI`, run to completion.
    fn vm(&self, code: i32, args: &[&str]) -> VmRun {
        let mut all = args.to_vec();
        all.extend(["--connect", self.uri()]);
        vm_env(code, &all, &[("CMAPPMGR_RUN_DIR", &self.run_dir())])
    }

    /// A `cmappmgr vm monitor GUEST ARGS --connect URI --tkit-dir T` run.
    fn monitor(&self, guest: &str, args: &[&str]) -> VmRun {
        let mut all = vec!["monitor", guest, "--connect", self.uri(), "--tkit-dir", self.tkit()];
        all.extend(args);
        VmRun::spawn_env(&all, &[("CMAPPMGR_RUN_DIR", &self.run_dir())])
    }

    /// Where the monitors record where they look (not the machine's /run).
    fn run_dir(&self) -> String {
        self.lv.dir().join("run").to_string_lossy().into_owned()
    }

    fn ensure_running(&self, guest: &str) {
        if self.lv.state(guest) != "running" {
            self.lv.virsh(&["start", guest]);
        }
        self.lv.wait_state(guest, "running", WAIT);
    }
}

#[test]
fn lifecycle_against_a_real_libvirtd() {
    let t0 = Instant::now();
    let lv = Libvirtd::start(&target_tmp().join("libvirt-cache"));
    let a = lv.name("a");
    lv.define(&a, &libvirt::domain_without_os(&a));
    let tkit = lv.dir().join("tkit");
    std::fs::create_dir(&tkit).unwrap();
    let cx = Ctx { lv, a, tkit };

    // The guest with an OS boots in the background while the others run.
    let b = boot_guest_with_acpi(&cx);

    let steps: [(&str, Step); 9] = [
        ("validate", validate),
        ("start", start),
        ("monitor sees a destroyed guest at once through events", monitor_events),
        ("monitor polls without events", monitor_polling),
        ("monitor stops on SIGTERM and reaps its virsh child", monitor_sigterm),
        ("monitor checks the guest's cmappserver", monitor_check_node),
        ("maintenance mode suspends monitoring", maintenance),
        ("stop forces a guest that ignores ACPI", stop_forced),
        ("Serviceguard module script and deploy", serviceguard_module),
    ];
    for (what, step) in steps {
        let t = Instant::now();
        step(&cx);
        eprintln!("ok: {what} ({:.1} s)", t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    stop_graceful(&cx, &b);
    eprintln!(
        "ok: stop shuts a guest down gracefully ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    eprintln!("all libvirt scenarios: {:.1} s", t0.elapsed().as_secs_f64());
}

fn validate(cx: &Ctx) {
    let r = cx.vm(0, &["validate", &cx.a]);
    assert!(
        r.err.contains(&format!("guest {} is defined on this host", cx.a)),
        "{}",
        r.err.text()
    );

    let missing = cx.lv.name("missing");
    let r = cx.vm(1, &["validate", &missing]);
    let err = r.err.text();
    assert!(
        err.contains(&format!("guest {missing} is not defined on this host")),
        "{err}"
    );
    // The failing command, verbatim, with virsh's own message.
    assert!(
        err.contains(&format!(
            "virsh --connect {} dominfo {missing} failed: error:",
            quote(cx.uri())
        )),
        "{err}"
    );

    // A disk image that is not there.
    let d = cx.lv.name("nodisk");
    let image = cx.lv.dir().join("absent.img");
    cx.lv.define(&d, &libvirt::domain_with_disk(&d, &image));
    let r = cx.vm(1, &["validate", &d]);
    assert!(
        r.err.contains(&format!(
            "guest {d} refers to files missing on this host: {}",
            image.display()
        )),
        "{}",
        r.err.text()
    );
    cx.vm(0, &["validate", &d, "--no-check-files"]);
    cx.lv.virsh(&["undefine", &d]);

    // A daemon that is not there: virsh's connection error, verbatim.
    let bad = format!("qemu:///system?socket={}/none", cx.lv.dir().display());
    let (code, r) = vm(&["validate", &cx.a, "--connect", &bad]);
    assert_eq!(code, 1, "{}", r.err.text());
    assert!(r.err.contains("failed to connect"), "{}", r.err.text());
}

/// The URI as cmappmgr prints it in a command line.
fn quote(uri: &str) -> String {
    if uri.contains('?') {
        format!("'{uri}'")
    } else {
        uri.to_string()
    }
}

fn start(cx: &Ctx) {
    assert_eq!(cx.lv.state(&cx.a), "shut off");
    let r = cx.vm(0, &["start", &cx.a, "--timeout", "30"]);
    assert!(r.err.contains(&format!("starting guest {}", cx.a)), "{}", r.err.text());
    assert_eq!(cx.lv.state(&cx.a), "running");

    let r = cx.vm(0, &["start", &cx.a]);
    assert!(
        r.err.contains(&format!("guest {} is already running", cx.a)),
        "{}",
        r.err.text()
    );

    // Waiting for the guest's cmappserver: nothing answers here, so start
    // fails, within its bound, saying so.
    let t = Instant::now();
    let conf = cx.lv.dir().join("no-cmappmgr.conf");
    let r = cx.vm(
        1,
        &[
            "start",
            &cx.a,
            "--check-node",
            "127.0.0.1:1",
            "--check-timeout",
            "2",
            "--conf",
            conf.to_str().unwrap(),
        ],
    );
    assert!(
        r.err.contains("cmappserver at 127.0.0.1:1 did not answer"),
        "{}",
        r.err.text()
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());

    let missing = cx.lv.name("missing");
    let r = cx.vm(1, &["start", &missing]);
    assert!(
        r.err.contains(&format!("guest {missing} is not defined on this host")),
        "{}",
        r.err.text()
    );
}

/// Makes sure the monitor's `virsh event` subscription is live: re-defines
/// the domain (a "Defined Updated" lifecycle event) until the monitor logs
/// an event. `virsh event` says nothing when it has registered.
fn events_live(cx: &Ctx, m: &VmRun, guest: &str) {
    m.expect_line("subscribed to lifecycle events", WAIT);
    // The definition with its UUID: the same domain, defined again.
    let xml = cx.lv.dir().join(format!("{guest}.defined.xml"));
    std::fs::write(&xml, cx.lv.virsh(&["dumpxml", "--inactive", guest])).unwrap();
    // Re-define until the first event shows the subscription is live (events
    // of earlier defines may still be on their way: any one will do).
    for _ in 1..=20 {
        cx.lv.virsh(&["define", xml.to_str().unwrap()]);
        if m.err.wait_for("libvirt event:", Duration::from_millis(500)).is_some() {
            return;
        }
    }
    panic!("the monitor saw no lifecycle event; stderr:\n{}", m.err.text());
}

fn monitor_events(cx: &Ctx) {
    cx.ensure_running(&cx.a);
    // A 30 s interval: only an event can make it exit within 10 s.
    let mut m = cx.monitor(&cx.a, &["--interval", "30"]);
    events_live(cx, &m, &cx.a);
    let children = m.children();
    assert!(!children.is_empty(), "no virsh event child");
    let t = Instant::now();
    cx.lv.virsh(&["destroy", &cx.a]);
    let code = m.code_within(Duration::from_secs(10));
    let took = t.elapsed();
    assert_eq!(code, 1, "{}", m.err.text());
    assert!(took < Duration::from_secs(10), "{took:?}");
    let err = m.err.text();
    assert!(
        err.contains(&format!(
            "Service monitor detected a failure in guest {0}: guest {0} is no longer running (state: shut off)",
            cx.a
        )),
        "{err}"
    );
    for pid in children {
        assert!(
            wait_until(WAIT, || !alive(pid)),
            "virsh event child {pid} outlived the monitor"
        );
    }
    eprintln!("monitor exited {:.2} s after the destroy", took.as_secs_f64());
}

fn monitor_polling(cx: &Ctx) {
    // A guest that is not running: the monitor fails at once.
    assert_eq!(cx.lv.state(&cx.a), "shut off");
    let mut m = cx.monitor(&cx.a, &["--interval", "30"]);
    assert_eq!(m.code_within(WAIT), 1);
    assert!(
        m.err.contains("is no longer running (state: shut off)"),
        "{}",
        m.err.text()
    );

    cx.ensure_running(&cx.a);
    let mut m = cx.monitor(&cx.a, &["--interval", "0.3", "--no-events"]);
    m.expect_nth_line(&format!("guest {} is running", cx.a), 2, WAIT);
    cx.lv.virsh(&["destroy", &cx.a]);
    assert_eq!(m.code_within(Duration::from_secs(10)), 1, "{}", m.err.text());
    assert!(
        m.err.contains("is no longer running (state: shut off)"),
        "{}",
        m.err.text()
    );
    assert!(!m.err.contains("libvirt event:"), "{}", m.err.text());
}

fn monitor_sigterm(cx: &Ctx) {
    cx.ensure_running(&cx.a);
    let mut m = cx.monitor(&cx.a, &["--interval", "30"]);
    m.expect_line("subscribed to lifecycle events", WAIT);
    m.expect_line(&format!("guest {} is running", cx.a), WAIT);
    let children = m.children();
    assert!(!children.is_empty(), "no virsh event child");
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code_within(Duration::from_secs(10)), 0, "{}", m.err.text());
    assert!(m.err.contains("received SIGTERM"), "{}", m.err.text());
    for pid in children {
        assert!(
            wait_until(WAIT, || !alive(pid)),
            "virsh event child {pid} outlived the monitor"
        );
    }
    assert_eq!(cx.lv.state(&cx.a), "running", "the monitor must not touch the guest");
}

fn monitor_check_node(cx: &Ctx) {
    cx.ensure_running(&cx.a);
    let conf = cx.lv.dir().join("no-cmappmgr.conf");
    let t = Instant::now();
    let mut m = cx.monitor(
        &cx.a,
        &[
            "--interval",
            "0.5",
            "--check-node",
            "127.0.0.1:1",
            "--check-timeout",
            "1",
            "--conf",
            conf.to_str().unwrap(),
        ],
    );
    assert_eq!(m.code_within(Duration::from_secs(20)), 1, "{}", m.err.text());
    assert!(
        m.err
            .contains("its cmappserver at 127.0.0.1:1 did not answer within 1 s"),
        "{}",
        m.err.text()
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

fn maintenance(cx: &Ctx) {
    cx.ensure_running(&cx.a);
    let a = cx.a.as_str();
    cx.vm(0, &["maintenance", "on", a, "--tkit-dir", cx.tkit()]);
    let mut m = cx.monitor(a, &["--interval", "0.5"]);
    m.expect_line("Maintenance mode is enabled for the package", WAIT);
    m.expect_line(&format!("guest {a} is running (maintenance mode: not checked)"), WAIT);

    cx.lv.virsh(&["destroy", a]);
    m.expect_line(&format!("guest {a} is shut off (maintenance mode: not checked)"), WAIT);
    // Two more poll intervals with the guest gone, and the monitor is still there.
    let cycle = format!("maintenance mode: guest {a} is shut off; not checked (interval)");
    let seen = m.err.snapshot().iter().filter(|l| l.contains(&cycle)).count();
    m.expect_nth_line(&cycle, seen + 2, WAIT);
    assert!(m.running(), "the monitor failed in maintenance mode:\n{}", m.err.text());

    // Refused while the package does not allow it.
    let r = cx.vm(
        1,
        &[
            "maintenance",
            "on",
            a,
            "--tkit-dir",
            cx.tkit(),
            "--maintenance-flag",
            "no",
        ],
    );
    assert!(r.err.contains("MAINTENANCE_FLAG is no"), "{}", r.err.text());

    // Maintenance off: monitoring resumes, and the guest is down.
    cx.vm(0, &["maintenance", "off", a, "--tkit-dir", cx.tkit()]);
    assert_eq!(m.code_within(Duration::from_secs(10)), 1, "{}", m.err.text());
    let err = m.err.text();
    assert!(
        err.contains(&format!("Maintenance mode is disabled for the package {a}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("guest {a} is no longer running (state: shut off)")),
        "{err}"
    );
}

fn stop_forced(cx: &Ctx) {
    cx.ensure_running(&cx.a);
    let a = cx.a.as_str();
    let t = Instant::now();
    let r = cx.vm(0, &["stop", a, "--timeout", "2"]);
    let err = r.err.text();
    assert!(
        err.contains(&format!("guest {a} did not shut down within 2 s; forcing it off")),
        "{err}"
    );
    assert!(err.contains(&format!("guest {a} was forced off")), "{err}");
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert_eq!(cx.lv.state(a), "shut off");

    let r = cx.vm(0, &["stop", a]);
    assert!(
        r.err.contains(&format!("guest {a} is already stopped")),
        "{}",
        r.err.text()
    );
    let missing = cx.lv.name("missing");
    let r = cx.vm(0, &["stop", &missing]);
    assert!(r.err.contains("nothing to stop"), "{}", r.err.text());
}

/// A guest with an OS that powers off on the ACPI power button.
struct AcpiGuest {
    name: String,
    console: PathBuf,
}

fn boot_guest_with_acpi(cx: &Ctx) -> AcpiGuest {
    let out = cx.lv.dir().join("guest");
    std::fs::create_dir_all(&out).unwrap();
    let kernel = Kernel::cached(&qemu::cache_dir());
    let image = GuestImage::build(&fixtures(), &kernel, &out);
    let name = cx.lv.name("b");
    let console = out.join("console.log");
    cx.lv.define(&name, &libvirt::domain_booting(&name, &image, &console));
    let r = cx.vm(0, &["start", &name]);
    assert!(r.err.contains(&format!("guest {name} is running")), "{}", r.err.text());
    AcpiGuest { name, console }
}

fn stop_graceful(cx: &Ctx, b: &AcpiGuest) {
    let console = || std::fs::read_to_string(&b.console).unwrap_or_default();
    let ready = wait_until(Duration::from_secs(60), || {
        let c = console();
        c.contains(GUEST_READY) || c.contains("CMAPP-GUEST-NO-POWER-BUTTON")
    });
    assert!(
        ready && console().contains(GUEST_READY),
        "the guest did not get ready for the power button; console:\n{}\nQEMU log:\n{}",
        console(),
        cx.lv.qemu_log(&b.name)
    );
    let t = Instant::now();
    let r = cx.vm(0, &["stop", &b.name, "--timeout", "30"]);
    let err = r.err.text();
    assert!(
        err.contains(&format!("guest {} shut down gracefully", b.name)),
        "{err}\nconsole:\n{}",
        console()
    );
    assert!(!err.contains("forc"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(cx.lv.state(&b.name), "shut off");
    assert!(console().contains("CMAPP-GUEST-POWER-BUTTON"), "{}", console());
}

/// The packaging's Serviceguard files.
fn serviceguard_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/serviceguard")
}

/// A package configuration's attributes, in order: `name value` lines,
/// comments and blank lines skipped, one pair of double quotes removed.
fn attributes(conf: &str) -> Vec<(String, String)> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The tkit/vtn/vtn attributes we add beyond the guide's three.
const OUR_TKIT_ATTRS: &[&str] = &[
    "GUEST_NAME",
    "LIBVIRT_URI",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "GUEST_NODE",
    "CMAPPSERVER_TIMEOUT",
];

/// `cmappmgr vm deploy` writes the guide's Appendix A package; the module
/// script's entry points run the guest the way Serviceguard's master control
/// script and the guest-monitor service would call them; `maintenance` finds
/// the file the monitor watches whatever options each was given.
fn serviceguard_module(cx: &Ctx) {
    let a = cx.a.as_str();
    if cx.lv.state(a) != "shut off" {
        cx.lv.virsh(&["destroy", a]);
    }
    let sgconf = cx.lv.dir().join("cmcluster");
    let run_dir = cx.lv.dir().join("run");
    let sg = sgconf.to_str().unwrap();
    let run = run_dir.to_str().unwrap();
    let cmappmgr = cmapp_tests::bin("cmappmgr");
    let cmappmgr = cmappmgr.to_str().unwrap();

    // cmdeployvpkg -P A -x appmon=ping_mon:/apps/ping_mon:10:none:300, for nodes node1 and node2.
    let base = [("SGCONF", sg), ("CMAPPMGR_RUN_DIR", run)];
    let mut r = VmRun::spawn_env(
        &[
            "deploy",
            a,
            "--connect",
            cx.uri(),
            "-n",
            "node1",
            "-n",
            "node2",
            "-x",
            "appmon=ping_mon:/apps/ping_mon:10:none:300",
        ],
        &base,
    );
    assert_eq!(r.code_within(CMD), 0, "{}", r.err.text());
    let conf_path = sgconf.join(a).join(format!("{a}.conf"));
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sgconf.join(a)).unwrap().permissions().mode();
    assert_eq!(mode & 0o022, 0, "package directory writable by group/others: {mode:o}");

    // Appendix A, attribute by attribute and in order, with the guest's name
    // for slvm1 and $SGCONF for /etc/cmcluster. Left out, being site
    // specific: the SLVM dependency (dependency_name/condition/location) and
    // monitored_subnet (written only for a guest bridged to a subnet here).
    let tkit_dir = format!("{sg}/{a}");
    let appmon = format!("/usr/sbin/cmappmgr -node {a} -cmappserver_timeout 10 -service /apps/ping_mon");
    let mut want: Vec<(&str, &str)> = vec![("package_name", a), ("package_description", "Serviceguard Package")];
    for m in [
        "sg/basic",
        "tkit/vtn/vtn",
        "sg/priority",
        "sg/failover",
        "sg/external",
        "sg/service",
        "sg/monitor_subnet",
    ] {
        want.extend([("module_name", m), ("module_version", "1")]);
    }
    want.extend([
        ("package_type", "failover"),
        ("node_name", "node1"),
        ("node_name", "node2"),
        ("auto_run", "yes"),
        ("node_fail_fast_enabled", "no"),
        ("run_script_timeout", "no_timeout"),
        ("halt_script_timeout", "no_timeout"),
        ("successor_halt_timeout", "no_timeout"),
        ("script_log_file", "$SGRUN/log/$SG_PACKAGE.log"),
        ("operation_sequence", "$SGCONF/scripts/tkit/vtn/tkit_module.sh"),
        ("operation_sequence", "$SGCONF/scripts/sg/external.sh"),
        ("operation_sequence", "$SGCONF/scripts/sg/service.sh"),
        ("failover_policy", "configured_node"),
        ("failback_policy", "manual"),
        ("tkit/vtn/vtn/TKIT_DIR", &tkit_dir),
        ("tkit/vtn/vtn/MAINTENANCE_FLAG", "yes"),
        ("tkit/vtn/vtn/MONITOR_INTERVAL", "30"),
        ("priority", "no_priority"),
        ("service_name", a),
        ("service_cmd", "$SGCONF/scripts/tkit/vtn/tkit_module.sh guest_monitor"),
        ("service_restart", "none"),
        ("service_fail_fast_enabled", "no"),
        ("service_halt_timeout", "300"),
        ("local_lan_failover_allowed", "yes"),
        ("service_name", "ping_mon"),
        ("service_cmd", &appmon),
        ("service_restart", "none"),
        ("service_fail_fast_enabled", "no"),
        ("service_halt_timeout", "300"),
    ]);
    let got = attributes(&conf);
    let ours = |k: &str| {
        k.strip_prefix("tkit/vtn/vtn/")
            .is_some_and(|n| OUR_TKIT_ATTRS.contains(&n))
    };
    let appendix_a: Vec<(&str, &str)> = got
        .iter()
        .filter(|(k, _)| !ours(k))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(appendix_a, want, "generated:\n{conf}");
    assert!(got.contains(&("tkit/vtn/vtn/GUEST_NAME".into(), a.into())), "{conf}");
    assert!(
        got.contains(&("tkit/vtn/vtn/LIBVIRT_URI".into(), cx.uri().into())),
        "{conf}"
    );
    assert!(conf.contains("# Storage: the guest has no disks."), "{conf}");

    // The module's ADF declares exactly the attributes deploy writes, and the
    // module script reads each of them.
    let adf = std::fs::read_to_string(serviceguard_dir().join("modules/tkit/vtn/vtn.1")).unwrap();
    let script_path = serviceguard_dir().join("scripts/tkit/vtn/tkit_module.sh");
    let script = std::fs::read_to_string(&script_path).unwrap();
    let mut declared: Vec<&str> = adf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NAME"))
        .map(str::trim)
        .collect();
    let mut written: Vec<&str> = got
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("tkit/vtn/vtn/"))
        .collect();
    declared.sort();
    written.sort();
    assert_eq!(declared, written);
    for attr in &written {
        assert!(
            script.contains(&format!("${attr}")) || script.contains(&format!("${{{attr}")),
            "tkit_module.sh does not read {attr}"
        );
    }

    // A second deploy keeps the first file in .backup/.
    let mut r = VmRun::spawn_env(&["deploy", a, "--connect", cx.uri()], &base);
    assert_eq!(r.code_within(CMD), 0, "{}", r.err.text());
    let backups = std::fs::read_dir(sgconf.join(a).join(".backup")).unwrap().count();
    assert_eq!(backups, 1);

    // The module script, with the package's environment as Serviceguard gives it.
    let attrs = [
        ("SG_PACKAGE", a),
        ("SGCONF", sg),
        ("CMAPPMGR", cmappmgr),
        ("CMAPPMGR_RUN_DIR", run),
        ("GUEST_NAME", a),
        ("TKIT_DIR", &tkit_dir),
        ("MAINTENANCE_FLAG", "yes"),
        ("MONITOR_INTERVAL", "0.5"),
        ("LIBVIRT_URI", cx.uri()),
        ("START_TIMEOUT", "30"),
        ("STOP_TIMEOUT", "1"),
        ("GUEST_NODE", ""),
        ("CMAPPSERVER_TIMEOUT", "240"),
    ];
    let sh = Path::new("/bin/sh");
    let module =
        |action: &str, env: &[(&str, &str)]| VmRun::spawn_program(sh, &[script_path.to_str().unwrap(), action], env);
    let module_expect = |code: i32, action: &str| {
        let mut r = module(action, &attrs);
        assert_eq!(
            r.code_within(CMD),
            code,
            "tkit_module.sh {action}: {}\n{}",
            r.out.text(),
            r.err.text()
        );
        r
    };
    let r = module_expect(0, "validate");
    assert!(
        r.err.contains(&format!("guest {a} is defined on this host")),
        "{}",
        r.err.text()
    );
    module_expect(0, "start");
    assert_eq!(cx.lv.state(a), "running");

    // The guest-monitor service; maintenance mode from an admin's shell with
    // no options at all, as `cmdeployvpkg -m 1 -P A` is typed.
    let mut m = module("guest_monitor", &attrs);
    let line = m.expect_line(&format!("monitoring guest {a}"), WAIT);
    assert!(
        line.contains(&format!(
            "maintenance file: {tkit_dir}/maintenance (TKIT_DIR from --tkit-dir)"
        )),
        "{line}"
    );
    m.expect_line(&format!("guest {a} is running"), WAIT);
    let r = vm_env(0, &["maintenance", "on", a], &base);
    let line = r.expect_line("Maintenance mode is enabled", WAIT);
    assert!(
        line.contains(&format!(
            "{tkit_dir}/maintenance (TKIT_DIR from TKIT_DIR in {})",
            conf_path.display()
        )),
        "{line}"
    );
    m.expect_line(&format!("Maintenance mode is enabled for the package {a}"), WAIT);
    cx.lv.virsh(&["destroy", a]);
    m.expect_line(&format!("guest {a} is shut off (maintenance mode: not checked)"), WAIT);
    assert!(m.running(), "{}", m.err.text());
    vm_env(0, &["maintenance", "off", a], &base);
    assert_eq!(m.code_within(Duration::from_secs(10)), 1, "{}", m.err.text());
    assert!(
        m.err.contains(&format!(
            "Service monitor detected a failure in guest {a}: guest {a} is no longer running (state: shut off)"
        )),
        "{}",
        m.err.text()
    );

    // A monitor given another TKIT_DIR: `maintenance` with no options follows
    // it (and says so); with a different one of its own it refuses.
    module_expect(0, "start");
    let other = cx.lv.dir().join("other-tkit");
    std::fs::create_dir_all(&other).unwrap();
    let other_s = other.to_str().unwrap();
    let mut env = attrs.to_vec();
    env.retain(|(k, _)| *k != "TKIT_DIR");
    env.push(("TKIT_DIR", other_s));
    let mut m = module("guest_monitor", &env);
    m.expect_line(&format!("guest {a} is running"), WAIT);
    let r = vm_env(0, &["maintenance", "on", a], &base);
    let line = r.expect_line("Maintenance mode is enabled", WAIT);
    assert!(
        line.contains(&format!(
            "{other_s}/maintenance (TKIT_DIR from the running guest monitor of {a} (pid {})",
            m.pid()
        )),
        "{line}"
    );
    assert!(other.join("maintenance").exists());
    m.expect_line(&format!("Maintenance mode is enabled for the package {a}"), WAIT);
    let r = vm_env(1, &["maintenance", "on", a, "--tkit-dir", &tkit_dir], &base);
    assert!(
        r.err.contains(&format!(
            "the guest monitor of {a} (pid {}) looks for the maintenance file at {other_s}/maintenance",
            m.pid()
        )),
        "{}",
        r.err.text()
    );
    assert!(!Path::new(&tkit_dir).join("maintenance").exists());
    vm_env(0, &["maintenance", "off", a], &base);
    assert!(!other.join("maintenance").exists());
    m.expect_line(&format!("Maintenance mode is disabled for the package {a}"), WAIT);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code_within(Duration::from_secs(10)), 0, "{}", m.err.text());
    assert!(
        wait_until(WAIT, || std::fs::read_dir(run_dir.join("vm")).map_or(0, |d| d.count())
            == 0),
        "the monitor's registration outlived it"
    );

    // Package halt: the guest ignores ACPI, so it is forced off after STOP_TIMEOUT.
    let r = module_expect(0, "stop");
    assert!(r.err.contains(&format!("guest {a} was forced off")), "{}", r.err.text());
    assert_eq!(cx.lv.state(a), "shut off");

    // Without a guest name the script refuses, saying why.
    let mut r = module("start", &[("SGCONF", sg), ("CMAPPMGR", cmappmgr)]);
    assert_eq!(r.code_within(CMD), 1);
    assert!(
        r.out.contains("neither GUEST_NAME nor SG_PACKAGE is set"),
        "{}",
        r.out.text()
    );
}

/// `cmappmgr vm ARGS` with extra environment, run to completion.
fn vm_env(code: i32, args: &[&str], env: &[(&str, &str)]) -> VmRun {
    let mut r = VmRun::spawn_env(args, env);
    let c = r.code_within(CMD);
    assert_eq!(c, code, "cmappmgr vm {args:?} exited {c}; stderr:\n{}", r.err.text());
    r
}
