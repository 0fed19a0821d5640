//! cmappserver's side of one shim connection: relays the shim's events into
//! the table and the table's requests to the shim.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::connection;
use common::message::{Exited, Stream};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::proto::{ShimEvent, ShimRequest, SHIM_PROTOCOL};
use super::{state, Proc, Supervisor};

type Reader = connection::MessageReader<tokio::io::ReadHalf<UnixStream>>;
type Writer = connection::MessageWriter<tokio::io::WriteHalf<UnixStream>>;

/// A connected shim whose hello has been read.
pub(super) struct ShimStream {
    rd: Reader,
    wr: Writer,
    /// The process's pid (0 if it could not be started) and start time.
    pub pid: u32,
    pub started_at_ms: u64,
}

/// How long a shim may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to the shim in `dir` and reads its hello.
pub(super) async fn connect(dir: &Path) -> Result<ShimStream, String> {
    let stream = UnixStream::connect(dir.join(state::SOCK))
        .await
        .map_err(|e| e.to_string())?;
    let (mut rd, wr) = connection::split(stream);
    match tokio::time::timeout(HELLO_TIMEOUT, rd.read::<ShimEvent>()).await {
        Ok(Ok(Some(ShimEvent::Hello {
            protocol,
            pid,
            started_at_ms,
        }))) => {
            if protocol != SHIM_PROTOCOL {
                return Err(format!(
                    "process supervisor speaks shim protocol {protocol}, this cmappserver speaks {SHIM_PROTOCOL}"
                ));
            }
            Ok(ShimStream {
                rd,
                wr,
                pid,
                started_at_ms,
            })
        }
        Ok(Ok(Some(other))) => Err(format!("process supervisor sent {other:?} before its hello")),
        Ok(Ok(None)) => Err("process supervisor closed the connection".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("process supervisor did not say hello".into()),
    }
}

pub(super) async fn run(
    sup: Arc<Supervisor>,
    proc: Arc<Proc>,
    stream: ShimStream,
    mut requests: mpsc::Receiver<ShimRequest>,
) {
    let ShimStream { mut rd, mut wr, .. } = stream;
    loop {
        tokio::select! {
            ev = rd.read::<ShimEvent>() => match ev {
                Ok(Some(ShimEvent::Hello { .. })) => {}
                Ok(Some(ShimEvent::Output { stream, line })) => proc.output(stream, line),
                Ok(Some(ShimEvent::Dropped { lines, unconnected })) => {
                    proc.output(Stream::Stderr, super::dropped_notice(lines, unconnected))
                }
                Ok(Some(ShimEvent::Exited { status, exited_at_ms })) => {
                    let ex = Exited { id: proc.id.clone(), pid: proc.pid, status, exited_at_ms };
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
