//! systemd readiness and watchdog (`Type=notify`), through `sd-notify`.
//!
//! `READY=1` is sent once every listener is bound and the state directory is
//! adopted (the shims of a previous run reconnected), so `systemctl start`
//! returns only when managers can connect. `STATUS=` says how many processes
//! are monitored and is refreshed when that changes; `WATCHDOG=1` is sent at
//! a quarter of `WatchdogSec=` from the runtime itself, so a wedged runtime
//! gets the daemon (never the applications: `KillMode=process`) restarted.
//! `STOPPING=1` is sent when a stop begins. Without `NOTIFY_SOCKET` (not run
//! by systemd) nothing is sent. The shims do not inherit the variables.
//!
//! Without systemd, the init script asks for a pid file (`--pid-file`): it
//! is written at the same instant as `READY=1`, so its appearance is the
//! readiness signal, and removed when the daemon stops.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::supervisor::Supervisor;

/// The environment variables of the protocol; a child never inherits them.
pub const ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How often the process count is checked for a `STATUS=` update.
const STATUS_PERIOD: Duration = Duration::from_secs(1);

fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

fn status(sup: &Supervisor, max: usize) -> String {
    format!("{} monitored processes (limit {max})", sup.monitored())
}

/// Tells systemd the server is ready, then keeps `STATUS=` current and feeds
/// the watchdog until the runtime ends.
pub fn ready(sup: Arc<Supervisor>, max_processes: usize) {
    if !enabled() {
        return;
    }
    let mut last = status(&sup, max_processes);
    send(&[NotifyState::Ready, NotifyState::Status(&last)]);
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(STATUS_PERIOD, |w| {
        (w / 4).clamp(Duration::from_millis(10), STATUS_PERIOD)
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = status(&sup, max_processes);
            match (now != last, watchdog.is_some()) {
                (true, true) => send(&[NotifyState::Watchdog, NotifyState::Status(&now)]),
                (true, false) => send(&[NotifyState::Status(&now)]),
                (false, true) => send(&[NotifyState::Watchdog]),
                (false, false) => {}
            }
            last = now;
        }
    });
}

/// Tells systemd a stop has begun.
pub fn stopping() {
    if enabled() {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

/// The pid file cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the pid file {}: {source}", path.display())]
pub struct PidFileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The pid file, removed on drop if it still names this process.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes the pid whole (temporary file, then rename) so a reader never
    /// sees a partial number.
    pub fn write(path: PathBuf) -> Result<PidFile, PidFileError> {
        let tmp = path.with_extension("tmp");
        match std::fs::write(&tmp, format!("{}\n", std::process::id())).and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => Ok(PidFile(path)),
            Err(source) => Err(PidFileError { path, source }),
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.0).is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
