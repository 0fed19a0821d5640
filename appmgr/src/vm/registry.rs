//! Where running guest monitors look for their maintenance file, so that
//! `cmappmgr vm maintenance` finds the same file whatever options each of
//! them was given.
//!
//! A guest monitor writes `<run dir>/vm/<guest>.<pid>.json` when it starts
//! (its pid and start time, the maintenance file, and where its TKIT_DIR came
//! from) and removes it when it ends. `maintenance` reads the entries of live
//! monitors of its guest: with no TKIT_DIR of its own choosing it uses theirs;
//! given one (`--tkit-dir`, `--package-conf`) that differs, it refuses and says
//! where the monitor looks, rather than create a file no monitor reads. The
//! run dir is `/run/cmappmgr` (`CMAPPMGR_RUN_DIR` overrides it, for tests).
//! Entries are small JSON files; an unreadable or stale one (its process is
//! gone, or the pid now belongs to another process) is ignored and removed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tkit::Toolkit;

/// Largest entry read (they are ~300 bytes).
const MAX_ENTRY: u64 = 64 * 1024;

/// What a running monitor records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub pid: u32,
    /// Its start time in ticks since boot (/proc/PID/stat field 22), which
    /// tells it from a later process that got the same pid.
    pub start_ticks: Option<u64>,
    pub guest: String,
    pub tkit_dir: PathBuf,
    pub tkit_dir_from: String,
    pub maintenance_allowed: bool,
}

/// The registry directory.
pub fn dir() -> PathBuf {
    std::env::var_os("CMAPPMGR_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/cmappmgr"))
        .join("vm")
}

/// The guest's name as a file name: anything but `[A-Za-z0-9_.-]`, and a
/// leading dot, is %-escaped.
fn file_stem(guest: &str) -> String {
    let mut out = String::new();
    for (i, b) in guest.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

use common::proc::start_ticks;

/// A live registration; dropping it removes the entry.
#[derive(Debug)]
pub struct Registration {
    path: PathBuf,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Records where this monitor looks. Failure to record is a warning only:
/// monitoring matters more than the convenience.
pub fn register(guest: &str, tkit: &Toolkit) -> Option<Registration> {
    let pid = std::process::id();
    let entry = Entry {
        pid,
        start_ticks: start_ticks(pid),
        guest: guest.to_string(),
        tkit_dir: tkit.tkit_dir.clone(),
        tkit_dir_from: tkit.tkit_dir_from.clone(),
        maintenance_allowed: tkit.maintenance_allowed,
    };
    let dir = dir();
    let path = dir.join(format!("{}.{pid}.json", file_stem(guest)));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.{pid}.tmp", file_stem(guest)));
        std::fs::write(&tmp, serde_json::to_vec(&entry).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, &path)
    };
    match write() {
        Ok(()) => Some(Registration { path }),
        Err(e) => {
            tracing::warn!(
                "cannot record where this monitor looks for the maintenance file ({}: {e}); \
                 `cmappmgr vm maintenance` will not know it",
                path.display()
            );
            None
        }
    }
}

/// The live monitors of `guest` on this node.
pub fn monitors(guest: &str) -> Vec<Entry> {
    monitors_in(&dir(), guest)
}

fn monitors_in(dir: &Path, guest: &str) -> Vec<Entry> {
    let prefix = format!("{}.", file_stem(guest));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        if !rest.ends_with(".json") || rest[..rest.len() - 5].parse::<u32>().is_err() {
            continue;
        }
        let path = e.path();
        let entry = std::fs::File::open(&path).ok().and_then(|f| {
            use std::io::Read;
            let mut text = String::new();
            f.take(MAX_ENTRY).read_to_string(&mut text).ok()?;
            serde_json::from_str::<Entry>(&text).ok()
        });
        match entry {
            Some(entry) if entry.guest == guest && alive(&entry) => out.push(entry),
            Some(entry) if entry.guest != guest => {}
            _ => {
                tracing::debug!("removing the stale monitor entry {}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out.sort_by_key(|e| e.pid);
    out
}

/// The entry's process still runs (the same process: same start time).
fn alive(e: &Entry) -> bool {
    e.pid != 0 && e.start_ticks.is_some() && start_ticks(e.pid) == e.start_ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_guest_names_make_safe_file_names() {
        assert_eq!(file_stem("vm1"), "vm1");
        assert_eq!(file_stem("my vm/../x"), "my%20vm%2F..%2Fx");
        assert_eq!(file_stem(".hidden"), "%2Ehidden");
    }

    #[test]
    fn live_entries_are_found_and_stale_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let live = Entry {
            pid: me,
            start_ticks: start_ticks(me),
            guest: "vm1".into(),
            tkit_dir: "/srv/vm1".into(),
            tkit_dir_from: "--tkit-dir".into(),
            maintenance_allowed: true,
        };
        let stale = Entry {
            pid: 4_194_399,
            start_ticks: Some(1),
            ..live.clone()
        };
        std::fs::write(
            dir.path().join(format!("vm1.{me}.json")),
            serde_json::to_vec(&live).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("vm1.4194399.json"), serde_json::to_vec(&stale).unwrap()).unwrap();
        std::fs::write(dir.path().join("vm1.7.json"), "not json").unwrap();
        std::fs::write(dir.path().join("vm10.8.json"), serde_json::to_vec(&live).unwrap()).unwrap();
        assert_eq!(monitors_in(dir.path(), "vm1"), [live]);
        assert!(!dir.path().join("vm1.4194399.json").exists());
        assert!(!dir.path().join("vm1.7.json").exists());
        assert!(
            dir.path().join("vm10.8.json").exists(),
            "another guest's entry is left alone"
        );
    }
}
