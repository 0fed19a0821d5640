//! The system underneath the measurements: the monotonic clock, readings
//! from `/proc`, process limits, reaping, and the registry of every process
//! the bench started, so that all of them are stopped whatever happens
//! (normal end, error, panic, or SIGINT/SIGTERM/SIGHUP to the bench).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;

/// Nanoseconds on CLOCK_MONOTONIC: the clock both the measured application
/// and the harness read, so that their readings compare directly.
pub fn mono_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    common::proc::stat(pid).map(|s| s.utime + s.stime)
}

/// CPU time a process has used, in nanoseconds: the exact on-CPU time the
/// scheduler keeps per thread (`/proc/PID/task/*/schedstat`), summed. Tick
/// sampling (`utime`/`stime`) misses short wake-ups, which is all an idle
/// daemon does; it is the fallback where schedstat is missing. Threads that
/// ended are not counted; the processes measured here keep theirs.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) {
            total += ns;
            any = true;
        }
    }
    if any {
        Some(total)
    } else {
        cpu_ticks(pid).map(|t| t * 1_000_000_000 / common::proc::clock_ticks_per_second())
    }
}

/// The zygote of the cmappserver `server` (its child `cmappserver zygote`,
/// which forks the shims), if one runs.
pub fn zygote_of(server: u32) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            ppid_pgrp(pid).is_some_and(|(ppid, _)| ppid == server)
                && cmdline(pid).is_some_and(|a| a.len() == 2 && a[1] == "zygote")
        })
}

/// Parent pid and process group of a process.
pub fn ppid_pgrp(pid: u32) -> Option<(u32, u32)> {
    common::proc::stat(pid)
        .filter(|s| !s.is_zombie())
        .map(|s| (s.ppid, s.pgrp))
}

fn status_kb(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Resident memory (VmRSS) in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional set size in KiB: resident memory with shared pages divided
/// among the processes sharing them (so a sum over processes is honest).
pub fn pss_kb(pid: u32) -> Option<u64> {
    status_kb(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// Private dirty memory in KiB (`Private_Dirty` in smaps_rollup): the
/// pages this process alone has written (heap, stacks, relocated data),
/// which no other process shares.
pub fn private_dirty_kb(pid: u32) -> Option<u64> {
    status_kb(&format!("/proc/{pid}/smaps_rollup"), "Private_Dirty:")
}

/// A process's private dirty memory by where it is, in KiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrivateDirty {
    pub heap: u64,
    pub stack: u64,
    /// The program's own file mappings: its relocated read-only data
    /// (`.data.rel.ro` of a PIE), `.data`, `.bss`.
    pub program: u64,
    /// Everything else: anonymous mappings (the runtime's, thread-local
    /// storage) and the shared libraries' data.
    pub other: u64,
}

/// [`PrivateDirty`] of `pid`, from `/proc/PID/smaps`.
pub fn private_dirty_by_place(pid: u32) -> Option<PrivateDirty> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let exe = exe.to_string_lossy().into_owned();
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut out = PrivateDirty::default();
    let mut place: Option<&str> = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range, perms, offset, device, inode, path.
            place = Some(words.nth(4).unwrap_or(""));
        } else if let (Some(name), Some(kb)) = (place, line.strip_prefix("Private_Dirty:")) {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            match name {
                "[heap]" => out.heap += kb,
                "[stack]" => out.stack += kb,
                n if n == exe => out.program += kb,
                _ => out.other += kb,
            }
        }
    }
    Some(out)
}

/// How many times a process's threads have been put on a CPU (the third
/// field of `/proc/PID/task/*/schedstat`, summed): one per wake-up of an
/// idle daemon.
pub fn wakeups(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        if let Some(n) = s.split_whitespace().nth(2).and_then(|v| v.parse::<u64>().ok()) {
            total += n;
            any = true;
        }
    }
    any.then_some(total)
}

/// How many threads a process has.
pub fn threads(pid: u32) -> Option<u64> {
    status_kb(&format!("/proc/{pid}/status"), "Threads:")
}

/// A process's argv, if it exists.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// The type of the filesystem holding `path` (`ext4`, `tmpfs`, ...), from
/// the longest matching mount point in `/proc/self/mounts`.
pub fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_dev), Some(mnt), Some(fs)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mnt = mnt.replace("\\040", " ");
        if path.starts_with(&mnt) && best.as_ref().is_none_or(|(len, _)| mnt.len() >= *len) {
            best = Some((mnt.len(), fs.to_string()));
        }
    }
    best.map(|(_, fs)| fs).unwrap_or_else(|| "unknown".into())
}

/// Raises the open-file limit to its hard limit (children inherit it);
/// returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 0,
    }
}

/// Makes the bench the reaper of its orphaned descendants (shims and
/// applications once their cmappserver is gone, the daemonized NRPE), so
/// that it can wait for them to be really gone.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("cmapp-bench: cannot become a child subreaper ({e}); orphans are left to PID 1 to reap");
    }
}

/// Waits (bounded) until `pid` is gone, reaping it if it is the bench's
/// child (or orphan). Returns whether it is gone.
pub fn reap(pid: u32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return true,
            // Not our child: gone when /proc says so (a zombie counts as gone).
            Err(Errno::ECHILD) => {
                if ppid_pgrp(pid).is_none() {
                    return true;
                }
            }
            Err(_) => return true,
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One process recorded in a cmappserver state directory (`procs/*/pid.json`).
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    pub pid: u32,
    pub shim_pid: u32,
}

/// Every process with a pid record in `state_dir`.
pub fn recorded(state_dir: &Path) -> Vec<Recorded> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(state_dir.join("procs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path().join("pid.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let get = |k: &str| v[k].as_u64().map(|x| x as u32);
        if let (Some(pid), Some(shim_pid)) = (get("pid"), get("shim_pid")) {
            out.push(Recorded { pid, shim_pid });
        }
    }
    out
}

/// True when `pid` is still the shim the record names (not a recycled pid).
fn is_shim(pid: u32) -> bool {
    cmdline(pid).is_some_and(|a| a.len() >= 2 && a[0].ends_with("cmappserver") && a[1] == "shim")
}

/// True when `pid` is still the application the record names: a process
/// group leader whose parent is its shim, the bench (subreaper) or init.
fn is_app(r: &Recorded) -> bool {
    match ppid_pgrp(r.pid) {
        Some((ppid, pgrp)) => pgrp == r.pid && (ppid == r.shim_pid || ppid == std::process::id() || ppid == 1),
        None => false,
    }
}

/// SIGKILLs every shim and application group recorded in `state_dir`, then
/// reaps them (bounded). Call once the cmappserver of that directory is gone
/// or going: the shims outlive it by design.
pub fn kill_recorded(state_dir: &Path) {
    let recs = recorded(state_dir);
    for r in &recs {
        if is_shim(r.shim_pid) {
            let _ = kill(Pid::from_raw(r.shim_pid as i32), Signal::SIGKILL);
        }
        if r.pid != 0 && is_app(r) {
            let _ = killpg(Pid::from_raw(r.pid as i32), Signal::SIGKILL);
        }
    }
    let end = Instant::now() + Duration::from_secs(5);
    for r in &recs {
        let left = end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        reap(r.shim_pid, left);
        if r.pid != 0 {
            reap(
                r.pid,
                Duration::from_millis(10).max(end.saturating_duration_since(Instant::now())),
            );
        }
    }
}

/// What the emergency cleanup must stop.
#[derive(Debug, Clone)]
enum Entry {
    /// A process the bench started (SIGKILL).
    Pid(u32),
    /// The process group of a process the bench started in its own group,
    /// and whatever it started there (SIGKILL to the group).
    Group(u32),
    /// A cmappserver state directory: its recorded shims and applications.
    StateDir(PathBuf),
    /// The bench's temporary directory (removed last).
    TempDir(PathBuf),
}

static REGISTRY: Mutex<Vec<(u64, Entry)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A registration; pass it back to [`forget`] once the thing is cleaned up.
#[derive(Debug)]
#[must_use]
pub struct Token(u64);

fn register(e: Entry) -> Token {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner()).push((id, e));
    Token(id)
}

pub fn register_pid(pid: u32) -> Token {
    register(Entry::Pid(pid))
}

pub fn register_group(pgid: u32) -> Token {
    register(Entry::Group(pgid))
}

pub fn register_state_dir(dir: &Path) -> Token {
    register(Entry::StateDir(dir.to_path_buf()))
}

pub fn register_temp_dir(dir: &Path) -> Token {
    register(Entry::TempDir(dir.to_path_buf()))
}

/// Removes a registration (the process is reaped, the directory cleaned).
pub fn forget(t: Token) {
    REGISTRY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(id, _)| *id != t.0);
}

/// Stops everything still registered: processes first, then the recorded
/// shims and applications, then the temporary directory.
pub fn kill_everything() {
    let entries: Vec<Entry> = std::mem::take(&mut *REGISTRY.lock().unwrap_or_else(|p| p.into_inner()))
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    for e in &entries {
        match e {
            Entry::Pid(pid) => {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
            Entry::Group(pgid) => {
                let _ = nix::sys::signal::killpg(Pid::from_raw(*pgid as i32), Signal::SIGKILL);
            }
            _ => {}
        }
    }
    for e in &entries {
        if let Entry::Pid(pid) | Entry::Group(pid) = e {
            reap(*pid, Duration::from_millis(500));
        }
    }
    for e in &entries {
        if let Entry::StateDir(d) = e {
            kill_recorded(d);
        }
    }
    for e in &entries {
        if let Entry::TempDir(d) = e {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: stop everything, remove the temporary
/// directory, exit 130. (A thread with its own small runtime; the handlers
/// are in place when this returns. exec() resets them in every child.)
pub fn install_signal_cleanup() {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            let _ = ready_tx.send(());
            return;
        };
        rt.block_on(async move {
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                let _ = ready_tx.send(());
                return;
            };
            let _ = ready_tx.send(());
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
            eprintln!("cmapp-bench: {name}: stopping everything it started");
            kill_everything();
            std::process::exit(130);
        });
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
}
