//! The certificate verifiers: pinned, or else a chain to a trusted CA.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{subject_of, TlsError, TrustStore};

/// Checks a certificate's validity period against `now`.
pub(super) fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| rustls::Error::from(CertificateError::BadEncoding))?;
    let validity = x509.validity();
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let as_unix = |t: i64| UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(t).unwrap_or(0)));
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now_secs < not_before {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: as_unix(not_before),
        }
        .into());
    }
    if now_secs > not_after {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after: as_unix(not_after),
        }
        .into());
    }
    Ok(())
}

/// The one verification core behind both verifier traits: a certificate
/// pinned exactly (only its validity period is checked), or else a chain to a
/// trusted CA (webpki, `W`), or else not trusted; and TLS 1.3 signatures only.
#[derive(Debug)]
struct PinnedOrCa<W: ?Sized> {
    /// The certificates accepted as they are: the pinned ones and the CAs.
    exact: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
    /// webpki with the CAs; `None` when there are none.
    webpki: Option<Arc<W>>,
}

impl<W: ?Sized> PinnedOrCa<W> {
    /// `build` makes the webpki verifier from the CAs (named `what` in an error).
    fn new<E: std::fmt::Display>(
        trust: &TrustStore,
        provider: &Arc<CryptoProvider>,
        what: &str,
        build: impl FnOnce(Arc<RootCertStore>) -> Result<Arc<W>, E>,
    ) -> Result<Self, TlsError> {
        let webpki = if trust.cas.is_empty() {
            None
        } else {
            let verifier = build(root_store(&trust.cas)?).map_err(|e| TlsError::Config(format!("{what}: {e}")))?;
            Some(verifier)
        };
        Ok(PinnedOrCa {
            exact: trust.pinned.iter().chain(trust.cas.iter()).cloned().collect(),
            algorithms: provider.signature_verification_algorithms,
            webpki,
        })
    }

    /// Pinned (then `verified`), or else what `chain` says of the webpki
    /// verifier, or else not trusted.
    fn verify<T>(
        &self,
        end_entity: &CertificateDer<'_>,
        now: UnixTime,
        verified: fn() -> T,
        chain: impl FnOnce(&W) -> Result<T, rustls::Error>,
    ) -> Result<T, rustls::Error> {
        if self.exact.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return check_validity(end_entity, now).map(|()| verified());
        }
        match &self.webpki {
            Some(webpki) => chain(webpki),
            None => Err(not_trusted()),
        }
    }

    /// The handshake signature: a bad one means the peer presented a
    /// certificate whose private key it does not hold (a copied certificate),
    /// and the error says exactly that (see [`KeyMismatch`]).
    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms).map_err(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
                CertificateError::Other(rustls::OtherError(Arc::new(KeyMismatch))).into()
            }
            other => other,
        })
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The peer's handshake signature does not verify with the public key of the
/// certificate it presented: it does not hold that certificate's private key.
#[derive(Debug)]
pub(super) struct KeyMismatch;

impl std::fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the handshake signature does not verify with the certificate's public key")
    }
}

impl std::error::Error for KeyMismatch {}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not accepted; TLS 1.3 is required".into())
}

fn not_trusted() -> rustls::Error {
    CertificateError::UnknownIssuer.into()
}

fn root_store(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in cas {
        roots.add(cert.clone()).map_err(|e| {
            TlsError::Config(format!(
                "CA certificate {} cannot be a trust anchor: {e}",
                subject_of(cert)
            ))
        })?;
    }
    Ok(Arc::new(roots))
}

/// The three signature methods both verifier traits have, the same in
/// both: TLS 1.2 refused, TLS 1.3 checked by the [`PinnedOrCa`] core in `self.0`.
macro_rules! signatures_by_the_core {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.schemes()
        }
    };
}

/// The client's check of the server.
#[derive(Debug)]
pub(super) struct ServerVerifier(PinnedOrCa<WebPkiServerVerifier>);

impl ServerVerifier {
    pub(super) fn new(trust: &TrustStore, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        PinnedOrCa::new(trust, provider, "server certificate verifier", |roots| {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()
        })
        .map(ServerVerifier)
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.verify(end_entity, now, ServerCertVerified::assertion, |webpki| {
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        })
    }

    signatures_by_the_core!();
}

/// The server's check of the client: a certificate is mandatory.
#[derive(Debug)]
pub(super) struct ClientVerifier(PinnedOrCa<dyn ClientCertVerifier>);

impl ClientVerifier {
    pub(super) fn new(trust: &TrustStore, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        PinnedOrCa::new(trust, provider, "client certificate verifier", |roots| {
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()
        })
        .map(ClientVerifier)
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify(end_entity, now, ClientCertVerified::assertion, |webpki| {
            webpki.verify_client_cert(end_entity, intermediates, now)
        })
    }

    signatures_by_the_core!();
}
