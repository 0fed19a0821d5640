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

use std::path::PathBuf;
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
    /// Its socket: removing a stale one, or binding it.
    #[error("cannot {doing}: {source}")]
    Socket {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no server accepted this supervisor; nothing started")]
    NotAccepted,
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
    let dir = match Dir::open(&dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cmappserver shim: {}: {e}", dir.display());
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log(&dir, &format!("cannot start runtime: {e}"));
            return 1;
        }
    };
    match rt.block_on(run(&dir)) {
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
fn close_inherited_descriptors() {
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

/// Waits for a server that accepts our hello and says `Start`; `None` when
/// none did in time.
async fn wait_for_start(dir: &Dir, listener: &UnixListener) -> Option<(Halves, Peer)> {
    let deadline = tokio::time::Instant::now() + FIRST_CONNECT;
    loop {
        let (stream, _) = tokio::time::timeout_at(deadline, listener.accept()).await.ok()?.ok()?;
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
        match tokio::time::timeout_at(deadline, rd.read::<ShimRequest>()).await {
            Ok(Ok(Some(ShimRequest::Start))) => return Some(((rd, wr), peer)),
            Ok(_) => log(
                dir,
                "a server closed the connection without accepting our hello; waiting for another",
            ),
            Err(_) => return None,
        }
    }
}

async fn run(dir: &Dir) -> Result<(), ShimError> {
    let meta: Meta = dir
        .read_json(state::META)
        .map_err(|source| ShimError::ReadMeta { source })?
        .ok_or(ShimError::MissingMeta)?;
    if meta.service.argv.first().is_none_or(String::is_empty) {
        return Err(ShimError::NoProgram);
    }
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
    let Some((first, first_peer)) = wait_for_start(dir, &listener).await else {
        let _ = std::fs::remove_dir_all(dir.path());
        return Err(ShimError::NotAccepted);
    };

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
        let deadline = tokio::time::Instant::now() + Duration::from_millis(grace_ms);
        *kill_at = Some(kill_at.map_or(deadline, |k| k.min(deadline)));
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
    // Everything the process wrote before it exited is in the pipes now.
    for r in [&mut stdout, &mut stderr] {
        loop {
            if !out.guest.accepting() {
                out.guest.room().await;
            }
            let Some(line) = r.try_next_line().or_else(|| r.take_partial()) else {
                break;
            };
            out.take(&link, Some(line));
        }
    }
    notify_dropped(&link, &mut out.dropped);
    // The count that goes with the exit is complete unless the disk is stuck.
    out.guest.drain().await;
    out.report_log_drops(&link, true);
    let (tail, flush) = out.guest.finish();
    let recorded = record_exit(dir, link, status, exited_at_ms, tail).await;
    // The exit is out; now let the guest log catch up before we go.
    flush.wait(Duration::from_secs(5));
    recorded
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
/// detect: `CMAPP_TEST_FAULT=<name>` in cmappserver's environment (which its
/// shims inherit). Honoured only in debug builds: a release build ignores it.
fn test_fault(name: &str) -> bool {
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
    }
}
