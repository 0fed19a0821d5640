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
