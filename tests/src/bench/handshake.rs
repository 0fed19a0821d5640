//! Handshake rate: mutual-TLS connections per second one cmappserver
//! accepts. Done in-process (no process start-up in the figure): N tasks
//! each loop over TCP connect, a full TLS 1.3 handshake with client
//! certificate (session resumption off, as for a fresh cmappmgr process),
//! Hello → Welcome, and close_notify, for a fixed time. The clients share
//! the machine's cores with the server, so the server's own CPU time over
//! the window is reported too: handshakes per second of server CPU is the
//! figure that carries over to a machine where the managers are elsewhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::connection;
use common::message::{Hello, Welcome};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::fixture::{Env, Server};
use super::sys;

#[derive(Debug)]
pub struct Handshakes {
    pub done: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub wall: Duration,
    /// Server CPU seconds over the window.
    pub server_cpu: f64,
    /// Connect-to-welcome times, nanoseconds, sorted.
    pub ns: Vec<u64>,
    pub concurrency: usize,
}

impl Handshakes {
    pub fn per_sec(&self) -> f64 {
        self.done as f64 / self.wall.as_secs_f64()
    }
}

pub fn run(env: &Env, server: &Server, window: Duration, concurrency: usize) -> Result<Handshakes, String> {
    common::tls::install_crypto_provider();
    let key = common::tls::load_key_store(&env.keys.client_private, "clientpw").map_err(|e| e.to_string())?;
    let trust = common::tls::load_trust_store(&env.keys.client_trust, "public").map_err(|e| e.to_string())?;
    let config = common::tls::client_config(key, trust).map_err(|e| e.to_string())?;
    let mut config = (*config).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));
    let addr = server.addr;
    // One client thread: the server keeps at least one of the two cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async move {
        // One handshake first, so that a broken setup is an error, not a zero.
        one(&connector, addr)
            .await
            .map_err(|e| format!("handshake with cmappserver failed: {e}"))?;
        let cpu0 = sys::cpu_ns(server.pid).unwrap_or(0);
        let t0 = Instant::now();
        let deadline = t0 + window;
        let mut tasks = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let c = connector.clone();
            tasks.push(tokio::spawn(async move {
                let mut ns = Vec::new();
                let (mut failed, mut first_error) = (0u64, None);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match one(&c, addr).await {
                        Ok(()) => ns.push(t.elapsed().as_nanos() as u64),
                        Err(e) => {
                            failed += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (ns, failed, first_error)
            }));
        }
        let mut all = Vec::new();
        let (mut failed, mut first_error) = (0, None);
        for t in tasks {
            let (ns, f, e) = t.await.map_err(|e| format!("handshake task: {e}"))?;
            all.extend(ns);
            failed += f;
            if first_error.is_none() {
                first_error = e;
            }
        }
        let wall = t0.elapsed();
        let cpu1 = sys::cpu_ns(server.pid).unwrap_or(0);
        all.sort_unstable();
        Ok(Handshakes {
            done: all.len() as u64,
            failed,
            first_error,
            wall,
            server_cpu: cpu1.saturating_sub(cpu0) as f64 / 1e9,
            ns: all,
            concurrency,
        })
    })
}

/// TCP, TLS with client certificate, Hello → Welcome, close_notify.
async fn one(connector: &TlsConnector, addr: std::net::SocketAddr) -> Result<(), String> {
    let limit = Duration::from_secs(10);
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(limit, connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {}", common::tls::describe_handshake_error(&e)))?;
    let (mut rd, mut wr) = connection::split(tls);
    wr.write(&Hello::current("cmapp-bench"))
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(limit, rd.read::<Welcome>()).await {
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => return Err("closed before the welcome".into()),
        Ok(Err(e)) => return Err(format!("no welcome: {e}")),
        Err(_) => return Err("no welcome in time".into()),
    }
    let _ = wr.close(limit).await;
    Ok(())
}
