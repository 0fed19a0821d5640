//! Footprint at idle: resident memory of a fresh cmappserver, then of the
//! server, the shim and the manager while one manager watches a sleeping
//! application; and the release binaries' sizes. The manager is then
//! stopped with SIGTERM, which must stop the application and exit 0.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::fixture::{tail, wait_child, Env, Mgr, Server, WAIT};
use super::sys;

/// Time given to a process to settle before its memory is read.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Footprint {
    pub server_fresh_kb: u64,
    pub server_one_kb: u64,
    pub shim_kb: u64,
    pub mgr_kb: u64,
    pub server_bin: u64,
    pub mgr_bin: u64,
}

pub fn run(env: &Env, server: &Server) -> Result<Footprint, String> {
    std::thread::sleep(SETTLE);
    let rss = |pid: u32, what: &str| sys::rss_kb(pid).ok_or_else(|| format!("cannot read the memory of {what} {pid}"));
    let server_fresh_kb = rss(server.pid, "cmappserver")?;
    let run = vec!["/bin/sleep".to_string(), "100001".to_string()];
    let mut m = Mgr::spawn(env, &server.node(), 240, &run)?;
    let app = m.wait_started()?;
    std::thread::sleep(SETTLE);
    let rec = server
        .recorded()
        .into_iter()
        .find(|r| r.pid == app)
        .ok_or("the application has no pid record")?;
    let fp = Footprint {
        server_fresh_kb,
        server_one_kb: rss(server.pid, "cmappserver")?,
        shim_kb: rss(rec.shim_pid, "shim")?,
        mgr_kb: rss(m.pid, "cmappmgr")?,
        server_bin: size(&env.bins.server)?,
        mgr_bin: size(&env.bins.mgr)?,
    };
    // Halting the manager (-stop_on_halt) stops the application and exits 0.
    let _ = kill(Pid::from_raw(m.pid as i32), Signal::SIGTERM);
    let status = wait_child(&mut m.child, WAIT)
        .ok_or_else(|| format!("cmappmgr did not exit on SIGTERM; its log:\n{}", tail(&m.err, 20)))?;
    m.reaped();
    if status.code() != Some(0) {
        return Err(format!(
            "cmappmgr exited {status} on SIGTERM, 0 expected; its log:\n{}",
            tail(&m.err, 20)
        ));
    }
    if !sys::reap(app, Duration::from_secs(5)) {
        return Err(format!("the application {app} still runs after its manager stopped it"));
    }
    Ok(fp)
}

fn size(p: &std::path::Path) -> Result<u64, String> {
    std::fs::metadata(p)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", p.display()))
}
