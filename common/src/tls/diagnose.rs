//! Turning a failed handshake into a sentence for the user.

use std::io;

use rustls::{AlertDescription, CertificateError};

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
pub(super) fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
}

/// Alerts by which a peer says it will not accept us (or our TLS parameters).
fn is_rejection_alert(alert: &AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
            | AlertDescription::HandshakeFailure
            | AlertDescription::ProtocolVersion
            | AlertDescription::InsufficientSecurity
            | AlertDescription::NoApplicationProtocol
    )
}

/// Turns the error of a failed handshake (or of the first read after it, see
/// the module documentation) into a sentence for the user: a hint, then the
/// rustls error text in parentheses.
pub fn describe_handshake_error(err: &io::Error) -> String {
    let Some(tls) = rustls_error(err) else {
        return match err.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => format!(
                "the connection was closed during the TLS handshake: the peer may not speak TLS 1.3, \
                 or rejected us ({err})"
            ),
            io::ErrorKind::TimedOut => format!("the TLS handshake timed out ({err})"),
            _ => format!("the TLS handshake failed ({err})"),
        };
    };
    let hint = match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the peer's certificate does not carry the name we connected to".to_string()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the peer's certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the peer's certificate is not valid yet (check both clocks)".to_string()
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the peer's certificate is not made for this use (a server needs the serverAuth, \
                 a client the clientAuth extended key usage)"
                    .to_string()
            }
            CertificateError::BadEncoding => "the peer's certificate is malformed".to_string(),
            CertificateError::Other(o) if o.0.downcast_ref::<super::verify::KeyMismatch>().is_some() => {
                "the peer presented a trusted certificate but does not hold its private key (its handshake \
                 signature was made with another key: a copied certificate, or a key store whose key and \
                 certificate do not belong together)"
                    .to_string()
            }
            CertificateError::BadSignature => {
                "a signature in the peer's certificate chain does not verify (a forged or corrupted certificate)"
                    .to_string()
            }
            _ => "the peer's certificate is not trusted (not in the trust store and not signed by a trusted CA)"
                .to_string(),
        },
        rustls::Error::NoCertificatesPresented => {
            "the peer presented no certificate (a client certificate is required)".to_string()
        }
        rustls::Error::AlertReceived(alert) if is_rejection_alert(alert) => match alert {
            AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => {
                format!("the peer refused the handshake ({alert:?}); TLS 1.3 is required on both sides")
            }
            _ => format!(
                "the peer rejected our certificate ({alert:?}); is our certificate (or its CA) in the \
                 peer's trust store?"
            ),
        },
        rustls::Error::PeerIncompatible(_) => {
            "the peer is incompatible: TLS 1.3 is required (the peer may only speak TLS 1.2)".to_string()
        }
        rustls::Error::NoApplicationProtocol => {
            "the peer does not speak our protocol (no common ALPN protocol)".to_string()
        }
        rustls::Error::InconsistentKeys(_) => "our private key does not match our certificate".to_string(),
        _ => "the TLS handshake failed".to_string(),
    };
    format!("{hint} ({tls})")
}

/// True for failures that retrying will not fix: certificates, rejection
/// alerts and protocol incompatibility.
pub fn is_auth_failure(err: &io::Error) -> bool {
    match rustls_error(err) {
        Some(rustls::Error::InvalidCertificate(_))
        | Some(rustls::Error::NoCertificatesPresented)
        | Some(rustls::Error::PeerIncompatible(_))
        | Some(rustls::Error::NoApplicationProtocol)
        | Some(rustls::Error::InconsistentKeys(_))
        | Some(rustls::Error::UnsupportedNameType) => true,
        Some(rustls::Error::AlertReceived(alert)) => is_rejection_alert(alert),
        _ => false,
    }
}
