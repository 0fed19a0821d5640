//! Tiny QEMU guests that run the real cmappserver, on a network the host-side
//! cmappmgr reaches, for the guest tests (`tests/tests/guest_vm.rs`).
//!
//! * [`Kernel`]: a Debian cloud kernel (`apt-get download` of the versioned
//!   `linux-image-*-cloud-amd64` package that `linux-image-cloud-amd64`
//!   depends on, unpacked with `dpkg-deb -x`), cached under
//!   `target/guest-cache/` so that only the first run downloads it. The VM
//!   lifecycle tests' guest (`crate::libvirt::GuestImage`) boots the same
//!   cached kernel, with its power-button modules;
//! * [`Image`]: that kernel and an initramfs written here (a `newc` cpio
//!   archive) with busybox-static, a stripped copy of `cmappserver`, the
//!   libraries `ldd` names, the virtio modules, key material and
//!   configuration made at test time, and `tests/fixtures/guest/init`, which
//!   configures the network and runs cmappserver as a guest's init would;
//! * [`Netns`]: a network namespace with two bridges, the guest's two LANs
//!   as seen from the host. QEMU attaches to tap devices on them, so a guest
//!   migrated to a second QEMU on the same bridges keeps its addresses and
//!   its open TCP connections. cmappmgr runs inside the namespace
//!   (`ip netns exec`, see [`crate::mgr::Mgr::spawn_in`]);
//! * [`Guest`]: one `qemu-system-x86_64 -accel tcg` process, a child of the
//!   test, killed by its pid when dropped (and by the kernel if the test
//!   process dies first), with [`Qmp`] to drive it (quit, migrate);
//! * [`VsockDevice`]: a `vhost-device-vsock` serving a guest's
//!   `vhost-user-vsock-pci` device, whose Unix socket is the host's way to
//!   the guest's vsock ports (`-node vsock-unix:...`) for a guest with no
//!   network at all ([`Transport::Vsock`]).
//!
//! Nothing here touches the machine's own network: every device lives in the
//! namespace, which is deleted with everything in it when [`Netns`] drops
//! (or by the next run, if the test process was killed before).

mod guest;
mod initramfs;
mod kernel;
mod network;
mod qmp;
mod vsock;

pub use guest::Guest;
pub use initramfs::{Image, Transport};
pub use kernel::Kernel;
pub use network::Netns;
pub use qmp::Qmp;
pub use vsock::VsockDevice;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::mgr::Mgr;
use crate::output::Lines;
use crate::{alive, require_root, wait_until, which};

/// The Debian packages these tests need (besides a Rust toolchain).
pub const PACKAGES: &str = "qemu-system-x86 busybox-static iproute2";

/// The guest's management LAN (`eth0`, on bridge `br0`): cmappmgr talks to
/// cmappserver at [`GUEST_ADDR`].
pub const GUEST_ADDR: &str = "192.168.77.2";
/// The host's address on the management LAN.
pub const HOST_ADDR: &str = "192.168.77.1";
/// The guest's second LAN (`eth1`, on bridge `br1`), the one the LAN probe watches.
pub const PROBED_LAN: &str = "eth1";
/// The guest's address on the probed LAN.
pub const PROBED_GUEST_ADDR: &str = "192.168.78.2";
/// The host's address on the probed LAN: the probe's ping target.
pub const PROBED_HOST_ADDR: &str = "192.168.78.1";
/// The port cmappserver listens on in the guest.
pub const PORT: u16 = 5315;

/// The guest's memory: the stripped cmappserver and the kernel fit with room to spare.
const GUEST_MIB: u32 = 256;
/// Bound on anything the host does to set up a guest (a QEMU start, an `ip` call).
const SETUP_LIMIT: Duration = Duration::from_secs(60);

/// `ADDR:PORT` of the guest's cmappserver, for `-node`.
pub fn node() -> String {
    format!("{GUEST_ADDR}:{PORT}")
}

/// Fails the test unless it runs as root with every program it needs, naming
/// the package that is missing.
pub fn require_prerequisites() {
    require_root("QEMU, network namespaces");
    for (program, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("ip", "iproute2"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("ldd", "libc-bin"),
        ("setpriv", "util-linux"),
    ] {
        assert!(
            which(program).is_some(),
            "{program} is not installed: install the Debian package {package} \
             (these tests need: apt-get install -y --no-install-recommends {PACKAGES})"
        );
    }
    let busybox = which("busybox").unwrap();
    let ldd = run_bounded(Command::new("ldd").arg(&busybox), SETUP_LIMIT);
    let text = ldd.stdout + &ldd.stderr;
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "{} is dynamically linked: the guest needs a static busybox; install the Debian package busybox-static",
        busybox.display()
    );
}

/// The directory cached downloads live in: `target/guest-cache/`.
pub fn cache_dir() -> PathBuf {
    crate::bin_dir().parent().expect("target dir").join("guest-cache")
}

/// What a finished command printed.
#[derive(Debug)]
struct Ran {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion within `limit` (killed after it); returns
/// what it printed. Its output is read as it comes, so a full pipe never
/// stalls it.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Ran {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let (out, err) = (Lines::default(), Lines::default());
    out.follow(child.stdout.take().unwrap());
    err.follow(child.stderr.take().unwrap());
    let pid = child.id();
    let done = wait_until(limit, || !alive(pid));
    if !done {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for a command");
    assert!(done, "{cmd:?} did not finish within {limit:?}; stderr:\n{}", err.text());
    out.wait_closed(crate::WAIT);
    err.wait_closed(crate::WAIT);
    Ran {
        status,
        stdout: out.text(),
        stderr: err.text(),
    }
}

/// Runs a command within `limit` and panics with its stderr unless it succeeds; returns its stdout.
fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let ran = run_bounded(cmd, limit);
    assert!(
        ran.status.success(),
        "{cmd:?} failed ({}): {}\n{}",
        ran.status,
        ran.stderr,
        ran.stdout
    );
    ran.stdout
}

// ---------------------------------------------------------------------------
// cmappmgr inside the namespace

/// One process as `cmappmgr status --json` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub service: String,
    pub pid: u32,
    pub running: bool,
}

/// `cmappmgr status --node GUEST --json`: the guest's processes.
pub fn status(net: &Netns, conf: &Path) -> Vec<Listed> {
    status_at(Some(net), conf, &node())
}

/// The same for any `-node`, with cmappmgr in `net` or (`None`) in the test's namespace.
pub fn status_at(net: Option<&Netns>, conf: &Path, node: &str) -> Vec<Listed> {
    let (code, m) = Mgr::run_in(
        net.map(|n| n.name.as_str()),
        &[
            "status",
            "--node",
            node,
            "--conf",
            conf.to_str().unwrap(),
            "--json",
            "--timeout",
            "20",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "cmappmgr status failed:\n{}", m.err.text());
    let v: Value =
        serde_json::from_str(&m.out.text()).unwrap_or_else(|e| panic!("status --json: {e}: {}", m.out.text()));
    v.as_array()
        .expect("status --json prints a list")
        .iter()
        .map(|p| Listed {
            service: p["service"].as_str().unwrap_or_default().to_string(),
            pid: p["pid"].as_u64().unwrap_or(0) as u32,
            running: p["exit"].is_null(),
        })
        .collect()
}
