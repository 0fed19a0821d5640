//! cmappserver's side of one shim connection: relays the shim's events into
//! the table and the table's requests to the shim.

use std::sync::Arc;
use std::time::Duration;

use common::connection;
use common::message::Exited;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::proto::{ShimEvent, ShimRequest, OLDEST_ADOPTED, SHIM_PROTOCOL};
use super::state::{self, Dir};
use super::{Proc, Supervisor};

type Reader = connection::MessageReader<tokio::io::ReadHalf<UnixStream>>;
type Writer = connection::MessageWriter<tokio::io::WriteHalf<UnixStream>>;

/// A connected shim whose process runs (or could not be started).
pub(super) struct ShimStream {
    rd: Reader,
    wr: Writer,
    /// The process's pid (0 if it could not be started) and start time.
    pub pid: u32,
    pub started_at_ms: u64,
    /// An event read during the handshake that the relay must still handle
    /// (the `Exited` of a program that could not be started).
    pending: Option<ShimEvent>,
}

/// Why a shim connection could not be made, or was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("cannot connect to its socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("cannot read its credentials: {0}")]
    Credentials(#[source] std::io::Error),
    #[error("its socket is served by uid {uid} (pid {pid:?}), not by this server's uid {ours}")]
    Stranger { uid: u32, pid: Option<i32>, ours: u32 },
    /// A version this connection does not accept (closing is the refusal).
    #[error("process supervisor speaks shim protocol {0}, this cmappserver speaks {SHIM_PROTOCOL}")]
    Version(u32),
    /// An event out of turn (`when`: before its hello, instead of starting).
    #[error("process supervisor sent {event} {when}")]
    Unexpected { event: String, when: &'static str },
    #[error("process supervisor closed the connection")]
    Closed,
    #[error("process supervisor did not answer")]
    TimedOut,
    #[error(transparent)]
    Connection(#[from] connection::ConnectionError),
}

/// How long a shim may take to say hello, or to start its process.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Which shims a connection accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// One we have just started: exactly our own version.
    New,
    /// One left by an earlier server (maybe of an earlier version).
    Adopt,
}

/// A connected shim that said hello and waits for `Start` (a new shim, or
/// a spare started ahead of its launch).
pub(super) struct WaitingShim {
    rd: Reader,
    wr: Writer,
}

/// What a shim's hello said.
pub(super) enum Hello {
    /// Its process runs (or ran): adopted as it is.
    Running(ShimStream),
    /// It waits for `Start`.
    Waiting(WaitingShim),
}

/// Connects to the shim in `dir`, checks who it is and reads its hello; a
/// shim still waiting to start its process is told to start it once (and
/// only once) its hello is accepted.
pub(super) async fn connect(dir: &Dir, expect: Expect) -> Result<ShimStream, LinkError> {
    match hello(dir, expect).await? {
        Hello::Running(stream) => Ok(stream),
        Hello::Waiting(shim) => shim.start().await,
    }
}

/// Connects to the shim in `dir`, checks who it is, and reads and checks
/// its hello (closing the connection is the refusal: the shim starts nothing).
pub(super) async fn hello(dir: &Dir, expect: Expect) -> Result<Hello, LinkError> {
    let stream = UnixStream::connect(dir.fd_path(state::SOCK))
        .await
        .map_err(LinkError::Connect)?;
    let cred = stream.peer_cred().map_err(LinkError::Credentials)?;
    if cred.uid() != state::own_uid() {
        return Err(LinkError::Stranger {
            uid: cred.uid(),
            pid: cred.pid(),
            ours: state::own_uid(),
        });
    }
    let (mut rd, wr) = connection::split(stream);
    let (protocol, pid, started_at_ms, waiting) = match read(&mut rd).await? {
        ShimEvent::Hello {
            protocol,
            pid,
            started_at_ms,
            waiting,
        } => (protocol, pid, started_at_ms, waiting),
        other => {
            return Err(LinkError::Unexpected {
                event: format!("{other:?}"),
                when: "before its hello",
            })
        }
    };
    let accepted = match expect {
        Expect::New => protocol == SHIM_PROTOCOL,
        Expect::Adopt => (OLDEST_ADOPTED..=SHIM_PROTOCOL).contains(&protocol),
    };
    if !accepted {
        return Err(LinkError::Version(protocol));
    }
    if waiting {
        return Ok(Hello::Waiting(WaitingShim { rd, wr }));
    }
    Ok(Hello::Running(ShimStream {
        rd,
        wr,
        pid,
        started_at_ms,
        pending: None,
    }))
}

impl WaitingShim {
    /// True when the shim has closed the connection (it died) or said
    /// anything at all: a waiting shim says nothing until `Start`. Never waits.
    pub(super) fn is_gone(&mut self) -> bool {
        use futures::FutureExt;
        self.rd.read::<ShimEvent>().now_or_never().is_some()
    }

    /// Says `Start` and reads the answer: the process runs, or could not be
    /// started (its `Exited` is then the stream's first event).
    pub(super) async fn start(self) -> Result<ShimStream, LinkError> {
        let WaitingShim { mut rd, mut wr } = self;
        wr.write(&ShimRequest::Start).await?;
        match read(&mut rd).await? {
            ShimEvent::Started { pid, started_at_ms } => Ok(ShimStream {
                rd,
                wr,
                pid,
                started_at_ms,
                pending: None,
            }),
            ev @ ShimEvent::Exited { exited_at_ms, .. } => Ok(ShimStream {
                rd,
                wr,
                pid: 0,
                started_at_ms: exited_at_ms,
                pending: Some(ev),
            }),
            other => Err(LinkError::Unexpected {
                event: format!("{other:?}"),
                when: "instead of starting its process",
            }),
        }
    }
}

async fn read(rd: &mut Reader) -> Result<ShimEvent, LinkError> {
    match tokio::time::timeout(HELLO_TIMEOUT, rd.read::<ShimEvent>()).await {
        Ok(Ok(Some(ev))) => Ok(ev),
        Ok(Ok(None)) => Err(LinkError::Closed),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(LinkError::TimedOut),
    }
}

pub(super) async fn run(
    sup: Arc<Supervisor>,
    proc: Arc<Proc>,
    stream: ShimStream,
    mut requests: mpsc::Receiver<ShimRequest>,
) {
    let ShimStream {
        mut rd,
        mut wr,
        mut pending,
        ..
    } = stream;
    loop {
        let next = async {
            match pending.take() {
                Some(ev) => Ok(Some(ev)),
                None => rd.read::<ShimEvent>().await,
            }
        };
        tokio::select! {
            ev = next => match ev {
                Ok(Some(ShimEvent::Hello { .. } | ShimEvent::Started { .. })) => {}
                Ok(Some(ShimEvent::Output { stream, line })) => proc.output(stream, line),
                Ok(Some(ShimEvent::Dropped { lines, unconnected, log })) => {
                    proc.log_dropped(log);
                    if lines > 0 {
                        proc.notice(super::table::dropped_notice(lines, unconnected));
                    }
                }
                Ok(Some(ShimEvent::Exited { status, exited_at_ms, tail })) => {
                    let ex = Exited { id: proc.id.clone(), pid: proc.pid, status, exited_at_ms, tail };
                    sup.record_exit(&proc, ex).await;
                    return;
                }
                Ok(None) | Err(_) => break,
            },
            req = requests.recv() => match req {
                Some(req) => {
                    if wr.write(&req).await.is_err() {
                        break;
                    }
                }
                None => return,
            },
        }
    }
    // The shim went away without an Exited event: it either recorded the
    // status on disk just before (a race with our read) or died.
    sup.record_exit_from_disk(&proc).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::message::{ExitStatus, Stream};
    use tokio::net::UnixListener;

    /// A shim on `dir`'s socket that sends `first`, and after a `Start`
    /// sends `then`; returns what the server sent it.
    fn fake_shim(dir: &Dir, first: ShimEvent, then: Option<ShimEvent>) -> tokio::task::JoinHandle<Vec<ShimRequest>> {
        let listener = UnixListener::bind(dir.path().join(state::SOCK)).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut rd, mut wr) = connection::split(stream);
            wr.write(&first).await.unwrap();
            let mut got = Vec::new();
            while let Ok(Some(req)) = rd.read::<ShimRequest>().await {
                got.push(req);
                if let Some(ev) = &then {
                    wr.write(ev).await.unwrap();
                }
            }
            got
        })
    }

    fn hello(protocol: u32, pid: u32, waiting: bool) -> ShimEvent {
        ShimEvent::Hello {
            protocol,
            pid,
            started_at_ms: 5,
            waiting,
        }
    }

    async fn try_connect(
        first: ShimEvent,
        then: Option<ShimEvent>,
        expect: Expect,
    ) -> (Result<(u32, u64, bool), LinkError>, Vec<ShimRequest>) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        let shim = fake_shim(&dir, first, then);
        let got = connect(&dir, expect)
            .await
            .map(|s| (s.pid, s.started_at_ms, s.pending.is_some()));
        (got, shim.await.unwrap())
    }

    #[tokio::test]
    async fn a_new_shim_must_speak_our_version_and_is_told_to_start() {
        let started = ShimEvent::Started {
            pid: 42,
            started_at_ms: 6,
        };
        let (got, sent) = try_connect(hello(SHIM_PROTOCOL, 0, true), Some(started.clone()), Expect::New).await;
        assert_eq!(got.unwrap(), (42, 6, false));
        assert_eq!(sent, [ShimRequest::Start]);
        let (got, sent) = try_connect(hello(OLDEST_ADOPTED, 0, true), Some(started), Expect::New).await;
        let e = got.unwrap_err();
        assert!(matches!(e, LinkError::Version(OLDEST_ADOPTED)), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "process supervisor speaks shim protocol {OLDEST_ADOPTED}, this cmappserver speaks {SHIM_PROTOCOL}"
            )
        );
        assert!(sent.is_empty(), "a refused shim is never told to start");
    }

    #[tokio::test]
    async fn a_running_shim_of_any_adopted_version_is_adopted_without_a_start() {
        for protocol in OLDEST_ADOPTED..=SHIM_PROTOCOL {
            let (got, sent) = try_connect(hello(protocol, 7, false), None, Expect::Adopt).await;
            assert_eq!(got.unwrap(), (7, 5, false), "protocol {protocol}");
            assert!(sent.is_empty());
        }
        for protocol in [0, SHIM_PROTOCOL + 1] {
            let (got, _) = try_connect(hello(protocol, 7, false), None, Expect::Adopt).await;
            assert!(matches!(got, Err(LinkError::Version(p)) if p == protocol), "{got:?}");
        }
    }

    #[tokio::test]
    async fn a_program_that_could_not_start_is_an_exit_to_relay() {
        let exited = ShimEvent::Exited {
            status: ExitStatus::SpawnFailed {
                code: 127,
                error: "not found".into(),
            },
            exited_at_ms: 9,
            tail: Vec::new(),
        };
        let (got, sent) = try_connect(hello(SHIM_PROTOCOL, 0, true), Some(exited), Expect::New).await;
        assert_eq!(got.unwrap(), (0, 9, true));
        assert_eq!(sent, [ShimRequest::Start]);
    }

    #[tokio::test]
    async fn anything_but_a_hello_first_or_a_start_answer_is_refused() {
        let out = ShimEvent::Output {
            stream: Stream::Stdout,
            line: "x".into(),
        };
        let (got, _) = try_connect(out.clone(), None, Expect::Adopt).await;
        assert!(got.unwrap_err().to_string().ends_with("before its hello"));
        let (got, _) = try_connect(hello(SHIM_PROTOCOL, 0, true), Some(out), Expect::New).await;
        assert!(got
            .unwrap_err()
            .to_string()
            .ends_with("instead of starting its process"));
    }
}
