//! The table of monitored processes: each process's record in memory, who
//! is attached to it, its exit, and who still owes an acknowledgement of
//! that exit; and the rules by which a record is forgotten.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::message::{ErrorKind, ErrorReply, Event, Exited, InstanceId, Output, ProcessInfo, Started, Stream};
use common::service::ServiceSpec;
use tokio::sync::mpsc;

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
    /// Output lines that could not be queued for the subscriber, in all.
    pub(super) dropped: u64,
    /// Of those, the ones each subscriber (by session) has not been told of yet.
    pub(super) untold: HashMap<u64, u64>,
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
        }
    }

    /// Adds `sub` to the process's subscribers (replacing an older connection
    /// of the same manager) and returns the reply to send it.
    pub(super) fn attach(&self, sub: Subscriber, attached: bool) -> Started {
        let mut inner = self.lock();
        inner.departed.retain(|(m, _)| *m != sub.manager);
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

    /// Forwards one output line to every subscriber, never waiting. Lines
    /// that do not fit a subscriber's queue are dropped and counted, and that
    /// manager is told how many, and why, as soon as its queue has room again.
    pub(super) fn output(&self, stream: Stream, line: String) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.subscribers.is_empty() {
            return;
        }
        let ev = |stream, line: String| {
            Event::Output(Output {
                id: self.id.clone(),
                stream,
                line,
            })
        };
        let mut lost = 0u64;
        for sub in &inner.subscribers {
            let untold = inner.untold.entry(sub.session).or_default();
            if *untold > 0 {
                let notice = format!(
                    "[cmappserver: {untold} output lines dropped: cmappmgr read them slower than the application wrote them]"
                );
                if sub.tx.try_send(ev(Stream::Stderr, notice)).is_ok() {
                    *untold = 0;
                }
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
            inner.dropped += 1;
            if inner.dropped.is_power_of_two() {
                tracing::warn!(service = %self.display, dropped = inner.dropped, "cmappmgr reads output slower than the application writes it; output lines dropped");
            }
        }
    }
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
