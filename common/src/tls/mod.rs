//! TLS 1.3 with mutual authentication, set up in one place.
//!
//! Both programs present a certificate and check the other's: `cmappserver`
//! (the guest) requires a client certificate, `cmappmgr` (the host) checks the
//! server's. Only TLS 1.3 is offered or accepted, with the ring provider.
//!
//! # Files
//!
//! * The **key store** ([`load_key_store`]) holds the private key and its
//!   certificate chain: a PKCS#12 or JKS store as keytool writes it (opened
//!   with `keyStorePassword`), or PEM (PKCS#8, SEC1 `EC PRIVATE KEY`, PKCS#1
//!   `RSA PRIVATE KEY`, or a password-protected PKCS#8 `ENCRYPTED PRIVATE KEY`).
//!   Like ssh, we refuse a plain key file that group or others may read or
//!   write; a password-protected one only gets a warning (keytool writes 0644).
//! * The **trust store** ([`load_trust_store`]) holds one or more
//!   certificates: PKCS#12, JKS (opened with `trustStorePassword`), PEM, or one
//!   DER certificate. CA certificates (basicConstraints `CA:TRUE`) go to
//!   [`TrustStore::cas`], every other one to [`TrustStore::pinned`].
//!
//! The format is told by content, never by the file's name.
//!
//! # Trust rules (the same in both directions)
//!
//! A peer is trusted when either
//!
//! 1. **pinned**: its end-entity certificate is byte-for-byte equal to one of
//!    the trust store's certificates (as in the original product, whose trust
//!    store holds the peer's exported public certificate). No chain is built
//!    and no name is checked, but the certificate's validity period *is*
//!    checked: an expired (or not yet valid) pinned certificate is refused.
//!    Equality with a CA certificate of the trust store also counts, so a
//!    self-signed certificate that happens to say `CA:TRUE` (as
//!    `openssl req -x509` writes by default) can still be pinned; that grants
//!    nothing beyond what trusting that CA already grants. Or
//! 2. **CA**: its chain verifies against [`TrustStore::cas`] with webpki
//!    (validity, key usage: serverAuth for servers, clientAuth for clients).
//!    The client also checks that the server certificate carries the name it
//!    connected to (a DNS name or IP address subject alternative name).
//!
//! In both modes the peer proves it holds the private key by its TLS 1.3
//! handshake signature.
//!
//! # A TLS 1.3 subtlety for the client
//!
//! In TLS 1.3 the client finishes its handshake *before* the server has
//! checked the client certificate. When the server rejects us, the client's
//! `connect` therefore succeeds and the rejection (an alert) surfaces as the
//! error of the first read. Pass that error to [`describe_handshake_error`]
//! and [`is_auth_failure`] too.
//!
//! # Layout
//!
//! * `files`: reading store files and the policy on their modes (every
//!   permission check is there);
//! * `java`: PKCS#12 and JKS, as keytool writes them;
//! * `keystore`, `truststore`: parsing the two files;
//! * `verify`: the pinned-or-CA verifiers behind rustls's client and server traits;
//! * `diagnose`: turning a failed handshake into a sentence for the user;
//! * this module: the shared types and the configuration builders.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::InconsistentKeys;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

mod diagnose;
mod error;
mod expiry;
mod files;
mod java;
mod keystore;
#[cfg(test)]
mod tests;
mod truststore;
mod verify;

pub use diagnose::{describe_handshake_error, is_auth_failure};
pub use error::StoreError;
pub use expiry::{expiry_warnings, WARN_BEFORE};
pub use files::read_key_file;
pub use keystore::load_key_store;
pub use truststore::load_trust_store;

use verify::{ClientVerifier, ServerVerifier};

/// The ALPN protocol both sides offer.
pub const ALPN_PROTOCOL: &[u8] = b"cmapp/1";

/// What can go wrong loading key material or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A key store or trust store file is missing, unreadable, unsafe or malformed.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// A key store or trust store's content cannot be used.
    #[error("{path}: {source}")]
    Store {
        path: PathBuf,
        /// Boxed: most of what a caller's error holds is not this.
        #[source]
        source: Box<StoreError>,
    },
    /// The material loaded but cannot make a TLS configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TlsError {
    pub(super) fn store(path: &std::path::Path, source: StoreError) -> TlsError {
        TlsError::Store {
            path: path.into(),
            source: Box::new(source),
        }
    }
}

/// A private key with its certificate chain (the `keyStore` file).
#[derive(Debug)]
pub struct KeyMaterial {
    /// The certificate chain, end-entity certificate first.
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for KeyMaterial {
    fn clone(&self) -> Self {
        KeyMaterial {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The certificates a peer is trusted by (the `trustStore` file).
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    /// Non-CA certificates: the peer must present exactly one of these.
    pub pinned: Vec<CertificateDer<'static>>,
    /// CA certificates: the peer's chain must lead to one of these.
    pub cas: Vec<CertificateDer<'static>>,
}

impl TrustStore {
    /// True when the store trusts nobody.
    pub fn is_empty(&self) -> bool {
        self.pinned.is_empty() && self.cas.is_empty()
    }
}

/// Installs the process-wide crypto provider (ring). Idempotent.
///
/// The configurations built here name their provider explicitly; this only
/// matters for other rustls users in the process.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The provider every configuration here is built with.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A one-line description of a certificate's subject, for messages.
pub(super) fn subject_of(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, x509)) => {
            let subject = x509.subject().to_string();
            if subject.is_empty() {
                "an empty subject".into()
            } else {
                subject
            }
        }
        Err(_) => "an unparsable certificate".into(),
    }
}

fn config_error(what: &str) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
    move |e| match e {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
            TlsError::Config("the private key does not match the certificate".into())
        }
        e => TlsError::Config(format!("{what}: {e}")),
    }
}

fn check_usable(key: &KeyMaterial, trust: &TrustStore) -> Result<(), TlsError> {
    if key.certs.is_empty() {
        return Err(TlsError::Config("the key store holds no certificate".into()));
    }
    if trust.is_empty() {
        return Err(TlsError::Config(
            "the trust store is empty: no peer would be accepted".into(),
        ));
    }
    Ok(())
}

/// The server side: TLS 1.3 only, client certificate required.
pub fn server_config(key: KeyMaterial, trust: TrustStore) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    check_usable(&key, &trust)?;
    let provider = provider();
    let verifier = Arc::new(ClientVerifier::new(&trust, &provider)?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error("TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(key.certs, key.key)
        .map_err(config_error("server certificate"))?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    // No session tickets: no manager resumes (each connection attempt
    // re-reads its key material into a new configuration, so that rotated
    // keys take effect), and each ticket costs the server work in every
    // handshake, a reconnect storm's thousand of them included.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side: TLS 1.3 only, presents `key`, checks the server against `trust`.
pub fn client_config(key: KeyMaterial, trust: TrustStore) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    check_usable(&key, &trust)?;
    let provider = provider();
    let verifier = Arc::new(ServerVerifier::new(&trust, &provider)?);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error("TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(key.certs, key.key)
        .map_err(config_error("client certificate"))?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    Ok(Arc::new(config))
}

/// A short description of the verified peer certificate for logs (its subject CN or first SAN).
pub fn peer_identity(conn: &rustls::CommonState) -> String {
    conn.peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| certificate_name(cert))
        .unwrap_or_else(|| "unknown".into())
}

/// The subject CN of a certificate, or else its first subject alternative name.
pub(super) fn certificate_name(cert: &CertificateDer<'_>) -> Option<String> {
    certificate_names(cert, false).into_iter().next()
}

/// A certificate's names: its subject CN(s), then its DNS, IP and (with
/// `uris`) URI subject alternative names, in that order, without repeats.
/// Empty for bytes that are not a certificate.
pub fn certificate_names(cert: &[u8], uris: bool) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let mut names: Vec<String> = x509
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            let name = match n {
                GeneralName::DNSName(d) => Some((*d).to_string()),
                GeneralName::URI(u) if uris => Some((*u).to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => <[u8; 4]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::Ipv4Addr::from(a).to_string()),
                    16 => <[u8; 16]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::Ipv6Addr::from(a).to_string()),
                    _ => None,
                },
                _ => None,
            };
            if let Some(name) = name.filter(|n| !names.contains(n)) {
                names.push(name);
            }
        }
    }
    names
}

/// Fuzz entry point (see [`crate::fuzzing`]): the key store and trust store
/// loaders (PEM, PKCS#12 and JKS, recognised by content) on arbitrary bytes.
pub fn fuzz_key_stores(data: &[u8]) {
    const PASSWORD: &str = "changeit";
    let _ = keystore::open_key_store(data, PASSWORD);
    let _ = truststore::parse_trust_store(data, PASSWORD);
    // A JKS store ends in a SHA-1 digest the fuzzer cannot guess: the same
    // input with a valid digest appended reaches the parser behind the check.
    if data.starts_with(&[0xfe, 0xed, 0xfe, 0xed]) {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(&PASSWORD.encode_utf16().flat_map(u16::to_be_bytes).collect::<Vec<u8>>());
        ctx.update(b"Mighty Aphrodite");
        ctx.update(data);
        let mut signed = data.to_vec();
        signed.extend_from_slice(ctx.finish().as_ref());
        let _ = keystore::open_key_store(&signed, PASSWORD);
        let _ = truststore::parse_trust_store(&signed, PASSWORD);
    }
}
