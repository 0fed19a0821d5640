//! The state directory: what survives a restart of cmappserver.
//!
//! ```text
//! <stateDir>/
//!   lock            flock held by the running cmappserver (one per directory)
//!   boot_id         the kernel boot id the records belong to
//!   procs/<id>/
//!     unstarted     empty: the application has not been started (written
//!                   before meta.json; see [`UNSTARTED`])
//!     withdrawn     empty: `unstarted` renamed by a recovering server; the
//!                   application never started and never will (see [`WITHDRAWN`])
//!     meta.json     what was launched (written before the shim starts)
//!     pid.json      pid and start time (written by the shim once the process runs)
//!     exit.json     how it ended (written by the shim the instant it ends)
//!     sock          the shim's socket while it runs
//!     shim.log      the shim's own errors, if any
//!     managers.json the managers that watch it (written by the server when one joins)
//!     tail.json     the last lines of output, written after exit.json
//!     acked         empty: a manager acknowledged the exit (written by the server before its reply)
//!     space.reserve zeros: room for pid.json and exit.json on a full disk (the shim's)
//!   spare/<name>/   a shim started ahead of the next launch (no meta.json);
//!                   a launch writes meta.json and renames it to procs/<id>
//! ```
//!
//! Nobody but the server's user may change anything in it, whatever the
//! umask: directories are made 0700, files and sockets 0600, and the server
//! refuses to start on a directory (or a parent) that another user owns or
//! can write. Every file is opened relative to its directory's descriptor and
//! never through a symbolic link, and a record (a directory or a file) that
//! is not owned by the server's user, or that others can write, is ignored:
//! a pid record in particular is acted on only when nobody else could have
//! written it.
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
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::message::{ExitStatus, InstanceId};
use common::perms::PermsError;
use common::service::ServiceSpec;
use nix::errno::Errno;
use nix::fcntl::{OFlag, AT_FDCWD};
use nix::sys::stat::Mode;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const META: &str = "meta.json";
pub const PID: &str = "pid.json";
pub const EXIT: &str = "exit.json";
pub const SOCK: &str = "sock";
pub const SHIM_LOG: &str = "shim.log";
pub const MANAGERS: &str = "managers.json";
/// Space the shim reserves for the pid and exit records (zeros), released
/// to write them on a full disk, removed once the exit is recorded.
pub const RESERVE: &str = "space.reserve";
/// Written by the server before `meta.json`, removed by the shim right
/// before it starts the application: while it exists, the application has
/// not been started. Whoever unlinks it first decides: the shim (it starts
/// the application) or a recovering server that cannot reach the shim (the
/// application is then never started, and the record is discarded). A
/// record of an older server has none and is treated as possibly started.
pub const UNSTARTED: &str = "unstarted";
/// Where the shim started ahead of the next launch waits (see
/// [`super::launch`]): outside `procs/`, so that no server ever files it as
/// a process; cleared whenever a server opens the state directory.
pub const SPARES: &str = "spare";
/// [`UNSTARTED`] renamed by a recovering server that could not reach the
/// shim: the one rename both decides the race (the shim then finds no
/// `unstarted` and starts nothing) and records the decision, so that a
/// server that crashes before the record is removed leaves a record the
/// next one discards, never one it would report lost (70) to the
/// relaunch.
pub const WITHDRAWN: &str = "withdrawn";

/// The managers watching a process, so that a restarted cmappserver knows
/// whom an exit is owed to. Optional: a record without it (an older
/// server's) is owed to whichever manager acknowledges it first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Managers {
    pub managers: Vec<String>,
}

/// The last lines of output, written by the shim after `exit.json`.
pub const TAIL: &str = "tail.json";

/// Empty: some manager acknowledged the exit. Written by the server before
/// it replies `Acked`, so that a restarted server keeps such a record only
/// for the managers still owed it, never as the service's current process.
pub const ACKED: &str = "acked";

/// The largest record file read: a meta.json holds at most one frame's worth
/// of run string.
const MAX_RECORD: u64 = 4 << 20;

/// What was launched: written by the server before it starts the shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub id: InstanceId,
    pub key: String,
    /// The parsed service, embedded: its `run`, `argv`, `name` and `probe`
    /// are fields of `meta.json` itself (the v1 layout).
    #[serde(flatten)]
    pub service: ServiceSpec,
    /// When the server filed it (ms since the epoch).
    pub created_at_ms: u64,
    /// The application's environment, when it is not simply the daemon's
    /// (absent in records of earlier versions: inherit it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// The application's OOM score adjustment (absent in earlier records: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    /// Where the shim sends the output in the guest, and the tail it keeps
    /// (absent in version 1 records: no file, no tail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<super::output::OutputMeta>,
    /// The user, group, working directory and limits a command policy rule
    /// runs the application with (absent: as the daemon, in `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<crate::runas::RunAs>,
}

/// The environment an application starts with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Environment {
    /// Start from an empty environment (plus a standard `PATH`) instead of the daemon's.
    pub clean: bool,
    /// Variables set on top, in order.
    pub set: Vec<(String, String)>,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    pub status: ExitStatus,
    pub exited_at_ms: u64,
}

/// The server's (effective) user: the only one whose records are trusted.
pub fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn untrusted(e: PermsError) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, e)
}

/// Checks that an open file or directory belongs to us and only we can write it.
fn check_trusted(path: &Path, fd: &fs::File) -> io::Result<fs::Metadata> {
    let meta = fd.metadata()?;
    common::perms::check_owned(path, &meta, own_uid(), false, false).map_err(untrusted)?;
    Ok(meta)
}

/// A directory of the state tree, opened without following a symbolic link
/// and checked to be ours; every file in it is reached through its
/// descriptor, never through a path another user could redirect.
#[derive(Debug)]
pub struct Dir {
    path: PathBuf,
    fd: fs::File,
}

impl Dir {
    /// Opens `path` itself (no symbolic link at its last component) and
    /// checks that only we can change it.
    pub fn open(path: &Path) -> io::Result<Dir> {
        Self::open_at(AT_FDCWD, path, path.to_path_buf())
    }

    fn open_at<Fd: AsFd>(dirfd: Fd, name: &Path, path: PathBuf) -> io::Result<Dir> {
        let fd = nix::fcntl::openat(
            dirfd,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => untrusted(PermsError::NotADirectory { path: path.clone() }),
            e => io::Error::from(e),
        })?;
        let fd = fs::File::from(fd);
        check_trusted(&path, &fd)?;
        Ok(Dir { path, fd })
    }

    /// Creates the subdirectory `name` (0700, whatever the umask); fails if
    /// anything already has that name.
    fn create_dir(&self, name: &str) -> io::Result<Dir> {
        nix::sys::stat::mkdirat(&self.fd, name, Mode::S_IRWXU)?;
        let dir = self.subdir(name)?;
        dir.fd.set_permissions(fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }

    /// Opens the subdirectory `name`, checked as [`Dir::open`] does.
    pub fn subdir(&self, name: &str) -> io::Result<Dir> {
        Self::open_at(&self.fd, Path::new(name), self.path.join(name))
    }

    /// The same directory through a second descriptor (for another thread).
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            path: self.path.clone(),
            fd: self.fd.try_clone()?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Says that this directory is now at `path` (it was renamed; the
    /// descriptor follows the directory, a path does not).
    pub fn moved_to(&mut self, path: PathBuf) {
        self.path = path;
    }

    /// True once this directory has been removed (it has no links left).
    pub fn removed(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.fd.metadata().is_ok_and(|m| m.nlink() == 0)
    }

    /// True when `other` is this very directory (by device and inode).
    pub fn is(&self, other: &Dir) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.fd.metadata(), other.fd.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }

    /// True when the entry `name` of this directory is `other` itself (the
    /// same directory, by device and inode; never through a link).
    pub fn holds(&self, name: &str, other: &Dir) -> bool {
        let entry = nix::sys::stat::fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
        match (entry, other.fd.metadata()) {
            (Ok(e), Ok(o)) => {
                use std::os::unix::fs::MetadataExt;
                e.st_dev == o.dev() && e.st_ino == o.ino()
            }
            _ => false,
        }
    }

    /// A path to `name` in this directory that no symbolic link above it can
    /// redirect (through /proc/self/fd), and short enough for a socket
    /// address however deep the directory is.
    pub fn fd_path(&self, name: &str) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    /// Opens `name` for reading, never through a symbolic link; `Ok(None)`
    /// when it does not exist. A file another user owns or can write is an error.
    fn open_file(&self, name: &str) -> io::Result<Option<fs::File>> {
        match nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let f = fs::File::from(fd);
                let meta = check_trusted(&self.path.join(name), &f)?;
                if !meta.is_file() {
                    return Err(untrusted(PermsError::NotAFile {
                        path: self.path.join(name),
                    }));
                }
                Ok(Some(f))
            }
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ELOOP) => Err(untrusted(PermsError::Symlink {
                path: self.path.join(name),
            })),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads `name` whole (bounded); `Ok(None)` when it does not exist.
    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(f) = self.open_file(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        f.take(MAX_RECORD + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {MAX_RECORD} bytes", self.path.join(name).display()),
            ));
        }
        Ok(Some(bytes))
    }

    /// Reads `name` as JSON; `Ok(None)` when it does not exist.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        match self.read(name)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.path.join(name).display()),
                )
            }),
            None => Ok(None),
        }
    }

    /// Writes `name` atomically: a fresh temporary file (0600, created
    /// exclusively, never through a link), then a rename over `name`.
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = format!(".{name}.tmp");
        let create = || {
            nix::fcntl::openat(
                &self.fd,
                tmp.as_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::S_IRUSR | Mode::S_IWUSR,
            )
        };
        // A leftover of a crash (or anything planted there) is removed
        // first; usually there is none, and the exit record's path saves
        // the removal's system call.
        let fd = match create() {
            Err(Errno::EEXIST) => {
                self.remove(&tmp)?;
                create()?
            }
            other => other?,
        };
        let mut f = fs::File::from(fd);
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        drop(f);
        nix::fcntl::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
        Ok(())
    }

    /// Creates the empty marker `name` (see [`UNSTARTED`], [`ACKED`]),
    /// whose presence is its meaning: one exclusive create, never through a
    /// link, and nothing to tear, so no temporary name and rename. An entry
    /// already there, whatever it is, already marks it.
    pub fn mark(&self, name: &str) -> io::Result<()> {
        match nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        ) {
            Ok(_) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes this record directory, whose application was never started
    /// (a launch whose shim failed; a shim no server started): `unstarted`
    /// is first renamed [`WITHDRAWN`], so that a crash halfway through the
    /// removal (which goes in directory order) leaves a record the next
    /// server discards, never one without either marker, which it would
    /// take for possibly started and report lost (70).
    pub fn remove_unstarted(&self) {
        let _ = self.take_as(UNSTARTED, WITHDRAWN);
        if super::shim::test_fault("removal-cut-short") {
            // The crash: `unstarted` (had it still been there) gone first.
            let _ = self.remove(UNSTARTED);
            std::process::exit(99);
        }
        let _ = fs::remove_dir_all(&self.path);
    }

    /// Writes `value` as JSON to `name` atomically.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        self.write(name, &serde_json::to_vec(value).map_err(io::Error::other)?)
    }

    /// Appends a line to `name` (created 0600), never through a link.
    pub fn append(&self, name: &str, line: &str) -> io::Result<()> {
        let fd = nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )?;
        let mut f = fs::File::from(fd);
        check_trusted(&self.path.join(name), &f)?;
        f.write_all(line.as_bytes())
    }

    /// Unlinks `name` (never what a link points to): `Ok(true)` if this
    /// call removed it, `Ok(false)` if it did not exist. An unlink is
    /// atomic: of two processes taking the same entry, one gets `true`.
    pub fn take(&self, name: &str) -> io::Result<bool> {
        match nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames the entry `from` to `to` (never what a link points to):
    /// `Ok(true)` if this call moved it, `Ok(false)` if `from` did not
    /// exist. A rename is atomic: of it and an unlink of `from` ([`Dir::take`]),
    /// one finds the entry.
    pub fn take_as(&self, from: &str, to: &str) -> io::Result<bool> {
        match nix::fcntl::renameat(&self.fd, from, &self.fd, to) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an entry `name` exists, and if so whether it is a
    /// directory (a link is not followed, nothing is read): for the empty
    /// markers, whose presence is their meaning.
    pub fn entry(&self, name: &str) -> io::Result<Option<Entry>> {
        match nix::sys::stat::fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR => Ok(Some(Entry::Directory)),
            Ok(_) => Ok(Some(Entry::Other)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the entry `name` (a file, socket or link, never what a link
    /// points to); a missing entry is not an error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// What [`Dir::entry`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Directory,
    /// A file, a link, a socket, ...
    Other,
}

/// Reads `dir/name` as JSON, checked as [`Dir::read_json`] does; `Ok(None)`
/// when it does not exist.
pub fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    Dir::open(dir)?.read_json(name)
}

/// Writes `dir/name` as JSON atomically, as [`Dir::write_json`] does.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    Dir::open(dir)?.write_json(name, value)
}

/// Why the state directory cannot be used (cmappserver does not start).
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// A step on it failed (`doing`: creating it, locking it, ...).
    #[error("state directory {}: {doing}: {source}", root.display())]
    Io {
        root: PathBuf,
        doing: &'static str,
        #[source]
        source: io::Error,
    },
    /// It, a directory above it, or a file in it is not safe from other users.
    #[error("state directory {}: refusing to use it: {source}", root.display())]
    Untrusted {
        root: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another cmappserver holds its lock.
    #[error("state directory {} is in use by another cmappserver", root.display())]
    InUse { root: PathBuf },
}

/// The state directory of one cmappserver.
#[derive(Debug)]
pub struct StateDir {
    procs: Dir,
    spares: Dir,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl StateDir {
    /// Opens (creating if needed) and locks the directory. It, and every
    /// directory above it, must be safe from other users; if the records
    /// belong to an earlier boot of the guest, they are cleared.
    pub fn open(root: &Path) -> Result<StateDir, StateDirError> {
        let ctx = |doing: &'static str| {
            move |source: io::Error| StateDirError::Io {
                root: root.to_path_buf(),
                doing,
                source,
            }
        };
        let refused = |source: Box<dyn std::error::Error + Send + Sync>| StateDirError::Untrusted {
            root: root.to_path_buf(),
            source,
        };
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(ctx("cannot create it"))?;
        }
        let created = match fs::DirBuilder::new().mode(0o700).create(root) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(ctx("cannot create it")(e)),
        };
        let resolved = common::perms::check_ancestors(root, own_uid()).map_err(|e| refused(e.into()))?;
        let root_dir = Dir::open(&resolved).map_err(|e| refused(e.into()))?;
        if created {
            root_dir
                .fd
                .set_permissions(fs::Permissions::from_mode(0o700))
                .map_err(ctx("cannot set its mode"))?;
        }
        let lock_file = nix::fcntl::openat(
            &root_dir.fd,
            "lock",
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map(fs::File::from)
        .map_err(|e| ctx("cannot open its lock file")(e.into()))?;
        check_trusted(&resolved.join("lock"), &lock_file).map_err(|e| refused(e.into()))?;
        let _ = lock_file.set_permissions(fs::Permissions::from_mode(0o600));
        let lock =
            nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
                if e == Errno::EWOULDBLOCK {
                    StateDirError::InUse {
                        root: root.to_path_buf(),
                    }
                } else {
                    ctx("cannot lock it")(e.into())
                }
            })?;
        let boot = current_boot_id();
        let recorded = match root_dir.read("boot_id") {
            Ok(b) => b.map(|b| String::from_utf8_lossy(&b).trim().to_string()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(refused(e.into())),
            Err(_) => None,
        };
        if recorded.as_deref() != Some(boot.as_str()) {
            if recorded.is_some() {
                tracing::info!("the guest has rebooted since the last run: clearing old process records");
            }
            // A directory of ours (checked above): remove_dir_all never follows a link in it.
            let _ = fs::remove_dir_all(resolved.join("procs"));
        }
        let procs = match root_dir.create_dir("procs") {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let d = root_dir.subdir("procs").map_err(|e| refused(e.into()))?;
                // Earlier versions made it 0755: nobody else has to read the run strings.
                let _ = d.fd.set_permissions(fs::Permissions::from_mode(0o700));
                d
            }
            Err(e) => return Err(ctx("cannot create its procs directory")(e)),
        };
        if recorded.as_deref() != Some(boot.as_str()) {
            root_dir
                .write("boot_id", boot.as_bytes())
                .map_err(ctx("cannot record the boot id"))?;
        }
        // The spares of an earlier server started nothing (each ends once its
        // server's connection closes): whatever is there goes, whatever it is.
        // remove_dir_all removes a link itself, never what it points to.
        let _ = fs::remove_dir_all(resolved.join(SPARES));
        let _ = root_dir.remove(SPARES);
        let spares = root_dir
            .create_dir(SPARES)
            .map_err(ctx("cannot create its spare directory"))?;
        Ok(StateDir {
            procs,
            spares,
            _lock: lock,
        })
    }

    /// Creates the directory of a spare shim (0700) under the fresh name
    /// `name`; `None` when the name is taken.
    pub fn create_spare(&self, name: &str) -> io::Result<Option<Dir>> {
        match self.spares.create_dir(name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Renames the spare directory `name` (open as `dir`) to the record
    /// `procs/<id>`, never over anything that has that name; `false` when
    /// `id` is taken. `dir` then names its new place.
    ///
    /// `renameat2(RENAME_NOREPLACE)` is made as a system call (rustix), not
    /// through glibc, whose wrapper appeared in 2.28: the packaged binaries
    /// need glibc 2.17 at most. A kernel or filesystem without the flag
    /// (EINVAL) gets a plain rename, which cannot replace anything a record
    /// holds either: a directory is only ever replaced when empty, and a
    /// file not at all (ENOTDIR).
    pub fn promote(&self, dir: &mut Dir, name: &str, id: &str) -> io::Result<bool> {
        use rustix::fs::{renameat, renameat_with, RenameFlags};
        use rustix::io::Errno as E;
        let moved = match renameat_with(&self.spares.fd, name, &self.procs.fd, id, RenameFlags::NOREPLACE) {
            Err(E::INVAL | E::NOSYS) => renameat(&self.spares.fd, name, &self.procs.fd, id),
            other => other,
        };
        match moved {
            Ok(()) => {
                dir.moved_to(self.procs.path.join(id));
                Ok(true)
            }
            Err(E::EXIST | E::NOTEMPTY | E::NOTDIR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the record directory of a new process (0700), exclusively:
    /// an id that exists already, as a directory or anything else, is never
    /// reused. Returns `None` when `id` is taken.
    #[cfg(test)]
    pub fn create_record(&self, id: &str) -> io::Result<Option<Dir>> {
        match self.procs.create_dir(id) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the record directory of `id`, checked.
    pub fn record(&self, id: &str) -> io::Result<Dir> {
        self.procs.subdir(id)
    }

    #[cfg(test)]
    fn record_path(&self, id: &str) -> PathBuf {
        self.procs.path().join(id)
    }

    /// The record directories of every recorded process, checked: an entry
    /// that is not a directory of ours that only we can write is named in
    /// the log and left alone.
    pub fn records(&self) -> Vec<(String, Dir)> {
        let mut names: Vec<String> = fs::read_dir(self.procs.fd_path(""))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| match self.procs.subdir(&name) {
                Ok(d) => Some((name, d)),
                Err(e) => {
                    tracing::warn!("ignoring an untrusted process record {name}: {e}");
                    None
                }
            })
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A v1 `meta.json` of a probe, as the previous build wrote it.
    const V1_PROBE_META: &str = r#"{"id":"1a2242ca678-7d39-0","key":"run:[\"/opt/hp/cmappserver/cmapp_disk_mon -O /var/adm/d.log /dev/sdb\"]","run":["/opt/hp/cmappserver/cmapp_disk_mon -O /var/adm/d.log /dev/sdb"],"argv":["/opt/hp/cmappserver/cmapp_disk_mon","-O","/var/adm/d.log","/dev/sdb"],"name":null,"probe":"disk-mon","created_at_ms":1795903235705}"#;

    #[test]
    fn a_v1_probe_record_is_adopted_typed_and_written_back_the_same() {
        let meta: Meta = serde_json::from_str(V1_PROBE_META).unwrap();
        assert_eq!(meta.service.probe, Some(common::probe::Probe::Disk));
        assert_eq!(meta.service.argv.len(), 4);
        let again: serde_json::Value = serde_json::to_value(&meta).unwrap();
        let v1: serde_json::Value = serde_json::from_str(V1_PROBE_META).unwrap();
        assert_eq!(again, v1, "the v1 layout, field for field");
        // A probe a later build knows and this one does not: no probe, not
        // an unreadable record.
        let later = V1_PROBE_META.replace("disk-mon", "fan-mon");
        let meta: Meta = serde_json::from_str(&later).unwrap();
        assert_eq!(meta.service.probe, None);
    }

    #[test]
    fn a_planted_temporary_file_link_is_replaced_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let rec = tmp.path().join("rec");
        fs::create_dir(&rec).unwrap();
        fs::set_permissions(&rec, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&victim, rec.join(".exit.json.tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, rec.join(PID)).unwrap();
        let dir = Dir::open(&rec).unwrap();
        dir.write("exit.json", b"{}").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read(rec.join("exit.json")).unwrap(), b"{}");
        assert_eq!(fs::metadata(rec.join("exit.json")).unwrap().mode() & 0o777, 0o600);
        let err = dir.read(PID).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // Nor is a line appended through one (to a file of ours, 0600).
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&victim, rec.join(SHIM_LOG)).unwrap();
        assert!(dir.append(SHIM_LOG, "planted\n").is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn a_marker_is_made_once_and_an_entry_already_there_counts_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = tmp.path().join("rec");
        fs::create_dir(&rec).unwrap();
        let dir = Dir::open(&rec).unwrap();
        dir.mark(ACKED).unwrap();
        let made = fs::symlink_metadata(rec.join(ACKED)).unwrap();
        assert!(made.is_file() && made.len() == 0);
        assert_eq!(made.mode() & 0o077, 0, "nobody else's");
        dir.mark(ACKED).unwrap();
        assert_eq!(entries(&rec), [ACKED], "no temporary name left, nothing else made");
        // A link planted under the name already marks it: nothing is
        // created where it points.
        let victim = tmp.path().join("victim");
        std::os::unix::fs::symlink(&victim, rec.join(UNSTARTED)).unwrap();
        dir.mark(UNSTARTED).unwrap();
        assert!(!victim.exists());
        // A record directory removed meanwhile is an error.
        let gone = Dir::open(&rec).unwrap();
        fs::remove_dir_all(&rec).unwrap();
        assert!(gone.mark(ACKED).is_err());
    }

    #[test]
    fn a_never_started_record_is_removed_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = tmp.path().join("rec");
        fs::create_dir(&rec).unwrap();
        let dir = Dir::open(&rec).unwrap();
        dir.mark(UNSTARTED).unwrap();
        dir.write(META, b"{}").unwrap();
        dir.remove_unstarted();
        assert!(!rec.exists());
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_record_id_that_exists_in_any_form_is_never_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let target = tmp.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, state.record_path("planted")).unwrap();
        assert!(state.create_record("planted").unwrap().is_none());
        assert!(state.create_record("fresh").unwrap().is_some());
        assert!(state.create_record("fresh").unwrap().is_none());
        // The planted link is not a record either.
        let names: Vec<String> = state.records().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["fresh"]);
    }

    #[test]
    fn a_spare_is_promoted_into_procs_under_a_free_id_only() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let mut first = state.create_spare("s1").unwrap().unwrap();
        first.write(META, b"{}").unwrap();
        assert!(state.promote(&mut first, "s1", "r1").unwrap(), "a free id is taken");
        assert_eq!(
            first.path(),
            state.record_path("r1"),
            "the directory names its new place"
        );
        assert!(state.record_path("r1").join(META).exists());
        assert!(!tmp.path().join("state/spare/s1").exists());
        // Never over what holds the id: a record, an empty directory, a file.
        let mut second = state.create_spare("s2").unwrap().unwrap();
        second.write(META, b"{\"second\":1}").unwrap();
        fs::create_dir(state.record_path("empty")).unwrap();
        fs::write(state.record_path("file"), b"").unwrap();
        for taken in ["r1", "empty", "file"] {
            assert!(!state.promote(&mut second, "s2", taken).unwrap(), "{taken} is taken");
        }
        assert_eq!(fs::read(state.record_path("r1").join(META)).unwrap(), b"{}");
        assert!(
            tmp.path().join("state/spare/s2").join(META).exists(),
            "the spare stays where it was"
        );
        assert!(second.path().starts_with(tmp.path().join("state/spare")));
    }

    #[test]
    fn a_record_others_can_write_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let rec = state.create_record("loose").unwrap().unwrap();
        rec.write(PID, b"{}").unwrap();
        fs::set_permissions(state.record_path("loose").join(PID), fs::Permissions::from_mode(0o666)).unwrap();
        let err = rec.read(PID).unwrap_err();
        assert!(err.to_string().contains("writable by others (mode 0666)"), "{err}");
        fs::set_permissions(state.record_path("loose"), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(state.record("loose").is_err());
        assert!(state.records().is_empty());
    }

    #[test]
    fn records_round_trip_and_a_record_over_the_cap_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let rec = state.create_record("r1").unwrap().unwrap();
        assert_eq!(fs::metadata(state.record_path("r1")).unwrap().mode() & 0o777, 0o700);
        assert_eq!(rec.path(), state.record_path("r1"));
        let pid = PidRecord {
            pid: 7,
            started_at_ms: 8,
            shim_pid: 9,
            start_ticks: Some(10),
        };
        rec.write_json(PID, &pid).unwrap();
        assert_eq!(rec.read_json::<PidRecord>(PID).unwrap(), Some(pid));
        assert_eq!(
            read_json::<PidRecord>(&state.record_path("r1"), PID).unwrap(),
            Some(pid)
        );
        assert_eq!(rec.read_json::<ExitRecord>(EXIT).unwrap(), None);
        let exit = ExitRecord {
            status: ExitStatus::Code(3),
            exited_at_ms: 4,
        };
        write_json(&state.record_path("r1"), EXIT, &exit).unwrap();
        assert_eq!(rec.read_json::<ExitRecord>(EXIT).unwrap(), Some(exit));
        // Not JSON of the right shape: an error naming the file.
        rec.write(EXIT, b"{\"status\":").unwrap();
        let err = rec.read_json::<ExitRecord>(EXIT).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", state.record_path("r1").join(EXIT).display())),
            "{err}"
        );
        // 4 MiB is read; one byte more is refused.
        rec.write(META, &vec![b' '; 4 << 20]).unwrap();
        assert_eq!(rec.read(META).unwrap().unwrap().len(), 4 << 20);
        rec.write(META, &vec![b' '; (4 << 20) + 1]).unwrap();
        let err = rec.read(META).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().ends_with("is larger than 4194304 bytes"), "{err}");
        // Appends add lines; removal of what is not there is no error.
        rec.append(SHIM_LOG, "a\n").unwrap();
        rec.append(SHIM_LOG, "b\n").unwrap();
        assert_eq!(rec.read(SHIM_LOG).unwrap().unwrap(), b"a\nb\n");
        assert_eq!(
            fs::metadata(state.record_path("r1").join(SHIM_LOG)).unwrap().mode() & 0o777,
            0o600
        );
        rec.remove(SHIM_LOG).unwrap();
        rec.remove(SHIM_LOG).unwrap();
        assert_eq!(rec.read(SHIM_LOG).unwrap(), None);
        assert_eq!(
            fs::read(rec.fd_path(EXIT)).unwrap(),
            fs::read(state.record_path("r1").join(EXIT)).unwrap()
        );
    }

    #[test]
    fn what_is_not_a_directory_or_a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let rec = state.create_record("r").unwrap().unwrap();
        fs::create_dir(state.record_path("r").join(PID)).unwrap();
        let err = rec.read(PID).unwrap_err();
        assert!(err.to_string().ends_with("is not a regular file"), "{err}");
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("link")).unwrap();
        let err = Dir::open(&tmp.path().join("link")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("is not a directory"), "{err}");
        let err = rec.append("sub/x", "y").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn one_server_per_state_directory_and_a_reboot_clears_the_records() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a/b/state");
        let state = StateDir::open(&root).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(root.join("procs")).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(root.join("lock")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(root.join("boot_id")).unwrap(), current_boot_id());
        let err = StateDir::open(&root).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("state directory {} is in use by another cmappserver", root.display())
        );
        state.create_record("kept").unwrap().unwrap();
        drop(state);
        // Same boot: the records stay.
        let state = StateDir::open(&root).unwrap();
        assert_eq!(state.records().len(), 1);
        state.record("kept").unwrap();
        drop(state);
        // Another boot: they are gone.
        fs::write(root.join("boot_id"), "an earlier boot\n").unwrap();
        let state = StateDir::open(&root).unwrap();
        assert!(state.records().is_empty());
        assert_eq!(fs::read_to_string(root.join("boot_id")).unwrap(), current_boot_id());
        drop(state);
        // A state directory others can write is refused.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::open(&root).unwrap_err();
        assert!(err.to_string().contains("refusing to use it"), "{err}");
    }

    #[test]
    fn a_file_a_fifo_or_a_nested_name_is_not_a_record() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        // A regular file where a directory is expected.
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        let err = Dir::open(&file).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        // A FIFO planted as a record file is refused, without waiting for a writer.
        let rec = state.create_record("r").unwrap().unwrap();
        nix::unistd::mkfifo(&state.record_path("r").join(PID), Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        let err = rec.read(PID).unwrap_err();
        assert!(err.to_string().ends_with("is not a regular file"), "{err}");
        // An id that cannot be made is an error, not an id taken.
        assert!(state.create_record("no/such").is_err());
        // Hidden entries (temporary files of a write) are not records.
        fs::create_dir(state.record_path(".partial")).unwrap();
        fs::set_permissions(state.record_path(".partial"), fs::Permissions::from_mode(0o700)).unwrap();
        let names: Vec<String> = state.records().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["r"]);
    }

    #[test]
    fn a_boot_id_others_can_write_refuses_the_directory_and_an_unreadable_one_is_another_boot() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let state = StateDir::open(&root).unwrap();
        state.create_record("kept").unwrap().unwrap();
        drop(state);
        fs::set_permissions(root.join("boot_id"), fs::Permissions::from_mode(0o666)).unwrap();
        let err = StateDir::open(&root).unwrap_err();
        assert!(err.to_string().contains("refusing to use it"), "{err}");
        assert!(root.join("procs/kept").exists(), "nothing cleared");
        // Over the size of a record: not this boot's.
        fs::set_permissions(root.join("boot_id"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(root.join("boot_id"), vec![b'x'; (4 << 20) + 1]).unwrap();
        let state = StateDir::open(&root).unwrap();
        assert!(state.records().is_empty());
        assert_eq!(fs::read_to_string(root.join("boot_id")).unwrap(), current_boot_id());
    }

    #[test]
    fn a_state_directory_that_cannot_be_made_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("file"), "").unwrap();
        let err = StateDir::open(&tmp.path().join("file/state")).unwrap_err();
        assert!(err.to_string().contains(": cannot create it: "), "{err}");
        // Its parent is there, but it cannot be made (a name over 255 bytes).
        let err = StateDir::open(&tmp.path().join("s".repeat(256))).unwrap_err();
        assert!(err.to_string().contains(": cannot create it: "), "{err}");
    }

    #[test]
    fn records_are_trusted_only_from_our_own_user_and_this_boot() {
        assert_eq!(own_uid(), nix::unistd::geteuid().as_raw());
        assert!(!current_boot_id().is_empty());
        if std::env::var_os("CMAPPSERVER_BOOT_ID").is_none() {
            let kernel = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
            assert_eq!(current_boot_id(), kernel.trim(), "the kernel's boot id");
        }
    }
}
