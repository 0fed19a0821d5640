//! One-shot run against a handshake, side by side in the same run: the
//! whole-process time of
//!
//! ```text
//! cmappmgr -node 127.0.0.1:PORT --conf C -cmappserver_timeout 10 -service /bin/true
//! cmappmgr check --node 127.0.0.1:PORT --conf C
//! ```
//!
//! against the same running cmappserver, alternated (the order swapped every
//! round), each checked for its exit code (0, and `PROGRAM EXIT CODE 0` for
//! the run). `check` is process start, a full mutual-TLS handshake and a
//! ping; the run adds what starting a supervised process costs (the record,
//! the shim, the application's fork and exec, its exit coming back), so the
//! ratio of the two medians is the price of supervision over a bare
//! connection.

use std::process::{Command, Stdio};
use std::time::Instant;

use super::fixture::{Env, Server};
use super::roundtrip::median;

const WARM_UP: usize = 3;

#[derive(Debug)]
pub struct OneShot {
    /// Seconds per `-service /bin/true` run, sorted.
    pub run: Vec<f64>,
    /// Seconds per `check`, sorted.
    pub check: Vec<f64>,
}

impl OneShot {
    /// Median run over median check.
    pub fn ratio(&self) -> f64 {
        median(&self.run) / median(&self.check)
    }
}

pub fn run(env: &Env, server: &Server, runs: usize) -> Result<OneShot, String> {
    let node = server.node();
    let one_shot = || {
        let mut c = Command::new(&env.bins.mgr);
        c.arg("-node").arg(&node).arg("--conf").arg(&env.mgr_conf).args([
            "--no_syslog",
            "-cmappserver_timeout",
            "10",
            "-service",
            "/bin/true",
        ]);
        c
    };
    let check = || {
        let mut c = Command::new(&env.bins.mgr);
        c.args(["check", "--no_syslog", "--timeout", "10", "--node"])
            .arg(&node)
            .arg("--conf")
            .arg(&env.mgr_conf);
        c
    };
    let mut r = OneShot {
        run: Vec::with_capacity(runs),
        check: Vec::with_capacity(runs),
    };
    for i in 0..WARM_UP + runs {
        let run_first = i % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == run_first {
                let t = timed(one_shot(), "cmappmgr -service /bin/true", Some("PROGRAM EXIT CODE 0"))?;
                if i >= WARM_UP {
                    r.run.push(t);
                }
            } else {
                let t = timed(check(), "cmappmgr check", None)?;
                if i >= WARM_UP {
                    r.check.push(t);
                }
            }
        }
    }
    r.run.sort_by(f64::total_cmp);
    r.check.sort_by(f64::total_cmp);
    Ok(r)
}

/// Runs a command to its end; its time, once it exited 0 (and wrote `expect`
/// on stdout or stderr, when given).
fn timed(mut c: Command, what: &str, expect: Option<&str>) -> Result<f64, String> {
    c.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let out = c.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    let t = t0.elapsed().as_secs_f64();
    let text = cmapp_tests::stdout_and_stderr(&out);
    if !out.status.success() || expect.is_some_and(|e| !text.contains(e)) {
        return Err(format!("{what} failed: {} with output {:?}", out.status, text.trim()));
    }
    Ok(t)
}
