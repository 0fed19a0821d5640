//! TLS 1.3 with mutual authentication, set up in one place.
//!
//! (Skeleton: the signatures below are the contract the binaries use.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What can go wrong loading key material or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A private key with its certificate chain (the `keyStore` file).
#[derive(Debug)]
pub struct KeyMaterial {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The certificates a peer is trusted by (the `trustStore` file).
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    /// Non-CA certificates: the peer must present exactly one of these.
    pub pinned: Vec<CertificateDer<'static>>,
    /// CA certificates: the peer's chain must lead to one of these.
    pub cas: Vec<CertificateDer<'static>>,
}

/// Installs the process-wide crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {}

/// Loads a `keyStore` PEM file: one private key and its certificate chain.
pub fn load_key_store(path: &Path, _password: &str) -> Result<KeyMaterial, TlsError> {
    Err(TlsError::File { path: path.into(), message: "not implemented".into() })
}

/// Loads a `trustStore` PEM file.
pub fn load_trust_store(path: &Path) -> Result<TrustStore, TlsError> {
    Err(TlsError::File { path: path.into(), message: "not implemented".into() })
}

/// The server side: TLS 1.3 only, client certificate required.
pub fn server_config(_key: KeyMaterial, _trust: TrustStore) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Err(TlsError::Config("not implemented".into()))
}

/// The client side: TLS 1.3 only, presents `key`, checks the server against `trust`.
pub fn client_config(_key: KeyMaterial, _trust: TrustStore) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Err(TlsError::Config("not implemented".into()))
}

/// A short description of the verified peer certificate for logs (its subject CN or first SAN).
pub fn peer_identity(_conn: &rustls::CommonState) -> String {
    String::new()
}
