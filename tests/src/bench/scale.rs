//! Scale: one cmappserver, N monitored processes and N connected managers
//! (each its own cmappmgr process watching `/bin/sleep <unique>`).
//!
//! - bring-up: from the first manager's spawn to the N-th "started" line;
//! - steady state: CPU (utime + stime over wall time) of cmappserver alone,
//!   and separately the sum over all shims and over all managers;
//! - memory: VmRSS of cmappserver, of the median shim and manager, and the
//!   PSS totals over all shims and managers (shared pages counted once);
//! - teardown: managers SIGKILLed, server SIGTERMed, shims and applications
//!   killed by the pids in `procs/*/pid.json`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::fixture::{mgr_command, Env, Server};
use super::sys;

/// The manager timeout of the scale run: the original's service entries use
/// 240 s; cmappmgr then pings every 5 s (a quarter of it, at most 5 s).
pub const MGR_TIMEOUT_S: u32 = 240;

#[derive(Debug)]
pub struct Scale {
    pub n: usize,
    pub up: Duration,
    pub window: Duration,
    /// Percent of one core.
    pub server_cpu: f64,
    pub shims_cpu: f64,
    pub mgrs_cpu: f64,
    pub server_rss_kb: u64,
    pub shim_rss_kb: u64,
    pub shims_pss_kb: u64,
    pub mgr_rss_kb: u64,
    pub mgrs_pss_kb: u64,
    pub teardown: Duration,
}

enum Note {
    Started(usize, Instant),
    /// The manager's stderr closed; its last lines.
    Closed(usize, Vec<String>),
}

/// Managers killed and reaped on drop, whatever happens.
struct Managers {
    children: Vec<(Child, Option<sys::Token>)>,
}

impl Managers {
    fn kill_all(&mut self) {
        for (c, _) in &self.children {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
        }
        for (c, t) in &mut self.children {
            let _ = c.wait();
            if let Some(t) = t.take() {
                sys::forget(t);
            }
        }
        self.children.clear();
    }
}

impl Drop for Managers {
    fn drop(&mut self) {
        self.kill_all();
    }
}

pub fn run(env: &Env, n: usize, window: Duration, settle: Duration) -> Result<Scale, String> {
    let dir = env.dir("scale")?;
    let server = Server::start(
        env,
        &dir,
        &format!(
            "maxProcesses={}\nmaxConnections={}\nexitHistory={}\n",
            n + 16,
            2 * n + 64,
            n + 16
        ),
    )?;
    let node = server.node();
    let (tx, rx) = mpsc::channel::<Note>();
    let mut mgrs = Managers {
        children: Vec::with_capacity(n),
    };
    let t0 = Instant::now();
    for i in 0..n {
        let run = vec!["/bin/sleep".to_string(), (100_000 + i).to_string()];
        let mut child = mgr_command(env, &node, MGR_TIMEOUT_S, &run)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start cmappmgr #{i}: {e}"))?;
        let token = sys::register_pid(child.id());
        let err = child.stderr.take().ok_or("no stderr pipe")?;
        mgrs.children.push((child, Some(token)));
        let tx = tx.clone();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut last = Vec::new();
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("started ") {
                        let _ = tx.send(Note::Started(i, Instant::now()));
                    }
                    if last.len() == 10 {
                        last.remove(0);
                    }
                    last.push(line);
                }
                let _ = tx.send(Note::Closed(i, last));
            })
            .map_err(|e| format!("cannot start a reader thread: {e}"))?;
    }
    drop(tx);
    let mut started = vec![false; n];
    let mut count = 0;
    let mut last_started = t0;
    let limit = Duration::from_secs(120);
    while count < n {
        let left = limit.saturating_sub(t0.elapsed());
        match rx.recv_timeout(left) {
            Ok(Note::Started(i, at)) => {
                if !started[i] {
                    started[i] = true;
                    count += 1;
                    last_started = last_started.max(at);
                }
            }
            Ok(Note::Closed(i, last)) if !started[i] => {
                return Err(format!(
                    "cmappmgr #{i} ended before its application started; its log:\n{}",
                    last.join("\n")
                ))
            }
            Ok(Note::Closed(..)) => {}
            Err(_) => {
                return Err(format!(
                    "only {count} of {n} applications started within {limit:?}; cmappserver's log ends:\n{}",
                    super::fixture::tail(&server.log, 10)
                ))
            }
        }
    }
    let up = last_started - t0;
    let recorded = server.recorded();
    if recorded.len() != n {
        return Err(format!(
            "{} processes recorded in the state directory, {n} expected",
            recorded.len()
        ));
    }
    let shims: Vec<u32> = recorded.iter().map(|r| r.shim_pid).collect();
    let mgr_pids: Vec<u32> = mgrs.children.iter().map(|(c, _)| c.id()).collect();

    std::thread::sleep(settle);
    let cpu = |pids: &[u32]| pids.iter().filter_map(|p| sys::cpu_ns(*p)).sum::<u64>();
    let (s0, sh0, m0) = (sys::cpu_ns(server.pid).unwrap_or(0), cpu(&shims), cpu(&mgr_pids));
    let w0 = Instant::now();
    std::thread::sleep(window);
    let (s1, sh1, m1) = (sys::cpu_ns(server.pid).unwrap_or(0), cpu(&shims), cpu(&mgr_pids));
    let wall = w0.elapsed().as_secs_f64();
    let pct = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9 / wall * 100.0;

    // Every manager must still be watching: none may have given up.
    for (c, _) in &mut mgrs.children {
        if let Ok(Some(s)) = c.try_wait() {
            return Err(format!("cmappmgr {} exited ({s}) during the steady state", c.id()));
        }
    }
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let result = Scale {
        n,
        up,
        window: w0.elapsed(),
        server_cpu: pct(s0, s1),
        shims_cpu: pct(sh0, sh1),
        mgrs_cpu: pct(m0, m1),
        server_rss_kb: sys::rss_kb(server.pid).unwrap_or(0),
        shim_rss_kb: median(shims.iter().filter_map(|p| sys::rss_kb(*p)).collect()),
        shims_pss_kb: shims.iter().filter_map(|p| sys::pss_kb(*p)).sum(),
        mgr_rss_kb: median(mgr_pids.iter().filter_map(|p| sys::rss_kb(*p)).collect()),
        mgrs_pss_kb: mgr_pids.iter().filter_map(|p| sys::pss_kb(*p)).sum(),
        teardown: Duration::ZERO,
    };

    let td = Instant::now();
    mgrs.kill_all();
    let stopped = server.stop(Duration::from_secs(20));
    let teardown = td.elapsed();
    stopped?;
    Ok(Scale { teardown, ..result })
}
