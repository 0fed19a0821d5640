//! Remote run round trip, side by side with NRPE and ssh in the same run:
//! the whole-process time of
//!
//! ```text
//! cmappmgr -node 127.0.0.1:PORT --conf C -cmappserver_timeout 10 -service /bin/echo ok
//! /usr/lib/nagios/plugins/check_nrpe -H 127.0.0.1 -p PORT -c check_ok
//! ssh -F /dev/null -i KEY -o ControlMaster=no -o ControlPath=none ... -p PORT USER@127.0.0.1 /bin/echo ok
//! ```
//!
//! against a running cmappserver, a running nrpe (`command[check_ok]=/bin/echo ok`)
//! and a running sshd ([`super::ssh`]), alternated (each goes first, second
//! and third in turn), each checked for exit code 0 and the line `ok`. In the same rounds, the vsock transport: the same
//! cmappmgr with `-node vsock-unix:SOCKET:5315` through a hybrid-vsock relay
//! (`crate::vsock::HybridRelay`, the CONNECT/OK convention of a user-space
//! vsock device) to the same server. This machine has no AF_VSOCK transport
//! (no vhost-vsock), so that column measures the transport code path and a
//! user-space relay hop, not a virtio queue. The bench starts its own nrpe on loopback with its own
//! configuration, and stops it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::fixture::{Env, Server};
use super::ssh::Sshd;
use super::sys;
use cmapp_tests::vsock::HybridRelay;

pub const NRPE: &str = "/usr/sbin/nrpe";
pub const CHECK_NRPE: &str = "/usr/lib/nagios/plugins/check_nrpe";
const WARM_UP: usize = 3;

#[derive(Debug)]
pub struct RoundTrip {
    /// Seconds per run, sorted.
    pub ours: Vec<f64>,
    /// The same over `-node vsock-unix:...` (a hybrid-vsock relay), sorted.
    pub vsock: Vec<f64>,
    pub nrpe: Result<NrpeRuns, String>,
    /// `ssh USER@127.0.0.1 /bin/echo ok` through the bench's own sshd.
    pub ssh: SshRuns,
}

#[derive(Debug)]
pub struct SshRuns {
    /// Seconds per run, sorted.
    pub secs: Vec<f64>,
    /// The client's `ssh -V`.
    pub version: String,
}

#[derive(Debug)]
pub struct NrpeRuns {
    pub secs: Vec<f64>,
    /// What TLS the connection used, from nrpe's own log.
    pub tls: String,
    /// nrpe's resident memory while idle, KiB.
    pub idle_rss_kb: Option<u64>,
}

pub fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub fn run(env: &Env, server: &Server, runs: usize) -> Result<RoundTrip, String> {
    let relay_dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let relay = HybridRelay::start(&relay_dir.path().join("vsock.sock"), 5315, server.addr);
    let mgr_cmd = |node: String| {
        let mut c = Command::new(&env.bins.mgr);
        c.arg("-node")
            .arg(node)
            .arg("--conf")
            .arg(&env.mgr_conf)
            .args(["-cmappserver_timeout", "10", "-service", "/bin/echo", "ok"])
            .env_remove("RUST_LOG");
        c
    };
    // sshd is part of the test set-up (CI installs it): no sshd is an error,
    // never a silently missing column.
    let mut sshd = Sshd::start(env).map_err(|e| format!("the ssh column needs a private sshd: {e}"))?;
    let nrpe = match nrpe_available() {
        Err(why) => Err(why),
        Ok(()) => Nrpe::start(env)
            .map(Some)
            .map_err(|e| format!("nrpe would not start: {e}")),
    };
    // A broken nrpe is reported, not fatal: the column is skipped.
    let (nrpe, mut nrpe_err) = match nrpe {
        Ok(n) => (n, None),
        Err(e) => (None, Some(e)),
    };
    let check_cmd = |port: u16| {
        let mut c = Command::new(CHECK_NRPE);
        c.args(["-H", "127.0.0.1", "-p", &port.to_string(), "-c", "check_ok"]);
        c
    };
    let mut ours = Vec::with_capacity(runs);
    let mut vsock = Vec::with_capacity(runs);
    let mut theirs = Vec::with_capacity(runs);
    let mut ssh = Vec::with_capacity(runs);
    for i in 0..WARM_UP + runs {
        let keep = i >= WARM_UP;
        // Each of the three goes first, second and third in turn.
        for turn in 0..3 {
            match (i + turn) % 3 {
                0 => {
                    let t = timed(mgr_cmd(server.node()), "cmappmgr")?;
                    let v = timed(mgr_cmd(relay.node()), "cmappmgr over vsock-unix")?;
                    if keep {
                        ours.push(t);
                        vsock.push(v);
                    }
                }
                1 => {
                    let t = timed(sshd.command(), "ssh")?;
                    if keep {
                        ssh.push(t);
                    }
                }
                _ => {
                    if let (Some(n), None) = (&nrpe, &nrpe_err) {
                        match timed(check_cmd(n.port), "check_nrpe") {
                            Ok(t) if keep => theirs.push(t),
                            Ok(_) => {}
                            Err(e) => nrpe_err = Some(e),
                        }
                    }
                }
            }
        }
    }
    sshd.stop();
    for v in [&mut ours, &mut vsock, &mut theirs, &mut ssh] {
        v.sort_by(f64::total_cmp);
    }
    let nrpe = match (nrpe, nrpe_err) {
        (_, Some(e)) => Err(e),
        (Some(mut n), None) => {
            n.stop();
            Ok(NrpeRuns {
                secs: theirs,
                tls: n.tls.clone(),
                idle_rss_kb: n.idle_rss_kb,
            })
        }
        (None, None) => Err("nrpe did not start".into()),
    };
    Ok(RoundTrip {
        ours,
        vsock,
        nrpe,
        ssh: SshRuns {
            secs: ssh,
            version: sshd.version.clone(),
        },
    })
}

/// Runs a command to its end; its time, once it exited 0 and printed `ok`.
fn timed(mut c: Command, what: &str) -> Result<f64, String> {
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let t0 = Instant::now();
    let out = c.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    let t = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.trim() != "ok" {
        return Err(format!("{what} failed: {} with output {:?}", out.status, stdout.trim()));
    }
    Ok(t)
}

fn nrpe_available() -> Result<(), String> {
    for p in [NRPE, CHECK_NRPE] {
        if !Path::new(p).exists() {
            return Err(format!(
                "NRPE is not installed ({p} is missing): apt-get install nagios-nrpe-server nagios-nrpe-plugin"
            ));
        }
    }
    Ok(())
}

/// A private nrpe daemon on a free loopback port.
#[derive(Debug)]
pub struct Nrpe {
    pub port: u16,
    pid: Option<u32>,
    token: Option<sys::Token>,
    pub tls: String,
    pub idle_rss_kb: Option<u64>,
}

impl Nrpe {
    /// Starts nrpe once with debug logging to learn what TLS it negotiates
    /// with check_nrpe, stops it, then starts the measured daemon (no debug,
    /// no log file).
    pub fn start(env: &Env) -> Result<Nrpe, String> {
        let dir = env.dir("nrpe")?;
        // nrpe runs its commands as user nagios: let it traverse to its files.
        set_mode(&env.root, 0o711)?;
        set_mode(&dir, 0o755)?;
        let pem = certs::self_signed(certs::Role::Server, &["127.0.0.1".into()]).map_err(|e| e.to_string())?;
        let key = dir.join("nrpe.key");
        let cert = dir.join("nrpe.crt");
        certs::write_private(&key, &pem.private_pem, true).map_err(|e| e.to_string())?;
        certs::write_public(&cert, &pem.public_pem, true).map_err(|e| e.to_string())?;

        let log = dir.join("nrpe.log");
        std::fs::write(&log, "").map_err(|e| e.to_string())?;
        set_mode(&log, 0o666)?;
        let mut probe = Self::launch(&dir, &key, &cert, Some(&log))?;
        let tls = {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let version = text
                .lines()
                .find_map(|l| l.split("SSL Version: ").nth(1))
                .map(str::trim)
                .unwrap_or("unknown version");
            let cipher = text
                .lines()
                .find_map(|l| l.split("Cipher is ").nth(1))
                .map(str::trim)
                .unwrap_or("unknown cipher");
            format!(
                "{version}, {cipher}, server certificate (ECDSA P-256) not verified by check_nrpe \
                 (no -A), no client certificate (nrpe's default ssl_client_certs=0)"
            )
        };
        probe.stop();
        let mut n = Self::launch(&dir, &key, &cert, None)?;
        n.tls = tls;
        Ok(n)
    }

    fn launch(dir: &Path, key: &Path, cert: &Path, debug_log: Option<&PathBuf>) -> Result<Nrpe, String> {
        let port = free_port()?;
        let pid_file = dir.join(format!("nrpe-{port}.pid"));
        let cfg = dir.join(format!("nrpe-{port}.cfg"));
        let mut text = format!(
            "pid_file={}\nserver_port={port}\nserver_address=127.0.0.1\nallowed_hosts=127.0.0.1\n\
             dont_blame_nrpe=0\nallow_bash_command_substitution=0\ncommand_timeout=60\nconnection_timeout=300\n\
             disable_syslog=1\nssl_cert_file={}\nssl_privatekey_file={}\ncommand[check_ok]=/bin/echo ok\n",
            pid_file.display(),
            cert.display(),
            key.display()
        );
        if nix::unistd::Uid::effective().is_root() && nix::unistd::User::from_name("nagios").ok().flatten().is_some() {
            text.push_str("nrpe_user=nagios\nnrpe_group=nagios\n");
        }
        match debug_log {
            Some(log) => text.push_str(&format!("debug=1\nssl_logging=0x0e\nlog_file={}\n", log.display())),
            None => text.push_str("debug=0\n"),
        }
        std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
        let out = Command::new(NRPE)
            .arg("-c")
            .arg(&cfg)
            .arg("-d")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {NRPE}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{NRPE} -d exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        // The daemon writes its pid file, then answers.
        let end = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(p) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                break p;
            }
            if Instant::now() >= end {
                return Err(format!("nrpe wrote no pid file {}", pid_file.display()));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut n = Nrpe {
            port,
            pid: Some(pid),
            token: Some(sys::register_pid(pid)),
            tls: String::new(),
            idle_rss_kb: None,
        };
        loop {
            let mut c = Command::new(CHECK_NRPE);
            c.args(["-H", "127.0.0.1", "-p", &port.to_string(), "-c", "check_ok"]);
            let last = match timed(c, "check_nrpe") {
                Ok(_) => break,
                Err(e) => e,
            };
            if Instant::now() >= end {
                return Err(format!("nrpe on port {port} does not answer: {last}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        n.idle_rss_kb = sys::rss_kb(pid);
        Ok(n)
    }

    /// SIGTERM, then wait until the daemon is gone (it is the bench's orphan).
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            if !sys::reap(pid, Duration::from_secs(5)) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                sys::reap(pid, Duration::from_secs(2));
            }
        }
        if let Some(t) = self.token.take() {
            sys::forget(t);
        }
    }
}

impl Drop for Nrpe {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}
