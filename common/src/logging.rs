//! Logging: human-readable lines on stderr (the cluster's package log, or the
//! init system's journal) and the same events, from INFO up, to syslog.
//!
//! Syslog goes through the `syslog` crate to the local socket (`/dev/log`);
//! where there is none (a minimal container or initramfs) the program logs to
//! stderr only and says so once at debug level. `RUST_LOG` (a level, or
//! `target=level` pairs) refines the level. `CMAPP_SYSLOG_SOCKET` names
//! another syslog socket (a datagram socket path): for containers whose
//! syslog daemon listens elsewhere, and for tests that read what was logged.
//!
//! Events with the target [`SYSLOG_ONLY`] go to syslog and not to stderr:
//! lines the package log already has in another form (an application's last
//! output lines, which cmappmgr forwards to its own stdout and stderr).
//!
//! Control characters in any event are escaped on both sinks, so that a
//! peer-supplied string can never forge a log line.

use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

type SyslogLogger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

/// The target of events meant for syslog only (`tracing::warn!(target: SYSLOG_ONLY, ...)`).
pub const SYSLOG_ONLY: &str = "syslog_only";

/// The environment variable naming a syslog socket other than `/dev/log`.
pub const SYSLOG_SOCKET_ENV: &str = "CMAPP_SYSLOG_SOCKET";

/// Sends events to syslog.
struct SyslogLayer {
    logger: Mutex<SyslogLogger>,
}

#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for SyslogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let mut v = MessageVisitor::default();
        event.record(&mut v);
        let line = crate::text::escape(&format!("{}{}", v.message, v.fields)).into_owned();
        let Ok(mut logger) = self.logger.lock() else {
            return;
        };
        // A full or vanished syslog socket must never stop the program.
        let _ = match level {
            Level::ERROR => logger.err(line),
            Level::WARN => logger.warning(line),
            _ => logger.info(line),
        };
    }
}

/// Writes each formatted event with its control characters escaped (see
/// [`crate::text::escape_line`]): whatever a peer put in a name, a run string
/// or a certificate, one event stays exactly one line, and no escape
/// sequence reaches a terminal. The formatter hands over one whole event per
/// `write` call.
struct EscapingWriter<W>(W);

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(crate::text::escape_line(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// How much to log on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Debug,
}

/// Installs the global subscriber for `program`. Call once, early.
pub fn init(program: &str, verbosity: Verbosity, use_syslog: bool) {
    let default = match verbosity {
        Verbosity::Quiet => "warn",
        Verbosity::Normal => "info",
        Verbosity::Debug => "debug",
    };
    // `RUST_LOG` in its simple forms (`debug`, `warn,common=debug`); a
    // per-target filter without regular expressions keeps both binaries small.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| default.parse().expect("a level name parses"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(|| EscapingWriter(std::io::stderr()))
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| m.target() != SYSLOG_ONLY));
    let syslog = if use_syslog {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: program.to_string(),
            pid: std::process::id(),
        };
        let logger = match std::env::var_os(SYSLOG_SOCKET_ENV) {
            Some(path) => syslog::unix_custom(formatter, path).ok(),
            None => syslog::unix(formatter).ok(),
        };
        logger.map(|logger| SyslogLayer {
            logger: Mutex::new(logger),
        })
    } else {
        None
    };
    let have_syslog = syslog.is_some();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(syslog)
        .try_init();
    if use_syslog && !have_syslog {
        tracing::debug!("no syslog socket; logging to stderr only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// A syslog layer writing to a socket of our own, and that socket.
    fn syslog_pair(dir: &std::path::Path) -> (SyslogLayer, UnixDatagram) {
        let path = dir.join("log");
        let socket = UnixDatagram::bind(&path).unwrap();
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "cmapp-test".into(),
            pid: 42,
        };
        let logger = syslog::unix_custom(formatter, &path).unwrap();
        (
            SyslogLayer {
                logger: Mutex::new(logger),
            },
            socket,
        )
    }

    #[test]
    fn syslog_gets_info_and_above_with_their_priorities_one_escaped_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let (layer, socket) = syslog_pair(dir.path());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("not for syslog");
            tracing::trace!("nor this");
            tracing::error!(app = "db\nx", "it failed");
            tracing::warn!(code = 3, "careful\x1b[31m");
            tracing::info!(target: SYSLOG_ONLY, "last line");
        });
        socket.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(got.len(), 3, "{got:?}");
        // Facility daemon (3): priority 3*8 + severity (error 3, warning 4, info 6).
        assert!(
            got[0].starts_with("<27>") && got[0].ends_with("cmapp-test[42]: it failed app=\"db\\nx\""),
            "{}",
            got[0]
        );
        assert!(
            got[1].starts_with("<28>") && got[1].ends_with(": careful\\u{1b}[31m code=3"),
            "{}",
            got[1]
        );
        assert!(
            got[2].starts_with("<30>") && got[2].ends_with(": last line"),
            "{}",
            got[2]
        );
    }

    #[test]
    fn stderr_lines_have_their_controls_escaped_and_count_as_written_whole() {
        use std::io::Write;
        let mut w = EscapingWriter(Vec::new());
        let event = b"WARN peer sent \x1b[2Jname\nforged line\n";
        assert_eq!(w.write(event).unwrap(), event.len());
        w.flush().unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "WARN peer sent \\u{1b}[2Jname\\nforged line\n"
        );
    }
}
