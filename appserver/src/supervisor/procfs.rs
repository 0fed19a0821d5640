//! Reading /proc: whether a process still runs, and whether it is still the
//! process a record names (by its start time, so that a recycled pid is
//! never mistaken for it).

use super::state::PidRecord;

/// True while `pid` exists and is not a zombie.
pub(super) fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

/// True when the recorded process still runs as the leader of its group and
/// started at the recorded tick.
pub(super) fn same_process(record: &PidRecord) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", record.pid)) else {
        return false;
    };
    let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    rest.first() != Some(&"Z")
        && rest.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(record.pid)
        && record.start_ticks.is_some()
        && start_ticks(record.pid) == record.start_ticks
}

/// Field 22 of /proc/PID/stat: when the process started, in ticks since boot.
pub(super) fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(19)?.parse().ok()
}
