//! The monitoring loop of the legacy form: launch or re-attach, forward the
//! application's output, ping, ride out connection loss within
//! `cmappserver_timeout`, and exit with the application's exit code.
//!
//! ```text
//!   connect ──► launch/attach ──► watch ──► Exited ──► ack ──► exit(code)
//!      ▲                            │
//!      └── reconnect (attach only) ◄┘ connection lost / pings unanswered
//! ```
//! The "unreachable" clock starts at the last proof that the server serves
//! us: an answered ping (or the first connection). Answering a launch, or
//! accepting connections, is not such proof: a server that does that but
//! never answers pings is given up on after `cmappserver_timeout`, like an
//! unreachable one. Only when the clock reaches `cmappserver_timeout` does
//! the manager give up.
//!
//! A halt (SIGTERM) leaves the application running, as the original does;
//! with `-stop_on_halt` (or `stopOnHalt=yes`) it stops it through
//! [`Client::stop_process`], the one stop path.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::time::Duration;

use common::config::ManagerConfig;
use common::logging;
use common::message::{ErrorKind, Event, ExitStatus, Forward, InstanceId, Launch, Ping, Request, Stream, TailLine};
use common::service::ServiceSpec;
use tokio::time::Instant;

use crate::cli::MonitorArgs;
use crate::client::{Client, Connector};
use crate::error::{ClientError, ConfigError};
use crate::exit;

/// How one watch of a connection ended.
enum WatchEnd {
    /// Exit the manager with this code.
    Exit(i32),
    /// The connection is lost; reconnect while time is left.
    Lost(String),
}

/// Runs the legacy form; returns the exit code.
pub async fn run(args: MonitorArgs, conf: ManagerConfig) -> i32 {
    let host_log = match open_host_log(&args.run) {
        Ok(f) => f,
        Err(e) => {
            let e = ClientError::from(e);
            tracing::error!("{e}");
            return e.exit_code();
        }
    };
    let connector = match Connector::new(&conf, &args.node) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return e.exit_code();
        }
    };
    let mut stop_signal = match common::shutdown::shutdown_signal() {
        Ok(s) => Box::pin(s),
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    // Every line only on request, and always for the built-in probes: their
    // host log files are made of their lines.
    let probe = ServiceSpec::parse(args.run.clone(), None).is_ok_and(|s| s.probe.is_some());
    let forward =
        (probe || (!args.no_forward_output && (args.forward_output || conf.forward_output))).then_some(Forward {
            lines_per_sec: conf.forward_lines_per_sec,
            bytes_per_sec: conf.forward_bytes_per_sec,
        });
    let ping_every = ping_interval(&conf, args.timeout);
    let mut w = Watcher {
        args: &args,
        connector,
        ping_every,
        stop_timeout: conf.stop_timeout,
        stop_on_halt: !args.detach && (args.stop_on_halt || conf.stop_on_halt),
        instance: None,
        last_heard: Instant::now(),
        connected_once: false,
        stopping: None,
        sink: Sink {
            host_log,
            tail: VecDeque::new(),
        },
        forward,
    };
    let mut last_error: Option<String> = None;
    loop {
        let deadline = w.last_heard + args.timeout;
        if let (Some(why), true) = (&last_error, Instant::now() >= deadline) {
            tracing::error!(
                "Lost the node {}: cmappserver has not answered for {} s (cmappserver_timeout {} s); last error: {why}",
                args.node,
                w.last_heard.elapsed().as_secs(),
                args.timeout.as_secs_f64()
            );
            tracing::error!("PROGRAM EXIT CODE {}", exit::UNREACHABLE);
            return exit::UNREACHABLE;
        }
        let connect = w.connector.connect(deadline);
        let client = tokio::select! {
            c = connect => c,
            sig = &mut stop_signal, if w.stopping.is_none() => {
                // Halted while the guest is unreachable: nothing can be stopped.
                if w.stop_on_halt {
                    tracing::warn!("received {sig:?} while cmappserver on {} is unreachable; the application could not be stopped", args.node);
                } else {
                    tracing::info!("received {sig:?} while cmappserver on {} is unreachable; the application keeps running in the guest", args.node);
                }
                return exit::HALTED;
            }
        };
        let mut client = match client {
            Ok(c) => c,
            Err(e) if e.is_retryable() => {
                let waited = w.last_heard.elapsed().as_secs();
                let why = last_error.map(|l| format!(" (before that: {l})")).unwrap_or_default();
                match w.instance {
                    None => tracing::error!("Could not connect to the node {}: {e}", args.node),
                    Some(_) => tracing::error!(
                        "Lost the node {}: cmappserver unreachable for {waited} s (cmappserver_timeout {} s); last error: {e}{why}",
                        args.node,
                        args.timeout.as_secs_f64()
                    ),
                }
                // The line the original prints after it, which admins' scripts look for.
                tracing::error!("PROGRAM EXIT CODE {}", exit::UNREACHABLE);
                return exit::UNREACHABLE;
            }
            Err(e) => {
                tracing::error!("Could not connect to the node {}: {e}", args.node);
                return e.exit_code();
            }
        };
        if !w.connected_once {
            // The guest may have been booting: its first answer restarts the clock.
            w.connected_once = true;
            w.last_heard = Instant::now();
        }
        match w.watch(&mut client, &mut stop_signal).await {
            WatchEnd::Exit(code) => {
                client.close().await;
                return code;
            }
            WatchEnd::Lost(why) => {
                tracing::warn!("connection to cmappserver on {} lost: {why}; reconnecting", args.node);
                last_error = Some(why);
            }
        }
    }
}

/// A deliberate defect for the fault campaign (`tests/src/campaign`) to
/// detect: `CMAPP_TEST_FAULT=<name>` in cmappmgr's environment. Honoured
/// only in debug builds: a release build ignores it. `ack-held-up`: an exit
/// the manager saw happen is reported without its acknowledgement reaching
/// cmappserver and without waiting for `Acked` (as before 2702f5a, with the
/// acknowledgement held up for good), so the cluster's next start is handed
/// the same exit (and acknowledges it).
fn test_fault(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("CMAPP_TEST_FAULT").is_ok_and(|v| v == name)
}

/// How often a manager pings: `pingInterval`, or a quarter of the timeout
/// within 0.2–5 s.
pub fn ping_interval(conf: &ManagerConfig, timeout: Duration) -> Duration {
    conf.ping_interval
        .unwrap_or_else(|| (timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5)))
}

struct Watcher<'a> {
    args: &'a MonitorArgs,
    connector: Connector,
    ping_every: Duration,
    stop_timeout: Duration,
    /// Stop the application on SIGTERM (otherwise leave it running).
    stop_on_halt: bool,
    /// The process this manager watches, once launched.
    instance: Option<InstanceId>,
    /// The last answered ping (or the first connection): the start of the "unreachable" clock.
    last_heard: Instant,
    connected_once: bool,
    /// Set once a stop was requested: the deadline for the process to be gone.
    stopping: Option<Instant>,
    sink: Sink,
    /// Every output line, within this rate limit; `None`: only the last lines, with the exit.
    forward: Option<Forward>,
}

impl Watcher<'_> {
    async fn watch(
        &mut self,
        client: &mut Client,
        stop_signal: &mut (impl std::future::Future<Output = common::shutdown::StopSignal> + Unpin),
    ) -> WatchEnd {
        let launch = Launch {
            run: self.args.run.clone(),
            name: self.args.name.clone(),
            attach_only: self.instance.clone(),
            forward: self.forward,
        };
        // A launch may wait for the process to start, but never past the give-up time.
        let left = (self.last_heard + self.args.timeout).saturating_duration_since(Instant::now());
        let limit = (self.ping_every * 3 + Duration::from_secs(30)).min(left.max(Duration::from_millis(100)));
        // A server that answers the launch with anything else broke the
        // protocol: `Client::launch` says so (exit 76).
        let started = match client.launch(launch, limit).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.refused(e.kind, &e.message),
            Err(e) if e.is_retryable() => return WatchEnd::Lost(e.to_string()),
            Err(e) => {
                tracing::error!("{e}");
                return WatchEnd::Exit(e.exit_code());
            }
        };
        let first_launch = self.instance.is_none();
        match (&self.instance, started.attached) {
            (Some(_), _) => tracing::info!(
                "re-attached to {} (pid {}) on {}",
                started.service,
                started.pid,
                self.args.node
            ),
            (None, true) => tracing::info!(
                "attached to running {} (pid {}) on {}",
                started.service,
                started.pid,
                self.args.node
            ),
            (None, false) => tracing::info!(
                "started {} (pid {}) on {}",
                started.service,
                started.pid,
                self.args.node
            ),
        }
        let id = started.id.clone();
        self.instance = Some(id.clone());
        if self.stopping.is_some() {
            // Re-attached during a stop: ask again (harmless if it ended meanwhile).
            return self.stop(client, &id).await;
        }

        let dead_after = (self.ping_every * 3).max(Duration::from_secs(1));
        let mut ticker = PingClock::new(self.ping_every);
        let mut seq = 0u64;
        // The last sign of life on this connection: the launch's answer, then
        // every message. The first launch's answer restarts the
        // cmappserver_timeout clock too: a launch that took seconds (a loaded
        // guest) must not count as seconds of silence. A re-attach's answer
        // does not: a server that answers launches but never pings must not
        // keep the manager alive past its timeout by being reconnected to.
        let mut alive_at = Instant::now();
        if first_launch {
            self.last_heard = alive_at;
        }
        loop {
            tokio::select! {
                ev = client.next_event() => {
                    let ev = match ev {
                        Ok(Some(ev)) => ev,
                        Ok(None) => return WatchEnd::Lost("cmappserver closed the connection".into()),
                        Err(e) if e.is_retryable() => return WatchEnd::Lost(e.to_string()),
                        Err(e) => {
                            tracing::error!("{e}");
                            return WatchEnd::Exit(e.exit_code());
                        }
                    };
                    alive_at = Instant::now();
                    self.last_heard = alive_at;
                    match ev {
                        Event::Pong(_) => {}
                        Event::Output(o) if o.id == id => self.sink.line(o.stream, &o.line),
                        Event::Exited(x) if x.id == id => {
                            self.print_tail(&started.service, &x.tail);
                            // The deliberate defect holds up the first report of
                            // an exit only: the next start, handed it again,
                            // acknowledges, and the service goes on.
                            let held_up = test_fault("ack-held-up") && !started.exited;
                            return self.exited(client, &id, x.status, held_up).await;
                        }
                        Event::ShuttingDown(s) => {
                            if s.processes_keep_running {
                                tracing::warn!("{}; waiting up to {} s for it to come back", s.reason, self.args.timeout.as_secs_f64());
                            } else {
                                tracing::warn!("{}", s.reason);
                            }
                        }
                        Event::Superseded(a) if a.id == id => {
                            tracing::error!("an older cmappserver gave {} to another cmappmgr; this one exits (upgrade cmappserver: current ones let several managers watch one process)", started.service);
                            return WatchEnd::Exit(exit::UNREACHABLE);
                        }
                        Event::Error(e) => tracing::warn!("cmappserver: {}", e.message),
                        _ => {}
                    }
                }
                _ = ticker.tick() => {
                    if alive_at.elapsed() >= dead_after {
                        return WatchEnd::Lost(format!("no answer to pings for {:.1} s", alive_at.elapsed().as_secs_f64()));
                    }
                    if self.last_heard.elapsed() >= self.args.timeout {
                        return WatchEnd::Lost(format!("no answer to pings for {:.1} s", self.last_heard.elapsed().as_secs_f64()));
                    }
                    seq += 1;
                    if let Err(e) = client.send(&Request::Ping(Ping { seq })).await {
                        return WatchEnd::Lost(e.to_string());
                    }
                }
                sig = &mut *stop_signal, if self.stopping.is_none() => {
                    if !self.stop_on_halt {
                        tracing::info!("received {sig:?}: detaching; {} keeps running in the guest", started.service);
                        return WatchEnd::Exit(exit::HALTED);
                    }
                    tracing::info!("received {sig:?}: stopping {} (pid {})", started.service, started.pid);
                    self.stopping = Some(Instant::now() + self.stop_timeout);
                    return self.stop(client, &id).await;
                }
            }
        }
    }

    /// Stops the process (the halt with `stop_on_halt`) before the deadline
    /// set in `stopping`, forwarding its last output meanwhile.
    async fn stop(&mut self, client: &mut Client, id: &InstanceId) -> WatchEnd {
        let deadline = self.stopping.unwrap_or_else(Instant::now);
        let left = deadline.saturating_duration_since(Instant::now());
        let sink = &mut self.sink;
        let result = client
            .stop_process(id, left, |ev| {
                if let Event::Output(o) = ev {
                    if o.id == *id {
                        sink.line(o.stream, &o.line);
                    }
                }
            })
            .await;
        match result {
            Ok(status) => {
                self.last_heard = Instant::now();
                if let Err(e) = status.check() {
                    tracing::error!("cmappserver on {} broke the protocol: {e}", self.args.node);
                    return WatchEnd::Exit(exit::PROTOCOL);
                }
                let code = status.exit_code();
                tracing::info!("application stopped on request ({status}); PROGRAM EXIT CODE {code}");
                WatchEnd::Exit(exit::HALTED)
            }
            Err(e) if e.is_retryable() && Instant::now() < deadline => WatchEnd::Lost(e.to_string()),
            Err(e) => {
                tracing::error!(
                    "could not stop the application within stopTimeout ({} s): {e}",
                    self.stop_timeout.as_secs_f64()
                );
                WatchEnd::Exit(e.exit_code())
            }
        }
    }

    /// The application's last lines, before its exit line, when its output
    /// was not forwarded line by line (then they are already out).
    fn print_tail(&mut self, service: &str, tail: &[TailLine]) {
        if self.forward.is_some() || tail.is_empty() {
            return;
        }
        tracing::info!(
            "last {} lines of output of {service} (all of it: `cmappmgr logs -node {} ...` in the guest's log):",
            tail.len(),
            self.args.node
        );
        for l in tail {
            self.sink.line(l.stream, &l.line);
        }
    }

    /// cmappserver's error reply: said in the log, then the exit code
    /// `exit::for_refusal` gives it (a server shutting down is a lost node).
    fn refused(&self, kind: ErrorKind, message: &str) -> WatchEnd {
        let node = &self.args.node;
        match kind {
            ErrorKind::ShuttingDown => return WatchEnd::Lost(message.to_string()),
            ErrorKind::NotFound | ErrorKind::Version => tracing::error!("{message}"),
            ErrorKind::Limit => tracing::error!("cmappserver on {node} refused to start the application: {message}"),
            ErrorKind::BadRequest => tracing::error!("cmappserver on {node} refused the run string: {message}"),
            ErrorKind::Internal => tracing::error!("cmappserver on {node} could not start the application: {message}"),
            ErrorKind::Forbidden => tracing::error!("cmappserver on {node} refused by its command policy: {message}"),
        }
        WatchEnd::Exit(exit::for_refusal(kind))
    }

    /// `held_up`: the deliberate defect `ack-held-up` ([`test_fault`]).
    async fn exited(&mut self, client: &mut Client, id: &InstanceId, status: ExitStatus, held_up: bool) -> WatchEnd {
        // Acknowledge, so the server forgets the status only once we have
        // it, and wait for its reply: the cluster starts the service again
        // the moment we exit, and a start that reached the server before
        // our acknowledgement (held up by a lost segment or a short
        // partition) would attach to this record and report this exit a
        // second time, starting nothing.
        if held_up {
            // The defect this wait mends, back for the fault campaign to
            // catch: the acknowledgement held up on the way for good.
        } else if let Err(e) = client.ack(id, Duration::from_secs(5)).await {
            tracing::warn!("exit status not acknowledged by cmappserver: {e}");
        }
        if let Err(e) = status.check() {
            tracing::error!("cmappserver on {} broke the protocol: {e}", self.args.node);
            return WatchEnd::Exit(exit::PROTOCOL);
        }
        let code = status.exit_code();
        if code != 0 {
            // The reason, for whoever reads syslog rather than the package log.
            let service = self.args.run.join(" ");
            for line in &self.sink.tail {
                tracing::warn!(target: logging::SYSLOG_ONLY, "{service}: {line}");
            }
        }
        match &status {
            ExitStatus::Code(0) => tracing::info!("PROGRAM EXIT CODE {code}"),
            ExitStatus::Code(_) => tracing::warn!("PROGRAM EXIT CODE {code}"),
            ExitStatus::Lost { .. } => tracing::error!("{status}; PROGRAM EXIT CODE {code}"),
            _ => tracing::warn!("application {status}; PROGRAM EXIT CODE {code}"),
        }
        WatchEnd::Exit(code)
    }
}

/// The clock of the pings: one tick every interval, the first one interval
/// after the launch's answer (which has just shown the connection alive; a
/// ping at once cost the server and the manager a round trip in the very
/// milliseconds a short application runs and exits, and a reconnect storm
/// one extra ping per manager). A timerfd, so that an idle manager wakes up once per tick:
/// tokio's timer wheel wakes a parked runtime at each wheel level's slot
/// boundary on the way to a far deadline (at 5 s: after about 4 s, then at
/// the deadline), and re-registering its timer wakes the driver once more.
/// With it an idle manager slept three times per ping (the two timer
/// wake-ups and the pong); now twice, the tick and the pong. Should the
/// kernel refuse a timerfd (out of descriptors), tokio's interval does the
/// same job with its extra wake-up.
pub(crate) enum PingClock {
    Fd(tokio::io::unix::AsyncFd<TimerFd>, Duration),
    Tokio(tokio::time::Interval),
}

/// A timerfd, as tokio's `AsyncFd` takes it.
pub(crate) struct TimerFd(nix::sys::timerfd::TimerFd);

impl std::os::fd::AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl PingClock {
    pub(crate) fn new(every: Duration) -> PingClock {
        match Self::timerfd(every) {
            Ok(fd) => PingClock::Fd(fd, every),
            Err(e) => {
                tracing::debug!("no timerfd for the pings ({e}); using the runtime's timer");
                Self::tokio(every)
            }
        }
    }

    fn tokio(every: Duration) -> PingClock {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        PingClock::Tokio(t)
    }

    fn timerfd(every: Duration) -> std::io::Result<tokio::io::unix::AsyncFd<TimerFd>> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{ClockId, Expiration, TimerFlags, TimerSetTimeFlags};
        let fd = nix::sys::timerfd::TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // The first tick one interval on: the launch's answer has just shown
        // the connection alive.
        let every = TimeSpec::from_duration(every.max(Duration::from_millis(1)));
        fd.set(Expiration::IntervalDelayed(every, every), TimerSetTimeFlags::empty())?;
        // Deprecated because an `AsRawFd` value need not own its descriptor
        // (it could be closed and reused while registered); this one owns it
        // (an `OwnedFd` inside, never handed out), and `AsyncFd` deregisters
        // it before dropping it. The sound replacement is an `unsafe fn`,
        // which this workspace forbids.
        #[allow(deprecated)]
        tokio::io::unix::AsyncFd::with_interest(TimerFd(fd), tokio::io::Interest::READABLE)
    }

    /// The next tick. Ticks missed while the manager was not running come
    /// as one (the kernel counts them; the count is not needed).
    pub(crate) async fn tick(&mut self) {
        loop {
            let failed = match self {
                PingClock::Tokio(t) => {
                    t.tick().await;
                    return;
                }
                PingClock::Fd(fd, _) => match fd.readable().await {
                    Err(e) => e,
                    Ok(mut ready) => {
                        let mut count = [0u8; 8];
                        match ready.try_io(|t| {
                            use std::os::fd::AsFd;
                            nix::unistd::read(t.get_ref().0.as_fd(), &mut count).map_err(std::io::Error::from)
                        }) {
                            Ok(Ok(_)) => {
                                // One read takes every expiration so far: the
                                // descriptor is not readable until the next.
                                ready.clear_ready();
                                return;
                            }
                            Ok(Err(e)) => e,
                            // Not expired yet: readiness cleared, wait again.
                            Err(_) => continue,
                        }
                    }
                },
            };
            // Never seen; the pings must go on whatever happens to the descriptor.
            let PingClock::Fd(_, every) = self else { continue };
            tracing::debug!("the ping timerfd failed ({failed}); using the runtime's timer");
            *self = PingClock::tokio(*every);
        }
    }
}

/// Output lines of a failed application copied to syslog.
const TAIL_LINES: usize = 5;
/// Each copied line is cut to this many bytes.
const TAIL_LINE_LEN: usize = 512;

/// Where the application's output goes: the host log file when the run
/// string names one, our stdout or stderr, and a short tail kept for syslog.
struct Sink {
    host_log: Option<File>,
    /// The last [`TAIL_LINES`] lines, each cut to [`TAIL_LINE_LEN`] bytes.
    tail: VecDeque<String>,
}

impl Sink {
    fn line(&mut self, stream: Stream, line: &str) {
        if let Some(f) = &mut self.host_log {
            let _ = writeln!(f, "{line}");
        }
        let _ = match stream {
            Stream::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            Stream::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
        };
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        let mut end = line.len().min(TAIL_LINE_LEN);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        // Control characters never reach syslog as such.
        let kept = line[..end]
            .chars()
            .map(|c| {
                if c.is_control() {
                    format!("\\x{:02x}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect();
        self.tail.push_back(kept);
    }
}

/// The host log file a probe's run string names (`--host_logfile` for the
/// LAN probe, `-O`/`--log-file` for the disk probe, in every spelling the
/// probe accepts: the probe's own option definitions find it). cmappmgr
/// opens it itself: the host's own configuration names it, and the guest
/// never decides which host file gets written.
fn open_host_log(run: &[String]) -> Result<Option<File>, ConfigError> {
    let Ok(spec) = ServiceSpec::parse(run.to_vec(), None) else {
        return Ok(None);
    };
    let Some(path) = spec.host_log_file() else {
        return Ok(None);
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map(Some)
        .map_err(|source| ConfigError::HostLog { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_ping_waits_one_interval_after_the_launchs_answer() {
        let every = Duration::from_millis(60);
        assert!(matches!(PingClock::new(every), PingClock::Fd(..)), "a timerfd here");
        for make in [PingClock::new, PingClock::tokio] {
            let t0 = std::time::Instant::now();
            let mut clock = make(every);
            clock.tick().await;
            assert!(t0.elapsed() >= Duration::from_millis(55), "{:?}", t0.elapsed());
            clock.tick().await;
            assert!(t0.elapsed() >= Duration::from_millis(115), "{:?}", t0.elapsed());
        }
    }
}
