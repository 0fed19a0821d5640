//! The initramfs: a `newc` cpio archive with busybox, a stripped
//! cmappserver, its libraries, the virtio modules and this test's keys.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run_ok, which, Kernel, GUEST_ADDR, PORT, PROBED_GUEST_ADDR, PROBED_LAN, SETUP_LIMIT};
use crate::keys::Keys;

/// A `newc` cpio archive under construction (what the kernel unpacks as its
/// initramfs), written with the `cpio` crate rather than the `cpio` program
/// so that `/dev/console` can be a device node without mknod, and modes are
/// exact.
#[derive(Debug, Default)]
struct Cpio {
    data: Vec<u8>,
    ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        use std::io::Write;
        self.ino += 1;
        let mut w = cpio::newc::Builder::new(name)
            .ino(self.ino)
            .mode(mode)
            .nlink(if mode & 0o170000 == 0o040000 { 2 } else { 1 })
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut self.data, body.len() as u32);
        w.write_all(body).expect("writing to memory");
        w.finish().expect("writing to memory");
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
        cpio::newc::trailer(&mut self.data).expect("writing to memory");
        self.data
    }
}

/// How the host reaches the guest's cmappserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP on the guest's management LAN (`eth0`, [`GUEST_ADDR`]). The guest
    /// also asks for `listen=vsock:PORT` but has no vsock driver loaded: its
    /// cmappserver warns about that listener and serves on TCP.
    Tcp,
    /// virtio-vsock only: the vsock driver loaded, `listen=vsock:PORT` the
    /// only listener, and no network interface configured or up (the NICs
    /// exist, down, with no address).
    Vsock,
}

/// What a guest boots: the kernel, and an initramfs with this test's keys.
#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: Kernel,
    pub initrd: PathBuf,
    pub transport: Transport,
}

impl Image {
    /// Writes `out/initrd.cpio` for a guest reached over TCP (see [`Transport::Tcp`]).
    pub fn build(kernel: &Kernel, keys: &Keys, out: &Path) -> Image {
        Self::build_for(kernel, keys, out, Transport::Tcp)
    }

    /// Writes `out/initrd.cpio`: busybox, cmappserver and its libraries, the
    /// modules, the init script, and cmappserver's configuration and key
    /// material at the original's default paths (`/opt/hp/cmappserver/`).
    pub fn build_for(kernel: &Kernel, keys: &Keys, out: &Path, transport: Transport) -> Image {
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
        let modules: Vec<&str> = match transport {
            Transport::Tcp => Kernel::MODULES.to_vec(),
            Transport::Vsock => [Kernel::MODULES, Kernel::VSOCK_MODULES].concat(),
        };
        for m in &modules {
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

        let conf = "# cmappserver in the test guest (made by cmapp_tests::qemu)\n\
                    keyStore=/opt/hp/cmappserver/server.private\n\
                    trustStore=/opt/hp/cmappserver/client.public\n\
                    stateDir=/var/lib/cmappserver\n";
        let conf = match transport {
            Transport::Tcp => format!("{conf}listen=0.0.0.0:{PORT}\nlisten=vsock:{PORT}\n"),
            Transport::Vsock => format!("{conf}listen=vsock:{PORT}\n"),
        };
        a.file("opt/hp/cmappserver/cmappserver.conf", 0o644, conf.as_bytes());
        a.copy("opt/hp/cmappserver/server.private", 0o600, &keys.server_private);
        a.copy("opt/hp/cmappserver/client.public", 0o644, &keys.server_trust);
        // What init loads and configures (tests/fixtures/guest/init).
        let mut env = format!("MODULES=\"{}\"\n", modules.join(" "));
        if transport == Transport::Tcp {
            env.push_str(&format!(
                "LAN0=eth0\nADDR0={GUEST_ADDR}/24\nLAN1={PROBED_LAN}\nADDR1={PROBED_GUEST_ADDR}/24\n"
            ));
        }
        a.file("etc/guest.env", 0o644, env.as_bytes());

        let initrd = out.join("initrd.cpio");
        std::fs::write(&initrd, a.finish()).unwrap();
        std::fs::set_permissions(&initrd, std::fs::Permissions::from_mode(0o644)).unwrap();
        Image {
            kernel: kernel.clone(),
            initrd,
            transport,
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

#[cfg(test)]
mod tests {
    use super::Cpio;

    #[test]
    fn the_archive_holds_directories_files_and_the_console_device() {
        let mut a = Cpio::default();
        a.file("/etc/x/conf", 0o600, b"odd length");
        a.entry("dev/console", 0o020600, (5, 1), &[]);
        let data = a.finish();
        assert_eq!(data.len() % 4, 0);
        let mut rest = &data[..];
        let mut seen = Vec::new();
        loop {
            let r = cpio::newc::Reader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            seen.push((
                e.name().to_string(),
                e.mode(),
                e.nlink(),
                e.rdev_major(),
                e.rdev_minor(),
                e.file_size(),
            ));
            rest = r.finish().unwrap();
        }
        assert_eq!(
            seen,
            vec![
                ("etc".into(), 0o040755, 2, 0, 0, 0),
                ("etc/x".into(), 0o040755, 2, 0, 0, 0),
                ("etc/x/conf".into(), 0o100600, 1, 0, 0, 10),
                ("dev/console".into(), 0o020600, 1, 5, 1, 0),
            ]
        );
    }
}
