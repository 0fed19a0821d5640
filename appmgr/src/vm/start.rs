//! `cmappmgr vm start`: the package's start step for the guest.

use std::thread;
use std::time::{Duration, Instant};

use super::hypervisor::{DomainState, Hypervisor};
use super::tkit::Toolkit;
use super::{GuestCheck, VmError};

/// How often the state is polled while waiting for the domain to run.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Longest wait for the domain to reach the running state.
    pub timeout: Duration,
    /// Then wait for the guest's cmappserver, if set.
    pub check: Option<GuestCheck>,
}

pub fn run(hv: &dyn Hypervisor, guest: &str, tkit: &Toolkit, opts: &StartOptions) -> Result<(), VmError> {
    if tkit.maintenance_allowed && tkit.maintenance_file_present() {
        // The original warns like this when a package starts in maintenance mode.
        tracing::warn!("Maintenance mode is enabled for the package {guest}");
        tracing::warn!("Disable the maintenance mode to start service monitoring");
    }
    wait_running(hv, guest, opts.timeout)?;
    if let Some(check) = &opts.check {
        wait_cmappserver(guest, check)?;
    }
    Ok(())
}

/// Starts (or resumes) the domain as needed and waits until it runs.
fn wait_running(hv: &dyn Hypervisor, guest: &str, timeout: Duration) -> Result<(), VmError> {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut started = false;
    let mut resumed = false;
    loop {
        let state = hv.state(guest).map_err(|e| VmError::from_hv(guest, e))?;
        if state.is_running() {
            if started || resumed {
                tracing::info!("guest {guest} is running ({:.1} s)", t0.elapsed().as_secs_f64());
            } else {
                tracing::info!("guest {guest} is already running");
            }
            return Ok(());
        }
        match state {
            DomainState::ShutOff | DomainState::Crashed if !started => {
                tracing::info!("starting guest {guest} (state: {state}) through {}", hv.describe());
                if let Err(e) = hv.start(guest) {
                    // Someone else may have started it meanwhile.
                    if hv.state(guest).map(|s| s.is_running()).unwrap_or(false) {
                        tracing::info!("guest {guest} was started concurrently");
                        return Ok(());
                    }
                    return Err(VmError::from_hv(guest, e));
                }
                started = true;
                continue;
            }
            DomainState::ShutOff | DomainState::Crashed => {
                return Err(VmError::Failed(format!(
                    "guest {guest} stopped again right after it was started (state: {state})"
                )));
            }
            DomainState::Paused if !resumed => {
                tracing::info!("guest {guest} is paused; resuming it");
                hv.resume(guest).map_err(|e| VmError::from_hv(guest, e))?;
                resumed = true;
                continue;
            }
            _ => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(VmError::Failed(format!(
                "guest {guest} did not reach the running state within {} s (state: {state})",
                timeout.as_secs_f64()
            )));
        }
        thread::sleep(POLL.min(deadline - now));
    }
}

/// Waits until the guest's cmappserver answers (bounded by the check's timeout).
fn wait_cmappserver(guest: &str, check: &GuestCheck) -> Result<(), VmError> {
    tracing::info!(
        "waiting up to {} s for the cmappserver of guest {guest} at {} to answer",
        check.timeout.as_secs_f64(),
        check.node
    );
    let t0 = Instant::now();
    let rt = super::runtime()?;
    let answer = rt.block_on(check.ask());
    rt.shutdown_timeout(Duration::from_secs(1));
    match answer {
        Ok(w) => {
            tracing::info!(
                "the cmappserver of guest {guest} at {} answered after {:.1} s (cmappserver {}, protocol {}, {} monitored processes)",
                check.node,
                t0.elapsed().as_secs_f64(),
                w.software,
                w.protocol,
                w.monitored
            );
            Ok(())
        }
        Err(source) => Err(VmError::NoAnswer {
            guest: guest.to_string(),
            node: check.node.clone(),
            timeout: check.timeout,
            source: Box::new(source),
        }),
    }
}
