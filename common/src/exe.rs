//! This very program, to run it again.

use std::path::PathBuf;

/// The running binary as the kernel holds it: exec'ing this starts the same
/// build even after a package upgrade replaced or removed its file, so a
/// server only ever starts shims, probes and readers of its own version.
pub const SELF: &str = "/proc/self/exe";

/// What to exec to run this binary again: [`SELF`], or, where /proc is not
/// mounted, the path it was started as.
pub fn reexec() -> PathBuf {
    if std::path::Path::new(SELF).exists() {
        return PathBuf::from(SELF);
    }
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SELF))
}

/// The file this binary was started from, for messages, `argv[0]` and
/// finding the programs installed next to it (`None` if unknown).
pub fn path() -> Option<PathBuf> {
    std::env::current_exe().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_binary_is_found_and_rerun_through_proc() {
        assert_eq!(reexec(), PathBuf::from(SELF));
        let me = path().expect("the test binary's path");
        assert_eq!(me, std::fs::read_link(SELF).unwrap());
    }
}
