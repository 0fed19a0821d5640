//! The frozen on-disk and shim-protocol formats, and the tools the golden
//! tests use: the v1 types as they were when v1 was recorded (a copy, so that
//! a change to the live types cannot silently change what "v1" means), the
//! recorded fixtures under `tests/fixtures/golden/v1/`, a stand-in for a v1
//! shim that replays the recorded frames, and the frame-recording proxy the
//! recorder uses. The formats are described in `appserver/FORMATS.md`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Pids written into the fixtures in place of the recording machine's: above
/// the kernel's PID_MAX_LIMIT (2^22), so no test can ever signal a real
/// process through a recorded record.
pub const FIXTURE_PID: u32 = 4_194_401;
pub const FIXTURE_SHIM_PID: u32 = 4_194_402;

/// `tests/fixtures/golden/<version>`.
pub fn fixtures(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/golden")
        .join(version)
}

// ---- the v1 formats, frozen ----------------------------------------------

/// How a process ended (`ExitStatus`, externally tagged, snake_case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum V1ExitStatus {
    Code(i32),
    Signal(i32),
    SpawnFailed { code: i32, error: String },
    Lost { error: String },
}

/// `procs/<id>/meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Meta {
    pub id: String,
    pub key: String,
    pub run: Vec<String>,
    pub argv: Vec<String>,
    pub name: Option<String>,
    pub probe: Option<String>,
    pub created_at_ms: u64,
}

/// `procs/<id>/pid.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1PidRecord {
    pub pid: u32,
    pub started_at_ms: u64,
    pub shim_pid: u32,
    #[serde(default)]
    pub start_ticks: Option<u64>,
}

/// `procs/<id>/exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1ExitRecord {
    pub status: V1ExitStatus,
    pub exited_at_ms: u64,
}

/// Shim to server (internally tagged by `type`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum V1ShimEvent {
    Hello {
        protocol: u32,
        pid: u32,
        started_at_ms: u64,
    },
    Output {
        stream: V1Stream,
        line: String,
    },
    Dropped {
        lines: u64,
    },
    Exited {
        status: V1ExitStatus,
        exited_at_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum V1Stream {
    Stdout,
    Stderr,
}

/// Server to shim. A v1 shim decodes exactly this; fields it does not know
/// are ignored (serde's default), a missing field or an unknown `type` is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum V1ShimRequest {
    Stop { grace_ms: u64 },
}

// ---- the recorded conversation --------------------------------------------

/// Who sent a recorded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Shim,
    Server,
}

/// One recorded frame: its sender and its body (the JSON, byte for byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub from: Peer,
    pub body: String,
}

/// Reads `shim-conversation.txt`: one frame per line, `shim <json>` or
/// `server <json>`; `#` lines are comments.
pub fn conversation(version: &str) -> Vec<Frame> {
    let path = fixtures(version).join("shim-conversation.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (who, body) = l.split_once(' ').expect("`shim|server <json>`");
            let from = match who {
                "shim" => Peer::Shim,
                "server" => Peer::Server,
                other => panic!("{}: unknown sender {other:?}", path.display()),
            };
            Frame {
                from,
                body: body.to_string(),
            }
        })
        .collect()
}

/// The wire form of a frame: a big-endian u32 length, then the body. Written
/// out by hand, so the tests check the framing too, not only the JSON.
pub fn encode(body: &str) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<String>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    assert!(len <= 1024 * 1024, "frame of {len} bytes: over the 1 MiB cap");
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    String::from_utf8(body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Accepts one connection on `listener` within `limit`.
fn accept_within(listener: &UnixListener, limit: Duration) -> Option<UnixStream> {
    listener.set_nonblocking(true).unwrap();
    let end = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= end {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A stand-in for a v1 shim: it binds the record's `sock`, and, once a
/// server connects, sends the recorded `hello` frame at once (a real shim
/// does, and a server waits for it), then whatever frames the test sends
/// through it; frames the server sends arrive on [`FakeShim::received`].
#[derive(Debug)]
pub struct FakeShim {
    sock: PathBuf,
    conn: Arc<Mutex<Option<UnixStream>>>,
    received: mpsc::Receiver<String>,
    connected: mpsc::Receiver<()>,
}

impl FakeShim {
    /// Listens at `sock` and serves the first connection in the background.
    pub fn listen(sock: &Path, hello: &str) -> FakeShim {
        let _ = std::fs::remove_file(sock);
        let listener = UnixListener::bind(sock).unwrap_or_else(|e| panic!("bind {}: {e}", sock.display()));
        let conn: Arc<Mutex<Option<UnixStream>>> = Arc::default();
        let (rx_tx, received) = mpsc::channel();
        let (conn_tx, connected) = mpsc::channel();
        let hello = encode(hello);
        let slot = conn.clone();
        std::thread::spawn(move || {
            let Some(mut stream) = accept_within(&listener, Duration::from_secs(60)) else {
                return;
            };
            stream.write_all(&hello).expect("send hello");
            let mut reader = stream.try_clone().unwrap();
            *slot.lock().unwrap() = Some(stream);
            let _ = conn_tx.send(());
            while let Ok(Some(frame)) = read_frame(&mut reader) {
                if rx_tx.send(frame).is_err() {
                    break;
                }
            }
        });
        FakeShim {
            sock: sock.to_path_buf(),
            conn,
            received,
            connected,
        }
    }

    /// Waits until a server has connected (and been sent the hello).
    pub fn wait_connected(&self, limit: Duration) {
        self.connected
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("no server connected to {} within {limit:?}", self.sock.display()));
    }

    /// Sends one frame body to the connected server.
    pub fn send(&self, body: &str) {
        let mut g = self.conn.lock().unwrap();
        let s = g.as_mut().expect("a server is connected");
        s.write_all(&encode(body)).expect("send frame");
    }

    /// The next frame the server sent, within `limit`.
    pub fn next_received(&self, limit: Duration) -> Option<String> {
        self.received.recv_timeout(limit).ok()
    }

    /// Closes the connection (a shim that exits closes it).
    pub fn close(&self) {
        if let Some(s) = self.conn.lock().unwrap().take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// A proxy between a server and a real shim that records every frame, in
/// the order they passed: the recorder puts it at a record's `sock` after
/// moving the shim's own socket aside.
#[derive(Debug, Clone, Default)]
pub struct FrameLog {
    frames: Arc<Mutex<Vec<Frame>>>,
}

impl FrameLog {
    /// Serves one connection at `at`, forwarding to `to`.
    pub fn proxy(&self, at: &Path, to: &Path) {
        let listener = UnixListener::bind(at).unwrap_or_else(|e| panic!("bind {}: {e}", at.display()));
        let to = to.to_path_buf();
        let log = self.clone();
        std::thread::spawn(move || {
            let Some(server) = accept_within(&listener, Duration::from_secs(60)) else {
                return;
            };
            let shim = UnixStream::connect(&to).expect("connect to the real shim");
            let pump = |mut rd: UnixStream, mut wr: UnixStream, from: Peer, log: FrameLog| {
                std::thread::spawn(move || {
                    while let Ok(Some(body)) = read_frame(&mut rd) {
                        log.frames.lock().unwrap().push(Frame {
                            from,
                            body: body.clone(),
                        });
                        if wr.write_all(&encode(&body)).is_err() {
                            break;
                        }
                    }
                    let _ = wr.shutdown(std::net::Shutdown::Write);
                })
            };
            let a = pump(
                shim.try_clone().unwrap(),
                server.try_clone().unwrap(),
                Peer::Shim,
                log.clone(),
            );
            let b = pump(server, shim, Peer::Server, log);
            let _ = a.join();
            let _ = b.join();
        });
    }

    pub fn frames(&self) -> Vec<Frame> {
        self.frames.lock().unwrap().clone()
    }

    /// Waits until a frame whose body contains `needle` has passed.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        crate::wait_until(limit, || self.frames().iter().any(|f| f.body.contains(needle)))
    }
}
