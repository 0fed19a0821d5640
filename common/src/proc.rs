//! What `/proc/PID/stat` says about a process: whether it still runs, who
//! its parent and group are, the CPU it used, and when it started, which
//! tells it from a later process that got the same pid. One reader for
//! cmappserver, cmappmgr and the tests, parsed by `procfs-core` (the
//! command name may hold spaces and parentheses; the parser takes the last
//! `)`).

use procfs_core::FromRead;

/// The fields of `/proc/PID/stat` that cmapp reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z`, ... (field 3).
    pub state: char,
    /// The parent's pid (field 4).
    pub ppid: u32,
    /// The process group (field 5).
    pub pgrp: u32,
    /// User and system CPU time, in clock ticks (fields 14 and 15).
    pub utime: u64,
    pub stime: u64,
    /// When it started, in clock ticks since boot (field 22).
    pub start_ticks: u64,
}

impl Stat {
    /// A zombie has ended and waits to be reaped: it runs no more.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// The status of `pid`, or `None` if it is gone (or /proc is not mounted).
pub fn stat(pid: u32) -> Option<Stat> {
    parse(std::fs::File::open(format!("/proc/{pid}/stat")).ok()?)
}

fn parse(r: impl std::io::Read) -> Option<Stat> {
    let s = procfs_core::process::Stat::from_read(r).ok()?;
    Some(Stat {
        state: s.state,
        ppid: u32::try_from(s.ppid).ok()?,
        pgrp: u32::try_from(s.pgrp).ok()?,
        utime: s.utime,
        stime: s.stime,
        start_ticks: s.starttime,
    })
}

/// True while `pid` exists and is not a zombie.
pub fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|s| !s.is_zombie())
}

/// When `pid` started, in clock ticks since boot, zombie or not.
pub fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_ticks)
}

/// Clock ticks per second, the unit of [`Stat`]'s times.
pub fn clock_ticks_per_second() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123456 \
                    1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let s = parse(line.as_bytes()).unwrap();
        assert_eq!((s.state, s.ppid, s.pgrp), ('S', 1, 4242));
        assert_eq!((s.utime, s.stime, s.start_ticks), (7, 3, 123456));
        assert!(parse("garbage".as_bytes()).is_none());
    }

    #[test]
    fn this_process_runs_and_started_before_now() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert!(!s.is_zombie() && running(me));
        assert_eq!(start_ticks(me), Some(s.start_ticks));
        assert!(clock_ticks_per_second() > 0);
        assert!(!running(u32::MAX));
    }

    #[test]
    fn an_ended_child_not_yet_reaped_is_a_zombie_that_runs_no_more() {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let started = start_ticks(pid).expect("a child that may not have ended yet");
        // Wait for its end without reaping it: it stays a zombie.
        waitid(
            Id::Pid(nix::unistd::Pid::from_raw(pid as i32)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        )
        .unwrap();
        let s = stat(pid).unwrap();
        assert!(s.is_zombie(), "{s:?}");
        assert!(!running(pid));
        assert_eq!(start_ticks(pid), Some(started), "a zombie still tells when it started");
        let mut child = child;
        child.wait().unwrap();
        assert_eq!(stat(pid), None);
    }

    #[test]
    fn clock_ticks_are_linux_user_hz() {
        assert_eq!(clock_ticks_per_second(), 100);
    }
}
