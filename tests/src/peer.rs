//! Peers written in the test: a raw manager that speaks the protocol frame by
//! frame (to send what `cmappmgr` never would), a fake cmappserver that
//! misbehaves on purpose, and a flood of connections that never authenticate.
//! All of them use real TLS with the test's own key material.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::connection::{self, MessageReader, MessageWriter};
use common::message::{Event, Hello, Request, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::keys::Keys;

/// Raises this process's soft limit on open files to its hard limit (a
/// flood of thousands of sockets needs more than the usual 1024).
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    hard
}

/// A current-thread runtime for one test's peers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// An authenticated manager-side connection after the hello, speaking frames.
#[derive(Debug)]
pub struct RawClient {
    pub rd: MessageReader<ReadHalf<ClientTls>>,
    pub wr: MessageWriter<WriteHalf<ClientTls>>,
    pub welcome: Welcome,
}

impl RawClient {
    /// TLS with the manager's keys, then the hello.
    pub async fn connect(addr: SocketAddr, keys: &Keys) -> RawClient {
        common::tls::install_crypto_provider();
        let key = common::tls::load_key_store(&keys.client_private, "").expect("client key");
        let trust = common::tls::load_trust_store(&keys.client_trust, "").expect("client trust");
        let cfg = common::tls::client_config(key, trust).expect("client config");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::from(addr.ip());
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let (mut rd, mut wr) = connection::split(tls);
        wr.write(&Hello::current("raw-test-client")).await.expect("hello");
        let welcome = rd.read::<Welcome>().await.expect("welcome").expect("welcome");
        RawClient { rd, wr, welcome }
    }

    /// Sends `req` and returns the next event that is not an output line.
    pub async fn call(&mut self, req: &Request) -> Event {
        self.wr.write(req).await.expect("send");
        self.next().await
    }

    /// The next event that is not a push; panics on close or error.
    pub async fn next(&mut self) -> Event {
        loop {
            let ev = tokio::time::timeout(crate::WAIT, self.rd.read::<Event>())
                .await
                .expect("an answer in time")
                .expect("a well-formed answer")
                .expect("the server kept the connection open");
            // Pushes about processes launched earlier are not answers.
            if !matches!(ev, Event::Output(_) | Event::Exited(_) | Event::Superseded(_)) {
                return ev;
            }
        }
    }
}

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// One accepted, authenticated connection of a [`FakeServer`], as frames.
#[derive(Debug)]
pub struct FakeConn {
    pub rd: MessageReader<ReadHalf<ServerTls>>,
    pub wr: MessageWriter<WriteHalf<ServerTls>>,
}

impl FakeConn {
    /// Reads the manager's hello.
    pub async fn hello(&mut self) -> Hello {
        self.rd.read().await.expect("hello").expect("hello")
    }

    /// Reads the hello and answers with a welcome.
    pub async fn welcome(&mut self) {
        self.hello().await;
        self.wr
            .write(&Welcome {
                protocol: common::message::PROTOCOL_VERSION,
                software: "fake cmappserver".into(),
                monitored: 0,
                max_processes: 30,
            })
            .await
            .expect("welcome");
    }

    /// The next request, or `None` when the manager closed.
    pub async fn request(&mut self) -> Option<Request> {
        self.rd.read().await.ok().flatten()
    }

    /// Writes raw bytes as one frame body.
    pub async fn raw_frame(&mut self, body: &[u8]) {
        let tls = self.wr.get_mut();
        tls.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
        tls.write_all(body).await.unwrap();
        tls.flush().await.unwrap();
    }
}

/// A cmappserver impostor with real TLS (the server keys of `keys`): every
/// connection it accepts runs `behave` in its own task.
#[derive(Debug)]
pub struct FakeServer {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    pub fn start<F, Fut>(keys: &Keys, behave: F) -> FakeServer
    where
        F: Fn(FakeConn) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        common::tls::install_crypto_provider();
        let key = common::tls::load_key_store(&keys.server_private, "").expect("server key");
        let trust = common::tls::load_trust_store(&keys.server_trust, "").expect("server trust");
        let cfg = common::tls::server_config(key, trust).expect("server config");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                let behave = Arc::new(behave);
                while !halt.load(Ordering::Relaxed) {
                    let Ok(Ok((tcp, _))) = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                    else {
                        continue;
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    let (acceptor, behave) = (acceptor.clone(), behave.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let (rd, wr) = connection::split(tls);
                            behave(FakeConn { rd, wr }).await;
                        }
                    });
                }
            });
        });
        FakeServer {
            addr,
            accepted,
            thread: Some(thread),
            stop,
        }
    }

    pub fn node(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connections held against a server without ever authenticating: half of
/// them silent (TCP only), half of them handshaking slowly (a TLS record
/// header, then one byte of a ClientHello every 250 ms). Each one the server
/// drops is re-opened at once, as an attacker would.
#[derive(Debug)]
pub struct Flood {
    /// Connections open now.
    pub held: Arc<AtomicU64>,
    /// Connections opened in total (re-opens included).
    pub opened: Arc<AtomicU64>,
    /// Writes of the slow handshakes so far (each a few bytes of a ClientHello).
    pub dripped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    pub fn start(target: SocketAddr, connections: usize) -> Flood {
        let held = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let dripped = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, o, s, d) = (held.clone(), opened.clone(), stop.clone(), dripped.clone());
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..connections {
                    let (h, o, s, d) = (h.clone(), o.clone(), s.clone(), d.clone());
                    tasks.spawn(async move {
                        while !s.load(Ordering::Relaxed) {
                            let Ok(Ok(tcp)) =
                                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target)).await
                            else {
                                continue;
                            };
                            o.fetch_add(1, Ordering::Relaxed);
                            h.fetch_add(1, Ordering::Relaxed);
                            hold(tcp, i % 2 == 1, &s, &d).await;
                            h.fetch_sub(1, Ordering::Relaxed);
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            });
        });
        Flood {
            held,
            opened,
            dripped,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until `n` connections have been opened at least once.
    pub fn wait_opened(&self, n: u64, limit: Duration) -> bool {
        crate::wait_until(limit, || self.opened.load(Ordering::Relaxed) >= n)
    }

    /// Waits (bounded) until the slow handshakes have made `n` writes in all.
    pub fn wait_dripped(&self, n: u64, limit: Duration) -> bool {
        crate::wait_until(limit, || self.dripped.load(Ordering::Relaxed) >= n)
    }
}

/// Holds one connection until the server closes it (or the flood stops).
async fn hold(mut tcp: TcpStream, slow_handshake: bool, stop: &AtomicBool, dripped: &AtomicU64) {
    // A TLS handshake record announcing a 512-byte ClientHello: its header at
    // once, then the rest a byte at a time.
    let mut drip: Vec<u8> = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    drip.extend(std::iter::repeat_n(0x42, 501));
    let mut next = 0;
    if slow_handshake {
        if tcp.write_all(&drip[..5]).await.is_err() {
            return;
        }
        next = 5;
        dripped.fetch_add(1, Ordering::Relaxed);
    }
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            r = tcp.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { return },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if slow_handshake && next < drip.len() {
                    if tcp.write_all(&drip[next..next + 1]).await.is_err() {
                        return;
                    }
                    next += 1;
                    dripped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TLS 1.3 handshake (and one read) as a client presenting `certs` but
/// signing with `key`, which need not belong to them: what an attacker with a
/// copy of a manager's certificate, but not its key, would do. The server's
/// certificate is not checked. Returns the error the connection ended with.
pub async fn handshake_with_key(
    addr: SocketAddr,
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> std::io::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing = provider.key_provider.load_private_key(key).expect("signing key");
    let certified = Arc::new(rustls::sign::CertifiedKey::new(certs, signing));
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_cert_resolver(Arc::new(Fixed(certified)));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    // TLS 1.3: the server's verdict on our certificate arrives with the first read.
    tls.write_all(&[0, 0, 0, 2, b'{', b'}']).await?;
    let mut buf = [0u8; 64];
    tls.read(&mut buf).await.map(|_| ())
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts any server certificate (the test attacks the server, not the client).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
