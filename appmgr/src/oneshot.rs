//! One-shot verbs for cluster managers whose actions are short commands
//! (Pacemaker runs an agent's start, stop and monitor and expects each to
//! return; see `packaging/ocf/guestapp`). They take the legacy form's options
//! and run string, and exit with OCF's codes (`exit::ocf`), one to one:
//!
//! | verb      | does                                                              | exits         |
//! |-----------|-------------------------------------------------------------------|---------------|
//! | `start`   | launch or attach; return once the process runs (it keeps running) | 0 1 2 5 6     |
//! | `monitor` | running: 0; ended: 7, its code logged and acknowledged (once); guest unreachable within the timeout: 1 | 0 7 1 6 |
//! | `stop`    | TERM to the process group, KILL after the grace; return once it is gone; not running is success | 0 1 6 |
//! | `watch`   | hold the monitoring connection; when the application ends, acknowledge its exit and run `-on_exit` once | 0 2 6 |
//!
//! All of them use the client's one launch/attach path ([`Client::launch`])
//! and one stop path ([`Client::stop_process`]).
//!
//! **Who reports an exit.** An exit status is reported by whoever
//! acknowledges it, and only once: the watcher (attached to the process)
//! acknowledges and then runs its command; `monitor`, which never attaches,
//! acknowledges only a status no manager is attached to, and otherwise leaves
//! it to the attached one. A watcher that loses its connection and comes back
//! to find the status collected says nothing: the monitor has reported it.

use std::time::Duration;

use common::config::ManagerConfig;
use common::message::{ErrorKind, ErrorReply, Event, ExitStatus, InstanceId, Launch, Ping, Request, Started};
use common::service::ServiceSpec;
use tokio::time::Instant;

use crate::cli::{OneShotArgs, Verb};
use crate::client::{Client, ClientError, Connector};
use crate::exit::ocf;

/// One request and its reply, once connected.
const CALL: Duration = Duration::from_secs(10);
/// A launch: the server may be starting the supervisor of the process.
const LAUNCH: Duration = Duration::from_secs(40);
/// The `-on_exit` command may take this long.
const REPORT: Duration = Duration::from_secs(60);

/// Runs one verb; returns its OCF exit code.
pub async fn run(verb: Verb, a: OneShotArgs, conf: ManagerConfig) -> i32 {
    let spec = match ServiceSpec::parse(a.run.clone(), a.name.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("bad run string: {e}");
            return ocf::ERR_ARGS;
        }
    };
    // Every verb run for one service on this host is one manager to the
    // server (start, the watcher, monitor and stop of one cluster resource).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let manager = format!("cmappmgr one-shot on {} for {}", host.trim(), spec.key());
    let connector = match Connector::new(&conf, &a.node) {
        Ok(c) => c.with_manager(manager),
        Err(e) => {
            tracing::error!("{e}");
            return e.ocf_exit_code();
        }
    };
    let v = OneShot {
        service: spec.display(),
        spec,
        connector,
        stop_timeout: conf.stop_timeout,
        ping_every: crate::watch::ping_interval(&conf, a.timeout),
        a,
    };
    match verb {
        Verb::Start => v.start().await,
        Verb::Monitor => v.monitor().await,
        Verb::Stop => v.stop().await,
        Verb::Watch => v.watch().await,
    }
}

struct OneShot {
    a: OneShotArgs,
    spec: ServiceSpec,
    /// The service as logs show it.
    service: String,
    connector: Connector,
    stop_timeout: Duration,
    ping_every: Duration,
}

impl OneShot {
    fn launch_request(&self, attach_only: Option<InstanceId>) -> Launch {
        Launch {
            run: self.a.run.clone(),
            name: self.a.name.clone(),
            attach_only,
            forward: None,
        }
    }

    /// Connects within `cmappserver_timeout`, or says why not.
    async fn connect(&self) -> Result<Client, i32> {
        let deadline = Instant::now() + self.a.timeout;
        self.connector.connect(deadline).await.map_err(|e| {
            if e.is_retryable() {
                tracing::error!(
                    "Could not connect to the node {}: cmappserver unreachable for {} s (cmappserver_timeout): {e}",
                    self.a.node,
                    self.a.timeout.as_secs_f64()
                );
            } else {
                tracing::error!("Could not connect to the node {}: {e}", self.a.node);
            }
            e.ocf_exit_code()
        })
    }

    fn client_error(&self, e: &ClientError) -> i32 {
        tracing::error!("cmappserver on {}: {e}", self.a.node);
        e.ocf_exit_code()
    }

    fn refused(&self, e: &ErrorReply) -> i32 {
        tracing::error!("cmappserver on {} refused {}: {}", self.a.node, self.service, e.message);
        match e.kind {
            ErrorKind::BadRequest => ocf::ERR_ARGS,
            ErrorKind::Version => ocf::ERR_INSTALLED,
            ErrorKind::Forbidden => ocf::ERR_PERM,
            _ => ocf::ERR_GENERIC,
        }
    }

    /// Waits for the `Exited` that follows a `Started` with `exited` set (or
    /// a stop), acknowledges it and returns the status.
    async fn collect(&self, c: &mut Client, id: &InstanceId) -> Result<ExitStatus, ClientError> {
        let status = wait_exit(c, id, CALL).await?;
        c.ack(id, CALL).await?;
        Ok(status)
    }

    async fn start(&self) -> i32 {
        let mut c = match self.connect().await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let code = self.start_on(&mut c).await;
        c.close().await;
        code
    }

    async fn start_on(&self, c: &mut Client) -> i32 {
        // An earlier instance whose exit nobody collected is collected first
        // (logged, acknowledged), then a new one starts: two rounds at most.
        for _ in 0..2 {
            let started = match c.launch(self.launch_request(None), LAUNCH).await {
                Err(e) => return self.client_error(&e),
                Ok(Err(refusal)) => return self.refused(&refusal),
                Ok(Ok(s)) => s,
            };
            if started.exited {
                match self.collect(c, &started.id).await {
                    Ok(status) => tracing::warn!(
                        "the previous instance of {} on {} had ended ({status}); PROGRAM EXIT CODE {}; starting it again",
                        self.service,
                        self.a.node,
                        status.exit_code()
                    ),
                    Err(e) => return self.client_error(&e),
                }
                continue;
            }
            // A program that could not be started has no pid, and its exit
            // follows; one that dies at once may end before a ping's round
            // trip comes back: report either now rather than at the first monitor.
            let settled = if started.pid == 0 {
                wait_exit(c, &started.id, CALL).await.map(Some)
            } else {
                settle(c, &started.id).await
            };
            return match settled {
                Err(e) => self.client_error(&e),
                Ok(None) => {
                    let how = if started.attached { "already running" } else { "started" };
                    tracing::info!("{how} {} (pid {}) on {}", self.service, started.pid, self.a.node);
                    ocf::SUCCESS
                }
                Ok(Some(status)) => {
                    if let Err(e) = c.ack(&started.id, CALL).await {
                        tracing::warn!("exit status not acknowledged: {e}");
                    }
                    tracing::error!(
                        "{} on {} ended as soon as it started: {status}; PROGRAM EXIT CODE {}",
                        self.service,
                        self.a.node,
                        status.exit_code()
                    );
                    match status {
                        ExitStatus::SpawnFailed { .. } => ocf::ERR_INSTALLED,
                        _ => ocf::ERR_GENERIC,
                    }
                }
            };
        }
        tracing::error!("{} on {} keeps ending as soon as it starts", self.service, self.a.node);
        ocf::ERR_GENERIC
    }

    async fn monitor(&self) -> i32 {
        let mut c = match self.connect().await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let code = match c.find(&self.spec, CALL).await {
            Err(e) => self.client_error(&e),
            Ok(None) => {
                tracing::info!("{} is not running on {}", self.service, self.a.node);
                ocf::NOT_RUNNING
            }
            Ok(Some(p)) => match &p.exit {
                None => {
                    tracing::debug!("{} (pid {}) runs on {}", self.service, p.pid, self.a.node);
                    ocf::SUCCESS
                }
                Some(status) if p.attached => {
                    // The attached manager (the watcher) acknowledges and reports it.
                    tracing::info!(
                        "{} on {} ended ({status}); the manager attached to it reports it",
                        self.service,
                        self.a.node
                    );
                    ocf::NOT_RUNNING
                }
                Some(status) => {
                    match c.ack(&p.id, CALL).await {
                        Ok(()) => tracing::error!(
                            "{} on {} ended: {status}; PROGRAM EXIT CODE {}",
                            self.service,
                            self.a.node,
                            status.exit_code()
                        ),
                        Err(e) => tracing::warn!(
                            "{} on {} ended ({status}), but its exit status was not acknowledged: {e}",
                            self.service,
                            self.a.node
                        ),
                    }
                    ocf::NOT_RUNNING
                }
            },
        };
        c.close().await;
        code
    }

    async fn stop(&self) -> i32 {
        let mut c = match self.connect().await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let code = self.stop_on(&mut c).await;
        c.close().await;
        code
    }

    async fn stop_on(&self, c: &mut Client) -> i32 {
        let p = match c.find(&self.spec, CALL).await {
            Err(e) => return self.client_error(&e),
            Ok(None) => {
                tracing::info!("{} is not running on {}: nothing to stop", self.service, self.a.node);
                return ocf::SUCCESS;
            }
            Ok(Some(p)) => p,
        };
        let started = match c.launch(self.launch_request(Some(p.id.clone())), LAUNCH).await {
            Err(e) => return self.client_error(&e),
            Ok(Err(e)) if e.kind == ErrorKind::NotFound => {
                tracing::info!("{} ended on {} meanwhile: nothing to stop", self.service, self.a.node);
                return ocf::SUCCESS;
            }
            Ok(Err(refusal)) => return self.refused(&refusal),
            Ok(Ok(s)) => s,
        };
        if started.exited {
            return match self.collect(c, &started.id).await {
                Ok(status) => {
                    tracing::info!(
                        "{} on {} had already ended ({status}); PROGRAM EXIT CODE {}",
                        self.service,
                        self.a.node,
                        status.exit_code()
                    );
                    ocf::SUCCESS
                }
                Err(e) => self.client_error(&e),
            };
        }
        tracing::info!("stopping {} (pid {}) on {}", self.service, started.pid, self.a.node);
        match c.stop_process(&started.id, self.stop_timeout, |_| {}).await {
            Ok(status) => {
                tracing::info!("stopped {} on {} ({status})", self.service, self.a.node);
                ocf::SUCCESS
            }
            Err(e) => {
                tracing::error!("could not stop {} on {}: {e}", self.service, self.a.node);
                ocf::ERR_GENERIC
            }
        }
    }

    async fn watch(&self) -> i32 {
        let on_exit = match common::service::split_run(&[self.a.on_exit.clone().unwrap_or_default()]) {
            Ok(argv) => argv,
            Err(e) => {
                tracing::error!("bad -on_exit command: {e}");
                return ocf::ERR_ARGS;
            }
        };
        let mut stop_signal = match common::shutdown::shutdown_signal() {
            Ok(s) => Box::pin(s),
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return ocf::ERR_GENERIC;
            }
        };
        let lifeline = match self.a.while_pid.map(Lifeline::new) {
            Some(None) => {
                tracing::info!(
                    "process {} is gone already: nothing to watch for",
                    self.a.while_pid.unwrap_or(0)
                );
                return ocf::SUCCESS;
            }
            Some(Some(l)) => Some(l),
            None => None,
        };
        let mut end = Box::pin(async {
            tokio::select! {
                sig = &mut stop_signal => format!("received {sig:?}"),
                pid = async {
                    match &lifeline {
                        Some(l) => l.gone().await,
                        None => std::future::pending().await,
                    }
                } => format!("process {pid} (the resource's executor) is gone"),
            }
        });
        let mut w = Watch {
            one: self,
            instance: None,
        };
        let outcome = tokio::select! {
            o = w.run() => o,
            why = &mut end => Outcome::Quit(why),
        };
        match outcome {
            Outcome::Quit(why) => {
                tracing::info!("stopped watching {} on {}: {why}", self.service, self.a.node);
                ocf::SUCCESS
            }
            Outcome::Fatal(code) => code,
            Outcome::Exited(status) => {
                tracing::error!(
                    "{} on {} ended: {status}; PROGRAM EXIT CODE {}; reporting it: {}",
                    self.service,
                    self.a.node,
                    status.exit_code(),
                    on_exit.join(" ")
                );
                self.report(&on_exit, &status).await;
                ocf::SUCCESS
            }
        }
    }

    /// Runs the `-on_exit` command once, with the exit in its environment.
    async fn report(&self, argv: &[String], status: &ExitStatus) {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("CMAPP_EXIT_CODE", status.exit_code().to_string())
            .env("CMAPP_EXIT_STATUS", status.to_string())
            .env("CMAPP_SERVICE", &self.service)
            .env("CMAPP_NODE", &self.a.node)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let t0 = Instant::now();
        match tokio::time::timeout(REPORT, cmd.output()).await {
            Err(_) => tracing::error!("{} did not finish within {} s", argv[0], REPORT.as_secs()),
            Ok(Err(e)) => tracing::error!("cannot run {}: {e}", argv[0]),
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
                if out.status.success() {
                    tracing::info!(
                        "reported in {:.0} ms ({})",
                        t0.elapsed().as_secs_f64() * 1000.0,
                        argv.join(" ")
                    );
                } else {
                    tracing::error!("{} failed ({}): {text}", argv.join(" "), out.status);
                }
            }
        }
    }
}

/// How the watcher's work ended.
enum Outcome {
    /// The application ended; its exit is acknowledged and is ours to report.
    Exited(ExitStatus),
    /// Nothing to report (stopped, superseded, nothing to watch).
    Quit(String),
    /// A problem retrying cannot mend (configuration, certificates).
    Fatal(i32),
}

/// How one connection's watch ended.
enum Watched {
    Outcome(Outcome),
    Lost(String),
}

struct Watch<'a> {
    one: &'a OneShot,
    /// The instance watched, once attached: reconnections attach to it only.
    instance: Option<InstanceId>,
}

impl Watch<'_> {
    /// Attaches (never launches) and watches, reconnecting for as long as it
    /// takes: the monitor, not the watcher, declares a guest lost.
    async fn run(&mut self) -> Outcome {
        let one = self.one;
        loop {
            let mut c = match one.connector.connect(Instant::now() + one.a.timeout).await {
                Ok(c) => c,
                Err(e) if e.is_retryable() => {
                    tracing::warn!("cmappserver on {} unreachable: {e}; still trying", one.a.node);
                    continue;
                }
                Err(e) => return Outcome::Fatal(one.client_error(&e)),
            };
            let watched = self.attach_and_watch(&mut c).await;
            c.close().await;
            match watched {
                Watched::Outcome(o) => return o,
                Watched::Lost(why) => {
                    tracing::warn!("connection to cmappserver on {} lost: {why}; reconnecting", one.a.node);
                }
            }
        }
    }

    async fn attach_and_watch(&mut self, c: &mut Client) -> Watched {
        let one = self.one;
        let lost = |e: ClientError| {
            if e.is_retryable() {
                Watched::Lost(e.to_string())
            } else {
                Watched::Outcome(Outcome::Fatal(one.client_error(&e)))
            }
        };
        let id = match &self.instance {
            Some(id) => id.clone(),
            None => match c.find(&one.spec, CALL).await {
                Err(e) => return lost(e),
                Ok(None) => {
                    return Watched::Outcome(Outcome::Quit(format!(
                        "{} is not running on {}",
                        one.service, one.a.node
                    )))
                }
                Ok(Some(p)) => p.id,
            },
        };
        let started = match c.launch(one.launch_request(Some(id.clone())), LAUNCH).await {
            Err(e) => return lost(e),
            Ok(Err(e)) if e.kind == ErrorKind::NotFound => {
                return Watched::Outcome(Outcome::Quit(
                    "its exit status was collected by someone else (the monitor), who reported it".into(),
                ))
            }
            Ok(Err(e)) if e.kind == ErrorKind::ShuttingDown => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Watched::Lost(e.message);
            }
            Ok(Err(e)) => return Watched::Outcome(Outcome::Fatal(one.refused(&e))),
            Ok(Ok(s)) => s,
        };
        if self.instance.is_none() {
            tracing::info!("watching {} (pid {}) on {}", one.service, started.pid, one.a.node);
        }
        self.instance = Some(id.clone());
        self.watch_events(c, &started).await
    }

    async fn watch_events(&mut self, c: &mut Client, started: &Started) -> Watched {
        let one = self.one;
        let id = &started.id;
        let dead_after = (one.ping_every * 3).max(Duration::from_secs(1));
        let mut last_heard = Instant::now();
        let mut ticker = crate::watch::PingClock::new(one.ping_every);
        let mut seq = 0u64;
        loop {
            tokio::select! {
                ev = c.next_event() => {
                    let ev = match ev {
                        Ok(Some(ev)) => ev,
                        Ok(None) => return Watched::Lost("cmappserver closed the connection".into()),
                        Err(e) if e.is_retryable() => return Watched::Lost(e.to_string()),
                        Err(e) => return Watched::Outcome(Outcome::Fatal(one.client_error(&e))),
                    };
                    last_heard = Instant::now();
                    match ev {
                        Event::Exited(x) if x.id == *id => {
                            // Ours to report only once acknowledged; if the ack
                            // is lost, the re-attach finds the status again (or
                            // finds it collected, and then says nothing).
                            return match c.ack(id, CALL).await {
                                Ok(()) => Watched::Outcome(Outcome::Exited(x.status)),
                                Err(e) => Watched::Lost(format!("exit status not acknowledged: {e}")),
                            };
                        }
                        Event::Superseded(a) if a.id == *id => {
                            return Watched::Outcome(Outcome::Quit("another cmappmgr attached to it".into()));
                        }
                        Event::ShuttingDown(s) => tracing::warn!("{}", s.reason),
                        _ => {}
                    }
                }
                _ = ticker.tick() => {
                    if last_heard.elapsed() >= dead_after {
                        return Watched::Lost(format!("no answer to pings for {:.1} s", last_heard.elapsed().as_secs_f64()));
                    }
                    seq += 1;
                    if let Err(e) = c.send(&Request::Ping(Ping { seq })).await {
                        return Watched::Lost(e.to_string());
                    }
                }
            }
        }
    }
}

/// Waits for the `Exited` event of `id`, skipping everything else.
async fn wait_exit(c: &mut Client, id: &InstanceId, limit: Duration) -> Result<ExitStatus, ClientError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Event::Exited(x) = c.next_before(deadline, "waiting for the exit status").await? {
            if x.id == *id {
                return Ok(x.status);
            }
        }
    }
}

/// A ping's round trip on a connection attached to `id`: `Some(status)` when
/// the process's exit arrives first.
async fn settle(c: &mut Client, id: &InstanceId) -> Result<Option<ExitStatus>, ClientError> {
    c.send(&Request::Ping(Ping { seq: 0 })).await?;
    let deadline = Instant::now() + CALL;
    loop {
        match c.next_before(deadline, "waiting for a pong").await? {
            Event::Exited(x) if x.id == *id => return Ok(Some(x.status)),
            Event::Pong(_) => return Ok(None),
            _ => {}
        }
    }
}

/// A process the watcher lives no longer than (the cluster's resource
/// executor), told from a later process with the same pid by its start time.
/// Its end comes from a pidfd (readable once the process has exited), so an
/// idle watcher has no timer of its own; where the kernel has no pidfd
/// (before Linux 5.3), `/proc` is read every half second.
struct Lifeline {
    pid: u32,
    start: u64,
    /// The process, once a pidfd refers to it (its start time checked after opening).
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl Lifeline {
    fn new(pid: u32) -> Option<Lifeline> {
        let start = start_ticks(pid)?;
        let fd = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            // The pid may have been reused between the two reads: the pidfd
            // is trusted only if the process still has the start time.
            .filter(|_| start_ticks(pid) == Some(start))
            // `OwnedFd` owns its descriptor: the reason `with_interest` is
            // deprecated (a borrowed descriptor closed while registered)
            // does not apply; the replacement is an `unsafe fn`.
            .and_then(|fd| {
                #[allow(deprecated)]
                tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).ok()
            });
        Some(Lifeline { pid, start, fd })
    }

    /// Resolves (with the pid) once the process is gone.
    async fn gone(&self) -> u32 {
        if let Some(fd) = &self.fd {
            if fd.readable().await.is_ok() {
                return self.pid;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if start_ticks(self.pid) != Some(self.start) {
                return self.pid;
            }
        }
    }
}

/// Field 22 of /proc/PID/stat (start time in ticks since boot); `None` for
/// a process that is gone or a zombie.
fn start_ticks(pid: u32) -> Option<u64> {
    common::proc::stat(pid)
        .filter(|s| !s.is_zombie())
        .map(|s| s.start_ticks)
}
