//! The listener side: accept, TLS handshake under a timeout inside each
//! connection's own task (a stalled client never blocks the others), a cap on
//! concurrent connections, and an orderly shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::session::{self, SessionContext, SessionEnd};
use crate::supervisor::Supervisor;

/// What the accept loops run with.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub stop_processes_on_shutdown: bool,
}

/// Binds every address; `[::]` is dual-stack, so a following `0.0.0.0` on the
/// same port is skipped when it is already covered.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, String> {
    let mut listeners = Vec::new();
    let mut errors = Vec::new();
    for addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                let covered = addr.ip().is_unspecified()
                    && listeners.iter().any(|l: &TcpListener| {
                        l.local_addr()
                            .is_ok_and(|a| a.ip().is_unspecified() && a.port() == addr.port())
                    });
                if !covered {
                    errors.push(format!("cannot listen on {addr}: {e}"));
                }
            }
        }
    }
    if listeners.is_empty() || (!errors.is_empty() && addrs.iter().all(|a| !a.ip().is_unspecified())) {
        return Err(errors.join("; "));
    }
    for e in errors {
        tracing::warn!("{e}");
    }
    Ok(listeners)
}

/// Serves until `shutdown` resolves, then tells every session and returns.
pub async fn run(
    listeners: Vec<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    supervisor: Arc<Supervisor>,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let (shutdown_tx, shutdown_rx) = watch::channel(None);
    let ctx = SessionContext {
        supervisor: supervisor.clone(),
        idle_timeout: opts.idle_timeout,
        hello_timeout: opts.handshake_timeout,
        shutdown: shutdown_rx,
    };
    let mut loops = JoinSet::new();
    for l in listeners {
        if let Ok(addr) = l.local_addr() {
            tracing::info!("listening on {addr}");
        }
        loops.spawn(accept_loop(
            l,
            acceptor.clone(),
            limit.clone(),
            ctx.clone(),
            opts.clone(),
        ));
    }
    shutdown.await;
    tracing::info!("shutting down");
    loops.abort_all();
    supervisor.shutdown(opts.stop_processes_on_shutdown).await;
    let _ = shutdown_tx.send(Some(!opts.stop_processes_on_shutdown));
    // Sessions hold permits: wait (bounded) for them to say goodbye.
    let _ = tokio::time::timeout(Duration::from_secs(3), limit.acquire_many(opts.max_connections as u32)).await;
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limit: Arc<Semaphore>,
    ctx: SessionContext,
    opts: ServerOptions,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let handshake_timeout = opts.handshake_timeout;
        tokio::spawn(async move {
            serve(tcp, peer, acceptor, ctx, handshake_timeout).await;
            drop(permit);
        });
    }
}

async fn serve(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, ctx: SessionContext, timeout: Duration) {
    let _ = tcp.set_nodelay(true);
    let _ = socket_keepalive(&tcp);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake timed out after {timeout:?}");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, "TLS handshake failed: {}", common::tls::describe_handshake_error(&e));
            return;
        }
        Ok(Ok(s)) => s,
    };
    let who = common::tls::peer_identity(tls.get_ref().1);
    tracing::debug!(%peer, peer_cert = %who, "connection authenticated");
    match session::run(tls, ctx).await {
        SessionEnd::Closed | SessionEnd::Shutdown => tracing::debug!(%peer, "connection closed"),
        SessionEnd::IdleTimeout => {
            tracing::info!(%peer, peer_cert = %who, "closing idle connection")
        }
        SessionEnd::Protocol(e) => {
            tracing::warn!(%peer, peer_cert = %who, "closing connection: {e}")
        }
        SessionEnd::Io(e) => tracing::info!(%peer, peer_cert = %who, "connection lost: {e}"),
    }
}

/// TCP keepalive, so that a dead manager on a half-open connection is noticed
/// even between its pings.
fn socket_keepalive(tcp: &TcpStream) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(tcp, sockopt::KeepAlive, &true)?;
    setsockopt(tcp, sockopt::TcpKeepIdle, &30)?;
    setsockopt(tcp, sockopt::TcpKeepInterval, &10)?;
    setsockopt(tcp, sockopt::TcpKeepCount, &3)
}
