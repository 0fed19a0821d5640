//! Reconnect storm: N managers attached to N processes, cmappserver killed
//! with SIGKILL and started again on the same state directory and address.
//!
//! The new server adopts the N shims (their applications never stopped),
//! and every manager, which lost its connection at the kill, reconnects and
//! re-attaches by instance id, saying "re-attached to …" on its stderr.
//! Measured from the instant the new server is spawned: when it is ready
//! (adoption done, listening), and when the first, the median and the last
//! manager re-attached. Every manager must re-attach; none may exit.

use std::time::{Duration, Instant};

use super::fixture::{Env, Server};
use super::scale::{self, Note};
use super::sys;

#[derive(Debug)]
pub struct Storm {
    pub n: usize,
    /// From the new server's spawn to its "ready" line.
    pub ready: Duration,
    /// From the new server's spawn to each manager's re-attachment, sorted.
    pub reattached: Vec<Duration>,
    /// Unauthenticated connections the new server shed to make room
    /// (`maxPendingConnections`): each is a manager that must try again.
    pub shed: u64,
}

impl Storm {
    pub fn last(&self) -> Duration {
        self.reattached.last().copied().unwrap_or_default()
    }

    /// The `p`-th percentile (0–100) of the re-attachment times.
    pub fn percentile(&self, p: f64) -> Duration {
        let ns: Vec<u64> = self.reattached.iter().map(|d| d.as_nanos() as u64).collect();
        Duration::from_nanos(super::latency::percentile(&ns, p))
    }
}

pub fn run(env: &Env, n: usize) -> Result<Storm, String> {
    let dir = env.dir("storm")?;
    // A summary of shed connections every second, to count them.
    let conf = format!("{}handshakeLogInterval=1\n", scale::server_conf(n));
    let server = Server::start(env, &dir, &conf)?;
    let node = server.node();
    let (mut mgrs, rx) = scale::spawn_managers(env, &node, n)?;
    scale::wait_started(&rx, n, &server)?;
    // Settled: every manager has connected and launched; none is mid-call.
    std::thread::sleep(Duration::from_millis(500));

    let state_dir = server.state_dir.clone();
    let pids = |s: &Server| {
        let mut v: Vec<u32> = s.recorded().iter().map(|r| r.pid).collect();
        v.sort_unstable();
        v
    };
    let before = pids(&server);
    server.crash()?;
    let t0 = Instant::now();
    let server = match Server::start_at(env, &dir, &conf, &node) {
        Ok(s) => s,
        Err(e) => {
            sys::kill_recorded(&state_dir);
            return Err(format!("cmappserver did not come back after the kill: {e}"));
        }
    };
    let ready = t0.elapsed();
    let at = scale::wait_each(
        &rx,
        n,
        Duration::from_secs(60),
        "re-attached",
        &server,
        |note| match note {
            Note::Reattached(i, at) => Some((*i, *at)),
            _ => None,
        },
    )?;
    let mut reattached: Vec<Duration> = at.iter().map(|a| a.saturating_duration_since(t0)).collect();
    reattached.sort_unstable();
    if let Some(gone) = mgrs.any_exited() {
        return Err(format!("{gone} after the restart"));
    }
    // The same applications, adopted: none restarted, none lost.
    if pids(&server) != before || before.len() != n {
        return Err(format!(
            "{} applications recorded before the kill and {} after, {n} expected, the same ones",
            before.len(),
            pids(&server).len()
        ));
    }
    // The last summary of shed connections is at most a second away.
    std::thread::sleep(Duration::from_millis(1200));
    let shed = server
        .log
        .snapshot()
        .iter()
        .filter_map(|l| l.split("shed ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum();
    mgrs.kill_all();
    server.stop(Duration::from_secs(20))?;
    Ok(Storm {
        n,
        ready,
        reattached,
        shed,
    })
}
