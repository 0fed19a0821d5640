//! Run-as: starting an application as another user, with its own resource
//! limits, from a command policy rule (see `policy`).
//!
//! The shim never changes its own identity: it stays root, the parent of the
//! application, and writes every state record (`pid.json`, `exit.json`) as
//! root. It starts the application through a tiny mode of this same binary,
//! `cmappserver run-as [OPTIONS] -- PROGRAM ARGS...` (from `/proc/self/exe`),
//! which sets the resource limits, the supplementary groups of the user
//! (initgroups, from the user database), the group and the user, the working
//! directory and a login-like environment, and then execs the program in
//! place: the pid the shim recorded is the application's. Doing it in a
//! separate exec keeps all of it in safe code (`pre_exec` is unsafe, and
//! `CommandExt::groups` is unstable); the cost is one exec.
//!
//! A program the user cannot execute ends the helper with 126 (127 when it
//! does not exist), with the reason on the application's stderr, as a shell
//! does.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

/// What a rule asks for: recorded in the process's `meta.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunAs {
    /// The user (a name from the user database); `None`: stay root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The primary group; `None`: the user's own (or root's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The working directory; `None`: the user's home (`/` without a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Resource limits, set before the user changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
}

/// One resource limit: `None` is unlimited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limit {
    /// `nofile`, `nproc`, `as`, `core`, `fsize`, `memlock`, `stack` or `cpu`.
    pub resource: String,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// The limits a rule may set: (name, resource, counted in bytes).
pub const RESOURCES: &[(&str, Resource, bool)] = &[
    ("nofile", Resource::RLIMIT_NOFILE, false),
    ("nproc", Resource::RLIMIT_NPROC, false),
    ("as", Resource::RLIMIT_AS, true),
    ("core", Resource::RLIMIT_CORE, true),
    ("fsize", Resource::RLIMIT_FSIZE, true),
    ("memlock", Resource::RLIMIT_MEMLOCK, true),
    ("stack", Resource::RLIMIT_STACK, true),
    ("cpu", Resource::RLIMIT_CPU, false),
];

/// The `PATH` of a run-as application, as login(1) gives an ordinary user.
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

impl RunAs {
    /// The helper's arguments (before `--`).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(u) = &self.user {
            args.extend(["--user".to_string(), u.clone()]);
        }
        if let Some(g) = &self.group {
            args.extend(["--group".to_string(), g.clone()]);
        }
        if let Some(c) = &self.cwd {
            args.extend(["--cwd".to_string(), c.display().to_string()]);
        }
        for l in &self.limits {
            let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
            args.extend([
                "--limit".to_string(),
                format!("{}={}:{}", l.resource, show(l.soft), show(l.hard)),
            ]);
        }
        args
    }
}

/// Why a limit value (`allow.NAME.limit.RESOURCE`, `run-as --limit`) is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{value:?}: unknown unit {unit:?} (K, M, G or T)")]
    Unit { value: String, unit: char },
    /// `bytes`: the resource is a size, which may have a unit.
    #[error(
        "{value:?} is not a number{} or unlimited",
        if *bytes { " (with an optional K, M, G or T)" } else { "" }
    )]
    NotANumber { value: String, bytes: bool },
    #[error("{value:?} is too large")]
    TooLarge { value: String },
    #[error("the soft limit in {value:?} is above the hard limit")]
    SoftAboveHard { value: String },
}

/// Parses a limit value: `N`, `SOFT:HARD`, `unlimited`; sizes may end in
/// K, M, G or T (powers of 1024) when `bytes`.
pub fn parse_limit(resource: &str, value: &str, bytes: bool) -> Result<Limit, LimitError> {
    let one = |v: &str| -> Result<Option<u64>, LimitError> {
        let v = v.trim();
        if v.eq_ignore_ascii_case("unlimited") || v.eq_ignore_ascii_case("infinity") {
            return Ok(None);
        }
        let (digits, mult) = match v.char_indices().last() {
            Some((i, c)) if bytes && c.is_ascii_alphabetic() => {
                let m: u64 = match c.to_ascii_uppercase() {
                    'K' => 1 << 10,
                    'M' => 1 << 20,
                    'G' => 1 << 30,
                    'T' => 1 << 40,
                    unit => return Err(LimitError::Unit { value: v.into(), unit }),
                };
                (&v[..i], m)
            }
            _ => (v, 1),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| LimitError::NotANumber { value: v.into(), bytes })?;
        n.checked_mul(mult)
            .map(Some)
            .ok_or_else(|| LimitError::TooLarge { value: v.into() })
    };
    let (soft, hard) = match value.split_once(':') {
        Some((s, h)) => (one(s)?, one(h)?),
        None => {
            let v = one(value)?;
            (v, v)
        }
    };
    let above = |s: Option<u64>, h: Option<u64>| match (s, h) {
        (None, Some(_)) => true,
        (Some(s), Some(h)) => s > h,
        _ => false,
    };
    if above(soft, hard) {
        return Err(LimitError::SoftAboveHard { value: value.into() });
    }
    Ok(Limit {
        resource: resource.to_string(),
        soft,
        hard,
    })
}

/// Entry point of `cmappserver run-as`: never returns on success (the
/// program replaces it); returns 126 or 127 with the reason on stderr.
pub fn main(args: Vec<String>) -> i32 {
    let fail = |code: i32, msg: String| {
        eprintln!("cmappserver run-as: {msg}");
        code
    };
    let Some(sep) = args.iter().position(|a| a == "--") else {
        return fail(126, "usage: cmappserver run-as [OPTIONS] -- PROGRAM [ARGS...]".into());
    };
    let (opts, argv) = (&args[..sep], &args[sep + 1..]);
    let Some(program) = argv.first() else {
        return fail(126, "no program to run".into());
    };
    let mut run_as = RunAs::default();
    let mut it = opts.iter();
    while let Some(o) = it.next() {
        let Some(v) = it.next() else {
            return fail(126, format!("{o} needs a value"));
        };
        match o.as_str() {
            "--user" => run_as.user = Some(v.clone()),
            "--group" => run_as.group = Some(v.clone()),
            "--cwd" => run_as.cwd = Some(v.into()),
            "--limit" => {
                let Some((name, value)) = v.split_once('=') else {
                    return fail(126, format!("--limit {v}: not NAME=SOFT:HARD"));
                };
                let Some(&(_, _, bytes)) = RESOURCES.iter().find(|r| r.0 == name) else {
                    return fail(126, format!("--limit {v}: unknown resource"));
                };
                match parse_limit(name, value, bytes) {
                    Ok(l) => run_as.limits.push(l),
                    Err(e) => return fail(126, format!("--limit {v}: {e}")),
                }
            }
            _ => return fail(126, format!("unknown option {o}")),
        }
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(&argv[1..]);
    if let Err(e) = become_user(&run_as, &mut cmd) {
        return fail(e.exit_code(), e.to_string());
    }
    // Only returns on failure.
    let err = cmd.exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    fail(code, format!("{program}: {err}"))
}

/// Why `run-as` could not become the configured user.
#[derive(Debug, thiserror::Error)]
pub enum BecomeError {
    #[error("unknown resource {resource}")]
    UnknownResource { resource: String },
    #[error("cannot set the {resource} limit: {source}")]
    Limit {
        resource: String,
        #[source]
        source: Errno,
    },
    #[error("cannot look up user {name}: {source}")]
    LookUpUser {
        name: String,
        #[source]
        source: Errno,
    },
    #[error("user {name} does not exist")]
    NoUser { name: String },
    #[error("cannot look up group {name}: {source}")]
    LookUpGroup {
        name: String,
        #[source]
        source: Errno,
    },
    #[error("group {name} does not exist")]
    NoGroup { name: String },
    #[error("a user name with a NUL byte")]
    NulInName,
    #[error("cannot set the supplementary groups of {user}: {source}")]
    SupplementaryGroups {
        user: String,
        #[source]
        source: Errno,
    },
    #[error("cannot set the groups: {source}")]
    Groups {
        #[source]
        source: Errno,
    },
    #[error("cannot set group id {gid}: {source}")]
    SetGid {
        gid: Gid,
        #[source]
        source: Errno,
    },
    #[error("cannot become user {user} ({uid}): {source}")]
    SetUid {
        user: String,
        uid: Uid,
        #[source]
        source: Errno,
    },
    /// Dropping root did not hold.
    #[error("user {user}: root privileges could be regained")]
    RootRegained { user: String },
    #[error("cannot change to directory {}: {source}", dir.display())]
    Cwd {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BecomeError {
    /// `run-as`'s exit code: 126, as a shell's for a program found but not
    /// run (127, not found, comes from the exec itself).
    pub fn exit_code(&self) -> i32 {
        126
    }
}

/// Sets limits, groups, group, user, working directory and the login
/// variables (those the application's configured environment does not set).
fn become_user(run_as: &RunAs, cmd: &mut std::process::Command) -> Result<(), BecomeError> {
    for l in &run_as.limits {
        let resource = RESOURCES
            .iter()
            .find(|r| r.0 == l.resource)
            .map(|r| r.1)
            .ok_or_else(|| BecomeError::UnknownResource {
                resource: l.resource.clone(),
            })?;
        setrlimit(
            resource,
            l.soft.unwrap_or(RLIM_INFINITY),
            l.hard.unwrap_or(RLIM_INFINITY),
        )
        .map_err(|source| BecomeError::Limit {
            resource: l.resource.clone(),
            source,
        })?;
    }
    let user = match &run_as.user {
        Some(name) => Some(
            User::from_name(name)
                .map_err(|source| BecomeError::LookUpUser {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| BecomeError::NoUser { name: name.clone() })?,
        ),
        None => None,
    };
    let gid = match &run_as.group {
        Some(name) => {
            Group::from_name(name)
                .map_err(|source| BecomeError::LookUpGroup {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| BecomeError::NoGroup { name: name.clone() })?
                .gid
        }
        None => user.as_ref().map_or_else(Gid::current, |u| u.gid),
    };
    match &user {
        Some(u) => {
            let name = CString::new(u.name.as_str()).map_err(|_| BecomeError::NulInName)?;
            nix::unistd::initgroups(&name, gid).map_err(|source| BecomeError::SupplementaryGroups {
                user: u.name.clone(),
                source,
            })?;
        }
        None if run_as.group.is_some() => {
            nix::unistd::setgroups(&[gid]).map_err(|source| BecomeError::Groups { source })?;
        }
        None => {}
    }
    nix::unistd::setgid(gid).map_err(|source| BecomeError::SetGid { gid, source })?;
    if let Some(u) = &user {
        nix::unistd::setuid(u.uid).map_err(|source| BecomeError::SetUid {
            user: u.name.clone(),
            uid: u.uid,
            source,
        })?;
        // Dropped for good: getting root back must fail.
        if !u.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(BecomeError::RootRegained { user: u.name.clone() });
        }
        let home = u.dir.display().to_string();
        let shell = u.shell.display().to_string();
        for (k, v) in [
            ("HOME", home.as_str()),
            ("USER", u.name.as_str()),
            ("LOGNAME", u.name.as_str()),
            ("SHELL", shell.as_str()),
            ("PATH", USER_PATH),
        ] {
            if std::env::var_os(k).is_none() {
                cmd.env(k, v);
            }
        }
    }
    let cwd = match (&run_as.cwd, &user) {
        (Some(c), _) => c.clone(),
        (None, Some(u)) if u.dir.is_dir() => u.dir.clone(),
        (None, Some(u)) => {
            eprintln!(
                "cmappserver run-as: the home directory {} of {} does not exist; starting in /",
                u.dir.display(),
                u.name
            );
            PathBuf::from("/")
        }
        (None, None) => PathBuf::from("/"),
    };
    std::env::set_current_dir(&cwd).map_err(|source| BecomeError::Cwd {
        dir: cwd.clone(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        let l = parse_limit("nofile", "1024", false).unwrap();
        assert_eq!((l.soft, l.hard), (Some(1024), Some(1024)));
        let l = parse_limit("as", "512M:1G", true).unwrap();
        assert_eq!((l.soft, l.hard), (Some(512 << 20), Some(1 << 30)));
        let l = parse_limit("core", "0:unlimited", true).unwrap();
        assert_eq!((l.soft, l.hard), (Some(0), None));
        assert!(parse_limit("nofile", "2048:1024", false).is_err());
        assert!(parse_limit("nofile", "1K", false).is_err());
        assert!(parse_limit("as", "1X", true).is_err());
        assert!(parse_limit("as", "unlimited:5", true).is_err());
    }

    #[test]
    fn args_round_trip() {
        let r = RunAs {
            user: Some("app".into()),
            group: None,
            cwd: Some("/srv".into()),
            limits: vec![parse_limit("core", "0", true).unwrap()],
        };
        assert_eq!(r.to_args(), ["--user", "app", "--cwd", "/srv", "--limit", "core=0:0"]);
    }
}
