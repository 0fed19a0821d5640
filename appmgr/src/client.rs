//! Typed calls to a cmappserver: connect (with retries until a deadline),
//! authenticate, say hello, then send requests and read events.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::address::{Node, Target};
use common::config::ManagerConfig;
use common::connection::{self, MessageReader, MessageWriter};
use common::message::{
    Ack, ErrorKind, ErrorReply, Event, ExitStatus, Hello, HelloReply, InstanceId, Launch, ProcessInfo, Refusal,
    Request, Started, Stop, Welcome,
};
use common::service::ServiceSpec;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_vsock::{VsockAddr, VsockStream};

pub use crate::error::ClientError;
use crate::error::{Cause, ConfigError};

/// Everything needed to reach one guest.
#[derive(Clone)]
pub struct Connector {
    /// The material in force: re-read from the files at each connection
    /// attempt (a rotated key or trust store is used by the next reconnect);
    /// files that no longer load leave the last good material in force.
    tls: Arc<std::sync::Mutex<TlsConnector>>,
    /// The material in `tls` was just loaded by [`Connector::new`]: the
    /// first attempt uses it as it is (reading and checking the files again
    /// a millisecond later cost a one-shot run half a millisecond or more).
    fresh: Arc<std::sync::atomic::AtomicBool>,
    /// Where the material comes from.
    files: KeyFiles,
    pub node: Node,
    server_name: ServerName<'static>,
    /// Who this manager says it is in its hello (`Hello::manager`); the
    /// process's own identity when `None`.
    manager: Option<String>,
}

/// The key store and trust store a connector reads.
#[derive(Debug, Clone)]
struct KeyFiles {
    key_store: std::path::PathBuf,
    key_store_password: String,
    trust_store: std::path::PathBuf,
    trust_store_password: String,
}

impl KeyFiles {
    /// Warnings about `ours` (the key store's chain) and the certificates
    /// `trust` trusts that expire within 30 days (or have).
    fn expiry_warnings(&self, ours: &[CertificateDer<'static>], trust: &common::tls::TrustStore) -> Vec<String> {
        let now = std::time::SystemTime::now();
        let trusted: Vec<_> = trust.pinned.iter().chain(&trust.cas).cloned().collect();
        let mut out = common::tls::expiry_warnings("keyStore", &self.key_store, ours, now);
        out.extend(common::tls::expiry_warnings(
            "trustStore",
            &self.trust_store,
            &trusted,
            now,
        ));
        out
    }

    fn load(&self) -> Result<(common::tls::KeyMaterial, common::tls::TrustStore), ClientError> {
        let key_material = |which| move |source| ConfigError::KeyMaterial { which, source };
        let key =
            common::tls::load_key_store(&self.key_store, &self.key_store_password).map_err(key_material("keyStore"))?;
        let trust = common::tls::load_trust_store(&self.trust_store, &self.trust_store_password)
            .map_err(key_material("trustStore"))?;
        Ok((key, trust))
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({})", self.node)
    }
}

/// A connected byte stream of any transport, before TLS.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sync + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + std::fmt::Debug> Transport for T {}

/// The longest answer line a vsock device may send to `CONNECT`.
const HYBRID_LINE_MAX: usize = 64;

/// The Firecracker "hybrid vsock" handshake on a user-space vsock device's
/// Unix socket (vhost-device-vsock, Cloud Hypervisor speak it too): write
/// `CONNECT <port>\n`, read `OK <host port>\n`; the stream that follows is
/// the guest's port. Read a byte at a time, so that nothing of the stream
/// itself is consumed.
pub async fn hybrid_vsock_connect(path: &Path, port: u32) -> std::io::Result<UnixStream> {
    use std::io::{Error, ErrorKind};
    let mut s = UnixStream::connect(path).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(Error::new(
                ErrorKind::ConnectionRefused,
                format!(
                    "the vsock device closed the connection after CONNECT {port}: nothing listens on \
                     vsock port {port} in the guest, or the guest is not running"
                ),
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > HYBRID_LINE_MAX {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("the vsock device's answer to CONNECT {port} is longer than {HYBRID_LINE_MAX} bytes"),
            ));
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line.starts_with("OK ") {
        Ok(s)
    } else {
        Err(Error::new(
            ErrorKind::ConnectionRefused,
            format!(
                "the vsock device answered CONNECT {port} with {:?}, not OK",
                common::text::clip(line.trim_end(), HYBRID_LINE_MAX)
            ),
        ))
    }
}

/// What an AF_VSOCK connect error means, for the message.
fn vsock_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(nix::libc::ENODEV) => {
            " (no vsock transport reaches that CID: no guest has it, or this host has no vhost_vsock module loaded)"
        }
        Some(nix::libc::ECONNRESET | nix::libc::ECONNREFUSED) => " (nothing listens on that vsock port in the guest)",
        _ => "",
    }
}

impl Connector {
    /// Loads the key material and the trust store for `node` from `conf`.
    pub fn new(conf: &ManagerConfig, node: &str) -> Result<Connector, ClientError> {
        Self::build(conf, node, false).map(|(c, _)| c)
    }

    /// [`Connector::new`], with warnings about our own and the trusted
    /// certificates that expire within 30 days (or have), taken from the
    /// material just loaded (not from a second load of both stores, a key
    /// store's password derivation included).
    pub fn new_with_expiry_warnings(conf: &ManagerConfig, node: &str) -> Result<(Connector, Vec<String>), ClientError> {
        Self::build(conf, node, true)
    }

    fn build(conf: &ManagerConfig, node: &str, warn: bool) -> Result<(Connector, Vec<String>), ClientError> {
        common::tls::install_crypto_provider();
        let node = Node::parse(node, conf.port).map_err(ConfigError::Node)?;
        let trust_path = match node.name() {
            Some(name) => conf.trust_store_for(name),
            None => &conf.trust_store,
        };
        let files = KeyFiles {
            key_store: conf.key_store.clone(),
            key_store_password: conf.key_store_password.clone(),
            trust_store: trust_path.to_path_buf(),
            trust_store_password: conf.trust_store_password.clone(),
        };
        let (key, trust) = files.load()?;
        let warnings = if warn {
            files.expiry_warnings(&key.certs, &trust)
        } else {
            Vec::new()
        };
        let server_name = match node.name() {
            Some(name) => ServerName::try_from(name.to_string()).map_err(|source| ConfigError::ServerName {
                node: node.to_string(),
                name: name.to_string(),
                source,
            })?,
            // A vsock address names no one: a CA-signed certificate could
            // be any guest's, so CA trust needs the guest's name.
            None if !trust.cas.is_empty() => return Err(ConfigError::VsockNeedsName { node: node.to_string() }.into()),
            // Pinned trust: the certificate itself is the identity; the name is not checked.
            None => ServerName::try_from("vsock.invalid").expect("a valid DNS name"),
        };
        let tls = common::tls::client_config(key, trust)
            .map_err(|source| ConfigError::KeyMaterial { which: "TLS", source })?;
        let connector = Connector {
            tls: Arc::new(std::sync::Mutex::new(TlsConnector::from(
                Arc::<rustls::ClientConfig>::clone(&tls),
            ))),
            fresh: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            files,
            node,
            server_name,
            manager: None,
        };
        Ok((connector, warnings))
    }

    /// The material to connect with: the files as they are now, or the
    /// last good material when they do not load (said once per attempt);
    /// for the first attempt, the material `new` has just loaded.
    fn refresh(&self) -> TlsConnector {
        let mut current = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if self.fresh.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return current.clone();
        }
        let fresh = self.files.load().and_then(|(key, trust)| {
            common::tls::client_config(key, trust)
                .map_err(|source| ConfigError::KeyMaterial { which: "TLS", source }.into())
        });
        match fresh {
            Ok(tls) => *current = TlsConnector::from(tls),
            Err(e) => tracing::warn!("{e}; connecting with the key material loaded before"),
        }
        current.clone()
    }

    /// Connections made by this connector introduce themselves as `manager`:
    /// separate runs that act as one manager (a cluster's one-shot actions
    /// on one resource) share an identity, so the server owes their exits
    /// one acknowledgement, not one per run.
    pub fn with_manager(mut self, manager: String) -> Connector {
        self.manager = Some(manager);
        self
    }

    /// One attempt: the transport (TCP, vsock or a vsock device's socket),
    /// TLS, hello, all within `limit` (one deadline for the three phases:
    /// each had the whole `limit` before, and a manager whose TCP connect
    /// took most of it went on with TLS and the hello for as long again,
    /// giving up at up to three times its `cmappserver_timeout`). A TCP
    /// connect sends a fresh SYN every second meanwhile ([`tcp_connect`]);
    /// over a connection the guest answered only after a silence, a
    /// handshake still unanswered after [`HANDSHAKE_AGAIN`] gets a second
    /// connection beside it ([`Connector::handshake_or_again`]).
    pub async fn connect_once(&self, limit: Duration) -> Result<Client, ClientError> {
        let end = Instant::now() + limit;
        let (stream, at, silent) = self.open(end).await?;
        let first = self.handshake(stream, at, end);
        if silent {
            self.handshake_or_again(first, end).await
        } else {
            // Answered at once: a slow handshake is a busy server (every
            // manager reconnecting after its restart), not a lossy
            // network, and a second one would only add to its work.
            first.await
        }
    }

    /// TLS and the hello over a connected stream, by `end`.
    async fn handshake(&self, stream: Box<dyn Transport>, at: String, end: Instant) -> Result<Client, ClientError> {
        let connector = self.refresh();
        let tls = match tokio::time::timeout_at(end, connector.connect(self.server_name.clone(), stream)).await {
            Err(_) => {
                return Err(ClientError::unreachable(
                    format!("TLS handshake with {at}"),
                    Cause::TimedOut,
                ))
            }
            Ok(Err(e)) => return Err(ClientError::handshake(format!("TLS handshake with {at} failed"), e)),
            Ok(Ok(s)) => s,
        };
        let mut hello = Hello::current("cmappmgr");
        if let Some(m) = &self.manager {
            hello.manager = Some(m.clone());
        }
        Client::hello(tls, end, &hello).await
    }

    /// Waits for `first` (a handshake over a connected stream); if it has
    /// not ended after [`HANDSHAKE_AGAIN`], a second connection and
    /// handshake run beside it, and the first to succeed wins (the other
    /// connection is closed). For a connection the guest answered after a
    /// silence: found by the fault campaign, a manager's one handshake,
    /// begun as the guest came back from a partition, went unanswered for
    /// 6 s though the guest was reachable again for 2.6 s of them and
    /// served the other managers (its segments waiting in TCP's
    /// retransmission backoff, or dropped with a connection the far end no
    /// longer had); the manager gave up. Nothing is abandoned: a slow server
    /// still completes the first handshake, and at most two are ever in
    /// progress.
    async fn handshake_or_again(
        &self,
        first: impl std::future::Future<Output = Result<Client, ClientError>>,
        end: Instant,
    ) -> Result<Client, ClientError> {
        tokio::pin!(first);
        let again = Instant::now() + HANDSHAKE_AGAIN;
        if again >= end {
            return first.await;
        }
        tokio::select! {
            r = &mut first => return r,
            _ = tokio::time::sleep_until(again) => {}
        }
        tracing::debug!(
            "no answer to the handshake for {} s: a second connection beside it",
            HANDSHAKE_AGAIN.as_secs_f64()
        );
        let second = async {
            let (stream, at, _) = self.open(end).await?;
            self.handshake(stream, at, end).await
        };
        tokio::pin!(second);
        let (mut first_failed, mut second_failed) = (None, None);
        loop {
            tokio::select! {
                r = &mut first, if first_failed.is_none() => match r {
                    Ok(c) => return Ok(c),
                    Err(e) => first_failed = Some(e),
                },
                r = &mut second, if second_failed.is_none() => match r {
                    Ok(c) => return Ok(c),
                    Err(e) => second_failed = Some(e),
                },
            }
            match (first_failed.take(), second_failed.take()) {
                // One failed for good (the server refused this host): no
                // other attempt can do better.
                (Some(e), other) | (other, Some(e)) if !e.is_retryable() => {
                    drop(other);
                    return Err(e);
                }
                // Both failed: the first attempt's error says most.
                (Some(e), Some(_)) => return Err(e),
                (f, s) => (first_failed, second_failed) = (f, s),
            }
        }
    }

    /// The connected stream, by `end`, how to name its far end in messages,
    /// and whether the guest was silent before it answered (TCP only: the
    /// first SYN went unanswered, see [`tcp_connect`]).
    async fn open(&self, end: Instant) -> Result<(Box<dyn Transport>, String, bool), ClientError> {
        match &self.node.target {
            Target::Tcp { host, port } => {
                let addrs: Vec<_> = tokio::time::timeout_at(end, tokio::net::lookup_host((host.as_str(), *port)))
                    .await
                    .map_err(|_| ClientError::unreachable(format!("name lookup of {host}"), Cause::TimedOut))?
                    .map_err(|e| ClientError::unreachable(format!("cannot resolve {host}"), e))?
                    .collect();
                let mut last = ClientError::unreachable(format!("name lookup of {host}"), Cause::NoAddresses);
                for addr in addrs {
                    match tokio::time::timeout_at(end, tcp_connect(addr, SYN_AGAIN)).await {
                        Err(_) => last = ClientError::unreachable(format!("connection to {addr}"), Cause::TimedOut),
                        Ok(Err(e)) => last = ClientError::unreachable(format!("connection to {addr} failed"), e),
                        Ok(Ok((tcp, silent))) => {
                            let _ = tcp.set_nodelay(true);
                            return Ok((Box::new(tcp), addr.to_string(), silent));
                        }
                    }
                }
                Err(last)
            }
            Target::Vsock { cid, port } => {
                let at = format!("vsock:{cid}:{port}");
                match tokio::time::timeout_at(end, VsockStream::connect(VsockAddr::new(*cid, *port))).await {
                    Err(_) => Err(ClientError::unreachable(format!("connection to {at}"), Cause::TimedOut)),
                    // No AF_VSOCK in this kernel at all: no retry will help.
                    Ok(Err(source)) if source.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {
                        Err(ConfigError::NoVsock { at, source }.into())
                    }
                    Ok(Err(source)) => {
                        let hint = vsock_hint(&source);
                        Err(ClientError::unreachable(
                            format!("connection to {at} failed"),
                            Cause::Io { source, hint },
                        ))
                    }
                    Ok(Ok(s)) => Ok((Box::new(s), at, false)),
                }
            }
            Target::VsockUnix { path, port } => {
                let at = format!("vsock port {port} through {}", path.display());
                match tokio::time::timeout_at(end, hybrid_vsock_connect(path, *port)).await {
                    Err(_) => Err(ClientError::unreachable(format!("connection to {at}"), Cause::TimedOut)),
                    Ok(Err(e)) => Err(ClientError::unreachable(format!("connection to {at} failed"), e)),
                    Ok(Ok(s)) => Ok((Box::new(s), at, false)),
                }
            }
        }
    }

    /// Retries [`connect_once`](Self::connect_once) with backoff until it
    /// succeeds, fails for good, or `deadline` passes (then the last error).
    /// Each attempt's state (two handshakes beside each other at most,
    /// 5.8 KB) is boxed: on the heap while connecting, not inline in the
    /// future of every caller for its whole life (the monitoring loop's was
    /// 14.5 KB, copied on the stack on its way into the runtime).
    pub async fn connect(&self, deadline: Instant) -> Result<Client, ClientError> {
        retry_until(deadline, |limit| Box::pin(self.connect_once(limit))).await
    }
}

/// How long a TLS handshake and hello may go unanswered on one connection
/// before a second connection is tried beside it
/// ([`Connector::handshake_or_again`]), when the guest answered the
/// connection only after a silence: above a loaded guest's time for them
/// (the fault campaign measured 0.5 s median, 1.6 s at the 90th
/// percentile, for a whole launch by every manager at once after a
/// restart, debug build, load 10 to 20), and well below the 6 s of a short
/// `cmappserver_timeout`.
const HANDSHAKE_AGAIN: Duration = Duration::from_secs(2);

/// How often [`tcp_connect`] puts a fresh SYN on the wire while the guest
/// has not answered: the kernel's own first retransmission time (its
/// initial RTO, RFC 6298).
const SYN_AGAIN: Duration = Duration::from_secs(1);

/// A TCP connection to `addr` that sees the guest within about `again`
/// of its becoming reachable.
///
/// A lone connect started while the guest is cut off resends its SYN on
/// the kernel's backoff (a few times 1 s apart on recent kernels, then 2,
/// 4, 8 s apart; 1, 2, 4 s apart on older ones), and misses a reachable
/// window of a second or two between two outages: the manager then gives
/// up at its timeout though the guest was reachable in time (found by the
/// fault campaign). So the first attempt is kept as it is, never
/// abandoned before `limit` (a slow network completes it, whatever its
/// round trip), and beside it one fresh attempt, replaced every `again`
/// from 1.5 × `again` on (half a period off the kernel's own 1 s retries),
/// sends a new SYN each time. At most two sockets, about one SYN a second
/// more than the kernel alone sends, and only while the guest does not
/// answer: a refusal or a quick error of the first attempt is the answer
/// at once, as before, and the caller backs off. The first attempt to
/// connect wins; the other is closed, almost always before its SYN is
/// answered (the far end's SYN-ACK then meets a reset, leaving the
/// server nothing), at worst as a connection that ends before its TLS
/// handshake. An error of the fresh attempt is the answer; one of the
/// first, once fresh attempts run, is not.
/// Returns the connection and whether the guest left the first SYN
/// unanswered for `again` × 1.5 (the network was dropping packets).
async fn tcp_connect(addr: std::net::SocketAddr, again: Duration) -> std::io::Result<(TcpStream, bool)> {
    let mut first = Box::pin(TcpStream::connect(addr));
    let mut first_failed = false;
    let mut fresh = None;
    let mut tick = tokio::time::interval_at(Instant::now() + again * 3 / 2, again);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = &mut first, if !first_failed => match r {
                Ok(tcp) => return Ok((tcp, fresh.is_some())),
                Err(e) if fresh.is_none() => return Err(e),
                Err(_) => first_failed = true,
            },
            r = async {
                match fresh.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending::<std::io::Result<TcpStream>>().await,
                }
            } => return r.map(|tcp| (tcp, true)),
            _ = tick.tick() => fresh = Some(Box::pin(TcpStream::connect(addr))),
        }
    }
}

/// Runs `attempt` (given how long it may take) with backoff until it
/// succeeds, fails for good, or `deadline` passes (then its last error); the
/// last attempt is made at the deadline. See [`Backoff`] for the waits.
async fn retry_until<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, ClientError>
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Backoff::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt_limit = left.clamp(Duration::from_millis(100), Duration::from_secs(10));
        match attempt(attempt_limit).await {
            Ok(c) => return Ok(c),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                tracing::debug!("connect attempt failed: {e}");
                let now = Instant::now();
                if now >= deadline {
                    return Err(e);
                }
                // Never past the deadline, and one last attempt at it: a
                // server back since the previous attempt is found in time.
                tokio::time::sleep(backoff.next(e.is_refused()).min(deadline - now)).await;
            }
        }
    }
}

/// The waits between connection attempts: 50 ms doubling, up to 1 s, or up
/// to [`Backoff::REFUSED_CAP`] while the guest answers that nothing listens
/// (cmappserver is restarting: it is back in a moment, and a refused attempt
/// costs a SYN and a RST). Each wait is drawn between half and all of the
/// step ("equal jitter"), so that the managers a restart disconnected at the
/// same instant do not come back in lockstep.
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            step: Duration::from_millis(50),
        }
    }
}

impl Backoff {
    const CAP: Duration = Duration::from_secs(1);
    const REFUSED_CAP: Duration = Duration::from_millis(250);

    /// The wait after a failed attempt (`refused`: the connection was refused).
    fn next(&mut self, refused: bool) -> Duration {
        let cap = if refused { Self::REFUSED_CAP } else { Self::CAP };
        let step = self.step.min(cap);
        self.step = (step * 2).min(Self::CAP);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

type Tls = TlsStream<Box<dyn Transport>>;

/// An authenticated connection after the hello exchange.
#[derive(Debug)]
pub struct Client {
    rd: MessageReader<ReadHalf<Tls>>,
    wr: MessageWriter<WriteHalf<Tls>>,
    pub welcome: Welcome,
    /// Output lines that arrived while [`call`](Self::call) waited for its
    /// answer (a launched application may print before its `started` reply
    /// is written), handed out first by [`next_event`](Self::next_event).
    held: std::collections::VecDeque<Event>,
}

/// At most this many output lines are held during one call (the oldest go).
const HELD_MAX: usize = 1000;

impl Client {
    async fn hello(tls: Tls, end: Instant, hello: &Hello) -> Result<Client, ClientError> {
        let (mut rd, mut wr) = connection::split(tls);
        wr.write(hello)
            .await
            .map_err(|e| ClientError::unreachable("sending the hello", e))?;
        // The server answers with a Welcome, or an Error event (version mismatch).
        let reply: HelloReply = match tokio::time::timeout_at(end, rd.read()).await {
            Err(_) => {
                return Err(ClientError::unreachable(
                    "waiting for cmappserver's welcome",
                    Cause::TimedOut,
                ))
            }
            Ok(Err(e)) => {
                // TLS 1.3: a rejected client certificate surfaces on the first read.
                return Err(match e {
                    common::connection::ConnectionError::Io(source) if common::tls::is_auth_failure(&source) => {
                        ClientError::handshake("cmappserver rejected this host's certificate".into(), source)
                    }
                    e => ClientError::on_connection("before its welcome", e),
                });
            }
            Ok(Ok(None)) => {
                return Err(ClientError::unreachable(
                    "waiting for cmappserver's welcome",
                    Cause::Closed,
                ))
            }
            Ok(Ok(Some(v))) => v,
        };
        match reply {
            HelloReply::Welcome(welcome) => Ok(Client {
                rd,
                wr,
                welcome,
                held: Default::default(),
            }),
            HelloReply::Refused(Refusal::Error(e)) => Err(match e.kind {
                ErrorKind::Version => ClientError::Version(e.message),
                // The server's session limit: a later attempt may find room.
                ErrorKind::Limit => ClientError::unreachable("saying hello", Cause::Server(e.message)),
                // This client may not connect (the guest's allowedClients).
                ErrorKind::Forbidden => ClientError::Refused(e),
                _ => ClientError::Protocol {
                    doing: "in its answer to the hello",
                    cause: Cause::Server(e.message),
                },
            }),
        }
    }

    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        self.wr
            .write(req)
            .await
            .map_err(|e| ClientError::unreachable("sending a request", e))
    }

    /// The next event; `Ok(None)` when the server closed the connection.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        if let Some(ev) = self.held.pop_front() {
            return Ok(Some(ev));
        }
        self.read_wire().await
    }

    async fn read_wire(&mut self) -> Result<Option<Event>, ClientError> {
        self.rd
            .read()
            .await
            .map_err(|e| ClientError::on_connection("reading from cmappserver", e))
    }

    /// The next event before `deadline`. Running out of time, or the server
    /// closing the connection, is `Unreachable` (retryable) while `doing`.
    pub async fn next_before(&mut self, deadline: Instant, doing: &'static str) -> Result<Event, ClientError> {
        if let Some(ev) = self.held.pop_front() {
            return Ok(ev);
        }
        Self::answer_or_unreachable(tokio::time::timeout_at(deadline, self.read_wire()).await, doing)
    }

    fn answer_or_unreachable(
        read: Result<Result<Option<Event>, ClientError>, tokio::time::error::Elapsed>,
        doing: &'static str,
    ) -> Result<Event, ClientError> {
        match read {
            Err(_) => Err(ClientError::unreachable(doing, Cause::TimedOut)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(None)) => Err(ClientError::unreachable(doing, Cause::Closed)),
            Ok(Ok(Some(ev))) => Ok(ev),
        }
    }

    /// Sends `req` and returns the first event that is not an output line
    /// or another push, nor the pong of an earlier ping. Output lines are
    /// held for [`next_event`](Self::next_event): those of a process being
    /// launched may come before its `started` reply.
    pub async fn call(&mut self, req: &Request, limit: Duration) -> Result<Event, ClientError> {
        self.send(req).await?;
        let deadline = Instant::now() + limit;
        let doing = "waiting for cmappserver's answer";
        loop {
            let read = tokio::time::timeout_at(deadline, self.read_wire()).await;
            match Self::answer_or_unreachable(read, doing)? {
                ev @ Event::Output(_) => {
                    if self.held.len() >= HELD_MAX {
                        self.held.pop_front();
                    }
                    self.held.push_back(ev);
                }
                Event::ShuttingDown(_) | Event::Superseded(_) => continue,
                // The answer to a ping sent before this request, not to it.
                Event::Pong(_) if !matches!(req, Request::Ping(_)) => continue,
                ev => return Ok(ev),
            }
        }
    }

    /// Launches a service or attaches to it (`attach_only`: never start a
    /// new process). The one launch and attach path: the monitoring loop and
    /// the one-shot verbs all come through here. A refusal is returned as the
    /// server's reply, for the caller to map onto its own exit codes.
    pub async fn launch(&mut self, req: Launch, limit: Duration) -> Result<Result<Started, ErrorReply>, ClientError> {
        match self.call(&Request::Launch(req), limit).await? {
            Event::Started(s) => Ok(Ok(s)),
            Event::Error(e) => Ok(Err(e)),
            other => Err(ClientError::Protocol {
                doing: "in its answer to a launch",
                cause: Cause::Unexpected(other.kind()),
            }),
        }
    }

    /// The server's record of `spec` (running, or exited and not yet
    /// acknowledged), without attaching to it.
    pub async fn find(&mut self, spec: &ServiceSpec, limit: Duration) -> Result<Option<ProcessInfo>, ClientError> {
        let list = match self.call(&Request::List, limit).await? {
            Event::Processes(l) => l.processes,
            other => {
                return Err(ClientError::Protocol {
                    doing: "in its answer to a listing",
                    cause: Cause::Unexpected(other.kind()),
                })
            }
        };
        let key = spec.key();
        Ok(list.into_iter().find(|p| {
            // An exit some manager has acknowledged is history (kept for
            // the others that owe theirs), not the service's current record.
            !p.acked
                && if p.key.is_empty() {
                    // A server that does not send keys: compare what it shows.
                    p.name == spec.name && p.service == spec.display()
                } else {
                    p.key == key
                }
        }))
    }

    /// Acknowledges the exit status of `id` and waits (bounded by `limit`) for
    /// the server's reply. Anything else that arrives meanwhile — output, a
    /// pong to a ping that crossed the exit on the wire — is not the reply.
    pub async fn ack(&mut self, id: &InstanceId, limit: Duration) -> Result<(), ClientError> {
        self.send(&Request::Ack(Ack { id: id.clone() })).await?;
        let deadline = Instant::now() + limit;
        loop {
            match self.event_before(deadline, "acknowledgement").await? {
                Event::Acked(a) if a.id == *id => return Ok(()),
                Event::Error(e) => return Err(ClientError::Refused(e)),
                _ => continue,
            }
        }
    }

    /// Stops the process `id` and waits until it is gone, bounded by `limit`
    /// (cmappmgr's `stopTimeout`): cmappserver sends TERM to its process group
    /// and KILL after its grace period. The exit status is acknowledged and
    /// returned. Every other event that arrives meanwhile (the process's
    /// output) is handed to `on_event`. The one stop path: the halt of a
    /// monitoring cmappmgr and the one-shot stop both use it.
    pub async fn stop_process(
        &mut self,
        id: &InstanceId,
        limit: Duration,
        mut on_event: impl FnMut(&Event),
    ) -> Result<ExitStatus, ClientError> {
        let deadline = Instant::now() + limit;
        self.send(&Request::Stop(Stop {
            id: id.clone(),
            grace_ms: None,
        }))
        .await?;
        loop {
            match self.event_before(deadline, "end of the stopped process").await? {
                Event::Exited(x) if x.id == *id => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.ack(id, left.max(Duration::from_secs(1))).await?;
                    return Ok(x.status);
                }
                Event::Stopping(a) if a.id == *id => {}
                Event::Error(e) => return Err(ClientError::Refused(e)),
                other => on_event(&other),
            }
        }
    }

    /// The next event, or `Timeout` naming `awaited` at `deadline`.
    async fn event_before(&mut self, deadline: Instant, awaited: &'static str) -> Result<Event, ClientError> {
        match tokio::time::timeout_at(deadline, self.next_event()).await {
            Err(_) => Err(ClientError::Timeout { awaited }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(None)) => Err(ClientError::unreachable(
                format!("waiting for the {awaited}"),
                Cause::Closed,
            )),
            Ok(Ok(Some(ev))) => Ok(ev),
        }
    }

    /// Every monitored process: the `List` reply's pages, gathered.
    pub async fn list(&mut self, limit: Duration) -> Result<Vec<common::message::ProcessInfo>, ClientError> {
        let deadline = Instant::now() + limit;
        let mut page = match self.call(&Request::List, limit).await? {
            Event::Processes(p) => p,
            other => {
                return Err(ClientError::Protocol {
                    doing: "in its answer to a listing",
                    cause: Cause::Unexpected(other.kind()),
                })
            }
        };
        let mut all = std::mem::take(&mut page.processes);
        while page.more {
            page = match self.next_before(deadline, "waiting for the listing").await? {
                Event::Processes(p) => p,
                Event::Output(_) | Event::ShuttingDown(_) | Event::Superseded(_) => continue,
                other => {
                    return Err(ClientError::Protocol {
                        doing: "in the middle of a listing",
                        cause: Cause::Unexpected(other.kind()),
                    })
                }
            };
            all.append(&mut page.processes);
        }
        Ok(all)
    }

    /// Closes the connection cleanly (TLS close_notify), bounded.
    pub async fn close(mut self) {
        let _ = self.wr.close(Duration::from_secs(1)).await;
    }
}

/// What [`check`] found: the server's welcome and the ping's round trip.
#[derive(Debug)]
pub struct Checked {
    pub welcome: Welcome,
    pub round_trip: Duration,
}

/// Connects to `node` (a `-node` value: host or address, optionally `:port`,
/// or a vsock address), authenticates and pings: the one "does this guest's
/// cmappserver answer" routine, used by `cmappmgr check` and by the `vm`
/// hooks' `--check-node`. Connection and ping are one attempt, retried until
/// `timeout` while what went wrong may pass: a connection closed or reset
/// before the pong (as at a guest migration's switch-over) is tried again,
/// as a refused one is. The ping gets what is left (half a second at least),
/// so a connection that goes silent instead uses the rest of the time.
pub async fn check(conf: &ManagerConfig, node: &str, timeout: Duration) -> Result<Checked, ClientError> {
    let deadline = Instant::now() + timeout;
    let (connector, warnings) = Connector::new_with_expiry_warnings(conf, node)?;
    // Said first: an expired certificate is also why a connection fails.
    for w in warnings {
        tracing::warn!("{w}");
    }
    retry_until(deadline, |limit| Box::pin(check_once(&connector, limit, deadline))).await
}

/// One connection and one ping of [`check`].
async fn check_once(connector: &Connector, limit: Duration, deadline: Instant) -> Result<Checked, ClientError> {
    let mut client = connector.connect_once(limit).await?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    let t0 = Instant::now();
    match client
        .call(&Request::Ping(common::message::Ping { seq: 1 }), left)
        .await?
    {
        Event::Pong(_) => {
            let round_trip = t0.elapsed();
            let welcome = client.welcome.clone();
            client.close().await;
            Ok(Checked { welcome, round_trip })
        }
        other => Err(ClientError::Protocol {
            doing: "in its answer to a ping",
            cause: Cause::Unexpected(other.kind()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{retry_until, Backoff, ClientError};
    use crate::error::Cause;
    use std::time::Duration;
    use tokio::time::Instant;

    /// Found by the fault campaign: a server back up after two close
    /// outages, less than a backoff step before the deadline, was never
    /// tried again, and the manager gave up on a guest it could reach.
    #[tokio::test]
    async fn the_last_attempt_is_made_at_the_deadline() {
        let t0 = Instant::now();
        // Attempts fail until 1.8 s; the deadline is 2 s. The backoff alone
        // would try at about 0, 0.05, 0.15, 0.35, 0.75, 1.55 and 2.55 s.
        let up = t0 + Duration::from_millis(1800);
        let deadline = t0 + Duration::from_secs(2);
        let mut attempts = 0;
        let r = retry_until(deadline, |_| {
            attempts += 1;
            let ok = Instant::now() >= up;
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(ClientError::unreachable(
                        "connecting",
                        Cause::Io {
                            source: std::io::ErrorKind::ConnectionRefused.into(),
                            hint: "",
                        },
                    ))
                }
            }
        })
        .await;
        assert!(r.is_ok(), "gave up after {attempts} attempts at {:?}", t0.elapsed());
        assert!(t0.elapsed() >= Duration::from_millis(1800));
    }

    /// A refused connection (cmappserver restarting) is retried at least
    /// every 250 ms however long it lasts; anything else backs off to 1 s.
    /// Every wait is jittered within the upper half of its step.
    #[test]
    fn a_refused_connection_is_retried_promptly_with_jitter() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..20).map(|_| b.next(true)).collect();
        assert!(waits.iter().all(|w| *w <= Backoff::REFUSED_CAP), "{waits:?}");
        assert!(waits[10..].iter().all(|w| *w >= Backoff::REFUSED_CAP / 2), "{waits:?}");
        assert!(waits[10..].windows(2).any(|p| p[0] != p[1]), "no jitter: {waits:?}");
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..20).map(|_| b.next(false)).collect();
        assert!(waits.iter().all(|w| *w <= Backoff::CAP), "{waits:?}");
        assert!(waits[10..].iter().all(|w| *w >= Backoff::CAP / 2), "{waits:?}");
    }
}
