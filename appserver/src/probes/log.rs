//! The probes' log: one line per event, on stdout and in the guest log file.
//!
//! A probe runs as a monitored command: cmappserver sends its stdout to the
//! host, where cmappmgr writes it into the host log file the service names.
//! The probe therefore never opens the host log file itself (the guest must
//! not decide which host file gets written); it only checks that the option
//! holds an absolute path. `--guest_logfile` names a file in the guest that
//! gets the same lines appended. Fatal messages also go to syslog, as the
//! original's did.
//!
//! Line format: `2025-01-31T12:00:00.123Z cmapp_net_mon: message` (UTC).

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The guest log file (`--guest_logfile`) cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open guest log file {}: {source}", path.display())]
pub struct GuestLogError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl GuestLogError {
    /// The probe's exit code: its command line names a file it cannot use.
    pub fn exit_code(&self) -> i32 {
        super::EX_USAGE
    }
}

/// Where a probe's lines go, and how much it logs.
#[derive(Debug)]
pub struct Log {
    probe: &'static str,
    level: u8,
    guest: Option<File>,
}

/// What every probe's `main` does once its options are parsed: open the
/// log, watch until something fails, log the reason as fatal, and return the
/// exit code (64 when the guest log file cannot be opened).
pub fn watch(
    probe: &'static str,
    level: u8,
    guest_file: Option<&Path>,
    run: impl FnOnce(&Log) -> (i32, String),
) -> i32 {
    let log = match Log::open(probe, level, guest_file) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("{probe}: {e}");
            return e.exit_code();
        }
    };
    let (code, message) = run(&log);
    log.fatal(message);
    code
}

impl Log {
    /// A log for `probe` that keeps messages of `level` and below; appends to
    /// `guest_file` too when one is given (an error if it cannot be opened).
    pub fn open(probe: &'static str, level: u8, guest_file: Option<&Path>) -> Result<Log, GuestLogError> {
        let guest = match guest_file {
            None => None,
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| GuestLogError {
                        path: path.into(),
                        source,
                    })?,
            ),
        };
        Ok(Log { probe, level, guest })
    }

    /// Logs `message` if the probe's log level is `level` or more.
    pub fn at(&self, level: u8, message: impl Display) {
        if level <= self.level {
            self.write(&message.to_string());
        }
    }

    /// Logs a message that ends the probe, whatever the log level, and sends
    /// it to syslog as well.
    pub fn fatal(&self, message: impl Display) {
        let message = message.to_string();
        self.write(&message);
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: self.probe.to_string(),
            pid: std::process::id(),
        };
        // No syslog socket (a minimal guest) is not worth failing for.
        if let Ok(mut logger) = syslog::unix(formatter) {
            let _ = logger.err(&message);
        }
    }

    fn write(&self, message: &str) {
        let line = format!("{} {}: {message}\n", timestamp(SystemTime::now()), self.probe);
        // A closed stdout or a full disk must not stop the monitoring itself.
        // The file first: whoever saw a line on stdout finds it in the file.
        if let Some(mut file) = self.guest.as_ref() {
            let _ = file.write_all(line.as_bytes());
        }
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// `2025-01-31T12:00:00.123Z`: UTC, so that no time zone database is needed.
fn timestamp(now: SystemTime) -> String {
    humantime::format_rfc3339_millis(now).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // leap day
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(timestamp(t), "2024-12-31T23:59:59.000Z");
    }
}
