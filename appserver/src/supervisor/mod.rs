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
//! attaching to it. Several managers may watch one process (two services
//! with the same run string): each gets its output and its exit. A manager
//! is known by the name in its hello, so its reconnection replaces its old
//! connection instead of counting as another manager.
//!
//! An exit status stays until a manager acknowledges it; once one has, a new
//! launch of the service starts afresh, and the record stays, by instance id,
//! until every other manager that was attached at the exit (or whose
//! connection had closed less than `ack_wait` before it) has acknowledged it
//! too. A manager whose connection is gone is waited for `ack_wait` (the
//! server's `idleTimeout`) from the moment it went; a connection that went
//! dead without closing is closed by the idle timeout first. Every record is
//! also bounded by `exitHistory` (oldest dropped, with a log line).

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
use state::{Environment, ExitRecord, Meta, PidRecord, StateDir};

/// Limits the supervisor enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_processes: usize,
    pub stop_grace: Duration,
    pub exit_history: usize,
    /// How long an exit status is kept for a manager whose connection
    /// closed, counted from the close (see the module documentation).
    pub ack_wait: Duration,
}

/// How long a shim whose connection closed is given to finish exiting.
const SHIM_EXIT_WAIT: Duration = Duration::from_secs(2);

/// Managers remembered per process after their connection closed.
const DEPARTED_KEPT: usize = 16;

/// What every application is started with.
#[derive(Debug, Clone, Default)]
pub struct AppSettings {
    /// `None`: the daemon's own environment, unchanged.
    pub environment: Option<Environment>,
    /// The OOM score adjustment (the daemon's own is not passed on).
    pub oom_score_adj: i32,
}

/// Where a session wants to hear about the processes it is attached to.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: u64,
    /// The manager behind the session, the same across its reconnections.
    pub manager: Arc<str>,
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
    /// The managers attached now, one connection each.
    subscribers: Vec<Subscriber>,
    /// Managers whose connection closed, and when (at most [`DEPARTED_KEPT`]).
    departed: Vec<(Arc<str>, tokio::time::Instant)>,
    /// Managers that still have to acknowledge the exit (set at the exit).
    owed: Vec<Arc<str>>,
    /// A manager has acknowledged the exit.
    acked: bool,
    /// Requests to the shim; `None` when no shim is reachable.
    link: Option<mpsc::Sender<ShimRequest>>,
    /// Output lines that could not be queued for the subscriber, in all.
    dropped: u64,
    /// Of those, the ones each subscriber (by session) has not been told of yet.
    untold: HashMap<u64, u64>,
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
            key: self.key.clone(),
            service: self.display.clone(),
            name: self.name.clone(),
            pid: self.pid,
            started_at_ms: self.started_at_ms,
            exit: inner.exit.as_ref().map(|e| e.status.clone()),
            attached: inner.subscribers.iter().any(|s| !s.tx.is_closed()),
            managers: inner.subscribers.iter().filter(|s| !s.tx.is_closed()).count(),
            acked: inner.acked,
            probe: self.probe.clone(),
        }
    }

    /// Adds `sub` to the process's subscribers (replacing an older connection
    /// of the same manager) and returns the reply to send it.
    fn attach(&self, sub: Subscriber, attached: bool) -> Started {
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
    fn output(&self, stream: Stream, line: String) {
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
fn dropped_notice(lines: u64, unconnected: Option<u64>) -> String {
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
struct Table {
    /// The current process of each service: running, or exited and not yet
    /// acknowledged by any manager.
    by_key: HashMap<String, Arc<Proc>>,
    /// Exits acknowledged by one manager and still owed to others, by id.
    lingering: HashMap<InstanceId, Arc<Proc>>,
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
    settings: AppSettings,
    /// The server's own path, shown as the shims' argv[0]; they are started
    /// from /proc/self/exe, this very binary, whatever happened to the file.
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
    pub async fn open(state: StateDir, limits: Limits, settings: AppSettings, exe: PathBuf) -> Arc<Supervisor> {
        let sup = Arc::new(Supervisor {
            state,
            limits,
            settings,
            exe,
            table: Mutex::new(Table::default()),
            launching: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            janitor: Mutex::new(janitor()),
        });
        sup.recover().await;
        // The sweeper holds no strong reference: it ends with the supervisor.
        let weak = Arc::downgrade(&sup);
        let every = (sup.limits.ack_wait / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(sup) => sup.sweep(),
                    None => return,
                }
            }
        });
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
        let procs = self.all();
        let mut list: Vec<ProcessInfo> = procs.iter().map(|p| p.info()).collect();
        list.sort_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms).then(a.id.cmp(&b.id)));
        list
    }

    /// Every record: current and lingering.
    fn all(&self) -> Vec<Arc<Proc>> {
        let table = self.table();
        table.by_key.values().chain(table.lingering.values()).cloned().collect()
    }

    fn find(&self, id: &str) -> Option<Arc<Proc>> {
        let table = self.table();
        let current = table.by_key.values().find(|p| p.id == id);
        current.or_else(|| table.lingering.get(id)).cloned()
    }

    /// Launches a service, or attaches `sub` to it if it is already known.
    pub async fn launch(self: &Arc<Self>, req: Launch, sub: Subscriber) -> Result<Started, ErrorReply> {
        let spec = ServiceSpec::parse(req.run, req.name).map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
        let key = spec.key();
        let slot = LaunchSlot::take(self, &key);
        let _guard = slot.lock.lock().await;
        {
            let mut table = self.table();
            if let Some(want) = &req.attach_only {
                // A manager coming back to its instance: current, or collected
                // by another manager and kept for this one.
                let current = table.by_key.get(&key).filter(|p| p.id == *want);
                let kept = table.lingering.get(want).filter(|p| p.key == key);
                return match current.or(kept) {
                    Some(p) => Ok(p.attach(sub, true)),
                    None => Err(gone(&spec)),
                };
            }
            if let Some(p) = table.by_key.get(&key) {
                return Ok(p.attach(sub, true));
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
        let (id, record) = self
            .create_record()
            .map_err(|e| internal("cannot create process record", &e))?;
        let dir = record.path().to_path_buf();
        let meta = Meta {
            id: id.clone(),
            key: key.clone(),
            run: spec.run.clone(),
            argv: spec.argv.clone(),
            name: spec.name.clone(),
            probe: spec.probe().map(|p| p.subcommand().to_string()),
            created_at_ms: now_ms(),
            environment: self.settings.environment.clone(),
            oom_score_adj: Some(self.settings.oom_score_adj).filter(|&a| a != 0),
        };
        let cleanup = |e: ErrorReply| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        record
            .write_json(state::META, &meta)
            .map_err(|e| cleanup(internal("cannot write process record", &e)))?;
        // This very binary, even if a package upgrade has replaced or
        // removed its file since: a shim always speaks our protocol.
        let mut shim = tokio::process::Command::new("/proc/self/exe")
            .arg0(&self.exe)
            .arg("shim")
            .arg(&dir)
            .env_remove(crate::notify::ENV[0])
            .env_remove(crate::notify::ENV[1])
            .env_remove(crate::notify::ENV[2])
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
        let connected = if matches!(read, Ok(Ok(n)) if n > 0) {
            // The shim starts the process once we have accepted its hello.
            link::connect(&record, link::Expect::New)
                .await
                .map_err(|e| internal("process supervisor failed", &e))
        } else {
            let why = record
                .read(state::SHIM_LOG)
                .ok()
                .flatten()
                .unwrap_or_else(|| b"no log".to_vec());
            Err(internal(
                "process supervisor failed to start",
                &String::from_utf8_lossy(&why).trim(),
            ))
        };
        if connected.is_err() {
            // Our own unreaped child: its pid cannot have been reused. Had
            // its hello been refused, it started nothing; it must not linger.
            let _ = shim.start_kill();
        }
        // Reap the shim whenever it ends; it is never waited on otherwise.
        tokio::spawn(async move {
            let _ = shim.wait().await;
        });
        let stream = connected.map_err(cleanup)?;
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

    /// Creates a record directory under a fresh id (exclusively: an id
    /// that exists in any form is skipped, never reused).
    fn create_record(&self) -> std::io::Result<(InstanceId, state::Dir)> {
        for _ in 0..64 {
            let id = self.new_id();
            if let Some(dir) = self.state.create_record(&id)? {
                return Ok((id, dir));
            }
        }
        Err(std::io::Error::other("every fresh record id is taken"))
    }

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

    /// Records an exit, notes which managers owe an acknowledgement, and
    /// tells every subscriber.
    async fn record_exit(&self, proc: &Arc<Proc>, ex: Exited) {
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
    fn enforce_history(&self) {
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
    fn sweep(&self) {
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
            let spec = ServiceSpec {
                run: meta.run.clone(),
                argv: meta.argv.clone(),
                name: meta.name.clone(),
            };
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
                display: spec.display(),
                name: meta.name.clone(),
                probe: meta.probe.clone(),
                dir: dir.clone(),
                pid: pid.map_or(0, |p| p.pid),
                started_at_ms: pid.map_or(meta.created_at_ms, |p| p.started_at_ms),
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
