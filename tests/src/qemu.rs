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
//!   process dies first), with [`Qmp`] to drive it (quit, migrate).
//!
//! Nothing here touches the machine's own network: every device lives in the
//! namespace, which is deleted with everything in it when [`Netns`] drops
//! (or by the next run, if the test process was killed before).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::keys::Keys;
use crate::mgr::Mgr;
use crate::output::Lines;
use crate::{alive, require_root, wait_until};

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

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into(), "/bin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
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
// The kernel

/// A Debian cloud kernel and the modules the test guests load, unpacked in
/// the cache: the virtio modules of this module's guests
/// ([`Kernel::MODULES`]) and the power-button modules of the VM lifecycle
/// tests' guest ([`Kernel::POWER_BUTTON_MODULES`]).
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `6.1.0-56-cloud-amd64`: what `uname -r` says in the guest.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// Flat directory of `NAME.ko` files, uncompressed: every module of
    /// [`Kernel::MODULES`] and [`Kernel::POWER_BUTTON_MODULES`].
    pub modules: PathBuf,
}

impl Kernel {
    /// The modules this module's guest needs, in load order (the package has
    /// no modules.dep the initramfs could use): `tests/fixtures/guest/init`
    /// loads them in this order, and [`Image`] puts exactly these in its
    /// initramfs.
    pub const MODULES: &'static [&'static str] = &[
        "virtio_ring",
        "virtio",
        "failover",
        "net_failover",
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "virtio_net",
        "virtio-rng",
    ];

    /// The modules the VM lifecycle tests' guest needs to see the ACPI power
    /// button (`crate::libvirt::GuestImage`), in the order
    /// `tests/fixtures/vm/init` loads them: evdev, then the button driver.
    /// Neither depends on the other or on the virtio modules.
    pub const POWER_BUTTON_MODULES: &'static [&'static str] = &["evdev", "button"];

    /// Every module the cache holds.
    fn cached_modules() -> impl Iterator<Item = &'static str> {
        Self::MODULES.iter().chain(Self::POWER_BUTTON_MODULES).copied()
    }

    /// The cached kernel in `cache/kernel/`, downloaded first if it is not
    /// there (or lacks a module, as a cache made before a module was added
    /// does). Test processes running at the same time, of any test binary,
    /// take turns on a lock file, so the package is downloaded once.
    pub fn cached(cache: &Path) -> Kernel {
        std::fs::create_dir_all(cache).expect("create the guest cache directory");
        let lock = File::create(cache.join("lock")).expect("create the cache lock file");
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock the guest cache");
        let dir = cache.join("kernel");
        if let Some(k) = Self::complete(&dir) {
            return k;
        }
        let t0 = Instant::now();
        let package = Self::versioned_package();
        let work = cache.join(format!("download-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        run_ok(
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
                .current_dir(&work),
            Duration::from_secs(300),
        );
        let deb = std::fs::read_dir(&work)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .unwrap_or_else(|| panic!("apt-get download {package} left no .deb in {}", work.display()));
        let tree = work.join("tree");
        run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree), SETUP_LIMIT);
        let version = package.trim_start_matches("linux-image-").to_string();
        let staged = work.join("kernel");
        std::fs::create_dir_all(staged.join("modules")).unwrap();
        std::fs::copy(tree.join(format!("boot/vmlinuz-{version}")), staged.join("vmlinuz"))
            .unwrap_or_else(|e| panic!("{package} has no boot/vmlinuz-{version}: {e}"));
        let module_root = tree.join(format!("lib/modules/{version}"));
        // Found by file name anywhere in the tree: a kernel's module names
        // are unique (its build refuses two modules with one name), so the
        // name alone says which file it is, wherever the kernel keeps it
        // (button.ko is kernel/drivers/acpi/, evdev.ko kernel/drivers/input/).
        for m in Self::cached_modules() {
            let to = staged.join("modules").join(format!("{m}.ko"));
            // Plain in Debian 12's kernels; compressed ones are unpacked here.
            if let Some(f) = find_file(&module_root, &format!("{m}.ko")) {
                std::fs::copy(f, &to).unwrap();
            } else if let Some((f, tool)) = [("xz", "xz"), ("zst", "zstd")]
                .iter()
                .find_map(|(ext, tool)| Some((find_file(&module_root, &format!("{m}.ko.{ext}"))?, *tool)))
            {
                let body = run_ok(
                    Command::new("sh")
                        .arg("-c")
                        .arg(format!("{tool} -dc \"$1\" > \"$2\""))
                        .arg("sh")
                        .arg(&f)
                        .arg(&to),
                    SETUP_LIMIT,
                );
                drop(body);
            } else {
                panic!("{package} has no module {m}.ko under {}", module_root.display());
            }
        }
        std::fs::write(staged.join("VERSION"), &version).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&staged, &dir).expect("move the kernel into the cache");
        let _ = std::fs::remove_dir_all(&work);
        eprintln!(
            "downloaded {package} into {} in {:.1} s",
            dir.display(),
            t0.elapsed().as_secs_f64()
        );
        Self::complete(&dir).expect("the kernel just cached")
    }

    fn complete(dir: &Path) -> Option<Kernel> {
        let version = std::fs::read_to_string(dir.join("VERSION")).ok()?.trim().to_string();
        let k = Kernel {
            version,
            vmlinuz: dir.join("vmlinuz"),
            modules: dir.join("modules"),
        };
        let all = k.vmlinuz.is_file() && Self::cached_modules().all(|m| k.modules.join(format!("{m}.ko")).is_file());
        all.then_some(k)
    }

    /// `linux-image-6.1.0-NN-cloud-amd64`: what `linux-image-cloud-amd64`
    /// depends on. Runs `apt-get update` once if apt does not know the
    /// package (a machine whose package lists were never fetched).
    fn versioned_package() -> String {
        let depends = || {
            let out = run_bounded(
                Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
                SETUP_LIMIT,
            );
            out.stdout
                .lines()
                .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
                .map(|p| p.trim().to_string())
                .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        };
        if let Some(p) = depends() {
            return p;
        }
        eprintln!("apt does not know linux-image-cloud-amd64: running apt-get update");
        run_ok(
            Command::new("apt-get").args(["update", "-qq"]),
            Duration::from_secs(300),
        );
        depends().expect(
            "apt-cache depends linux-image-cloud-amd64 names no linux-image-*-cloud-amd64 package, \
             even after apt-get update: the guest tests need Debian's package registry",
        )
    }
}

fn find_file(root: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let p = e.path();
        let ft = e.file_type().ok()?;
        if ft.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if e.file_name() == name {
            return Some(p);
        }
    }
    None
}

// ---------------------------------------------------------------------------
// The initramfs

/// A `newc` cpio archive under construction (what the kernel unpacks as its
/// initramfs). Written here rather than with `cpio` so that `/dev/console`
/// can be a device node without mknod, and modes are exact.
#[derive(Debug, Default)]
struct Cpio {
    data: Vec<u8>,
    ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            body.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while self.data.len() % 4 != 0 {
            self.data.push(0);
        }
    }

    /// A directory and its missing parents.
    fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        let mut so_far = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(part);
            if self.dirs.insert(so_far.clone()) {
                let name = so_far.clone();
                self.entry(&name, 0o040755, (0, 0), &[]);
            }
        }
    }

    fn file(&mut self, path: &str, mode: u32, body: &[u8]) {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, 0o100000 | mode, (0, 0), body);
    }

    fn copy(&mut self, path: &str, mode: u32, from: &Path) {
        let body = std::fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        self.file(path, mode, &body);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

/// What a guest boots: the kernel, and an initramfs with this test's keys.
#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: Kernel,
    pub initrd: PathBuf,
}

impl Image {
    /// Writes `out/initrd.cpio`: busybox, cmappserver and its libraries, the
    /// modules, the init script, and cmappserver's configuration and key
    /// material at the original's default paths (`/opt/hp/cmappserver/`).
    pub fn build(kernel: &Kernel, keys: &Keys, out: &Path) -> Image {
        std::fs::create_dir_all(out).unwrap();
        let mut a = Cpio::default();
        for d in [
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "etc",
            "root",
            "var/lib/cmappserver",
            "lib/modules",
        ] {
            a.dir(d);
        }
        a.entry("dev/console", 0o020600, (5, 1), &[]);
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guest");
        a.copy("init", 0o755, &fixtures.join("init"));
        a.copy(
            "bin/busybox",
            0o755,
            &which("busybox").expect("busybox (busybox-static)"),
        );
        for m in Kernel::MODULES {
            a.copy(
                &format!("lib/modules/{m}.ko"),
                0o644,
                &kernel.modules.join(format!("{m}.ko")),
            );
        }

        // cmappserver stripped (90 MB with debug information → about 10 MB),
        // and the shared libraries it loads, at the paths ldd names.
        let server = crate::bin("cmappserver");
        let stripped = out.join("cmappserver");
        let strip = Command::new("strip").arg("-o").arg(&stripped).arg(&server).status();
        if !matches!(strip, Ok(s) if s.success()) {
            eprintln!("strip is not available: the guest gets the unstripped cmappserver");
            std::fs::copy(&server, &stripped).unwrap();
        }
        a.copy("opt/hp/cmappserver/cmappserver", 0o755, &stripped);
        let ldd = run_ok(Command::new("ldd").arg(&server), SETUP_LIMIT);
        for lib in ldd.lines().filter_map(library_path) {
            a.copy(&lib, 0o755, Path::new(&lib));
        }

        let conf = format!(
            "# cmappserver in the test guest (made by cmapp_tests::qemu)\n\
             keyStore=/opt/hp/cmappserver/server.private\n\
             trustStore=/opt/hp/cmappserver/client.public\n\
             stateDir=/var/lib/cmappserver\n\
             listen=0.0.0.0:{PORT}\n"
        );
        a.file("opt/hp/cmappserver/cmappserver.conf", 0o644, conf.as_bytes());
        a.copy("opt/hp/cmappserver/server.private", 0o600, &keys.server_private);
        a.copy("opt/hp/cmappserver/client.public", 0o644, &keys.server_trust);
        let env = format!("LAN0=eth0\nADDR0={GUEST_ADDR}/24\nLAN1={PROBED_LAN}\nADDR1={PROBED_GUEST_ADDR}/24\n");
        a.file("etc/guest.env", 0o644, env.as_bytes());

        let initrd = out.join("initrd.cpio");
        std::fs::write(&initrd, a.finish()).unwrap();
        std::fs::set_permissions(&initrd, std::fs::Permissions::from_mode(0o644)).unwrap();
        Image {
            kernel: kernel.clone(),
            initrd,
        }
    }
}

/// The library path in one line of `ldd` output, if it names one.
fn library_path(line: &str) -> Option<String> {
    let line = line.trim();
    let path = match line.split_once("=>") {
        Some((_, right)) => right.split_whitespace().next()?,
        None => line.split_whitespace().next()?,
    };
    path.starts_with('/').then(|| path.to_string())
}

// ---------------------------------------------------------------------------
// The network

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A network namespace holding the host side of the guest's two LANs:
/// `br0` ([`HOST_ADDR`]) and `br1` ([`PROBED_HOST_ADDR`]), and the tap
/// devices QEMU attaches to. Deleted, with everything in it, on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    taps: Vec<String>,
}

impl Netns {
    pub fn create() -> Netns {
        Self::remove_stale();
        let name = format!(
            "cmapp-gvm-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]), SETUP_LIMIT);
        let me = Netns { name, taps: Vec::new() };
        me.ip(&["link", "set", "lo", "up"]);
        for (bridge, addr) in [("br0", HOST_ADDR), ("br1", PROBED_HOST_ADDR)] {
            me.ip(&["link", "add", bridge, "type", "bridge"]);
            me.ip(&["addr", "add", &format!("{addr}/24"), "dev", bridge]);
            me.ip(&["link", "set", bridge, "up"]);
        }
        me
    }

    /// Deletes the namespaces of test processes that no longer exist (killed
    /// before their Drop ran: a test timeout). Only names this module makes.
    fn remove_stale() {
        let list = run_bounded(Command::new("ip").args(["netns", "list"]), SETUP_LIMIT).stdout;
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(rest) = name.strip_prefix("cmapp-gvm-") else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !alive(pid) {
                let _ = run_bounded(Command::new("ip").args(["netns", "del", name]), SETUP_LIMIT);
            }
        }
    }

    /// `ip -n NAME ARGS`; panics with its message if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args), SETUP_LIMIT)
    }

    /// A persistent tap device on `bridge`, up, for a QEMU to attach to.
    pub fn add_tap(&mut self, tap: &str, bridge: &str) {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        self.taps.push(tap.to_string());
        self.ip(&["link", "set", tap, "master", bridge]);
        self.ip(&["link", "set", tap, "up"]);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for tap in &self.taps {
            let _ = Command::new("ip")
                .args(["-n", &self.name, "link", "del", tap])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

// ---------------------------------------------------------------------------
// The guest

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
        let shared = vec![
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
            "console=ttyS0 panic=-1 quiet".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
        ];
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
        // First its log line on the console, so that cmappmgr's connection
        // attempts (each up to an ARP timeout while the guest boots, with a
        // growing backoff between them) do not add seconds to every boot.
        let end = Instant::now() + limit;
        let listening = wait_until(limit, || {
            !self.running() || self.console_text().contains("listening on 0.0.0.0:")
        });
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
            Some(&net.name),
            &[
                "check",
                "--node",
                &node(),
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

// ---------------------------------------------------------------------------
// QMP

/// A QMP connection: JSON lines over QEMU's unix socket.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Asynchronous events received so far.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode (`qmp_capabilities`).
    pub fn connect(path: &Path) -> Qmp {
        let stream = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to QMP {}: {e}", path.display()));
        Self::handshake(stream)
    }

    /// Like [`connect`](Self::connect), `None` while nothing listens on `path` yet.
    pub fn try_connect(path: &Path) -> Option<Qmp> {
        UnixStream::connect(path).ok().map(Self::handshake)
    }

    fn handshake(stream: UnixStream) -> Qmp {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "not a QMP greeting: {greeting}");
        q.execute("qmp_capabilities", json!({})).expect("qmp_capabilities");
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from QMP");
        assert!(n > 0, "QMP connection closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}"))
    }

    /// Runs a command; returns its `return` value, or the error's description.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        writeln!(self.writer, "{msg}").expect("write to QMP");
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            return Err(v["error"]["desc"].as_str().unwrap_or("unknown error").to_string());
        }
    }

    /// Waits (bounded by `limit`) for an event named `name` whose data
    /// satisfies `pred`, including one already received.
    pub fn wait_event(&mut self, name: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let matches = |v: &Value| v["event"] == name && pred(&v["data"]);
        if let Some(at) = self.events.iter().position(matches) {
            return Some(self.events.remove(at));
        }
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            let mut line = String::new();
            let read = self.reader.read_line(&mut line);
            self.reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            match read {
                Ok(0) => return None,
                Ok(_) => {
                    let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if matches(&v) {
                        return Some(v);
                    }
                    self.events.push(v);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) => panic!("read from QMP: {e}"),
            }
        }
    }
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
    let node = node();
    let (code, m) = Mgr::run_in(
        Some(&net.name),
        &[
            "status",
            "--node",
            &node,
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
