//! A private OpenSSH server on loopback, the peer of the round-trip run's
//! `ssh host cmd` column: what many admins would reach for instead of a
//! remote-run agent.
//!
//! The bench generates everything at run time in its temporary directory: a
//! host key, a client key (Ed25519, no passphrase), `authorized_keys` and a
//! `known_hosts` naming the host key, so that the client verifies the server
//! as a real one would (`StrictHostKeyChecking=yes`). sshd runs in the
//! foreground (`-D -e`) on a free port of 127.0.0.1 with its own
//! configuration (`UsePAM no`, public-key authentication only, no DNS
//! look-ups); the client reuses no connection (`ControlMaster=no`,
//! `ControlPath=none`) and reads no user or system configuration (`-F
//! /dev/null`). Each measured run is one whole `ssh` process: TCP, key
//! exchange, host-key check, public-key authentication, a session channel,
//! the login shell running `/bin/echo ok`, and the close.
//!
//! The session's `HOME` is the bench's directory (`SetEnv HOME=...`): bash
//! run by sshd reads `~/.bashrc`, and what a machine's own one does is no
//! part of ssh's cost (on the development machine, root's runs `pyenv init`:
//! about a hundred processes, +0.3 to +0.6 s a run). `/etc/bash.bashrc` is
//! read as it would be.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cmapp_tests::output::Lines;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::fixture::{tail, wait_child, Env};
use super::sys;

pub const SSHD: &str = "/usr/sbin/sshd";
pub const SSH: &str = "/usr/bin/ssh";
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
/// The privilege-separation directory sshd insists on when run as root.
const PRIVSEP_DIR: &str = "/run/sshd";

/// A running private sshd; dropping it stops it.
#[derive(Debug)]
pub struct Sshd {
    pub port: u16,
    child: Option<Child>,
    token: Option<sys::Token>,
    log: Lines,
    user: String,
    identity: PathBuf,
    known_hosts: PathBuf,
    /// `OpenSSH_9.2p1 ...`, from `ssh -V`.
    pub version: String,
}

impl Sshd {
    /// Generates the keys and the configuration, starts sshd and waits until
    /// `ssh ... /bin/echo ok` succeeds through it. Every failure is an error
    /// that says what to install or what sshd said.
    pub fn start(env: &Env) -> Result<Sshd, String> {
        for p in [SSHD, SSH, SSH_KEYGEN] {
            if !Path::new(p).exists() {
                return Err(format!(
                    "OpenSSH is not installed ({p} is missing): apt-get install openssh-server openssh-client"
                ));
            }
        }
        let dir = env.dir("sshd")?;
        let host_key = dir.join("host_ed25519");
        let identity = dir.join("id_ed25519");
        for key in [&host_key, &identity] {
            keygen(key)?;
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(identity.with_extension("pub"), &authorized)
            .map_err(|e| format!("cannot write {}: {e}", authorized.display()))?;
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or("the bench's user has no name in the user database; ssh cannot log in as it")?;
        if nix::unistd::Uid::effective().is_root() {
            std::fs::create_dir_all(PRIVSEP_DIR).map_err(|e| format!("cannot create {PRIVSEP_DIR}: {e}"))?;
        }
        let port = super::roundtrip::free_port()?;
        let config = dir.join("sshd_config");
        let pid_file = dir.join("sshd.pid");
        let text = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
             AllowUsers {user}\nUsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUseDNS no\n\
             PrintMotd no\nPrintLastLog no\nX11Forwarding no\nAllowTcpForwarding no\nAllowAgentForwarding no\n\
             PermitTTY no\nLogLevel INFO\nSetEnv HOME={}\n",
            host_key.display(),
            pid_file.display(),
            authorized.display(),
            dir.display()
        );
        std::fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let test = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {SSHD}: {e}"))?;
        if !test.status.success() {
            return Err(format!(
                "{SSHD} -t rejects the bench's configuration ({}): {}",
                test.status,
                String::from_utf8_lossy(&test.stderr).trim()
            ));
        }
        let known_hosts = dir.join("known_hosts");
        let host_pub = std::fs::read_to_string(host_key.with_extension("pub")).map_err(|e| e.to_string())?;
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}"))
            .map_err(|e| format!("cannot write {}: {e}", known_hosts.display()))?;

        // -D: stay in the foreground (the bench's child); -e: log to stderr.
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {SSHD}: {e}"))?;
        let token = Some(sys::register_pid(child.id()));
        let log = Lines::default();
        if let Some(err) = child.stderr.take() {
            log.follow(err);
        }
        let version = Command::new(SSH)
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_default();
        let mut s = Sshd {
            port,
            child: Some(child),
            token,
            log,
            user,
            identity,
            known_hosts,
            version,
        };
        if s.log.wait_for("Server listening on", Duration::from_secs(10)).is_none() {
            let status = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            return Err(format!(
                "sshd did not start listening on 127.0.0.1:{port} (status {status:?}); its log:\n{}",
                tail(&s.log, 20)
            ));
        }
        // The first login proves the whole set-up; a failure says why.
        let out = s
            .command()
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {SSH}: {e}"))?;
        if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != "ok" {
            return Err(format!(
                "ssh through the bench's sshd failed ({}): {}; sshd's log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                tail(&s.log, 20)
            ));
        }
        Ok(s)
    }

    /// `ssh ... USER@127.0.0.1 /bin/echo ok`: key authentication, the
    /// generated known_hosts, no connection reuse, no configuration files.
    pub fn command(&self) -> Command {
        let mut c = Command::new(SSH);
        c.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(&self.identity)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "BatchMode=yes",
            ])
            .args(["-o", "ControlMaster=no", "-o", "ControlPath=none"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10"])
            .args(["-o", "LogLevel=ERROR", "-T"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user))
            .args(["/bin/echo", "ok"]);
        c
    }

    /// SIGTERM, then wait for the daemon (SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            if wait_child(&mut c, Duration::from_secs(5)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(t) = self.token.take() {
            sys::forget(t);
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ssh-keygen -t ed25519 -N '' -f KEY`: a key pair without a passphrase.
fn keygen(key: &Path) -> Result<(), String> {
    let out = Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cmapp-bench", "-f"])
        .arg(key)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {SSH_KEYGEN}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{SSH_KEYGEN} failed for {}: {}",
            key.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
