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

/// Connects to the shim in `dir`, checks who it is and reads its hello; a
/// shim still waiting to start its process is told to start it once (and
/// only once) its hello is accepted.
pub(super) async fn connect(dir: &Dir, expect: Expect) -> Result<ShimStream, LinkError> {
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
    let (mut rd, mut wr) = connection::split(stream);
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
        // Closing the connection is the refusal: the shim starts nothing.
        return Err(LinkError::Version(protocol));
    }
    if !waiting {
        return Ok(ShimStream {
            rd,
            wr,
            pid,
            started_at_ms,
            pending: None,
        });
    }
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
