//! Detection latency: from the instant a monitored process exits in the
//! guest to the instant its cmappmgr has exited with the process's code.
//!
//! The application is the bench itself (`cmapp-bench exit-now`): it opens
//! its stamp file, blocks on a FIFO until the harness triggers it, reads
//! CLOCK_MONOTONIC, writes the reading into the open file and exits with a
//! chosen code. The harness, blocked in
//! waitpid() on the manager, reads the same clock the moment the wait
//! returns. The difference covers the whole path: the kernel telling the
//! shim, the exit record, the shim → cmappserver → TLS → cmappmgr relay,
//! the manager's acknowledgement, and the manager's own exit. Launch time is
//! excluded: managers are started in batches and their applications wait.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::fixture::{tail, Env, Mgr, Server, WAIT};
use super::sys;

/// Managers started (and waiting) at once.
const BATCH: usize = 25;
/// Pause before each trigger, so that the previous event's aftermath (the
/// shim's exit, the record's removal) does not overlap the next measurement.
const GAP: Duration = Duration::from_millis(3);

/// Exit codes the application uses: distinct from every code cmappmgr uses
/// for its own failures (0, 1, 64, 69, 70, 75–78) and from 126/127.
fn code_for(i: usize) -> i32 {
    100 + (i % 26) as i32
}

#[derive(Debug)]
pub struct Latency {
    /// Latencies in nanoseconds, sorted.
    pub ns: Vec<u64>,
    pub wall: Duration,
    /// The filesystem of the server's state directory (the shim writes the
    /// exit record there, the server removes it on the manager's ack).
    pub state_fs: String,
}

impl Latency {
    pub fn percentile(&self, p: f64) -> u64 {
        percentile(&self.ns, p)
    }
}

/// The `p`-th percentile (0–100) of sorted values: the smallest value with at
/// least p % of the values at or below it.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn run(env: &Env, server: &Server, events: usize) -> Result<Latency, String> {
    let dir = env.dir("latency")?;
    let started = Instant::now();
    let mut ns = Vec::with_capacity(events);
    let mut next = 0;
    while next < events {
        let k = BATCH.min(events - next);
        let mut batch = Vec::with_capacity(k);
        for i in next..next + k {
            let fifo = dir.join(format!("go-{i}"));
            let out = dir.join(format!("t-{i}"));
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)
                .map_err(|e| format!("mkfifo {}: {e}", fifo.display()))?;
            let run = vec![
                env.bins.bench.display().to_string(),
                "exit-now".into(),
                fifo.display().to_string(),
                out.display().to_string(),
                code_for(i).to_string(),
            ];
            batch.push((i, fifo, out, Mgr::spawn(env, &server.node(), 10, &run)?));
        }
        for (_, _, _, m) in &mut batch {
            m.wait_started()?;
        }
        for (i, fifo, out, mut m) in batch {
            std::thread::sleep(GAP);
            trigger(&fifo, &mut m)?;
            let status = m.child.wait().map_err(|e| format!("waitpid on cmappmgr: {e}"))?;
            let t_end = sys::mono_ns();
            m.reaped();
            let want = code_for(i);
            if status.code() != Some(want) {
                return Err(format!(
                    "cmappmgr exited with {status} where its application exited with code {want}; its log:\n{}",
                    tail(&m.err, 20)
                ));
            }
            let t_exit = read_stamp(&out)?;
            ns.push(t_end.saturating_sub(t_exit));
            let _ = std::fs::remove_file(&fifo);
            let _ = std::fs::remove_file(&out);
        }
        next += k;
    }
    ns.sort_unstable();
    Ok(Latency {
        ns,
        wall: started.elapsed(),
        state_fs: sys::fs_type(&server.state_dir),
    })
}

/// Writes one byte to the application's FIFO once it has opened it
/// (non-blocking open: never hangs on an application that died).
fn trigger(fifo: &Path, m: &mut Mgr) -> Result<(), String> {
    trigger_fifo(fifo, || {
        let s = m.child.try_wait().ok().flatten()?;
        m.reaped();
        Some(format!(
            "cmappmgr exited ({s}) before its application could be triggered; its log:\n{}",
            tail(&m.err, 20)
        ))
    })
}

/// Writes one byte to `fifo` once its reader has opened it; gives up with
/// what `gone()` says once the process waiting on it has ended, or after
/// [`WAIT`].
pub fn trigger_fifo(fifo: &Path, mut gone: impl FnMut() -> Option<String>) -> Result<(), String> {
    let end = Instant::now() + WAIT;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(fifo)
        {
            Ok(mut f) => {
                return f
                    .write_all(b"x")
                    .map_err(|e| format!("cannot trigger {}: {e}", fifo.display()))
            }
            // ENXIO: no reader yet.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {}
            Err(e) => return Err(format!("cannot open {}: {e}", fifo.display())),
        }
        if let Some(why) = gone() {
            return Err(why);
        }
        if Instant::now() >= end {
            return Err(format!("the application never opened {}", fifo.display()));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub fn read_stamp(out: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(out).map_err(|e| format!("no exit stamp in {}: {e}", out.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("bad exit stamp {text:?} in {}", out.display()))
}

/// The application: `cmapp-bench exit-now FIFO STAMP_FILE CODE`. Waits for a
/// byte on FIFO, writes CLOCK_MONOTONIC nanoseconds to STAMP_FILE, exits CODE.
pub fn exit_now(args: &[String]) -> i32 {
    let [fifo, out, code] = args else {
        eprintln!("usage: cmapp-bench exit-now FIFO STAMP_FILE CODE");
        return 64;
    };
    let Ok(code) = code.parse::<i32>() else {
        eprintln!("cmapp-bench exit-now: bad code {code:?}");
        return 64;
    };
    // The stamp file is opened first, so that after the clock is read only
    // one small write into the page cache remains before the exit.
    let mut stamp = match std::fs::File::create(out) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cmapp-bench exit-now: {out}: {e}");
            return 73;
        }
    };
    let mut byte = [0u8; 1];
    match std::fs::File::open(fifo) {
        Ok(mut f) => {
            let _ = f.read(&mut byte);
        }
        Err(e) => {
            eprintln!("cmapp-bench exit-now: {fifo}: {e}");
            return 66;
        }
    }
    let t = sys::mono_ns();
    if let Err(e) = stamp.write_all(t.to_string().as_bytes()) {
        eprintln!("cmapp-bench exit-now: {out}: {e}");
        return 73;
    }
    code
}
