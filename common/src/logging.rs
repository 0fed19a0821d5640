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
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::Targets;

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

impl MessageVisitor {
    /// The event's message, then its other fields (`name=value`, the
    /// values as `Debug` shows them), as tracing-subscriber's `fmt` layer
    /// writes them.
    fn of(event: &Event<'_>) -> MessageVisitor {
        let mut v = MessageVisitor::default();
        event.record(&mut v);
        v
    }

    fn text(&self) -> String {
        let fields = if self.message.is_empty() {
            self.fields.trim_start()
        } else {
            &self.fields
        };
        format!("{}{fields}", self.message)
    }
}

impl SyslogLayer {
    fn on_event(&self, level: Level, v: &MessageVisitor) {
        if level > Level::INFO {
            return;
        }
        let line = crate::text::escape(&v.text()).into_owned();
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

/// The process's one subscriber: each event that `filter` lets through as
/// one line on stderr (the level, then the message and fields, as
/// tracing-subscriber's `fmt` layer wrote them before), and to syslog.
///
/// Not tracing-subscriber's `Registry` with layers: it is made for spans,
/// which no program here opens, and its span store allocates and writes
/// 32 KiB of shard pointers (sharded-slab's 4096 threads) as it is made: 32
/// of the 364 KiB of private memory of each idle cmappmgr (BENCHMARKS.md,
/// the 1000 idle managers' private memory).
struct Logger {
    filter: Targets,
    syslog: Option<SyslogLayer>,
}

impl Logger {
    /// The stderr line of an event (its newline included), before escaping.
    fn stderr_line(level: Level, v: &MessageVisitor) -> String {
        let level = match level {
            Level::TRACE => "TRACE",
            Level::DEBUG => "DEBUG",
            Level::INFO => " INFO",
            Level::WARN => " WARN",
            Level::ERROR => "ERROR",
        };
        format!("{level} {}\n", v.text())
    }
}

impl Subscriber for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.would_enable(metadata.target(), metadata.level())
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are not recorded: they all share one id.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        use std::io::Write as _;
        let level = *event.metadata().level();
        let v = MessageVisitor::of(event);
        if event.metadata().target() != SYSLOG_ONLY {
            // One write per event: EscapingWriter escapes one whole line.
            let _ = EscapingWriter(std::io::stderr()).write(Self::stderr_line(level, &v).as_bytes());
        }
        if let Some(syslog) = &self.syslog {
            syslog.on_event(level, &v);
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
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
    let _ = tracing::subscriber::set_global_default(Logger { filter, syslog });
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
        let subscriber = Logger {
            filter: "trace".parse().unwrap(),
            syslog: Some(layer),
        };
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

    /// Gathers the stderr lines [`Logger`] writes, unescaped.
    struct Lines(std::sync::Arc<Mutex<Vec<String>>>);

    impl Subscriber for Lines {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let line = Logger::stderr_line(*event.metadata().level(), &MessageVisitor::of(event));
            self.0.lock().unwrap().push(line);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// The stderr lines are those tracing-subscriber's `fmt` layer wrote
    /// before (without time, target or colours): the package logs, the
    /// tests and admins' scripts read them.
    #[test]
    fn stderr_lines_are_those_of_the_fmt_layer() {
        let events = || {
            tracing::error!("PROGRAM EXIT CODE {}", 3);
            tracing::warn!(code = 3, "careful");
            tracing::info!(service = %"/bin/sleep 5", pid = 42, "stopping (grace {:?})", std::time::Duration::from_secs(5));
            tracing::info!(app = "db", "started");
            tracing::debug!("a detail: {:?}", Some("x"));
            tracing::trace!(n = 1.5, ok = true, "traced");
            tracing::info!(alone = 7);
        };
        let ours = std::sync::Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Lines(ours.clone()), events);
        let theirs = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = theirs.clone();
        let fmt = tracing_subscriber::fmt()
            .with_writer(move || Sink(sink.clone()))
            .with_target(false)
            .without_time()
            .with_ansi(false)
            .with_max_level(Level::TRACE)
            .finish();
        tracing::subscriber::with_default(fmt, events);
        let theirs = String::from_utf8(theirs.lock().unwrap().clone()).unwrap();
        assert_eq!(ours.lock().unwrap().concat(), theirs);
        assert_eq!(theirs.lines().count(), 7, "{theirs}");
    }

    /// A writer into a shared buffer, for the `fmt` layer.
    struct Sink(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The filter applies to both sinks: `RUST_LOG`'s targets and levels.
    #[test]
    fn the_filter_decides_what_is_logged() {
        let logger = Logger {
            filter: "warn,common=debug".parse().unwrap(),
            syslog: None,
        };
        let meta = |target, level| logger.filter.would_enable(target, &level);
        assert!(meta("appmgr", Level::WARN) && !meta("appmgr", Level::INFO));
        assert!(meta("common::x", Level::DEBUG) && !meta("common::x", Level::TRACE));
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
