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
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

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
            return super::EX_USAGE;
        }
    };
    let (code, message) = run(&log);
    log.fatal(message);
    code
}

impl Log {
    /// A log for `probe` that keeps messages of `level` and below; appends to
    /// `guest_file` too when one is given (an error if it cannot be opened).
    pub fn open(probe: &'static str, level: u8, guest_file: Option<&Path>) -> Result<Log, String> {
        let guest = match guest_file {
            None => None,
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open guest log file {}: {e}", path.display()))?,
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
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration in seconds as the user wrote it: `0.2 s`, `60 s`.
pub fn secs(d: std::time::Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Parses a positive number of seconds, fractions allowed (`0.2`, `60`).
pub fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("{s} must be greater than 0"));
    }
    std::time::Duration::try_from_secs_f64(v).map_err(|_| format!("{s} seconds is too long"))
}

/// Checks a `--host_logfile` / `--log-file` value: written by cmappmgr on the
/// host, so here only its form matters.
pub fn parse_host_path(s: &str) -> Result<std::path::PathBuf, String> {
    if s.is_empty() || !s.starts_with('/') {
        return Err(format!("{s:?} is not an absolute path"));
    }
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // leap day
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(timestamp(t), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn seconds_must_be_positive() {
        assert_eq!(parse_seconds("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_seconds("60"), Ok(Duration::from_secs(60)));
        for bad in ["0", "-1", "abc", "", "NaN", "inf", "1e300"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_paths_must_be_absolute() {
        assert!(parse_host_path("/var/adm/x.log").is_ok());
        assert!(parse_host_path("").is_err());
        assert!(parse_host_path("x.log").is_err());
    }
}
