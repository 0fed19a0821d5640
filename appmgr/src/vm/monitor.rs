//! `cmappmgr vm monitor`: the package's guest-monitor service (the original's
//! `tkit_module.sh guest_monitor`).
//!
//! One cycle: look for the maintenance file, then ask the hypervisor for the
//! domain's state (and, with `--check-node`, whether the guest's cmappserver
//! answers). Cycles run every interval and at once when a lifecycle event
//! arrives; the event subscription only makes failures visible sooner, the
//! polling alone is enough. The service runs until the guest fails (exit 1)
//! or the cluster halts it with SIGTERM (exit 0).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::unbounded_channel;
use tokio::time::MissedTickBehavior;

use common::shutdown::StopSignal;

use super::hypervisor::{DomainState, HvError, HvEvent, Hypervisor, Subscription};
use super::tkit::Toolkit;
use super::{GuestCheck, VmError};

#[derive(Debug, Clone)]
pub struct MonitorOptions {
    pub interval: Duration,
    /// Subscribe to lifecycle events.
    pub events: bool,
    /// Consecutive failed state queries that count as a failure.
    pub max_query_failures: u32,
    pub check: Option<GuestCheck>,
}

/// Runs the monitor until the guest fails or a stop signal arrives.
pub fn run(hv: Arc<dyn Hypervisor>, guest: String, tkit: Toolkit, opts: MonitorOptions) -> Result<(), VmError> {
    let rt = super::runtime()?;
    let result = rt.block_on(async {
        let shutdown = common::shutdown::shutdown_signal().map_err(|source| VmError::Setup {
            doing: "install the SIGTERM/SIGINT handlers",
            source,
        })?;
        // Where this monitor looks, for `cmappmgr vm maintenance`; removed on return.
        let _registered = super::registry::register(&guest, &tkit);
        monitor(hv, guest, tkit, opts, shutdown).await
    });
    // A virsh call still running on the blocking pool is bounded by its own
    // timeout; do not wait for it here.
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Why a cycle runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Start,
    Tick,
    Event,
}

impl Wake {
    fn as_str(self) -> &'static str {
        match self {
            Wake::Start => "start",
            Wake::Tick => "interval",
            Wake::Event => "event",
        }
    }
}

async fn monitor(
    hv: Arc<dyn Hypervisor>,
    guest: String,
    tkit: Toolkit,
    opts: MonitorOptions,
    shutdown: impl std::future::Future<Output = StopSignal>,
) -> Result<(), VmError> {
    tokio::pin!(shutdown);
    let g = guest.as_str();
    let secs = opts.interval.as_secs_f64();
    tracing::info!(
        "monitoring guest {g} through {} every {secs} s (lifecycle events: {}; maintenance file: {}{})",
        hv.describe(),
        if opts.events { "on" } else { "off" },
        tkit.describe(),
        if tkit.maintenance_allowed {
            ""
        } else {
            ", ignored: MAINTENANCE_FLAG is no"
        },
    );

    let (events_tx, mut events) = unbounded_channel::<HvEvent>();
    let mut subscription: Option<Box<dyn Subscription>> = None;
    let mut subscribe_at = opts.events.then(Instant::now);
    let mut ticker = tokio::time::interval(opts.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;

    let mut maintenance: Option<bool> = None;
    let mut ignored_file_logged = false;
    let mut last_state: Option<DomainState> = None;
    let mut query_failures = 0u32;
    let mut wake = Wake::Start;
    loop {
        // Subscribe first, then look: a change between the two is not lost.
        if subscription.is_none() && subscribe_at.is_some_and(|at| Instant::now() >= at) {
            match hv.subscribe(g, events_tx.clone()) {
                Ok(s) => {
                    tracing::info!("subscribed to lifecycle events of guest {g} ({})", s.describe());
                    subscription = Some(s);
                    subscribe_at = None;
                }
                Err(e) => {
                    tracing::warn!("cannot subscribe to lifecycle events of guest {g}: {e}; polling every {secs} s");
                    subscribe_at = Some(Instant::now() + opts.interval);
                }
            }
        }

        let file = tkit.maintenance_file_present();
        if file && !tkit.maintenance_allowed && !ignored_file_logged {
            tracing::warn!(
                "the maintenance file {} exists but MAINTENANCE_FLAG is no for the package {g}: ignoring it",
                tkit.maintenance_file().display()
            );
            ignored_file_logged = true;
        }
        let in_maintenance = file && tkit.maintenance_allowed;
        if maintenance != Some(in_maintenance) {
            if in_maintenance {
                tracing::warn!("Maintenance mode is enabled for the package {g}");
                tracing::warn!("Disable the maintenance mode to start service monitoring");
            } else if maintenance.is_some() {
                tracing::info!("Maintenance mode is disabled for the package {g}; monitoring guest {g} again");
            }
            maintenance = Some(in_maintenance);
            last_state = None;
            query_failures = 0;
        }

        let state = tokio::select! {
            s = query_settled(hv.clone(), guest.clone()) => s,
            sig = &mut shutdown => return stopped(g, sig),
        };
        if in_maintenance {
            match &state {
                Ok(s) => {
                    if last_state.as_ref() != Some(s) {
                        tracing::info!("guest {g} is {s} (maintenance mode: not checked)");
                        last_state = Some(s.clone());
                    }
                    tracing::debug!("maintenance mode: guest {g} is {s}; not checked ({})", wake.as_str());
                }
                Err(e) => tracing::debug!(
                    "maintenance mode: state of guest {g} unknown ({e}); not checked ({})",
                    wake.as_str()
                ),
            }
        } else {
            let mut failure: Option<String> = None;
            match state {
                Ok(s) if s.is_running() => {
                    query_failures = 0;
                    tracing::debug!("guest {g} is {s} ({})", wake.as_str());
                    // The guest's cmappserver: once per interval, not at start
                    // (a guest just started may still be booting).
                    if let (Some(check), Wake::Tick) = (&opts.check, wake) {
                        let answer = tokio::select! {
                            a = check.ask() => a,
                            sig = &mut shutdown => return stopped(g, sig),
                        };
                        match answer {
                            Ok(_) => tracing::debug!("the cmappserver of guest {g} at {} answers", check.node),
                            Err(e) => {
                                failure = Some(format!(
                                    "its cmappserver at {} did not answer within {} s: {e}",
                                    check.node,
                                    check.timeout.as_secs_f64()
                                ))
                            }
                        }
                    }
                }
                Ok(s) => failure = Some(format!("guest {g} is no longer running (state: {s})")),
                Err(e) if e.is_not_found() => {
                    failure = Some(format!("guest {g} is no longer defined on this host: {e}"))
                }
                Err(e) if wake == Wake::Event => {
                    // Counted once per interval only: a dying subscription
                    // wakes us too, and must not make the count run faster.
                    tracing::debug!("cannot read the state of guest {g} after an event: {e}");
                }
                Err(e) => {
                    query_failures += 1;
                    if query_failures >= opts.max_query_failures {
                        failure = Some(format!(
                            "its state could not be read {query_failures} times in a row: {e}"
                        ));
                    } else {
                        tracing::warn!(
                            "cannot read the state of guest {g} ({query_failures} of {} tries): {e}",
                            opts.max_query_failures
                        );
                    }
                }
            }
            if let Some(detail) = failure {
                // The cycle took time (the state query, the cmappserver
                // check): a maintenance file created meanwhile is honoured,
                // so look again right before failing the package.
                if tkit.maintenance_allowed && tkit.maintenance_file_present() {
                    tracing::warn!(
                        "Maintenance mode was enabled for the package {g} while the guest was being checked: \
                         not failing the package ({detail})"
                    );
                } else {
                    return Err(failed(g, detail));
                }
            }
        }

        wake = tokio::select! {
            _ = ticker.tick() => Wake::Tick,
            Some(event) = events.recv() => match event {
                HvEvent::Lifecycle(line) => {
                    tracing::info!("libvirt event: {line}");
                    Wake::Event
                }
                HvEvent::Ended(why) => {
                    tracing::warn!("lifecycle event subscription ended ({why}); polling every {secs} s and subscribing again");
                    subscription = None;
                    subscribe_at = Some(Instant::now() + opts.interval);
                    Wake::Event
                }
            },
            sig = &mut shutdown => return stopped(g, sig),
        };
    }
}

/// How long a passing state (`in shutdown`, which `virsh destroy` goes
/// through too) may last before it is reported as it is.
const SETTLE: Duration = Duration::from_secs(3);

/// The state, once it is not `in shutdown` any more (bounded by [`SETTLE`]),
/// so that a failure names where the guest ended up (`shut off`).
async fn query_settled(hv: Arc<dyn Hypervisor>, guest: String) -> Result<DomainState, HvError> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let state = query(hv.clone(), guest.clone()).await?;
        if state != DomainState::InShutdown || Instant::now() >= deadline {
            return Ok(state);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the state on the blocking pool, so that signals are served meanwhile.
async fn query(hv: Arc<dyn Hypervisor>, guest: String) -> Result<DomainState, HvError> {
    let g = guest.clone();
    match tokio::task::spawn_blocking(move || hv.state(&g)).await {
        Ok(r) => r,
        Err(e) => Err(HvError::Failed {
            command: format!("state query of {guest}"),
            detail: e.to_string(),
        }),
    }
}

fn failed(guest: &str, detail: String) -> VmError {
    VmError::GuestFailed {
        guest: guest.to_string(),
        detail,
    }
}

fn stopped(guest: &str, sig: StopSignal) -> Result<(), VmError> {
    let name = match sig {
        StopSignal::Term => "SIGTERM",
        StopSignal::Int => "SIGINT",
    };
    tracing::info!("received {name}: the monitor of guest {guest} stops");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::hypervisor::DomainDefinition;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A guest that is shut off; while its state is being read (the cycle
    /// in flight), it can create the maintenance file, as an admin running
    /// `cmappmgr vm maintenance on` at that instant would.
    #[derive(Debug)]
    struct ShutOffGuest {
        maintenance_during_query: Option<PathBuf>,
        queries: AtomicU32,
    }

    impl Hypervisor for ShutOffGuest {
        fn describe(&self) -> String {
            "a fake hypervisor".into()
        }
        fn state(&self, _: &str) -> Result<DomainState, HvError> {
            if let Some(file) = &self.maintenance_during_query {
                std::fs::write(file, "on").unwrap();
            }
            self.queries.fetch_add(1, Ordering::SeqCst);
            Ok(DomainState::ShutOff)
        }
        fn start(&self, _: &str) -> Result<(), HvError> {
            unreachable!()
        }
        fn resume(&self, _: &str) -> Result<(), HvError> {
            unreachable!()
        }
        fn shutdown(&self, _: &str) -> Result<(), HvError> {
            unreachable!()
        }
        fn destroy(&self, _: &str) -> Result<(), HvError> {
            unreachable!()
        }
        fn definition(&self, _: &str) -> Result<DomainDefinition, HvError> {
            unreachable!()
        }
        fn subscribe(
            &self,
            _: &str,
            _: tokio::sync::mpsc::UnboundedSender<HvEvent>,
        ) -> Result<Box<dyn Subscription>, HvError> {
            unreachable!()
        }
    }

    fn toolkit(dir: &std::path::Path) -> Toolkit {
        Toolkit {
            tkit_dir: dir.to_path_buf(),
            maintenance_allowed: true,
            monitor_interval: None,
            tkit_dir_from: "--tkit-dir".into(),
            explicit: true,
        }
    }

    fn options() -> MonitorOptions {
        MonitorOptions {
            interval: Duration::from_millis(10),
            events: false,
            max_query_failures: 3,
            check: None,
        }
    }

    /// Runs the monitor until it returns, or until `queries` cycles have
    /// passed, when it is stopped as SIGTERM would.
    fn monitor_for(hv: Arc<ShutOffGuest>, tkit: Toolkit, queries: u32) -> Result<(), VmError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let seen = hv.clone();
        rt.block_on(async move {
            let stop = async move {
                while seen.queries.load(Ordering::SeqCst) < queries {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                StopSignal::Term
            };
            tokio::time::timeout(
                Duration::from_secs(20),
                monitor(hv, "vm1".into(), tkit, options(), stop),
            )
            .await
            .expect("the monitor neither failed nor stopped")
        })
    }

    #[test]
    fn a_maintenance_file_created_while_a_cycle_is_in_flight_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let hv = Arc::new(ShutOffGuest {
            maintenance_during_query: Some(dir.path().join("maintenance")),
            queries: AtomicU32::new(0),
        });
        // The file did not exist when the cycle began; it does once the
        // state (shut off) comes back: no failure, and the monitor goes on
        // in maintenance mode until it is stopped.
        monitor_for(hv.clone(), toolkit(dir.path()), 3).expect("the package was failed during maintenance");
        assert!(hv.queries.load(Ordering::SeqCst) >= 3);
    }

    #[test]
    fn without_the_maintenance_file_a_shut_off_guest_fails_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let hv = Arc::new(ShutOffGuest {
            maintenance_during_query: None,
            queries: AtomicU32::new(0),
        });
        let e = monitor_for(hv.clone(), toolkit(dir.path()), 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Service monitor detected a failure in guest vm1: guest vm1 is no longer running (state: shut off)"
        );
        assert_eq!(hv.queries.load(Ordering::SeqCst), 1);
    }
}
