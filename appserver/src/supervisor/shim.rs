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
//! 1. binds `<dir>/sock`, says so on its stdout, waits for the server that
//!    started it to connect, then starts the process (its own process group,
//!    stdin from /dev/null, stdout and stderr piped), records `pid.json`, and
//!    sends `Hello` with the pid;
//! 2. reads the process's output continuously (it never blocks on a slow or
//!    absent server: lines are dropped, and counted, instead) and forwards it
//!    to whichever server is connected to its socket;
//! 3. on `Stop`, sends TERM to the process group and KILL after the grace;
//! 4. when the process exits, drains what is left in the pipes, writes
//!    `exit.json` (atomically), sends `Exited` to the connected server, and
//!    exits. A grandchild that keeps the pipes open does not delay any of it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::connection::{self, MessageWriter};
use common::message::{now_ms, ExitStatus, Stream, MAX_LINE_LEN};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::proto::{ShimEvent, ShimRequest, SHIM_PROTOCOL};
use super::state::{self, ExitRecord, Meta, PidRecord};

/// Lines queued for the server before the shim starts dropping them.
const OUTPUT_QUEUE: usize = 1024;
/// How long a new shim waits for the server that started it to connect.
const FIRST_CONNECT: Duration = Duration::from_secs(30);

/// Entry point of `cmappserver shim <dir>`; returns the shim's exit code.
pub fn main(dir: PathBuf) -> i32 {
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
            log(&dir, &e);
            1
        }
    }
}

fn log(dir: &Path, msg: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(state::SHIM_LOG))
    {
        let _ = writeln!(f, "{} shim[{}]: {msg}", now_ms(), std::process::id());
    }
}

/// Tells the server waiting on our stdout that the socket is bound.
fn print_listening() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening");
    let _ = out.flush();
}

/// The program and arguments to exec for `meta` (a built-in probe runs as
/// `cmappserver <probe> args...` from this same binary).
fn command_for(meta: &Meta) -> tokio::process::Command {
    let mut cmd = match &meta.probe {
        Some(sub) => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
            let mut c = tokio::process::Command::new(exe);
            c.arg(sub).args(&meta.argv[1..]);
            c
        }
        None => {
            let mut c = tokio::process::Command::new(&meta.argv[0]);
            c.args(&meta.argv[1..]);
            c
        }
    };
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    cmd
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

async fn run(dir: &Path) -> Result<(), String> {
    let meta: Meta = state::read_json(dir, state::META)
        .map_err(|e| format!("cannot read {}: {e}", state::META))?
        .ok_or_else(|| format!("{} is missing", state::META))?;
    let sock_path = dir.join(state::SOCK);
    let _ = std::fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path).map_err(|e| format!("cannot bind {}: {e}", sock_path.display()))?;
    print_listening();

    // The process starts only once the server that asked for it is connected,
    // so that not even its first line of output can be missed. A server that
    // died in between never connects: then nothing is started at all.
    let first = match tokio::time::timeout(FIRST_CONNECT, listener.accept()).await {
        Ok(Ok((stream, _))) => stream,
        _ => {
            let _ = std::fs::remove_dir_all(dir);
            return Err("no server connected; nothing started".into());
        }
    };

    let started_at_ms = now_ms();
    let mut child = match command_for(&meta).spawn() {
        Ok(c) => c,
        Err(e) => {
            let status = spawn_failure(&e, &meta.argv[0]);
            return record_exit(dir, Some(Link::start(first, 0, started_at_ms)), status, now_ms()).await;
        }
    };
    let pid = child.id().unwrap_or(0);
    let pgid = Pid::from_raw(pid as i32);
    let record = PidRecord {
        pid,
        started_at_ms,
        shim_pid: std::process::id(),
        start_ticks: state::start_ticks(pid),
    };
    state::write_json(dir, state::PID, &record).map_err(|e| format!("cannot record pid: {e}"))?;
    let mut link: Option<Link> = Some(Link::start(first, pid, started_at_ms));

    let mut stdout = LineReader::new(Stream::Stdout, child.stdout.take().and_then(|p| p.into_owned_fd().ok()));
    let mut stderr = LineReader::new(Stream::Stderr, child.stderr.take().and_then(|p| p.into_owned_fd().ok()));
    // `link` is the connected server, if any: a writer task fed through a
    // bounded queue, so that a slow server never stops us draining the pipes.
    let mut dropped = Dropped::default();
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut stop_requested = false;

    let status = loop {
        tokio::select! {
            biased;
            status = child.wait() => {
                break status.map(ExitStatus::from_std).unwrap_or_else(|e| ExitStatus::Lost { error: format!("wait failed: {e}") });
            }
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    // A new server replaces the old one (it restarted).
                    link = Some(Link::start(stream, pid, started_at_ms));
                }
            }
            req = recv_request(&mut link) => match req {
                Some(ShimRequest::Stop { grace_ms }) => {
                    stop_requested = true;
                    let _ = killpg(pgid, Signal::SIGTERM);
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(grace_ms);
                    kill_at = Some(kill_at.map_or(deadline, |k| k.min(deadline)));
                }
                None => link = None,
            },
            _ = sleep_until(kill_at) => {
                let _ = killpg(pgid, Signal::SIGKILL);
                kill_at = None;
            }
            line = stdout.next_line() => {
                forward(&link, &mut dropped, line);
                yield_if_full(&link).await;
            }
            line = stderr.next_line() => {
                forward(&link, &mut dropped, line);
                yield_if_full(&link).await;
            }
            // Output stopped while lines were being dropped: say so now, not at the next line.
            _ = tokio::time::sleep(Duration::from_millis(100)), if dropped.any() && link.is_some() => {
                notify_dropped(&link, &mut dropped);
            }
        }
    };
    let exited_at_ms = now_ms();
    if stop_requested {
        // A requested stop ends the whole group, stragglers included.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    // Everything the process wrote before it exited is in the pipes now.
    for r in [&mut stdout, &mut stderr] {
        while let Some(line) = r.try_next_line() {
            forward(&link, &mut dropped, Some(line));
        }
        if let Some(line) = r.take_partial() {
            forward(&link, &mut dropped, Some(line));
        }
    }
    notify_dropped(&link, &mut dropped);
    record_exit(dir, link, status, exited_at_ms).await
}

/// Records the exit in `exit.json` (first: it must survive whatever happens
/// next), removes the socket, and tells the connected server, if any.
async fn record_exit(dir: &Path, link: Option<Link>, status: ExitStatus, exited_at_ms: u64) -> Result<(), String> {
    state::write_json(
        dir,
        state::EXIT,
        &ExitRecord {
            status: status.clone(),
            exited_at_ms,
        },
    )
    .map_err(|e| format!("cannot record exit status {status}: {e}"))?;
    let _ = std::fs::remove_file(dir.join(state::SOCK));
    if let Some(link) = link {
        link.finish(ShimEvent::Exited { status, exited_at_ms }).await;
    }
    Ok(())
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

/// One server connection: a writer task and a reader task.
struct Link {
    tx: mpsc::Sender<ShimEvent>,
    requests: mpsc::Receiver<ShimRequest>,
    writer: tokio::task::JoinHandle<()>,
}

impl Link {
    fn start(stream: UnixStream, pid: u32, started_at_ms: u64) -> Link {
        let (mut rd, wr) = connection::split(stream);
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        let (req_tx, requests) = mpsc::channel(8);
        let _ = tx.try_send(ShimEvent::Hello {
            protocol: SHIM_PROTOCOL,
            pid,
            started_at_ms,
        });
        let writer = tokio::spawn(write_events(wr, rx));
        tokio::spawn(async move {
            while let Ok(Some(req)) = rd.read::<ShimRequest>().await {
                if req_tx.send(req).await.is_err() {
                    break;
                }
            }
        });
        Link { tx, requests, writer }
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
