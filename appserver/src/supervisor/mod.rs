//! Process supervision: the table of monitored processes and everything that
//! starts, stops, watches and forgets them.
//!
//! Each process runs under its own small supervisor process, the shim (see
//! [`shim`]), which owns it, reads its output and records its exit status in
//! the state directory (see [`state`]). cmappserver talks to each shim over a
//! Unix socket (see [`proto`] and [`link`]). Because the shims, not
//! cmappserver, are the processes' parents, a crash, restart or upgrade of
//! cmappserver never touches an application: the next cmappserver reads the
//! records, reconnects to the shims, and hands out exit statuses that arrived
//! while nobody was listening.
//!
//! Sessions (manager connections) subscribe to a process by launching or
//! attaching to it; the latest subscriber wins and the previous one is told
//! it was superseded. An exit status stays in the table until a manager
//! acknowledges it, bounded by `exitHistory` (oldest dropped, with a log line).

mod link;
pub mod proto;
pub mod shim;
pub mod state;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::message::{
    now_ms, ErrorKind, ErrorReply, Event, ExitStatus, Exited, InstanceId, Launch, Output, ProcessInfo, Started, Stream,
};
use common::service::ServiceSpec;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use proto::ShimRequest;
use state::{ExitRecord, Meta, PidRecord, StateDir};

/// Limits the supervisor enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_processes: usize,
    pub stop_grace: Duration,
    pub exit_history: usize,
}

/// Where a session wants to hear about the processes it is attached to.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: u64,
    pub tx: mpsc::Sender<Event>,
}

/// One monitored process.
#[derive(Debug)]
pub struct Proc {
    pub id: InstanceId,
    pub key: String,
    pub display: String,
    pub name: Option<String>,
    pub probe: Option<String>,
    pub dir: PathBuf,
    pub pid: u32,
    pub started_at_ms: u64,
    inner: Mutex<ProcInner>,
}

#[derive(Debug, Default)]
struct ProcInner {
    exit: Option<Exited>,
    subscriber: Option<Subscriber>,
    /// Requests to the shim; `None` when no shim is reachable.
    link: Option<mpsc::Sender<ShimRequest>>,
    /// Output lines that could not be queued for the subscriber.
    dropped: u64,
}

impl Proc {
    fn is_running(&self) -> bool {
        self.lock().exit.is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(&self) -> ProcessInfo {
        let inner = self.lock();
        ProcessInfo {
            id: self.id.clone(),
            service: self.display.clone(),
            name: self.name.clone(),
            pid: self.pid,
            started_at_ms: self.started_at_ms,
            exit: inner.exit.as_ref().map(|e| e.status.clone()),
            attached: inner.subscriber.as_ref().is_some_and(|s| !s.tx.is_closed()),
            probe: self.probe.clone(),
        }
    }

    /// Makes `sub` the process's subscriber and returns the reply to send it.
    fn attach(&self, sub: Subscriber, attached: bool) -> Started {
        let mut inner = self.lock();
        if let Some(old) = inner.subscriber.take() {
            if old.session != sub.session {
                let _ = old
                    .tx
                    .try_send(Event::Superseded(common::message::Ack { id: self.id.clone() }));
            }
        }
        let exited = inner.exit.clone();
        if let Some(ex) = &exited {
            // The reply goes out first (the session writes it before reading
            // its queue), so the manager sees Started, then Exited.
            let _ = sub.tx.try_send(Event::Exited(ex.clone()));
        }
        inner.subscriber = Some(sub);
        Started {
            id: self.id.clone(),
            service: self.display.clone(),
            pid: self.pid,
            started_at_ms: self.started_at_ms,
            attached,
            exited: exited.is_some(),
        }
    }

    /// Forwards one output line to the subscriber, never waiting.
    fn output(&self, stream: Stream, line: String) {
        let mut inner = self.lock();
        let Some(sub) = &inner.subscriber else { return };
        if sub
            .tx
            .try_send(Event::Output(Output {
                id: self.id.clone(),
                stream,
                line,
            }))
            .is_err()
        {
            inner.dropped += 1;
            if inner.dropped.is_power_of_two() {
                tracing::warn!(service = %self.display, dropped = inner.dropped, "manager is not keeping up; output lines dropped");
            }
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    by_key: HashMap<String, Arc<Proc>>,
    /// Exited processes in the order they ended, for the history bound.
    exited: VecDeque<Arc<Proc>>,
    shutting_down: bool,
    /// Launches past the limit check whose process is not in `by_key` yet.
    spawning: usize,
}

/// The process table.
#[derive(Debug)]
pub struct Supervisor {
    state: StateDir,
    limits: Limits,
    exe: PathBuf,
    table: Mutex<Table>,
    /// One lock per service being launched, so that two managers launching
    /// the same service at once start it once, while different services
    /// start in parallel.
    launching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    seq: AtomicU64,
    /// Record directories to delete, handed to one long-lived thread.
    janitor: Mutex<std::sync::mpsc::Sender<PathBuf>>,
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        kind,
        message: message.into(),
    }
}

impl Supervisor {
    /// Opens the state directory and adopts every process recorded in it.
    pub async fn open(state: StateDir, limits: Limits, exe: PathBuf) -> Arc<Supervisor> {
        let sup = Arc::new(Supervisor {
            state,
            limits,
            exe,
            table: Mutex::new(Table::default()),
            launching: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            janitor: Mutex::new(janitor()),
        });
        sup.recover().await;
        sup
    }

    /// Deletes a record directory on the janitor thread.
    fn remove_later(&self, dir: PathBuf) {
        let sent = self
            .janitor
            .lock()
            .map(|j| j.send(dir.clone()).is_ok())
            .unwrap_or(false);
        if !sent {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Processes monitored now (running or with an uncollected exit).
    pub fn monitored(&self) -> usize {
        self.table().by_key.len()
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        let procs: Vec<Arc<Proc>> = self.table().by_key.values().cloned().collect();
        let mut list: Vec<ProcessInfo> = procs.iter().map(|p| p.info()).collect();
        list.sort_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms).then(a.id.cmp(&b.id)));
        list
    }

    fn find(&self, id: &str) -> Option<Arc<Proc>> {
        self.table().by_key.values().find(|p| p.id == id).cloned()
    }

    /// Launches a service, or attaches `sub` to it if it is already known.
    pub async fn launch(self: &Arc<Self>, req: Launch, sub: Subscriber) -> Result<Started, ErrorReply> {
        let spec = ServiceSpec::parse(req.run, req.name).map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
        let key = spec.key();
        let slot = LaunchSlot::take(self, &key);
        let _guard = slot.lock.lock().await;
        {
            let mut table = self.table();
            if let Some(p) = table.by_key.get(&key) {
                if req.attach_only.as_ref().is_some_and(|id| *id != p.id) {
                    return Err(gone(&spec));
                }
                return Ok(p.attach(sub, true));
            }
            if req.attach_only.is_some() {
                return Err(gone(&spec));
            }
            if table.shutting_down {
                return Err(err(
                    ErrorKind::ShuttingDown,
                    "cmappserver is shutting down and starts no new processes",
                ));
            }
            let running = table.by_key.values().filter(|p| p.is_running()).count();
            if running + table.spawning >= self.limits.max_processes {
                return Err(err(
                    ErrorKind::Limit,
                    format!("limit of {} monitored processes reached", self.limits.max_processes),
                ));
            }
            table.spawning += 1;
        }
        let counted = Spawning(self);
        // The subscriber is attached before the shim's first line can arrive.
        let (proc, started) = self.spawn(&spec, key, sub).await?;
        let exited = !proc.is_running();
        self.table().by_key.insert(proc.key.clone(), proc.clone());
        drop(counted);
        if exited {
            self.table().exited.push_back(proc.clone());
            self.enforce_history();
        }
        tracing::info!(service = %proc.display, pid = proc.pid, id = %proc.id, "started");
        Ok(started)
    }

    fn new_id(&self) -> InstanceId {
        format!(
            "{:x}-{:x}-{:x}",
            now_ms(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Starts a shim for `spec`, waits until its process runs, and attaches `sub`.
    async fn spawn(
        self: &Arc<Self>,
        spec: &ServiceSpec,
        key: String,
        sub: Subscriber,
    ) -> Result<(Arc<Proc>, Started), ErrorReply> {
        let internal = |what: &str, e: &dyn std::fmt::Display| err(ErrorKind::Internal, format!("{what}: {e}"));
        let id = self.new_id();
        let dir = self.state.proc_dir(&id);
        std::fs::create_dir_all(&dir).map_err(|e| internal("cannot create process record", &e))?;
        let meta = Meta {
            id: id.clone(),
            key: key.clone(),
            run: spec.run.clone(),
            argv: spec.argv.clone(),
            name: spec.name.clone(),
            probe: spec.probe().map(|p| p.subcommand().to_string()),
            created_at_ms: now_ms(),
        };
        let cleanup = |e: ErrorReply| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        state::write_json(&dir, state::META, &meta)
            .map_err(|e| cleanup(internal("cannot write process record", &e)))?;
        let mut shim = tokio::process::Command::new(&self.exe)
            .arg("shim")
            .arg(&dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| cleanup(internal("cannot start process supervisor", &e)))?;
        let mut line = String::new();
        let mut out = tokio::io::BufReader::new(shim.stdout.take().expect("piped stdout"));
        let read = tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line)).await;
        drop(out);
        // Reap the shim whenever it ends; it is never waited on otherwise.
        tokio::spawn(async move {
            let _ = shim.wait().await;
        });
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            let why = std::fs::read_to_string(dir.join(state::SHIM_LOG)).unwrap_or_else(|_| "no log".into());
            return Err(cleanup(internal("process supervisor failed to start", &why.trim())));
        }
        // The shim starts the process once we are connected.
        let stream = link::connect(&dir)
            .await
            .map_err(|e| cleanup(internal("process supervisor failed", &e)))?;
        let proc = Arc::new(Proc {
            id,
            key,
            display: spec.display(),
            name: spec.name.clone(),
            probe: meta.probe.clone(),
            dir: dir.clone(),
            pid: stream.pid,
            started_at_ms: stream.started_at_ms,
            inner: Mutex::new(ProcInner::default()),
        });
        // Attached before the link reads the first output line.
        let started = proc.attach(sub, false);
        self.start_link(&proc, stream);
        Ok((proc, started))
    }

    fn start_link(self: &Arc<Self>, proc: &Arc<Proc>, stream: link::ShimStream) {
        let (tx, rx) = mpsc::channel(8);
        proc.lock().link = Some(tx);
        tokio::spawn(link::run(self.clone(), proc.clone(), stream, rx));
    }

    /// Reads `exit.json` for a process whose shim is gone; without one, the
    /// status is lost, and an application still running is killed: nobody
    /// can report its exit any more, and the cluster's restart of the service
    /// must not find a second copy running beside it.
    fn exit_from_disk(proc: &Proc, why: &str) -> Exited {
        let (status, at) = match state::read_json::<ExitRecord>(&proc.dir, state::EXIT) {
            Ok(Some(r)) => (r.status, r.exited_at_ms),
            Ok(None) => {
                let killed = kill_orphan(proc);
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
        Exited {
            id: proc.id.clone(),
            pid: proc.pid,
            status,
            exited_at_ms: at,
        }
    }

    /// Records the exit of a process whose shim connection closed without an
    /// `Exited` event: the shim recorded it on disk just before, or died.
    async fn record_exit_from_disk(&self, proc: &Arc<Proc>) {
        let ex = Self::exit_from_disk(proc, "its supervisor died without recording an exit status");
        self.record_exit(proc, ex).await;
    }

    /// Records an exit and tells the subscriber, if any.
    async fn record_exit(&self, proc: &Arc<Proc>, ex: Exited) {
        let sub = {
            let mut inner = proc.lock();
            if inner.exit.is_some() {
                return;
            }
            inner.exit = Some(ex.clone());
            inner.link = None;
            inner.subscriber.clone()
        };
        tracing::info!(service = %proc.display, pid = proc.pid, "{}", ex.status);
        self.table().exited.push_back(proc.clone());
        self.enforce_history();
        if let Some(sub) = sub {
            // Waits if the session's queue is full: an exit is never dropped.
            let _ = sub.tx.send(Event::Exited(ex)).await;
        }
    }

    /// Drops the oldest uncollected exit statuses beyond `exitHistory`.
    fn enforce_history(&self) {
        let mut table = self.table();
        while table.exited.len() > self.limits.exit_history {
            let Some(old) = table.exited.pop_front() else {
                break;
            };
            if table.by_key.get(&old.key).is_some_and(|p| Arc::ptr_eq(p, &old)) {
                table.by_key.remove(&old.key);
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

    /// Asks the shim of `id` to stop its process group.
    pub async fn stop(&self, id: &str, grace: Option<Duration>) -> Result<(), ErrorReply> {
        let proc = self
            .find(id)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no process with id {id}")))?;
        let link = {
            let inner = proc.lock();
            if inner.exit.is_some() {
                return Ok(()); // already ended; its Exited has been or will be sent
            }
            inner.link.clone()
        };
        let grace = grace.unwrap_or(self.limits.stop_grace);
        let link = link.ok_or_else(|| {
            err(
                ErrorKind::Internal,
                format!("the supervisor of {} is unreachable", proc.display),
            )
        })?;
        tracing::info!(service = %proc.display, pid = proc.pid, "stopping (grace {:?})", grace);
        link.send(ShimRequest::Stop {
            grace_ms: grace.as_millis() as u64,
        })
        .await
        .map_err(|_| {
            err(
                ErrorKind::Internal,
                format!("the supervisor of {} is gone", proc.display),
            )
        })
    }

    /// Forgets the exit status of `id`: a manager has it.
    pub fn ack(&self, id: &str) -> Result<(), ErrorReply> {
        let mut table = self.table();
        let Some(proc) = table.by_key.values().find(|p| p.id == id).cloned() else {
            return Ok(()); // already forgotten: acknowledging twice is harmless
        };
        if proc.is_running() {
            return Err(err(ErrorKind::BadRequest, format!("{} is still running", proc.display)));
        }
        table.by_key.remove(&proc.key);
        table.exited.retain(|p| !Arc::ptr_eq(p, &proc));
        drop(table);
        // Off the reply path: the manager exits on the reply, and removing a
        // directory can wait on the disk (ids are unique; nothing reuses it).
        self.remove_later(proc.dir.clone());
        Ok(())
    }

    /// Detaches a closed session from every process it was attached to.
    pub fn detach(&self, session: u64) {
        let procs: Vec<Arc<Proc>> = self.table().by_key.values().cloned().collect();
        for p in procs {
            let mut inner = p.lock();
            if inner.subscriber.as_ref().is_some_and(|s| s.session == session) {
                inner.subscriber = None;
            }
        }
    }

    /// Refuses new launches from now on; optionally stops every process and
    /// waits (bounded by the grace period) for them to end.
    pub async fn shutdown(&self, stop_processes: bool) {
        let procs: Vec<Arc<Proc>> = {
            let mut table = self.table();
            table.shutting_down = true;
            table.by_key.values().cloned().collect()
        };
        if !stop_processes {
            return;
        }
        for p in &procs {
            let _ = self.stop(&p.id, None).await;
        }
        let deadline = tokio::time::Instant::now() + self.limits.stop_grace + Duration::from_secs(2);
        while procs.iter().any(|p| p.is_running()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adopts the processes recorded in the state directory.
    async fn recover(self: &Arc<Self>) {
        for dir in self.state.proc_dirs() {
            let meta: Meta = match state::read_json(&dir, state::META) {
                Ok(Some(m)) => m,
                other => {
                    tracing::warn!(dir = %dir.display(), "discarding an unreadable process record: {:?}", other.err());
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
            };
            let pid: Option<PidRecord> = state::read_json(&dir, state::PID).ok().flatten();
            let spec = ServiceSpec {
                run: meta.run.clone(),
                argv: meta.argv.clone(),
                name: meta.name.clone(),
            };
            let proc = Arc::new(Proc {
                id: meta.id.clone(),
                key: meta.key.clone(),
                display: spec.display(),
                name: meta.name.clone(),
                probe: meta.probe.clone(),
                dir: dir.clone(),
                pid: pid.map_or(0, |p| p.pid),
                started_at_ms: pid.map_or(meta.created_at_ms, |p| p.started_at_ms),
                inner: Mutex::new(ProcInner::default()),
            });
            let connected = match link::connect(&dir).await {
                Ok(stream) => {
                    self.start_link(&proc, stream);
                    true
                }
                Err(_) => {
                    let ex = Self::exit_from_disk(&proc, "its supervisor is gone and recorded no exit status");
                    proc.lock().exit = Some(ex.clone());
                    tracing::info!(service = %proc.display, pid = proc.pid, "ended while cmappserver was away: {}", ex.status);
                    false
                }
            };
            let mut table = self.table();
            if let Some(dup) = table.by_key.insert(proc.key.clone(), proc.clone()) {
                tracing::warn!(service = %dup.display, "two records for one service; keeping the newer");
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
/// record, so that a recycled pid is never touched. Returns a note for the status.
fn kill_orphan(proc: &Proc) -> String {
    let Ok(Some(record)) = state::read_json::<PidRecord>(&proc.dir, state::PID) else {
        return String::new();
    };
    // Only when the shim itself is really gone (not merely its connection).
    if record.pid == 0 || running(record.shim_pid) || !same_process(&record) {
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

/// True while `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

/// True when the recorded process still runs as the leader of its group and
/// started at the recorded tick.
fn same_process(record: &PidRecord) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", record.pid)) else {
        return false;
    };
    let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    rest.first() != Some(&"Z")
        && rest.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(record.pid)
        && record.start_ticks.is_some()
        && state::start_ticks(record.pid) == record.start_ticks
}

/// Starts the thread that deletes record directories off the request path.
fn janitor() -> std::sync::mpsc::Sender<PathBuf> {
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    let spawned = std::thread::Builder::new().name("janitor".into()).spawn(move || {
        for dir in rx {
            let _ = std::fs::remove_dir_all(dir);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the janitor thread ({e}); records are deleted inline");
    }
    tx
}

/// One launch counted in `Table::spawning` until dropped (also on error or cancellation).
struct Spawning<'a>(&'a Supervisor);

impl Drop for Spawning<'_> {
    fn drop(&mut self) {
        self.0.table().spawning -= 1;
    }
}

/// A service's launch lock, removed from the map by the last one to let go.
struct LaunchSlot<'a> {
    sup: &'a Supervisor,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> LaunchSlot<'a> {
    fn take(sup: &'a Supervisor, key: &str) -> LaunchSlot<'a> {
        let mut map = sup.launching.lock().unwrap_or_else(|p| p.into_inner());
        let lock = map.entry(key.to_string()).or_default().clone();
        LaunchSlot {
            sup,
            key: key.to_string(),
            lock,
        }
    }
}

impl Drop for LaunchSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.sup.launching.lock().unwrap_or_else(|p| p.into_inner());
        // Two holders: the map and this slot. More: another launch of the same service waits.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

fn gone(spec: &ServiceSpec) -> ErrorReply {
    err(
        ErrorKind::NotFound,
        format!(
            "the process for service {} is gone: cmappserver has no record of it (the guest rebooted, or its record was dropped)",
            spec.display()
        ),
    )
}
