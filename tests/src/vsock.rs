//! A stand-in for a user-space vsock device's host socket, without a VM:
//! a Unix socket that speaks the Firecracker "hybrid vsock" convention
//! (`CONNECT <port>\n` → `OK <host port>\n`, then the stream) and relays each
//! accepted connection to a TCP address (a cmappserver on loopback), as
//! vhost-device-vsock relays it to the guest's vsock port. Used by
//! `tests/tests/vsock.rs` and by the benchmark.
//!
//! A `CONNECT` to another port than the one given, or a malformed line, gets
//! the connection closed without an answer, as the real devices do when
//! nothing listens on that port in the guest.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// The relay: its socket, and what it has seen. Stops (and removes its
/// socket) on drop; relayed connections end when either side closes.
#[derive(Debug)]
pub struct HybridRelay {
    pub path: PathBuf,
    /// The guest port it answers for.
    pub port: u32,
    stop: Arc<AtomicBool>,
    /// `CONNECT` lines answered `OK`.
    pub connects: Arc<AtomicUsize>,
    /// Connections refused (wrong port, bad line).
    pub refused: Arc<AtomicUsize>,
    /// The relayed connections' device-side ends, for [`cut`](Self::cut).
    open: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl HybridRelay {
    /// Listens on `path` and relays `CONNECT port` to `target`.
    pub fn start(path: &Path, port: u32, target: SocketAddr) -> HybridRelay {
        let listener = UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let connects = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, connects, refused, open) = (stop.clone(), connects.clone(), refused.clone(), open.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (connects, refused, open) = (connects.clone(), refused.clone(), open.clone());
                    thread::spawn(move || match handshake(&conn, port) {
                        Some(()) => match TcpStream::connect(target) {
                            Ok(tcp) => {
                                connects.fetch_add(1, Ordering::SeqCst);
                                let mut c = &conn;
                                if writeln!(c, "OK {}", 1_000_000 + connects.load(Ordering::SeqCst)).is_ok() {
                                    // Only relayed connections are kept for `cut`: a
                                    // refused one must close when its thread ends.
                                    if let Ok(c) = conn.try_clone() {
                                        open.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                                    }
                                    relay(conn, tcp);
                                }
                            }
                            Err(_) => {
                                refused.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                        None => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                }
            })
        };
        HybridRelay {
            path: path.to_path_buf(),
            port,
            stop,
            connects,
            refused,
            open,
            accept: Some(accept),
        }
    }

    /// Breaks every connection relayed so far, as a device reset does (a
    /// guest's vsock transport reset, a restarted device).
    pub fn cut(&self) {
        for c in self.open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// `vsock-unix:PATH:PORT`, for `-node`.
    pub fn node(&self) -> String {
        format!("vsock-unix:{}:{}", self.path.display(), self.port)
    }
}

impl Drop for HybridRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads `CONNECT <port>\n` (a byte at a time: nothing after the line is
/// consumed); `Some` when it names `port`.
fn handshake(conn: &UnixStream, port: u32) -> Option<()> {
    let mut line = Vec::new();
    let mut r = conn;
    let mut b = [0u8; 1];
    while line.len() < 64 {
        if r.read(&mut b).ok()? == 0 {
            return None;
        }
        if b[0] == b'\n' {
            let text = String::from_utf8(line).ok()?;
            let asked: u32 = text.strip_prefix("CONNECT ")?.trim().parse().ok()?;
            return (asked == port).then_some(());
        }
        line.push(b[0]);
    }
    None
}

/// Copies both ways until either side closes, then closes both.
fn relay(unix: UnixStream, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let (Ok(mut unix_in), Ok(mut tcp_out)) = (unix.try_clone(), tcp.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || {
        let _ = std::io::copy(&mut unix_in, &mut tcp_out);
        let _ = tcp_out.shutdown(Shutdown::Write);
    });
    let (mut tcp_in, mut unix_out) = (tcp, unix);
    let _ = std::io::copy(&mut tcp_in, &mut unix_out);
    let _ = unix_out.shutdown(Shutdown::Both);
    let _ = up.join();
}
