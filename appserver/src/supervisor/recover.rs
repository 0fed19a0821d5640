//! Recovery: adopting the processes a previous cmappserver left running, and
//! settling the exit of a process whose shim is gone (from its exit record,
//! or as lost, killing an application nobody can monitor any more).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::message::{now_ms, ExitStatus, Exited, TailLine};

use super::procfs::{running, same_process};
use super::state::{self, ExitRecord, Meta, PidRecord};
use super::table::{Proc, ProcInner};
use super::{link, Supervisor, DEPARTED_KEPT};

/// How long a shim whose connection closed is given to finish exiting.
const SHIM_EXIT_WAIT: Duration = Duration::from_secs(2);

impl Supervisor {
    /// Reads `exit.json` for a process whose shim is gone; without one, the
    /// status is lost, and an application still running is killed: nobody
    /// can report its exit any more, and the cluster's restart of the service
    /// must not find a second copy running beside it.
    fn exit_from_disk(&self, proc: &Proc, why: &str) -> Exited {
        let record = self.state.record(&proc.id);
        let exit = match &record {
            Ok(d) => d.read_json::<ExitRecord>(state::EXIT),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        let (status, at) = match exit {
            Ok(Some(r)) => (r.status, r.exited_at_ms),
            Ok(None) => {
                let killed = record.as_ref().map(|d| kill_orphan(proc, d)).unwrap_or_default();
                (
                    ExitStatus::Lost {
                        error: format!("{why}{killed}"),
                    },
                    now_ms(),
                )
            }
            Err(e) => (
                ExitStatus::Lost {
                    error: format!("{why}; its exit record is unreadable: {e}"),
                },
                now_ms(),
            ),
        };
        let tail = match &record {
            Ok(d) => d.read_json::<Vec<TailLine>>(state::TAIL).ok().flatten(),
            Err(_) => None,
        };
        Exited {
            id: proc.id.clone(),
            pid: proc.pid,
            status,
            exited_at_ms: at,
            tail: tail.unwrap_or_default(),
        }
    }

    /// Records the exit of a process whose shim connection closed without an
    /// `Exited` event: the shim recorded it on disk just before, or died.
    pub(super) async fn record_exit_from_disk(&self, proc: &Arc<Proc>) {
        // A killed shim's socket closes while the shim is still exiting (the
        // kernel closes its files before it becomes a zombie): wait, bounded,
        // until it is gone, so that `kill_orphan` tells a dead shim from a
        // live one. There is no event to wait on for a process we may not
        // have started (an adopted shim), hence the short polls.
        if let Ok(Some(record)) = self
            .state
            .record(&proc.id)
            .and_then(|d| d.read_json::<PidRecord>(state::PID))
        {
            let end = tokio::time::Instant::now() + SHIM_EXIT_WAIT;
            while running(record.shim_pid) && tokio::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let ex = self.exit_from_disk(proc, "its supervisor died without recording an exit status");
        self.record_exit(proc, ex).await;
    }

    /// Adopts the processes recorded in the state directory.
    pub(super) async fn recover(self: &Arc<Self>) {
        for (name, record) in self.state.records() {
            let dir = record.path().to_path_buf();
            let meta: Meta = match record.read_json::<Meta>(state::META) {
                Ok(Some(m)) if m.id == name => m,
                Ok(Some(m)) => {
                    tracing::warn!(dir = %dir.display(), "ignoring a process record filed under another id ({})", m.id);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    tracing::warn!(dir = %dir.display(), "ignoring an untrusted process record: {e}");
                    continue;
                }
                other => {
                    tracing::warn!(dir = %dir.display(), "discarding an unreadable process record: {:?}", other.err());
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
            };
            let pid: Option<PidRecord> = record.read_json(state::PID).ok().flatten();
            // The managers that watched it count as gone at the restart: an
            // exit that happens, or happened, is owed to them for `ack_wait`
            // from now (see `sweep`). An older server's record names none.
            let now = tokio::time::Instant::now();
            let before = recorded_managers(&dir);
            let inner = ProcInner {
                departed: before.iter().map(|m| (m.clone(), now)).collect(),
                ..ProcInner::default()
            };
            let proc = Arc::new(Proc {
                id: meta.id.clone(),
                key: meta.key.clone(),
                display: meta.service.display(),
                service: meta.service.clone(),
                dir: dir.clone(),
                pid: pid.map_or(0, |p| p.pid),
                started_at_ms: pid.map_or(meta.created_at_ms, |p| p.started_at_ms),
                output: meta.output.clone(),
                inner: Mutex::new(inner),
            });
            let connected = match link::connect(&record, link::Expect::Adopt).await {
                Ok(stream) => {
                    self.start_link(&proc, stream);
                    true
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), "cannot reach the process supervisor: {e}");
                    let ex = self.exit_from_disk(&proc, "its supervisor is gone and recorded no exit status");
                    let mut inner = proc.lock();
                    inner.exit = Some(ex.clone());
                    inner.owed = before;
                    drop(inner);
                    tracing::info!(service = %proc.display, pid = proc.pid, "ended while cmappserver was away: {}", ex.status);
                    false
                }
            };
            let mut table = self.table();
            let (newer, older) = match table.by_key.remove(&proc.key) {
                Some(other) if other.started_at_ms > proc.started_at_ms => (other, Some(proc.clone())),
                other => (proc.clone(), other),
            };
            table.by_key.insert(newer.key.clone(), newer);
            if let Some(older) = older {
                if older.is_running() {
                    tracing::warn!(service = %older.display, "two running records for one service; keeping the newer");
                } else {
                    // An exit one manager collected before the restart (the
                    // service was launched again since): kept for the others.
                    let mut inner = older.lock();
                    inner.acked = true;
                    inner.owed = recorded_managers(&older.dir);
                    drop(inner);
                    table.lingering.insert(older.id.clone(), older);
                }
            }
            if !connected {
                table.exited.push_back(proc.clone());
            }
            drop(table);
            if connected {
                tracing::info!(service = %proc.display, pid = proc.pid, "re-attached to running process");
            }
        }
        self.enforce_history();
    }
}

/// Kills the process group of an application whose shim is gone, if that
/// application still runs: the same process, by its start time in the pid
/// record, so that a recycled pid is never touched. The record is trusted
/// only because nobody but us can have written it (`dir` is checked, and so
/// is the file). Returns a note for the status.
fn kill_orphan(proc: &Proc, dir: &state::Dir) -> String {
    let record = match dir.read_json::<PidRecord>(state::PID) {
        Ok(Some(r)) => r,
        Ok(None) => return String::new(),
        Err(e) => {
            tracing::warn!(service = %proc.display, "not acting on the pid record of {}: {e}", proc.display);
            return String::new();
        }
    };
    // Only when the shim itself is really gone (not merely its connection),
    // and never for ourselves, init or a process group that is not the app's.
    let me = std::process::id();
    if record.pid <= 1 || record.pid == me || running(record.shim_pid) || !same_process(&record) {
        return String::new();
    }
    let pgid = nix::unistd::Pid::from_raw(record.pid as i32);
    match nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) => {
            tracing::error!(
                service = %proc.display,
                pid = record.pid,
                "the supervisor of {} died; its application can no longer be monitored and was killed, so that a restart does not run two copies",
                proc.display
            );
            "; the unmonitored application was killed".into()
        }
        Err(_) => String::new(),
    }
}

/// The managers a record names (see [`state::Managers`]), bounded and
/// cleaned: the file is input like any other.
fn recorded_managers(dir: &std::path::Path) -> Vec<Arc<str>> {
    let record: state::Managers = state::read_json(dir, state::MANAGERS)
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut names: Vec<Arc<str>> = Vec::new();
    for m in record.managers.iter().take(DEPARTED_KEPT) {
        let clean: String = m
            .chars()
            .take(128)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if !clean.is_empty() && !names.iter().any(|n| **n == *clean) {
            names.push(clean.into());
        }
    }
    names
}
