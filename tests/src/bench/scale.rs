//! Scale: one cmappserver, N monitored processes and N connected managers
//! (each its own cmappmgr process watching `/bin/sleep <unique>`).
//!
//! - bring-up: from the first manager's spawn to the N-th "started" line;
//! - steady state: CPU (utime + stime over wall time) of cmappserver alone,
//!   and separately the sum over all shims and over all managers;
//! - memory: VmRSS of cmappserver, of the median shim and manager, and the
//!   PSS totals over all shims (with the zygote that forked them) and
//!   managers (shared pages counted once); the
//!   median manager's and the median shim's Private_Dirty (what each one
//!   costs on its own, which no sharing divides);
//! - wake-ups: how often a manager is put on a CPU per minute (schedstat),
//!   the mean over all of them, and the most threads any manager has;
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
    /// The zygote's PSS (it forks the shims: one per cmappserver), if one runs.
    pub zygote_pss_kb: Option<u64>,
    /// The median shim's private dirty memory.
    pub shim_private_kb: u64,
    pub mgr_rss_kb: u64,
    pub mgrs_pss_kb: u64,
    /// Median over the managers of their Private_Dirty, KiB.
    pub mgr_private_kb: u64,
    /// Where the median manager's private dirty memory is.
    pub mgr_private_places: sys::PrivateDirty,
    /// Wake-ups per minute of one manager, the mean over all of them.
    pub mgr_wakeups_per_min: f64,
    /// The most threads any manager has.
    pub mgr_threads: u64,
    pub teardown: Duration,
}

/// What a manager's stderr reader reports.
pub(super) enum Note {
    /// The "started …" line: its application runs.
    Started(usize, Instant),
    /// A "re-attached to …" line: back after a lost connection.
    Reattached(usize, Instant),
    /// The manager's stderr closed; its last lines.
    Closed(usize, Vec<String>),
}

/// Managers killed and reaped on drop, whatever happens.
pub(super) struct Managers {
    pub children: Vec<(Child, Option<sys::Token>)>,
}

impl Managers {
    pub fn kill_all(&mut self) {
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

    /// The manager that has exited, if any (none may, while they watch).
    pub fn any_exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(c, _)| Some(format!("cmappmgr {} exited ({})", c.id(), c.try_wait().ok()??)))
    }
}

impl Drop for Managers {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The server configuration for `n` processes and managers.
pub(super) fn server_conf(n: usize) -> String {
    format!(
        "maxProcesses={}\nmaxConnections={}\nexitHistory={}\n",
        n + 16,
        2 * n + 64,
        n + 16
    )
}

/// Starts `n` managers, each watching `/bin/sleep <unique>`, with a thread
/// per manager reading its stderr into `Note`s.
pub(super) fn spawn_managers(env: &Env, node: &str, n: usize) -> Result<(Managers, mpsc::Receiver<Note>), String> {
    let (tx, rx) = mpsc::channel::<Note>();
    let mut mgrs = Managers {
        children: Vec::with_capacity(n),
    };
    for i in 0..n {
        let run = vec!["/bin/sleep".to_string(), (100_000 + i).to_string()];
        let mut child = mgr_command(env, node, MGR_TIMEOUT_S, &run)
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
                    if line.contains("re-attached to ") {
                        let _ = tx.send(Note::Reattached(i, Instant::now()));
                    } else if line.contains("started ") {
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
    Ok((mgrs, rx))
}

/// Waits until each of the `n` managers has sent the note `wanted` picks
/// (`what` names it in errors); returns the instant of each, by manager.
/// A manager that ends first is an error, with its last lines.
pub(super) fn wait_each(
    rx: &mpsc::Receiver<Note>,
    n: usize,
    limit: Duration,
    what: &str,
    server: &Server,
    wanted: impl Fn(&Note) -> Option<(usize, Instant)>,
) -> Result<Vec<Instant>, String> {
    let t0 = Instant::now();
    let mut at: Vec<Option<Instant>> = vec![None; n];
    let mut count = 0;
    while count < n {
        let left = limit.saturating_sub(t0.elapsed());
        match rx.recv_timeout(left) {
            Ok(note) => {
                if let Some((i, when)) = wanted(&note) {
                    if at[i].is_none() {
                        at[i] = Some(when);
                        count += 1;
                    }
                } else if let Note::Closed(i, last) = note {
                    if at[i].is_none() {
                        return Err(format!(
                            "cmappmgr #{i} ended before {what}; its log:\n{}",
                            last.join("\n")
                        ));
                    }
                }
            }
            Err(_) => {
                return Err(format!(
                    "only {count} of {n} managers {what} within {limit:?}; cmappserver's log ends:\n{}",
                    super::fixture::tail(&server.log, 10)
                ))
            }
        }
    }
    Ok(at.into_iter().flatten().collect())
}

/// Waits for every manager's "started" line (2 minutes at most); returns
/// the instant of each.
pub(super) fn wait_started(rx: &mpsc::Receiver<Note>, n: usize, server: &Server) -> Result<Vec<Instant>, String> {
    wait_each(
        rx,
        n,
        Duration::from_secs(120),
        "had their application started",
        server,
        |note| match note {
            Note::Started(i, at) => Some((*i, *at)),
            _ => None,
        },
    )
}

pub fn run(env: &Env, n: usize, window: Duration, settle: Duration) -> Result<Scale, String> {
    let dir = env.dir("scale")?;
    let server = Server::start(env, &dir, &server_conf(n))?;
    let node = server.node();
    let t0 = Instant::now();
    let (mut mgrs, rx) = spawn_managers(env, &node, n)?;
    let started = wait_started(&rx, n, &server)?;
    let last_started = started.iter().copied().max().unwrap_or(t0);
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
    let wakeups = |pids: &[u32]| pids.iter().filter_map(|p| sys::wakeups(*p)).sum::<u64>();
    let (s0, sh0, m0) = (sys::cpu_ns(server.pid).unwrap_or(0), cpu(&shims), cpu(&mgr_pids));
    let mw0 = wakeups(&mgr_pids);
    let w0 = Instant::now();
    std::thread::sleep(window);
    let (s1, sh1, m1) = (sys::cpu_ns(server.pid).unwrap_or(0), cpu(&shims), cpu(&mgr_pids));
    let mw1 = wakeups(&mgr_pids);
    let wall = w0.elapsed().as_secs_f64();
    let pct = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9 / wall * 100.0;

    // Every manager must still be watching: none may have given up.
    if let Some(gone) = mgrs.any_exited() {
        return Err(format!("{gone} during the steady state"));
    }
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let mut by_private: Vec<(u64, u32)> = mgr_pids
        .iter()
        .filter_map(|p| Some((sys::private_dirty_kb(*p)?, *p)))
        .collect();
    by_private.sort_unstable();
    let mgr_private_places = by_private
        .get(by_private.len() / 2)
        .and_then(|(_, p)| sys::private_dirty_by_place(*p))
        .unwrap_or_default();
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
        zygote_pss_kb: sys::zygote_of(server.pid).and_then(sys::pss_kb),
        shim_private_kb: median(shims.iter().filter_map(|p| sys::private_dirty_kb(*p)).collect()),
        mgr_rss_kb: median(mgr_pids.iter().filter_map(|p| sys::rss_kb(*p)).collect()),
        mgrs_pss_kb: mgr_pids.iter().filter_map(|p| sys::pss_kb(*p)).sum(),
        mgr_private_kb: median(mgr_pids.iter().filter_map(|p| sys::private_dirty_kb(*p)).collect()),
        mgr_private_places,
        mgr_wakeups_per_min: mw1.saturating_sub(mw0) as f64 / n as f64 / wall * 60.0,
        mgr_threads: mgr_pids.iter().filter_map(|p| sys::threads(*p)).max().unwrap_or(0),
        teardown: Duration::ZERO,
    };

    let td = Instant::now();
    mgrs.kill_all();
    let stopped = server.stop(Duration::from_secs(20));
    let teardown = td.elapsed();
    stopped?;
    Ok(Scale { teardown, ..result })
}
