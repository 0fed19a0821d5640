//! A real cmappmgr run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::output::Lines;

/// A running cmappmgr with its output captured.
#[derive(Debug)]
pub struct Mgr {
    child: Child,
    pub out: Lines,
    pub err: Lines,
    status: Option<std::process::ExitStatus>,
}

/// The legacy monitoring form's arguments:
/// `-node NODE -cmappserver_timeout T --conf CONF --no_syslog [extra...] -service RUN...`.
pub fn monitor_args(conf: &Path, node: &str, timeout: f64, extra: &[&str], run: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-node".into(),
        node.into(),
        "-cmappserver_timeout".into(),
        timeout.to_string(),
    ];
    args.extend(["--conf".to_string(), conf.display().to_string(), "--no_syslog".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("-service".into());
    args.extend(run.iter().map(|s| s.to_string()));
    args
}

/// The pid in a cmappmgr log line such as "started SERVICE (pid 123) on NODE".
pub fn pid_in(line: &str) -> u32 {
    let at = line.find("(pid ").unwrap_or_else(|| panic!("no pid in {line:?}")) + 5;
    line[at..]
        .split(')')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

impl Mgr {
    /// The legacy monitoring form (see [`monitor_args`]).
    pub fn spawn(conf: &Path, node: &str, timeout: f64, extra: &[&str], run: &[&str]) -> Mgr {
        Self::spawn_args(&monitor_args(conf, node, timeout, extra, run))
    }

    /// Runs cmappmgr to completion (bounded by `limit`); returns its exit code and the run.
    pub fn run_in<S: AsRef<std::ffi::OsStr>>(netns: Option<&str>, args: &[S], limit: Duration) -> (i32, Mgr) {
        let mut m = Self::spawn_in(netns, args);
        let code = m.code_within(limit);
        (code, m)
    }

    /// Waits for a line containing `needle` on stderr or stdout; panics with both if none comes.
    pub fn expect_line(&self, needle: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            if let Some(l) = self.err.wait_for(needle, Duration::from_millis(50)) {
                return l;
            }
            if let Some(l) = self.out.wait_for(needle, Duration::ZERO) {
                return l;
            }
            assert!(
                Instant::now() < end,
                "cmappmgr printed no line with {needle:?} within {limit:?}; stdout:\n{}\nstderr:\n{}",
                self.out.text(),
                self.err.text()
            );
        }
    }

    /// cmappmgr with exactly these arguments.
    pub fn spawn_args<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Mgr {
        Self::spawn_in(None, args)
    }

    /// cmappmgr with these arguments, inside a network namespace if one is given.
    pub fn spawn_in<S: AsRef<std::ffi::OsStr>>(netns: Option<&str>, args: &[S]) -> Mgr {
        Self::spawn_env(netns, args, &[])
    }

    /// cmappmgr with these arguments and extra environment variables.
    pub fn spawn_env<S: AsRef<std::ffi::OsStr>>(netns: Option<&str>, args: &[S], env: &[(&str, &str)]) -> Mgr {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(crate::bin("cmappmgr"));
                c
            }
            None => Command::new(crate::bin("cmappmgr")),
        };
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cmappmgr");
        let out = Lines::default();
        out.follow(child.stdout.take().unwrap());
        let err = Lines::default();
        err.follow(child.stderr.take().unwrap());
        Mgr {
            child,
            out,
            err,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the manager to exit and returns its exit code (panics with its log if it does not).
    pub fn code(&mut self) -> i32 {
        self.code_within(crate::WAIT)
    }

    pub fn code_within(&mut self, limit: Duration) -> i32 {
        if self.status.is_none() {
            let end = Instant::now() + limit;
            while self.status.is_none() {
                self.status = self.child.try_wait().unwrap();
                if self.status.is_none() {
                    assert!(
                        Instant::now() < end,
                        "cmappmgr did not exit in {limit:?}; stderr:\n{}",
                        self.err.text()
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            self.err.wait_closed(crate::WAIT);
            self.out.wait_closed(crate::WAIT);
        }
        let s = self.status.unwrap();
        s.code()
            .unwrap_or_else(|| panic!("cmappmgr killed by a signal: {s:?}; stderr:\n{}", self.err.text()))
    }

    /// Waits up to `limit` for the manager to exit; its status (a signal
    /// included), or `None` if it still runs.
    pub fn status_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while self.status.is_none() && Instant::now() < end {
            self.status = self.child.try_wait().ok().flatten();
            if self.status.is_none() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.status
    }

    /// True while the manager runs.
    pub fn running(&mut self) -> bool {
        self.status.is_none() && self.child.try_wait().unwrap().is_none()
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }
}

impl Drop for Mgr {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
