//! The state directory: what survives a restart of cmappserver.
//!
//! ```text
//! <stateDir>/
//!   lock            flock held by the running cmappserver (one per directory)
//!   boot_id         the kernel boot id the records belong to
//!   procs/<id>/
//!     meta.json     what was launched (written before the shim starts)
//!     pid.json      pid and start time (written by the shim once the process runs)
//!     exit.json     how it ended (written by the shim the instant it ends)
//!     sock          the shim's socket while it runs
//!     shim.log      the shim's own errors, if any
//!     managers.json the managers that watch it (written by the server when one joins)
//! ```
//!
//! Every file is written whole to a temporary name and renamed into place,
//! so a crash at any instant leaves either the old file or the new one,
//! never a torn one. Nothing is fsynced: the records only have to survive a
//! process crash (the page cache does), and a guest reboot clears them on
//! purpose, since the processes they describe are gone with it.
//!
//! A frozen, versioned format (a new cmappserver adopts an older one's
//! records): see `appserver/FORMATS.md`; `tests/tests/golden.rs` reads a
//! state directory recorded from v1 with this code.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use common::message::{ExitStatus, InstanceId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const META: &str = "meta.json";
pub const PID: &str = "pid.json";
pub const EXIT: &str = "exit.json";
pub const SOCK: &str = "sock";
pub const SHIM_LOG: &str = "shim.log";
pub const MANAGERS: &str = "managers.json";

/// The managers watching a process, so that a restarted cmappserver knows
/// whom an exit is owed to. Optional: a record without it (an older
/// server's) is owed to whichever manager acknowledges it first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Managers {
    pub managers: Vec<String>,
}

/// What was launched: written by the server before it starts the shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub id: InstanceId,
    pub key: String,
    pub run: Vec<String>,
    pub argv: Vec<String>,
    pub name: Option<String>,
    /// `net-mon` or `disk-mon` for a built-in probe.
    pub probe: Option<String>,
    /// When the server filed it (ms since the epoch).
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: u32,
    pub started_at_ms: u64,
    pub shim_pid: u32,
    /// The process's start time in clock ticks since boot (/proc/PID/stat),
    /// which tells it from a later process that got the same pid.
    #[serde(default)]
    pub start_ticks: Option<u64>,
}

/// Field 22 of /proc/PID/stat: when the process started, in ticks since boot.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    pub status: ExitStatus,
    pub exited_at_ms: u64,
}

/// Writes `value` as JSON to `dir/name` atomically (temporary file, then rename).
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
    drop(f);
    fs::rename(&tmp, dir.join(name))
}

/// Reads `dir/name`; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    match fs::read(dir.join(name)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", dir.join(name).display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The state directory of one cmappserver.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl StateDir {
    /// Opens (creating if needed) and locks the directory. If the records
    /// belong to an earlier boot of the guest, they are cleared.
    pub fn open(root: &Path) -> Result<StateDir, String> {
        let ctx = |what: &str, e: &dyn std::fmt::Display| format!("state directory {}: {what}: {e}", root.display());
        fs::create_dir_all(root.join("procs")).map_err(|e| ctx("cannot create it", &e))?;
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .map_err(|e| ctx("cannot open its lock file", &e))?;
        let lock =
            nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
                if e == nix::errno::Errno::EWOULDBLOCK {
                    format!("state directory {} is in use by another cmappserver", root.display())
                } else {
                    ctx("cannot lock it", &e)
                }
            })?;
        let dir = StateDir {
            root: root.to_path_buf(),
            _lock: lock,
        };
        let boot = current_boot_id();
        let recorded = fs::read_to_string(root.join("boot_id")).ok();
        if recorded.as_deref().map(str::trim) != Some(boot.as_str()) {
            if recorded.is_some() {
                tracing::info!("the guest has rebooted since the last run: clearing old process records");
            }
            let _ = fs::remove_dir_all(root.join("procs"));
            fs::create_dir_all(root.join("procs")).map_err(|e| ctx("cannot create it", &e))?;
            write_text(root, "boot_id", &boot).map_err(|e| ctx("cannot record the boot id", &e))?;
        }
        Ok(dir)
    }

    pub fn proc_dir(&self, id: &str) -> PathBuf {
        self.root.join("procs").join(id)
    }

    /// The directories of every recorded process.
    pub fn proc_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.root.join("procs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        dirs
    }
}

fn write_text(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, dir.join(name))
}

/// The kernel's boot id: changes at every boot. Tests may override it with
/// `CMAPPSERVER_BOOT_ID` to simulate a reboot.
pub fn current_boot_id() -> String {
    if let Ok(v) = std::env::var("CMAPPSERVER_BOOT_ID") {
        return v;
    }
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
