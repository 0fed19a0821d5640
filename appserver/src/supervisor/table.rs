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
    /// The same record, its process started now as `pid` (an adopted shim
    /// that was still waiting for `Start`); what was attached moves over.
    pub(super) fn started(&self, pid: u32, started_at_ms: u64) -> Proc {
        Proc {
            id: self.id.clone(),
            key: self.key.clone(),
            display: self.display.clone(),
            service: self.service.clone(),
            dir: self.dir.clone(),
            pid,
            started_at_ms,
            output: self.output.clone(),
            inner: Mutex::new(std::mem::take(&mut *self.lock())),
        }
    }

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
        // In the history before any manager can acknowledge it.
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
        // The sessions just woken write the exit to their managers first
        // (the detection latency); the log line waits. The history bound
        // does not: it must hold even if this future goes no further.
        tokio::task::yield_now().await;
        tracing::info!(service = %proc.display, pid = proc.pid, "{}", ex.status);
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
        let found = {
            let table = self.table();
            let current = table.by_key.values().find(|p| p.id == id);
            current.or_else(|| table.lingering.get(id)).cloned()
        };
        let Some(proc) = found else {
            return Ok(()); // already forgotten: acknowledging twice is harmless
        };
        if proc.lock().exit.is_none() {
            return Err(err(ErrorKind::BadRequest, format!("{} is still running", proc.display)));
        }
        // On disk before the reply: the manager exits on it and the cluster
        // starts the service again, and a cmappserver restarted before the
        // record is gone (it may linger for other managers, or wait for the
        // janitor) must not file this exit as the service's current process
        // (the next start would attach to it and report it again).
        mark_acked(&proc);
        let mut table = self.table();
        let done = {
            let mut inner = proc.lock();
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

/// Writes `proc`'s [`state::ACKED`] marker. A record already deleted (a
/// second acknowledgement racing the janitor) needs none; another failure
/// (a full disk with no inode left) is said, and the acknowledgement holds
/// for this run of cmappserver.
fn mark_acked(proc: &Proc) {
    let written = state::Dir::open(&proc.dir).and_then(|d| d.mark(state::ACKED));
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => tracing::warn!(
            service = %proc.display,
            "cannot record that the exit of {} was acknowledged ({e}): a restart of cmappserver before its record is gone would hand it out again",
            proc.display
        ),
        _ => {}
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

/// Test helpers shared by the supervisor's rooms: a supervisor on a fresh
/// state directory, processes filed in its table, subscribers.
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::supervisor::output::Settings;
    use crate::supervisor::{AppSettings, Limits};
    use common::message::{ExitStatus, Logs};
    use std::path::Path;

    /// A supervisor on a fresh state directory, with nothing recorded.
    pub(in crate::supervisor) async fn supervisor(
        tmp: &Path,
        exit_history: usize,
        ack_wait: Duration,
    ) -> Arc<Supervisor> {
        let limits = Limits {
            max_processes: 8,
            stop_grace: Duration::from_millis(100),
            exit_history,
            ack_wait,
            output: Settings {
                dir: tmp.join("log"),
                to_file: true,
                to_syslog: false,
                max_bytes: 1 << 20,
                files: 3,
                tail_lines: 10,
            },
            keep_spare: false,
        };
        let state = state::StateDir::open(&tmp.join("state")).unwrap();
        Supervisor::open(state, limits, AppSettings::default(), "/nonexistent".into()).await
    }

    pub(in crate::supervisor) fn meta(tmp: &Path) -> OutputMeta {
        OutputMeta {
            file: Some(tmp.join("log/app.log")),
            syslog: false,
            max_bytes: 1 << 20,
            files: 2,
            tail_lines: 5,
            tag: "app".into(),
        }
    }

    /// A running process of the service `name`, filed in `sup`'s table.
    pub(in crate::supervisor) fn filed(
        sup: &Supervisor,
        tmp: &Path,
        name: &str,
        output: Option<OutputMeta>,
    ) -> Arc<Proc> {
        let service = ServiceSpec::parse(vec![format!("/bin/{name}")], Some(name.into())).unwrap();
        let dir = tmp.join(format!("rec-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let p = Arc::new(Proc {
            id: format!("id-{name}"),
            key: service.key(),
            display: service.display(),
            service,
            dir,
            pid: 4242,
            started_at_ms: 1000,
            output,
            inner: Mutex::new(ProcInner::default()),
        });
        sup.table().by_key.insert(p.key.clone(), p.clone());
        p
    }

    pub(in crate::supervisor) fn subscriber(
        session: u64,
        manager: &str,
        queue: usize,
    ) -> (Subscriber, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(queue);
        let sub = Subscriber {
            session,
            manager: manager.into(),
            tx,
        };
        (sub, rx)
    }

    pub(in crate::supervisor) fn exit(p: &Proc, code: i32) -> Exited {
        Exited {
            id: p.id.clone(),
            pid: p.pid,
            status: ExitStatus::Code(code),
            exited_at_ms: 2000,
            tail: Vec::new(),
        }
    }

    pub(in crate::supervisor) fn every_line(lines_per_sec: u32, bytes_per_sec: u64) -> Option<Forward> {
        Some(Forward {
            lines_per_sec,
            bytes_per_sec,
        })
    }

    /// Every output line queued for a subscriber, in order.
    pub(in crate::supervisor) fn lines(rx: &mut mpsc::Receiver<Event>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Event::Output(o) => out.push(o.line),
                other => out.push(format!("{other:?}")),
            }
        }
        out
    }

    /// Log lines as the daemon's log shows them (without the time and
    /// level), captured while the guard lives: this thread's, and so those
    /// of the tasks of a current-thread runtime.
    pub(crate) fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .finish();
        (buf.0, tracing::subscriber::set_default(subscriber))
    }

    /// The log lines `f` emits (see [`capture_logs`]).
    pub(in crate::supervisor) fn logged(f: impl FnOnce()) -> String {
        let (buf, guard) = capture_logs();
        f();
        drop(guard);
        let text = buf.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[tokio::test]
    async fn a_manager_attaching_to_a_watched_process_or_leaving_one_still_watched_is_logged_with_how_many_watch() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let mut keep = Vec::new();
        let mut attach = |session: u64| {
            let (sub, rx) = subscriber(session, &format!("m{session}"), 8);
            keep.push(rx);
            logged(|| {
                p.attach(sub, false, None);
            })
        };
        // The first manager's attach is its session's log line.
        assert_eq!(attach(1), "");
        assert_eq!(
            attach(2).trim(),
            "m2 attached to app; 2 managers now watch it service=app"
        );
        assert_eq!(
            attach(3).trim(),
            "m3 attached to app; 3 managers now watch it service=app"
        );
        let detach = |session: u64| logged(|| sup.detach(session));
        assert_eq!(detach(3).trim(), "m3 left app; 2 managers now watch it service=app");
        assert_eq!(detach(2).trim(), "m2 left app; 1 manager now watches it service=app");
        // The last one's leaving is its session's log line.
        assert_eq!(detach(1), "");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_admits_a_second_of_lines_then_refills_at_its_rate() {
        let mut r = RateLimit::new(Forward {
            lines_per_sec: 10,
            bytes_per_sec: 1 << 20,
        });
        assert_eq!(
            (0..20).filter(|_| r.admit(5)).count(),
            10,
            "a full bucket: one second's lines"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            (0..20).filter(|_| r.admit(5)).count(),
            1,
            "100 ms at 10 lines/s: one line"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..30).filter(|_| r.admit(5)).count(),
            10,
            "never more than one second's worth"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_counts_each_lines_bytes_and_its_newline() {
        // 100 bytes/s: ten lines of 9 bytes and their newlines, not one more.
        let mut r = RateLimit::new(Forward {
            lines_per_sec: 1000,
            bytes_per_sec: 100,
        });
        assert_eq!((0..20).filter(|_| r.admit(9)).count(), 10);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..20).filter(|_| r.admit(9)).count(), 5, "half a second: 50 bytes");
        // A line longer than a second's bytes goes when the bucket is full,
        // and the bytes it took over are owed: nothing for 10 s after.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(r.admit(999), "a full bucket admits a long line");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!r.admit(0), "9 s later the 900 bytes over are not paid back");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(r.admit(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_summary_of_lines_not_forwarded_is_due_once_a_second_or_at_once_when_asked() {
        let mut r = RateLimit::new(Forward {
            lines_per_sec: 3,
            bytes_per_sec: 50,
        });
        let mut sent = Vec::new();
        r.summary(true, |l| {
            sent.push(l);
            true
        });
        assert!(sent.is_empty(), "nothing dropped, nothing to say");
        r.pending = 7;
        tokio::time::advance(Duration::from_millis(999)).await;
        r.summary(false, |l| {
            sent.push(l);
            true
        });
        assert!(sent.is_empty(), "not due within the second");
        tokio::time::advance(Duration::from_millis(1)).await;
        r.summary(false, |_| false);
        assert_eq!(r.pending, 7, "a summary that did not fit is kept");
        r.summary(false, |l| {
            sent.push(l);
            true
        });
        assert_eq!(
            sent,
            ["[cmappserver: 7 output lines not forwarded: over the rate limit of 3 lines/s, 50 bytes/s; the guest's log has them]"]
        );
        r.pending = 2;
        r.summary(false, |l| {
            sent.push(l);
            true
        });
        assert_eq!(sent.len(), 1, "the next one a second after the last");
        r.summary(true, |l| {
            sent.push(l);
            true
        });
        assert_eq!(sent.len(), 2, "unless asked for now");
        assert_eq!(r.pending, 0);
    }

    #[test]
    fn notices_of_dropped_lines_say_how_many_and_why() {
        assert_eq!(
            slow_notice(3),
            "[cmappserver: 3 output lines dropped: cmappmgr read them slower than the application wrote them]"
        );
        assert_eq!(
            dropped_notice(5, None),
            "[cmappserver: 5 output lines dropped by the process's supervisor (an older build, which does not say why)]"
        );
        assert_eq!(
            dropped_notice(10, Some(4)),
            "[cmappserver: 10 output lines dropped: 6 because cmappserver took them slower than the application wrote them, 4 while no cmappserver was running]"
        );
        assert_eq!(
            dropped_notice(4, Some(4)),
            "[cmappserver: 4 output lines dropped: 4 while no cmappserver was running]"
        );
        assert_eq!(
            dropped_notice(6, Some(0)),
            "[cmappserver: 6 output lines dropped: 6 because cmappserver took them slower than the application wrote them]"
        );
        assert_eq!(watching(1), "1 manager now watches it");
        assert_eq!(watching(2), "2 managers now watch it");
    }

    #[tokio::test]
    async fn an_attach_replies_with_the_process_and_records_who_watches_it() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (a, _ra) = subscriber(1, "mgr-a", 8);
        let s = p.attach(a, false, None);
        assert_eq!(
            (
                s.id.as_str(),
                s.service.as_str(),
                s.pid,
                s.started_at_ms,
                s.attached,
                s.exited
            ),
            ("id-app", "app", 4242, 1000, false, false)
        );
        let (b, _rb) = subscriber(2, "mgr-b", 8);
        assert!(p.attach(b, true, None).attached);
        let recorded: state::Managers = state::read_json(&p.dir, state::MANAGERS).unwrap().unwrap();
        assert_eq!(recorded.managers, ["mgr-a", "mgr-b"]);
        let info = p.info();
        assert_eq!((info.attached, info.managers, info.exit), (true, 2, None));
        assert!(p.is_running());

        // The same manager again (a reconnection) replaces its connection.
        let (a2, _ra2) = subscriber(3, "mgr-a", 8);
        p.attach(a2, true, None);
        assert_eq!(p.info().managers, 2);
        // A closed connection is not watching.
        drop(_ra2);
        drop(_rb);
        let info = p.info();
        assert_eq!((info.attached, info.managers), (false, 0));

        // A manager that left and comes back is no longer departed.
        sup.detach(2);
        assert_eq!(p.lock().departed.len(), 1);
        let (b2, _rb2) = subscriber(4, "mgr-b", 8);
        p.attach(b2, true, None);
        assert!(p.lock().departed.is_empty());
    }

    #[tokio::test]
    async fn attaching_to_an_exited_process_gets_the_exit_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        sup.record_exit(&p, exit(&p, 3)).await;
        assert!(!p.is_running());
        assert_eq!(p.info().exit, Some(ExitStatus::Code(3)));
        let (a, mut ra) = subscriber(1, "mgr-a", 8);
        assert!(p.attach(a, true, None).exited);
        assert_eq!(ra.try_recv().unwrap(), Event::Exited(exit(&p, 3)));
    }

    #[tokio::test]
    async fn lines_go_only_to_managers_that_asked_for_every_line() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (a, mut ra) = subscriber(1, "mgr-a", 8);
        let (b, mut rb) = subscriber(2, "mgr-b", 8);
        p.attach(a, false, every_line(100, 1 << 20));
        p.attach(b, true, None);
        p.output(Stream::Stdout, "hello".into());
        assert_eq!(lines(&mut ra), ["hello"]);
        assert!(lines(&mut rb).is_empty(), "mgr-b did not ask for the lines");
        assert_eq!(
            p.info().output.unwrap(),
            format!(
                "file {} (2 x 1 MiB); last 5 lines with the exit; forwarded to cmappmgr (100 lines/s, 1048576 bytes/s)",
                tmp.path().join("log/app.log").display()
            )
        );
        // Both asking: each with its own limit, both shown.
        let (b, mut rb) = subscriber(2, "mgr-b", 8);
        p.attach(b, true, every_line(7, 700));
        let shown = p.info().output.unwrap();
        assert!(
            shown.ends_with("; forwarded to 2 cmappmgrs (100 lines/s, 1048576 bytes/s; 7 lines/s, 700 bytes/s)"),
            "{shown}"
        );
        // A session that attaches again has one limit, the new one.
        let (a, mut ra) = subscriber(1, "mgr-a", 8);
        p.attach(a, true, every_line(9, 900));
        let shown = p.info().output.unwrap();
        assert!(
            shown.ends_with("; forwarded to 2 cmappmgrs (7 lines/s, 700 bytes/s; 9 lines/s, 900 bytes/s)"),
            "{shown}"
        );
        p.output(Stream::Stderr, "both".into());
        assert_eq!(
            (lines(&mut ra), lines(&mut rb)),
            (vec!["both".to_string()], vec!["both".to_string()])
        );
        // A limit of a session that is not attached is not shown.
        p.lock().forwards.push((
            99,
            RateLimit::new(Forward {
                lines_per_sec: 1,
                bytes_per_sec: 1,
            }),
        ));
        assert!(p.info().output.unwrap().ends_with("9 lines/s, 900 bytes/s)"));
    }

    #[tokio::test]
    async fn a_process_of_an_older_shim_forwards_every_line_unlimited() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "old", None);
        let (a, mut ra) = subscriber(1, "mgr-a", 2000);
        p.attach(a, false, None);
        for i in 0..1500 {
            p.output(Stream::Stdout, format!("l{i}"));
        }
        assert_eq!(lines(&mut ra).len(), 1500);
        assert_eq!(
            p.info().output.unwrap(),
            "every line to cmappmgr (started by an older cmappserver); forwarded to cmappmgr (4294967295 lines/s, 18446744073709551615 bytes/s)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lines_over_the_rate_limit_are_counted_and_summarised_but_notices_always_go() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(3600)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (a, mut ra) = subscriber(1, "mgr-a", 64);
        p.attach(a, false, every_line(2, 1 << 20));
        for i in 0..5 {
            p.output(Stream::Stdout, format!("l{i}"));
        }
        assert_eq!(lines(&mut ra), ["l0", "l1"]);
        assert_eq!(p.info().forward_dropped, 3);
        // A notice goes whatever the limit, after the summary of what was dropped.
        p.notice("[a notice]".into());
        let got = lines(&mut ra);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("[cmappserver: 3 output lines not forwarded"),
            "{got:?}"
        );
        assert_eq!(got[1], "[a notice]");
        // Dropped again: the next summary is due a second after that one,
        // or at once at the exit.
        p.output(Stream::Stdout, "l5".into());
        p.output(Stream::Stdout, "l6".into());
        assert!(lines(&mut ra).is_empty());
        p.flush_summary();
        let got = lines(&mut ra);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("[cmappserver: 2 output lines not forwarded"),
            "{got:?}"
        );
        // Half a second at 2 lines/s: one more line.
        tokio::time::advance(Duration::from_millis(500)).await;
        p.output(Stream::Stdout, "l7".into());
        p.output(Stream::Stdout, "l8".into());
        assert_eq!(lines(&mut ra), ["l7"]);
        p.flush_summary();
        assert_eq!(lines(&mut ra).len(), 1);
        assert_eq!(p.info().forward_dropped, 6);
    }

    #[tokio::test]
    async fn a_manager_whose_queue_is_full_is_told_how_many_lines_it_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (a, mut ra) = subscriber(1, "mgr-a", 2);
        let (b, mut rb) = subscriber(2, "mgr-b", 64);
        p.attach(a, false, every_line(1000, 1 << 20));
        p.attach(b, false, every_line(1000, 1 << 20));
        for i in 0..5 {
            p.output(Stream::Stdout, format!("l{i}"));
        }
        assert_eq!(p.info().forward_dropped, 3);
        assert_eq!(lines(&mut ra), ["l0", "l1"]);
        assert_eq!(lines(&mut rb).len(), 5, "the other manager loses nothing");
        p.output(Stream::Stdout, "l5".into());
        assert_eq!(lines(&mut ra), [slow_notice(3), "l5".into()]);
        p.output(Stream::Stdout, "l6".into());
        assert_eq!(lines(&mut ra), ["l6"], "told once");
        assert_eq!(lines(&mut rb), ["l5", "l6"]);

        // Lost again; the exit's flush tells it.
        for i in 7..10 {
            p.output(Stream::Stdout, format!("l{i}"));
        }
        assert_eq!(lines(&mut ra), ["l7", "l8"]);
        p.flush_summary();
        assert_eq!(lines(&mut ra), [slow_notice(1)]);
        p.flush_summary();
        assert!(lines(&mut ra).is_empty(), "nothing more to tell");
        assert_eq!(p.info().forward_dropped, 4);
    }

    #[tokio::test]
    async fn the_guest_logs_drop_count_only_grows() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        p.log_dropped(5);
        assert_eq!(p.info().log_dropped, 5);
        p.log_dropped(3);
        assert_eq!(p.info().log_dropped, 5, "a running total never goes back");
        p.log_dropped(8);
        assert_eq!(p.info().log_dropped, 8);
    }

    #[tokio::test]
    async fn an_exit_goes_to_every_manager_and_a_full_queue_gets_it_when_there_is_room() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (a, mut ra) = subscriber(1, "mgr-a", 1);
        let (b, mut rb) = subscriber(2, "mgr-b", 4);
        p.attach(a, false, every_line(1000, 1 << 20));
        p.attach(b, false, None);
        p.output(Stream::Stdout, "fills a's queue".into());
        sup.record_exit(&p, exit(&p, 0)).await;
        sup.record_exit(&p, exit(&p, 9)).await;
        assert_eq!(rb.recv().await, Some(Event::Exited(exit(&p, 0))));
        assert!(rb.try_recv().is_err(), "the first exit only");
        assert!(matches!(ra.recv().await, Some(Event::Output(_))));
        assert_eq!(ra.recv().await, Some(Event::Exited(exit(&p, 0))));
        assert_eq!(p.info().exit, Some(ExitStatus::Code(0)));
    }

    #[tokio::test]
    async fn an_exit_is_forgotten_once_every_manager_owed_it_has_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let other = filed(&sup, tmp.path(), "other", Some(meta(tmp.path())));
        let (a, _ra) = subscriber(1, "mgr-a", 8);
        let (b, _rb) = subscriber(2, "mgr-b", 8);
        p.attach(a, false, None);
        p.attach(b, false, None);
        let e = sup.ack(&p.id, "mgr-a").unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::BadRequest, "app is still running")
        );
        sup.record_exit(&p, exit(&p, 1)).await;
        assert_eq!(sup.monitored(), 2);
        // One of two: the service may start afresh; the record stays by id.
        sup.ack(&p.id, "mgr-a").unwrap();
        assert_eq!(sup.monitored(), 1);
        assert!(sup.table().lingering.contains_key(&p.id));
        assert!(sup.list().iter().any(|i| i.id == p.id && i.acked));
        assert!(p.dir.exists());
        assert!(
            p.dir.join(state::ACKED).exists(),
            "on disk before the reply, for a restarted cmappserver"
        );
        sup.ack(&p.id, "mgr-a").unwrap();
        assert!(
            sup.table().lingering.contains_key(&p.id),
            "the same manager twice is once"
        );
        sup.ack(&p.id, "mgr-b").unwrap();
        assert!(sup.find(&p.id).is_none(), "every manager has it: forgotten");
        assert!(sup.ack(&p.id, "mgr-b").is_ok(), "acknowledging twice is harmless");
        assert!(
            other.is_running() && sup.find(&other.id).is_some(),
            "the other process is untouched"
        );
        assert_eq!(sup.monitored(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_manager_that_left_less_than_ack_wait_before_the_exit_is_owed_it() {
        let tmp = tempfile::tempdir().unwrap();
        let wait = Duration::from_secs(10);
        let sup = supervisor(tmp.path(), 4, wait).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let q = filed(&sup, tmp.path(), "other", Some(meta(tmp.path())));
        for (proc, session) in [(&p, 1), (&q, 2)] {
            let (a, _ra) = subscriber(session, "mgr-a", 8);
            let (b, _rb) = subscriber(session + 10, "mgr-b", 8);
            proc.attach(a, false, None);
            proc.attach(b, false, None);
        }
        sup.detach(11); // mgr-b leaves p now
        tokio::time::advance(wait - Duration::from_millis(1)).await;
        sup.record_exit(&p, exit(&p, 0)).await;
        sup.detach(12); // and q just before it ends...
        tokio::time::advance(Duration::from_millis(1)).await;
        sup.detach(2);
        sup.record_exit(&q, exit(&q, 0)).await;
        assert_eq!(p.lock().owed.len(), 2, "mgr-b left 10 s - 1 ms before the exit");
        assert_eq!(q.lock().owed.len(), 2, "both left just now");
        // Once mgr-a has it, the record waits for mgr-b: at most ack_wait from its leaving.
        sup.ack(&p.id, "mgr-a").unwrap();
        sup.sweep();
        assert!(sup.find(&p.id).is_none(), "mgr-b left 10 s ago: not waited for");
        sup.ack(&q.id, "mgr-a").unwrap();
        sup.sweep();
        assert!(sup.find(&q.id).is_some(), "mgr-b left 1 ms ago");
        tokio::time::advance(wait - Duration::from_millis(2)).await;
        sup.sweep();
        assert!(sup.find(&q.id).is_some(), "still within ack_wait");
        tokio::time::advance(Duration::from_millis(1)).await;
        sup.sweep();
        assert!(sup.find(&q.id).is_none(), "ack_wait after mgr-b left");
    }

    #[tokio::test(start_paused = true)]
    async fn a_manager_that_left_ack_wait_before_the_exit_is_not_owed_it() {
        let tmp = tempfile::tempdir().unwrap();
        let wait = Duration::from_secs(10);
        let sup = supervisor(tmp.path(), 4, wait).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (a, _ra) = subscriber(1, "mgr-a", 8);
        let (b, _rb) = subscriber(2, "mgr-b", 8);
        p.attach(a, false, None);
        p.attach(b, false, None);
        sup.detach(2);
        tokio::time::advance(wait).await;
        sup.record_exit(&p, exit(&p, 0)).await;
        assert_eq!(&*p.lock().owed, [Arc::<str>::from("mgr-a")]);
    }

    #[tokio::test]
    async fn a_lingering_exit_stays_while_its_manager_is_attached() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_millis(1)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (a, _ra) = subscriber(1, "mgr-a", 8);
        let (b, _rb) = subscriber(2, "mgr-b", 8);
        p.attach(a, false, None);
        p.attach(b, false, None);
        sup.record_exit(&p, exit(&p, 0)).await;
        sup.ack(&p.id, "mgr-a").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        sup.sweep();
        assert!(sup.find(&p.id).is_some(), "mgr-b is attached: waited for");
        assert_eq!(&*p.lock().owed, [Arc::<str>::from("mgr-b")]);
    }

    #[tokio::test]
    async fn a_detached_session_leaves_every_process_and_at_most_16_managers_are_remembered() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let q = filed(&sup, tmp.path(), "other", Some(meta(tmp.path())));
        let mut keep = Vec::new();
        for s in 0..20u64 {
            let (sub, rx) = subscriber(s, &format!("m{s}"), 8);
            p.attach(sub.clone(), false, None);
            q.attach(sub, false, None);
            keep.push(rx);
        }
        for s in 0..19u64 {
            sup.detach(s);
        }
        for proc in [&p, &q] {
            let inner = proc.lock();
            assert_eq!(inner.subscribers.len(), 1);
            assert_eq!(&*inner.subscribers[0].manager, "m19");
            let departed: Vec<&str> = inner.departed.iter().map(|(m, _)| &**m).collect();
            let want: Vec<String> = (3..19).map(|s| format!("m{s}")).collect();
            assert_eq!(departed, want, "the 16 most recent");
        }
        sup.detach(99);
        assert_eq!(p.lock().subscribers.len(), 1, "an unknown session changes nothing");
    }

    #[tokio::test]
    async fn only_the_last_exit_history_exits_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 2, Duration::from_secs(60)).await;
        let procs: Vec<Arc<Proc>> = ["a", "b", "c"]
            .iter()
            .map(|n| filed(&sup, tmp.path(), n, Some(meta(tmp.path()))))
            .collect();
        sup.record_exit(&procs[0], exit(&procs[0], 0)).await;
        sup.record_exit(&procs[1], exit(&procs[1], 0)).await;
        assert_eq!(sup.monitored(), 3, "two exits are within exitHistory 2");
        sup.record_exit(&procs[2], exit(&procs[2], 0)).await;
        assert!(sup.find(&procs[0].id).is_none(), "the oldest exit dropped");
        assert!(sup.find(&procs[1].id).is_some() && sup.find(&procs[2].id).is_some());
        assert_eq!(sup.table().exited.len(), 2);
    }

    #[tokio::test]
    async fn forgetting_a_record_takes_it_out_of_every_list_and_says_whether_it_was_there() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let q = filed(&sup, tmp.path(), "other", Some(meta(tmp.path())));
        let mut table = sup.table();
        table.exited.extend([p.clone(), q.clone()]);
        assert!(forget(&mut table, &p));
        assert!(!table.by_key.contains_key(&p.key) && table.by_key.contains_key(&q.key));
        assert_eq!(table.exited.len(), 1);
        assert!(Arc::ptr_eq(&table.exited[0], &q), "only that record leaves the history");
        assert!(!forget(&mut table, &p), "already forgotten");
        // A lingering record (by id).
        table.by_key.remove(&q.key);
        table.lingering.insert(q.id.clone(), q.clone());
        assert!(forget(&mut table, &q));
        assert!(table.lingering.is_empty() && table.exited.is_empty());
    }

    #[tokio::test]
    async fn the_listing_is_by_start_time_and_the_log_file_is_the_services_own() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let b = filed(&sup, tmp.path(), "b", Some(meta(tmp.path())));
        let a = filed(&sup, tmp.path(), "a", Some(meta(tmp.path())));
        let old = filed(&sup, tmp.path(), "old", None);
        let ids: Vec<String> = sup.list().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["id-a", "id-b", "id-old"], "same start time: by id");
        assert_eq!(sup.argv_of("id-b"), Some(vec!["/bin/b".to_string()]));
        assert_eq!(sup.argv_of("id-none"), None);
        assert_eq!(
            sup.service_argv(&["/bin/a".into()], &Some("a".into())),
            Some(vec!["/bin/a".to_string()])
        );
        assert_eq!(sup.service_argv(&["/bin/a".into()], &None), None);
        let logs = |run: &str, name: Option<&str>| Logs {
            run: vec![run.into()],
            name: name.map(Into::into),
            tail: 10,
            follow: false,
        };
        // A known service: the file its shim writes.
        assert_eq!(
            sup.log_file(&logs("/bin/a", Some("a"))).unwrap(),
            (tmp.path().join("log/app.log"), 2)
        );
        // An unknown one: where the settings would put it.
        let (path, files) = sup.log_file(&logs("/bin/x y", None)).unwrap();
        let stem = super::super::output::file_stem(r#"run:["/bin/x y"]"#);
        assert_eq!((path, files), (tmp.path().join("log").join(format!("{stem}.log")), 3));
        let e = sup.log_file(&logs("/bin/old", Some("old"))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("older cmappserver"), "{}", e.message);
        // Output that goes to no file.
        let mut m = meta(tmp.path());
        m.file = None;
        m.syslog = true;
        let s = filed(&sup, tmp.path(), "sys", Some(m));
        let e = sup.log_file(&logs("/bin/sys", Some("sys"))).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                ErrorKind::NotFound,
                "the output of sys goes to syslog (cmappserver[app]), not to a file cmappserver can read back"
            )
        );
        let e = sup.log_file(&logs("", None)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        drop((a, b, old, s));
    }

    #[tokio::test]
    async fn a_stop_goes_to_the_shim_with_its_grace_period() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let e = sup.stop("id-none", None).await.unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::NotFound, "no process with id id-none")
        );
        let e = sup.stop(&p.id, None).await.unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::Internal, "the supervisor of app is unreachable")
        );
        let (tx, mut rx) = mpsc::channel(4);
        p.lock().link = Some(tx);
        sup.stop(&p.id, Some(Duration::from_millis(1500))).await.unwrap();
        sup.stop(&p.id, None).await.unwrap();
        assert!(matches!(rx.try_recv(), Ok(ShimRequest::Stop { grace_ms: 1500 })));
        assert!(
            matches!(rx.try_recv(), Ok(ShimRequest::Stop { grace_ms: 100 })),
            "the default grace"
        );
        drop(rx);
        let e = sup.stop(&p.id, None).await.unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::Internal, "the supervisor of app is gone")
        );
        sup.record_exit(&p, exit(&p, 0)).await;
        assert!(sup.stop(&p.id, None).await.is_ok(), "an ended process: nothing to do");
    }

    #[tokio::test]
    async fn a_shutdown_refuses_launches_and_stops_the_processes_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (tx, mut rx) = mpsc::channel(4);
        p.lock().link = Some(tx);
        sup.shutdown(false).await;
        assert!(sup.table().shutting_down);
        assert!(rx.try_recv().is_err(), "processes keep running");
        // Stopping: the shim is asked, and the shutdown waits for the exit.
        let (s2, p2) = (sup.clone(), p.clone());
        let exited = tokio::spawn(async move {
            let req = rx.recv().await;
            s2.record_exit(&p2, exit(&p2, 0)).await;
            req
        });
        tokio::time::timeout(Duration::from_secs(20), sup.shutdown(true))
            .await
            .unwrap();
        assert!(!p.is_running(), "the shutdown returns once the process has ended");
        assert!(matches!(exited.await.unwrap(), Some(ShimRequest::Stop { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_waits_at_most_the_grace_period_and_2_s_for_the_processes_to_end() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (tx, _rx) = mpsc::channel(4);
        p.lock().link = Some(tx);
        let t0 = tokio::time::Instant::now();
        sup.shutdown(true).await;
        let waited = t0.elapsed();
        // The test supervisor's grace is 100 ms (the wait looks every 20 ms).
        assert_eq!(waited, Duration::from_millis(2100));
        assert!(
            p.is_running(),
            "a process that does not end is waited for, not forgotten"
        );
    }

    #[tokio::test]
    async fn a_forgotten_record_is_deleted_from_the_state_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        sup.record_exit(&p, exit(&p, 0)).await;
        assert!(p.dir.exists());
        sup.ack(&p.id, "anyone").unwrap();
        // Deleted off the reply path, by the janitor thread.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while p.dir.exists() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!p.dir.exists());
    }
}
