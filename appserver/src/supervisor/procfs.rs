//! Reading /proc: whether a process still runs, and whether it is still the
//! process a record names (by its start time, so that a recycled pid is
//! never mistaken for it).

use super::state::PidRecord;

pub(super) use common::proc::{running, start_ticks};

/// True when the recorded process still runs as the leader of its group and
/// started at the recorded tick.
pub(super) fn same_process(record: &PidRecord) -> bool {
    common::proc::stat(record.pid)
        .is_some_and(|s| !s.is_zombie() && s.pgrp == record.pid && record.start_ticks == Some(s.start_ticks))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A `sleep` child, killed and reaped when dropped; `leader`: in a
    /// process group of its own.
    pub(in crate::supervisor) struct Child(pub std::process::Child);

    impl Child {
        pub(in crate::supervisor) fn sleep(leader: bool) -> Child {
            let mut c = std::process::Command::new("sleep");
            c.arg("60");
            if leader {
                c.process_group(0);
            }
            Child(c.spawn().unwrap())
        }

        pub(in crate::supervisor) fn pid(&self) -> u32 {
            self.0.id()
        }

        pub(in crate::supervisor) fn record(&self, shim_pid: u32) -> PidRecord {
            PidRecord {
                pid: self.pid(),
                started_at_ms: 1,
                shim_pid,
                start_ticks: start_ticks(self.pid()),
            }
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The pid of a process that has ended (and been reaped).
    pub(in crate::supervisor) fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn a_record_names_its_process_only_while_it_runs_as_its_groups_leader_since_the_recorded_tick() {
        let app = Child::sleep(true);
        let rec = app.record(dead_pid());
        assert!(same_process(&rec));
        let mut later = rec;
        later.start_ticks = rec.start_ticks.map(|t| t + 1);
        assert!(!same_process(&later), "another start time: a recycled pid");
        later.start_ticks = None;
        assert!(!same_process(&later), "no start time recorded: never trusted");
        let member = Child::sleep(false);
        assert!(!same_process(&member.record(0)), "not the leader of its group");
        let mut zombie = Child::sleep(true);
        let rec = zombie.record(0);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(zombie.pid() as i32),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        while !common::proc::stat(zombie.pid()).is_some_and(|s| s.is_zombie()) {
            std::thread::yield_now();
        }
        assert!(!same_process(&rec), "a zombie has ended");
        zombie.0.wait().unwrap();
        assert!(!same_process(&rec), "gone");
    }
}
