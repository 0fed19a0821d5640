//! One manager connection, after its TLS handshake: the hello exchange, then
//! requests in and events out until either side closes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::connection::{self, ConnectionError};
use common::message::{
    Ack, ErrorKind, ErrorReply, Event, Hello, LogLines, Logs, ProcessList, Request, ShuttingDown, Welcome,
    MAX_LOG_TAIL, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use crate::audit::{self, Audit};
use crate::policy::{Client, Decision, Policy};
use crate::supervisor::output::{read_tail, Follower};
use crate::supervisor::{Subscriber, Supervisor};

/// Events queued for one session before output lines are dropped.
const SESSION_QUEUE: usize = 1024;
/// The longest manager name kept from a hello.
const MAX_MANAGER_NAME: usize = 128;
/// A write that takes longer than this means the manager is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// What a session needs from the server.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub supervisor: Arc<Supervisor>,
    pub idle_timeout: Duration,
    pub hello_timeout: Duration,
    /// Set when the server is going away: the value says whether processes keep running.
    pub shutdown: watch::Receiver<Option<bool>>,
    /// The command policy in force (each request reads the current one).
    pub policy: crate::policy::Current,
    pub audit: crate::reload::Swap<Option<Audit>>,
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// `ADDR:PORT`, or `vsock:CID:PORT`.
    pub addr: String,
    pub client: Arc<Client>,
}

/// Why a session ended (for the log).
#[derive(Debug)]
pub enum SessionEnd {
    Closed,
    Shutdown,
    IdleTimeout,
    /// The manager broke the protocol.
    Protocol(Breach),
    /// The connection failed.
    Io(Lost),
    /// The client may not connect (`allowedClients`); the reason.
    Refused(String),
}

/// How a manager broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum Breach {
    #[error("no hello within the handshake timeout")]
    NoHello,
    /// Another protocol version (the message the manager was sent).
    #[error("{0}")]
    Version(String),
    /// A frame or message it may not send.
    #[error(transparent)]
    Message(ConnectionError),
}

/// How a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("write timed out")]
    WriteTimedOut,
    #[error(transparent)]
    Connection(ConnectionError),
}

pub async fn run<S: AsyncRead + AsyncWrite>(stream: S, ctx: SessionContext, peer: Peer) -> SessionEnd {
    let (mut rd, mut wr) = connection::split(stream);
    let end = converse(&mut rd, &mut wr, &ctx, &peer).await;
    // close_notify on every path, so that the manager reads everything sent
    // before the close (an error reply included) and sees a clean close.
    let _ = wr.close(Duration::from_secs(1)).await;
    end
}

/// Answers the hello of an authenticated connection that cannot be served
/// (the session limit is reached) with an error saying so, and closes it.
pub async fn refuse<S: AsyncRead + AsyncWrite>(stream: S, message: String, hello_timeout: Duration) {
    let (mut rd, mut wr) = connection::split(stream);
    if let Ok(Ok(Some(_))) = tokio::time::timeout(hello_timeout, rd.read::<Hello>()).await {
        let reply = Event::Error(ErrorReply {
            kind: ErrorKind::Limit,
            message,
        });
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.write(&reply)).await;
    }
    let _ = wr.close(Duration::from_secs(1)).await;
}

async fn converse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut connection::MessageReader<R>,
    wr: &mut connection::MessageWriter<W>,
    ctx: &SessionContext,
    peer: &Peer,
) -> SessionEnd {
    let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);

    let hello = match tokio::time::timeout(ctx.hello_timeout, rd.read::<Hello>()).await {
        Err(_) => return SessionEnd::Protocol(Breach::NoHello),
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => return SessionEnd::Closed,
        Ok(Err(e)) => return end_for(e),
    };
    if hello.protocol != PROTOCOL_VERSION {
        let message = format!(
            "protocol version mismatch: {} speaks protocol {}, cmappserver {} speaks protocol {PROTOCOL_VERSION}",
            if hello.software.is_empty() {
                "the manager".to_string()
            } else {
                common::text::clip(&hello.software, 100)
            },
            hello.protocol,
            common::SOFTWARE_VERSION,
        );
        let _ = wr
            .write(&Event::Error(ErrorReply {
                kind: ErrorKind::Version,
                message: message.clone(),
            }))
            .await;
        return SessionEnd::Protocol(Breach::Version(message));
    }
    // Who the manager is, across its reconnections; shown in logs, so bounded
    // and without control characters.
    let manager: Arc<str> = match &hello.manager {
        Some(m) if !m.trim().is_empty() => m
            .chars()
            .take(MAX_MANAGER_NAME)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>()
            .into(),
        _ => format!("manager of session {session}").into(),
    };
    // The audit log in force when the session began.
    let audit = ctx.audit.get();
    let who = Who {
        session,
        manager: &manager,
        peer,
        audit: audit.as_ref().as_ref(),
    };
    // Clients the guest does not know by name are turned away here (CA mode).
    if let Err(e) = ctx.policy.get().admit(&peer.client) {
        let why = e.to_string();
        who.record("connect", None, None, &Decision::Refused(why.clone()), why.clone());
        let _ = wr
            .write(&Event::Error(ErrorReply {
                kind: ErrorKind::Forbidden,
                message: why.clone(),
            }))
            .await;
        return SessionEnd::Refused(why);
    }
    let sup = ctx.supervisor.clone();
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        software: format!("cmappserver {}", common::SOFTWARE_VERSION),
        monitored: sup.monitored(),
        max_processes: sup.limits().max_processes,
    };
    if let Err(e) = wr.write(&welcome).await {
        return end_for(e);
    }

    let (tx, mut rx) = mpsc::channel::<Event>(SESSION_QUEUE);
    let log_readers = Arc::new(tokio::sync::Semaphore::new(MAX_LOG_READERS));
    let mut shutdown = ctx.shutdown.clone();
    let end = loop {
        let reply = tokio::select! {
            req = tokio::time::timeout(ctx.idle_timeout, rd.read::<Request>()) => match req {
                Err(_) => break SessionEnd::IdleTimeout,
                Ok(Ok(None)) => break SessionEnd::Closed,
                Ok(Err(e)) => {
                    if e.is_protocol_violation() {
                        let _ = write(wr, &Event::Error(ErrorReply { kind: ErrorKind::BadRequest, message: e.to_string() })).await;
                    }
                    break end_for(e);
                }
                Ok(Ok(Some(Request::List))) => {
                    who.record("list", None, None, &Decision::Open, "listed".into());
                    // Every page but the last here; the last is the reply below.
                    let mut pages = ProcessList::pages(sup.list());
                    let last = pages.pop().expect("one page at least");
                    let mut failed = None;
                    for page in pages {
                        if let Err(e) = write(wr, &Event::Processes(page)).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    if let Some(e) = failed {
                        break e;
                    }
                    Event::Processes(last)
                }
                Ok(Ok(Some(req))) => match handle(req, &sup, Subscriber { session, manager: manager.clone(), tx: tx.clone() }, &ctx.policy.get(), &who, &log_readers).await {
                    Some(reply) => reply,
                    None => continue, // answered through the queue
                },
            },
            Some(ev) = rx.recv() => ev,
            _ = async { let _ = shutdown.wait_for(Option::is_some).await; } => {
                let keep = ctx.shutdown.borrow().unwrap_or(true);
                let reason = if keep {
                    "cmappserver is stopping for maintenance; monitored processes keep running"
                } else {
                    "cmappserver is stopping, and is stopping its monitored processes"
                };
                let _ = write(wr, &Event::ShuttingDown(ShuttingDown { reason: reason.into(), processes_keep_running: keep })).await;
                // Let queued exits reach the manager before closing.
                while let Ok(ev) = rx.try_recv() {
                    let _ = write(wr, &ev).await;
                }
                break SessionEnd::Shutdown;
            }
        };
        if let Err(e) = write(wr, &reply).await {
            break e;
        }
    };
    sup.detach(session);
    end
}

async fn write<W: AsyncWrite + Unpin>(wr: &mut connection::MessageWriter<W>, ev: &Event) -> Result<(), SessionEnd> {
    match tokio::time::timeout(WRITE_TIMEOUT, wr.write(ev)).await {
        Err(_) => Err(SessionEnd::Io(Lost::WriteTimedOut)),
        Ok(Err(e)) => Err(end_for(e)),
        Ok(Ok(())) => Ok(()),
    }
}

fn end_for(e: ConnectionError) -> SessionEnd {
    if e.is_protocol_violation() {
        SessionEnd::Protocol(Breach::Message(e))
    } else {
        SessionEnd::Io(Lost::Connection(e))
    }
}

/// Who sent a request, for the policy, the log and the audit records.
struct Who<'a> {
    session: u64,
    manager: &'a str,
    peer: &'a Peer,
    audit: Option<&'a Audit>,
}

impl Who<'_> {
    fn record(
        &self,
        request: &str,
        service: Option<&str>,
        run: Option<&[String]>,
        decision: &Decision,
        outcome: String,
    ) {
        self.record_id(request, service, run, None, decision, outcome);
    }

    fn record_id(
        &self,
        request: &str,
        service: Option<&str>,
        run: Option<&[String]>,
        id: Option<&str>,
        decision: &Decision,
        outcome: String,
    ) {
        let Some(audit) = self.audit else { return };
        audit.write(&audit::Record {
            time: audit::rfc3339(common::message::now_ms()),
            session: self.session,
            peer: &self.peer.addr,
            client: &self.peer.client,
            manager: Some(self.manager),
            request,
            service,
            run,
            id,
            decision: if matches!(decision, Decision::Refused(_)) {
                "refused"
            } else {
                "allowed"
            },
            rule: decision.rule(),
            outcome,
        });
    }

    /// `cmappmgr on host1 (pid 42, ...) [host1 (sha256:0a1b...)] from 10.0.0.1:4242`, escaped.
    fn describe(&self) -> String {
        common::text::escape(&format!(
            "{} [{}] from {}",
            self.manager,
            self.peer.client.short(),
            self.peer.addr
        ))
        .into_owned()
    }
}

/// Applies one request and returns the reply (`None`: the reply comes
/// through the session's queue).
async fn handle(
    req: Request,
    sup: &Arc<Supervisor>,
    sub: Subscriber,
    policy: &Policy,
    who: &Who<'_>,
    log_readers: &Arc<tokio::sync::Semaphore>,
) -> Option<Event> {
    let session = sub.session;
    if let Err(e) = req.check() {
        return Some(refused(session, ErrorKind::BadRequest, e.to_string()));
    }
    let client = &who.peer.client;
    // The policy's verdict on the process a stop or an ack names.
    let judge = |id: &str| {
        sup.argv_of(id)
            .map(|argv| policy.decide(client, &argv))
            .unwrap_or(Decision::Open)
    };
    let result = match req {
        Request::Logs(l) => {
            // The output is the process's: judged like an attach.
            let argv = sup
                .service_argv(&l.run, &l.name)
                .or_else(|| common::service::split_run(&l.run).ok())
                .unwrap_or_default();
            let d = policy.decide(client, &argv);
            who.record(
                "logs",
                Some(&l.name.clone().unwrap_or_else(|| l.run.join(" "))),
                Some(&l.run),
                &d,
                match &d {
                    Decision::Refused(why) => format!("error: {why}"),
                    _ => "sent".into(),
                },
            );
            match d {
                Decision::Refused(why) => Err(ErrorReply {
                    kind: ErrorKind::Forbidden,
                    message: why,
                }),
                _ => match (sup.log_file(&l), log_readers.clone().try_acquire_owned()) {
                    (Ok((path, files)), Ok(permit)) => {
                        tokio::spawn(async move {
                            send_logs(path, files, l, sub.tx).await;
                            drop(permit);
                        });
                        return None;
                    }
                    (Err(e), _) => Err(e),
                    (_, Err(_)) => Err(ErrorReply {
                        kind: ErrorKind::Limit,
                        message: format!("at most {MAX_LOG_READERS} logs requests at once on one connection"),
                    }),
                },
            }
        }
        Request::Launch(l) => {
            let service = l.name.clone().unwrap_or_else(|| l.run.join(" "));
            let run = l.run.clone();
            let decided = std::sync::Mutex::new(Decision::Open);
            let gate = |argv: &[String]| {
                let d = policy.decide(client, argv);
                *decided.lock().unwrap_or_else(|p| p.into_inner()) = d.clone();
                d
            };
            let r = sup.launch(l, sub, &gate).await;
            let d = decided.into_inner().unwrap_or_else(|p| p.into_inner());
            let (request, outcome) = match &r {
                Ok(s) if s.attached => ("attach", format!("attached to pid {} ({})", s.pid, s.id)),
                Ok(s) => ("launch", format!("started pid {} ({})", s.pid, s.id)),
                Err(e) => ("launch", format!("error: {}", e.message)),
            };
            let id = r.as_ref().ok().map(|s| s.id.as_str());
            who.record_id(request, Some(&service), Some(&run), id, &d, outcome.clone());
            let rule = d.rule().map_or_else(String::new, |r| format!(" (rule {r})"));
            match &r {
                Err(e) if e.kind == ErrorKind::Forbidden => tracing::warn!(
                    session,
                    "{} refused: {}",
                    who.describe(),
                    common::text::clip(&e.message, 500)
                ),
                _ => tracing::info!(
                    session,
                    "{request} {} by {}{rule}: {}",
                    common::text::clip(&service, 200),
                    who.describe(),
                    common::text::clip(&outcome, 300)
                ),
            }
            r.map(Event::Started)
        }
        Request::Stop(s) => {
            let d = judge(&s.id);
            let r = match &d {
                Decision::Refused(why) => Err(ErrorReply {
                    kind: ErrorKind::Forbidden,
                    message: why.clone(),
                }),
                _ => sup.stop(&s.id, s.grace_ms.map(Duration::from_millis)).await,
            };
            let outcome = match &r {
                Ok(()) => "stopping".to_string(),
                Err(e) => format!("error: {}", e.message),
            };
            tracing::info!(
                session,
                "stop {} by {}: {}",
                s.id,
                who.describe(),
                common::text::clip(&outcome, 300)
            );
            who.record_id("stop", None, None, Some(&s.id), &d, outcome);
            r.map(|()| Event::Stopping(Ack { id: s.id }))
        }
        Request::Ack(a) => {
            let d = judge(&a.id);
            let r = match &d {
                Decision::Refused(why) => Err(ErrorReply {
                    kind: ErrorKind::Forbidden,
                    message: why.clone(),
                }),
                _ => sup.ack(&a.id, &sub.manager),
            };
            let outcome = r
                .as_ref()
                .map_or_else(|e| format!("error: {}", e.message), |()| "acknowledged".into());
            who.record_id("ack", None, None, Some(&a.id), &d, outcome);
            r.map(|()| Event::Acked(a))
        }
        Request::List => unreachable!("a listing is answered in pages by `converse`"),
        Request::Ping(p) => Ok(Event::Pong(p)),
    };
    match result {
        Ok(ev) => Some(ev),
        Err(e) if e.kind == ErrorKind::BadRequest => Some(refused(session, e.kind, e.message)),
        Err(e) => Some(Event::Error(e)),
    }
}

/// A request refused as malformed: logged (escaped, clipped) and answered.
fn refused(session: u64, kind: ErrorKind, message: String) -> Event {
    tracing::warn!(session, "refused a request: {}", common::text::clip(&message, 300));
    Event::Error(ErrorReply { kind, message })
}

/// `logs` requests one connection may have running at once (a `--follow`
/// runs until the connection closes).
const MAX_LOG_READERS: usize = 4;
/// Bytes of lines in one `log_lines` frame (frames are capped at 1 MiB).
const LOG_CHUNK: usize = 256 << 10;
/// How often a followed log is looked at.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Answers `logs`: the last lines of the file, then (with `follow`) new
/// lines as they are written, until the session goes away. File reads run
/// on the blocking pool; the queue's bound paces us to the manager.
async fn send_logs(path: std::path::PathBuf, files: u32, req: Logs, tx: mpsc::Sender<Event>) {
    let source = path.display().to_string();
    let chunks = |lines: Vec<String>| {
        let mut out: Vec<Vec<String>> = vec![Vec::new()];
        let mut size = 0;
        for l in lines {
            if size + l.len() > LOG_CHUNK && !out.last().is_some_and(Vec::is_empty) {
                out.push(Vec::new());
                size = 0;
            }
            size += l.len() + 8;
            out.last_mut().expect("never empty").push(l);
        }
        out
    };
    let n = req.tail.min(MAX_LOG_TAIL) as usize;
    let p = path.clone();
    let first = tokio::task::spawn_blocking(move || {
        // The follower first, so that no line falls between the tail and it.
        let mut follower = Follower::at_end(&p);
        let end = follower.pos();
        (read_tail(&p, files, n, end), follower)
    })
    .await;
    let Ok((tail, mut follower)) = first else { return };
    let tail = match tail {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && req.follow => Vec::new(),
        Err(e) => {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::NotFound
            } else {
                ErrorKind::Internal
            };
            let message = format!("cannot read {source}: {e}");
            let _ = tx.send(Event::Error(ErrorReply { kind, message })).await;
            return;
        }
    };
    let parts = chunks(tail);
    let last = parts.len() - 1;
    for (i, lines) in parts.into_iter().enumerate() {
        let ev = Event::LogLines(LogLines {
            source: source.clone(),
            lines,
            end: i == last,
        });
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    while req.follow && !tx.is_closed() {
        tokio::time::sleep(FOLLOW_POLL).await;
        let Ok((lines, f)) = tokio::task::spawn_blocking(move || (follower.poll(LOG_CHUNK), follower)).await else {
            return;
        };
        follower = f;
        if lines.is_empty() {
            continue;
        }
        for lines in chunks(lines) {
            let ev = Event::LogLines(LogLines {
                source: source.clone(),
                lines,
                end: true,
            });
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::state::StateDir;
    use crate::supervisor::{AppSettings, Limits};
    use common::message::{Ack, Ping, Stop, Welcome};

    type Manager = (
        connection::MessageReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        connection::MessageWriter<tokio::io::WriteHalf<tokio::io::DuplexStream>>,
    );

    /// The manager's end of a session, the session's task, and its
    /// shutdown signal.
    type Session = (
        Manager,
        tokio::task::JoinHandle<SessionEnd>,
        watch::Sender<Option<bool>>,
    );

    /// A session on one end of an in-memory stream, with a supervisor on a
    /// fresh state directory; the manager's end is returned.
    async fn session(tmp: &tempfile::TempDir) -> Session {
        session_with(tmp, crate::policy::Policy::default()).await
    }

    /// As [`session`], under the command policy `policy`.
    async fn session_with(tmp: &tempfile::TempDir, policy: crate::policy::Policy) -> Session {
        let (manager, task, shutdown, _) = session_on(tmp, policy).await;
        (manager, task, shutdown)
    }

    /// As [`session_with`], with the session's supervisor.
    /// A policy with one rule: `/bin/sh` may run.
    fn only_sh_allowed() -> crate::policy::Policy {
        let path = std::path::Path::new("/etc/test.conf");
        let conf = common::config::ServerConfig::parse(path, "allow.sh.program=/bin/sh\n").unwrap();
        crate::policy::Policy::from_config(path, &conf).unwrap()
    }

    async fn session_on(
        tmp: &tempfile::TempDir,
        policy: crate::policy::Policy,
    ) -> (
        Manager,
        tokio::task::JoinHandle<SessionEnd>,
        watch::Sender<Option<bool>>,
        Arc<Supervisor>,
    ) {
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let limits = Limits {
            max_processes: 3,
            stop_grace: Duration::from_secs(1),
            exit_history: 4,
            ack_wait: Duration::from_secs(1),
            output: crate::supervisor::output::Settings {
                dir: tmp.path().join("log"),
                to_file: false,
                to_syslog: false,
                max_bytes: 1 << 20,
                files: 1,
                tail_lines: 0,
            },
            keep_spare: false,
        };
        let settings = AppSettings {
            environment: None,
            oom_score_adj: 0,
        };
        let supervisor = Supervisor::open(state, limits, settings, "/nonexistent".into()).await;
        let (shutdown_tx, shutdown) = watch::channel(None);
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let ctx = SessionContext {
            supervisor: supervisor.clone(),
            idle_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(30),
            shutdown,
            policy: crate::policy::Current::new(policy),
            audit: crate::reload::Swap::new(None),
        };
        let peer = super::Peer {
            addr: "127.0.0.1:1".into(),
            client: Arc::new(crate::policy::Client::default()),
        };
        let task = tokio::spawn(run(ours, ctx, peer));
        (connection::split(theirs), task, shutdown_tx, supervisor)
    }

    fn hello(protocol: u32) -> Hello {
        Hello {
            protocol,
            software: "test".into(),
            manager: Some("  ".into()),
        }
    }

    #[tokio::test]
    async fn a_manager_of_another_version_is_told_so_and_the_session_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let ((mut rd, mut wr), task, _sd) = session(&tmp).await;
        wr.write(&hello(PROTOCOL_VERSION + 1)).await.unwrap();
        let Some(Event::Error(e)) = rd.read::<Event>().await.unwrap() else {
            panic!("an error reply expected")
        };
        assert_eq!(e.kind, ErrorKind::Version);
        assert!(
            e.message.starts_with(&format!(
                "protocol version mismatch: test speaks protocol {}",
                PROTOCOL_VERSION + 1
            )),
            "{}",
            e.message
        );
        assert!(matches!(task.await.unwrap(), SessionEnd::Protocol(_)));
        assert!(rd.read::<Event>().await.unwrap().is_none(), "closed after the reply");
    }

    #[tokio::test]
    async fn requests_are_answered_and_bad_ones_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ((mut rd, mut wr), task, shutdown) = session(&tmp).await;
        wr.write(&hello(PROTOCOL_VERSION)).await.unwrap();
        let w: Welcome = rd.read().await.unwrap().unwrap();
        assert_eq!((w.protocol, w.monitored, w.max_processes), (PROTOCOL_VERSION, 0, 3));
        wr.write(&Request::Ping(Ping { seq: 7 })).await.unwrap();
        assert_eq!(rd.read::<Event>().await.unwrap(), Some(Event::Pong(Ping { seq: 7 })));
        let long = "i".repeat(common::message::MAX_ID_LEN + 1);
        wr.write(&Request::Stop(Stop {
            id: long,
            grace_ms: None,
        }))
        .await
        .unwrap();
        let Some(Event::Error(e)) = rd.read::<Event>().await.unwrap() else {
            panic!("an error reply expected")
        };
        assert_eq!(e.kind, ErrorKind::BadRequest);
        wr.write(&Request::Stop(Stop {
            id: "gone".into(),
            grace_ms: None,
        }))
        .await
        .unwrap();
        let reply = rd.read::<Event>().await.unwrap();
        assert!(
            matches!(&reply, Some(Event::Error(e)) if e.kind == ErrorKind::NotFound),
            "{reply:?}"
        );
        wr.write(&Request::Ack(Ack { id: "gone".into() })).await.unwrap();
        assert_eq!(
            rd.read::<Event>().await.unwrap(),
            Some(Event::Acked(Ack { id: "gone".into() }))
        );
        wr.write(&Request::List).await.unwrap();
        let Some(Event::Processes(list)) = rd.read::<Event>().await.unwrap() else {
            panic!("a listing expected")
        };
        assert!(list.processes.is_empty() && !list.more);
        shutdown.send(Some(true)).unwrap();
        let Some(Event::ShuttingDown(s)) = rd.read::<Event>().await.unwrap() else {
            panic!("a shutdown notice expected")
        };
        assert!(s.processes_keep_running);
        assert!(matches!(task.await.unwrap(), SessionEnd::Shutdown));
    }

    /// Runs `send_logs` on `path`; its events arrive on the receiver, which
    /// closes when it returns.
    async fn logs_of(path: &std::path::Path, files: u32, tail: u32, follow: bool) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(64);
        let req = Logs {
            run: vec!["app".into()],
            name: None,
            tail,
            follow,
        };
        tokio::spawn(send_logs(path.to_path_buf(), files, req, tx));
        rx
    }

    /// The next event, or `None` when `send_logs` has returned.
    async fn next(rx: &mut mpsc::Receiver<Event>) -> Option<Event> {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("send_logs neither sent nor returned within 20 s")
    }

    fn lines_of(ev: Option<Event>) -> (Vec<String>, bool) {
        match ev {
            Some(Event::LogLines(l)) => (l.lines, l.end),
            other => panic!("log lines expected, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn logs_with_tail_n_sends_the_last_n_lines_marked_as_the_end_then_returns() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.log");
        std::fs::write(&path, (0..10).map(|i| format!("line {i}\n")).collect::<String>()).unwrap();
        let mut rx = logs_of(&path, 1, 3, false).await;
        let Some(Event::LogLines(l)) = next(&mut rx).await else {
            panic!("log lines expected")
        };
        assert_eq!(l.source, path.display().to_string());
        assert_eq!(
            (l.lines, l.end),
            (vec!["line 7".to_string(), "line 8".into(), "line 9".into()], true)
        );
        assert_eq!(next(&mut rx).await, None, "without --follow, nothing after the end");
        // An empty log is one empty frame, still marked as the end.
        std::fs::write(&path, "").unwrap();
        let mut rx = logs_of(&path, 1, 3, false).await;
        assert_eq!(lines_of(next(&mut rx).await), (vec![], true));
        assert_eq!(next(&mut rx).await, None);
    }

    /// What lines cost of a frame's budget: their bytes, and 8 for each but the last.
    fn frame_bytes(lines: &[String]) -> usize {
        lines.iter().map(|l| l.len() + 8).sum::<usize>() - 8
    }

    #[tokio::test]
    async fn a_tail_over_256_kib_is_sent_in_frames_of_at_most_256_kib_the_last_marked_as_the_end() {
        // A frame takes lines while their bytes, with 8 for each line
        // before the last, stay within 256 KiB: 63 lines of 4088 bytes and
        // one of 4096 fill one frame to the byte, and the next line begins
        // another.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.log");
        let mut want: Vec<String> = (0..63).map(|i| format!("{i:02}{}", "a".repeat(4086))).collect();
        want.push("b".repeat(4096));
        want.push("c".into());
        std::fs::write(&path, want.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let mut rx = logs_of(&path, 1, 1000, false).await;
        let (first, end) = lines_of(next(&mut rx).await);
        assert_eq!((first.len(), end), (64, false), "a full frame, not the last");
        assert_eq!(frame_bytes(&first), 256 << 10);
        let (second, end) = lines_of(next(&mut rx).await);
        assert_eq!((second, end), (vec!["c".to_string()], true));
        assert_eq!(first[..], want[..64]);
        assert_eq!(next(&mut rx).await, None);

        // A larger tail: every frame within the budget, in order, only the last the end.
        let big: Vec<String> = (0..300).map(|i| format!("{i:03}{}", "x".repeat(3000))).collect();
        std::fs::write(&path, big.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let mut rx = logs_of(&path, 1, 300, false).await;
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(ev) = next(&mut rx).await {
            let (lines, end) = lines_of(Some(ev));
            assert!(!lines.is_empty());
            assert!(frame_bytes(&lines) <= 256 << 10);
            frames += 1;
            got.extend(lines);
            assert_eq!(end, got.len() == big.len(), "only the last frame is the end");
        }
        assert_eq!(got, big);
        assert_eq!(
            frames, 4,
            "300 lines of 3003 bytes (3011 of the budget): 3 frames of 87 lines and one of 39"
        );
    }

    #[tokio::test]
    async fn logs_of_a_missing_file_is_not_found_unless_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.log");
        let mut rx = logs_of(&path, 1, 10, false).await;
        let Some(Event::Error(e)) = next(&mut rx).await else {
            panic!("an error expected")
        };
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(
            e.message.starts_with(&format!("cannot read {}: ", path.display())),
            "{}",
            e.message
        );
        assert_eq!(next(&mut rx).await, None);
        // Unreadable for another reason: an internal error.
        std::fs::create_dir(&path).unwrap();
        let mut rx = logs_of(&path, 1, 10, false).await;
        let Some(Event::Error(e)) = next(&mut rx).await else {
            panic!("an error expected")
        };
        assert_eq!(e.kind, ErrorKind::Internal, "{}", e.message);
        assert_eq!(next(&mut rx).await, None);
    }

    #[tokio::test]
    async fn a_followed_log_sends_its_tail_then_each_new_line_until_the_session_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.log");
        // Followed before it exists: an empty tail, then its lines once it does.
        let (tx, mut rx) = mpsc::channel(64);
        let req = Logs {
            run: vec!["app".into()],
            name: None,
            tail: 10,
            follow: true,
        };
        let following = tokio::spawn(send_logs(path.clone(), 1, req, tx));
        assert_eq!(lines_of(next(&mut rx).await), (vec![], true));
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(lines_of(next(&mut rx).await), (vec!["first".to_string()], true));
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"second\nthird\n").unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            let (lines, end) = lines_of(next(&mut rx).await);
            assert!(end, "each followed frame is complete");
            got.extend(lines);
        }
        assert_eq!(got, ["second", "third"]);
        // The session goes: the next line finds nobody to send to, and the
        // follower ends.
        drop(rx);
        std::io::Write::write_all(&mut f, b"fourth\n").unwrap();
        tokio::time::timeout(Duration::from_secs(10), following)
            .await
            .expect("the follower ended after its session went")
            .unwrap();
    }

    #[tokio::test]
    async fn a_logs_request_is_judged_by_the_policy_like_an_attach() {
        let policy = only_sh_allowed();
        let tmp = tempfile::tempdir().unwrap();
        let ((mut rd, mut wr), _task, _sd) = session_with(&tmp, policy).await;
        wr.write(&hello(PROTOCOL_VERSION)).await.unwrap();
        let _: Welcome = rd.read().await.unwrap().unwrap();
        let logs = |run: &str| {
            Request::Logs(Logs {
                run: vec![run.into()],
                name: None,
                tail: 10,
                follow: false,
            })
        };
        wr.write(&logs("/bin/other")).await.unwrap();
        let Some(Event::Error(e)) = rd.read::<Event>().await.unwrap() else {
            panic!("an error reply expected")
        };
        assert_eq!(e.kind, ErrorKind::Forbidden, "{}", e.message);
        // Allowed: then it is the log's turn (this server keeps none in the guest).
        wr.write(&logs("/bin/sh")).await.unwrap();
        let Some(Event::Error(e)) = rd.read::<Event>().await.unwrap() else {
            panic!("an error reply expected")
        };
        assert_eq!(e.kind, ErrorKind::NotFound, "{}", e.message);
        assert!(
            e.message.ends_with("not to a file cmappserver can read back"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn a_stop_or_an_ack_of_a_process_the_policy_refuses_is_forbidden() {
        let policy = only_sh_allowed();
        let tmp = tempfile::tempdir().unwrap();
        let ((mut rd, mut wr), _task, _sd, sup) = session_on(&tmp, policy).await;
        wr.write(&hello(PROTOCOL_VERSION)).await.unwrap();
        let _: Welcome = rd.read().await.unwrap().unwrap();
        let refused = sup.file_for_test(tmp.path(), "other");
        let allowed = sup.file_for_test(tmp.path(), "sh");
        for id in [&refused, &allowed] {
            let requests = [
                Request::Stop(Stop {
                    id: id.clone(),
                    grace_ms: None,
                }),
                Request::Ack(Ack { id: id.clone() }),
            ];
            for req in requests {
                wr.write(&req).await.unwrap();
                let reply = rd.read::<Event>().await.unwrap();
                let forbidden = matches!(&reply, Some(Event::Error(e)) if e.kind == ErrorKind::Forbidden);
                assert_eq!(forbidden, id == &refused, "{req:?}: {reply:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_launch_the_policy_refuses_is_logged_as_refused_and_a_malformed_request_as_a_refused_request() {
        let (log, _guard) = crate::supervisor::capture_logs();
        // The lines logged since the last call.
        let mut seen = 0;
        let mut new_lines = || {
            let all = String::from_utf8(log.lock().unwrap().clone()).unwrap();
            let new = all[seen..].to_string();
            seen = all.len();
            new
        };
        let policy = only_sh_allowed();
        let tmp = tempfile::tempdir().unwrap();
        let ((mut rd, mut wr), _task, _sd, sup) = session_on(&tmp, policy).await;
        wr.write(&hello(PROTOCOL_VERSION)).await.unwrap();
        let _: Welcome = rd.read().await.unwrap().unwrap();
        let running = sup.file_for_test(tmp.path(), "sh");
        let launch = |run: &str| {
            Request::Launch(common::message::Launch {
                run: vec![run.into()],
                name: None,
                attach_only: None,
                forward: None,
            })
        };
        let requests = [
            (launch("/bin/other"), ErrorKind::Forbidden),
            // Allowed, but this server cannot start a shim (no such binary).
            (launch("/bin/sh"), ErrorKind::Internal),
            (Request::Ack(Ack { id: running }), ErrorKind::BadRequest),
            (
                Request::Stop(Stop {
                    id: "gone".into(),
                    grace_ms: None,
                }),
                ErrorKind::NotFound,
            ),
        ];
        let mut logged = Vec::new();
        for (req, kind) in requests {
            new_lines();
            wr.write(&req).await.unwrap();
            let reply = rd.read::<Event>().await.unwrap();
            assert!(
                matches!(&reply, Some(Event::Error(e)) if e.kind == kind),
                "{req:?}: {reply:?}"
            );
            logged.push(new_lines());
        }
        let [forbidden, failed, bad, not_found] = &logged[..] else {
            unreachable!()
        };
        assert!(
            forbidden.contains(" refused: ") && !forbidden.contains("refused a request"),
            "{forbidden}"
        );
        assert!(
            failed.contains("launch /bin/sh by ") && !failed.contains("refused"),
            "{failed}"
        );
        assert!(bad.contains("refused a request: sh is still running"), "{bad}");
        assert!(!not_found.contains("refused"), "{not_found}");
    }

    #[tokio::test]
    async fn a_connection_over_the_limit_is_refused_after_its_hello() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(refuse(ours, "too many".into(), Duration::from_secs(30)));
        let (mut rd, mut wr) = connection::split(theirs);
        wr.write(&hello(PROTOCOL_VERSION)).await.unwrap();
        let Some(Event::Error(e)) = rd.read::<Event>().await.unwrap() else {
            panic!("an error reply expected")
        };
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Limit, "too many"));
        task.await.unwrap();
    }
}
