//! A real cmappserver on `127.0.0.1:0`, and everything it started cleaned up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::keys::Keys;
use crate::output::Lines;
use crate::WAIT;

/// A running (or stopped, restartable) cmappserver.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub binary: PathBuf,
    pub addr: SocketAddr,
    pub conf: PathBuf,
    pub state_dir: PathBuf,
    /// stderr of the current run.
    pub log: Lines,
    /// Extra environment for the server process.
    pub env: Vec<(String, String)>,
    /// Network namespace to run in (`ip netns exec`).
    pub netns: Option<String>,
}

/// One recorded process, from the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub id: String,
    pub pid: u32,
    pub shim_pid: u32,
}

impl Server {
    /// Writes a configuration in `dir` and starts a server with it.
    /// `extra` is appended to the configuration file (our own keys).
    pub fn start(dir: &Path, keys: &Keys, extra: &str) -> Server {
        Self::start_bin(dir, keys, extra, crate::bin("cmappserver"))
    }

    pub fn start_bin(dir: &Path, keys: &Keys, extra: &str, binary: PathBuf) -> Server {
        Self::start_with(dir, keys, extra, binary, None, Vec::new())
    }

    /// [`Server::start`] with one more variable in cmappserver's environment
    /// (a debug-only `CMAPP_TEST_FAULT`, say), which its shims inherit.
    pub fn start_with_env(dir: &Path, keys: &Keys, var: &str, value: &str) -> Server {
        let env = vec![(var.to_string(), value.to_string())];
        Self::start_with(dir, keys, "", crate::bin("cmappserver"), None, env)
    }

    /// The general form: a binary, an optional network namespace, extra environment.
    pub fn start_with(
        dir: &Path,
        keys: &Keys,
        extra: &str,
        binary: PathBuf,
        netns: Option<String>,
        env: Vec<(String, String)>,
    ) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let state_dir = dir.join("state");
        let conf = dir.join("cmappserver.conf");
        let mut text = format!(
            "keyStore={}\ntrustStore={}\nstateDir={}\n",
            keys.server_private.display(),
            keys.server_trust.display(),
            state_dir.display()
        );
        if !extra.contains("listen=") {
            text.push_str("listen=127.0.0.1:0\n");
        }
        // The guest's output logs: never the machine's /var/log.
        if !extra.contains("outputLogDir=") {
            text.push_str(&format!("outputLogDir={}\n", dir.join("output").display()));
        }
        text.push_str(extra);
        std::fs::write(&conf, text).unwrap();
        let mut s = Server {
            child: None,
            binary,
            addr: "127.0.0.1:0".parse().unwrap(),
            conf,
            state_dir,
            log: Lines::default(),
            env,
            netns,
        };
        s.launch(&[]);
        s
    }

    fn launch(&mut self, args: &[String]) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("--conf")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.env("RUST_LOG", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start cmappserver");
        self.log = Lines::default();
        self.log.follow(child.stderr.take().unwrap());
        self.child = Some(child);
        let Some(line) = self.log.wait_for("listening on ", WAIT) else {
            let status = self.child.as_mut().unwrap().try_wait();
            panic!(
                "cmappserver did not start listening ({status:?}); its log:\n{}",
                self.log.text()
            );
        };
        self.addr = line
            .rsplit("listening on ")
            .next()
            .unwrap()
            .trim()
            .parse()
            .expect("listen address in log");
        self.log.wait_for("ready:", WAIT).expect("cmappserver ready");
    }

    /// `127.0.0.1:PORT`, for `-node`.
    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("server running")
    }

    /// SIGKILL the server (its processes keep running) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the server and wait for it to exit.
    pub fn term(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("server running");
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        wait_child(&mut c).unwrap_or_else(|| panic!("cmappserver did not exit on SIGTERM; log:\n{}", self.log.text()))
    }

    /// Starts the server again on the same address, configuration and state
    /// directory (optionally a different binary: an upgrade).
    pub fn restart(&mut self, binary: Option<PathBuf>) {
        assert!(self.child.is_none(), "stop the server first");
        if let Some(b) = binary {
            self.binary = b;
        }
        let addr = self.addr;
        self.launch(&["--listen".into(), addr.to_string()]);
    }

    /// Every process recorded in the state directory that has a pid record.
    pub fn recorded(&self) -> Vec<Recorded> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.state_dir.join("procs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(e.path().join("pid.json")) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            out.push(Recorded {
                id: e.file_name().to_string_lossy().into_owned(),
                pid: v["pid"].as_u64().unwrap() as u32,
                shim_pid: v["shim_pid"].as_u64().unwrap() as u32,
            });
        }
        out
    }
}

/// Waits (bounded by [`WAIT`]) for a child to exit.
pub fn wait_child(c: &mut Child) -> Option<ExitStatus> {
    let end = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Pids of the processes whose command line contains `needle`, and of their children.
fn shims_and_children(needle: &str) -> Vec<(u32, Vec<u32>)> {
    let mut procs: Vec<(u32, u32, String)> = Vec::new(); // pid, ppid, cmdline
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        procs.push((
            pid,
            ppid.unwrap_or(0),
            String::from_utf8_lossy(&cmdline).replace('\0', " "),
        ));
    }
    procs
        .iter()
        .filter(|(_, _, cmd)| cmd.contains(" shim ") && cmd.contains(needle))
        .map(|(shim, _, _)| {
            (
                *shim,
                procs
                    .iter()
                    .filter(|(_, pp, _)| pp == shim)
                    .map(|(p, _, _)| *p)
                    .collect(),
            )
        })
        .collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // Monitored processes outlive the server by design: end them here,
        // from the state directory's records and, should those be gone
        // already, from the process table.
        for r in self.recorded() {
            // Never 0 or 1 (a forged or unstarted record): kill(0) is our own group.
            if r.pid > 1 {
                let _ = killpg(Pid::from_raw(r.pid as i32), Signal::SIGKILL);
            }
            if r.shim_pid > 1 {
                let _ = kill(Pid::from_raw(r.shim_pid as i32), Signal::SIGKILL);
            }
        }
        for (shim, children) in shims_and_children(&self.state_dir.display().to_string()) {
            for c in children {
                let _ = killpg(Pid::from_raw(c as i32), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(shim as i32), Signal::SIGKILL);
        }
    }
}
