//! The listener side: accept, TLS handshake under a timeout inside each
//! connection's own task (a stalled client never blocks the others), budgets
//! for connections not yet authenticated (the oldest shed to make room, see
//! [`Pending`]), a cap on authenticated sessions, rate-limited logging of
//! failed handshakes, and an orderly shutdown.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::address::ListenAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

use crate::session::{self, SessionContext, SessionEnd};
use crate::supervisor::Supervisor;

/// What the accept loops run with.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Authenticated sessions.
    pub max_connections: usize,
    /// Connections in the TLS handshake.
    pub max_pending: usize,
    /// Connections that have sent nothing yet.
    pub max_silent: usize,
    /// How often failed handshakes (beyond the first few) are summarised.
    pub handshake_log_interval: Duration,
    pub stop_processes_on_shutdown: bool,
    /// The command policy (replaced on a reload).
    pub policy: crate::policy::Current,
    pub audit: crate::reload::Swap<Option<crate::audit::Audit>>,
    /// The TLS material (replaced on a reload).
    pub tls: crate::reload::Swap<rustls::ServerConfig>,
}

/// The listen backlog: the kernel caps it at `net.core.somaxconn`. A deep
/// backlog absorbs a burst of connections while the accept loop catches up,
/// so that a manager's SYN is not dropped (and retried only a second later).
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A bound listener: TCP, or a virtio-vsock port.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Vsock(VsockListener),
}

impl Listener {
    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or_else(|e| format!("TCP ({e})"), |a| a.to_string()),
            Listener::Vsock(l) => l
                .local_addr()
                .map_or_else(|e| format!("vsock ({e})"), |a| format!("vsock:{}", a.port())),
        }
    }

    /// The TCP address, for tests and for the dual-stack check.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Vsock(_) => None,
        }
    }
}

/// An address that cannot be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {at}: {source}{hint}")]
pub struct ListenError {
    /// The address, as the configuration names it.
    pub at: String,
    #[source]
    pub source: std::io::Error,
    /// What the error means here (may be empty).
    pub hint: &'static str,
}

/// Why cmappserver cannot serve: every address it could not listen on.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct BindError(pub Vec<ListenError>);

/// Binds a vsock port on any CID (the guest's own).
fn listen_vsock(port: u32) -> Result<VsockListener, ListenError> {
    VsockListener::bind(VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port)).map_err(|source| {
        let hint = match source.raw_os_error() {
            Some(nix::libc::EAFNOSUPPORT) => {
                ": this kernel has no virtio-vsock support (load the vmw_vsock_virtio_transport \
                 module, and give the VM a vsock device)"
            }
            Some(nix::libc::EADDRINUSE) => ": another program listens on that port",
            _ => "",
        };
        ListenError {
            at: format!("vsock:{port}"),
            source,
            hint,
        }
    })
}

/// Binds every address; `[::]` is dual-stack, so a following `0.0.0.0` on the
/// same port is skipped when it is already covered. A vsock port that cannot
/// be bound (a guest without the vsock driver) is a warning while another
/// listener is up: the guest stays reachable over TCP.
pub async fn bind(addrs: &[ListenAddr]) -> Result<Vec<Listener>, BindError> {
    let mut listeners = Vec::new();
    let mut errors = Vec::new();
    let mut tcp_failed = false;
    for addr in addrs {
        match *addr {
            ListenAddr::Vsock { port } => match listen_vsock(port) {
                Ok(l) => listeners.push(Listener::Vsock(l)),
                Err(e) => errors.push(e),
            },
            ListenAddr::Tcp(addr) => match listen(addr) {
                Ok(l) => listeners.push(Listener::Tcp(l)),
                Err(source) => {
                    let covered = addr.ip().is_unspecified()
                        && listeners
                            .iter()
                            .filter_map(Listener::tcp_addr)
                            .any(|a| a.ip().is_unspecified() && a.port() == addr.port());
                    if !covered {
                        tcp_failed = true;
                        errors.push(ListenError {
                            at: addr.to_string(),
                            source,
                            hint: "",
                        });
                    }
                }
            },
        }
    }
    let all_specific = addrs
        .iter()
        .all(|a| matches!(a, ListenAddr::Tcp(t) if !t.ip().is_unspecified()) || matches!(a, ListenAddr::Vsock { .. }));
    if listeners.is_empty() || (tcp_failed && all_specific) {
        return Err(BindError(errors));
    }
    for e in errors {
        tracing::warn!("{e}");
    }
    Ok(listeners)
}

/// Serves until `shutdown` resolves, then tells every session and returns.
pub async fn run(
    listeners: Vec<Listener>,
    supervisor: Arc<Supervisor>,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let sessions = Arc::new(Semaphore::new(opts.max_connections));
    let pending = Arc::new(Pending::new(opts.max_silent, opts.max_pending));
    let failures = Arc::new(FailureLog::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(None);
    let ctx = SessionContext {
        supervisor: supervisor.clone(),
        idle_timeout: opts.idle_timeout,
        hello_timeout: opts.handshake_timeout,
        shutdown: shutdown_rx,
        policy: opts.policy.clone(),
        audit: opts.audit.clone(),
    };
    let shared = Arc::new(Shared {
        sessions: sessions.clone(),
        pending: pending.clone(),
        failures: failures.clone(),
        ctx,
        opts: opts.clone(),
    });
    let mut loops = JoinSet::new();
    for l in listeners {
        tracing::info!("listening on {}", l.describe());
        loops.spawn(accept_loop(l, shared.clone()));
    }
    loops.spawn(summarise(failures, pending, opts.handshake_log_interval));
    shutdown.await;
    tracing::info!("shutting down");
    loops.abort_all();
    supervisor.shutdown(opts.stop_processes_on_shutdown).await;
    let _ = shutdown_tx.send(Some(!opts.stop_processes_on_shutdown));
    // Sessions hold permits: wait (bounded) for them to say goodbye.
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        sessions.acquire_many(opts.max_connections as u32),
    )
    .await;
}

/// What every connection's task shares.
struct Shared {
    /// One permit per authenticated session.
    sessions: Arc<Semaphore>,
    pending: Arc<Pending>,
    failures: Arc<FailureLog>,
    ctx: SessionContext,
    opts: ServerOptions,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Copy)]
enum Peer {
    Tcp(SocketAddr),
    Vsock { cid: u32, port: u32 },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// Where failed handshakes come from, for their summary: an IP address, or a vsock CID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Source {
    Ip(IpAddr),
    Cid(u32),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Cid(cid) => write!(f, "vsock CID {cid}"),
        }
    }
}

impl Peer {
    fn source(&self) -> Source {
        match self {
            Peer::Tcp(a) => Source::Ip(a.ip()),
            Peer::Vsock { cid, .. } => Source::Cid(*cid),
        }
    }
}

/// An accepted connection of either transport.
trait Accepted: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Resolves once the peer has sent its first bytes (`Ok(false)`: it
    /// closed first). Until then the connection costs a socket only.
    fn first_bytes(&self) -> impl Future<Output = std::io::Result<bool>> + Send + '_;
}

impl Accepted for TcpStream {
    async fn first_bytes(&self) -> std::io::Result<bool> {
        let mut first = [0u8; 1];
        self.peek(&mut first).await.map(|n| n > 0)
    }
}

/// A vsock stream has no peek: its connections enter the handshake budget at
/// once. Its peers are the host and, where the hypervisor allows it, the
/// guests of the same host, not a network.
impl Accepted for VsockStream {
    async fn first_bytes(&self) -> std::io::Result<bool> {
        Ok(true)
    }
}

/// Accepts for ever: never waits for a free slot (the kernel's backlog must
/// never fill behind a limit), but makes room among the unauthenticated
/// connections as each one arrives (see [`Pending`]).
async fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(tcp, peer)| {
                let _ = tcp.set_nodelay(true);
                let _ = socket_keepalive(&tcp);
                let (ticket, shed) = shared.pending.admit();
                tokio::spawn(serve(tcp, Peer::Tcp(peer), ticket, shed, shared.clone()));
            }),
            Listener::Vsock(l) => l.accept().await.map(|(stream, peer)| {
                let peer = Peer::Vsock {
                    cid: peer.cid(),
                    port: peer.port(),
                };
                let (ticket, shed) = shared.pending.admit();
                tokio::spawn(serve(stream, peer, ticket, shed, shared.clone()));
            }),
        };
        match accepted {
            Ok(()) => backoff = Duration::from_millis(10),
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn serve<S: Accepted>(stream: S, peer: Peer, ticket: Ticket, shed: oneshot::Receiver<()>, shared: Arc<Shared>) {
    let timeout = shared.opts.handshake_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    // Until authenticated, the connection may be shed to make room (the
    // ticket's receiver resolves) and is bounded by the handshake timeout.
    let handshake = async {
        // A connection that has sent nothing yet costs a socket only; it
        // enters the TLS handshake (and its budget) with its first bytes.
        match stream.first_bytes().await {
            Ok(false) => return Err("the connection was closed before the TLS handshake".to_string()),
            Ok(true) => {}
            Err(e) => return Err(format!("the connection failed before the TLS handshake ({e})")),
        }
        ticket.promote();
        // The material in force now: a reload affects new connections only.
        TlsAcceptor::from(shared.opts.tls.get())
            .accept(stream)
            .await
            .map_err(|e| common::tls::describe_handshake_error(&e))
    };
    let tls = tokio::select! {
        r = tokio::time::timeout_at(deadline, handshake) => match r {
            Err(_) => {
                shared.failures.failed(peer, &format!("TLS handshake timed out after {timeout:?}"));
                return;
            }
            Ok(Err(why)) => {
                shared.failures.failed(peer, &format!("TLS handshake failed: {why}"));
                return;
            }
            Ok(Ok(s)) => s,
        },
        _ = shed => {
            tracing::debug!(%peer, "unauthenticated connection shed to make room");
            return;
        }
    };
    // Authenticated: from here on nothing sheds this connection.
    drop(ticket);
    let who = common::tls::peer_identity(tls.get_ref().1);
    let Ok(_permit) = shared.sessions.clone().try_acquire_owned() else {
        tracing::warn!(%peer, peer_cert = %who, "refusing a session: the limit of {} connections (maxConnections) is reached", shared.opts.max_connections);
        session::refuse(
            tls,
            format!(
                "cmappserver's connection limit ({}, maxConnections) is reached; try again later",
                shared.opts.max_connections
            ),
            shared.ctx.hello_timeout,
        )
        .await;
        return;
    };
    tracing::debug!(%peer, peer_cert = %who, "connection authenticated");
    let client = Arc::new(crate::policy::Client::from_tls(tls.get_ref().1));
    let peer_info = session::Peer {
        addr: peer.to_string(),
        client,
    };
    match session::run(tls, shared.ctx.clone(), peer_info).await {
        SessionEnd::Closed | SessionEnd::Shutdown => tracing::debug!(%peer, "connection closed"),
        SessionEnd::IdleTimeout => {
            tracing::info!(%peer, peer_cert = %who, "closing idle connection")
        }
        SessionEnd::Protocol(e) => {
            tracing::warn!(%peer, peer_cert = %who, "closing connection: {e}")
        }
        SessionEnd::Io(e) => tracing::info!(%peer, peer_cert = %who, "connection lost: {e}"),
        SessionEnd::Refused(why) => tracing::warn!(%peer, peer_cert = %who, "refused the client: {why}"),
    }
}

/// The connections not authenticated yet, in two budgets: those that have
/// sent nothing (a socket each, `maxSilentConnections`) and those in the TLS
/// handshake (`maxPendingConnections`). A newcomer that finds its budget
/// full sheds the oldest connection of that budget, never an authenticated
/// one: a flood of silent or stalled connections only ever displaces its own
/// kind, while a real manager, which sends its ClientHello at once and
/// completes the handshake in milliseconds, is the youngest in each budget
/// for the little time it spends there.
#[derive(Debug)]
struct Pending {
    max_silent: usize,
    max_handshaking: usize,
    inner: Mutex<PendingInner>,
}

#[derive(Debug, Default)]
struct PendingInner {
    next: u64,
    /// Oldest first; dropping a sender sheds that connection.
    silent: BTreeMap<u64, oneshot::Sender<()>>,
    handshaking: BTreeMap<u64, oneshot::Sender<()>>,
    /// Shed since the last summary.
    shed: u64,
}

/// A connection's place among the unauthenticated ones. Dropping it leaves the budgets.
#[derive(Debug)]
struct Ticket {
    id: u64,
    pending: Arc<Pending>,
}

impl Pending {
    fn new(max_silent: usize, max_handshaking: usize) -> Self {
        Pending {
            max_silent: max_silent.max(1),
            max_handshaking: max_handshaking.max(1),
            inner: Mutex::new(PendingInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a newly accepted connection, shedding the oldest silent one
    /// if need be. The receiver resolves when this connection is shed.
    fn admit(self: &Arc<Self>) -> (Ticket, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut g = self.lock();
        let id = g.next;
        g.next += 1;
        while g.silent.len() >= self.max_silent {
            g.silent.pop_first();
            g.shed += 1;
        }
        g.silent.insert(id, tx);
        (
            Ticket {
                id,
                pending: self.clone(),
            },
            rx,
        )
    }
}

impl Ticket {
    /// The connection has sent its first bytes: it moves to the handshake
    /// budget, shedding the oldest connection there if need be.
    fn promote(&self) {
        let p = &self.pending;
        let mut g = p.lock();
        let Some(tx) = g.silent.remove(&self.id) else {
            return; // already shed
        };
        while g.handshaking.len() >= p.max_handshaking {
            g.handshaking.pop_first();
            g.shed += 1;
        }
        g.handshaking.insert(self.id, tx);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.pending.lock();
        if g.silent.remove(&self.id).is_none() {
            g.handshaking.remove(&self.id);
        }
    }
}

/// Failed handshakes: the first few of each interval are logged one by one,
/// the rest counted by source and summarised once per interval, so that a
/// scan or a flood cannot flood the log.
#[derive(Debug, Default)]
struct FailureLog {
    inner: Mutex<FailureInner>,
}

#[derive(Debug, Default)]
struct FailureInner {
    logged: u32,
    suppressed: u64,
    by_source: HashMap<Source, u64>,
}

/// Failed handshakes logged one by one per interval before the rest are only counted.
const FAILURES_LOGGED_PER_INTERVAL: u32 = 5;
/// Sources remembered per interval (the rest are counted as "other").
const FAILURE_SOURCES: usize = 1000;

impl FailureLog {
    fn failed(&self, peer: Peer, why: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.logged < FAILURES_LOGGED_PER_INTERVAL {
            g.logged += 1;
            drop(g);
            tracing::warn!(%peer, "{why}");
            return;
        }
        g.suppressed += 1;
        let source = peer.source();
        if g.by_source.len() < FAILURE_SOURCES || g.by_source.contains_key(&source) {
            *g.by_source.entry(source).or_default() += 1;
        }
    }

    /// The summary of the interval just ended, if anything was suppressed; starts a new interval.
    fn summary(&self, interval: Duration) -> Option<String> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let FailureInner {
            suppressed, by_source, ..
        } = std::mem::take(&mut *g);
        if suppressed == 0 {
            return None;
        }
        let mut sources: Vec<(Source, u64)> = by_source.into_iter().collect();
        sources.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let counted: u64 = sources.iter().map(|s| s.1).sum();
        let mut top: Vec<String> = sources.iter().take(5).map(|(ip, n)| format!("{ip} ({n})")).collect();
        if sources.len() > 5 || counted < suppressed {
            top.push(format!(
                "{} more",
                suppressed - sources.iter().take(5).map(|s| s.1).sum::<u64>()
            ));
        }
        Some(format!(
            "{suppressed} more failed TLS handshakes in the last {} s, from {} source(s): {}",
            interval.as_secs_f64(),
            sources.len(),
            top.join(", ")
        ))
    }
}

/// Once per interval: the summary of failed handshakes, and of connections shed.
async fn summarise(failures: Arc<FailureLog>, pending: Arc<Pending>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Some(s) = failures.summary(interval) {
            tracing::warn!("{s}");
        }
        let (shed, silent, handshaking) = {
            let mut g = pending.lock();
            (std::mem::take(&mut g.shed), g.silent.len(), g.handshaking.len())
        };
        if shed > 0 {
            tracing::warn!(
                "shed {shed} unauthenticated connections in the last {} s to make room (oldest first; now {silent} silent, {handshaking} in the TLS handshake; limits maxSilentConnections={}, maxPendingConnections={})",
                interval.as_secs_f64(),
                pending.max_silent,
                pending.max_handshaking
            );
        }
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
