//! Two network namespaces joined by a veth pair: a "host" and a "guest",
//! for tests where a network fault is the point. Only addresses inside the
//! namespaces the test creates are ever used. Everything is removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A host namespace and a guest namespace on one /24, deleted on drop.
#[derive(Debug)]
pub struct NetPair {
    pub host_ns: String,
    pub guest_ns: String,
    pub host_if: String,
    pub guest_if: String,
    pub host_ip: String,
    pub guest_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetPair {
    /// Creates the pair; `tag` keeps names apart between tests.
    pub fn new(tag: &str) -> NetPair {
        crate::require_root("network namespaces");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        // A /24 chosen per pair, inside namespaces we own.
        let subnet = 10 + (std::process::id() + n) % 240;
        let p = NetPair {
            host_ns: format!("cmh{tag}{id}"),
            guest_ns: format!("cmg{tag}{id}"),
            host_if: format!("vh{id}"),
            guest_if: format!("vg{id}"),
            host_ip: format!("10.233.{subnet}.1"),
            guest_ip: format!("10.233.{subnet}.2"),
        };
        ip(&["netns", "add", &p.host_ns]);
        ip(&["netns", "add", &p.guest_ns]);
        ip(&[
            "link",
            "add",
            &p.host_if,
            "netns",
            &p.host_ns,
            "type",
            "veth",
            "peer",
            "name",
            &p.guest_if,
            "netns",
            &p.guest_ns,
        ]);
        ip(&[
            "-n",
            &p.host_ns,
            "addr",
            "add",
            &format!("{}/24", p.host_ip),
            "dev",
            &p.host_if,
        ]);
        ip(&[
            "-n",
            &p.guest_ns,
            "addr",
            "add",
            &format!("{}/24", p.guest_ip),
            "dev",
            &p.guest_if,
        ]);
        for (ns, dev) in [(&p.host_ns, &p.host_if), (&p.guest_ns, &p.guest_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        // A veth just set up gets its carrier a moment later (the kernel's
        // link watch): wait until both ends say so.
        let up = |ns: &str, dev: &str| {
            Command::new("ip")
                .args(["-n", ns, "-o", "link", "show", "dev", dev])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" state UP "))
        };
        assert!(
            crate::wait_until(crate::WAIT, || up(&p.host_ns, &p.host_if)
                && up(&p.guest_ns, &p.guest_if)),
            "the veth pair {p:?} did not come up"
        );
        p
    }

    /// Runs `ip ARGS` inside the host namespace (`-n`).
    pub fn host_ip_cmd(&self, args: &[&str]) {
        let mut all = vec!["-n", self.host_ns.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Cuts the link (the guest's end goes down; the host's sees no carrier).
    pub fn partition(&self) {
        ip(&["-n", &self.guest_ns, "link", "set", &self.guest_if, "down"]);
    }

    pub fn heal(&self) {
        ip(&["-n", &self.guest_ns, "link", "set", &self.guest_if, "up"]);
    }

    /// Makes the network drop everything sent to the guest and everything
    /// it sends, silently: its address is taken off its interface, so the
    /// host's packets find no one (and no answer: the guest has no route
    /// back without it), while the link stays up and the host keeps the
    /// guest's hardware address. The guest's stack never sees the host's
    /// SYNs (no SYN-ACK of its own comes back after the heal) and no ARP
    /// is needed: the host's TCP alone decides when it tries again.
    pub fn drop_all(&self) {
        ip(&[
            "-n",
            &self.guest_ns,
            "addr",
            "del",
            &format!("{}/24", self.guest_ip),
            "dev",
            &self.guest_if,
        ]);
    }

    /// Ends [`drop_all`](Self::drop_all).
    pub fn undrop_all(&self) {
        ip(&[
            "-n",
            &self.guest_ns,
            "addr",
            "add",
            &format!("{}/24", self.guest_ip),
            "dev",
            &self.guest_if,
        ]);
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.host_ns]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.guest_ns]).status();
    }
}
