//! Launching: the limit check, one launch at a time per service, the new
//! record directory, and the shim that starts the process.
//!
//! A shim's exec and start-up (loading the binary, its runtime, reserving
//! its space, binding its socket) are most of what a launch costs, so they
//! are done ahead: at start, and after a launch when no other is under way,
//! the server starts a *spare* shim in a directory of `<stateDir>/spare/`
//! (no `meta.json`), connects to it and reads its hello, and keeps it
//! waiting. A launch takes
//! the spare (or makes one there and then, when none is ready), writes
//! `meta.json` into its directory, renames the directory to `procs/<id>`
//! and says `Start`. What makes this crash-safe is the order, the same as
//! a shim started for its launch: `meta.json` is on disk before the record
//! is in `procs/`, and the record (with the shim's socket in it) is there
//! before `Start`; nothing is started before `Start`. A server that dies
//! before the rename leaves a spare, which ends when its connection closes
//! (and the next server clears `spare/`); one that dies after it leaves an
//! ordinary shim waiting for `Start` in `procs/`, which the next server
//! adopts and starts. A spare is not a process: it counts for no limit.
//!
//! The spare's shim is forked by the zygote (`zygote.rs`), which makes a
//! fork, not an exec, of each shim; if the zygote fails, that shim is
//! exec'd as it always was, and the next one asks a new zygote.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use common::message::{now_ms, ErrorKind, ErrorReply, Forward, InstanceId, Launch, Started};
use common::service::ServiceSpec;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncRead, Interest};
use tokio::sync::mpsc;

use super::output::OutputMeta;
use super::state::{self, Meta};
use super::table::{Proc, ProcInner};
use super::{err, link, zygote, Subscriber, Supervisor};
use crate::policy::Decision;
use crate::runas::RunAs;

impl Supervisor {
    /// Launches a service, or attaches `sub` to it if it is already known.
    ///
    /// `gate` (the command policy) judges the argv of the process attached
    /// to, or of the one to start, and says whom to run the latter as.
    pub async fn launch(
        self: &Arc<Self>,
        req: Launch,
        sub: Subscriber,
        gate: &(dyn Fn(&[String]) -> Decision + Sync),
    ) -> Result<Started, ErrorReply> {
        let spec = ServiceSpec::parse(req.run, req.name).map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
        let key = spec.key();
        let slot = LaunchSlot::take(self, &key);
        let _guard = slot.lock.lock().await;
        let run_as = {
            let mut table = self.table();
            if let Some(want) = &req.attach_only {
                // A manager coming back to its instance: current, or collected
                // by another manager and kept for this one.
                let current = table.by_key.get(&key).filter(|p| p.id == *want);
                let kept = table.lingering.get(want).filter(|p| p.key == key);
                return match current.or(kept) {
                    Some(p) => permitted(gate(&p.service.argv)).map(|_| p.attach(sub, true, req.forward)),
                    None => Err(gone(&spec)),
                };
            }
            // The process filed under a name may run another program than
            // this request's: the one that runs is judged.
            if let Some(p) = table.by_key.get(&key) {
                return permitted(gate(&p.service.argv)).map(|_| p.attach(sub, true, req.forward));
            }
            let run_as = permitted(gate(&spec.argv))?;
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
            run_as
        };
        let counted = Spawning(self);
        // The subscriber is attached before the shim's first line can arrive.
        let spawned = self.spawn(&spec, key, sub, req.forward, run_as).await;
        if let Ok((proc, _)) = &spawned {
            self.table().by_key.insert(proc.key.clone(), proc.clone());
        }
        drop(counted);
        // The next spare is made once no launch is under way: launches that
        // come together each start their own shim at once (as many as come),
        // and a spare made beside them would only compete with them for CPU.
        if self.table().spawning == 0 {
            self.refill(None);
        }
        let (proc, started) = spawned?;
        let exited = !proc.is_running();
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

    /// Starts `spec` under the spare shim (made now if none is ready),
    /// waits until its process runs, and attaches `sub`.
    async fn spawn(
        self: &Arc<Self>,
        spec: &ServiceSpec,
        key: String,
        sub: Subscriber,
        forward: Option<Forward>,
        run_as: Option<RunAs>,
    ) -> Result<(Arc<Proc>, Started), ErrorReply> {
        let mut spare = match self.take_spare() {
            Some(spare) => spare,
            None => self.make_spare().await?,
        };
        let mut meta = Meta {
            id: String::new(),
            key: key.clone(),
            service: spec.clone(),
            created_at_ms: now_ms(),
            environment: self.settings.environment.clone(),
            oom_score_adj: Some(self.settings.oom_score_adj).filter(|&a| a != 0),
            output: Some(OutputMeta::for_service(&self.limits.output, &key)),
            run_as,
        };
        // meta.json, then the rename into procs/, then Start: see the module
        // documentation for why this order is the crash-safety argument.
        let filed = self.file(&mut spare, &mut meta);
        let Spare {
            dir,
            shim,
            process,
            pid,
            ..
        } = spare;
        let fail = |process: ShimProcess, e: ErrorReply| {
            // Our own unreaped child: its pid cannot have been reused. It
            // started nothing, or could not tell us: it must not linger.
            process.kill();
            dir.remove_unstarted();
            e
        };
        if let Err(e) = filed {
            return Err(fail(process, internal("cannot write process record", &e)));
        }
        if super::shim::test_fault("exit-before-shim") {
            // A crash of the server, and of the shim with it, between filing
            // the record and Start (tests only; the shim alone surviving is
            // the adoption case). The shim is alive and unreaped (our child,
            // or the zygote's, which reaps only ended ones): the pid is its own.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            std::process::exit(99);
        }
        let stream = match shim.start().await {
            Ok(stream) => stream,
            Err(e) => {
                let why = match dir.read(state::SHIM_LOG) {
                    Ok(Some(log)) => format!("{e} ({})", String::from_utf8_lossy(&log).trim()),
                    _ => e.to_string(),
                };
                return Err(fail(process, internal("process supervisor failed", &why)));
            }
        };
        let proc = Arc::new(Proc {
            id: meta.id,
            key,
            display: spec.display(),
            service: meta.service,
            dir: dir.path().to_path_buf(),
            pid: stream.pid,
            started_at_ms: stream.started_at_ms,
            output: meta.output.clone(),
            inner: Mutex::new(ProcInner::default()),
        });
        // Attached before the link reads the first output line.
        let started = proc.attach(sub, false, forward);
        self.start_link(&proc, stream);
        Ok((proc, started))
    }

    /// Writes `meta` (under a fresh id) into the spare's directory, which
    /// has its `unstarted` marker since it was made (checked again here: an
    /// existing marker costs one lookup), and renames it to that id in
    /// `procs/`, never over anything there: every record with a `meta.json`
    /// this server files says whether its application may have been started.
    fn file(&self, spare: &mut Spare, meta: &mut Meta) -> std::io::Result<()> {
        spare.dir.mark(state::UNSTARTED)?;
        for _ in 0..64 {
            meta.id = self.new_id();
            spare.dir.write_json(state::META, &*meta)?;
            if self.state.promote(&mut spare.dir, &spare.name, &meta.id)? {
                return Ok(());
            }
        }
        Err(std::io::Error::other("every fresh record id is taken"))
    }

    /// The spare shim, if one is ready and still there.
    fn take_spare(&self) -> Option<Spare> {
        let mut spare = self.spares().ready.take()?;
        if spare.shim.is_gone() {
            tracing::debug!(
                pid = spare.pid,
                "the spare process supervisor is gone; starting one now"
            );
            self.discard(spare);
            return None;
        }
        Some(spare)
    }

    /// Starts a shim in a new directory of `spare/` and waits until it is
    /// connected and waits for `Start`.
    async fn make_spare(self: &Arc<Self>) -> Result<Spare, ErrorReply> {
        let (mut name, mut dir) = self.new_spare_dir()?;
        let started = match self.fork_shim(&dir, &name).await {
            Ok(started) => Ok(started),
            Err(DirUsed::No) => self.exec_shim(&dir, &name),
            Err(DirUsed::Maybe) => {
                // A shim forked for that directory may be about: removing
                // the directory makes it discard itself, and another is used.
                let _ = std::fs::remove_dir_all(dir.path());
                (name, dir) = self.new_spare_dir()?;
                self.exec_shim(&dir, &name)
            }
        };
        let (pid, process, stdout) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir.path());
                return Err(internal("cannot start process supervisor", &e));
            }
        };
        let mut line = String::new();
        let mut out = tokio::io::BufReader::new(stdout);
        let read = tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line)).await;
        drop(out);
        let waiting = if matches!(read, Ok(Ok(n)) if n > 0) {
            match link::hello(&dir, link::Expect::New).await {
                Ok(link::Hello::Waiting(shim)) => Ok(shim),
                Ok(link::Hello::Running(_)) => Err(internal(
                    "process supervisor failed",
                    &"it said its process runs before it was told to start one",
                )),
                Err(e) => Err(internal("process supervisor failed", &e)),
            }
        } else {
            let why = dir
                .read(state::SHIM_LOG)
                .ok()
                .flatten()
                .unwrap_or_else(|| b"no log".to_vec());
            Err(internal(
                "process supervisor failed to start",
                &String::from_utf8_lossy(&why).trim(),
            ))
        };
        match waiting {
            Ok(shim) => Ok(Spare {
                name,
                dir,
                shim,
                process,
                pid,
                made: tokio::time::Instant::now(),
            }),
            Err(e) => {
                process.kill();
                let _ = std::fs::remove_dir_all(dir.path());
                Err(e)
            }
        }
    }

    /// A new spare's directory, marked `unstarted`.
    fn new_spare_dir(&self) -> Result<(String, state::Dir), ErrorReply> {
        let (name, dir) = self
            .create_spare()
            .map_err(|e| internal("cannot create process record", &e))?;
        // Made ahead, as the shim is: off the launch's path (a spare's
        // directory is never filed as a process until a launch renames it).
        if let Err(e) = dir.mark(state::UNSTARTED) {
            let _ = std::fs::remove_dir_all(dir.path());
            return Err(internal("cannot create process record", &e));
        }
        Ok((name, dir))
    }

    /// Has the zygote fork a spare's shim in `dir` (see `zygote.rs`):
    /// its pid, its handle, and its stdout, on which it says `listening`
    /// once its socket is bound. When it cannot, says whether a shim may
    /// have been forked for `dir` all the same.
    async fn fork_shim(self: &Arc<Self>, dir: &state::Dir, name: &str) -> Result<NewShim, DirUsed> {
        if self.zygote.is_unsupported() {
            return Err(DirUsed::No);
        }
        let forked = match self.zygote.fork(&self.exe, dir.path()).await {
            Ok(forked) => forked,
            Err(e) => {
                if self.zygote.is_unsupported() {
                    tracing::info!("process supervisors are started directly on this system: {e}");
                } else {
                    tracing::warn!("the zygote could not start a process supervisor, started directly: {e}");
                }
                return Err(match e {
                    zygote::Failed::Lost(_) => DirUsed::Maybe,
                    zygote::Failed::NotAsked(_) | zygote::Failed::Refused(_) => DirUsed::No,
                });
            }
        };
        // An `OwnedFd`, owned by the `AsyncFd` until dropped: why
        // `try_with_interest` is deprecated does not apply (as in appmgr's
        // oneshot.rs), and the replacement is unsafe.
        #[allow(deprecated)]
        let pidfd = AsyncFd::try_with_interest(forked.pidfd, Interest::READABLE).map_err(|e| {
            let (pidfd, e) = e.into_parts();
            let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
            tracing::warn!("cannot watch the process supervisor the zygote forked ({e}); started directly");
            DirUsed::Maybe
        })?;
        let process = self.reap(Watched::Pidfd(pidfd), Some(name.to_string()));
        Ok((forked.pid, process, Box::new(forked.hello)))
    }

    /// Execs a spare's shim in `dir` (this very binary, even if a package
    /// upgrade has replaced or removed its file since: a shim always speaks
    /// our protocol), as `fork_shim` returns it.
    fn exec_shim(self: &Arc<Self>, dir: &state::Dir, name: &str) -> std::io::Result<NewShim> {
        let mut child = tokio::process::Command::new(common::exe::SELF)
            .arg0(&self.exe)
            .arg("shim")
            .arg(dir.path())
            .env_remove(crate::notify::ENV[0])
            .env_remove(crate::notify::ENV[1])
            .env_remove(crate::notify::ENV[2])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(false)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take().expect("piped stdout");
        let process = self.reap(Watched::Child(child), Some(name.to_string()));
        Ok((pid, process, Box::new(stdout)))
    }

    /// Makes a spare in the background (not before `at`), unless one is
    /// ready or being made, the server is shutting down, or spares are off.
    /// One that cannot be made is tried again later (after 1 s, doubling up
    /// to a minute); meanwhile each launch starts its shim itself.
    pub(super) fn refill(self: &Arc<Self>, at: Option<tokio::time::Instant>) {
        if !self.limits.keep_spare || self.table().shutting_down {
            return;
        }
        {
            let mut slot = self.spares();
            if slot.ready.is_some() || slot.making {
                return;
            }
            slot.making = true;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(at) = at {
                tokio::time::sleep_until(at).await;
            }
            let Some(sup) = weak.upgrade() else { return };
            let mut made = sup.make_spare().await;
            if let Ok(spare) = &mut made {
                static FAULTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if super::shim::test_fault("first-spare-killed") && !FAULTED.swap(true, Ordering::Relaxed) {
                    // Killed by someone after its hello, and reaped before it is filed.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(spare.pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    spare.process.kill.closed().await;
                }
            }
            let shutting_down = sup.table().shutting_down;
            let mut slot = sup.spares();
            slot.making = false;
            match made {
                // It ended between its hello and this lock: its reaper
                // found no spare ready to replace, so it is replaced here.
                Ok(spare) if spare.process.has_ended() => {
                    drop(slot);
                    sup.replace_ended(spare);
                }
                Ok(spare) if slot.ready.is_none() && !shutting_down => {
                    slot.ready = Some(spare);
                    slot.backoff = Duration::ZERO;
                }
                Ok(spare) => {
                    drop(slot);
                    sup.discard(spare);
                }
                Err(e) => {
                    slot.backoff = (slot.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                    let again = tokio::time::Instant::now() + slot.backoff;
                    drop(slot);
                    tracing::warn!(
                        "cannot start a process supervisor ahead of the next launch: {}",
                        e.message
                    );
                    sup.refill(Some(again));
                }
            }
        });
    }

    /// Ends a spare no launch took: it starts nothing once its connection closes.
    pub(super) fn discard(&self, spare: Spare) {
        let Spare { dir, process, .. } = spare;
        process.kill();
        self.remove_later(dir.path().to_path_buf());
    }

    /// A spare shim ended (`reap`): if no launch took it, it is replaced.
    fn spare_gone(self: &Arc<Self>, name: &str) {
        let gone = {
            let mut slot = self.spares();
            match &slot.ready {
                Some(s) if s.name == name => slot.ready.take(),
                _ => None,
            }
        };
        if let Some(spare) = gone {
            self.replace_ended(spare);
        }
    }

    /// Replaces a spare that ended before a launch took it, not sooner than
    /// a second after it was made (no busy loop on a shim that cannot stay up).
    fn replace_ended(self: &Arc<Self>, spare: Spare) {
        tracing::warn!(
            pid = spare.pid,
            "the spare process supervisor ended before a launch took it; starting another"
        );
        let at = spare.made + Duration::from_secs(1);
        self.discard(spare);
        self.refill(Some(at));
    }

    /// Reaps a shim we started whenever it ends (it is never waited on
    /// otherwise); the handle kills it while it is still unreaped.
    fn reap(self: &Arc<Self>, mut shim: Watched, spare: Option<String>) -> ShimProcess {
        let (kill, killed) = oneshot::channel::<()>();
        let sup = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut killed = killed;
            tokio::select! {
                _ = shim.ended() => {}
                Ok(()) = &mut killed => {
                    shim.kill();
                    shim.ended().await;
                }
            }
            // `has_ended` from now on, before `spare_gone` looks at the
            // slot: a spare is either filed before this (and found there)
            // or seen to have ended by the one filing it (`refill`).
            drop(killed);
            if let (Some(name), Some(sup)) = (spare, sup.upgrade()) {
                sup.spare_gone(&name);
            }
        });
        ShimProcess { kill }
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, SpareSlot> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn start_link(self: &Arc<Self>, proc: &Arc<Proc>, stream: link::ShimStream) {
        let (tx, rx) = mpsc::channel(8);
        proc.lock().link = Some(tx);
        tokio::spawn(link::run(self.clone(), proc.clone(), stream, rx));
    }

    /// Creates a spare's directory under a fresh name (exclusively).
    fn create_spare(&self) -> std::io::Result<(String, state::Dir)> {
        for _ in 0..64 {
            let name = self.new_id();
            if let Some(dir) = self.state.create_spare(&name)? {
                return Ok((name, dir));
            }
        }
        Err(std::io::Error::other("every fresh spare name is taken"))
    }
}

fn internal(what: &str, e: &dyn std::fmt::Display) -> ErrorReply {
    err(ErrorKind::Internal, format!("{what}: {e}"))
}

/// A shim started ahead of the next launch: its directory is in
/// `<stateDir>/spare/` with no `meta.json`, and it waits, connected and past
/// its hello, for `Start` (see the module documentation).
pub(super) struct Spare {
    name: String,
    dir: state::Dir,
    shim: link::WaitingShim,
    process: ShimProcess,
    pid: u32,
    made: tokio::time::Instant,
}

/// The spare ready for the next launch, and whether one is being made.
#[derive(Default)]
pub(super) struct SpareSlot {
    ready: Option<Spare>,
    making: bool,
    /// The wait before the next try after a spare could not be made.
    backoff: Duration,
}

impl SpareSlot {
    pub(super) fn take_ready(&mut self) -> Option<Spare> {
        self.ready.take()
    }
}

impl std::fmt::Debug for SpareSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpareSlot")
            .field("ready", &self.ready.as_ref().map(|s| (&s.name, s.pid)))
            .field("making", &self.making)
            .finish()
    }
}

/// A shim just started: its pid, its handle, its stdout (`listening`).
type NewShim = (u32, ShimProcess, Box<dyn AsyncRead + Unpin + Send>);

/// Whether a shim may have been started for a directory the zygote was
/// asked about, when the zygote gave back none.
enum DirUsed {
    No,
    Maybe,
}

/// A shim we started: our child (exec'd), or the zygote's (forked), which
/// the zygote reaps; either way the handle names that very process.
enum Watched {
    Child(tokio::process::Child),
    Pidfd(AsyncFd<std::os::fd::OwnedFd>),
}

impl Watched {
    /// Returns once it has ended (and, our child, been reaped).
    async fn ended(&mut self) {
        match self {
            Watched::Child(child) => {
                let _ = child.wait().await;
            }
            // A pidfd is readable from the process's exit on, for good.
            Watched::Pidfd(pidfd) => {
                let _ = pidfd.readable().await;
            }
        }
    }

    fn kill(&mut self) {
        match self {
            Watched::Child(child) => {
                let _ = child.start_kill();
            }
            Watched::Pidfd(pidfd) => {
                let _ = rustix::process::pidfd_send_signal(pidfd.get_ref(), rustix::process::Signal::KILL);
            }
        }
    }
}

/// A shim process we started, watched (and reaped) by its own task (see `reap`).
struct ShimProcess {
    kill: oneshot::Sender<()>,
}

impl ShimProcess {
    /// Kills it, if it has not ended (and been reaped) already.
    fn kill(self) {
        let _ = self.kill.send(());
    }

    /// True once it has ended and been reaped.
    fn has_ended(&self) -> bool {
        self.kill.is_closed()
    }
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

/// The command policy's decision as a result: whom to run as, or the refusal.
fn permitted(d: Decision) -> Result<Option<RunAs>, ErrorReply> {
    match d {
        Decision::Open => Ok(None),
        Decision::Allowed { run_as, .. } => Ok(run_as),
        Decision::Refused(why) => Err(err(ErrorKind::Forbidden, why)),
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

#[cfg(test)]
mod tests {
    use super::super::table::tests::{filed, meta, subscriber, supervisor};
    use super::*;
    use std::path::Path;

    fn launch(name: &str) -> Launch {
        Launch {
            run: vec![format!("/bin/{name}")],
            name: Some(name.into()),
            attach_only: None,
            forward: None,
        }
    }

    fn open(_: &[String]) -> Decision {
        Decision::Open
    }

    #[tokio::test]
    async fn a_known_service_is_attached_to_when_the_policy_allows_what_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let (a, _ra) = subscriber(1, "mgr-a", 8);
        let s = sup.launch(launch("app"), a, &open).await.unwrap();
        assert_eq!((s.id.as_str(), s.attached), ("id-app", true));
        // The policy judges the argv of the process that runs.
        let judged = Mutex::new(Vec::new());
        let refuse = |argv: &[String]| {
            judged.lock().unwrap().push(argv.to_vec());
            Decision::Refused("not you".into())
        };
        let (b, _rb) = subscriber(2, "mgr-b", 8);
        let mut other_run = launch("app");
        other_run.run = vec!["/bin/other".into()];
        let e = sup.launch(other_run, b, &refuse).await.unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Forbidden, "not you"));
        assert_eq!(*judged.lock().unwrap(), [vec!["/bin/app".to_string()]]);
        assert_eq!(p.info().managers, 1, "a refused manager is not attached");
        let allowed = |_: &[String]| Decision::Allowed {
            rule: "r".into(),
            run_as: None,
        };
        let (b, _rb) = subscriber(2, "mgr-b", 8);
        assert!(sup.launch(launch("app"), b, &allowed).await.unwrap().attached);
        assert_eq!(p.info().managers, 2);
        assert!(sup.launching.lock().unwrap().is_empty(), "no launch lock left behind");
    }

    #[tokio::test]
    async fn a_reattach_finds_its_own_instance_current_or_kept_or_is_told_it_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let p = filed(&sup, tmp.path(), "app", Some(meta(tmp.path())));
        let again = |id: &str| {
            let mut l = launch("app");
            l.attach_only = Some(id.into());
            l
        };
        let (a, _ra) = subscriber(1, "mgr-a", 8);
        assert!(sup.launch(again("id-app"), a.clone(), &open).await.unwrap().attached);
        let e = sup.launch(again("id-other"), a.clone(), &open).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.message,
            "the process for service app is gone: cmappserver has no record of it (the guest rebooted, or its record was dropped)"
        );
        // Collected by another manager and kept by id for this one.
        let (b, _rb) = subscriber(2, "mgr-b", 8);
        p.attach(b, false, None);
        sup.record_exit(&p, super::super::table::tests::exit(&p, 0)).await;
        sup.ack("id-app", "mgr-b").unwrap();
        assert_eq!(sup.monitored(), 0);
        let s = sup.launch(again("id-app"), a.clone(), &open).await.unwrap();
        assert!(s.attached && s.exited);
        // Kept under another service's key: not this one.
        let mut other = again("id-app");
        other.name = Some("other".into());
        other.run = vec!["/bin/other".into()];
        assert_eq!(
            sup.launch(other, a.clone(), &open).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
        // And refused by the policy like any attach.
        let refuse = |_: &[String]| Decision::Refused("no".into());
        assert_eq!(
            sup.launch(again("id-app"), a, &refuse).await.unwrap_err().kind,
            ErrorKind::Forbidden
        );
    }

    #[tokio::test]
    async fn a_new_launch_is_refused_by_the_policy_the_shutdown_or_the_limit_before_anything_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let (a, _ra) = subscriber(1, "mgr-a", 8);
        let refuse = |_: &[String]| Decision::Refused("no rule".into());
        let e = sup.launch(launch("new"), a.clone(), &refuse).await.unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Forbidden, "no rule"));
        let e = sup
            .launch(
                Launch {
                    run: vec![],
                    ..launch("x")
                },
                a.clone(),
                &open,
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        // 8 processes at most (the test supervisor's limit): 7 running and
        // one being started fill it; exited ones do not count.
        for i in 0..7 {
            filed(&sup, tmp.path(), &format!("p{i}"), None);
        }
        let done = filed(&sup, tmp.path(), "done", None);
        sup.record_exit(&done, super::super::table::tests::exit(&done, 0)).await;
        sup.table().spawning = 1;
        let e = sup.launch(launch("new"), a.clone(), &open).await.unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::Limit, "limit of 8 monitored processes reached")
        );
        assert_eq!(sup.table().spawning, 1, "a refused launch counts nothing");
        sup.table().spawning = 0;
        // One place left: the launch gets past the limit (and fails here,
        // where the record cannot be made), and gives the place back.
        std::fs::remove_dir_all(tmp.path().join("state/spare")).unwrap();
        let e = sup.launch(launch("new"), a.clone(), &open).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(e.message.starts_with("cannot create process record: "), "{}", e.message);
        assert_eq!(sup.table().spawning, 0);
        assert!(sup.launching.lock().unwrap().is_empty());
        sup.shutdown(false).await;
        let e = sup.launch(launch("new"), a, &open).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::ShuttingDown);
    }

    #[tokio::test]
    async fn the_policys_run_as_is_what_a_new_process_runs_as() {
        let run_as = RunAs {
            user: Some("nobody".into()),
            ..RunAs::default()
        };
        assert_eq!(permitted(Decision::Open).unwrap(), None);
        let allowed = Decision::Allowed {
            rule: "r".into(),
            run_as: Some(run_as.clone()),
        };
        assert_eq!(permitted(allowed).unwrap(), Some(run_as));
        let e = permitted(Decision::Refused("why".into())).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Forbidden, "why"));
    }

    #[tokio::test]
    async fn instance_ids_are_unique_and_name_the_server() {
        let tmp = tempfile::tempdir().unwrap();
        let sup = supervisor(tmp.path(), 4, Duration::from_secs(60)).await;
        let a = sup.new_id();
        let b = sup.new_id();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 3, "{a}");
        assert_eq!(u32::from_str_radix(parts[1], 16).unwrap(), std::process::id());
        assert!(
            u64::from_str_radix(parts[0], 16).unwrap() > 1_600_000_000_000,
            "ms since the epoch"
        );
        let (name, dir) = sup.create_spare().unwrap();
        assert_eq!(dir.path(), Path::new(&tmp.path().join("state/spare").join(&name)));
    }
}
