//! The per-process supervisor ("shim"): `cmappserver shim <dir>`.
//!
//! cmappserver starts one shim per monitored process, in a process group of
//! its own, and the shim starts the process. The shim is the process's
//! parent for its whole life, so it learns of the exit from the kernel the
//! instant it happens and gets the real status, whether or not cmappserver is
//! running at that moment. This is what lets applications outlive a crash,
//! a restart or an upgrade of cmappserver (the design container runtimes use
//! for the same problem: containerd's shims, conmon).
//!
//! The shim:
//! 0. closes every descriptor above 2 it inherited (so none reaches the
//!    application) and opens its record directory without following links;
//! 1. binds `<dir>/sock` (0600), says so on its stdout, waits for the server
//!    that started it to connect (a peer of another uid is refused), says
//!    hello, and waits for `Start`: a server that does not accept the hello
//!    never gets a process started. Then it starts the process (its own
//!    process group, stdin from /dev/null, stdout and stderr piped, the
//!    configured environment and OOM score), records `pid.json`, and sends
//!    `Started` with the pid;
//!
//!    A shim is started ahead of its launch (a *spare*, see
//!    [`super::launch`]): its directory is `<stateDir>/spare/<name>`, with no
//!    `meta.json`, and it waits, connected and past its hello, for as long as
//!    its server keeps the connection. The launch writes `meta.json`, renames
//!    the directory to `procs/<id>` (the descriptor, the socket in it and
//!    the connection all follow the directory; only the path the shim was
//!    given is stale, and the shim takes its new one from there) and says
//!    `Start`. The shim reads `meta.json` only then, and starts nothing
//!    unless its directory is in `procs/` under the id `meta.json` names, so
//!    that a restarted server finds the record and the socket. If the
//!    connection closes first, a spare that is still a spare (its server
//!    died or dropped it before the rename) removes its directory and ends;
//!    one already renamed into `procs/` is an ordinary shim waiting for
//!    `Start`, which a restarted server adopts;
//! 2. reads the process's output, writes it to the guest log (see
//!    [`super::output`]: while the disk keeps up, a full write queue makes
//!    the pipes wait, so nothing is lost; a slow or full disk costs lines,
//!    dropped and counted, never time), keeps its last lines, and forwards
//!    it to the one connected server (never waiting for a slow or absent
//!    server: lines are dropped, and counted). A second connection is
//!    refused while that server lives; once it is gone, a new one (the restarted server) takes
//!    over, and a stop the old one asked for is still carried out;
//! 3. on `Stop`, sends TERM to the process group and KILL after the grace;
//! 4. when the process exits, drains what is left in the pipes, writes
//!    `exit.json` (atomically), then `tail.json`, sends `Exited` with the
//!    last lines to the connected server, and exits. A grandchild that keeps
//!    the pipes open does not delay any of it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::connection::{self, MessageWriter};
use common::message::{now_ms, ExitStatus, Stream, TailLine, MAX_LINE_LEN};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::output::GuestLog;
use super::procfs;
use super::proto::{ShimEvent, ShimRequest, OLDEST_ADOPTED, SHIM_PROTOCOL};
use super::state::{self, Dir, ExitRecord, Meta, PidRecord};

/// Lines queued for the server before the shim starts dropping them.
const OUTPUT_QUEUE: usize = 1024;
/// How long a new shim waits for a server to accept it and say `Start`.
const FIRST_CONNECT: Duration = Duration::from_secs(30);
/// The `PATH` of a clean environment.
pub const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a shim gave up. Written to its log in the record directory, where
/// cmappserver reads it when the shim never said it was listening.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("cannot read {}: {source}", state::META)]
    ReadMeta {
        #[source]
        source: std::io::Error,
    },
    #[error("{} is missing", state::META)]
    MissingMeta,
    #[error("{} names no program to run", state::META)]
    NoProgram,
    /// A spare told to start whose directory is not a record in `procs/`.
    #[error(
        "told to start, but this supervisor's directory is not filed as the record {} names",
        state::META
    )]
    NotFiled,
    /// A spare (no `meta.json`) that cannot open the records' directory.
    #[error("cannot open the process records' directory {}: {source}", path.display())]
    NoRecords {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Its socket: removing a stale one, or binding it.
    #[error("cannot {doing}: {source}")]
    Socket {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no server accepted this supervisor; nothing started")]
    NotAccepted,
    /// `unstarted` was gone when `Start` came: a recovering server took it.
    #[error("the launch was withdrawn (its record has no {}); nothing started", state::UNSTARTED)]
    Withdrawn,
    /// Writing to the record directory (`what`: the pid, the exit status, ...).
    #[error("cannot {what}: {source}")]
    Record {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Entry point of `cmappserver shim <dir>`; returns the shim's exit code.
pub fn main(dir: PathBuf) -> i32 {
    close_inherited_descriptors();
    let mut dir = match Dir::open(&dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cmappserver shim: {}: {e}", dir.display());
            return 1;
        }
    };
    // A shim watches a handful of descriptors (its socket, one server link,
    // two pipes, the child's pidfd): a few events per wake-up, not 1024.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_io_events_per_tick(64)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(&dir, &format!("cannot start runtime: {e}"));
            return 1;
        }
    };
    // The shim's whole life is this one future: boxed, it lives on the heap
    // at its size, not copied down the stack through `block_on`'s frames
    // (stack pages, once touched, stay with the process for good).
    match rt.block_on(Box::pin(run(&mut dir))) {
        Ok(()) => 0,
        Err(e) => {
            log(&dir, &e.to_string());
            1
        }
    }
}

/// Closes every descriptor above 2: whatever the daemon inherited (from a
/// shell, an init system, a package script) must not reach the application.
/// Everything the shim opens afterwards is close-on-exec.
pub(super) fn close_inherited_descriptors() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // The directory listing's own descriptor is closed already: EBADF.
        let _ = nix::unistd::close(fd);
    }
}

fn log(dir: &Dir, msg: &str) {
    let _ = dir.append(
        state::SHIM_LOG,
        &format!("{} shim[{}]: {msg}\n", now_ms(), std::process::id()),
    );
}

/// Tells the server waiting on our stdout that the socket is bound.
fn print_listening() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening");
    let _ = out.flush();
}

/// The protocol version this shim announces (tests may pretend to be
/// another version with `CMAPPSERVER_TEST_SHIM_PROTOCOL`).
fn announced_protocol() -> u32 {
    std::env::var("CMAPPSERVER_TEST_SHIM_PROTOCOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHIM_PROTOCOL)
}

/// The program and arguments to exec for `meta` (a built-in probe runs as
/// `cmappserver <probe> args...` from this same binary), with its environment.
fn command_for(meta: &Meta) -> tokio::process::Command {
    let argv = &meta.service.argv;
    let (program, args): (&str, Vec<&str>) = match meta.service.probe {
        // This very binary, even if its file was replaced or removed since.
        Some(probe) => (
            common::exe::SELF,
            std::iter::once(probe.subcommand())
                .chain(argv[1..].iter().map(String::as_str))
                .collect(),
        ),
        None => (&argv[0], argv[1..].iter().map(String::as_str).collect()),
    };
    let mut cmd = match &meta.run_as {
        // Through `cmappserver run-as`, which becomes the user and execs
        // the program in place (see `crate::runas`).
        Some(run_as) => {
            let mut c = tokio::process::Command::new(common::exe::SELF);
            c.arg0("cmappserver")
                .arg("run-as")
                .args(run_as.to_args())
                .arg("--")
                .arg(program)
                .args(&args);
            c
        }
        None => {
            let mut c = tokio::process::Command::new(program);
            if meta.service.probe.is_some() {
                c.arg0("cmappserver");
            }
            c.args(&args);
            c
        }
    };
    // Another user gets a login's environment (the run-as helper adds HOME,
    // USER, LOGNAME, SHELL and PATH), never the daemon's.
    let login = meta.run_as.as_ref().is_some_and(|r| r.user.is_some());
    if login {
        cmd.env_clear();
    }
    if let Some(env) = &meta.environment {
        if env.clean && !login {
            cmd.env_clear().env("PATH", CLEAN_PATH);
        }
        for (k, v) in &env.set {
            cmd.env(k, v);
        }
    }
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    cmd
}

/// Sets our OOM score adjustment (which the application inherits) to `adj`
/// and returns the previous one: cmappserver's own protection (the unit's
/// `OOMScoreAdjust`) is for the daemon, not for the applications.
fn set_oom_score_adj(adj: i32) -> Option<i32> {
    const PATH: &str = "/proc/self/oom_score_adj";
    let old: i32 = std::fs::read_to_string(PATH).ok()?.trim().parse().ok()?;
    if old != adj {
        std::fs::write(PATH, adj.to_string()).ok()?;
    }
    Some(old)
}

fn spawn_failure(err: &std::io::Error, program: &str) -> ExitStatus {
    let code = match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    ExitStatus::SpawnFailed {
        code,
        error: format!("{program}: {err}"),
    }
}

/// Binds the socket (0600 whatever the umask), through the directory's descriptor.
fn bind(dir: &Dir) -> Result<UnixListener, ShimError> {
    dir.remove(state::SOCK).map_err(|source| ShimError::Socket {
        doing: "remove a stale socket".into(),
        source,
    })?;
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(dir.fd_path(state::SOCK));
    nix::sys::stat::umask(old);
    bound.map_err(|source| ShimError::Socket {
        doing: format!("bind {}", dir.path().join(state::SOCK).display()),
        source,
    })
}

/// The peer of a connection: refused unless it runs as our user. Returns
/// its pid and start tick, to tell later whether it still runs.
fn check_peer(dir: &Dir, stream: &UnixStream) -> Option<Peer> {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            log(dir, &format!("refused a connection: cannot read its credentials: {e}"));
            return None;
        }
    };
    if cred.uid() != state::own_uid() {
        log(
            dir,
            &format!(
                "refused a connection from uid {} (pid {:?}): only uid {} may connect",
                cred.uid(),
                cred.pid(),
                state::own_uid()
            ),
        );
        return None;
    }
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    Some(Peer {
        pid,
        ticks: procfs::start_ticks(pid),
    })
}

/// The process at the other end of a link.
#[derive(Debug, Clone, Copy)]
struct Peer {
    pid: u32,
    ticks: Option<u64>,
}

impl Peer {
    /// True while the same process (not a later one with its pid) runs.
    fn alive(&self) -> bool {
        self.pid != 0 && procfs::running(self.pid) && procfs::start_ticks(self.pid) == self.ticks
    }
}

/// How the wait for `Start` ended.
enum Waited {
    /// A server accepted our hello and said `Start`.
    Started(Box<Halves>, Peer),
    /// A spare whose server closed the connection before any launch took it
    /// (or that no server reached in time): nothing to start, ever.
    Discarded,
    /// No server accepted this shim in time.
    NotAccepted,
}

/// Waits for a server that accepts our hello and says `Start`. A spare
/// (`procs`: where a launch files it) waits for as long as its server keeps
/// the connection; once that closes, it is discarded, unless a launch had
/// already renamed it into `procs/`: then it waits like any new shim (at
/// most [`FIRST_CONNECT`]) for the next server, which adopts it.
///
/// Until its first connection, a spare also watches the server that started
/// it (`parent`, our parent process: the server, or its zygote, which ends
/// with it) and its own directory: once the server
/// is gone (or, had it died before we could see who it was, once the next
/// server has cleared `spare/`), nobody will ever connect, and the spare is
/// discarded at once rather than at the deadline.
async fn wait_for_start(
    dir: &mut Dir,
    listener: &UnixListener,
    procs: Option<&Dir>,
    mut parent: Option<Pid>,
) -> Waited {
    let mut deadline = tokio::time::Instant::now() + FIRST_CONNECT;
    let mut spare = procs.is_some();
    let gave_up = |spare: bool| if spare { Waited::Discarded } else { Waited::NotAccepted };
    loop {
        let Some(stream) = accept(listener, deadline, parent.take(), dir).await else {
            return gave_up(spare);
        };
        let Some(peer) = check_peer(dir, &stream) else { continue };
        let (mut rd, mut wr) = connection::split(stream);
        let hello = ShimEvent::Hello {
            protocol: announced_protocol(),
            pid: 0,
            started_at_ms: 0,
            waiting: true,
        };
        if wr.write(&hello).await.is_err() {
            continue;
        }
        let request = if spare {
            Ok(rd.read::<ShimRequest>().await)
        } else {
            tokio::time::timeout_at(deadline, rd.read::<ShimRequest>()).await
        };
        match request {
            Ok(Ok(Some(ShimRequest::Start))) => return Waited::Started(Box::new((rd, wr)), peer),
            Err(_) => return gave_up(spare),
            Ok(_) if spare => match procs.and_then(|p| filed(dir, p)) {
                Some((path, _)) => {
                    dir.moved_to(path);
                    spare = false;
                    deadline = tokio::time::Instant::now() + FIRST_CONNECT;
                    log(
                        dir,
                        "the server launching this supervisor went before it said start; waiting for another",
                    );
                }
                None => return Waited::Discarded,
            },
            Ok(_) => log(
                dir,
                "a server closed the connection without accepting our hello; waiting for another",
            ),
        }
    }
}

/// The next connection, if one comes before `deadline` (and, given a
/// `parent`, while that process is still our parent and `dir` is still
/// there: a restarted server clears the spares of the one before).
async fn accept(
    listener: &UnixListener,
    deadline: tokio::time::Instant,
    parent: Option<Pid>,
    dir: &Dir,
) -> Option<UnixStream> {
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            accepted = tokio::time::timeout_at(deadline, listener.accept()) => {
                return accepted.ok()?.ok().map(|(stream, _)| stream);
            }
            _ = check.tick(), if parent.is_some() => {
                if Some(nix::unistd::getppid()) != parent || dir.removed() {
                    return None;
                }
            }
        }
    }
}

/// Where a spare's directory is filed, with its `meta.json`, when a launch
/// has renamed it to `procs/<id>` (the id `meta.json` names); `None` while
/// it is not there, whatever `meta.json` says.
fn filed(dir: &Dir, procs: &Dir) -> Option<(PathBuf, Meta)> {
    let meta: Meta = dir.read_json(state::META).ok()??;
    let plain = !meta.id.is_empty() && meta.id != ".." && meta.id != "." && !meta.id.contains('/');
    (plain && procs.holds(&meta.id, dir)).then(|| (procs.path().join(&meta.id), meta))
}

/// The records' directory a spare in `<stateDir>/spare/<name>` is filed
/// into: `<stateDir>/procs`.
fn records_of_spare(dir: &Dir) -> Result<Dir, ShimError> {
    let root = dir.path().parent().and_then(Path::parent).unwrap_or(Path::new("/"));
    let path = root.join("procs");
    Dir::open(&path).map_err(|source| ShimError::NoRecords { path, source })
}

/// Removes our own directory, if its path still names it (we started
/// nothing: see [`Dir::remove_unstarted`]).
fn remove_own(dir: &Dir) {
    if Dir::open(dir.path()).is_ok_and(|here| here.is(dir)) {
        dir.remove_unstarted();
    }
}

fn check_program(meta: &Meta) -> Result<(), ShimError> {
    if meta.service.argv.first().is_none_or(String::is_empty) {
        return Err(ShimError::NoProgram);
    }
    Ok(())
}

async fn run(dir: &mut Dir) -> Result<(), ShimError> {
    // A shim started for a launch finds its meta.json; a spare, started
    // ahead of the next launch, finds none until that launch.
    let early: Option<Meta> = dir
        .read_json(state::META)
        .map_err(|source| ShimError::ReadMeta { source })?;
    let procs = match &early {
        Some(meta) => {
            check_program(meta)?;
            None
        }
        None => Some(records_of_spare(dir)?),
    };
    // A spare's server is its parent (see `wait_for_start`).
    let parent = procs.is_some().then(nix::unistd::getppid);
    // Room for the pid and exit records, whatever fills the disk meanwhile:
    // an application whose exit could not be recorded is never started.
    dir.write(state::RESERVE, &[0; RESERVED])
        .map_err(|source| ShimError::Record {
            what: "reserve space for the exit record".into(),
            source,
        })?;
    let listener = bind(dir)?;
    print_listening();

    // The process starts only once the server that asked for it is connected
    // and has accepted our hello, so that not even its first line of output
    // can be missed, and a server of another version never leaves it
    // unmonitored. A server that died in between never says Start: then
    // nothing is started at all.
    let (first, first_peer) = match wait_for_start(dir, &listener, procs.as_ref(), parent).await {
        Waited::Started(halves, peer) => (*halves, peer),
        Waited::Discarded => {
            remove_own(dir);
            return Ok(());
        }
        Waited::NotAccepted => {
            remove_own(dir);
            return Err(ShimError::NotAccepted);
        }
    };
    if test_fault("removal-cut-short") {
        // A shim that fails once told to start (tests only): the launch
        // removes the record it filed, and crashes halfway (`Dir::remove_unstarted`).
        return Err(ShimError::NotAccepted);
    }
    let meta = match (early, &procs) {
        (Some(meta), _) => meta,
        // A spare: only now is there a meta.json, and only a record filed
        // where a restarted server finds it (its socket with it) is started.
        (None, Some(procs)) => {
            let (path, meta) = filed(dir, procs).ok_or(ShimError::NotFiled)?;
            dir.moved_to(path);
            check_program(&meta)?;
            meta
        }
        (None, None) => return Err(ShimError::MissingMeta),
    };

    // The last moment the application can still be withheld: a recovering
    // server that could not reach us may have taken `unstarted` (and
    // discarded the record); then nothing is started. A record without one
    // (it was taken, or someone removed it) is not ours to start.
    match dir.take(state::UNSTARTED) {
        Ok(true) => {}
        Ok(false) => return Err(ShimError::Withdrawn),
        Err(source) => {
            return Err(ShimError::Record {
                what: format!("remove {} before starting the application", state::UNSTARTED),
                source,
            })
        }
    }
    let started_at_ms = now_ms();
    let old_oom = set_oom_score_adj(meta.oom_score_adj.unwrap_or(0));
    let spawned = command_for(&meta).spawn();
    if let Some(old) = old_oom {
        // Our own protection, if we may lower it again (root may).
        let _ = set_oom_score_adj(old);
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let status = spawn_failure(&e, &meta.service.argv[0]);
            let link = Link::start(first, first_peer, None);
            return record_exit(dir, Some(link), status, now_ms(), Vec::new()).await;
        }
    };
    let pid = child.id().unwrap_or(0);
    let pgid = Pid::from_raw(pid as i32);
    let record = PidRecord {
        pid,
        started_at_ms,
        shim_pid: std::process::id(),
        start_ticks: procfs::start_ticks(pid),
    };
    write_record(dir, state::PID, &record).map_err(|source| ShimError::Record {
        what: "record pid".into(),
        source,
    })?;
    let mut link: Option<Link> = Some(Link::start(first, first_peer, None));
    if let Some(l) = &link {
        let _ = l.tx.try_send(ShimEvent::Started { pid, started_at_ms });
    }

    let mut stdout = LineReader::new(Stream::Stdout, child.stdout.take().and_then(|p| p.into_owned_fd().ok()));
    let mut stderr = LineReader::new(Stream::Stderr, child.stderr.take().and_then(|p| p.into_owned_fd().ok()));
    // `link` is the connected server, if any: a writer task fed through a
    // bounded queue, so that a slow server never stops us draining the pipes.
    let log_dir = dir.try_clone().map_err(|source| ShimError::Record {
        what: "open the record directory again".into(),
        source,
    })?;
    let mut out = Out {
        guest: GuestLog::start(meta.output.as_ref(), move |m| log(&log_dir, m)),
        dropped: Dropped::default(),
        reported: 0,
        reported_at: tokio::time::Instant::now(),
    };
    // The guest log's drop count reaches the server even when output stops.
    let mut report = tokio::time::interval(Duration::from_secs(1));
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut stop_requested = false;
    let stop = |grace_ms: u64, stop_requested: &mut bool, kill_at: &mut Option<tokio::time::Instant>| {
        *stop_requested = true;
        let _ = killpg(pgid, Signal::SIGTERM);
        *kill_at = Some(kill_deadline(*kill_at, tokio::time::Instant::now(), grace_ms));
    };

    let status = loop {
        tokio::select! {
            biased;
            status = child.wait() => {
                break status.map(ExitStatus::from_std).unwrap_or_else(|e| ExitStatus::Lost { error: format!("wait failed: {e}") });
            }
            req = recv_request(&mut link) => match req {
                Some(ShimRequest::Stop { grace_ms }) => stop(grace_ms, &mut stop_requested, &mut kill_at),
                Some(ShimRequest::Start) => {}
                None => link = None,
            },
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Some(peer) = check_peer(dir, &stream) else { continue };
                if let Some(current) = &mut link {
                    if current.peer.alive() {
                        // One shim, one server: the one connected still runs
                        // (two servers never share a state directory).
                        log(dir, &format!(
                            "refused a second connection (pid {}): the server (pid {}) is connected",
                            peer.pid, current.peer.pid
                        ));
                        continue;
                    }
                    // Its server is gone (it restarted): carry out what it asked for first.
                    while let Ok(req) = current.requests.try_recv() {
                        if let ShimRequest::Stop { grace_ms } = req {
                            stop(grace_ms, &mut stop_requested, &mut kill_at);
                        }
                    }
                }
                link = Some(Link::start(connection::split(stream), peer, Some(ShimEvent::Hello {
                    protocol: OLDEST_ADOPTED,
                    pid,
                    started_at_ms,
                    waiting: false,
                })));
            }
            _ = sleep_until(kill_at) => {
                let _ = killpg(pgid, Signal::SIGKILL);
                kill_at = None;
            }
            // The guest log's queue is full and its disk keeps up: the
            // pipes wait (and so does the application) until it has room.
            line = stdout.next_line(), if out.guest.accepting() => {
                out.take(&link, line);
                yield_if_full(&link).await;
            }
            line = stderr.next_line(), if out.guest.accepting() => {
                out.take(&link, line);
                yield_if_full(&link).await;
            }
            _ = out.guest.room(), if !out.guest.accepting() => {}
            // Output stopped while lines were being dropped: say so now, not at the next line.
            _ = tokio::time::sleep(Duration::from_millis(100)), if out.dropped.any() && link.is_some() => {
                notify_dropped(&link, &mut out.dropped);
            }
            // Only while the count may change or is untold: an idle shim
            // sleeps until its process does something.
            _ = report.tick(), if out.log_drops_unsettled() => out.report_log_drops(&link, false),
        }
    };
    let exited_at_ms = now_ms();
    if stop_requested {
        // A requested stop ends the whole group, stragglers included.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    drain_pipes(&mut out, &link, [&mut stdout, &mut stderr]).await;
    notify_dropped(&link, &mut out.dropped);
    // The count that goes with the exit is complete unless the disk is stuck.
    out.guest.drain().await;
    out.report_log_drops(&link, true);
    let tail = out.guest.take_tail();
    let recorded = record_exit(dir, link, status, exited_at_ms, tail).await;
    // The exit is out; only now is the writer told to finish (waking it
    // earlier would put its exit on this CPU ahead of the record), and the
    // guest log may catch up before we go.
    out.guest.finish().wait(Duration::from_secs(5));
    recorded
}

/// Takes what is left in the pipes once the process has exited (everything
/// it wrote is there now, a partial last line included). As while it ran,
/// a full guest log queue is waited for while its disk keeps up: nothing the
/// process wrote before its exit is dropped for want of a moment's wait.
async fn drain_pipes(out: &mut Out, link: &Option<Link>, pipes: [&mut LineReader; 2]) {
    for r in pipes {
        loop {
            if !out.guest.accepting() {
                out.guest.room().await;
            }
            let Some(line) = r.try_next_line().or_else(|| r.take_partial()) else {
                break;
            };
            out.take(link, Some(line));
        }
    }
}

/// When a stop asked for at `now` with `grace_ms` sends KILL: after the
/// grace, or at the deadline of an earlier stop if that comes first (a
/// second stop never puts the KILL off).
fn kill_deadline(
    current: Option<tokio::time::Instant>,
    now: tokio::time::Instant,
    grace_ms: u64,
) -> tokio::time::Instant {
    let deadline = now + Duration::from_millis(grace_ms);
    current.map_or(deadline, |k| k.min(deadline))
}

/// Records the exit in `exit.json` (first: it must survive whatever happens
/// next), then the last lines in `tail.json` (best effort), removes the
/// socket, and tells the connected server, if any.
async fn record_exit(
    dir: &Dir,
    link: Option<Link>,
    status: ExitStatus,
    exited_at_ms: u64,
    tail: Vec<TailLine>,
) -> Result<(), ShimError> {
    if test_fault("notify-before-record") {
        // The wrong order, on purpose (the fault campaign's checker must
        // catch it): tell the server, then die before the record is written.
        let _ = dir.remove(state::SOCK);
        if let Some(link) = link {
            link.finish(ShimEvent::Exited {
                status,
                exited_at_ms,
                tail,
            })
            .await;
        }
        std::process::exit(1);
    }
    let recorded = write_record(
        dir,
        state::EXIT,
        &ExitRecord {
            status: status.clone(),
            exited_at_ms,
        },
    )
    .map_err(|source| ShimError::Record {
        what: format!("record exit status {status}"),
        source,
    });
    let _ = dir.remove(state::RESERVE);
    if !tail.is_empty() {
        let _ = dir.write_json(state::TAIL, &tail);
    }
    let _ = dir.remove(state::SOCK);
    // Even unrecorded, the status goes to the server connected now: it is
    // the last chance for it to reach a manager.
    if let Some(link) = link {
        link.finish(ShimEvent::Exited {
            status,
            exited_at_ms,
            tail,
        })
        .await;
    }
    recorded
}

/// Bytes reserved in the record at the start (`state::RESERVE`): two
/// filesystem blocks, one for `pid.json`, one for `exit.json`.
const RESERVED: usize = 8192;

/// Writes a record file; if that fails (a full disk), frees the space
/// reserved at the start and tries again, keeping a block for `exit.json`.
fn write_record<T: serde::Serialize>(dir: &Dir, name: &str, value: &T) -> std::io::Result<()> {
    if dir.write_json(name, value).is_ok() {
        return Ok(());
    }
    let _ = dir.remove(state::RESERVE);
    let written = dir.write_json(name, value);
    if name != state::EXIT {
        let _ = dir.write(state::RESERVE, &[0; RESERVED / 2]);
    }
    written
}

/// A deliberate defect for the fault campaign (`tests/src/campaign`) to
/// detect, or a crash at a chosen instant for a test:
/// `CMAPP_TEST_FAULT=<name>` in cmappserver's environment (which its shims
/// inherit). `notify-before-record`: a shim tells its exit before recording
/// it; `exit-before-shim`: the server kills the spare shim it launches
/// and exits, between filing the new record and telling the shim to start;
/// `first-spare-killed`: the server kills the first spare it makes after
/// its hello, and files it once it has been reaped (a spare killed by
/// someone in that instant); `removal-cut-short`: a shim fails once told
/// to start, and whoever removes a record whose application never started
/// crashes halfway, `unstarted` gone and the rest left.
/// Honoured only in debug builds: a release build ignores it.
pub(super) fn test_fault(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("CMAPP_TEST_FAULT").is_ok_and(|v| v == name)
}

/// Where each output line goes: the guest log (and tail), and the server.
struct Out {
    guest: GuestLog,
    /// Lines not sent to the server since the last `Dropped`.
    dropped: Dropped,
    /// The guest log's drop count last reported to the server, and when.
    reported: u64,
    reported_at: tokio::time::Instant,
}

impl Out {
    fn take(&mut self, link: &Option<Link>, line: Option<(Stream, String)>) {
        let Some((stream, line)) = line else { return };
        self.guest.line(stream, &line);
        self.report_log_drops(link, false);
        forward(link, &mut self.dropped, Some((stream, line)));
    }

    /// Tells the server the guest log's drop count when it changed, at most
    /// once a second (`now`: at the exit, whatever the time).
    /// The guest log's writer still has lines (its drop count may grow), or
    /// the count has grown since it was last reported.
    fn log_drops_unsettled(&self) -> bool {
        self.guest.dropped() != self.reported || !self.guest.idle()
    }

    fn report_log_drops(&mut self, link: &Option<Link>, now: bool) {
        let total = self.guest.dropped();
        if total == self.reported || (!now && self.reported_at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let Some(l) = link else { return };
        let report = ShimEvent::Dropped {
            lines: 0,
            unconnected: Some(0),
            log: total,
        };
        if l.tx.try_send(report).is_ok() {
            self.reported = total;
            self.reported_at = tokio::time::Instant::now();
        }
    }
}

/// Output lines dropped since the last notice, and why.
#[derive(Debug, Default)]
struct Dropped {
    /// The server took them slower than the process wrote them.
    slow: u64,
    /// No server was connected.
    unconnected: u64,
}

impl Dropped {
    fn any(&self) -> bool {
        self.slow + self.unconnected > 0
    }
}

/// Lets the link's writer run when its queue is full: lines already in the
/// pipe are split without waiting, so a fast writer would otherwise starve
/// the writer and have its lines dropped though nobody is slow.
async fn yield_if_full(link: &Option<Link>) {
    if link.as_ref().is_some_and(|l| l.tx.capacity() == 0) {
        tokio::task::yield_now().await;
    }
}

/// Tells the server how many lines were dropped, if it has room for the notice.
fn notify_dropped(link: &Option<Link>, dropped: &mut Dropped) {
    let Some(l) = link else { return };
    if dropped.any()
        && l.tx
            .try_send(ShimEvent::Dropped {
                lines: dropped.slow + dropped.unconnected,
                unconnected: Some(dropped.unconnected),
                log: 0,
            })
            .is_ok()
    {
        *dropped = Dropped::default();
    }
}

fn forward(link: &Option<Link>, dropped: &mut Dropped, line: Option<(Stream, String)>) {
    let Some((stream, line)) = line else { return };
    match link {
        Some(l) => {
            notify_dropped(link, dropped);
            if l.tx.try_send(ShimEvent::Output { stream, line }).is_err() {
                dropped.slow += 1;
            }
        }
        None => dropped.unconnected += 1,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_request(link: &mut Option<Link>) -> Option<ShimRequest> {
    match link {
        Some(l) => l.requests.recv().await,
        None => std::future::pending().await,
    }
}

/// A connection's two halves.
type Halves = (
    connection::MessageReader<tokio::io::ReadHalf<UnixStream>>,
    MessageWriter<tokio::io::WriteHalf<UnixStream>>,
);

/// One server connection: a writer task and a reader task.
struct Link {
    tx: mpsc::Sender<ShimEvent>,
    requests: mpsc::Receiver<ShimRequest>,
    writer: tokio::task::JoinHandle<()>,
    peer: Peer,
}

impl Link {
    /// Starts relaying on a connection, sending `first` (a hello) if given.
    fn start((mut rd, wr): Halves, peer: Peer, first: Option<ShimEvent>) -> Link {
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        let (req_tx, requests) = mpsc::channel(8);
        if let Some(first) = first {
            let _ = tx.try_send(first);
        }
        let writer = tokio::spawn(write_events(wr, rx));
        tokio::spawn(async move {
            while let Ok(Some(req)) = rd.read::<ShimRequest>().await {
                if req_tx.send(req).await.is_err() {
                    break;
                }
            }
        });
        Link {
            tx,
            requests,
            writer,
            peer,
        }
    }

    /// Sends the last event and waits (bounded) until it has been written.
    async fn finish(self, last: ShimEvent) {
        let Link { tx, writer, .. } = self;
        let _ = tokio::time::timeout(Duration::from_secs(5), tx.send(last)).await;
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
}

async fn write_events(mut wr: MessageWriter<tokio::io::WriteHalf<UnixStream>>, mut rx: mpsc::Receiver<ShimEvent>) {
    while let Some(ev) = rx.recv().await {
        if wr.write(&ev).await.is_err() {
            break;
        }
    }
}

/// Splits one pipe into lines of at most [`MAX_LINE_LEN`] bytes.
struct LineReader {
    stream: Stream,
    pipe: Option<pipe::Receiver>,
    buf: Vec<u8>,
}

impl LineReader {
    fn new(stream: Stream, pipe: Option<std::os::fd::OwnedFd>) -> Self {
        let pipe = pipe.and_then(|p| pipe::Receiver::from_owned_fd(p).ok());
        LineReader {
            stream,
            pipe,
            buf: Vec::new(),
        }
    }

    /// Waits for the next complete line; pends forever once the pipe is closed.
    async fn next_line(&mut self) -> Option<(Stream, String)> {
        loop {
            if let Some(line) = self.split_line() {
                return Some(line);
            }
            let Some(pipe) = &self.pipe else {
                return std::future::pending().await;
            };
            if pipe.readable().await.is_err() {
                self.pipe = None;
                continue;
            }
            match self.read_some() {
                ReadOutcome::Data | ReadOutcome::WouldBlock => {}
                ReadOutcome::Closed => {
                    self.pipe = None;
                    if let Some(line) = self.take_partial() {
                        return Some(line);
                    }
                }
            }
        }
    }

    /// Returns a complete line if one is available without waiting.
    fn try_next_line(&mut self) -> Option<(Stream, String)> {
        loop {
            if let Some(line) = self.split_line() {
                return Some(line);
            }
            self.pipe.as_ref()?;
            match self.read_now() {
                ReadOutcome::Data => {}
                ReadOutcome::WouldBlock => return None,
                ReadOutcome::Closed => {
                    self.pipe = None;
                    return None;
                }
            }
        }
    }

    /// Reads what the reactor has said is readable.
    fn read_some(&mut self) -> ReadOutcome {
        let Some(pipe) = &self.pipe else {
            return ReadOutcome::Closed;
        };
        let mut chunk = [0u8; 8192];
        self.absorb(pipe.try_read(&mut chunk), &chunk)
    }

    /// Reads with a direct read(2), whatever the reactor has seen so far:
    /// after the process exits, everything it wrote is in the pipe, but the
    /// reactor may not have reported the pipe readable yet.
    fn read_now(&mut self) -> ReadOutcome {
        let Some(pipe) = &self.pipe else {
            return ReadOutcome::Closed;
        };
        let mut chunk = [0u8; 8192];
        let r = nix::unistd::read(pipe, &mut chunk).map_err(std::io::Error::from);
        self.absorb(r, &chunk)
    }

    fn absorb(&mut self, r: std::io::Result<usize>, chunk: &[u8]) -> ReadOutcome {
        match r {
            Ok(0) => ReadOutcome::Closed,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                ReadOutcome::Data
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => ReadOutcome::Data,
            Err(_) => ReadOutcome::Closed,
        }
    }

    fn split_line(&mut self) -> Option<(Stream, String)> {
        let end = match self.buf.iter().position(|&b| b == b'\n') {
            Some(i) if i <= MAX_LINE_LEN => i,
            _ if self.buf.len() > MAX_LINE_LEN => MAX_LINE_LEN,
            _ => return None,
        };
        let mut line: Vec<u8> = self.buf.drain(..end).collect();
        if self.buf.first() == Some(&b'\n') {
            self.buf.remove(0);
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some((self.stream, String::from_utf8_lossy(&line).into_owned()))
    }

    fn take_partial(&mut self) -> Option<(Stream, String)> {
        if self.buf.is_empty() {
            return None;
        }
        let line = std::mem::take(&mut self.buf);
        Some((self.stream, String::from_utf8_lossy(&line).into_owned()))
    }
}

enum ReadOutcome {
    Data,
    WouldBlock,
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_report_ticks_only_while_the_count_may_change_or_is_untold() {
        let mut out = Out {
            guest: GuestLog::start(None, |_| {}),
            dropped: Dropped::default(),
            reported: 0,
            reported_at: tokio::time::Instant::now(),
        };
        assert!(!out.log_drops_unsettled(), "an idle writer, everything told: no tick");
        out.reported = 1;
        assert!(out.log_drops_unsettled(), "a count not told yet");
        out.reported = 0;
        out.guest = played_guest_log(7, 0);
        assert!(out.log_drops_unsettled(), "lines queued: the count may change");
        out.guest = played_guest_log(0, 2);
        out.reported = 2;
        assert!(!out.log_drops_unsettled(), "idle, and the count told");
    }

    use common::service::ServiceSpec;
    use std::io::Write as _;
    use std::os::fd::OwnedFd;

    /// A guest log with `queued` lines waiting and `dropped` lines lost
    /// (no writer: what the shim sees of one).
    fn played_guest_log(queued: usize, dropped: u64) -> GuestLog {
        let g = GuestLog::start(None, |_| {});
        g.set_counts_for_test(queued, dropped);
        g
    }

    /// A link whose other end is the test: what the shim sends arrives on
    /// the receiver; `room` events fit before it is full.
    fn link(room: usize) -> (Link, mpsc::Receiver<ShimEvent>, mpsc::Sender<ShimRequest>) {
        let (tx, rx) = mpsc::channel(room);
        let (req_tx, requests) = mpsc::channel(8);
        let link = Link {
            tx,
            requests,
            writer: tokio::spawn(async {}),
            peer: Peer { pid: 0, ticks: None },
        };
        (link, rx, req_tx)
    }

    fn events(rx: &mut mpsc::Receiver<ShimEvent>) -> Vec<ShimEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn output(line: &str) -> ShimEvent {
        ShimEvent::Output {
            stream: Stream::Stdout,
            line: line.into(),
        }
    }

    #[tokio::test]
    async fn lines_go_to_the_server_and_what_finds_no_room_or_no_server_is_counted_and_told() {
        let mut dropped = Dropped::default();
        assert!(!dropped.any());
        forward(&None, &mut dropped, Some((Stream::Stdout, "a".into())));
        forward(&None, &mut dropped, Some((Stream::Stdout, "b".into())));
        assert_eq!((dropped.slow, dropped.unconnected), (0, 2));
        assert!(dropped.any());
        // A server with room for two events: the notice, then the line.
        let (l, mut rx, _req) = link(2);
        let l = Some(l);
        forward(&l, &mut dropped, Some((Stream::Stderr, "c".into())));
        assert_eq!(
            events(&mut rx),
            [
                ShimEvent::Dropped {
                    lines: 2,
                    unconnected: Some(2),
                    log: 0
                },
                ShimEvent::Output {
                    stream: Stream::Stderr,
                    line: "c".into()
                }
            ]
        );
        assert!(!dropped.any(), "told");
        forward(&l, &mut dropped, None);
        assert!(events(&mut rx).is_empty(), "no line, nothing sent");
        // A slow server: lines over its room are counted.
        for i in 0..5 {
            forward(&l, &mut dropped, Some((Stream::Stdout, format!("l{i}"))));
        }
        assert_eq!((dropped.slow, dropped.unconnected), (3, 0));
        assert_eq!(events(&mut rx), [output("l0"), output("l1")]);
        notify_dropped(&l, &mut dropped);
        notify_dropped(&l, &mut dropped);
        assert_eq!(
            events(&mut rx),
            [ShimEvent::Dropped {
                lines: 3,
                unconnected: Some(0),
                log: 0
            }],
            "told once"
        );
        // A notice that does not fit is kept for later.
        dropped.slow = 1;
        dropped.unconnected = 4;
        forward(&l, &mut dropped, Some((Stream::Stdout, "x".into())));
        forward(&l, &mut dropped, Some((Stream::Stdout, "y".into())));
        forward(&l, &mut dropped, Some((Stream::Stdout, "z".into())));
        assert_eq!(
            (dropped.slow, dropped.unconnected),
            (2, 0),
            "the notice and a line sent; the two lines after it lost and counted"
        );
        let got = events(&mut rx);
        assert_eq!(
            got[0],
            ShimEvent::Dropped {
                lines: 5,
                unconnected: Some(4),
                log: 0
            }
        );
        notify_dropped(&None, &mut dropped);
        assert!(dropped.any(), "no server: nothing told");
    }

    #[tokio::test(start_paused = true)]
    async fn the_guest_logs_drop_count_is_reported_when_it_grows_at_most_once_a_second_or_at_the_exit() {
        let (l, mut rx, _req) = link(8);
        let l = Some(l);
        let mut out = Out {
            guest: played_guest_log(0, 0),
            dropped: Dropped::default(),
            reported: 0,
            reported_at: tokio::time::Instant::now(),
        };
        let report = |log| ShimEvent::Dropped {
            lines: 0,
            unconnected: Some(0),
            log,
        };
        out.report_log_drops(&l, true);
        assert!(events(&mut rx).is_empty(), "nothing lost, nothing to say");
        out.guest = played_guest_log(0, 3);
        out.report_log_drops(&l, false);
        assert!(events(&mut rx).is_empty(), "not within the second since the last");
        tokio::time::advance(Duration::from_millis(999)).await;
        out.report_log_drops(&l, false);
        assert!(events(&mut rx).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        out.report_log_drops(&l, false);
        assert_eq!(events(&mut rx), [report(3)]);
        out.report_log_drops(&l, true);
        assert!(events(&mut rx).is_empty(), "told already");
        out.guest = played_guest_log(0, 5);
        out.report_log_drops(&l, true);
        assert_eq!(events(&mut rx), [report(5)], "at the exit, at once");
        out.guest = played_guest_log(0, 6);
        out.report_log_drops(&None, true);
        assert_eq!(out.reported, 5, "no server: still untold");
        // A line taken reports the count too.
        tokio::time::advance(Duration::from_secs(1)).await;
        out.take(&l, Some((Stream::Stdout, "line".into())));
        assert_eq!(events(&mut rx), [report(6), output("line")]);
        out.take(&l, None);
        assert!(events(&mut rx).is_empty());
    }

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        (r, std::fs::File::from(w))
    }

    #[tokio::test]
    async fn a_pipe_is_split_into_lines_of_at_most_4096_bytes() {
        let (r, mut w) = pipe();
        let mut lines = LineReader::new(Stream::Stderr, Some(r));
        let exact = "e".repeat(MAX_LINE_LEN);
        let over = "o".repeat(MAX_LINE_LEN + 5);
        write!(w, "one\r\ntwo\n\n{exact}\n{over}\nlast").unwrap();
        drop(w);
        let mut got = Vec::new();
        while let Ok(Some((stream, line))) = tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await {
            assert_eq!(stream, Stream::Stderr);
            got.push(line);
        }
        assert_eq!(
            got,
            [
                "one".to_string(),
                "two".into(),
                "".into(),
                exact,
                "o".repeat(MAX_LINE_LEN),
                "ooooo".into(),
                "last".into()
            ]
        );
        assert!(lines.pipe.is_none(), "closed");
        assert_eq!(lines.try_next_line(), None);
        assert_eq!(lines.take_partial(), None);
    }

    #[tokio::test]
    async fn what_is_in_a_pipe_is_read_without_waiting_and_a_partial_line_taken_at_the_end() {
        let (r, mut w) = pipe();
        let mut lines = LineReader::new(Stream::Stdout, Some(r));
        assert_eq!(lines.try_next_line(), None, "nothing yet: no wait");
        assert!(lines.pipe.is_some(), "an empty pipe is not a closed one");
        write!(w, "a\nb\npart").unwrap();
        assert_eq!(lines.try_next_line(), Some((Stream::Stdout, "a".into())));
        assert_eq!(lines.try_next_line(), Some((Stream::Stdout, "b".into())));
        assert_eq!(lines.try_next_line(), None);
        drop(w);
        assert_eq!(lines.try_next_line(), None);
        assert!(lines.pipe.is_none());
        assert_eq!(lines.take_partial(), Some((Stream::Stdout, "part".into())));
        assert_eq!(lines.take_partial(), None);
        assert!(matches!(lines.read_now(), ReadOutcome::Closed));
        assert!(matches!(lines.read_some(), ReadOutcome::Closed));
        // What a read may answer.
        let chunk = *b"xy";
        assert!(matches!(lines.absorb(Ok(2), &chunk), ReadOutcome::Data));
        assert_eq!(lines.buf, b"xy");
        assert!(matches!(lines.absorb(Ok(0), &chunk), ReadOutcome::Closed));
        let e = |k: std::io::ErrorKind| Err(std::io::Error::from(k));
        assert!(matches!(
            lines.absorb(e(std::io::ErrorKind::WouldBlock), &chunk),
            ReadOutcome::WouldBlock
        ));
        assert!(matches!(
            lines.absorb(e(std::io::ErrorKind::Interrupted), &chunk),
            ReadOutcome::Data
        ));
        assert!(matches!(
            lines.absorb(e(std::io::ErrorKind::BrokenPipe), &chunk),
            ReadOutcome::Closed
        ));
        assert_eq!(lines.buf, b"xy", "an error adds nothing");
        // No pipe at all.
        assert_eq!(LineReader::new(Stream::Stdout, None).try_next_line(), None);
    }

    fn meta_for(argv: &[&str]) -> Meta {
        let service = ServiceSpec::parse(argv.iter().map(|a| a.to_string()).collect(), None).unwrap();
        Meta {
            id: "i".into(),
            key: service.key(),
            service,
            created_at_ms: 0,
            environment: None,
            oom_score_adj: None,
            output: None,
            run_as: None,
        }
    }

    fn shown(cmd: &tokio::process::Command) -> (String, Vec<String>) {
        let c = cmd.as_std();
        (
            c.get_program().to_string_lossy().into_owned(),
            c.get_args().map(|a| a.to_string_lossy().into_owned()).collect(),
        )
    }

    #[tokio::test]
    async fn the_command_runs_the_program_a_probe_from_this_binary_and_a_user_through_run_as() {
        let m = meta_for(&["/bin/echo", "a b", "c"]);
        assert_eq!(
            shown(&command_for(&m)),
            ("/bin/echo".into(), vec!["a b".into(), "c".into()])
        );
        let m = meta_for(&["/opt/hp/cmappserver/cmapp_disk_mon", "-O", "/tmp/x", "/dev/sdb"]);
        assert_eq!(
            shown(&command_for(&m)),
            (
                common::exe::SELF.into(),
                vec!["disk-mon".into(), "-O".into(), "/tmp/x".into(), "/dev/sdb".into()]
            )
        );
        let mut m = meta_for(&["/bin/id", "-u"]);
        m.run_as = Some(crate::runas::RunAs {
            user: Some("nobody".into()),
            ..Default::default()
        });
        assert_eq!(
            shown(&command_for(&m)),
            (
                common::exe::SELF.into(),
                vec![
                    "run-as".into(),
                    "--user".into(),
                    "nobody".into(),
                    "--".into(),
                    "/bin/id".into(),
                    "-u".into()
                ]
            )
        );
    }

    /// The environment `meta`'s program gets, as `env` prints it.
    async fn environment_of(mut meta: Meta, run_as_group: bool) -> Vec<String> {
        meta.service = ServiceSpec::parse(vec!["/usr/bin/env".into()], None).unwrap();
        if run_as_group {
            // Run as a group only (no user): the daemon's environment rules
            // hold; the run-as helper is not run here, only its arguments built.
            meta.run_as = Some(crate::runas::RunAs {
                group: Some("root".into()),
                ..Default::default()
            });
        }
        let mut cmd = command_for(&meta);
        if run_as_group {
            // Run env itself, with the environment the command was given.
            let envs: Vec<(String, String)> = cmd
                .as_std()
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_string_lossy().into(), v?.to_string_lossy().into())))
                .collect();
            return envs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        }
        let out = cmd.output().await.unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[tokio::test]
    async fn a_clean_environment_is_a_standard_path_and_the_variables_set_and_nothing_of_the_daemons() {
        let mut m = meta_for(&["/usr/bin/env"]);
        m.environment = Some(state::Environment {
            clean: true,
            set: vec![("A".into(), "1".into()), ("B".into(), "x y".into())],
        });
        let mut env = environment_of(m.clone(), false).await;
        env.sort();
        assert_eq!(env, ["A=1".to_string(), "B=x y".into(), format!("PATH={CLEAN_PATH}")]);
        // Not clean: the daemon's, with the variables set on top.
        m.environment.as_mut().unwrap().clean = false;
        let env = environment_of(m.clone(), false).await;
        assert!(env.contains(&"A=1".to_string()) && env.len() > 2, "{env:?}");
        assert!(env.iter().any(|v| v.starts_with("PATH=")), "{env:?}");
        // Clean, as another group only: still clean.
        m.environment.as_mut().unwrap().clean = true;
        let env = environment_of(m, true).await;
        assert!(env.contains(&format!("PATH={CLEAN_PATH}")), "{env:?}");
    }

    #[test]
    fn the_oom_score_adjustment_is_set_and_the_old_one_returned() {
        let path = "/proc/self/oom_score_adj";
        let before: i32 = std::fs::read_to_string(path).unwrap().trim().parse().unwrap();
        let want = if before == 500 { 501 } else { 500 };
        assert_eq!(set_oom_score_adj(want), Some(before));
        assert_eq!(std::fs::read_to_string(path).unwrap().trim(), want.to_string());
        assert_eq!(set_oom_score_adj(want), Some(want), "unchanged");
        // Back (lowering it needs root; as another user the test stops here).
        if state::own_uid() == 0 {
            assert_eq!(set_oom_score_adj(before), Some(want));
            assert_eq!(std::fs::read_to_string(path).unwrap().trim(), before.to_string());
        }
    }

    #[test]
    fn a_program_that_cannot_start_exits_127_when_missing_126_otherwise() {
        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
        let s = spawn_failure(&e, "/no/such");
        assert_eq!(
            s,
            ExitStatus::SpawnFailed {
                code: 127,
                error: format!("/no/such: {e}")
            }
        );
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(
            spawn_failure(&e, "/etc"),
            ExitStatus::SpawnFailed { code: 126, .. }
        ));
    }

    #[test]
    fn a_second_stop_never_puts_the_kill_off() {
        let now = tokio::time::Instant::now();
        let first = kill_deadline(None, now, 5000);
        assert_eq!(first, now + Duration::from_secs(5));
        assert_eq!(
            kill_deadline(Some(first), now, 9000),
            first,
            "a longer grace: the first deadline"
        );
        assert_eq!(
            kill_deadline(Some(first), now, 1000),
            now + Duration::from_secs(1),
            "a shorter one: sooner"
        );
    }

    fn record_dir() -> (tempfile::TempDir, Dir) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        (tmp, dir)
    }

    #[tokio::test]
    async fn the_socket_is_ours_alone_and_only_our_user_is_a_peer() {
        let (tmp, dir) = record_dir();
        std::fs::write(tmp.path().join(state::SOCK), "stale").unwrap();
        let listener = bind(&dir).unwrap();
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::symlink_metadata(tmp.path().join(state::SOCK)).unwrap();
        assert!(meta.file_type().is_socket(), "the stale file replaced");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let client = UnixStream::connect(tmp.path().join(state::SOCK)).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let peer = check_peer(&dir, &server).expect("our own user");
        assert_eq!(peer.pid, std::process::id());
        assert!(peer.alive());
        drop(client);
        assert!(!Peer {
            pid: 0,
            ticks: peer.ticks
        }
        .alive());
        assert!(
            !Peer {
                pid: peer.pid,
                ticks: peer.ticks.map(|t| t + 1)
            }
            .alive(),
            "a later process"
        );
        let dead = super::super::procfs::tests::dead_pid();
        assert!(!Peer { pid: dead, ticks: None }.alive());
        // Binding where no socket can be: an error saying what it did.
        let (_t2, gone) = record_dir();
        std::fs::remove_dir(gone.path()).unwrap();
        let e = bind(&gone).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot remove a stale socket: ") || e.to_string().starts_with("cannot bind "),
            "{e}"
        );
    }

    #[tokio::test]
    async fn the_process_starts_only_after_a_server_accepts_the_hello_and_says_start() {
        let (tmp, mut dir) = record_dir();
        let listener = bind(&dir).unwrap();
        let sock = tmp.path().join(state::SOCK);
        let server = tokio::spawn(async move {
            // One server reads the hello and goes; the next says Start.
            let (mut rd, wr) = connection::split(UnixStream::connect(&sock).await.unwrap());
            let hello = rd.read::<ShimEvent>().await.unwrap().unwrap();
            drop((rd, wr));
            let (mut rd, mut wr) = connection::split(UnixStream::connect(&sock).await.unwrap());
            let again = rd.read::<ShimEvent>().await.unwrap().unwrap();
            wr.write(&ShimRequest::Start).await.unwrap();
            (hello, again, rd, wr)
        });
        let Waited::Started(_halves, peer) = wait_for_start(&mut dir, &listener, None, None).await else {
            panic!("started")
        };
        assert_eq!(peer.pid, std::process::id());
        let (hello, again, _srd, _swr) = server.await.unwrap();
        let want = ShimEvent::Hello {
            protocol: SHIM_PROTOCOL,
            pid: 0,
            started_at_ms: 0,
            waiting: true,
        };
        assert_eq!((hello, again), (want.clone(), want));
        let logged = String::from_utf8(dir.read(state::SHIM_LOG).unwrap().unwrap()).unwrap();
        assert!(
            logged.ends_with(&format!(
                " shim[{}]: a server closed the connection without accepting our hello; waiting for another\n",
                std::process::id()
            )),
            "{logged}"
        );
    }

    /// A launch withdrawn by a recovering server (it took `unstarted`):
    /// a later `Start` starts nothing; with `unstarted` there, it starts;
    /// with a directory there (not ours to remove), nothing starts either.
    #[tokio::test]
    async fn the_application_starts_only_if_its_record_is_still_unstarted() {
        for marker in ["none", "file", "directory"] {
            let unstarted = marker == "file";
            let (tmp, mut dir) = record_dir();
            let flag = tmp.path().join("ran");
            let service = common::service::ServiceSpec::parse(
                vec!["/bin/touch".into(), flag.display().to_string()],
                Some("app".into()),
            )
            .unwrap();
            let meta = Meta {
                id: "r1".into(),
                key: service.key(),
                service,
                created_at_ms: 1,
                environment: None,
                oom_score_adj: None,
                output: None,
                run_as: None,
            };
            match marker {
                "file" => dir.write(state::UNSTARTED, b"").unwrap(),
                "directory" => std::fs::create_dir(tmp.path().join(state::UNSTARTED)).unwrap(),
                _ => {}
            }
            dir.write_json(state::META, &meta).unwrap();
            let sock = tmp.path().join(state::SOCK);
            let server = async {
                // Bound before it says so on stdout, which a test cannot read.
                let connected = tokio::time::timeout(Duration::from_secs(20), async {
                    loop {
                        if let Ok(s) = UnixStream::connect(&sock).await {
                            break s;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
                let stream = connected.await.expect("the shim binds its socket");
                let (mut rd, mut wr) = connection::split(stream);
                let hello = rd.read::<ShimEvent>().await;
                assert!(
                    matches!(hello, Ok(Some(ShimEvent::Hello { waiting: true, .. }))),
                    "{hello:?}"
                );
                wr.write(&ShimRequest::Start).await.unwrap();
                let next = rd.read::<ShimEvent>().await;
                // Read on until its exit (a started shim's reader task
                // keeps the connection open while the test runs).
                if matches!(next, Ok(Some(_))) {
                    while let Ok(Some(ev)) = rd.read::<ShimEvent>().await {
                        if matches!(ev, ShimEvent::Exited { .. }) {
                            break;
                        }
                    }
                }
                next
            };
            let (ran, next) = tokio::join!(run(&mut dir), server);
            if unstarted {
                assert!(matches!(next, Ok(Some(ShimEvent::Started { .. }))), "{next:?}");
                ran.unwrap();
                assert!(flag.exists() && !tmp.path().join(state::UNSTARTED).exists());
            } else {
                assert!(!matches!(next, Ok(Some(_))), "{next:?}");
                let e = ran.unwrap_err();
                if marker == "none" {
                    assert!(matches!(e, ShimError::Withdrawn), "{e}");
                } else {
                    assert!(matches!(e, ShimError::Record { .. }), "{e}");
                    assert!(tmp.path().join(state::UNSTARTED).is_dir());
                }
                assert!(!flag.exists() && !tmp.path().join(state::PID).exists());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_server_within_30_s_nothing_starts() {
        let (_tmp, mut dir) = record_dir();
        let listener = bind(&dir).unwrap();
        let t0 = tokio::time::Instant::now();
        assert!(matches!(
            wait_for_start(&mut dir, &listener, None, None).await,
            Waited::NotAccepted
        ));
        assert_eq!(t0.elapsed(), FIRST_CONNECT);
    }

    /// A state directory's `procs/` and a spare's directory in `spare/`.
    fn spare_dir() -> (tempfile::TempDir, Dir, Dir) {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["", "procs", "spare", "spare/s1"] {
            let p = tmp.path().join(d);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        }
        let spare = Dir::open(&tmp.path().join("spare/s1")).unwrap();
        let procs = records_of_spare(&spare).unwrap();
        assert_eq!(procs.path(), tmp.path().join("procs"));
        (tmp, spare, procs)
    }

    /// Connects to the shim at `sock` as its server and reads its hello.
    async fn server_of(sock: &Path) -> Halves {
        let (mut rd, wr) = connection::split(UnixStream::connect(sock).await.unwrap());
        let hello = rd.read::<ShimEvent>().await.unwrap().unwrap();
        assert!(matches!(hello, ShimEvent::Hello { waiting: true, .. }), "{hello:?}");
        (rd, wr)
    }

    #[test]
    fn a_shim_removes_its_own_directory_never_another_in_its_place() {
        let (tmp, dir, _procs) = spare_dir();
        dir.mark(state::UNSTARTED).unwrap();
        remove_own(&dir);
        assert!(!tmp.path().join("spare/s1").exists());
        // Another directory now under our path: not ours to remove.
        let (tmp, dir, _procs) = spare_dir();
        let path = tmp.path().join("spare/s1");
        std::fs::rename(&path, tmp.path().join("moved")).unwrap();
        std::fs::create_dir(&path).unwrap();
        remove_own(&dir);
        assert!(path.exists() && tmp.path().join("moved").exists());
    }

    #[tokio::test]
    async fn a_spare_waits_for_its_launch_and_is_discarded_when_its_server_goes_before_the_rename() {
        // Closed with no meta.json, or with one but still in spare/ (the
        // server died between the two): discarded, nothing started.
        for with_meta in [false, true] {
            let (tmp, mut dir, procs) = spare_dir();
            let listener = bind(&dir).unwrap();
            let sock = tmp.path().join("spare/s1").join(state::SOCK);
            let server = tokio::spawn(async move {
                let halves = server_of(&sock).await;
                // Waiting past any hello timeout: a spare has no deadline once connected.
                tokio::time::sleep(Duration::from_millis(50)).await;
                halves
            });
            let waited = tokio::spawn(async move {
                let w = wait_for_start(&mut dir, &listener, Some(&procs), None).await;
                (w, dir)
            });
            let halves = server.await.unwrap();
            if with_meta {
                let mut m = meta_for(&["/bin/true"]);
                m.id = "r1".into();
                state::write_json(&tmp.path().join("spare/s1"), state::META, &m).unwrap();
            }
            drop(halves);
            let (w, dir) = waited.await.unwrap();
            assert!(matches!(w, Waited::Discarded), "meta.json: {with_meta}");
            assert_eq!(dir.path(), tmp.path().join("spare/s1"));
        }
    }

    #[tokio::test]
    async fn a_spare_whose_server_is_gone_before_it_connects_is_discarded_at_once() {
        let (_tmp, mut dir, procs) = spare_dir();
        let listener = bind(&dir).unwrap();
        // Not our parent: as if the server that started it had died.
        let other = Pid::from_raw(std::process::id() as i32);
        let t0 = std::time::Instant::now();
        let w = wait_for_start(&mut dir, &listener, Some(&procs), Some(other)).await;
        assert!(matches!(w, Waited::Discarded));
        assert!(t0.elapsed() < FIRST_CONNECT / 2, "{:?}", t0.elapsed());
        // Its parent still there, its directory cleared by the next server.
        let (tmp, mut dir, procs) = spare_dir();
        let listener = bind(&dir).unwrap();
        std::fs::remove_dir_all(tmp.path().join("spare/s1")).unwrap();
        let t0 = std::time::Instant::now();
        let w = wait_for_start(&mut dir, &listener, Some(&procs), Some(nix::unistd::getppid())).await;
        assert!(matches!(w, Waited::Discarded));
        assert!(t0.elapsed() < FIRST_CONNECT / 2, "{:?}", t0.elapsed());
        // Its parent there and its directory too: it waits for its server.
        let (tmp, mut dir, procs) = spare_dir();
        let listener = bind(&dir).unwrap();
        let sock = tmp.path().join("spare/s1").join(state::SOCK);
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (rd, mut wr) = server_of(&sock).await;
            wr.write(&ShimRequest::Start).await.unwrap();
            (rd, wr)
        });
        let w = wait_for_start(&mut dir, &listener, Some(&procs), Some(nix::unistd::getppid())).await;
        assert!(matches!(w, Waited::Started(..)));
        let _halves = server.await.unwrap();
    }

    #[tokio::test]
    async fn a_spare_renamed_into_procs_whose_server_went_waits_for_the_next_server_there() {
        let (tmp, mut dir, procs) = spare_dir();
        let listener = bind(&dir).unwrap();
        let root = tmp.path().to_path_buf();
        let server = tokio::spawn(async move {
            let halves = server_of(&root.join("spare/s1").join(state::SOCK)).await;
            // The launch: meta.json, the rename; then the server dies before Start.
            let mut m = meta_for(&["/bin/true"]);
            m.id = "r1".into();
            state::write_json(&root.join("spare/s1"), state::META, &m).unwrap();
            std::fs::rename(root.join("spare/s1"), root.join("procs/r1")).unwrap();
            drop(halves);
            // The next server finds the socket in the record, and says Start.
            let (rd, mut wr) = server_of(&root.join("procs/r1").join(state::SOCK)).await;
            wr.write(&ShimRequest::Start).await.unwrap();
            (rd, wr)
        });
        let w = wait_for_start(&mut dir, &listener, Some(&procs), None).await;
        assert!(matches!(w, Waited::Started(..)));
        let _halves = server.await.unwrap();
        assert_eq!(dir.path(), tmp.path().join("procs/r1"), "its new path");
        let (path, meta) = filed(&dir, &procs).expect("filed");
        assert_eq!((path, meta.id.as_str()), (tmp.path().join("procs/r1"), "r1"));
        let logged = String::from_utf8(dir.read(state::SHIM_LOG).unwrap().unwrap()).unwrap();
        assert!(
            logged.contains("the server launching this supervisor went before it said start"),
            "{logged}"
        );
    }

    #[test]
    fn a_spare_is_filed_only_in_procs_under_the_id_its_meta_names() {
        let (tmp, dir, procs) = spare_dir();
        assert!(filed(&dir, &procs).is_none(), "no meta.json");
        let write = |id: &str| {
            let mut m = meta_for(&["/bin/true"]);
            m.id = id.into();
            dir.write_json(state::META, &m).unwrap();
        };
        write("r1");
        assert!(filed(&dir, &procs).is_none(), "still in spare/");
        // An id that leads back to where it is does not count as filed.
        write("../spare/s1");
        assert!(filed(&dir, &procs).is_none());
        std::fs::rename(tmp.path().join("spare/s1"), tmp.path().join("procs/r2")).unwrap();
        write("r1");
        assert!(
            filed(&dir, &procs).is_none(),
            "filed under another id than its meta.json's"
        );
        write("r2");
        assert_eq!(filed(&dir, &procs).unwrap().0, tmp.path().join("procs/r2"));
        // Another directory under that name is not this one.
        std::fs::rename(tmp.path().join("procs/r2"), tmp.path().join("procs/r3")).unwrap();
        std::fs::create_dir(tmp.path().join("procs/r2")).unwrap();
        assert!(filed(&dir, &procs).is_none());
    }

    #[tokio::test]
    async fn the_exit_is_recorded_before_it_is_told_and_the_record_tidied() {
        let (tmp, dir) = record_dir();
        dir.write(state::RESERVE, &[0; RESERVED]).unwrap();
        let _listener = bind(&dir).unwrap();
        let (l, mut rx, _req) = link(8);
        let tail = vec![TailLine {
            stream: Stream::Stdout,
            line: "bye".into(),
        }];
        record_exit(&dir, Some(l), ExitStatus::Code(2), 42, tail.clone())
            .await
            .unwrap();
        let exit: ExitRecord = dir.read_json(state::EXIT).unwrap().unwrap();
        assert_eq!((exit.status, exit.exited_at_ms), (ExitStatus::Code(2), 42));
        assert_eq!(dir.read_json::<Vec<TailLine>>(state::TAIL).unwrap(), Some(tail.clone()));
        assert!(!tmp.path().join(state::RESERVE).exists() && !tmp.path().join(state::SOCK).exists());
        assert_eq!(
            rx.recv().await,
            Some(ShimEvent::Exited {
                status: ExitStatus::Code(2),
                exited_at_ms: 42,
                tail
            })
        );
        // No tail, no server: the record alone, and no tail file.
        let (tmp, dir) = record_dir();
        record_exit(&dir, None, ExitStatus::Signal(9), 1, Vec::new())
            .await
            .unwrap();
        assert!(tmp.path().join(state::EXIT).exists() && !tmp.path().join(state::TAIL).exists());
        // A record that cannot be written is an error, and still told.
        let (tmp, dir) = record_dir();
        std::fs::create_dir(tmp.path().join(".exit.json.tmp")).unwrap();
        let (l, mut rx, _req) = link(8);
        let e = record_exit(&dir, Some(l), ExitStatus::Code(0), 1, Vec::new())
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot record exit status "), "{e}");
        assert!(matches!(rx.recv().await, Some(ShimEvent::Exited { .. })));
    }

    #[tokio::test]
    async fn a_links_events_reach_the_server_and_its_requests_the_shim() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let hello = ShimEvent::Hello {
            protocol: OLDEST_ADOPTED,
            pid: 5,
            started_at_ms: 6,
            waiting: false,
        };
        let mut l = Some(Link::start(
            connection::split(ours),
            Peer { pid: 0, ticks: None },
            Some(hello.clone()),
        ));
        let (mut rd, mut wr) = connection::split(theirs);
        assert_eq!(rd.read::<ShimEvent>().await.unwrap(), Some(hello), "the hello first");
        wr.write(&ShimRequest::Stop { grace_ms: 3 }).await.unwrap();
        assert_eq!(recv_request(&mut l).await, Some(ShimRequest::Stop { grace_ms: 3 }));
        l.take().unwrap().finish(output("last")).await;
        let last = tokio::time::timeout(Duration::from_secs(20), rd.read::<ShimEvent>()).await;
        assert_eq!(last.expect("sent before finish returns").unwrap(), Some(output("last")));
        // No link: no request, ever; no deadline: no wake-up.
        let none = tokio::time::timeout(Duration::from_millis(20), recv_request(&mut l)).await;
        assert!(none.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(20), sleep_until(None))
            .await
            .is_err());
        let soon = tokio::time::Instant::now() + Duration::from_millis(1);
        tokio::time::timeout(Duration::from_secs(20), sleep_until(Some(soon)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn what_is_left_in_the_pipes_at_the_exit_waits_for_room_in_a_full_guest_log() {
        let (guest, make_room, _alive, written) = crate::supervisor::output::tests::full_guest_log();
        let mut out = Out {
            guest,
            dropped: Dropped::default(),
            reported: 0,
            reported_at: tokio::time::Instant::now(),
        };
        let (r, mut w) = pipe();
        write!(w, "one\ntwo\nthree").unwrap();
        drop(w);
        let (e, mut ew) = pipe();
        writeln!(ew, "err").unwrap();
        drop(ew);
        let (mut stdout, mut stderr) = (
            LineReader::new(Stream::Stdout, Some(r)),
            LineReader::new(Stream::Stderr, Some(e)),
        );
        let (l, mut rx, _req) = link(8);
        let link = Some(l);
        let drained = std::cell::Cell::new(false);
        tokio::join!(
            async {
                drain_pipes(&mut out, &link, [&mut stdout, &mut stderr]).await;
                drained.set(true);
            },
            async {
                // The guest log's writer makes room a moment later.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                assert!(!drained.get(), "the drain waits while the queue is full");
                make_room();
            }
        );
        assert_eq!(out.guest.dropped(), 0, "nothing dropped");
        let lines: Vec<String> = written.try_iter().map(|t| t.line).collect();
        assert_eq!(
            lines,
            ["one", "two", "three", "err"],
            "every line, the partial last one too, reached the guest log"
        );
        assert_eq!(
            events(&mut rx),
            [
                output("one"),
                output("two"),
                output("three"),
                ShimEvent::Output {
                    stream: Stream::Stderr,
                    line: "err".into()
                }
            ]
        );
    }

    /// Set in the copy of this test binary that the test below starts: the
    /// descriptor it inherited.
    const INHERITED_FD: &str = "CMAPP_TEST_INHERITED_FD";

    /// The descriptors among the first 256 that are open in this process
    /// (looked up one by one: listing /proc/self/fd would open one more).
    fn open_descriptors() -> Vec<i32> {
        (0..256)
            .filter(|fd| std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_ok())
            .collect()
    }

    #[test]
    fn a_shim_keeps_its_standard_streams_and_closes_every_descriptor_it_inherited() {
        if let Ok(fd) = std::env::var(INHERITED_FD) {
            // The child: what a shim started with an extra descriptor does.
            let before = open_descriptors();
            close_inherited_descriptors();
            let after = open_descriptors();
            println!(
                "descriptors {}",
                serde_json::json!({ "inherited": fd, "before": before, "after": after })
            );
            std::process::exit(0);
        }
        // A descriptor that is not close-on-exec, as a shell or an init
        // system may leave one, inherited by a copy of this test binary that
        // runs this test again and does what a shim does first.
        let (r, _w) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&r);
        let name =
            "supervisor::shim::tests::a_shim_keeps_its_standard_streams_and_closes_every_descriptor_it_inherited";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(INHERITED_FD, fd.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = stdout
            .lines()
            .find_map(|l| Some(l.split_once("descriptors ")?.1))
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_else(|| panic!("the child did not report: {out:?}"));
        let fds = |k: &str| -> Vec<i32> { serde_json::from_value(report[k].clone()).unwrap() };
        let before = fds("before");
        assert!(
            [0, 1, 2, fd].iter().all(|f| before.contains(f)),
            "the child inherited {fd} and its standard streams: {report}"
        );
        assert_eq!(fds("after"), [0, 1, 2], "{report}");
    }

    #[tokio::test]
    async fn a_full_link_queue_lets_its_writer_run_before_the_next_line() {
        let (l, mut rx, _req) = link(2);
        let link = Some(l);
        // The link's writer: counts the events it takes, as soon as it runs.
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = taken.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let tx = &link.as_ref().unwrap().tx;
        tx.try_send(output("a")).unwrap();
        yield_if_full(&link).await;
        assert_eq!(
            taken.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "room left: the reading goes on at once"
        );
        tx.try_send(output("b")).unwrap();
        yield_if_full(&link).await;
        assert_eq!(
            taken.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "the queue was full: its writer ran"
        );
        assert_eq!(tx.capacity(), 2, "and made room");
    }

    #[test]
    fn no_fault_is_injected_unless_asked_for() {
        if std::env::var_os("CMAPP_TEST_FAULT").is_none() {
            assert!(!test_fault("notify-before-record"));
        }
        assert_eq!(
            announced_protocol(),
            std::env::var("CMAPPSERVER_TEST_SHIM_PROTOCOL")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(SHIM_PROTOCOL)
        );
    }
}
