//! `cmappmgr vm stop`: the package's halt step for the guest.
//!
//! Not done yet: asking the guest's cmappserver to stop its monitored
//! applications before the shutdown (the services that run them are halted
//! by the cluster before this step anyway).

use std::thread;
use std::time::{Duration, Instant};

use super::hypervisor::{DomainState, Hypervisor};
use super::VmError;

const POLL: Duration = Duration::from_millis(200);
/// Tries of `virsh destroy` (libvirt itself waits ~15 s per try for a process
/// stuck in the kernel).
const DESTROY_TRIES: u32 = 3;

#[derive(Debug, Clone)]
pub struct StopOptions {
    /// Longest wait for the graceful shutdown; zero forces at once.
    pub timeout: Duration,
    pub force: bool,
}

pub fn run(hv: &dyn Hypervisor, guest: &str, opts: &StopOptions) -> Result<(), VmError> {
    let t0 = Instant::now();
    let state = match hv.state(guest) {
        Ok(s) => s,
        Err(e) if e.is_not_found() => {
            tracing::warn!("guest {guest} is not defined on this host; nothing to stop ({e})");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if state.is_stopped() {
        tracing::info!("guest {guest} is already stopped (state: {state})");
        return Ok(());
    }
    if opts.force || opts.timeout.is_zero() {
        tracing::info!("forcing guest {guest} off at once (state: {state})");
    } else if state == DomainState::Paused {
        tracing::info!("guest {guest} is paused and cannot shut down by itself; forcing it off");
    } else {
        tracing::info!(
            "shutting down guest {guest} (virsh shutdown), waiting up to {} s",
            opts.timeout.as_secs_f64()
        );
        match hv.shutdown(guest) {
            Ok(()) => match wait_stopped(hv, guest, t0 + opts.timeout) {
                Ok(true) => {
                    tracing::info!(
                        "guest {guest} shut down gracefully in {:.1} s",
                        t0.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                Ok(false) => tracing::warn!(
                    "guest {guest} did not shut down within {} s; forcing it off",
                    opts.timeout.as_secs_f64()
                ),
                Err(e) => tracing::warn!("{e}; forcing guest {guest} off"),
            },
            Err(e) => {
                if stopped_now(hv, guest) {
                    tracing::info!("guest {guest} stopped by itself");
                    return Ok(());
                }
                tracing::warn!("graceful shutdown of guest {guest} failed: {e}; forcing it off");
            }
        }
    }
    force_off(hv, guest, t0)
}

/// True once the domain is stopped (or gone: a transient domain vanishes
/// when it stops); false at the deadline.
fn wait_stopped(hv: &dyn Hypervisor, guest: &str, deadline: Instant) -> Result<bool, VmError> {
    loop {
        match hv.state(guest) {
            Ok(s) if s.is_stopped() => return Ok(true),
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        thread::sleep(POLL.min(deadline - now));
    }
}

fn stopped_now(hv: &dyn Hypervisor, guest: &str) -> bool {
    match hv.state(guest) {
        Ok(s) => s.is_stopped(),
        Err(e) => e.is_not_found(),
    }
}

fn force_off(hv: &dyn Hypervisor, guest: &str, t0: Instant) -> Result<(), VmError> {
    let mut last = None;
    for attempt in 1..=DESTROY_TRIES {
        match hv.destroy(guest) {
            Ok(()) => {
                tracing::info!(
                    "guest {guest} was forced off (virsh destroy) after {:.1} s",
                    t0.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Err(e) => {
                if stopped_now(hv, guest) {
                    tracing::info!("guest {guest} stopped ({:.1} s)", t0.elapsed().as_secs_f64());
                    return Ok(());
                }
                tracing::warn!("forced stop of guest {guest} failed (try {attempt} of {DESTROY_TRIES}): {e}");
                last = Some(e);
                if attempt < DESTROY_TRIES {
                    thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
    match last {
        Some(source) => Err(VmError::NotStopped {
            guest: guest.to_string(),
            source,
        }),
        None => Err(VmError::Failed(format!("could not stop guest {guest}"))),
    }
}
