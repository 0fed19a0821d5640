//! Where an application's output goes in the guest: a size-capped, rotated
//! file per service and/or syslog (`outputLog` in cmappserver.conf), written
//! by the shim off its main loop; the last lines kept in memory for the exit
//! status; and reading a service's file back for `cmappmgr logs`.
//!
//! Rotation is numbered, as logrotate does it: `NAME.log` is written; when
//! the next line would take it past `outputLogSize`, `NAME.log.1` becomes
//! `.2` (and so on up to `outputLogFiles - 1`, the oldest dropped) and
//! `NAME.log` becomes `.1`. The names are stable (an admin's `tail -F` and
//! log shippers follow them), the newest lines are always in `NAME.log`, and
//! the space used is at most `outputLogSize` × `outputLogFiles`.
//!
//! The shim never waits for the disk: lines go to a writer thread (started
//! with the first line, so that a silent application costs no thread)
//! through a queue bounded by a count, which the writer empties a batch at a
//! time. While the disk keeps up nothing is lost: when the queue is full the
//! shim stops reading the pipes until the writer makes room (the application
//! waits, as on a file of its own). A disk that is slow (one batch takes longer than
//! [`STALL`]) or full (a write fails) costs lines instead, never time: they
//! are dropped and counted. The count is written into the file once the
//! writer can write again, into `shim.log`, and reported to cmappserver
//! (its log and `cmappmgr status`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::ServerConfig;
use common::message::{Stream, TailLine, MAX_LINE_LEN, MAX_TAIL_BYTES};
use serde::{Deserialize, Serialize};

/// Lines queued for the writer thread before they are dropped.
const WRITE_QUEUE: usize = 4096;
/// The longest file name stem made from a service's identity.
const MAX_STEM: usize = 64;

/// What the shim does with its process's output; recorded in `meta.json`
/// (absent in records of version 1: no file, no syslog, no tail).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputMeta {
    /// The current output file, when output goes to a file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub syslog: bool,
    /// Rotate past this size (bytes).
    pub max_bytes: u64,
    /// Files kept, the current one included.
    pub files: u32,
    /// Lines kept for the exit status.
    pub tail_lines: usize,
    /// The syslog tag's service part (the file name stem).
    pub tag: String,
}

impl OutputMeta {
    pub fn for_service(conf: &Settings, key: &str) -> OutputMeta {
        let stem = file_stem(key);
        OutputMeta {
            file: conf.to_file.then(|| conf.dir.join(format!("{stem}.log"))),
            syslog: conf.to_syslog,
            max_bytes: conf.max_bytes,
            files: conf.files,
            tail_lines: conf.tail_lines,
            tag: stem,
        }
    }

    /// For `cmappmgr status`: where the output goes.
    pub fn describe(&self) -> String {
        let mut to = Vec::new();
        if let Some(f) = &self.file {
            to.push(format!(
                "file {} ({} x {})",
                f.display(),
                self.files,
                human_bytes(self.max_bytes)
            ));
        }
        if self.syslog {
            to.push(format!("syslog (cmappserver[{}])", self.tag));
        }
        if to.is_empty() {
            to.push("nowhere in the guest".into());
        }
        to.join(" + ")
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// The server's output settings (from cmappserver.conf).
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub to_file: bool,
    pub to_syslog: bool,
    pub max_bytes: u64,
    pub files: u32,
    pub tail_lines: usize,
}

impl Settings {
    pub fn from_config(c: &ServerConfig) -> Settings {
        Settings {
            dir: c.output_log_dir.clone(),
            to_file: c.output_log.to_file(),
            to_syslog: c.output_log.to_syslog(),
            max_bytes: c.output_log_size,
            files: c.output_log_files,
            tail_lines: c.output_tail,
        }
    }
}

/// A file name stem for a service identity: its letters, digits, `.`, `-`
/// and `_` (anything else becomes `_`, runs collapsed, no leading dot), cut
/// to [`MAX_STEM`] bytes, then a hash of the whole identity, so that two
/// services never share a file. Never a path: the identity is the client's.
pub fn file_stem(key: &str) -> String {
    let mut s = String::new();
    // The kind of identity is in the hash; the name shows the service.
    let shown = key
        .strip_prefix("name:")
        .or_else(|| key.strip_prefix("run:"))
        .unwrap_or(key);
    for c in shown.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
            c
        } else {
            '_'
        };
        if c == '_' && s.ends_with('_') {
            continue;
        }
        if s.len() >= MAX_STEM {
            break;
        }
        s.push(c);
    }
    let s = s.trim_start_matches(['.', '_']).trim_end_matches('_');
    format!("{s}-{:08x}", fnv1a(key.as_bytes()) as u32)
}

/// FNV-1a, 64 bits: stable across builds (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// How long one batch of writes may take before the disk counts as slow
/// (or stuck): until then a full queue holds the shim's reading of the
/// pipes (the application waits, as it would on a file of its own);
/// after it, lines are dropped and counted instead.
pub const STALL: Duration = Duration::from_secs(1);
/// Lines the writer takes from the queue per write to the file.
const BATCH: usize = 1024;
/// Bytes the writer gathers before it writes them out.
const BATCH_BYTES: usize = 256 << 10;
/// The batch buffer the writer keeps between batches; a larger one (after
/// a burst) is freed.
const IDLE_BUF: usize = 16 << 10;

/// What the shim and the writer thread share.
#[derive(Debug)]
struct Shared {
    /// Lines not written (dropped at the queue when the disk was slow, or a write failed).
    dropped: AtomicU64,
    /// Lines in the queue.
    queued: AtomicUsize,
    /// When the batch being written began (ns since `epoch`, plus one);
    /// 0 while the writer waits for lines.
    busy_since: AtomicU64,
    epoch: Instant,
    /// Woken by the writer whenever it has made room.
    room: tokio::sync::Notify,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            dropped: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            busy_since: AtomicU64::new(0),
            epoch: Instant::now(),
            room: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// True when the writer has been on one batch for longer than [`STALL`].
    fn stalled(&self) -> bool {
        let since = self.busy_since.load(Ordering::Acquire);
        since != 0 && self.now().saturating_sub(since) > STALL.as_nanos() as u64
    }
}

/// The shim's side: the guest log and the tail.
///
/// What an idle shim holds is multiplied by the number of processes, so
/// nothing here is paid before it is needed: the writer thread starts with
/// the first line (an application that writes nothing costs no thread), and
/// its queue is a list that grows with what is queued and is bounded by our
/// own count ([`WRITE_QUEUE`]), not an array of every slot (a bounded
/// channel of 4096 lines is 172 KiB, written in full when it is made).
pub struct GuestLog {
    tx: Option<Sender<TailLine>>,
    /// Closed by the writer thread when it has written everything.
    done: Option<Receiver<()>>,
    /// The writer and where its errors go, until the first line starts it.
    idle: Option<(Writer, ShimLog)>,
    shared: Arc<Shared>,
    tail: VecDeque<TailLine>,
    tail_bytes: usize,
    tail_lines: usize,
}

/// Where the writer thread's errors go (the shim's `shim.log`).
type ShimLog = Box<dyn Fn(&str) + Send>;

impl std::fmt::Debug for GuestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestLog")
            .field("started", &self.tx.is_some())
            .field("waiting", &self.idle.is_some())
            .field("shared", &self.shared)
            .field("tail_lines", &self.tail.len())
            .finish_non_exhaustive()
    }
}

impl GuestLog {
    /// Prepares the writer when the output goes anywhere in the guest (its
    /// thread starts with the first line); `shim_log` receives its errors.
    pub fn start(meta: Option<&OutputMeta>, shim_log: impl Fn(&str) + Send + 'static) -> GuestLog {
        let shared = Arc::new(Shared::new());
        let idle = meta
            .filter(|m| m.file.is_some() || m.syslog)
            .map(|m| (Writer::new(m.clone(), shared.clone()), Box::new(shim_log) as ShimLog));
        GuestLog {
            tx: None,
            done: None,
            idle,
            shared,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_lines: meta.map_or(0, |m| m.tail_lines),
        }
    }

    /// Starts the writer thread (once, at the first line). Its stack keeps
    /// Rust's default size: only the pages it touches are resident, and an
    /// overflow would take the shim, and the exit it owes, with it.
    fn start_writer(&mut self) {
        let Some((writer, shim_log)) = self.idle.take() else {
            return;
        };
        let (tx, rx) = channel();
        let (done_tx, done) = sync_channel::<()>(0);
        let spawned = std::thread::Builder::new().name("output".into()).spawn(move || {
            writer.run(rx, shim_log);
            drop(done_tx);
        });
        match spawned {
            Ok(_) => {
                self.tx = Some(tx);
                self.done = Some(done);
            }
            // No thread (out of memory or processes): nothing reaches the
            // guest's log, and every line is counted as dropped.
            Err(_) => self.done = Some(done),
        }
    }

    /// True when a line taken now goes to the writer's queue, or is dropped
    /// because the disk is slow: false while the queue is full and the
    /// writer is making progress (then wait for [`GuestLog::room`]).
    pub fn accepting(&self) -> bool {
        self.tx.is_none()
            || self.shared.queued.load(Ordering::Acquire) < WRITE_QUEUE
            || self.shared.stalled()
            || self.writer_gone()
    }

    /// The writer thread has ended (it never does before `finish`, unless it
    /// panicked): nothing would ever make room.
    fn writer_gone(&self) -> bool {
        self.done
            .as_ref()
            .is_some_and(|d| matches!(d.try_recv(), Err(TryRecvError::Disconnected)))
    }

    /// Waits until [`GuestLog::accepting`]: the writer made room, or has
    /// been stuck on the disk for [`STALL`].
    pub async fn room(&self) {
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.accepting() {
                return;
            }
            let _ = tokio::time::timeout(STALL / 4, notified).await;
        }
    }

    /// Takes one line: to the writer (never waiting: a full queue drops
    /// it, see [`GuestLog::accepting`]) and into the tail.
    pub fn line(&mut self, stream: Stream, line: &str) {
        self.start_writer();
        match &self.tx {
            // The bound: only this thread adds to the count, so it cannot
            // grow past it between the check and the send.
            Some(tx) if self.shared.queued.load(Ordering::Acquire) < WRITE_QUEUE => {
                let l = TailLine {
                    stream,
                    line: line.to_string(),
                };
                // Counted before it is sent: the writer takes it off at once.
                self.shared.queued.fetch_add(1, Ordering::AcqRel);
                if tx.send(l).is_err() {
                    self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(_) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The writer could not be started.
            None if self.done.is_some() => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
        if self.tail_lines == 0 {
            return;
        }
        self.tail_bytes += line.len();
        self.tail.push_back(TailLine {
            stream,
            line: line.to_string(),
        });
        while self.tail.len() > self.tail_lines || self.tail_bytes > MAX_TAIL_BYTES {
            if let Some(old) = self.tail.pop_front() {
                self.tail_bytes -= old.line.len();
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Sets the counts a writer would have (for the shim's tests).
    #[cfg(test)]
    pub(super) fn set_counts_for_test(&self, queued: usize, dropped: u64) {
        self.shared.queued.store(queued, Ordering::Release);
        self.shared.dropped.store(dropped, Ordering::Relaxed);
    }

    /// True when the writer has nothing queued and is not writing: its drop
    /// count cannot change until the next line.
    pub fn idle(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) == 0 && self.shared.busy_since.load(Ordering::Acquire) == 0
    }

    /// Waits until the writer has taken every queued line, or is stuck on
    /// the disk for [`STALL`]: so that the count reported with an exit is
    /// complete when the disk answers (written or failed), and the exit is
    /// never held up by one that does not.
    pub async fn drain(&self) {
        while self.tx.is_some()
            && self.shared.queued.load(Ordering::Acquire) > 0
            && !self.shared.stalled()
            && !self.writer_gone()
        {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.queued.load(Ordering::Acquire) == 0 {
                return;
            }
            let _ = tokio::time::timeout(STALL / 4, notified).await;
        }
    }

    /// The last lines, for the exit status (taken: the next call has none).
    pub fn take_tail(&mut self) -> Vec<TailLine> {
        self.tail_bytes = 0;
        std::mem::take(&mut self.tail).into()
    }

    /// Closes the writer's queue and returns the writer to wait for (after
    /// the exit is recorded and sent: see [`GuestLog::take_tail`]).
    pub fn finish(mut self) -> Flush {
        self.tx = None;
        self.idle = None;
        Flush(self.done.take())
    }
}

/// The writer thread of a finished [`GuestLog`], still writing what was queued.
#[derive(Debug)]
pub struct Flush(Option<Receiver<()>>);

impl Flush {
    /// Waits (bounded) for the writer to finish: the shim's exit would end it.
    pub fn wait(self, limit: Duration) {
        if let Some(done) = self.0 {
            let _ = done.recv_timeout(limit);
        }
    }
}

/// The writer thread: appends to the file (rotating) and/or sends to syslog,
/// a batch at a time.
struct Writer {
    meta: OutputMeta,
    shared: Arc<Shared>,
    file: Option<File>,
    /// The file's size, what is gathered in `buf` included.
    size: u64,
    /// Lines gathered for the next write, how many, and how many of them
    /// are our own notes (not the application's lines, not counted when lost).
    buf: Vec<u8>,
    buf_lines: u64,
    buf_notes: u64,
    /// Drops already written into the file as a note.
    noted: u64,
    errors: u64,
}

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

impl Writer {
    fn new(meta: OutputMeta, shared: Arc<Shared>) -> Writer {
        Writer {
            meta,
            shared,
            file: None,
            size: 0,
            buf: Vec::new(),
            buf_lines: 0,
            buf_notes: 0,
            noted: 0,
            errors: 0,
        }
    }

    fn run(mut self, rx: Receiver<TailLine>, shim_log: ShimLog) {
        let mut syslog: Option<Syslog> = None;
        if self.meta.syslog {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_DAEMON,
                hostname: None,
                process: format!("cmappserver[{}]", self.meta.tag),
                pid: std::process::id(),
            };
            match syslog::unix(formatter) {
                Ok(l) => syslog = Some(l),
                Err(e) => shim_log(&format!("cannot open syslog for the application's output: {e}")),
            }
        }
        while let Ok(first) = rx.recv() {
            self.shared.busy_since.store(self.shared.now(), Ordering::Release);
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(l) = next.take() {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                taken += 1;
                self.note_drops(&shim_log);
                if self.meta.file.is_some() {
                    self.write(&l.line, false, &shim_log);
                }
                if let Some(s) = &mut syslog {
                    let _ = match l.stream {
                        Stream::Stdout => s.info(&l.line),
                        Stream::Stderr => s.warning(&l.line),
                    };
                }
                if taken < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.flush(&shim_log);
            if self.buf.capacity() > IDLE_BUF && self.shared.queued.load(Ordering::Acquire) == 0 {
                // A burst is over: its batch buffer goes back to the allocator
                // rather than staying with an idle shim for good.
                self.buf = Vec::new();
            }
            self.shared.busy_since.store(0, Ordering::Release);
            self.shared.room.notify_one();
        }
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            shim_log(&format!(
                "{dropped} output lines in all were not written to the guest's log (the disk was slow or full)"
            ));
        }
    }

    /// Notes lines dropped since the last note in the file and in shim.log.
    fn note_drops(&mut self, shim_log: &impl Fn(&str)) {
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped > self.noted {
            let note = format!(
                "[cmappserver: {} output lines dropped: the disk was slow or full]",
                dropped - self.noted
            );
            shim_log(&note);
            self.noted = dropped;
            self.write(&note, true, shim_log);
        }
    }

    /// Gathers one line for the file (`note`: a note of ours), rotating
    /// first when it would take the file past its size.
    fn write(&mut self, line: &str, note: bool, shim_log: &impl Fn(&str)) {
        let Some(path) = self.meta.file.clone() else { return };
        let len = line.len() as u64 + 1;
        if self.file.is_none() {
            match open_output(&path).and_then(|f| Ok((f.metadata()?.len(), f))) {
                Ok((size, f)) => {
                    self.size = size + self.buf.len() as u64;
                    self.file = Some(f);
                }
                Err(e) => {
                    self.failed(u64::from(!note), &e, shim_log);
                    return;
                }
            }
        }
        if self.size > 0 && self.size + len > self.meta.max_bytes {
            self.flush(shim_log);
            if let Err(e) = self.rotate(&path) {
                self.failed(u64::from(!note), &e, shim_log);
                return;
            }
        }
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.buf_lines += 1;
        self.buf_notes += u64::from(note);
        self.size += len;
        if self.buf.len() >= BATCH_BYTES {
            self.flush(shim_log);
        }
    }

    /// Writes what is gathered; on failure its lines are counted as dropped.
    fn flush(&mut self, shim_log: &impl Fn(&str)) {
        if self.buf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        let lines = std::mem::take(&mut self.buf_lines) - std::mem::take(&mut self.buf_notes);
        let written = match &mut self.file {
            Some(f) => f.write_all(&buf),
            None => Err(std::io::Error::other("the file is not open")),
        };
        if let Err(e) = written {
            self.size = self.size.saturating_sub(buf.len() as u64);
            self.failed(lines, &e, shim_log);
        }
        self.buf = buf;
        self.buf.clear();
    }

    /// `lines` could not be written: counted, and the file opened afresh next time.
    fn failed(&mut self, lines: u64, e: &std::io::Error, shim_log: &impl Fn(&str)) {
        let total = self.shared.dropped.fetch_add(lines, Ordering::Relaxed) + lines;
        self.noted += lines; // counted, but a note would fail the same way
        self.file = None;
        self.errors += 1;
        if self.errors.is_power_of_two() {
            let path = self.meta.file.as_deref().unwrap_or(Path::new("?"));
            shim_log(&format!(
                "cannot write the output file {}: {e} ({total} lines dropped so far)",
                path.display(),
            ));
        }
    }

    /// `.N-2` → `.N-1`, ..., `.log` → `.1`, a new `.log`.
    fn rotate(&mut self, path: &Path) -> std::io::Result<()> {
        self.file = None;
        let keep = self.meta.files.max(1);
        if keep == 1 {
            let f = open_output(path)?;
            f.set_len(0)?;
            self.file = Some(f);
            self.size = 0;
            return Ok(());
        }
        for n in (1..keep - 1).rev() {
            let _ = fs::rename(rotated(path, n), rotated(path, n + 1));
        }
        fs::rename(path, rotated(path, 1))?;
        let f = open_output(path)?;
        self.size = 0;
        self.file = Some(f);
        Ok(())
    }
}

/// Opens (or creates, 0640) the output file `path` for appending, never
/// through a symbolic link, in a directory (created 0750) that only we, or
/// root, can change: the shim may run as root, and a directory others can
/// write would let them point our writes at any file.
fn open_output(path: &Path) -> std::io::Result<File> {
    use common::perms::PermsError;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let refused = |e: PermsError| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e);
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)?;
        let uid = nix::unistd::geteuid().as_raw();
        common::perms::check_ancestors(dir, uid).map_err(refused)?;
        common::perms::check_owned(dir, &fs::symlink_metadata(dir)?, uid, true, false).map_err(refused)?;
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(refused(PermsError::NotAFile { path: path.into() }));
    }
    Ok(f)
}

/// Opens an output file for reading, never through a symbolic link.
fn open_read(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)
}

/// The last `n` lines of the output file `path` (up to byte `end` of it, when
/// given) and its rotated files, oldest first. Reads backwards, so a large
/// file costs only what is shown.
pub fn read_tail(path: &Path, files: u32, n: usize, end: Option<u64>) -> std::io::Result<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    for i in 0..files.max(1) {
        if lines.len() >= n {
            break;
        }
        let p = if i == 0 { path.to_path_buf() } else { rotated(path, i) };
        let mut f = match open_read(&p) {
            Ok(f) => f,
            Err(e) if i == 0 => return Err(e),
            Err(_) => break,
        };
        let mut older = last_lines(&mut f, n - lines.len(), if i == 0 { end } else { None })?;
        older.append(&mut lines);
        lines = older;
    }
    Ok(lines)
}

/// The last `n` lines of one file, oldest first, each cut to [`MAX_LINE_LEN`].
fn last_lines(f: &mut File, n: usize, end: Option<u64>) -> std::io::Result<Vec<String>> {
    let len = f.metadata()?.len();
    let len = end.map_or(len, |e| e.min(len));
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    // Newlines in `buf` beyond a trailing one.
    let count = |b: &[u8]| {
        b.strip_suffix(b"\n")
            .unwrap_or(b)
            .iter()
            .filter(|&&c| c == b'\n')
            .count()
    };
    while pos > 0 && count(&buf) < n {
        let step = pos.min(64 << 10);
        pos -= step;
        let mut chunk = vec![0u8; step as usize];
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        if buf.len() > n.saturating_add(1) * (MAX_LINE_LEN + 1) {
            break; // lines longer than we show: enough is read
        }
    }
    let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let all: Vec<&[u8]> = text.split(|&c| c == b'\n').collect();
    // The first piece may be a partial line when we did not read from 0.
    let skip = usize::from(pos > 0 && all.len() > n);
    let from = all.len().saturating_sub(n).max(skip);
    Ok(all[from..].iter().map(|l| cut(l)).collect())
}

fn cut(l: &[u8]) -> String {
    String::from_utf8_lossy(&l[..l.len().min(MAX_LINE_LEN)]).into_owned()
}

/// Follows an output file across rotations (as `tail -F` does).
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Starts at the current end of `path`.
    pub fn at_end(path: &Path) -> Follower {
        let mut f = Follower {
            path: path.to_path_buf(),
            file: None,
            ino: 0,
            partial: Vec::new(),
        };
        if let Ok(mut file) = open_read(path) {
            if file.seek(SeekFrom::End(0)).is_ok() {
                f.ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
                f.file = Some(file);
            }
        }
        f
    }

    /// Where in the current file it stands.
    pub fn pos(&mut self) -> Option<u64> {
        self.file.as_mut().and_then(|f| f.stream_position().ok())
    }

    /// Complete lines written since the last call (at most `max_bytes` worth).
    pub fn poll(&mut self, max_bytes: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut budget = max_bytes;
        loop {
            if let Some(f) = &mut self.file {
                let mut chunk = vec![0u8; budget.min(64 << 10)];
                match f.read(&mut chunk) {
                    Ok(0) | Err(_) => {}
                    Ok(n) => {
                        budget -= n.min(budget);
                        self.partial.extend_from_slice(&chunk[..n]);
                        self.split(&mut out);
                        if budget > 0 {
                            continue;
                        }
                        return out;
                    }
                }
            }
            // At the end of what we hold: has the file been rotated (or made)?
            match fs::metadata(&self.path) {
                Ok(m) if self.file.is_none() || m.ino() != self.ino => match open_read(&self.path) {
                    Ok(f) => {
                        self.ino = m.ino();
                        self.file = Some(f);
                        self.split_rest(&mut out);
                        continue;
                    }
                    Err(_) => return out,
                },
                _ => return out,
            }
        }
    }

    fn split(&mut self, out: &mut Vec<String>) {
        while let Some(i) = self.partial.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            out.push(cut(&line[..line.len() - 1]));
        }
        if self.partial.len() > MAX_LINE_LEN {
            let line: Vec<u8> = std::mem::take(&mut self.partial);
            out.push(cut(&line));
        }
    }

    /// The old file's unterminated last piece, when it is replaced.
    fn split_rest(&mut self, out: &mut Vec<String>) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            out.push(cut(&line));
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe_bounded_and_distinct() {
        let a = file_stem("/apps/myapp --flag x");
        assert_eq!(&a[..a.len() - 9], "apps_myapp_--flag_x");
        let b = file_stem(r#"run:["/bin/sh","-c","echo hi"]"#);
        assert_eq!(&b[..b.len() - 9], "bin_sh_-c_echo_hi");
        assert_ne!(file_stem("name:x"), file_stem("run:x"));
        let evil = file_stem("../../etc/passwd\n/..");
        assert!(!evil.contains('/') && !evil.starts_with('.'), "{evil}");
        let long = file_stem(&"x".repeat(10_000));
        assert!(long.len() <= MAX_STEM + 9, "{}", long.len());
        assert_ne!(file_stem("a b"), file_stem("a  b"), "two services, two files");
        assert_eq!(file_stem("a b"), file_stem("a b"), "stable");
        assert!(!file_stem("").is_empty());
    }

    fn meta(dir: &Path, max: u64, files: u32) -> OutputMeta {
        OutputMeta {
            file: Some(dir.join("s.log")),
            syslog: false,
            max_bytes: max,
            files,
            tail_lines: 3,
            tag: "s".into(),
        }
    }

    #[test]
    fn rotation_is_numbered_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let m = meta(dir.path(), 1000, 3);
        let mut w = Writer::new(m.clone(), Arc::new(Shared::new()));
        for i in 0..1000 {
            w.write(&format!("line {i:05}"), false, &|_| {});
        }
        w.flush(&|_| {});
        let path = m.file.unwrap();
        for p in [path.clone(), rotated(&path, 1), rotated(&path, 2)] {
            let len = fs::metadata(&p).unwrap().len();
            assert!(len <= 1000, "{} is {len} bytes", p.display());
        }
        assert!(!rotated(&path, 3).exists());
        assert_eq!(
            read_tail(&path, 3, 2, None).unwrap(),
            ["line 00998", "line 00999"],
            "newest lines last"
        );
        // Two full files hold 180 lines: 150 reach back into the oldest.
        let across = read_tail(&path, 3, 150, None).unwrap();
        assert_eq!(across.len(), 150);
        assert_eq!(across[149], "line 00999");
        assert_eq!(across[0], "line 00850");
        // Everything kept, when more is asked for: three files' worth, contiguous.
        let all = read_tail(&path, 3, 10_000, None).unwrap();
        assert!(all.len() > 180 && all.len() < 273, "{}", all.len());
        assert_eq!(all[0], format!("line {:05}", 1000 - all.len()));
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let mut g = GuestLog::start(None, |_| {});
        g.tail_lines = 3;
        for i in 0..10 {
            g.line(Stream::Stdout, &format!("l{i}"));
        }
        let t: Vec<String> = g.take_tail().into_iter().map(|l| l.line).collect();
        assert_eq!(t, ["l7", "l8", "l9"]);
    }

    #[test]
    fn a_writer_is_idle_with_nothing_queued_and_no_batch_begun() {
        let g = GuestLog::start(None, |_| {});
        assert!(g.idle());
        g.shared.queued.store(1, Ordering::Release);
        assert!(!g.idle(), "a line queued");
        g.shared.queued.store(0, Ordering::Release);
        g.shared.busy_since.store(1, Ordering::Release);
        assert!(!g.idle(), "a batch being written");
    }

    #[test]
    fn a_writer_is_stalled_only_after_a_second_on_one_batch() {
        let mut shared = Shared::new();
        shared.epoch = Instant::now() - Duration::from_secs(5);
        assert!(!shared.stalled(), "waiting for lines is not a stall");
        shared.busy_since.store(shared.now(), Ordering::Release);
        assert!(!shared.stalled(), "a batch just begun");
        shared.busy_since.store(1, Ordering::Release);
        assert!(shared.stalled(), "a batch begun 5 s ago");
    }

    #[test]
    fn sizes_are_shown_in_the_largest_whole_unit_and_the_destinations_named() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1536, "1536 B"),
            (3 << 10, "3 KiB"),
            (1 << 20, "1 MiB"),
            ((5 << 20) + 1024, "5121 KiB"),
            (1 << 30, "1 GiB"),
            ((1 << 30) + (1 << 20), "1025 MiB"),
            (3 << 30, "3 GiB"),
        ];
        for (n, shown) in cases {
            assert_eq!(human_bytes(n), shown, "{n}");
        }
        let mut m = meta(Path::new("/var/log/apps"), 10 << 20, 3);
        assert_eq!(m.describe(), "file /var/log/apps/s.log (3 x 10 MiB)");
        m.syslog = true;
        assert_eq!(
            m.describe(),
            "file /var/log/apps/s.log (3 x 10 MiB) + syslog (cmappserver[s])"
        );
        m.file = None;
        assert_eq!(m.describe(), "syslog (cmappserver[s])");
        m.syslog = false;
        assert_eq!(m.describe(), "nowhere in the guest");
    }

    #[test]
    fn a_services_output_settings_come_from_the_servers() {
        let mut c = ServerConfig {
            output_log_dir: "/srv/out".into(),
            output_log: common::config::OutputLog::Both,
            output_log_size: 12345,
            output_log_files: 7,
            output_tail: 9,
            ..Default::default()
        };
        let s = Settings::from_config(&c);
        assert_eq!(
            (
                s.dir.as_path(),
                s.to_file,
                s.to_syslog,
                s.max_bytes,
                s.files,
                s.tail_lines
            ),
            (Path::new("/srv/out"), true, true, 12345, 7, 9)
        );
        let m = OutputMeta::for_service(&s, "name:web");
        let stem = file_stem("name:web");
        assert!(stem.starts_with("web-"), "{stem}");
        assert_eq!(
            m,
            OutputMeta {
                file: Some(PathBuf::from(format!("/srv/out/{stem}.log"))),
                syslog: true,
                max_bytes: 12345,
                files: 7,
                tail_lines: 9,
                tag: stem,
            }
        );
        c.output_log = common::config::OutputLog::Syslog;
        let m = OutputMeta::for_service(&Settings::from_config(&c), "name:web");
        assert_eq!((m.file, m.syslog), (None, true));
    }

    #[test]
    fn file_names_hash_the_whole_identity_with_fnv1a() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(file_stem(""), "-84222325");
        assert_eq!(
            file_stem("name:..a  b__c_"),
            format!("a_b_c-{:08x}", fnv1a(b"name:..a  b__c_") as u32)
        );
        assert_eq!(
            file_stem(&"y".repeat(MAX_STEM)).len(),
            MAX_STEM + 9,
            "64 bytes are kept whole"
        );
        assert_eq!(rotated(Path::new("/d/s.log"), 2), Path::new("/d/s.log.2"));
    }

    #[test]
    fn the_last_lines_of_a_file_are_read_whatever_their_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let tail = |n, end| read_tail(&path, 1, n, end).unwrap();
        fs::write(&path, "a\nb\nc").unwrap();
        assert_eq!(tail(5, None), ["a", "b", "c"], "an unterminated last line counts");
        assert_eq!(tail(2, None), ["b", "c"]);
        assert_eq!(tail(0, None), Vec::<String>::new());
        fs::write(&path, "abc\ndef\nghi\n").unwrap();
        assert_eq!(tail(1, None), ["ghi"]);
        assert_eq!(tail(10, Some(8)), ["abc", "def"], "up to byte 8 only");
        assert_eq!(
            tail(10, Some(100)),
            ["abc", "def", "ghi"],
            "an end past the file is its end"
        );
        fs::write(&path, "\n\nx\n").unwrap();
        assert_eq!(tail(10, None), ["", "", "x"], "empty lines are lines");
        fs::write(&path, "").unwrap();
        assert!(tail(10, None).is_empty());
        // Long lines are cut to what a frame may carry.
        fs::write(&path, format!("{}\nshort\n", "z".repeat(10_000))).unwrap();
        let t = tail(2, None);
        assert_eq!((t[0].len(), t[1].as_str()), (MAX_LINE_LEN, "short"));
        // Across the 64 KiB steps of reading backwards, no line is cut or
        // half-read: 3000 lines of 100 bytes, the last 1000 of them.
        let all: Vec<String> = (0..3000).map(|i| format!("{i:05}{}", ".".repeat(94))).collect();
        fs::write(&path, all.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        assert_eq!(tail(1000, None), all[2000..]);
        assert_eq!(tail(655, None), all[2345..], "one line past one step");
        assert_eq!(tail(5000, None), all, "all of it");
        assert_eq!(tail(3, Some(1000 * 100)), all[997..1000]);
        // A line far longer than is shown stops the reading: its last piece is shown.
        let mut huge = "h".repeat(1 << 20);
        huge.push_str("\nend\n");
        fs::write(&path, huge).unwrap();
        let t = tail(2, None);
        assert_eq!((t.len(), t[0].len(), t[1].as_str()), (2, MAX_LINE_LEN, "end"));
        // The newest file must be there; a rotated one need not be.
        assert_eq!(read_tail(&path, 5, 10, None).unwrap().len(), 2);
        let e = read_tail(&dir.path().join("none.log"), 3, 10, None).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        // Never through a symbolic link.
        std::os::unix::fs::symlink(&path, dir.path().join("link.log")).unwrap();
        assert!(read_tail(&dir.path().join("link.log"), 1, 10, None).is_err());
    }

    #[test]
    fn a_follower_returns_complete_lines_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.log");
        fs::write(&path, "old\n").unwrap();
        let mut f = Follower::at_end(&path);
        assert_eq!(f.pos(), Some(4));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "abc").unwrap();
        assert!(f.poll(1 << 20).is_empty(), "half a line waits");
        writeln!(file, "def").unwrap();
        assert_eq!(f.poll(1 << 20), ["abcdef"]);
        assert_eq!(f.pos(), Some(11));
        // A budget of 10 bytes: the lines it covers, the rest next time.
        for i in 0..6 {
            writeln!(file, "line{i}").unwrap();
        }
        assert_eq!(f.poll(10), ["line0"]);
        assert_eq!(f.poll(12), ["line1", "line2"]);
        assert_eq!(f.poll(1 << 20), ["line3", "line4", "line5"]);
        // A line longer than is shown comes out cut, without waiting for its end.
        write!(file, "{}", "q".repeat(MAX_LINE_LEN + 10)).unwrap();
        let got = f.poll(1 << 20);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), MAX_LINE_LEN);
        // An unterminated last piece of a rotated file is a line of its own.
        write!(file, "tail").unwrap();
        assert!(f.poll(1 << 20).is_empty());
        fs::rename(&path, rotated(&path, 1)).unwrap();
        fs::write(&path, "fresh\n").unwrap();
        assert_eq!(f.poll(1 << 20), ["tail", "fresh"]);
        // A file that is not there yet is followed from its beginning.
        let later = dir.path().join("later.log");
        let mut g = Follower::at_end(&later);
        assert_eq!(g.pos(), None);
        assert!(g.poll(1 << 20).is_empty());
        fs::write(&later, "one\ntwo\n").unwrap();
        assert_eq!(g.poll(1 << 20), ["one", "two"]);
    }

    #[test]
    fn a_followed_line_of_the_longest_length_shown_waits_for_its_end_and_one_byte_more_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.log");
        fs::write(&path, "").unwrap();
        let mut f = Follower::at_end(&path);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "{}", "a".repeat(MAX_LINE_LEN)).unwrap();
        assert!(
            f.poll(1 << 20).is_empty(),
            "not longer than is shown: it waits for its end"
        );
        writeln!(file).unwrap();
        assert_eq!(f.poll(1 << 20), ["a".repeat(MAX_LINE_LEN)]);
        write!(file, "{}", "b".repeat(MAX_LINE_LEN + 1)).unwrap();
        assert_eq!(
            f.poll(1 << 20),
            ["b".repeat(MAX_LINE_LEN)],
            "one byte longer: cut at once"
        );
    }

    /// What the writer told shim.log.
    fn shim_log() -> (
        Arc<std::sync::Mutex<Vec<String>>>,
        impl Fn(&str) + Send + Clone + 'static,
    ) {
        let said = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = said.clone();
        (said, move |l: &str| s.lock().unwrap().push(l.to_string()))
    }

    #[test]
    fn lines_reach_the_file_in_order_and_the_tail_keeps_the_last_within_64_kib() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = meta(&dir.path().join("out"), 1 << 30, 2);
        m.tail_lines = 100;
        let (said, log) = shim_log();
        let mut g = GuestLog::start(Some(&m), log);
        assert!(g.accepting());
        for i in 0..3000 {
            g.line(Stream::Stdout, &format!("line {i}"));
        }
        // Ten lines of 10 KiB: the tail's 64 KiB hold six.
        let big = "b".repeat(10 << 10);
        for _ in 0..10 {
            g.line(Stream::Stderr, &big);
        }
        let tail = g.take_tail();
        g.finish().wait(Duration::from_secs(30));
        assert_eq!(tail.len(), 6);
        assert!(tail.iter().all(|l| l.stream == Stream::Stderr && l.line == big));
        let text = fs::read_to_string(m.file.as_ref().unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3010);
        assert!(lines[..3000].iter().enumerate().all(|(i, l)| *l == format!("line {i}")));
        assert!(said.lock().unwrap().is_empty(), "{said:?}");
        // The output directory is made private to us.
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("out")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
    }

    #[test]
    fn without_a_file_or_syslog_only_the_tail_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = meta(dir.path(), 1 << 20, 2);
        m.file = None;
        let mut g = GuestLog::start(Some(&m), |_| {});
        assert!(g.tx.is_none(), "no writer thread");
        g.line(Stream::Stdout, "x");
        assert_eq!(g.take_tail().len(), 1);
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing written");
    }

    #[test]
    fn lines_that_cannot_be_written_are_counted_and_said_at_powers_of_two() {
        let dir = tempfile::tempdir().unwrap();
        // The output directory is a file: every write fails.
        fs::write(dir.path().join("out"), "").unwrap();
        let m = meta(&dir.path().join("out"), 1 << 20, 2);
        let (said, log) = shim_log();
        let mut g = GuestLog::start(Some(&m), log);
        for i in 0..5 {
            g.line(Stream::Stdout, &format!("l{i}"));
            // One at a time, so that each is its own failed write.
            g.shared.queued.load(Ordering::Acquire);
            let deadline = Instant::now() + Duration::from_secs(30);
            // (A writer that died, as on a panic, never becomes idle.)
            while !g.idle() && !g.writer_gone() && Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
        g.finish().wait(Duration::from_secs(30));
        let said = said.lock().unwrap().clone();
        let errors: Vec<&String> = said
            .iter()
            .filter(|l| l.starts_with("cannot write the output file"))
            .collect();
        assert_eq!(errors.len(), 3, "errors 1, 2 and 4 are said: {said:?}");
        assert!(errors[2].ends_with("(4 lines dropped so far)"), "{said:?}");
        assert_eq!(
            said.last().unwrap(),
            "5 output lines in all were not written to the guest's log (the disk was slow or full)"
        );
    }

    #[test]
    fn dropped_lines_are_noted_in_the_file_once_it_can_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let m = meta(dir.path(), 1 << 20, 2);
        let shared = Arc::new(Shared::new());
        let mut w = Writer::new(m.clone(), shared.clone());
        let (said, log) = shim_log();
        w.write("before", false, &log);
        shared.dropped.store(3, Ordering::Relaxed);
        w.note_drops(&log);
        w.note_drops(&log);
        w.write("after", false, &log);
        shared.dropped.store(5, Ordering::Relaxed);
        w.note_drops(&log);
        w.flush(&log);
        let note = |n| format!("[cmappserver: {n} output lines dropped: the disk was slow or full]");
        assert_eq!(
            fs::read_to_string(m.file.as_ref().unwrap()).unwrap(),
            format!("before\n{}\nafter\n{}\n", note(3), note(2))
        );
        assert_eq!(*said.lock().unwrap(), [note(3), note(2)]);
        // A failed write of notes and lines: only the application's lines count.
        fs::remove_file(m.file.as_ref().unwrap()).unwrap();
        w.file = Some(File::open("/dev/null").unwrap()); // read-only: the write fails
        w.write("lost", false, &log);
        shared.dropped.store(6, Ordering::Relaxed);
        w.note_drops(&log);
        w.flush(&log);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 7, "the line, not the note");
        assert!(w.file.is_none(), "opened afresh next time");
    }

    #[test]
    fn a_file_is_rotated_before_a_line_would_take_it_past_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let m = meta(dir.path(), 100, 3);
        let path = m.file.clone().unwrap();
        // What is already there counts.
        fs::write(&path, "x".repeat(90)).unwrap();
        let mut w = Writer::new(m.clone(), Arc::new(Shared::new()));
        w.write(&"y".repeat(9), false, &|_| {});
        w.flush(&|_| {});
        assert_eq!(fs::read_to_string(&path).unwrap().len(), 100, "90 + 10 fit exactly");
        w.write("z", false, &|_| {});
        w.flush(&|_| {});
        assert_eq!(fs::read_to_string(&path).unwrap(), "z\n");
        assert_eq!(fs::read_to_string(rotated(&path, 1)).unwrap().len(), 100);
        // A line longer than the size is written whole, alone in its file.
        let long = "L".repeat(300);
        w.write(&long, false, &|_| {});
        w.write("after", false, &|_| {});
        w.flush(&|_| {});
        assert_eq!(fs::read_to_string(&path).unwrap(), "after\n");
        assert_eq!(fs::read_to_string(rotated(&path, 1)).unwrap(), format!("{long}\n"));
        assert_eq!(fs::read_to_string(rotated(&path, 2)).unwrap(), "z\n");

        // One file kept: emptied in place.
        let one = meta(&dir.path().join("one"), 50, 1);
        let p1 = one.file.clone().unwrap();
        let mut w = Writer::new(one, Arc::new(Shared::new()));
        for i in 0..20 {
            w.write(&format!("line {i:02}"), false, &|_| {});
        }
        w.flush(&|_| {});
        // Six lines of 8 bytes fill it: 20 lines are three fills and two.
        assert_eq!(fs::read_to_string(&p1).unwrap(), "line 18\nline 19\n");
        assert!(!rotated(&p1, 1).exists());
    }

    #[test]
    fn a_quarter_mib_of_lines_is_written_without_waiting_for_the_batch_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let m = meta(dir.path(), 1 << 30, 2);
        let mut w = Writer::new(m.clone(), Arc::new(Shared::new()));
        let line = "w".repeat(1023);
        for _ in 0..300 {
            w.write(&line, false, &|_| {});
        }
        let on_disk = fs::metadata(m.file.as_ref().unwrap()).unwrap().len();
        assert_eq!(on_disk, 256 << 10, "written once 256 KiB were gathered");
    }

    #[test]
    fn the_output_file_is_never_reached_through_a_link_or_a_device() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "").unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_output(&link).is_err());
        let e = open_output(Path::new("/dev/null")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        assert!(open_output(&dir.path().join("ok.log")).is_ok());
        assert!(open_read(&link).is_err());
        let mut f = Follower::at_end(&link);
        assert_eq!(f.pos(), None, "a link is not followed");
    }

    /// A guest log whose writer the test plays: `queued` lines, the writer
    /// alive while the returned sender is.
    fn played(
        busy_for: Option<Duration>,
        queued: usize,
    ) -> (GuestLog, std::sync::mpsc::SyncSender<()>, Receiver<TailLine>) {
        let mut shared = Shared::new();
        shared.epoch = Instant::now() - Duration::from_secs(10);
        if let Some(d) = busy_for {
            shared
                .busy_since
                .store(shared.now() - d.as_nanos() as u64, Ordering::Release);
        }
        shared.queued.store(queued, Ordering::Release);
        let (tx, rx) = channel();
        let (alive, done) = sync_channel(0);
        let g = GuestLog {
            tx: Some(tx),
            done: Some(done),
            idle: None,
            shared: Arc::new(shared),
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_lines: 0,
        };
        (g, alive, rx)
    }

    /// A guest log whose queue is full and whose writer (played by the
    /// test) works: it makes room when the returned closure is called, and
    /// the lines queued afterwards arrive on the receiver.
    #[allow(clippy::type_complexity)]
    pub(in crate::supervisor) fn full_guest_log(
    ) -> (GuestLog, impl Fn(), std::sync::mpsc::SyncSender<()>, Receiver<TailLine>) {
        let (g, alive, rx) = played(None, WRITE_QUEUE);
        let shared = g.shared.clone();
        let make_room = move || {
            shared.queued.store(0, Ordering::Release);
            shared.room.notify_waiters();
        };
        (g, make_room, alive, rx)
    }

    #[test]
    fn a_full_queue_holds_the_reading_until_the_writer_stalls_or_is_gone() {
        let (g, alive, _rx) = played(None, WRITE_QUEUE - 1);
        assert!(g.accepting(), "room for one more");
        g.shared.queued.store(WRITE_QUEUE, Ordering::Release);
        assert!(!g.accepting(), "full, and the writer is working");
        let (g2, _alive2, _rx2) = played(Some(Duration::from_millis(900)), WRITE_QUEUE);
        assert!(!g2.accepting(), "on one batch for 0.9 s: not stalled yet");
        let (g3, _alive3, _rx3) = played(Some(Duration::from_millis(1100)), WRITE_QUEUE);
        assert!(g3.accepting(), "stalled: lines are dropped, not waited for");
        drop(alive);
        assert!(g.accepting(), "the writer is gone: nothing would make room");
        assert!(!g2.writer_gone());
    }

    #[test]
    fn a_line_that_finds_the_queue_full_is_dropped_and_counted() {
        // Room for one more line: the queue is bounded by the count.
        let (mut g, _alive, rx) = played(None, WRITE_QUEUE - 1);
        g.line(Stream::Stdout, "one");
        g.line(Stream::Stdout, "two");
        g.line(Stream::Stdout, "three");
        assert_eq!(g.dropped(), 2);
        assert_eq!(
            g.shared.queued.load(Ordering::Acquire),
            WRITE_QUEUE,
            "only what is queued is counted as queued"
        );
        assert_eq!(rx.try_recv().unwrap().line, "one");
        assert!(rx.try_recv().is_err(), "the dropped lines were not sent");
    }

    #[test]
    fn the_writer_thread_starts_with_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let meta = OutputMeta {
            file: Some(dir.path().join("out").join("app.log")),
            syslog: false,
            max_bytes: 1 << 20,
            files: 2,
            tail_lines: 5,
            tag: "app".into(),
        };
        let mut g = GuestLog::start(Some(&meta), |_| {});
        assert!(g.tx.is_none() && g.done.is_none(), "no thread before any output");
        g.line(Stream::Stdout, "hello");
        assert!(g.tx.is_some(), "the first line started the writer");
        g.line(Stream::Stderr, "again");
        assert_eq!(g.take_tail().len(), 2);
        let flush = g.finish();
        flush.wait(Duration::from_secs(20));
        let text = std::fs::read_to_string(meta.file.as_ref().unwrap()).unwrap();
        assert_eq!(text, "hello\nagain\n");
    }

    async fn wait<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("waited 20 s")
    }

    #[tokio::test]
    async fn room_and_drain_wait_for_the_writer_but_never_for_a_stuck_disk() {
        // Nothing queued, a stalled writer, a gone writer, no writer: no wait.
        let (g, _a, _r) = played(None, 0);
        wait(g.drain()).await;
        wait(g.room()).await;
        let (g, _a, _r) = played(Some(Duration::from_secs(2)), WRITE_QUEUE);
        wait(g.drain()).await;
        wait(g.room()).await;
        let (g, a, _r) = played(None, 5);
        drop(a);
        wait(g.drain()).await;
        wait(g.room()).await;
        let none = GuestLog::start(None, |_| {});
        none.shared.queued.store(1, Ordering::Release);
        wait(none.drain()).await;
        // A working writer: both wait until it has made room.
        let (g, _a, _r) = played(None, WRITE_QUEUE);
        let done = std::cell::Cell::new(0);
        wait(async {
            tokio::join!(
                async {
                    g.drain().await;
                    done.set(done.get() + 1);
                },
                async {
                    g.room().await;
                    done.set(done.get() + 1);
                },
                async {
                    for _ in 0..10 {
                        tokio::task::yield_now().await;
                    }
                    assert_eq!(done.get(), 0, "both wait while the queue is full");
                    g.shared.queued.store(0, Ordering::Release);
                    g.shared.room.notify_waiters();
                },
            )
        })
        .await;
        assert_eq!(done.get(), 2);
    }

    #[test]
    fn a_follower_sees_new_lines_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.log");
        fs::write(&path, "old\n").unwrap();
        let mut f = Follower::at_end(&path);
        assert!(f.poll(1 << 20).is_empty());
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(file, "new 1").unwrap();
        assert_eq!(f.poll(1 << 20), ["new 1"]);
        writeln!(file, "new 2").unwrap();
        fs::rename(&path, rotated(&path, 1)).unwrap();
        fs::write(&path, "after\n").unwrap();
        assert_eq!(f.poll(1 << 20), ["new 2", "after"]);
    }
}
