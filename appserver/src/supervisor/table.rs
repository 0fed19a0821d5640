//! The table of monitored processes: each process's record in memory, who
//! is attached to it, its exit, and who still owes an acknowledgement of
//! that exit; and the rules by which a record is forgotten.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::message::{
    ErrorKind, ErrorReply, Event, Exited, Forward, InstanceId, Output, ProcessInfo, Started, Stream,
};
use common::service::ServiceSpec;
use tokio::sync::mpsc;

use super::output::OutputMeta;
use super::proto::ShimRequest;
use super::{err, state, Subscriber, Supervisor, DEPARTED_KEPT};

/// One monitored process.
#[derive(Debug)]
pub struct Proc {
    pub id: InstanceId,
    pub key: String,
    pub display: String,
    /// What runs, as parsed at the launch (or adopted from the record).
    pub service: ServiceSpec,
    pub dir: PathBuf,
    pub pid: u32,
    pub started_at_ms: u64,
    /// Where the shim puts the output in the guest (`None`: a version 1 shim).
    pub output: Option<OutputMeta>,
    pub(super) inner: Mutex<ProcInner>,
}

#[derive(Debug, Default)]
pub(super) struct ProcInner {
    pub(super) exit: Option<Exited>,
    /// The managers attached now, one connection each.
    pub(super) subscribers: Vec<Subscriber>,
    /// Managers whose connection closed, and when (at most [`DEPARTED_KEPT`]).
    pub(super) departed: Vec<(Arc<str>, tokio::time::Instant)>,
    /// Managers that still have to acknowledge the exit (set at the exit).
    pub(super) owed: Vec<Arc<str>>,
    /// A manager has acknowledged the exit.
    pub(super) acked: bool,
    /// Requests to the shim; `None` when no shim is reachable.
    pub(super) link: Option<mpsc::Sender<ShimRequest>>,
    /// The rate limits of the subscribers (by session) that asked for every line.
    pub(super) forwards: Vec<(u64, RateLimit)>,
    /// Output lines not forwarded (rate limit, or a slow manager).
    pub(super) forward_dropped: u64,
    /// Output lines the shim could not write to the guest log.
    pub(super) log_dropped: u64,
    /// Lines each subscriber (by session) lost because its queue was full
    /// and has not been told of yet.
    pub(super) untold: HashMap<u64, u64>,
}

/// A token bucket over lines and bytes, one second deep, with the count of
/// lines dropped since the last summary line.
#[derive(Debug)]
pub(super) struct RateLimit {
    limit: Forward,
    lines: f64,
    bytes: f64,
    at: tokio::time::Instant,
    pending: u64,
    summary_at: tokio::time::Instant,
}

impl RateLimit {
    fn new(limit: Forward) -> RateLimit {
        let now = tokio::time::Instant::now();
        RateLimit {
            limit,
            lines: f64::from(limit.lines_per_sec.max(1)),
            bytes: limit.bytes_per_sec.max(1) as f64,
            at: now,
            pending: 0,
            summary_at: now,
        }
    }

    /// True when a line of `len` bytes may go now.
    fn admit(&mut self, len: usize) -> bool {
        let now = tokio::time::Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        let (max_l, max_b) = (
            f64::from(self.limit.lines_per_sec.max(1)),
            self.limit.bytes_per_sec.max(1) as f64,
        );
        self.lines = (self.lines + dt * max_l).min(max_l);
        self.bytes = (self.bytes + dt * max_b).min(max_b);
        let cost = (len + 1) as f64;
        if self.lines >= 1.0 && self.bytes >= cost.min(max_b) {
            self.lines -= 1.0;
            self.bytes -= cost;
            true
        } else {
            false
        }
    }

    /// The summary of the lines dropped since the last one, if it is due
    /// (once a second while dropping, or `now`); `sent` resets the count
    /// once the summary is out (a summary that did not fit is tried again).
    fn summary(&mut self, now: bool, sent: impl FnOnce(String) -> bool) {
        if self.pending == 0 || (!now && self.summary_at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let line = format!(
            "[cmappserver: {} output lines not forwarded: over the rate limit of {} lines/s, {} bytes/s; the guest's log has them]",
            self.pending, self.limit.lines_per_sec, self.limit.bytes_per_sec
        );
        if sent(line) {
            self.pending = 0;
            self.summary_at = tokio::time::Instant::now();
        }
    }
}

impl Proc {
    pub(super) fn is_running(&self) -> bool {
        self.lock().exit.is_none()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ProcInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn info(&self) -> ProcessInfo {
        let inner = self.lock();
        ProcessInfo {
            id: self.id.clone(),
            key: self.key.clone(),
            service: self.display.clone(),
            name: self.service.name.clone(),
            pid: self.pid,
            started_at_ms: self.started_at_ms,
            exit: inner.exit.as_ref().map(|e| e.status.clone()),
            attached: inner.subscribers.iter().any(|s| !s.tx.is_closed()),
            managers: inner.subscribers.iter().filter(|s| !s.tx.is_closed()).count(),
            acked: inner.acked,
            probe: self.service.probe,
            output: Some(self.describe_output(&inner)),
            log_dropped: inner.log_dropped,
            forward_dropped: inner.forward_dropped,
        }
    }

    fn describe_output(&self, inner: &ProcInner) -> String {
        let guest = match &self.output {
            Some(o) => format!("{}; last {} lines with the exit", o.describe(), o.tail_lines),
            None => "every line to cmappmgr (started by an older cmappserver)".into(),
        };
        let forwarded: Vec<String> = inner
            .forwards
            .iter()
            .filter(|(s, _)| inner.subscribers.iter().any(|sub| sub.session == *s))
            .map(|(_, f)| format!("{} lines/s, {} bytes/s", f.limit.lines_per_sec, f.limit.bytes_per_sec))
            .collect();
        match forwarded.len() {
            0 => guest,
            1 => format!("{guest}; forwarded to cmappmgr ({})", forwarded[0]),
            n => format!("{guest}; forwarded to {n} cmappmgrs ({})", forwarded.join("; ")),
        }
    }

    /// Adds `sub` to the process's subscribers (replacing an older connection
    /// of the same manager) and returns the reply to send it; `forward` says
    /// whether it gets every line (within a rate limit).
    pub(super) fn attach(&self, sub: Subscriber, attached: bool, forward: Option<Forward>) -> Started {
        let mut inner = self.lock();
        inner.departed.retain(|(m, _)| *m != sub.manager);
        // A shim of version 1 keeps no tail: its output is forwarded as it was.
        let forward = forward.or(self.output.is_none().then_some(Forward {
            lines_per_sec: u32::MAX,
            bytes_per_sec: u64::MAX,
        }));
        // One rate limit per connection; those of connections gone are dropped.
        let session = sub.session;
        let mut forwards = std::mem::take(&mut inner.forwards);
        forwards.retain(|(s, _)| *s != session && inner.subscribers.iter().any(|sub| sub.session == *s));
        forwards.extend(forward.map(|f| (session, RateLimit::new(f))));
        inner.forwards = forwards;
        let exited = inner.exit.clone();
        if let Some(ex) = &exited {
            // The reply goes out first (the session writes it before reading
            // its queue), so the manager sees Started, then Exited.
            let _ = sub.tx.try_send(Event::Exited(ex.clone()));
        }
        match inner.subscribers.iter().position(|s| s.manager == sub.manager) {
            // The same manager again: a new connection replaces its old one.
            Some(i) => inner.subscribers[i] = sub,
            None => {
                let manager = sub.manager.clone();
                inner.subscribers.push(sub);
                let n = inner.subscribers.len();
                if n > 1 {
                    tracing::info!(service = %self.display, "{manager} attached to {}; {}", self.display, watching(n));
                }
                // For a restarted cmappserver: whom an exit is owed to.
                let mut managers: Vec<String> = inner.subscribers.iter().map(|s| s.manager.to_string()).collect();
                managers.extend(inner.departed.iter().map(|(m, _)| m.to_string()));
                if let Err(e) = state::write_json(&self.dir, state::MANAGERS, &state::Managers { managers }) {
                    tracing::warn!(service = %self.display, "cannot record the managers watching {}: {e}", self.display);
                }
            }
        }
        Started {
            id: self.id.clone(),
            service: self.display.clone(),
            pid: self.pid,
            started_at_ms: self.started_at_ms,
            attached,
            exited: exited.is_some(),
        }
    }

    /// Forwards one output line to every subscriber that asked for every
    /// line, each within its rate limit, never waiting. Lines over the limit
    /// are counted and summarised once a second; lines that do not fit a
    /// subscriber's queue are dropped and counted, and that manager is told
    /// how many, and why, as soon as its queue has room again.
    pub(super) fn output(&self, stream: Stream, line: String) {
        self.forward(stream, line, true);
    }

    /// A notice of cmappserver's own (lines lost on the way), to every
    /// manager that gets every line: never held to the rate limit, which
    /// would lose the count it carries.
    pub(super) fn notice(&self, line: String) {
        self.forward(Stream::Stderr, line, false);
    }

    fn forward(&self, stream: Stream, line: String, limited: bool) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let ev = |stream, line: String| {
            Event::Output(Output {
                id: self.id.clone(),
                stream,
                line,
            })
        };
        let mut lost = 0u64;
        for sub in &inner.subscribers {
            let Some((_, limit)) = inner.forwards.iter_mut().find(|(s, _)| *s == sub.session) else {
                continue;
            };
            if limited && !limit.admit(line.len()) {
                limit.pending += 1;
                inner.forward_dropped += 1;
                limit.summary(false, |l| sub.tx.try_send(ev(Stream::Stderr, l)).is_ok());
                continue;
            }
            limit.summary(true, |l| sub.tx.try_send(ev(Stream::Stderr, l)).is_ok());
            let untold = inner.untold.entry(sub.session).or_default();
            if *untold > 0 && sub.tx.try_send(ev(Stream::Stderr, slow_notice(*untold))).is_ok() {
                *untold = 0;
            }
            if sub.tx.try_send(ev(stream, line.clone())).is_err() {
                *untold += 1;
                lost += 1;
            }
        }
        let subscribers = &inner.subscribers;
        inner
            .untold
            .retain(|session, n| *n > 0 && subscribers.iter().any(|s| s.session == *session));
        for _ in 0..lost {
            inner.forward_dropped += 1;
            if inner.forward_dropped.is_power_of_two() {
                tracing::warn!(service = %self.display, dropped = inner.forward_dropped, "cmappmgr reads output slower than the application writes it; output lines dropped");
            }
        }
    }

    /// The shim's guest log dropped lines (a running total).
    pub(super) fn log_dropped(&self, total: u64) {
        let mut inner = self.lock();
        if total > inner.log_dropped {
            inner.log_dropped = total;
            tracing::warn!(service = %self.display, dropped = total, "output lines not written to the guest's log: the disk did not keep up");
        }
    }

    /// The pending notices of lines not forwarded (over the rate limit, or
    /// lost to a full queue), sent before the exit.
    pub(super) fn flush_summary(&self) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        for sub in &inner.subscribers {
            let send = |line| {
                sub.tx
                    .try_send(Event::Output(Output {
                        id: self.id.clone(),
                        stream: Stream::Stderr,
                        line,
                    }))
                    .is_ok()
            };
            if let Some((_, limit)) = inner.forwards.iter_mut().find(|(s, _)| *s == sub.session) {
                limit.summary(true, send);
            }
            if let Some(untold) = inner.untold.get_mut(&sub.session) {
                if *untold > 0 && send(slow_notice(*untold)) {
                    *untold = 0;
                }
            }
        }
    }
}

/// The line a manager gets in place of output lines its queue had no room for.
fn slow_notice(lines: u64) -> String {
    format!("[cmappserver: {lines} output lines dropped: cmappmgr read them slower than the application wrote them]")
}

/// The line a manager gets in place of output lines its process's shim had to drop.
pub(super) fn dropped_notice(lines: u64, unconnected: Option<u64>) -> String {
    let Some(unconnected) = unconnected else {
        return format!("[cmappserver: {lines} output lines dropped by the process's supervisor (an older build, which does not say why)]");
    };
    let slow = lines.saturating_sub(unconnected);
    let mut why = Vec::new();
    if slow > 0 {
        why.push(format!(
            "{slow} because cmappserver took them slower than the application wrote them"
        ));
    }
    if unconnected > 0 {
        why.push(format!("{unconnected} while no cmappserver was running"));
    }
    format!("[cmappserver: {lines} output lines dropped: {}]", why.join(", "))
}

#[derive(Debug, Default)]
pub(super) struct Table {
    /// The current process of each service: running, or exited and not yet
    /// acknowledged by any manager.
    pub(super) by_key: HashMap<String, Arc<Proc>>,
    /// Exits acknowledged by one manager and still owed to others, by id.
    pub(super) lingering: HashMap<InstanceId, Arc<Proc>>,
    /// Exited processes in the order they ended, for the history bound.
    pub(super) exited: VecDeque<Arc<Proc>>,
    pub(super) shutting_down: bool,
    /// Launches past the limit check whose process is not in `by_key` yet.
    pub(super) spawning: usize,
}

impl Supervisor {
    /// Records an exit, notes which managers owe an acknowledgement, and
    /// tells every subscriber.
    pub(super) async fn record_exit(&self, proc: &Arc<Proc>, ex: Exited) {
        let subs = {
            let mut inner = proc.lock();
            if inner.exit.is_some() {
                return;
            }
            inner.exit = Some(ex.clone());
            inner.link = None;
            let wait = self.limits.ack_wait;
            inner.departed.retain(|(_, at)| at.elapsed() < wait);
            let mut owed: Vec<Arc<str>> = inner.subscribers.iter().map(|s| s.manager.clone()).collect();
            owed.extend(inner.departed.iter().map(|(m, _)| m.clone()));
            inner.owed = owed;
            inner.subscribers.clone()
        };
        tracing::info!(service = %proc.display, pid = proc.pid, "{}", ex.status);
        self.table().exited.push_back(proc.clone());
        self.enforce_history();
        proc.flush_summary();
        for sub in subs {
            let ev = Event::Exited(ex.clone());
            if let Err(mpsc::error::TrySendError::Full(ev)) = sub.tx.try_send(ev) {
                // Waits for room: an exit is never dropped, and one slow
                // manager does not hold up the others.
                tokio::spawn(async move {
                    let _ = sub.tx.send(ev).await;
                });
            }
        }
    }

    /// Drops the oldest uncollected exit statuses beyond `exitHistory`.
    pub(super) fn enforce_history(&self) {
        let mut table = self.table();
        while table.exited.len() > self.limits.exit_history {
            let Some(old) = table.exited.pop_front() else {
                break;
            };
            if forget(&mut table, &old) {
                tracing::warn!(
                    service = %old.display,
                    "dropping the uncollected exit status of {} ({} kept at most)",
                    old.display,
                    self.limits.exit_history
                );
                self.remove_later(old.dir.clone());
            }
        }
    }

    /// `manager` has the exit status of `id`. The record goes once every
    /// manager that owes an acknowledgement has given it; until then a new
    /// launch of the service starts afresh and the record stays by id.
    pub fn ack(&self, id: &str, manager: &str) -> Result<(), ErrorReply> {
        let mut table = self.table();
        let current = table.by_key.values().find(|p| p.id == id);
        let Some(proc) = current.or_else(|| table.lingering.get(id)).cloned() else {
            return Ok(()); // already forgotten: acknowledging twice is harmless
        };
        let done = {
            let mut inner = proc.lock();
            if inner.exit.is_none() {
                return Err(err(ErrorKind::BadRequest, format!("{} is still running", proc.display)));
            }
            inner.acked = true;
            inner.owed.retain(|m| &**m != manager);
            inner.owed.is_empty()
        };
        if done {
            forget(&mut table, &proc);
            drop(table);
            // Off the reply path: the manager exits on the reply, and removing a
            // directory can wait on the disk (ids are unique; nothing reuses it).
            self.remove_later(proc.dir.clone());
        } else if table.by_key.get(&proc.key).is_some_and(|p| Arc::ptr_eq(p, &proc)) {
            table.by_key.remove(&proc.key);
            table.lingering.insert(proc.id.clone(), proc);
        }
        Ok(())
    }

    /// Detaches a closed session from every process it was attached to; its
    /// manager is remembered as departed (see [`Supervisor::sweep`]).
    pub fn detach(&self, session: u64) {
        let now = tokio::time::Instant::now();
        for p in self.all() {
            let mut inner = p.lock();
            let Some(i) = inner.subscribers.iter().position(|s| s.session == session) else {
                continue;
            };
            let gone = inner.subscribers.remove(i);
            if inner.departed.len() == DEPARTED_KEPT {
                inner.departed.remove(0);
            }
            inner.departed.push((gone.manager.clone(), now));
            let n = inner.subscribers.len();
            if n > 0 {
                tracing::info!(service = %p.display, "{} left {}; {}", gone.manager, p.display, watching(n));
            }
        }
    }

    /// Stops waiting for managers that owe an acknowledgement but whose
    /// connection closed `ack_wait` ago or more (or who never came back
    /// after a restart of cmappserver), and forgets the records nobody is
    /// owed any more. Runs periodically (see [`Supervisor::open`]).
    pub(super) fn sweep(&self) {
        let wait = self.limits.ack_wait;
        let mut table = self.table();
        let lingering: Vec<Arc<Proc>> = table.lingering.values().cloned().collect();
        for proc in lingering {
            let done = {
                let mut inner = proc.lock();
                let inner = &mut *inner;
                let (subscribers, departed) = (&inner.subscribers, &inner.departed);
                inner.owed.retain(|m| {
                    let attached = subscribers.iter().any(|s| s.manager == *m);
                    let left = departed.iter().find(|(d, _)| d == m).map(|(_, at)| at.elapsed());
                    let keep = attached || left.is_some_and(|l| l < wait);
                    if !keep {
                        tracing::info!(
                            service = %proc.display,
                            "no longer waiting for {m} to acknowledge the exit of {}: gone for {} s",
                            proc.display,
                            left.unwrap_or(wait).as_secs()
                        );
                    }
                    keep
                });
                inner.owed.is_empty()
            };
            if done && forget(&mut table, &proc) {
                self.remove_later(proc.dir.clone());
            }
        }
    }
}

/// "1 manager now watches it", "2 managers now watch it".
fn watching(n: usize) -> String {
    if n == 1 {
        "1 manager now watches it".into()
    } else {
        format!("{n} managers now watch it")
    }
}

/// Takes `proc` out of the table (current, lingering and history); true if it was there.
fn forget(table: &mut Table, proc: &Arc<Proc>) -> bool {
    let mut found = false;
    if table.by_key.get(&proc.key).is_some_and(|p| Arc::ptr_eq(p, proc)) {
        table.by_key.remove(&proc.key);
        found = true;
    }
    found |= table.lingering.remove(&proc.id).is_some();
    table.exited.retain(|p| !Arc::ptr_eq(p, proc));
    found
}
