//! Who may change a file we trust: the checks sshd's `StrictModes` makes.
//!
//! A configuration file, a trust store or the state directory is only as
//! trustworthy as the least trusted user who can write it (or replace one of
//! the directories above it). These checks name the path, its owner or mode,
//! and what is wrong with it, so that an administrator can fix it at once.

use std::fmt;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a path is not safe from other users, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum PermsError {
    /// Its metadata (or, for [`check_ancestors`], its resolved path) could not be read.
    #[error("{}: {source}", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// It belongs to `owner`, not to `uid` (nor to root, when `or_root`).
    #[error("{} is owned by uid {owner}, not by uid {uid}{}", path.display(), if *or_root { " or root" } else { "" })]
    NotOwned {
        path: PathBuf,
        owner: u32,
        uid: u32,
        or_root: bool,
    },
    #[error(transparent)]
    Writable(#[from] Writable),
    /// A file is expected there.
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    /// A directory is expected there (and a symbolic link is not followed).
    #[error("{} is not a directory (a symbolic link?)", path.display())]
    NotADirectory { path: PathBuf },
    /// A symbolic link where none is followed.
    #[error("{} is a symbolic link", path.display())]
    Symlink { path: PathBuf },
}

/// A path group or others may write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is writable by {by} (mode {mode:04o})", path.display())]
pub struct Writable {
    pub path: PathBuf,
    pub by: Whom,
    /// The permission bits (`0o7777`).
    pub mode: u32,
}

/// Who, besides the owner, may write a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whom {
    Others,
    Group,
}

impl fmt::Display for Whom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Whom::Others => "others",
            Whom::Group => "its group",
        })
    }
}

/// Why `path` (with metadata `meta`) could be changed by someone other than
/// its owner: `None` when nobody else can write it. A sticky directory
/// (such as /tmp) counts as safe when `sticky_ok`: others may add entries but
/// not replace ours.
pub fn writable_by_others(path: &Path, meta: &Metadata, sticky_ok: bool) -> Option<Writable> {
    let mode = meta.mode() & 0o7777;
    if sticky_ok && meta.is_dir() && mode & 0o1000 != 0 {
        return None;
    }
    let by = if mode & 0o002 != 0 {
        Whom::Others
    } else if mode & 0o020 != 0 {
        Whom::Group
    } else {
        return None;
    };
    Some(Writable {
        path: path.into(),
        by,
        mode,
    })
}

/// Checks that `meta` belongs to `uid` (or to root, when `root_ok`) and that
/// no one else can write it.
pub fn check_owned(path: &Path, meta: &Metadata, uid: u32, root_ok: bool, sticky_ok: bool) -> Result<(), PermsError> {
    let owner = meta.uid();
    if owner != uid && !(root_ok && owner == 0) {
        return Err(PermsError::NotOwned {
            path: path.into(),
            owner,
            uid,
            or_root: root_ok && uid != 0,
        });
    }
    match writable_by_others(path, meta, sticky_ok) {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}

/// Checks every directory above `path` (resolved): each must belong to
/// `uid` or root and be writable by no one else, unless it is sticky. Returns
/// the resolved path.
pub fn check_ancestors(path: &Path, uid: u32) -> Result<PathBuf, PermsError> {
    let stat = |path: &Path, source| PermsError::Stat {
        path: path.into(),
        source,
    };
    let resolved = path.canonicalize().map_err(|e| stat(path, e))?;
    for dir in resolved.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| stat(dir, e))?;
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
            let r = writable_by_others(&p, &std::fs::metadata(&p).unwrap(), false);
            assert_eq!(r.is_none(), ok, "{mode:o}: {r:?}");
            if let Some(e) = r {
                let e = e.to_string();
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

    #[test]
    fn only_group_and_other_write_bits_count() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o7755, 0o4755, 0o2755, 0o700, 0o755, 0o1700, 0o604, 0o640, 0o6755] {
            let p = with_mode(tmp.path(), &format!("f{mode:o}"), mode);
            let meta = std::fs::metadata(&p).unwrap();
            assert_eq!(writable_by_others(&p, &meta, false), None, "{mode:o}");
            assert_eq!(writable_by_others(&p, &meta, true), None, "{mode:o}");
        }
        for (mode, whom) in [
            (0o602, "others"),
            (0o622, "others"),
            (0o620, "its group"),
            (0o1777, "others"),
        ] {
            let p = with_mode(tmp.path(), &format!("g{mode:o}"), mode);
            let meta = std::fs::metadata(&p).unwrap();
            let expected = format!("{} is writable by {whom} (mode {mode:04o})", p.display());
            let found = |sticky_ok| writable_by_others(&p, &meta, sticky_ok).map(|w| w.to_string());
            assert_eq!(found(false), Some(expected.clone()));
            // Sticky is only a shelter for a directory.
            assert_eq!(found(true), Some(expected), "{mode:o}");
        }
    }

    #[test]
    fn a_sticky_directory_others_can_write_is_safe_only_as_an_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("sticky");
        std::fs::create_dir(&d).unwrap();
        for (mode, as_ancestor) in [(0o1777, true), (0o1770, true), (0o0777, false), (0o1755, true)] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            let meta = std::fs::metadata(&d).unwrap();
            assert_eq!(writable_by_others(&d, &meta, true).is_none(), as_ancestor, "{mode:o}");
            assert_eq!(
                writable_by_others(&d, &meta, false).is_none(),
                mode & 0o022 == 0,
                "{mode:o}"
            );
        }
    }

    #[test]
    fn ownership_is_checked_before_the_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let p = with_mode(tmp.path(), "f", 0o600);
        let meta = std::fs::metadata(&p).unwrap();
        let me = meta.uid();
        let other = me + 1;
        check_owned(&p, &meta, me, false, false).unwrap();
        check_owned(&p, &meta, me, true, false).unwrap();
        let whom = if me == 0 {
            format!("uid {other} or root")
        } else {
            format!("uid {other}")
        };
        let err = check_owned(&p, &meta, other, false, false).unwrap_err().to_string();
        assert_eq!(err, format!("{} is owned by uid {me}, not by uid {other}", p.display()));
        // Root's files are acceptable where root is.
        assert_eq!(check_owned(&p, &meta, other, true, false).is_ok(), me == 0);
        if me != 0 {
            let err = check_owned(&p, &meta, other, true, false).unwrap_err().to_string();
            assert!(err.ends_with(&format!("not by {whom}")), "{err}");
        }
        let loose = with_mode(tmp.path(), "g", 0o660);
        let meta = std::fs::metadata(&loose).unwrap();
        assert!(matches!(
            check_owned(&loose, &meta, me, false, false),
            Err(PermsError::Writable(Writable {
                by: Whom::Group,
                mode: 0o660,
                ..
            }))
        ));
        assert_eq!(
            check_owned(&loose, &meta, me, false, false).unwrap_err().to_string(),
            format!("{} is writable by its group (mode 0660)", loose.display())
        );
    }

    #[test]
    fn every_directory_above_must_be_safe() {
        let tmp = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(tmp.path()).unwrap().uid();
        let deep = tmp.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        let resolved = check_ancestors(&deep, me).unwrap();
        assert_eq!(resolved, deep.canonicalize().unwrap());
        std::fs::set_permissions(tmp.path().join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_ancestors(&deep, me).unwrap_err().to_string();
        assert!(err.contains("/a is writable by others (mode 0777)"), "{err}");
        assert!(check_ancestors(&tmp.path().join("missing"), me).is_err());
    }
}
