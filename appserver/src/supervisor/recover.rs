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

/// Shims being connected to at once during recovery: a bound on the
/// descriptors a restart takes beyond the links it keeps, whatever the
/// number of records the state directory holds (a descriptor limit reached
/// would make a live shim look gone).
const REACH_AT_ONCE: usize = 64;

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

    /// Adopts the processes recorded in the state directory: the shims are
    /// reached together, at most [`REACH_AT_ONCE`] connecting at a time (a
    /// thousand adoptions take the time of a few, and a shim that does not
    /// answer holds up no other), then each record is filed as its shim
    /// answers.
    pub(super) async fn recover(self: &Arc<Self>) {
        let mut reaching = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(REACH_AT_ONCE));
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
            let withdrawn = matches!(record.entry(state::WITHDRAWN), Ok(Some(_)));
            if withdrawn && matches!(record.entry(state::PID), Ok(None)) {
                // A server before us withdrew this launch and stopped before
                // removing it: its application never started, and its shim
                // (if it still waits) is not told to start now. (A pid.json
                // beside it contradicts it: whatever put it there, the
                // record is read as before.)
                tracing::info!(service = %meta.service.display(), "discarding a launch that never started its application (withdrawn by cmappserver before its restart)");
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            let pid: Option<PidRecord> = record.read_json(state::PID).ok().flatten();
            // Its presence is the marker (nothing is read: an `acked` that
            // cannot be read as a file must not hand the exit out again).
            let acked = matches!(record.entry(state::ACKED), Ok(Some(_)));
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
            let permits = permits.clone();
            reaching.spawn(async move {
                // Never closed: acquiring cannot fail.
                let permit = permits.acquire_owned().await;
                let reached = link::connect(&record, link::Expect::Adopt).await;
                drop(permit);
                (proc, before, acked, record, reached)
            });
        }
        while let Some(joined) = reaching.join_next().await {
            // A panic in an adoption is a bug: it is not hidden by forgetting the record.
            let (proc, before, acked, record, reached) =
                joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            let dir = proc.dir.clone();
            let (connected, proc) = match reached {
                Ok(stream) => {
                    // A shim that was still waiting for Start (its server
                    // died between filing the record and starting it) has
                    // just started its process: its pid is the answer's.
                    let proc = if proc.pid == 0 && stream.pid != 0 {
                        Arc::new(proc.started(stream.pid, stream.started_at_ms))
                    } else {
                        proc
                    };
                    self.start_link(&proc, stream);
                    (true, proc)
                }
                Err(e) if never_started(&record) => {
                    // Its launch died with the server that made it: nothing
                    // ran, nothing ended, and nothing will start now. The
                    // manager that asked will launch it again.
                    tracing::info!(service = %proc.display, "discarding a launch that never started its application (cmappserver stopped while making it; its process supervisor: {e})");
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), "cannot reach the process supervisor: {e}");
                    let ex = self.exit_from_disk(&proc, "its supervisor is gone and recorded no exit status");
                    let mut inner = proc.lock();
                    inner.exit = Some(ex.clone());
                    inner.owed = before;
                    drop(inner);
                    tracing::info!(service = %proc.display, pid = proc.pid, "ended while cmappserver was away: {}", ex.status);
                    (false, proc)
                }
            };
            let mut table = self.table();
            if acked && !connected {
                // Collected before the restart (a manager acknowledged it):
                // kept by id for the managers still owed it, and the next
                // launch of the service starts afresh.
                proc.lock().acked = true;
                table.lingering.insert(proc.id.clone(), proc.clone());
                continue;
            }
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

/// True if the application of a record whose shim cannot be reached was
/// never started, and now never will be: this takes the record's
/// `unstarted` before its shim can, renaming it [`state::WITHDRAWN`] (one
/// step: a crash before the record is removed leaves it withdrawn, see
/// [`state::UNSTARTED`]). A record without it (its shim took it, or an
/// older server wrote the record) may have a started application: false.
fn never_started(dir: &state::Dir) -> bool {
    let taken = match dir.entry(state::UNSTARTED) {
        // Not a file (a directory put there): the shim cannot take it
        // either, but nothing here proves what it did. As before the marker.
        Ok(Some(state::Entry::Directory)) => Err(std::io::Error::from(std::io::ErrorKind::IsADirectory)),
        _ => dir.take_as(state::UNSTARTED, state::WITHDRAWN),
    };
    match taken {
        Ok(taken) => taken,
        Err(e) => {
            tracing::warn!(dir = %dir.path().display(), "cannot rename {} to {} (the marker of a launch whose application was never started): {e}; treating the application as possibly started", state::UNSTARTED, state::WITHDRAWN);
            false
        }
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

#[cfg(test)]
mod tests {
    use super::super::procfs::tests::{dead_pid, Child};
    use super::super::proto::{ShimEvent, ShimRequest};
    use super::super::table::tests::{every_line, lines, subscriber, supervisor};
    use super::*;
    use common::connection;
    use common::message::{Event, Stream};
    use common::service::ServiceSpec;
    use std::path::{Path, PathBuf};
    use tokio::net::UnixListener;
    use tokio::sync::mpsc;

    /// Writes the record `id` of the service `name` into the state
    /// directory under `tmp`, as a shim and an earlier server left it.
    fn record(tmp: &Path, id: &str, name: &str, pid: Option<PidRecord>, exit: Option<ExitStatus>) -> PathBuf {
        let state = state::StateDir::open(&tmp.join("state")).unwrap();
        let dir = state.create_record(id).unwrap().unwrap();
        let service = ServiceSpec::parse(vec![format!("/bin/{name}")], Some(name.into())).unwrap();
        let meta = Meta {
            id: id.into(),
            key: service.key(),
            service,
            created_at_ms: 7,
            environment: None,
            oom_score_adj: None,
            output: None,
            run_as: None,
        };
        dir.write_json(state::META, &meta).unwrap();
        if let Some(p) = pid {
            dir.write_json(state::PID, &p).unwrap();
        }
        if let Some(status) = exit {
            let at = pid.map_or(8, |p| p.started_at_ms + 1);
            dir.write_json(
                state::EXIT,
                &ExitRecord {
                    status,
                    exited_at_ms: at,
                },
            )
            .unwrap();
        }
        dir.path().to_path_buf()
    }

    fn pid(started_at_ms: u64) -> Option<PidRecord> {
        Some(PidRecord {
            pid: 0,
            started_at_ms,
            shim_pid: 0,
            start_ticks: None,
        })
    }

    fn managers(dir: &Path, names: &[&str]) {
        let m = state::Managers {
            managers: names.iter().map(|n| n.to_string()).collect(),
        };
        state::write_json(dir, state::MANAGERS, &m).unwrap();
    }

    fn owed(sup: &Supervisor, id: &str) -> Vec<String> {
        let p = sup.find(id).unwrap();
        let inner = p.lock();
        inner.owed.iter().map(|m| m.to_string()).collect()
    }

    #[tokio::test]
    async fn an_exit_recorded_while_the_server_was_away_is_handed_out_to_the_managers_that_watched() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = record(tmp.path(), "r1", "app", pid(50), Some(ExitStatus::Code(3)));
        let tail = vec![TailLine {
            stream: Stream::Stderr,
            line: "last words".into(),
        }];
        state::write_json(&dir, state::TAIL, &tail).unwrap();
        let long = "x".repeat(200);
        managers(&dir, &["mgr-a", "", "mgr-a", "bad\u{1}name", &long]);
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let info = sup.list();
        assert_eq!(info.len(), 1);
        assert_eq!(
            (info[0].id.as_str(), info[0].started_at_ms, info[0].exit.clone()),
            ("r1", 50, Some(ExitStatus::Code(3)))
        );
        let want = ["mgr-a".to_string(), "bad?name".into(), "x".repeat(128)];
        assert_eq!(owed(&sup, "r1"), want, "the recorded managers, cleaned");
        let departed: Vec<String> = sup
            .find("r1")
            .unwrap()
            .lock()
            .departed
            .iter()
            .map(|(m, _)| m.to_string())
            .collect();
        assert_eq!(departed, want);
        let (a, mut ra) = subscriber(1, "mgr-a", 8);
        sup.find("r1").unwrap().attach(a, true, None);
        let Ok(Event::Exited(ex)) = ra.try_recv() else {
            panic!("the exit")
        };
        assert_eq!((ex.status, ex.exited_at_ms, ex.tail), (ExitStatus::Code(3), 51, tail));
        // At most 16 managers are kept from a record.
        let tmp = tempfile::tempdir().unwrap();
        let dir = record(tmp.path(), "r2", "app", None, Some(ExitStatus::Code(0)));
        let many: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        managers(&dir, &many.iter().map(String::as_str).collect::<Vec<_>>());
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        assert_eq!(owed(&sup, "r2"), many[..16]);
    }

    #[tokio::test]
    async fn records_that_are_not_ours_or_not_readable_are_never_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        // Filed under another id: left alone.
        let moved = record(tmp.path(), "r-moved", "a", None, None);
        let meta: Meta = state::read_json(&moved, state::META).unwrap().unwrap();
        state::write_json(
            &moved,
            state::META,
            &Meta {
                id: "r-other".into(),
                ..meta
            },
        )
        .unwrap();
        // Others can write it: left alone.
        let loose = record(tmp.path(), "r-loose", "b", None, None);
        std::fs::set_permissions(
            loose.join(state::META),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        // Not a record at all: removed.
        let junk = record(tmp.path(), "r-junk", "c", None, None);
        std::fs::write(junk.join(state::META), "{").unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        assert!(sup.list().is_empty());
        assert!(moved.exists() && loose.exists());
        assert!(!junk.exists());
    }

    #[tokio::test]
    async fn a_record_without_an_exit_or_with_an_unreadable_one_is_lost() {
        let tmp = tempfile::tempdir().unwrap();
        record(tmp.path(), "r-none", "a", None, None);
        let bad = record(tmp.path(), "r-bad", "b", pid(40), None);
        std::fs::write(bad.join(state::EXIT), "{\"status\":").unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let list = sup.list();
        let none = list.iter().find(|i| i.id == "r-none").unwrap();
        assert_eq!(
            (none.pid, none.started_at_ms),
            (0, 7),
            "no pid record: the time it was filed"
        );
        assert_eq!(
            none.exit,
            Some(ExitStatus::Lost {
                error: "its supervisor is gone and recorded no exit status".into()
            })
        );
        let bad = list.iter().find(|i| i.id == "r-bad").unwrap();
        let Some(ExitStatus::Lost { error }) = &bad.exit else {
            panic!("{bad:?}")
        };
        assert!(
            error.starts_with("its supervisor is gone and recorded no exit status; its exit record is unreadable: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_launch_that_never_started_its_application_is_discarded_not_lost() {
        let tmp = tempfile::tempdir().unwrap();
        // The server died between the record and its shim (or the shim gave up).
        let never = record(tmp.path(), "r-never", "a", None, None);
        std::fs::write(never.join(state::UNSTARTED), "").unwrap();
        // Its shim took `unstarted` (or an older server wrote the record).
        let maybe = record(tmp.path(), "r-maybe", "b", None, None);
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let ids: Vec<String> = sup.list().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["r-maybe"]);
        assert!(!never.exists(), "discarded");
        assert!(maybe.exists());
        // A waiting shim that can be reached is told to start instead.
        let tmp = tempfile::tempdir().unwrap();
        let waiting = record(tmp.path(), "r-wait", "c", None, None);
        std::fs::write(waiting.join(state::UNSTARTED), "").unwrap();
        let listener = UnixListener::bind(waiting.join(state::SOCK)).unwrap();
        let shim = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut rd, mut wr) = connection::split(stream);
            let hello = ShimEvent::Hello {
                protocol: super::super::proto::SHIM_PROTOCOL,
                pid: 0,
                started_at_ms: 0,
                waiting: true,
            };
            wr.write(&hello).await.unwrap();
            let start = rd.read::<ShimRequest>().await.unwrap();
            wr.write(&ShimEvent::Started {
                pid: 66,
                started_at_ms: 9,
            })
            .await
            .unwrap();
            (start, rd, wr)
        });
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let (start, _rd, _wr) = shim.await.unwrap();
        assert_eq!(start, Some(ShimRequest::Start));
        let p = sup.find("r-wait").expect("adopted");
        assert!(p.is_running());
        assert!(waiting.join(state::UNSTARTED).exists(), "the shim's to take");
    }

    /// A recovering server that took `unstarted` and crashed before the
    /// record was gone: the next one must not report the launch lost (70)
    /// and file it as the service's current process, which the manager's
    /// relaunch would attach to, starting nothing.
    #[tokio::test]
    async fn a_launch_withdrawn_by_a_server_that_crashed_before_removing_it_is_discarded_not_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let never = record(tmp.path(), "r-never", "a", None, None);
        std::fs::write(never.join(state::UNSTARTED), "").unwrap();
        // The withdrawing server's one step, then its crash.
        let dir = state::Dir::open(&never).unwrap();
        assert!(never_started(&dir));
        assert!(!never.join(state::UNSTARTED).exists() && never.join(state::WITHDRAWN).exists());
        assert!(!never_started(&dir), "taken once");
        // Taken by the shim (it started the application): nothing to withdraw.
        let started = record(tmp.path(), "r-started", "b", None, None);
        assert!(!never_started(&state::Dir::open(&started).unwrap()));
        assert!(!started.join(state::WITHDRAWN).exists());
        // A pid.json contradicts a withdrawal: read as before.
        let running = record(tmp.path(), "r-running", "c", pid(10), None);
        std::fs::write(running.join(state::WITHDRAWN), "").unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let list = sup.list();
        let mut ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["r-running", "r-started"], "{list:?}");
        assert!(!never.exists(), "discarded");
    }

    /// Only our user can write a record, but whatever `unstarted` is, the
    /// server follows no link and removes no directory through it.
    #[tokio::test]
    async fn an_unstarted_marker_that_is_a_link_or_a_directory_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, "kept").unwrap();
        // A link is the marker itself: taken (never its target), discarded.
        let link = record(tmp.path(), "r-link", "a", None, None);
        std::os::unix::fs::symlink(&target, link.join(state::UNSTARTED)).unwrap();
        // A directory cannot be taken, by the shim either: lost, as before the marker.
        let dir = record(tmp.path(), "r-dir", "b", None, None);
        std::fs::create_dir(dir.join(state::UNSTARTED)).unwrap();
        std::fs::write(dir.join(state::UNSTARTED).join("inside"), "").unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        assert!(!link.exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
        let list = sup.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, "r-dir");
        assert!(
            matches!(list[0].exit, Some(ExitStatus::Lost { .. })),
            "{:?}",
            list[0].exit
        );
        assert!(dir.join(state::UNSTARTED).join("inside").exists());
    }

    #[tokio::test]
    async fn of_two_records_of_one_service_the_newer_is_current_and_the_older_kept_for_its_managers() {
        for (older, newer) in [("r-a", "r-b"), ("r-b", "r-a")] {
            let tmp = tempfile::tempdir().unwrap();
            let old = record(tmp.path(), older, "app", pid(10), Some(ExitStatus::Code(1)));
            managers(&old, &["mgr-a", "mgr-b"]);
            record(tmp.path(), newer, "app", pid(20), Some(ExitStatus::Code(2)));
            let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
            let table = sup.table();
            assert_eq!(table.by_key.len(), 1);
            assert_eq!(table.by_key.values().next().unwrap().id, newer, "{older} then {newer}");
            let kept = table.lingering.get(older).expect("the older exit kept by id");
            assert!(kept.lock().acked, "collected before the restart");
            let owed: Vec<String> = kept.lock().owed.iter().map(|m| m.to_string()).collect();
            assert_eq!(owed, ["mgr-a", "mgr-b"]);
        }
    }

    /// Found by the fault campaign: one manager acknowledged the exit, a
    /// second (killed) was still owed it, and the server restarted: the
    /// record, the service's only one, was filed as its current process,
    /// and the cluster's next start attached to it and reported the old
    /// exit again, starting nothing.
    #[tokio::test]
    async fn an_acknowledged_exit_is_kept_by_id_only_never_as_the_current_process() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = record(tmp.path(), "r-acked", "app", pid(10), Some(ExitStatus::Code(4)));
        managers(&dir, &["mgr-a", "mgr-b"]);
        std::fs::write(dir.join(state::ACKED), "").unwrap();
        record(tmp.path(), "r-other", "other", pid(10), Some(ExitStatus::Code(5)));
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let table = sup.table();
        let current: Vec<&str> = table.by_key.values().map(|p| p.id.as_str()).collect();
        assert_eq!(current, ["r-other"], "an unacknowledged exit is current");
        let kept = table
            .lingering
            .get("r-acked")
            .expect("kept by id for the managers owed it");
        assert!(kept.lock().acked);
        assert_eq!(
            kept.lock().exit.as_ref().map(|e| e.status.clone()),
            Some(ExitStatus::Code(4))
        );
        let owed: Vec<String> = kept.lock().owed.iter().map(|m| m.to_string()).collect();
        assert_eq!(owed, ["mgr-a", "mgr-b"]);
        assert!(
            !table.exited.iter().any(|p| p.id == "r-acked"),
            "collected: not held to the history"
        );
    }

    /// `acked` means what its presence says: whatever it is (the server
    /// writes an empty file), the exit is never handed to the next start.
    #[tokio::test]
    async fn an_acked_marker_that_is_a_link_a_directory_or_a_huge_file_still_marks_the_exit_collected() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, "kept").unwrap();
        let link = record(tmp.path(), "r-link", "a", pid(10), Some(ExitStatus::Code(4)));
        std::os::unix::fs::symlink(&target, link.join(state::ACKED)).unwrap();
        let dir = record(tmp.path(), "r-dir", "b", pid(10), Some(ExitStatus::Code(4)));
        std::fs::create_dir(dir.join(state::ACKED)).unwrap();
        let huge = record(tmp.path(), "r-huge", "c", pid(10), Some(ExitStatus::Code(4)));
        std::fs::File::create(huge.join(state::ACKED))
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let table = sup.table();
        let current: Vec<&str> = table.by_key.values().map(|p| p.id.as_str()).collect();
        assert!(current.is_empty(), "handed to the next start: {current:?}");
        let mut kept: Vec<&str> = table.lingering.keys().map(String::as_str).collect();
        kept.sort();
        assert_eq!(kept, ["r-dir", "r-huge", "r-link"]);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
    }

    #[tokio::test]
    async fn adopted_exits_are_held_to_the_exit_history() {
        let tmp = tempfile::tempdir().unwrap();
        for (id, name) in [("r1", "a"), ("r2", "b"), ("r3", "c")] {
            record(tmp.path(), id, name, None, Some(ExitStatus::Code(0)));
        }
        let sup = supervisor(tmp.path(), 2, Duration::from_secs(60)).await;
        let ids: Vec<String> = sup.list().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["r2", "r3"]);
    }

    /// A shim of an earlier server on the record's socket, running `pid`:
    /// sends its hello, then whatever the test sends it, and hands back
    /// what the server asked of it.
    fn running_shim(dir: &Path, pid: u32) -> (mpsc::Sender<ShimEvent>, tokio::task::JoinHandle<Vec<ShimRequest>>) {
        let listener = UnixListener::bind(dir.join(state::SOCK)).unwrap();
        let (tx, mut rx) = mpsc::channel::<ShimEvent>(16);
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut rd, mut wr) = connection::split(stream);
            wr.write(&ShimEvent::Hello {
                protocol: 1,
                pid,
                started_at_ms: 30,
                waiting: false,
            })
            .await
            .unwrap();
            let mut got = Vec::new();
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => wr.write(&ev).await.unwrap(),
                        None => break,
                    },
                    req = rd.read::<ShimRequest>() => match req {
                        Ok(Some(r)) => got.push(r),
                        _ => break,
                    },
                }
            }
            got
        });
        (tx, task)
    }

    async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("an event within 20 s")
            .expect("the queue is open")
    }

    #[tokio::test]
    async fn a_running_shim_is_adopted_and_its_output_drops_and_exit_are_relayed() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = PidRecord {
            pid: 77,
            ..pid(30).unwrap()
        };
        let dir = record(tmp.path(), "r1", "app", Some(rec), None);
        let (shim, task) = running_shim(&dir, 77);
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = sup.find("r1").expect("adopted");
        assert!(p.is_running());
        assert_eq!((p.pid, p.started_at_ms), (77, 30), "the pid record's");
        assert!(sup.table().exited.is_empty());
        let (a, mut ra) = subscriber(1, "mgr-a", 64);
        p.attach(a, true, every_line(1000, 1 << 20));
        shim.send(ShimEvent::Output {
            stream: Stream::Stdout,
            line: "hello".into(),
        })
        .await
        .unwrap();
        let Event::Output(o) = next(&mut ra).await else {
            panic!("output")
        };
        assert_eq!(
            (o.id.as_str(), o.stream, o.line.as_str()),
            ("r1", Stream::Stdout, "hello")
        );
        // Drops: a notice for the lines lost on the way, the guest log's count kept.
        for (lines, log) in [(0, 4), (3, 5)] {
            shim.send(ShimEvent::Dropped {
                lines,
                unconnected: Some(1),
                log,
            })
            .await
            .unwrap();
        }
        let Event::Output(o) = next(&mut ra).await else {
            panic!("a notice")
        };
        assert_eq!(
            o.line,
            super::super::table::dropped_notice(3, Some(1)),
            "none for 0 lines"
        );
        assert_eq!(p.info().log_dropped, 5);
        // A stop goes to the shim; its exit comes back.
        sup.stop("r1", Some(Duration::from_millis(250))).await.unwrap();
        shim.send(ShimEvent::Exited {
            status: ExitStatus::Signal(15),
            exited_at_ms: 99,
            tail: Vec::new(),
        })
        .await
        .unwrap();
        let Event::Exited(ex) = next(&mut ra).await else {
            panic!("the exit")
        };
        assert_eq!(
            (ex.id.as_str(), ex.pid, ex.status, ex.exited_at_ms),
            ("r1", 77, ExitStatus::Signal(15), 99)
        );
        drop(shim);
        assert_eq!(task.await.unwrap(), [ShimRequest::Stop { grace_ms: 250 }]);
        assert!(lines(&mut ra).is_empty());
        assert_eq!(sup.stop("r1", None).await, Ok(()), "ended: nothing to stop");
    }

    #[tokio::test]
    async fn a_shim_that_goes_without_a_word_leaves_its_status_on_disk_or_a_lost_one() {
        let tmp = tempfile::tempdir().unwrap();
        let on_disk = record(tmp.path(), "r1", "a", None, None);
        let silent = record(tmp.path(), "r2", "b", None, None);
        let (s1, _t1) = running_shim(&on_disk, 70);
        let (s2, _t2) = running_shim(&silent, 71);
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let (a, mut ra) = subscriber(1, "mgr-a", 8);
        sup.find("r1").unwrap().attach(a.clone(), true, None);
        sup.find("r2").unwrap().attach(a, true, None);
        state::write_json(
            &on_disk,
            state::EXIT,
            &ExitRecord {
                status: ExitStatus::Code(4),
                exited_at_ms: 5,
            },
        )
        .unwrap();
        drop(s1);
        let Event::Exited(ex) = next(&mut ra).await else {
            panic!("the exit")
        };
        assert_eq!((ex.id.as_str(), ex.status), ("r1", ExitStatus::Code(4)));
        drop(s2);
        let Event::Exited(ex) = next(&mut ra).await else {
            panic!("the exit")
        };
        assert_eq!(
            (ex.id.as_str(), ex.status),
            (
                "r2",
                ExitStatus::Lost {
                    error: "its supervisor died without recording an exit status".into()
                }
            )
        );
    }

    #[tokio::test]
    async fn an_application_whose_shim_died_is_killed_once_the_shim_has_ended_and_only_if_it_is_the_same_process() {
        let tmp = tempfile::tempdir().unwrap();
        // The application, and its shim: a child that ends a moment after
        // its connection closes (as a killed shim's does).
        let app = Child::sleep(true);
        let mut shim_proc = std::process::Command::new("sleep").arg("0.3").spawn().unwrap();
        let dir = record(tmp.path(), "r1", "app", Some(app.record(shim_proc.id())), None);
        let (shim, _task) = running_shim(&dir, app.pid());
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let (a, mut ra) = subscriber(1, "mgr-a", 8);
        sup.find("r1").unwrap().attach(a, true, None);
        drop(shim);
        let Event::Exited(ex) = next(&mut ra).await else {
            panic!("the exit")
        };
        assert_eq!(
            ex.status,
            ExitStatus::Lost {
                error: "its supervisor died without recording an exit status; the unmonitored application was killed"
                    .into()
            }
        );
        let mut app = app;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(app.0.wait().unwrap().signal(), Some(9));
        shim_proc.wait().unwrap();

        // Its shim still running, or another process under its pid: left alone.
        for (shim_pid, ticks_off) in [(std::process::id(), 0), (dead_pid(), 1)] {
            let tmp = tempfile::tempdir().unwrap();
            let app = Child::sleep(true);
            let mut rec = app.record(shim_pid);
            rec.start_ticks = rec.start_ticks.map(|t| t + ticks_off);
            record(tmp.path(), "r1", "app", Some(rec), None);
            let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
            let list = sup.list();
            assert_eq!(
                list[0].exit,
                Some(ExitStatus::Lost {
                    error: "its supervisor is gone and recorded no exit status".into()
                }),
                "shim {shim_pid}, ticks off by {ticks_off}"
            );
            assert!(common::proc::running(app.pid()), "not killed");
        }
    }
}
