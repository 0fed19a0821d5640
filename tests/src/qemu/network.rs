//! The network: a namespace with the host side of the guest's two LANs.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{run_bounded, run_ok, HOST_ADDR, PROBED_HOST_ADDR, SETUP_LIMIT};
use crate::alive;

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
