//! A private libvirtd with the QEMU driver for the VM lifecycle tests, tiny
//! test domains, a bootable guest that powers off on the ACPI power button,
//! and `cmappmgr vm` runs with their log captured.
//!
//! The daemon runs as root in its own mount and PID namespaces
//! (`unshare --mount --pid --fork --mount-proc --kill-child`):
//!
//! * bind mounts give it private `/etc/libvirt` (with our `qemu.conf`:
//!   `user = "root"`, `security_driver = "none"`, no cgroups, no per-domain
//!   namespaces, QEMU's output straight to files so no virtlogd),
//!   `/run/libvirt`, `/var/lib/libvirt` and `/var/log/libvirt`, all in a
//!   temporary directory; `/var/cache/libvirt` is a directory the caller
//!   keeps between runs, so libvirt's ~8 s QEMU capability probe is paid once;
//!   the machine's own libvirt files are never read or written (only the
//!   empty mount points are created if missing);
//! * its sockets are in the temporary directory too, named by
//!   [`Libvirtd::uri`] (`qemu:///system?socket=...`);
//! * `cmapp-test-init` is PID 1 of the namespace and reaps the QEMU
//!   processes libvirt daemonizes (without it `virsh destroy` stalls);
//! * dropping [`Libvirtd`] SIGKILLs `unshare`, whose `--kill-child` kills that
//!   init, and the kernel then kills everything left in the namespace:
//!   libvirtd and every QEMU, whatever state the test left them in.
//!
//! The machine needs the packages and the `libvirt-qemu` user listed in
//! [`SETUP`]; [`Libvirtd::start`] checks and says what is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::output::Lines;
use crate::qemu::Kernel;
use crate::{alive, require_root, wait_until, which};

/// What a machine needs for these tests (the CI script does this).
pub const SETUP: &str = "apt-get install -y --no-install-recommends libvirt-daemon libvirt-daemon-driver-qemu \
libvirt-clients qemu-system-x86 busybox-static; \
getent group libvirt-qemu || groupadd -r libvirt-qemu; \
getent passwd libvirt-qemu || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu";

/// How long the daemon may take to answer its first connection (it probes
/// QEMU's capabilities then, ~8 s without a cache on 2 cores).
const DAEMON_START: Duration = Duration::from_secs(90);
/// Bound on one virsh call made by the tests.
const VIRSH_LIMIT: Duration = Duration::from_secs(60);

/// A running private libvirtd; dropping it kills it and every QEMU it ran.
#[derive(Debug)]
pub struct Libvirtd {
    dir: tempfile::TempDir,
    unshare: Option<Child>,
    uri: String,
    prefix: String,
}

impl Libvirtd {
    /// Starts the daemon and waits until it answers. `cache` holds libvirt's
    /// QEMU capability cache between runs (created if needed).
    pub fn start(cache: &Path) -> Libvirtd {
        require_root("libvirtd");
        for (program, package) in [
            ("libvirtd", "libvirt-daemon"),
            ("virsh", "libvirt-clients"),
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("unshare", "util-linux"),
        ] {
            assert!(
                which(program).is_some(),
                "{program} is not installed (package {package}); this machine needs: {SETUP}"
            );
        }
        assert!(
            Path::new("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so").exists()
                || which("virtqemud").is_some(),
            "libvirt's QEMU driver is not installed (libvirt-daemon-driver-qemu); this machine needs: {SETUP}"
        );
        assert!(
            nix::unistd::User::from_name("libvirt-qemu").ok().flatten().is_some(),
            "there is no libvirt-qemu user: libvirtd's QEMU driver refuses to start without it, even when \
             running QEMU as root; this machine needs: {SETUP}"
        );

        let dir = tempfile::Builder::new()
            .prefix("cmapp-libvirtd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        for sub in ["etc", "run", "lib", "log/qemu", "sock"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::create_dir_all(cache).expect("libvirt cache dir");
        let sock = d.join("sock");
        std::fs::write(
            d.join("libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
                 log_outputs = \"3:file:{}\"\n",
                sock.display(),
                d.join("libvirtd.log").display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("etc/qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\nstdio_handler = \"file\"\n\
             cgroup_controllers = [ ]\nnamespaces = [ ]\n",
        )
        .unwrap();
        let mut script = String::from("set -e\n");
        for (src, target) in [
            (d.join("etc"), "/etc/libvirt"),
            (d.join("run"), "/run/libvirt"),
            (d.join("lib"), "/var/lib/libvirt"),
            (d.join("log"), "/var/log/libvirt"),
            (cache.to_path_buf(), "/var/cache/libvirt"),
        ] {
            script.push_str(&format!(
                "mkdir -p {target}\nmount --bind '{}' {target}\n",
                src.display()
            ));
        }
        script.push_str(&format!(
            "exec libvirtd --config '{}' --pid-file '{}'\n",
            d.join("libvirtd.conf").display(),
            d.join("libvirtd.pid").display()
        ));
        let out = std::fs::File::create(d.join("daemon.out")).unwrap();
        let unshare = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "--propagation",
                "private",
            ])
            .arg(init_program())
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("run unshare");
        let mut me = Libvirtd {
            uri: format!("qemu:///system?socket={}", sock.join("libvirt-sock").display()),
            dir,
            unshare: Some(unshare),
            prefix: format!("cmapp-{}-", std::process::id()),
        };
        let t0 = Instant::now();
        loop {
            if let Some(status) = me.unshare.as_mut().unwrap().try_wait().unwrap() {
                panic!("libvirtd exited at start ({status}):\n{}", me.diagnostics());
            }
            if me.sock_ready() && me.try_virsh(&["version"]).status.success() {
                break;
            }
            assert!(
                t0.elapsed() < DAEMON_START,
                "libvirtd did not answer within {DAEMON_START:?}:\n{}",
                me.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "libvirtd answers after {:.1} s at {}",
            t0.elapsed().as_secs_f64(),
            me.uri
        );
        me
    }

    fn sock_ready(&self) -> bool {
        self.dir.path().join("sock/libvirt-sock").exists()
    }

    /// A domain name unique to this test run (`cmapp-PID-SUFFIX`).
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The connection URI for `--connect` / `virsh -c`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The daemon's temporary directory (for files the tests make).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's output and the warnings and errors it logged.
    pub fn diagnostics(&self) -> String {
        let d = self.dir.path();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- libvirtd output ---\n{}\n--- libvirtd.log (warnings and errors) ---\n{}",
            read(d.join("daemon.out")),
            read(d.join("libvirtd.log"))
        )
    }

    /// The log QEMU wrote for a domain (its stderr, with libvirt's lines).
    pub fn qemu_log(&self, domain: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("log/qemu/{domain}.log"))).unwrap_or_default()
    }

    /// Runs `virsh -c URI ARGS` (bounded); returns its output whatever its status.
    pub fn try_virsh(&self, args: &[&str]) -> Output {
        let mut child = Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run virsh");
        let pid = child.id();
        let done = wait_until(VIRSH_LIMIT, || !alive(pid));
        if !done {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("virsh output");
        assert!(done, "virsh {args:?} did not finish within {VIRSH_LIMIT:?}");
        out
    }

    /// Runs `virsh -c URI ARGS`; panics with its message and the daemon's log
    /// if it fails. Returns its stdout.
    pub fn virsh(&self, args: &[&str]) -> String {
        let out = self.try_virsh(args);
        assert!(
            out.status.success(),
            "virsh {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `virsh domstate`, trimmed (`running`, `shut off`, ...).
    pub fn state(&self, domain: &str) -> String {
        self.virsh(&["domstate", domain]).trim().to_string()
    }

    /// Defines a domain from XML.
    pub fn define(&self, name: &str, xml: &str) {
        let path = self.dir.path().join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        self.virsh(&["define", path.to_str().unwrap()]);
    }

    /// Waits (bounded) until the domain's state is `want`.
    pub fn wait_state(&self, domain: &str, want: &str, limit: Duration) {
        let mut last = String::new();
        let ok = wait_until(limit, || {
            last = self.state(domain);
            last == want
        });
        assert!(
            ok,
            "guest {domain} did not reach state {want:?} within {limit:?} (state: {last:?})"
        );
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let Some(mut unshare) = self.unshare.take() else { return };
        // Find the namespace's init (unshare's only child) before killing.
        let init = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id()))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()));
        let _ = unshare.kill();
        let _ = unshare.wait();
        if let Some(pid) = init {
            // --kill-child sends SIGKILL to it; make sure, then wait.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            if !wait_until(Duration::from_secs(10), || !alive(pid)) {
                eprintln!("warning: the libvirtd namespace's init {pid} is still alive");
            }
        }
        // Everything that ran in the namespace mentions our directory or runs
        // a domain named by [`Libvirtd::name`]; none of it may survive.
        let dir = self.dir.path().to_string_lossy().into_owned();
        let leftovers = || {
            let mut pids = processes_mentioning(&dir);
            pids.extend(processes_mentioning(&format!("guest={}", self.prefix)));
            pids
        };
        if !wait_until(Duration::from_secs(10), || leftovers().is_empty()) {
            for pid in leftovers() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            eprintln!("warning: processes of the test libvirtd outlived its namespace; killed them");
        }
    }
}

/// Pids of live processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The `cmapp-test-init` binary built with this crate, next to the test binary.
fn init_program() -> PathBuf {
    crate::bin("cmapp-test-init")
}

/// A domain with no OS and no disk: the firmware finds nothing to boot and
/// waits, so it runs until destroyed and ignores ACPI shutdown requests.
pub fn domain_without_os(name: &str) -> String {
    domain(
        name,
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>",
        32,
        "",
    )
}

/// Like [`domain_without_os`], with a file-backed disk at `image`.
pub fn domain_with_disk(name: &str, image: &Path) -> String {
    domain(
        name,
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>",
        32,
        &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/>\
             <target dev='hda' bus='ide'/></disk>",
            image.display()
        ),
    )
}

/// A domain that boots `guest`'s kernel and initramfs, with its serial
/// console written to `console`.
pub fn domain_booting(name: &str, guest: &GuestImage, console: &Path) -> String {
    domain(
        name,
        &format!(
            "<os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
             <cmdline>console=ttyS0 quiet panic=-1</cmdline></os>",
            guest.kernel.display(),
            guest.initrd.display()
        ),
        160,
        &format!(
            "<serial type='file'><source path='{}'/><target port='0'/></serial>",
            console.display()
        ),
    )
}

fn domain(name: &str, os: &str, mib: u32, devices: &str) -> String {
    format!(
        "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>{mib}</memory>\n  <vcpu>1</vcpu>\n  \
         {os}\n  <features><acpi/></features>\n  <on_poweroff>destroy</on_poweroff>\n  <devices>\n    \
         <emulator>/usr/bin/qemu-system-x86_64</emulator>\n    {devices}\n    \
         <video><model type='none'/></video>\n    <memballoon model='none'/>\n  </devices>\n</domain>\n"
    )
}

/// A kernel and an initramfs whose init prints `CMAPP-GUEST-READY` on the
/// console once it watches the ACPI power button, and powers off when it is
/// pressed (see `tests/fixtures/vm/init`). The kernel is the Debian cloud
/// kernel the QEMU guest tests use, from their cache ([`crate::qemu::Kernel`]).
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The line the guest prints once a power button press will power it off.
pub const GUEST_READY: &str = "CMAPP-GUEST-READY";

impl GuestImage {
    /// Builds the image in `out` around `kernel` (see
    /// [`crate::qemu::Kernel::cached`]), with its
    /// [`POWER_BUTTON_MODULES`](crate::qemu::Kernel::POWER_BUTTON_MODULES).
    /// `fixtures` is `tests/fixtures/vm`.
    pub fn build(fixtures: &Path, kernel: &Kernel, out: &Path) -> GuestImage {
        let busybox = which("busybox").expect("busybox is not installed: install busybox-static");
        let root = out.join("initramfs");
        for sub in ["bin", "proc", "sys", "dev", "lib/modules"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
        // At /lib/modules/NAME.ko, where the init loads them (in its own order).
        for m in Kernel::POWER_BUTTON_MODULES {
            let m = format!("{m}.ko");
            let from = kernel.modules.join(&m);
            std::fs::copy(&from, root.join("lib/modules").join(&m))
                .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
        std::fs::copy(fixtures.join("init"), root.join("init")).unwrap();
        let initrd = out.join("initrd.cpio");
        let st = Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && chmod 755 init && find . | \"$2\" cpio -o -H newc > \"$3\"")
            .args([
                "sh",
                root.to_str().unwrap(),
                busybox.to_str().unwrap(),
                initrd.to_str().unwrap(),
            ])
            .stderr(Stdio::null())
            .status()
            .expect("run busybox cpio");
        assert!(st.success(), "building the initramfs failed ({st})");
        GuestImage {
            kernel: kernel.vmlinuz.clone(),
            initrd,
        }
    }
}

/// A `cmappmgr vm ...` run with its stdout and stderr captured line by line
/// (`RUST_LOG=debug`, so the monitor logs each cycle); killed if dropped.
#[derive(Debug)]
pub struct VmRun {
    child: Child,
    pub out: Lines,
    pub err: Lines,
    status: Option<std::process::ExitStatus>,
    pub started: Instant,
}

impl VmRun {
    pub fn spawn(args: &[&str]) -> VmRun {
        Self::spawn_env(args, &[])
    }

    /// `cmappmgr vm ARGS` with extra environment.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> VmRun {
        let mut all = vec!["vm"];
        all.extend(args);
        Self::spawn_program(&crate::bin("cmappmgr"), &all, env)
    }

    /// Any program (the Serviceguard module script) with extra environment,
    /// captured the same way.
    pub fn spawn_program(program: &Path, args: &[&str], env: &[(&str, &str)]) -> VmRun {
        let mut cmd = Command::new(program);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "debug")
            .env_remove("LIBVIRT_DEFAULT_URI")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cmappmgr");
        let out = Lines::default();
        out.follow(child.stdout.take().unwrap());
        let err = Lines::default();
        err.follow(child.stderr.take().unwrap());
        VmRun {
            child,
            out,
            err,
            status: None,
            started: Instant::now(),
        }
    }

    /// Runs to completion (bounded by `limit`); returns the exit code.
    pub fn run(args: &[&str], limit: Duration) -> (i32, VmRun) {
        let mut r = VmRun::spawn(args);
        let code = r.code_within(limit);
        (code, r)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `limit` for the exit; returns the exit code.
    pub fn code_within(&mut self, limit: Duration) -> i32 {
        if self.status.is_none() {
            let pid = self.child.id();
            let exited = wait_until(limit, || !alive(pid));
            assert!(
                exited,
                "cmappmgr vm did not exit within {limit:?}; stderr:\n{}",
                self.err.text()
            );
            self.status = Some(self.child.wait().unwrap());
            self.err.wait_closed(crate::WAIT);
            self.out.wait_closed(crate::WAIT);
        }
        let s = self.status.unwrap();
        s.code().unwrap_or_else(|| {
            panic!(
                "cmappmgr vm was killed by a signal: {s:?}; stderr:\n{}",
                self.err.text()
            )
        })
    }

    /// True while it runs.
    pub fn running(&mut self) -> bool {
        self.status.is_none() && self.child.try_wait().unwrap().is_none()
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Pids of its child processes (the `virsh event` subscription).
    pub fn children(&self) -> Vec<u32> {
        let pid = self.child.id();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
            .flat_map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect()
    }

    /// Waits for a stderr line containing `needle`; panics with the log if none comes.
    pub fn expect_line(&self, needle: &str, limit: Duration) -> String {
        self.err.wait_for(needle, limit).unwrap_or_else(|| {
            panic!(
                "cmappmgr vm logged no line with {needle:?} within {limit:?}; stderr:\n{}",
                self.err.text()
            )
        })
    }

    /// Waits for the n-th stderr line containing `needle`.
    pub fn expect_nth_line(&self, needle: &str, n: usize, limit: Duration) -> String {
        self.err.wait_for_nth(needle, n, limit).unwrap_or_else(|| {
            panic!(
                "cmappmgr vm logged fewer than {n} lines with {needle:?} within {limit:?}; stderr:\n{}",
                self.err.text()
            )
        })
    }
}

impl Drop for VmRun {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
