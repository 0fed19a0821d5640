//! A guest's virtio-vsock device served from user space: `vhost-device-vsock`
//! (rust-vmm, crates.io) behind QEMU's `vhost-user-vsock-pci`. This
//! machine's kernel has no vhost-vsock, so the host side is the device's
//! Unix socket (`--uds-path`), reached with `-node vsock-unix:PATH` (the
//! hybrid-vsock convention). vhost-user needs the guest's memory shared with
//! the device: a `memory-backend-memfd` with `share=on`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{which, GUEST_MIB, SETUP_LIMIT};
use crate::{alive, wait_until};

/// The program, and how to get it.
pub const PROGRAM: &str = "vhost-device-vsock";
const INSTALL: &str = "cargo install --locked vhost-device-vsock (./test.sh --deps installs it)";

/// One `vhost-device-vsock` process, a child of the test, killed by its pid on drop.
#[derive(Debug)]
pub struct VsockDevice {
    /// The vhost-user socket QEMU connects to.
    pub socket: PathBuf,
    /// The host side: connect, `CONNECT <port>`, and the guest's port answers.
    pub uds: PathBuf,
    pub cid: u32,
    log: PathBuf,
    child: Option<Child>,
}

impl VsockDevice {
    /// Starts the device for a guest with context id `cid`, its sockets in
    /// `dir` (absolute), and waits until it listens for QEMU.
    pub fn start(dir: &Path, name: &str, cid: u32) -> VsockDevice {
        assert!(dir.is_absolute(), "{} must be absolute", dir.display());
        let program = which(PROGRAM)
            .or_else(|| {
                let home = std::env::var_os("HOME")?;
                let p = Path::new(&home).join(".cargo/bin").join(PROGRAM);
                p.is_file().then_some(p)
            })
            .unwrap_or_else(|| panic!("{PROGRAM} is not installed: {INSTALL}"));
        let socket = dir.join(format!("{name}.vhost-vsock"));
        let uds = dir.join(format!("{name}.vsock"));
        let log = dir.join(format!("{name}.vsock-device.log"));
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .arg(&program)
            .arg("--guest-cid")
            .arg(cid.to_string())
            .arg("--socket")
            .arg(&socket)
            .arg("--uds-path")
            .arg(&uds)
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("the device's log file"))
            .stderr(File::create(dir.join(format!("{name}.vsock-device.err"))).expect("the device's stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        let pid = child.id();
        let mut dev = VsockDevice {
            socket,
            uds,
            cid,
            log,
            child: Some(child),
        };
        let up = wait_until(SETUP_LIMIT, || !alive(pid) || dev.socket.exists());
        if !(up && alive(pid)) {
            let err = std::fs::read_to_string(dir.join(format!("{name}.vsock-device.err"))).unwrap_or_default();
            dev.kill();
            panic!("{PROGRAM} did not create {}: {err}", dev.socket.display());
        }
        dev
    }

    /// `vsock-unix:UDS:PORT`, for `-node`.
    pub fn node(&self, port: u16) -> String {
        format!("vsock-unix:{}:{port}", self.uds.display())
    }

    /// QEMU's arguments for this device: the guest's memory as a shared
    /// memfd (vhost-user maps it), and the device on the vhost-user socket.
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={GUEST_MIB}M,share=on"),
            "-machine".into(),
            "memory-backend=mem".into(),
            "-chardev".into(),
            format!("socket,id=vsock0,path={}", self.socket.display()),
            "-device".into(),
            "vhost-user-vsock-pci,chardev=vsock0".into(),
        ]
    }

    /// What the device printed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        self.kill();
    }
}
