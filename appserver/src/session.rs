//! One manager connection, after its TLS handshake: the hello exchange, then
//! requests in and events out until either side closes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::connection::{self, ConnectionError};
use common::message::{
    Ack, ErrorKind, ErrorReply, Event, Hello, ProcessList, Request, ShuttingDown, Welcome, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

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
}

/// Why a session ended (for the log).
#[derive(Debug)]
pub enum SessionEnd {
    Closed,
    Shutdown,
    IdleTimeout,
    Protocol(String),
    Io(String),
}

pub async fn run<S: AsyncRead + AsyncWrite>(stream: S, ctx: SessionContext) -> SessionEnd {
    let (mut rd, mut wr) = connection::split(stream);
    let end = converse(&mut rd, &mut wr, &ctx).await;
    // close_notify on every path, so that the manager reads everything sent
    // before the close (an error reply included) and sees a clean close.
    let _ = tokio::time::timeout(Duration::from_secs(1), tokio::io::AsyncWriteExt::shutdown(wr.get_mut())).await;
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
    let _ = tokio::time::timeout(Duration::from_secs(1), tokio::io::AsyncWriteExt::shutdown(wr.get_mut())).await;
}

async fn converse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut connection::MessageReader<R>,
    wr: &mut connection::MessageWriter<W>,
    ctx: &SessionContext,
) -> SessionEnd {
    let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);

    let hello = match tokio::time::timeout(ctx.hello_timeout, rd.read::<Hello>()).await {
        Err(_) => return SessionEnd::Protocol("no hello within the handshake timeout".into()),
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
        return SessionEnd::Protocol(message);
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
                Ok(Ok(Some(req))) => handle(req, &sup, Subscriber { session, manager: manager.clone(), tx: tx.clone() }).await,
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
        Err(_) => Err(SessionEnd::Io("write timed out".into())),
        Ok(Err(e)) => Err(end_for(e)),
        Ok(Ok(())) => Ok(()),
    }
}

fn end_for(e: ConnectionError) -> SessionEnd {
    if e.is_protocol_violation() {
        SessionEnd::Protocol(e.to_string())
    } else {
        SessionEnd::Io(e.to_string())
    }
}

/// Applies one request and returns the reply.
async fn handle(req: Request, sup: &Arc<Supervisor>, sub: Subscriber) -> Event {
    let session = sub.session;
    if let Err(message) = req.check() {
        return refused(session, ErrorKind::BadRequest, message);
    }
    let result = match req {
        Request::Launch(l) => sup.launch(l, sub).await.map(Event::Started),
        Request::Stop(s) => sup
            .stop(&s.id, s.grace_ms.map(Duration::from_millis))
            .await
            .map(|()| Event::Stopping(Ack { id: s.id })),
        Request::Ack(a) => sup.ack(&a.id, &sub.manager).map(|()| Event::Acked(a)),
        Request::List => unreachable!("a listing is answered in pages by `converse`"),
        Request::Ping(p) => Ok(Event::Pong(p)),
    };
    match result {
        Ok(ev) => ev,
        Err(e) if e.kind == ErrorKind::BadRequest => refused(session, e.kind, e.message),
        Err(e) => Event::Error(e),
    }
}

/// A request refused as malformed: logged (escaped, clipped) and answered.
fn refused(session: u64, kind: ErrorKind, message: String) -> Event {
    tracing::warn!(session, "refused a request: {}", common::text::clip(&message, 300));
    Event::Error(ErrorReply { kind, message })
}
