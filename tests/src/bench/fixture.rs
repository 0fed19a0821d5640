//! What every measurement runs against: the release binaries, a temporary
//! directory with throwaway key material, real cmappserver processes on
//! `127.0.0.1:0`, and real cmappmgr processes. Everything started here is
//! registered with [`sys`] and stopped by its guard.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cmapp_tests::keys::{self, Keys};
use cmapp_tests::output::Lines;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::sys;

/// How long any single wait for a process may take before the bench calls it broken.
pub const WAIT: Duration = Duration::from_secs(30);

/// The binaries under test, found next to the bench itself.
#[derive(Debug, Clone)]
pub struct Bins {
    pub server: PathBuf,
    pub mgr: PathBuf,
    /// The bench binary: also the measured application (`exit-now`).
    pub bench: PathBuf,
}

impl Bins {
    pub fn locate() -> Result<Bins, String> {
        let bench = std::env::current_exe().map_err(|e| format!("cannot locate the bench binary: {e}"))?;
        let dir = bench.parent().ok_or("the bench binary has no directory")?.to_path_buf();
        let server = dir.join("cmappserver");
        let mgr = dir.join("cmappmgr");
        for p in [&server, &mgr] {
            if !p.is_file() {
                return Err(format!(
                    "{} is missing: build the whole workspace first (cargo build --release --workspace)",
                    p.display()
                ));
            }
        }
        Ok(Bins { server, mgr, bench })
    }
}

/// The temporary directory, the key material and the manager configuration.
#[derive(Debug)]
pub struct Env {
    pub bins: Bins,
    pub keys: Keys,
    pub mgr_conf: PathBuf,
    pub root: PathBuf,
    _tmp: tempfile::TempDir,
    token: Option<sys::Token>,
}

impl Env {
    pub fn new(bins: Bins) -> Result<Env, String> {
        let tmp = tempfile::Builder::new()
            .prefix("cmapp-bench-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let root = tmp.path().to_path_buf();
        let token = Some(sys::register_temp_dir(&root));
        let keys = keys::pinned(&root.join("keys"), "");
        let mgr_conf = keys::manager_conf(&root, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
        Ok(Env {
            bins,
            keys,
            mgr_conf,
            root,
            _tmp: tmp,
            token,
        })
    }

    /// A fresh directory under the temporary root.
    pub fn dir(&self, name: &str) -> Result<PathBuf, String> {
        let d = self.root.join(name);
        std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        Ok(d)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            sys::forget(t);
        }
    }
}

/// A second temporary directory on tmpfs (`/dev/shm`), for the comparison
/// runs with the state directory in memory; `None` when there is no tmpfs.
#[derive(Debug)]
pub struct ShmDir {
    dir: tempfile::TempDir,
    token: Option<sys::Token>,
}

impl ShmDir {
    pub fn new() -> Option<ShmDir> {
        let shm = Path::new("/dev/shm");
        if sys::fs_type(shm) != "tmpfs" {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("cmapp-bench-").tempdir_in(shm).ok()?;
        let token = Some(sys::register_temp_dir(dir.path()));
        Some(ShmDir { dir, token })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            sys::forget(t);
        }
    }
}

/// A running cmappserver; dropping it kills it and everything it started.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    pub state_dir: PathBuf,
    pub log: Lines,
    tokens: Vec<sys::Token>,
    /// Killed on purpose ([`Server::crash`]): its shims and applications
    /// are left running for the next server.
    crashed: bool,
}

impl Server {
    /// Writes a configuration in `dir` (plus `extra` lines) and starts a
    /// server with it; returns once it listens and is ready.
    pub fn start(env: &Env, dir: &Path, extra: &str) -> Result<Server, String> {
        Server::start_at(env, dir, extra, "127.0.0.1:0")
    }

    /// [`Server::start`] listening on `listen` (the address of a server
    /// that ran on the same directory before, for its managers to find).
    pub fn start_at(env: &Env, dir: &Path, extra: &str, listen: &str) -> Result<Server, String> {
        let state_dir = dir.join("state");
        let conf = dir.join("cmappserver.conf");
        let text = format!(
            "keyStore={}\ntrustStore={}\nstateDir={}\nlisten={listen}\n{extra}",
            env.keys.server_private.display(),
            env.keys.server_trust.display(),
            state_dir.display()
        );
        std::fs::write(&conf, text).map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        let mut child = Command::new(&env.bins.server)
            .arg("--conf")
            .arg(&conf)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", env.bins.server.display()))?;
        let pid = child.id();
        let tokens = vec![sys::register_pid(pid), sys::register_state_dir(&state_dir)];
        let log = Lines::default();
        if let Some(err) = child.stderr.take() {
            log.follow(err);
        }
        let mut s = Server {
            child: Some(child),
            pid,
            addr: "127.0.0.1:0".parse().expect("address"),
            state_dir,
            log,
            tokens,
            crashed: false,
        };
        let listening = s
            .log
            .wait_for("listening on ", WAIT)
            .ok_or_else(|| format!("cmappserver did not start listening; its log:\n{}", s.log.text()))?;
        s.addr = listening
            .rsplit("listening on ")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| format!("no address in {listening:?}"))?;
        s.log
            .wait_for("ready:", WAIT)
            .ok_or_else(|| format!("cmappserver did not become ready; its log:\n{}", s.log.text()))?;
        Ok(s)
    }

    /// `127.0.0.1:PORT`, for `-node`.
    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    /// Every process with a pid record in the state directory.
    pub fn recorded(&self) -> Vec<sys::Recorded> {
        sys::recorded(&self.state_dir)
    }

    /// SIGKILL, as a crash: waits for the exit and leaves the shims and
    /// applications running (a server started on the same directory
    /// adopts them).
    pub fn crash(mut self) -> Result<(), String> {
        let mut child = self.child.take().ok_or("server already stopped")?;
        let _ = child.kill();
        let waited = child.wait();
        self.crashed = true;
        for t in self.tokens.drain(..) {
            sys::forget(t);
        }
        waited
            .map(|_| ())
            .map_err(|e| format!("waitpid on the killed cmappserver: {e}"))
    }

    /// SIGTERM and wait for the exit (SIGKILL after `limit`); then kill the
    /// recorded shims and applications, which outlive the server by design.
    pub fn stop(mut self, limit: Duration) -> Result<ExitStatus, String> {
        let mut child = self.child.take().ok_or("server already stopped")?;
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let status = wait_child(&mut child, limit);
        let result = match status {
            Some(s) => Ok(s),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "cmappserver did not exit within {limit:?} of SIGTERM; its log:\n{}",
                    tail(&self.log, 20)
                ))
            }
        };
        sys::kill_recorded(&self.state_dir);
        for t in self.tokens.drain(..) {
            sys::forget(t);
        }
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.crashed {
            sys::kill_recorded(&self.state_dir);
        }
        for t in self.tokens.drain(..) {
            sys::forget(t);
        }
    }
}

/// The last `n` lines of a log, for error messages.
pub fn tail(log: &Lines, n: usize) -> String {
    let lines = log.snapshot();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits up to `limit` for a child to exit.
pub fn wait_child(c: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A running cmappmgr in the monitoring form, its stderr captured.
#[derive(Debug)]
pub struct Mgr {
    pub child: Child,
    pub pid: u32,
    pub err: Lines,
    token: Option<sys::Token>,
}

impl Mgr {
    /// `cmappmgr -node NODE -cmappserver_timeout T --conf CONF --no_syslog -service RUN...`
    pub fn spawn(env: &Env, node: &str, timeout_s: u32, run: &[String]) -> Result<Mgr, String> {
        let mut child = mgr_command(env, node, timeout_s, run)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", env.bins.mgr.display()))?;
        let pid = child.id();
        let token = Some(sys::register_pid(pid));
        let err = Lines::default();
        if let Some(e) = child.stderr.take() {
            err.follow(e);
        }
        Ok(Mgr { child, pid, err, token })
    }

    /// Waits for the "started <service> (pid N)" line; returns the pid.
    pub fn wait_started(&mut self) -> Result<u32, String> {
        match self.err.wait_for("started ", WAIT) {
            Some(line) => Ok(line
                .split("(pid ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)),
            None => Err(format!(
                "cmappmgr did not report its application started (status {:?}); its log:\n{}",
                self.child.try_wait().ok().flatten(),
                tail(&self.err, 20)
            )),
        }
    }

    /// Marks the manager reaped (after a successful wait).
    pub fn reaped(&mut self) {
        if let Some(t) = self.token.take() {
            sys::forget(t);
        }
    }
}

impl Drop for Mgr {
    fn drop(&mut self) {
        if self.token.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped();
        }
    }
}

/// The monitoring form's command line, with stdin closed.
pub fn mgr_command(env: &Env, node: &str, timeout_s: u32, run: &[String]) -> Command {
    let mut c = Command::new(&env.bins.mgr);
    c.arg("-node")
        .arg(node)
        .arg("-cmappserver_timeout")
        .arg(timeout_s.to_string())
        .arg("--conf")
        .arg(&env.mgr_conf)
        .arg("--no_syslog")
        // Halting a benchmark's manager stops its application (the footprint run checks it).
        .arg("-stop_on_halt")
        .arg("-service")
        .args(run)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    c
}
