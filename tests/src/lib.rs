//! Test harness: locate the real binaries, make throwaway key material,
//! start servers on `127.0.0.1:0`, and wait on events rather than sleeps.
//!
//! | module   | what it gives a test                                             |
//! |----------|------------------------------------------------------------------|
//! | `campaign`| the randomized fault campaign and the checker of its history |
//! | `fixture`| pinned keys, a server on 127.0.0.1:0 and a manager configuration |
//! | `golden` | the frozen v1 state-directory and shim formats, a fake v1 shim, a frame recorder |
//! | `keys`   | pinned and CA key material written to a temp dir                 |
//! | `output` | a child's stdout/stderr captured line by line, with waits on lines |
//! | `server` | a real cmappserver on 127.0.0.1:0, cleaned up with its processes  |
//! | `mgr`    | a real cmappmgr run against a server                              |
//! | `peer`   | a raw manager, a misbehaving fake server, an unauthenticated flood |
//! | `packages`| the .deb and .rpm packages, built by packaging/build.sh         |
//! | `netpair`| a host and a guest network namespace joined by a veth pair        |
//! | `loopdev`| loop devices over sparse files, and a FUSE file that hangs reads  |
//! | `libvirt`| a private libvirtd (QEMU driver), test domains, `cmappmgr vm` runs |
//! | `pacemaker` | a single-node corosync + pacemakerd in private namespaces, its tools |
//! | `qemu`   | QEMU guests running cmappserver on bridges in a namespace, QMP   |

pub mod campaign;
pub mod fixture;
pub mod golden;
pub mod keys;
pub mod libvirt;
pub mod loopdev;
pub mod mgr;
pub mod netpair;
pub mod output;
pub mod pacemaker;
pub mod packages;
pub mod peer;
pub mod qemu;
pub mod server;
pub mod vsock;

use std::path::PathBuf;
use std::time::Duration;

/// What a finished command printed, its stdout then its stderr, as text for
/// assertions and failure messages.
pub fn stdout_and_stderr(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The directory cargo put the workspace's binaries in (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test-binary> → target/debug; a binary of this
    // crate (cmapp-bench, cmapp-campaign) is in target/debug itself.
    let dir = exe.parent().expect("target dir");
    match dir.file_name() {
        Some(n) if n == "deps" => dir.parent().expect("target dir").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Path of one of the workspace's binaries; panics with a clear message if it
/// has not been built (cargo builds them when the whole workspace is tested).
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests for the whole workspace (cargo nextest run --workspace) so that cargo builds it",
        p.display()
    );
    p
}

/// Fails the test unless it runs as root, saying why root is needed.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root ({why}); run the suite as root (CI does), or exclude it with -E 'not binary(...)'"
    );
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
/// For conditions with no event to wait on (a process's existence, a file).
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The executable `program` on `PATH` or in the system directories (the
/// tests run daemons such as libvirtd and virtqemud from /usr/sbin even where
/// the caller's `PATH` lacks it), by the `which` crate.
pub fn which(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    let path = std::env::join_paths(dirs).ok()?;
    which::which_in(program, Some(path), "/").ok()
}

/// True while a process with this pid exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    common::proc::running(pid)
}

/// Times the threads of `pid` went to sleep (`voluntary_ctxt_switches`,
/// summed over its threads): each is one wake-up later. Preemptions by a
/// loaded machine are not counted, so idle-cost tests can rely on it.
pub fn sleeps(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
                .filter_map(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Counts of one process's resources, from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub fds: usize,
    pub rss_kb: u64,
    /// Its children that are zombies (exited, not reaped).
    pub zombies: usize,
    pub threads: u64,
}

/// What process `pid` holds now.
pub fn usage(pid: u32) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut zombies = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        if rest.first() == Some(&"Z") && rest.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            zombies += 1;
        }
    }
    Usage {
        fds,
        rss_kb: field("VmRSS:"),
        zombies,
        threads: field("Threads:"),
    }
}
