//! Why a call to a cmappserver failed, as types: what was being done, with
//! whom, and the underlying cause, kept as the error's source. The variant
//! says what the caller should do about it: retry ([`ClientError::is_retryable`])
//! or exit with the code the variant maps to ([`ClientError::exit_code`],
//! [`ClientError::ocf_exit_code`]; the codes themselves are in `exit`).
//! Strings are made only at the edge, where the binary logs the error.

use std::io;

use common::connection::ConnectionError;
use common::message::{ErrorKind, ErrorReply};
use common::tls::TlsError;

use crate::exit;

/// Why a call failed, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Our own configuration or key material is unusable: retrying will not help.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The guest is unreachable or the connection broke: retrying may help.
    #[error("{doing}: {cause}")]
    Unreachable {
        doing: String,
        #[source]
        cause: Cause,
    },
    /// Certificates were rejected (either way): retrying will not help.
    #[error("{doing}: {cause}")]
    Auth {
        doing: String,
        #[source]
        cause: Cause,
    },
    /// The peers speak different protocol versions (the server's words).
    #[error("{0}")]
    Version(String),
    /// The peer broke the protocol.
    #[error("cmappserver broke the protocol {doing}: {cause}")]
    Protocol {
        doing: &'static str,
        #[source]
        cause: Cause,
    },
    /// cmappserver refused the request (the process is unknown, a limit, ...).
    #[error("{}", .0.message)]
    Refused(ErrorReply),
    /// The server did not do what was asked within the time allowed.
    #[error("no {awaited} from cmappserver in time")]
    Timeout { awaited: &'static str },
}

/// Our own side is unusable: the configuration, the key material, the `-node`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file (every problem in it).
    #[error("{0}")]
    File(#[from] common::config::ConfigErrors),
    /// `-node` is not an address.
    #[error(transparent)]
    Node(#[from] common::address::AddressError),
    /// The key store or the trust store (`which`) cannot be used.
    #[error("{which}: {source}")]
    KeyMaterial {
        which: &'static str,
        #[source]
        source: TlsError,
    },
    /// The name in `-node` cannot be a TLS server name.
    #[error("-node {node}: {name:?} is not a valid server name: {source}")]
    ServerName {
        node: String,
        name: String,
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// A vsock address under CA trust: no name to check the certificate against.
    #[error(
        "-node {node}: the trust store holds a CA, and a vsock address carries no name to check \
         the guest's certificate against: name the guest as its certificate does, -node NAME@{node}"
    )]
    VsockNeedsName { node: String },
    /// The host log file a probe's run string names cannot be opened.
    #[error("cannot open the host log file {}: {source}", path.display())]
    HostLog {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// This host's kernel has no AF_VSOCK at all: no retry will help.
    #[error(
        "cannot connect to {at}: {source}: this host's kernel has no AF_VSOCK support \
         (load the vhost_vsock module, or reach the guest through its vsock device's \
         socket with -node vsock-unix:/PATH)"
    )]
    NoVsock {
        at: String,
        #[source]
        source: io::Error,
    },
}

/// The underlying cause of a failed step.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// A system call failed; `hint` says what that means here (may be empty).
    #[error("{source}{hint}")]
    Io {
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    /// A TLS handshake failed; `why` is its diagnosis.
    #[error("{why}")]
    Handshake {
        why: String,
        #[source]
        source: io::Error,
    },
    /// Reading or writing a message failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A message did not have the expected shape.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("timed out")]
    TimedOut,
    #[error("no addresses")]
    NoAddresses,
    #[error("cmappserver closed the connection")]
    Closed,
    /// The server's own words (its session limit, a refused hello).
    #[error("{0}")]
    Server(String),
    /// An answer of the wrong kind.
    #[error("it answered with {0}")]
    Unexpected(&'static str),
}

impl From<io::Error> for Cause {
    fn from(source: io::Error) -> Cause {
        Cause::Io { source, hint: "" }
    }
}

impl ClientError {
    /// A failed TLS handshake: the one classification for the handshake
    /// itself and for the first read after it (where TLS 1.3 reports that
    /// the server rejected our certificate). A certificate either side
    /// refused is [`ClientError::Auth`] (no retry helps); anything else
    /// [`ClientError::Unreachable`].
    pub fn handshake(doing: String, source: io::Error) -> ClientError {
        let auth = common::tls::is_auth_failure(&source);
        let cause = Cause::Handshake {
            why: common::tls::describe_handshake_error(&source),
            source,
        };
        if auth {
            ClientError::Auth { doing, cause }
        } else {
            ClientError::unreachable(doing, cause)
        }
    }

    /// The guest may be reachable later: worth another attempt.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// The guest answered that nothing listens on the port (cmappserver is
    /// not running: restarting, or stopped).
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable {
                cause: Cause::Io { source, .. },
                ..
            } if source.kind() == io::ErrorKind::ConnectionRefused
        )
    }

    /// `doing` failed: the guest cannot be reached (retryable).
    pub fn unreachable(doing: impl Into<String>, cause: impl Into<Cause>) -> ClientError {
        ClientError::Unreachable {
            doing: doing.into(),
            cause: cause.into(),
        }
    }

    /// A message read or written on an established connection failed: the
    /// peer broke the protocol, or the connection broke.
    pub fn on_connection(doing: &'static str, e: ConnectionError) -> ClientError {
        if e.is_protocol_violation() {
            ClientError::Protocol { doing, cause: e.into() }
        } else {
            ClientError::unreachable(doing, e)
        }
    }

    /// The exit code of cmappmgr's monitoring form and its other commands.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Config(_) => exit::CONFIG,
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => exit::UNREACHABLE,
            ClientError::Auth { .. } => exit::AUTH,
            ClientError::Version(_) | ClientError::Protocol { .. } => exit::PROTOCOL,
            ClientError::Refused(e) => exit::for_refusal(e.kind),
        }
    }

    /// The OCF code of the one-shot verbs.
    pub fn ocf_exit_code(&self) -> i32 {
        match self {
            ClientError::Config(_) | ClientError::Auth { .. } => exit::ocf::ERR_CONFIGURED,
            ClientError::Version(_) => exit::ocf::ERR_INSTALLED,
            ClientError::Refused(e) if e.kind == ErrorKind::BadRequest => exit::ocf::ERR_ARGS,
            ClientError::Refused(e) if e.kind == ErrorKind::Version => exit::ocf::ERR_INSTALLED,
            ClientError::Refused(e) if e.kind == ErrorKind::Forbidden => exit::ocf::ERR_PERM,
            ClientError::Unreachable { .. }
            | ClientError::Protocol { .. }
            | ClientError::Refused(_)
            | ClientError::Timeout { .. } => exit::ocf::ERR_GENERIC,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_as_the_source() {
        use std::error::Error as _;
        let e = ClientError::unreachable(
            "connection to 10.0.0.5:5315 failed",
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        assert!(e.is_retryable());
        assert_eq!(e.exit_code(), exit::UNREACHABLE);
        assert!(e.to_string().starts_with("connection to 10.0.0.5:5315 failed: "), "{e}");
        let cause = e.source().expect("a source");
        let io = cause.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(io.map(io::Error::kind), Some(io::ErrorKind::ConnectionRefused));
    }

    #[test]
    fn an_internal_failure_of_the_server_is_not_a_refusal() {
        let reply = |kind| {
            ClientError::Refused(ErrorReply {
                kind,
                message: String::new(),
            })
        };
        assert_eq!(reply(ErrorKind::Internal).exit_code(), exit::SERVER_FAILED);
        assert_eq!(reply(ErrorKind::Limit).exit_code(), exit::REFUSED);
        assert_ne!(exit::SERVER_FAILED, exit::REFUSED);
    }
}
