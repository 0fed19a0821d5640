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
//!
//! The rooms: [`table`] holds the records in memory and decides when one is
//! forgotten; [`launch`] starts a new process under a shim; [`recover`]
//! adopts what a previous cmappserver left and settles the exit of a process
//! whose shim is gone; [`procfs`] reads /proc; [`link`] is the connection to
//! one shim; [`shim`] is the shim itself; [`output`] is where the shim puts
//! the output in the guest; [`state`] is the state directory.

mod launch;
mod link;
pub mod output;
mod procfs;
pub mod proto;
mod recover;
pub mod shim;
pub mod state;
mod table;
pub mod zygote;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::message::{ErrorKind, ErrorReply, Event, Logs, ProcessInfo};
use common::service::ServiceSpec;
use tokio::sync::mpsc;

use output::OutputMeta;
use proto::ShimRequest;
use state::{Environment, StateDir};
use table::{Proc, Table};

/// Limits the supervisor enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_processes: usize,
    pub stop_grace: Duration,
    pub exit_history: usize,
    /// How long an exit status is kept for a manager whose connection
    /// closed, counted from the close (see the module documentation).
    pub ack_wait: Duration,
    /// Where the applications' output goes in the guest.
    pub output: output::Settings,
    /// Keep a shim started ahead of the next launch (see [`launch`]). Off
    /// where no shim can be started (unit tests: /proc/self/exe is theirs).
    pub keep_spare: bool,
}

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
    /// The shim started ahead of the next launch.
    spare: Mutex<launch::SpareSlot>,
    /// Forks the spare shims.
    zygote: zygote::Zygote,
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
            spare: Mutex::new(launch::SpareSlot::default()),
            zygote: zygote::Zygote::default(),
            seq: AtomicU64::new(0),
            janitor: Mutex::new(janitor()),
        });
        sup.recover().await;
        sup.refill(None);
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

    /// The guest output file of the service `req` names, and how many files
    /// its rotation keeps. The path is made here, from the service's identity
    /// (see [`output::file_stem`]), never taken from the request.
    /// The argv of the process filed under this run string or name, if one is.
    pub fn service_argv(&self, run: &[String], name: &Option<String>) -> Option<Vec<String>> {
        let spec = ServiceSpec::parse(run.to_vec(), name.clone()).ok()?;
        let table = self.table();
        table.by_key.get(&spec.key()).map(|p| p.service.argv.clone())
    }

    pub fn log_file(&self, req: &Logs) -> Result<(PathBuf, u32), ErrorReply> {
        let spec = ServiceSpec::parse(req.run.clone(), req.name.clone())
            .map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
        let key = spec.key();
        let known = self.table().by_key.get(&key).map(|p| p.output.clone());
        let meta = match known {
            Some(Some(m)) => m,
            Some(None) => {
                return Err(err(
                    ErrorKind::NotFound,
                    format!(
                        "{} was started by an older cmappserver, which keeps no output in the guest",
                        spec.display()
                    ),
                ))
            }
            None => OutputMeta::for_service(&self.limits.output, &key),
        };
        match meta.file {
            Some(f) => Ok((f, meta.files)),
            None => Err(err(
                ErrorKind::NotFound,
                format!(
                    "the output of {} goes to {}, not to a file cmappserver can read back",
                    spec.display(),
                    meta.describe()
                ),
            )),
        }
    }

    /// Every record: current and lingering.
    fn all(&self) -> Vec<Arc<Proc>> {
        let table = self.table();
        table.by_key.values().chain(table.lingering.values()).cloned().collect()
    }

    /// The program and arguments of process `id`, for the command policy.
    pub fn argv_of(&self, id: &str) -> Option<Vec<String>> {
        self.find(id).map(|p| p.service.argv.clone())
    }

    fn find(&self, id: &str) -> Option<Arc<Proc>> {
        let table = self.table();
        let current = table.by_key.values().find(|p| p.id == id);
        current.or_else(|| table.lingering.get(id)).cloned()
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

    /// Refuses new launches from now on; optionally stops every process and
    /// waits (bounded by the grace period) for them to end.
    pub async fn shutdown(&self, stop_processes: bool) {
        let procs: Vec<Arc<Proc>> = {
            let mut table = self.table();
            table.shutting_down = true;
            table.by_key.values().cloned().collect()
        };
        if let Some(spare) = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take_ready() {
            self.discard(spare);
        }
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

#[cfg(test)]
impl Supervisor {
    /// Files a running process of the service `/bin/<name>` in the table
    /// (no shim behind it), for the session's tests; returns its id.
    pub(crate) fn file_for_test(&self, tmp: &std::path::Path, name: &str) -> String {
        table::tests::filed(self, tmp, name, None).id.clone()
    }
}

#[cfg(test)]
pub(crate) use table::tests::capture_logs;
