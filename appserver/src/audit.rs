//! The audit log (`auditLog=FILE`): one JSON object per line for every
//! authenticated request (pings excepted: they only keep the connection
//! alive), with who asked (certificate subject, names and fingerprint, peer
//! address, the manager's name), what (request, service, run string,
//! instance id), the decision (allowed or refused, and the rule) and the
//! outcome.
//!
//! Records are written by a thread of their own, so that a slow disk never
//! holds up a session; a record that does not fit the queue is counted and
//! the count logged, never waited for. The file is opened for appending,
//! created 0600, never through a symbolic link.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use serde::Serialize;

use crate::policy::Client;

/// Records queued before they are dropped (and counted).
const QUEUE: usize = 4096;

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct Record<'a> {
    /// UTC, RFC 3339 with milliseconds.
    pub time: String,
    pub session: u64,
    pub peer: &'a str,
    pub client: &'a Client,
    /// The name the manager gave in its hello.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<&'a str>,
    /// `connect`, `launch`, `attach`, `stop`, `ack`, `list`.
    pub request: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// `allowed` or `refused`.
    pub decision: &'a str,
    /// The rule that allowed it (absent without rules, or when refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    /// What happened: `started pid N`, `attached`, `stopping`, the error.
    pub outcome: String,
}

/// Why the audit log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The `auditLog` file (a configuration problem).
    #[error("auditLog {}: cannot open it for appending: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The writer thread (an internal failure).
    #[error("cannot start the audit thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl AuditError {
    /// cmappserver's exit code when this stops it from starting.
    pub fn exit_code(&self) -> u8 {
        match self {
            AuditError::Open { .. } => crate::exit::CONFIG,
            AuditError::Thread(_) => crate::exit::INTERNAL,
        }
    }
}

/// Where records go.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
    pub path: PathBuf,
}

impl Audit {
    /// Opens (creates) the file and starts the writer thread.
    pub fn open(path: &Path) -> Result<Audit, AuditError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(|source| AuditError::Open {
                path: path.into(),
                source,
            })?;
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                let mut failed = false;
                while let Ok(line) = rx.recv() {
                    let mut r = out.write_all(line.as_bytes());
                    // Flush whenever the queue is empty: records reach the file promptly.
                    while r.is_ok() {
                        match rx.try_recv() {
                            Ok(l) => r = out.write_all(l.as_bytes()),
                            Err(_) => break,
                        }
                    }
                    let r = r.and_then(|()| out.flush());
                    match r {
                        Err(e) if !failed => {
                            failed = true;
                            tracing::error!("cannot write the audit log {shown}: {e}");
                        }
                        Ok(()) => failed = false,
                        Err(_) => {}
                    }
                }
            })
            .map_err(AuditError::Thread)?;
        Ok(Audit {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            path: path.to_path_buf(),
        })
    }

    /// Queues one record, never waiting.
    pub fn write(&self, record: &Record<'_>) {
        let Ok(mut line) = serde_json::to_string(record) else {
            return;
        };
        line.push('\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        "{n} audit records dropped: the audit log {} is written slower than requests arrive",
                        self.path.display()
                    );
                }
            }
        }
    }
}

/// `ms` since the epoch as RFC 3339 UTC: `2026-11-29T01:02:03.456Z`.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::rfc3339(1_795_914_245_006), "2026-11-29T01:04:05.006Z");
    }
}
