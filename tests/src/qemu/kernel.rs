//! The kernel: a Debian cloud kernel and its modules, downloaded once and
//! cached under `target/guest-cache/`.

use super::{run_bounded, run_ok, SETUP_LIMIT};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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

    /// The virtio-vsock driver, in load order after [`Kernel::MODULES`]:
    /// the vsock core, then the virtio transport. Loaded by the vsock
    /// guests only (see [`super::Transport`]).
    pub const VSOCK_MODULES: &'static [&'static str] = &[
        "vsock",
        "vmw_vsock_virtio_transport_common",
        "vmw_vsock_virtio_transport",
    ];

    /// Every module the cache holds.
    fn cached_modules() -> impl Iterator<Item = &'static str> {
        Self::MODULES
            .iter()
            .chain(Self::POWER_BUTTON_MODULES)
            .chain(Self::VSOCK_MODULES)
            .copied()
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
