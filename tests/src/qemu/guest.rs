//! The guest: one QEMU process, a child of the test.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{node, Image, Netns, Qmp, VsockDevice, GUEST_MIB, SETUP_LIMIT};
use crate::mgr::Mgr;
use crate::{alive, wait_until};

/// One QEMU running a guest, a child of this process. Killed by its pid
/// (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Guest {
    pub name: String,
    pub pid: u32,
    child: Option<Child>,
    stderr: PathBuf,
    pub qmp_path: PathBuf,
    pub console: PathBuf,
    /// The tap devices of its two LANs, in the namespace.
    pub taps: [String; 2],
    /// The arguments every QEMU of this guest shares (a migration destination
    /// is started with the same ones).
    shared: Vec<String>,
    /// When QEMU was started.
    pub started: Instant,
}

impl Guest {
    /// Starts a guest booting `image`, its LANs on new taps `<name>0` (br0)
    /// and `<name>1` (br1). Sockets and files go in `dir` (absolute, so
    /// that they do not depend on any process's directory).
    pub fn boot(net: &mut Netns, image: &Image, dir: &Path, name: &str) -> Guest {
        Self::boot_with(net, image, dir, name, Vec::new())
    }

    /// The same with a virtio-vsock device served by `device` (a
    /// `vhost-user-vsock-pci`, the guest's memory shared with the device).
    pub fn boot_vsock(net: &mut Netns, image: &Image, dir: &Path, name: &str, device: &VsockDevice) -> Guest {
        Self::boot_with(net, image, dir, name, device.qemu_args())
    }

    fn boot_with(net: &mut Netns, image: &Image, dir: &Path, name: &str, extra: Vec<String>) -> Guest {
        let mut shared: Vec<String> = vec![
            "-accel".into(),
            "tcg".into(),
            "-cpu".into(),
            "max".into(),
            "-m".into(),
            GUEST_MIB.to_string(),
            "-smp".into(),
            "1".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            image.kernel.vmlinuz.display().to_string(),
            "-initrd".into(),
            image.initrd.display().to_string(),
            "-append".into(),
            "console=ttyS0 panic=-1 quiet no_timer_check".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
        ];
        shared.extend(extra);
        Self::start(net, dir, name, shared, None)
    }

    /// Starts the destination of a live migration of `self`: the same
    /// arguments, its own taps on the same bridges, and `-incoming unix:PATH`.
    pub fn incoming(&self, net: &mut Netns, dir: &Path, name: &str, socket: &Path) -> Guest {
        Self::start(net, dir, name, self.shared.clone(), Some(socket))
    }

    fn start(net: &mut Netns, dir: &Path, name: &str, shared: Vec<String>, incoming: Option<&Path>) -> Guest {
        assert!(dir.is_absolute(), "{} must be absolute", dir.display());
        let taps = [format!("{name}0"), format!("{name}1")];
        net.add_tap(&taps[0], "br0");
        net.add_tap(&taps[1], "br1");
        let qmp_path = dir.join(format!("{name}.qmp"));
        let console = dir.join(format!("{name}.console"));
        let stderr = dir.join(format!("{name}.stderr"));
        let mut args = shared.clone();
        for (i, tap) in taps.iter().enumerate() {
            args.push("-netdev".into());
            args.push(format!("tap,id=lan{i},ifname={tap},script=no,downscript=no"));
            args.push("-device".into());
            // Fixed PCI slots keep eth0/eth1 in order; no option ROM (not needed
            // for a -kernel boot, and ipxe-qemu is only a recommended package).
            args.push(format!(
                "virtio-net-pci,netdev=lan{i},mac=52:54:00:c3:a0:0{i},addr=0x{:x},romfile=",
                4 + i
            ));
        }
        args.extend([
            "-serial".into(),
            format!("file:{}", console.display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp_path.display()),
        ]);
        if let Some(sock) = incoming {
            assert!(sock.is_absolute());
            args.push("-incoming".into());
            args.push(format!("unix:{}", sock.display()));
        }
        // Not daemonized: QEMU stays this process's child, killed and reaped
        // by Drop, and killed by the kernel (parent-death signal, set by
        // setpriv) should the test process itself be killed. `ip netns exec`
        // and setpriv both exec, so the child's pid is QEMU's.
        let started = Instant::now();
        let child = net
            .command("setpriv")
            .args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("QEMU's stderr file"))
            .spawn()
            .expect("run ip netns exec setpriv qemu-system-x86_64");
        let mut guest = Guest {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            qmp_path,
            console,
            stderr,
            taps,
            shared,
            started,
        };
        // Set up once its monitor answers: QMP commands run in the main
        // loop, which starts after the machine (and an -incoming listener).
        let mut qmp = None;
        let up = wait_until(SETUP_LIMIT, || {
            if !guest.running() {
                return true;
            }
            qmp = Qmp::try_connect(&guest.qmp_path);
            qmp.is_some()
        });
        let answered = up && qmp.is_some_and(|mut q| q.execute("query-status", json!({})).is_ok());
        if !answered {
            let why = if guest.running() {
                "its monitor did not answer"
            } else {
                "it exited"
            };
            let log = std::fs::read_to_string(&guest.stderr).unwrap_or_default();
            guest.kill();
            panic!("qemu-system-x86_64 for guest {name} did not start: {why}; its stderr:\n{log}\nargs: {args:?}");
        }
        guest
    }

    /// True while QEMU runs.
    pub fn running(&self) -> bool {
        self.child.is_some() && alive(self.pid)
    }

    /// A QMP connection to this QEMU.
    pub fn qmp(&self) -> Qmp {
        Qmp::connect(&self.qmp_path)
    }

    /// The guest's serial console so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits until the guest's cmappserver answers `cmappmgr check` (the
    /// daemon itself, through TLS, not merely a port); panics with the
    /// console if it does not within `limit` or QEMU dies. Returns the time
    /// since QEMU started.
    pub fn wait_ready(&self, net: &Netns, conf: &Path, limit: Duration) -> Duration {
        self.wait_ready_at(Some(net), conf, &node(), limit)
    }

    /// The same for any `-node` (a vsock guest's `vsock-unix:...`), with
    /// cmappmgr in `net` or, with `None`, in the test's own namespace.
    pub fn wait_ready_at(&self, net: Option<&Netns>, conf: &Path, node: &str, limit: Duration) -> Duration {
        // First its log line on the console, so that cmappmgr's connection
        // attempts (each up to an ARP timeout while the guest boots, with a
        // growing backoff between them) do not add seconds to every boot.
        let marker = if node.starts_with("vsock") {
            "listening on vsock:"
        } else {
            "listening on 0.0.0.0:"
        };
        let end = Instant::now() + limit;
        let listening = wait_until(limit, || !self.running() || self.console_text().contains(marker));
        assert!(
            listening && self.running(),
            "guest {}: cmappserver {} within {limit:?}; console:\n{}",
            self.name,
            if self.running() {
                "logged no \"listening on\""
            } else {
                "never started: QEMU died"
            },
            self.console_text()
        );
        let limit = end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(10));
        let secs = limit.as_secs().max(1).to_string();
        let mut check = Mgr::spawn_in(
            net.map(|n| n.name.as_str()),
            &[
                "check",
                "--node",
                node,
                "--conf",
                conf.to_str().unwrap(),
                "--timeout",
                &secs,
            ],
        );
        let pid = check.pid();
        wait_until(limit + Duration::from_secs(5), || !alive(pid) || !self.running());
        if alive(pid) {
            check.kill9();
            panic!(
                "{}; cmappmgr check said:\n{}\nconsole:\n{}",
                if self.running() {
                    format!("cmappmgr check did not end within {limit:?}")
                } else {
                    format!("guest {} died while booting", self.name)
                },
                check.err.text(),
                self.console_text()
            );
        }
        let code = check.code_within(Duration::from_secs(5));
        assert_eq!(
            code,
            0,
            "cmappserver in guest {} did not answer within {limit:?}; cmappmgr check said:\n{}\n{}\nconsole:\n{}",
            self.name,
            check.out.text(),
            check.err.text(),
            self.console_text()
        );
        self.started.elapsed()
    }

    /// SIGKILLs QEMU (if it still runs) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if wait_until(Duration::from_secs(10), || !alive(self.pid)) {
                let _ = child.wait();
            } else {
                eprintln!(
                    "warning: QEMU {} of guest {} did not die on SIGKILL",
                    self.pid, self.name
                );
            }
        }
    }

    /// QEMU's own messages (its stderr) so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}
