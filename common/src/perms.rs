//! Who may change a file we trust: the checks sshd's `StrictModes` makes.
//!
//! A configuration file, a trust store or the state directory is only as
//! trustworthy as the least trusted user who can write it (or replace one of
//! the directories above it). These checks name the path, its owner or mode,
//! and what is wrong with it, so that an administrator can fix it at once.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why `path` (with metadata `meta`) could be changed by someone other than
/// its owner: `None` when nobody else can write it. A sticky directory
/// (such as /tmp) counts as safe when `sticky_ok`: others may add entries but
/// not replace ours.
pub fn writable_by_others(path: &Path, meta: &Metadata, sticky_ok: bool) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    if sticky_ok && meta.is_dir() && mode & 0o1000 != 0 {
        return None;
    }
    if mode & 0o002 != 0 {
        Some(format!("{} is writable by others (mode {mode:04o})", path.display()))
    } else if mode & 0o020 != 0 {
        Some(format!("{} is writable by its group (mode {mode:04o})", path.display()))
    } else {
        None
    }
}

/// Refuses a file that group or others could write (readable is fine): a
/// configuration file or a trust store, as sshd's `StrictModes` does.
pub fn check_not_writable_by_others(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match writable_by_others(path, &meta, false) {
        Some(why) => Err(format!("{why}; run chmod go-w {}", path.display())),
        None => Ok(()),
    }
}

/// Checks that `meta` belongs to `uid` (or to root, when `root_ok`) and that
/// no one else can write it.
pub fn check_owned(path: &Path, meta: &Metadata, uid: u32, root_ok: bool, sticky_ok: bool) -> Result<(), String> {
    let owner = meta.uid();
    if owner != uid && !(root_ok && owner == 0) {
        let whom = if root_ok && uid != 0 {
            format!("uid {uid} or root")
        } else {
            format!("uid {uid}")
        };
        return Err(format!("{} is owned by uid {owner}, not by {whom}", path.display()));
    }
    match writable_by_others(path, meta, sticky_ok) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Checks every directory above `path` (resolved): each must belong to
/// `uid` or root and be writable by no one else, unless it is sticky. Returns
/// the resolved path.
pub fn check_ancestors(path: &Path, uid: u32) -> Result<PathBuf, String> {
    let resolved = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
    for dir in resolved.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        check_owned(dir, &meta, uid, true, true)?;
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn with_mode(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn group_or_other_write_is_refused_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        for (mode, ok) in [
            (0o644, true),
            (0o600, true),
            (0o444, true),
            (0o664, false),
            (0o646, false),
        ] {
            let p = with_mode(tmp.path(), &format!("f{mode:o}"), mode);
            let r = check_not_writable_by_others(&p);
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.starts_with(&p.display().to_string()), "{e}");
                assert!(e.contains(&format!("(mode {mode:04o})")), "{e}");
            }
        }
    }

    #[test]
    fn a_sticky_directory_is_a_safe_ancestor_but_not_a_safe_file() {
        let meta = std::fs::metadata("/tmp").unwrap();
        if meta.mode() & 0o1002 == 0o1002 {
            assert!(writable_by_others(Path::new("/tmp"), &meta, true).is_none());
            assert!(writable_by_others(Path::new("/tmp"), &meta, false).is_some());
        }
    }
}
