//! TLS 1.3 with mutual authentication, set up in one place.
//!
//! Both programs present a certificate and check the other's: `cmappserver`
//! (the guest) requires a client certificate, `cmappmgr` (the host) checks the
//! server's. Only TLS 1.3 is offered or accepted, with the ring provider.
//!
//! # Files
//!
//! * The **key store** ([`load_key_store`]) is one PEM file with the private key
//!   (PKCS#8, SEC1 `EC PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`, or a
//!   password-protected PKCS#8 `ENCRYPTED PRIVATE KEY`) and its certificate
//!   chain, leaf first. Like ssh, we refuse a key file that group or others
//!   may read or write.
//! * The **trust store** ([`load_trust_store`]) is one PEM file with one or more
//!   certificates. CA certificates (basicConstraints `CA:TRUE`) go to
//!   [`TrustStore::cas`], every other one to [`TrustStore::pinned`].
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

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, InconsistentKeys, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer, ServerName, UnixTime,
};

/// The ALPN protocol both sides offer.
pub const ALPN_PROTOCOL: &[u8] = b"cmapp/1";

/// What can go wrong loading key material or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A key store or trust store file is missing, unreadable, unsafe or malformed.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The material loaded but cannot make a TLS configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
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
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.into(),
        message: message.into(),
    }
}

/// Refuses a private key file that group or others may read or write, as ssh does.
pub fn check_key_file_mode(path: &Path) -> Result<(), TlsError> {
    let meta = std::fs::metadata(path).map_err(|e| file_error(path, read_error("key store", &e)))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(file_error(
            path,
            format!(
                "private key is accessible by group or others (mode {mode:04o}); run chmod 600 {}",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn read_error(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!("{what} file does not exist"),
        io::ErrorKind::PermissionDenied => format!("cannot read the {what}: permission denied"),
        _ => format!("cannot read the {what}: {e}"),
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(path, read_error(what, &e)))
}

/// Loads a `keyStore` PEM file: one private key and its certificate chain.
///
/// `password` decrypts an `ENCRYPTED PRIVATE KEY`; it is ignored for a
/// plain key (the original's configuration always names one).
pub fn load_key_store(path: &Path, password: &str) -> Result<KeyMaterial, TlsError> {
    check_key_file_mode(path)?;
    let pem = read_file(path, "key store")?;
    parse_key_store(&pem, password).map_err(|message| file_error(path, message))
}

/// The PEM sections rustls-pki-types does not know: PKCS#8 encrypted keys.
fn encrypted_key_sections(text: &str) -> Result<Vec<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
    const END: &str = "-----END ENCRYPTED PRIVATE KEY-----";
    let mut sections = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let section = &rest[start..];
        let Some(end) = section.find(END) else {
            return Err("the ENCRYPTED PRIVATE KEY section has no end line".into());
        };
        let block = &section[..end + END.len()];
        let (_label, der) = pkcs8::der::pem::decode_vec(block.as_bytes())
            .map_err(|e| format!("the ENCRYPTED PRIVATE KEY section is not valid PEM: {e}"))?;
        sections.push(der);
        rest = &section[end + END.len()..];
    }
    Ok(sections)
}

const SUPPORTED_ENCRYPTION: &str = "supported: PKCS#8 PBES2 with PBKDF2-HMAC-SHA256 or scrypt and AES-CBC, \
     as written by `openssl pkcs8 -topk8 -v2 aes-256-cbc`";

fn unsupported_encryption(e: &pkcs8::Error) -> String {
    format!("the private key's encryption is not supported: {e} ({SUPPORTED_ENCRYPTION})")
}

fn decrypt_pkcs8(der: &[u8], password: &str) -> Result<PrivatePkcs8KeyDer<'static>, String> {
    use pkcs8::pkcs5;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der).map_err(|e| match e {
        pkcs8::Error::EncryptedPrivateKey(_) => unsupported_encryption(&e),
        _ => format!("the ENCRYPTED PRIVATE KEY is malformed: {e}"),
    })?;
    let wrong = || {
        if password.is_empty() {
            "the private key is encrypted but no password was given (keyStorePassword)".to_string()
        } else {
            "cannot decrypt the private key: wrong password (keyStorePassword)".to_string()
        }
    };
    // pkcs5 0.7 reports a bad padding (the usual sign of a wrong password)
    // as `EncryptFailed`, so both count.
    let doc = info.decrypt(password).map_err(|e| match e {
        pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::DecryptFailed | pkcs5::Error::EncryptFailed)
        | pkcs8::Error::Asn1(_) => wrong(),
        _ => unsupported_encryption(&e),
    })?;
    // A wrong password passes the padding check once in 256 tries: the
    // plaintext must also be a private key.
    pkcs8::PrivateKeyInfo::try_from(doc.as_bytes()).map_err(|_| wrong())?;
    Ok(PrivatePkcs8KeyDer::from(doc.as_bytes().to_vec()))
}

/// A one-line description of a certificate's subject, for messages.
fn subject_of(cert: &CertificateDer<'_>) -> String {
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

fn parse_key_store(pem: &[u8], password: &str) -> Result<KeyMaterial, String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(
            "the private key is encrypted in the legacy OpenSSL format, which is not supported; \
                    convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc` and keep the certificates after it"
                .into(),
        );
    }
    let mut certs = Vec::new();
    let mut keys: Vec<PrivateKeyDer<'static>> = Vec::new();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|e| format!("not a valid PEM file: {e}"))?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => keys.push(PrivatePkcs8KeyDer::from(der).into()),
            SectionKind::EcPrivateKey => keys.push(PrivateSec1KeyDer::from(der).into()),
            SectionKind::RsaPrivateKey => keys.push(PrivatePkcs1KeyDer::from(der).into()),
            _ => {}
        }
    }
    for der in encrypted_key_sections(&text)? {
        keys.push(decrypt_pkcs8(&der, password)?.into());
    }
    let key = match keys.len() {
        0 => {
            return Err("no private key found (expected a PRIVATE KEY, ENCRYPTED PRIVATE KEY, \
                        EC PRIVATE KEY or RSA PRIVATE KEY section)"
                .into())
        }
        1 => keys.remove(0),
        n => return Err(format!("holds {n} private keys; a key store holds exactly one")),
    };
    if certs.is_empty() {
        return Err("no certificate found; a key store holds the private key and its certificate (chain)".into());
    }
    for (i, cert) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(cert) {
            return Err(format!("certificate #{} is not a valid X.509 certificate: {e}", i + 1));
        }
    }

    let signing_key = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("the private key cannot be used: {e}"))?;
    let matches = |cert: &CertificateDer<'static>| match CertifiedKey::new(vec![cert.clone()], signing_key.clone())
        .keys_match()
    {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(true),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Ok(false),
        Err(e) => Err(format!("cannot compare the private key with the certificate: {e}")),
    };
    if !matches(&certs[0])? {
        // Be forgiving about the order: move the key's own certificate first.
        let mut found = None;
        for (i, cert) in certs.iter().enumerate().skip(1) {
            if matches(cert)? {
                found = Some(i);
                break;
            }
        }
        match found {
            Some(i) => {
                let leaf = certs.remove(i);
                certs.insert(0, leaf);
            }
            None => {
                return Err(format!(
                    "the private key does not match the certificate ({}) nor any other certificate in the file",
                    subject_of(&certs[0])
                ))
            }
        }
    }
    warn_if_outside_validity(&certs[0]);
    Ok(KeyMaterial { certs, key })
}

fn warn_if_outside_validity(cert: &CertificateDer<'_>) {
    if let Err(e) = check_validity(cert, UnixTime::now()) {
        tracing::warn!(
            "our own certificate ({}) will be refused by peers: {e}",
            subject_of(cert)
        );
    }
}

/// Loads a `trustStore` PEM file.
pub fn load_trust_store(path: &Path) -> Result<TrustStore, TlsError> {
    let pem = read_file(path, "trust store")?;
    parse_trust_store(&pem).map_err(|message| file_error(path, message))
}

fn parse_trust_store(pem: &[u8]) -> Result<TrustStore, String> {
    let mut store = TrustStore::default();
    let private_key = || {
        "holds a private key: a trust store holds only certificates (the peer's .public file, \
         never a .private file)"
            .to_string()
    };
    if String::from_utf8_lossy(pem).contains("PRIVATE KEY-----") {
        return Err(private_key());
    }
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|e| format!("not a valid PEM file: {e}"))?;
        match kind {
            SectionKind::Certificate => {
                let n = store.pinned.len() + store.cas.len() + 1;
                let is_ca = match x509_parser::parse_x509_certificate(&der) {
                    Ok((_, x509)) => x509.is_ca(),
                    Err(e) => return Err(format!("certificate #{n} is not a valid X.509 certificate: {e}")),
                };
                let cert = CertificateDer::from(der);
                if is_ca {
                    RootCertStore::empty().add(cert.clone()).map_err(|e| {
                        format!(
                            "CA certificate #{n} ({}) cannot be a trust anchor: {e}",
                            subject_of(&cert)
                        )
                    })?;
                    store.cas.push(cert);
                } else {
                    store.pinned.push(cert);
                }
            }
            SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey => {
                return Err(private_key())
            }
            _ => {}
        }
    }
    if store.is_empty() {
        return Err("no certificate found (expected the peer's certificate or a CA certificate in PEM)".into());
    }
    Ok(store)
}

/// Checks a certificate's validity period against `now`.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
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

/// What both verifiers share: the certificates accepted as they are, and the
/// signature algorithms.
#[derive(Debug)]
struct Pins {
    exact: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pins {
    fn new(trust: &TrustStore, provider: &CryptoProvider) -> Self {
        let exact = trust.pinned.iter().chain(trust.cas.iter()).cloned().collect();
        Pins {
            exact,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// `None` when `end_entity` is not pinned; otherwise whether it is in its validity period.
    fn check(&self, end_entity: &CertificateDer<'_>, now: UnixTime) -> Option<Result<(), rustls::Error>> {
        self.exact
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
            .then(|| check_validity(end_entity, now))
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

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

/// The client's check of the server: pinned, or else webpki with the CAs.
#[derive(Debug)]
struct ServerVerifier {
    pins: Pins,
    webpki: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerVerifier {
    fn new(trust: &TrustStore, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let webpki = if trust.cas.is_empty() {
            None
        } else {
            let verifier = WebPkiServerVerifier::builder_with_provider(root_store(&trust.cas)?, provider.clone())
                .build()
                .map_err(|e| TlsError::Config(format!("server certificate verifier: {e}")))?;
            Some(verifier)
        };
        Ok(ServerVerifier {
            pins: Pins::new(trust, provider),
            webpki,
        })
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
        if let Some(valid) = self.pins.check(end_entity, now) {
            return valid.map(|()| ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(webpki) => webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            None => Err(not_trusted()),
        }
    }

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
        self.pins.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.pins.algorithms.supported_schemes()
    }
}

/// The server's check of the client: a certificate is mandatory; pinned, or
/// else webpki with the CAs.
#[derive(Debug)]
struct ClientVerifier {
    pins: Pins,
    webpki: Option<Arc<dyn ClientCertVerifier>>,
}

impl ClientVerifier {
    fn new(trust: &TrustStore, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let webpki = if trust.cas.is_empty() {
            None
        } else {
            let verifier = WebPkiClientVerifier::builder_with_provider(root_store(&trust.cas)?, provider.clone())
                .build()
                .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))?;
            Some(verifier)
        };
        Ok(ClientVerifier {
            pins: Pins::new(trust, provider),
            webpki,
        })
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
        if let Some(valid) = self.pins.check(end_entity, now) {
            return valid.map(|()| ClientCertVerified::assertion());
        }
        match &self.webpki {
            Some(webpki) => webpki.verify_client_cert(end_entity, intermediates, now),
            None => Err(not_trusted()),
        }
    }

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
        self.pins.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.pins.algorithms.supported_schemes()
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
fn certificate_name(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    if let Some(cn) = x509.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        return Some(cn.to_string());
    }
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) => Some((*dns).to_string()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes)
                .ok()
                .map(|b| std::net::Ipv4Addr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(*bytes)
                .ok()
                .map(|b| std::net::Ipv6Addr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    })
}

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName as Dn, DnType, ExtendedKeyUsagePurpose as Eku, IsCa,
        Issuer, KeyPair, KeyUsagePurpose,
    };
    use std::os::unix::fs::OpenOptionsExt;
    use std::process::Command;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A key and its certificate (chain), made by rcgen.
    struct Party {
        key_pem: String,
        cert_pem: String,
        chain_pem: String,
    }

    impl Party {
        fn key_store_pem(&self) -> String {
            format!("{}{}", self.key_pem, self.chain_pem)
        }
        fn material(&self) -> KeyMaterial {
            parse_key_store(self.key_store_pem().as_bytes(), "").unwrap()
        }
        fn trust(&self) -> TrustStore {
            parse_trust_store(self.cert_pem.as_bytes()).unwrap()
        }
    }

    fn new_key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    fn params(name: &str) -> CertificateParams {
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name = Dn::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p
    }

    fn self_signed_with(p: CertificateParams) -> Party {
        let key = new_key();
        let cert = p.self_signed(&key).unwrap();
        Party {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            chain_pem: cert.pem(),
        }
    }

    /// A pinned-mode certificate, as `certs::self_signed` makes them.
    fn pinned(name: &str) -> Party {
        let mut p = params(name);
        p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self_signed_with(p)
    }

    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        cert_pem: String,
    }

    impl TestCa {
        fn new(name: &str) -> Self {
            let key = new_key();
            let mut p = CertificateParams::default();
            p.distinguished_name = Dn::new();
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = p.self_signed(&key).unwrap();
            TestCa {
                issuer: Issuer::new(p, key),
                cert_pem: cert.pem(),
            }
        }
        fn issue(&self, name: &str, eku: Eku) -> Party {
            let key = new_key();
            let mut p = params(name);
            p.extended_key_usages = vec![eku];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = p.signed_by(&key, &self.issuer).unwrap();
            Party {
                key_pem: key.serialize_pem(),
                cert_pem: cert.pem(),
                chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            }
        }
        fn trust(&self) -> TrustStore {
            parse_trust_store(self.cert_pem.as_bytes()).unwrap()
        }
    }

    /// Runs a handshake and a two-byte exchange each way over an in-memory
    /// pipe; returns what each side saw: the peer's identity or the error.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> (io::Result<String>, io::Result<String>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from(name.to_string()).unwrap();
        let server = async move {
            let mut tls = acceptor.accept(server_io).await?;
            let peer = peer_identity(tls.get_ref().1);
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_PROTOCOL));
            tls.write_all(b"ok").await?;
            tls.flush().await?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            tls.shutdown().await?;
            Ok(peer)
        };
        let client = async move {
            let mut tls = connector.connect(name, client_io).await?;
            let peer = peer_identity(tls.get_ref().1);
            // In TLS 1.3 a rejection of our certificate shows up here.
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            tls.write_all(b"hi").await?;
            tls.flush().await?;
            // Wait for the server's close_notify.
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).await?;
            Ok(peer)
        };
        let both = async { tokio::join!(server, client) };
        tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("handshake hung")
    }

    fn tls_error(result: &io::Result<String>) -> &rustls::Error {
        let err = result.as_ref().expect_err("expected a failure");
        rustls_error(err).unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
    }

    #[tokio::test]
    async fn pinned_pair_handshakes() {
        let server = pinned("guest1");
        let client = pinned("host1");
        let s = server_config(server.material(), client.trust()).unwrap();
        let c = client_config(client.material(), server.trust()).unwrap();
        // No name check in pinned mode: any name will do.
        let (s_res, c_res) = handshake(s, c, "some-other-name").await;
        assert_eq!(s_res.unwrap(), "host1");
        assert_eq!(c_res.unwrap(), "guest1");
    }

    #[tokio::test]
    async fn pinned_trust_store_with_several_peers() {
        let server = pinned("guest1");
        let client = pinned("host1");
        let others = [pinned("guest2"), pinned("guest3")];
        let trust_pem = format!("{}{}{}", others[0].cert_pem, server.cert_pem, others[1].cert_pem);
        let trust = parse_trust_store(trust_pem.as_bytes()).unwrap();
        assert_eq!(trust.pinned.len(), 3);
        let s = server_config(server.material(), client.trust()).unwrap();
        let c = client_config(client.material(), trust).unwrap();
        let (s_res, c_res) = handshake(s, c, "guest1").await;
        assert_eq!(s_res.unwrap(), "host1");
        assert_eq!(c_res.unwrap(), "guest1");
    }

    #[tokio::test]
    async fn pinned_self_signed_ca_certificate_is_accepted_as_itself() {
        // `openssl req -x509` marks self-signed certificates CA:TRUE.
        let mut p = params("guest1");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let server = self_signed_with(p);
        assert_eq!(server.trust().cas.len(), 1);
        let client = pinned("host1");
        let s = server_config(server.material(), client.trust()).unwrap();
        let c = client_config(client.material(), server.trust()).unwrap();
        let (s_res, c_res) = handshake(s, c, "guest1").await;
        assert_eq!(s_res.unwrap(), "host1");
        assert_eq!(c_res.unwrap(), "guest1");
    }

    #[tokio::test]
    async fn expired_pinned_certificate_is_refused() {
        let mut p = params("guest1");
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let server = self_signed_with(p);
        let client = pinned("host1");
        let s = server_config(server.material(), client.trust()).unwrap();
        let c = client_config(client.material(), server.trust()).unwrap();
        let (_s_res, c_res) = handshake(s, c, "guest1").await;
        assert!(matches!(
            tls_error(&c_res),
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ));
        let err = c_res.unwrap_err();
        assert!(is_auth_failure(&err));
        assert!(
            describe_handshake_error(&err).contains("expired"),
            "{}",
            describe_handshake_error(&err)
        );
    }

    #[tokio::test]
    async fn ca_mode_handshakes_and_checks_the_server_name() {
        let ca = TestCa::new("test CA");
        let client = ca.issue("host1", Eku::ClientAuth);
        let good = ca.issue("guest1", Eku::ServerAuth);
        let s = server_config(good.material(), ca.trust()).unwrap();
        let c = client_config(client.material(), ca.trust()).unwrap();
        let (s_res, c_res) = handshake(s, c.clone(), "guest1").await;
        assert_eq!(s_res.unwrap(), "host1");
        assert_eq!(c_res.unwrap(), "guest1");

        let other = ca.issue("other", Eku::ServerAuth);
        let s = server_config(other.material(), ca.trust()).unwrap();
        let (s_res, c_res) = handshake(s, c, "guest1").await;
        assert!(s_res.is_err());
        assert!(matches!(
            tls_error(&c_res),
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
                | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
        ));
        let err = c_res.unwrap_err();
        assert!(is_auth_failure(&err));
        let text = describe_handshake_error(&err);
        eprintln!("{text}");
        assert!(text.contains("does not carry the name"), "{text}");
    }

    #[tokio::test]
    async fn ca_mode_accepts_an_ip_address_name() {
        let ca = TestCa::new("test CA");
        let client = ca.issue("host1", Eku::ClientAuth);
        let server = ca.issue("192.0.2.10", Eku::ServerAuth);
        let s = server_config(server.material(), ca.trust()).unwrap();
        let c = client_config(client.material(), ca.trust()).unwrap();
        let (s_res, c_res) = handshake(s, c, "192.0.2.10").await;
        assert_eq!(s_res.unwrap(), "host1");
        assert_eq!(c_res.unwrap(), "192.0.2.10");
    }

    #[tokio::test]
    async fn ca_mode_rejects_a_client_of_another_ca() {
        let ca = TestCa::new("test CA");
        let rogue_ca = TestCa::new("rogue CA");
        let server = ca.issue("guest1", Eku::ServerAuth);
        let client = rogue_ca.issue("host1", Eku::ClientAuth);
        let s = server_config(server.material(), ca.trust()).unwrap();
        let c = client_config(client.material(), ca.trust()).unwrap();
        let (s_res, c_res) = handshake(s, c, "guest1").await;
        assert!(matches!(tls_error(&s_res), rustls::Error::InvalidCertificate(_)));
        assert!(is_auth_failure(s_res.as_ref().unwrap_err()));
        assert!(is_auth_failure(c_res.as_ref().unwrap_err()));
    }

    #[tokio::test]
    async fn client_with_unknown_certificate_is_rejected() {
        let server = pinned("guest1");
        let client = pinned("host1");
        let stranger = pinned("host1");
        let s = server_config(server.material(), client.trust()).unwrap();
        let c = client_config(stranger.material(), server.trust()).unwrap();
        let (s_res, c_res) = handshake(s, c, "guest1").await;
        assert!(matches!(
            tls_error(&s_res),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ));
        let s_err = s_res.unwrap_err();
        assert!(is_auth_failure(&s_err));
        assert!(describe_handshake_error(&s_err).contains("not trusted"));
        // The client learns it from the server's alert.
        assert!(
            matches!(tls_error(&c_res), rustls::Error::AlertReceived(_)),
            "{c_res:?}"
        );
        let c_err = c_res.unwrap_err();
        assert!(is_auth_failure(&c_err));
        let text = describe_handshake_error(&c_err);
        eprintln!("{text}");
        assert!(text.contains("the peer rejected our certificate"), "{text}");
    }

    #[tokio::test]
    async fn client_without_certificate_is_rejected() {
        let server = pinned("guest1");
        let client = pinned("host1");
        let s = server_config(server.material(), client.trust()).unwrap();
        let provider = provider();
        let verifier = Arc::new(ServerVerifier::new(&server.trust(), &provider).unwrap());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        c.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
        let (s_res, c_res) = handshake(s, Arc::new(c), "guest1").await;
        assert!(matches!(tls_error(&s_res), rustls::Error::NoCertificatesPresented));
        assert!(describe_handshake_error(s_res.as_ref().unwrap_err()).contains("no certificate"));
        let c_err = c_res.unwrap_err();
        assert!(is_auth_failure(&c_err), "{c_err:?}");
        assert!(describe_handshake_error(&c_err).contains("rejected our certificate"));
    }

    #[tokio::test]
    async fn server_not_in_trust_store_is_rejected() {
        let server = pinned("guest1");
        let impostor = pinned("guest1");
        let client = pinned("host1");
        let s = server_config(impostor.material(), client.trust()).unwrap();
        let c = client_config(client.material(), server.trust()).unwrap();
        let (s_res, c_res) = handshake(s, c, "guest1").await;
        assert!(matches!(
            tls_error(&c_res),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ));
        let c_err = c_res.unwrap_err();
        assert!(is_auth_failure(&c_err));
        let text = describe_handshake_error(&c_err);
        eprintln!("{text}");
        assert!(
            text.contains("not trusted (not in the trust store and not signed by a trusted CA)"),
            "{text}"
        );
        assert!(is_auth_failure(s_res.as_ref().unwrap_err()));
    }

    #[test]
    fn plain_io_errors_are_not_auth_failures() {
        let err = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert!(!is_auth_failure(&err));
        assert!(describe_handshake_error(&err).contains("closed during the TLS handshake"));
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::SupportedVersionsExtensionRequired),
        );
        assert!(is_auth_failure(&err));
        assert!(describe_handshake_error(&err).contains("TLS 1.3 is required"));
    }

    #[test]
    fn peer_name_falls_back_to_the_first_san() {
        let mut p = CertificateParams::new(vec!["10.1.2.3".to_string(), "guest1".to_string()]).unwrap();
        p.distinguished_name = Dn::new();
        let party = self_signed_with(p);
        let der = CertificateDer::from_pem_slice(party.cert_pem.as_bytes()).unwrap();
        assert_eq!(certificate_name(&der).as_deref(), Some("10.1.2.3"));
    }

    // ---- key and trust store files ----

    fn write(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .unwrap();
        io::Write::write_all(&mut f, contents.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn message(err: TlsError) -> String {
        err.to_string()
    }

    fn encrypt(key_pem: &str, password: &str) -> String {
        let der = pkcs8::der::pem::decode_vec(key_pem.as_bytes()).unwrap().1;
        let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).unwrap();
        let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"saltsalt", &[7u8; 16]).unwrap();
        let doc = info.encrypt_with_params(params, password).unwrap();
        doc.to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
            .unwrap()
            .to_string()
    }

    #[test]
    fn key_store_loads_and_names_the_file_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let party = pinned("guest1");
        let ok = write(dir.path(), "ok.private", &party.key_store_pem(), 0o600);
        let m = load_key_store(&ok, "ignored").unwrap();
        assert_eq!(m.certs.len(), 1);

        let missing = dir.path().join("missing.private");
        let e = message(load_key_store(&missing, "").unwrap_err());
        assert!(e.contains("missing.private") && e.contains("does not exist"), "{e}");

        let open = write(dir.path(), "open.private", &party.key_store_pem(), 0o644);
        let e = message(load_key_store(&open, "").unwrap_err());
        assert_eq!(
            e,
            format!(
                "{0}: private key is accessible by group or others (mode 0644); run chmod 600 {0}",
                open.display()
            )
        );
        let group = write(dir.path(), "group.private", &party.key_store_pem(), 0o640);
        assert!(message(load_key_store(&group, "").unwrap_err()).contains("mode 0640"));

        let no_key = write(dir.path(), "nokey.private", &party.cert_pem, 0o600);
        let e = message(load_key_store(&no_key, "").unwrap_err());
        assert!(e.contains("nokey.private") && e.contains("no private key found"), "{e}");

        let no_cert = write(dir.path(), "nocert.private", &party.key_pem, 0o600);
        let e = message(load_key_store(&no_cert, "").unwrap_err());
        assert!(e.contains("no certificate found"), "{e}");

        let other = pinned("guest1");
        let two = format!("{}{}", other.key_pem, party.key_store_pem());
        let two = write(dir.path(), "two.private", &two, 0o600);
        assert!(message(load_key_store(&two, "").unwrap_err()).contains("holds 2 private keys"));

        let empty = write(dir.path(), "empty.private", "", 0o600);
        assert!(message(load_key_store(&empty, "").unwrap_err()).contains("no private key found"));
    }

    #[test]
    fn key_certificate_mismatch_is_reported() {
        let a = pinned("guest1");
        let b = pinned("guest2");
        let pem = format!("{}{}", a.key_pem, b.cert_pem);
        let e = parse_key_store(pem.as_bytes(), "").unwrap_err();
        assert!(e.contains("does not match the certificate (CN=guest2)"), "{e}");
    }

    #[test]
    fn key_store_chain_order_is_forgiven() {
        let ca = TestCa::new("test CA");
        let leaf = ca.issue("guest1", Eku::ServerAuth);
        // CA certificate first, then the leaf, then the key.
        let pem = format!("{}{}{}", ca.cert_pem, leaf.cert_pem, leaf.key_pem);
        let m = parse_key_store(pem.as_bytes(), "").unwrap();
        assert_eq!(m.certs.len(), 2);
        assert_eq!(certificate_name(&m.certs[0]).as_deref(), Some("guest1"));
    }

    #[test]
    fn encrypted_pkcs8_key_needs_the_right_password() {
        let dir = tempfile::tempdir().unwrap();
        let party = pinned("guest1");
        let pem = format!("{}{}", encrypt(&party.key_pem, "secret"), party.chain_pem);
        let path = write(dir.path(), "enc.private", &pem, 0o600);
        let m = load_key_store(&path, "secret").unwrap();
        assert!(matches!(m.key, PrivateKeyDer::Pkcs8(_)));
        let e = message(load_key_store(&path, "wrong").unwrap_err());
        assert!(e.contains("enc.private") && e.contains("wrong password"), "{e}");
        let e = message(load_key_store(&path, "").unwrap_err());
        assert!(e.contains("no password was given"), "{e}");
        // The decrypted key really is the certificate's: it handshakes.
        let client = pinned("host1");
        let _ = server_config(m, client.trust()).unwrap();
    }

    #[test]
    fn legacy_encrypted_key_is_explained() {
        let pem = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let e = parse_key_store(pem.as_bytes(), "x").unwrap_err();
        assert!(e.contains("legacy OpenSSL format"), "{e}");
    }

    fn openssl(args: &[&str]) -> Option<()> {
        match Command::new("openssl").args(args).output() {
            Ok(out) if out.status.success() => Some(()),
            Ok(out) => panic!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(_) => None,
        }
    }

    /// Key formats as the openssl command writes them (skipped without openssl).
    #[test]
    fn openssl_key_formats_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        // PBES2 with AES-256-CBC from genpkey, and a -topk8 -v2 re-encryption.
        if openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-aes256",
            "-pass",
            "pass:secret",
            "-out",
            &p("gen.key"),
        ])
        .is_none()
        {
            eprintln!("openssl not found; skipping");
            return;
        }
        openssl(&[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            &p("sec1.key"),
        ])
        .unwrap();
        openssl(&[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            &p("sec1.key"),
            "-passout",
            "pass:secret",
            "-out",
            &p("topk8.key"),
        ])
        .unwrap();
        openssl(&["genrsa", "-traditional", "-out", &p("rsa.key"), "2048"]).unwrap();
        // PBKDF2 with HMAC-SHA1 (OpenSSL 1.0's default) is refused, clearly.
        openssl(&[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-v2prf",
            "hmacWithSHA1",
            "-in",
            &p("sec1.key"),
            "-passout",
            "pass:secret",
            "-out",
            &p("sha1.key"),
        ])
        .unwrap();
        let e = parse_key_store(&std::fs::read(p("sha1.key")).unwrap(), "secret").unwrap_err();
        eprintln!("{e}");
        assert!(e.contains("encryption is not supported"), "{e}");
        for (key, pass) in [
            ("gen.key", "secret"),
            ("sec1.key", ""),
            ("topk8.key", "secret"),
            ("rsa.key", ""),
        ] {
            let cert = format!("{key}.crt");
            openssl(&[
                "req",
                "-new",
                "-x509",
                "-key",
                &p(key),
                "-passin",
                &format!("pass:{pass}"),
                "-subj",
                "/CN=guest1",
                "-days",
                "2",
                "-out",
                &p(&cert),
            ])
            .unwrap();
            let pem = std::fs::read_to_string(p(key)).unwrap() + &std::fs::read_to_string(p(&cert)).unwrap();
            let store = write(dir.path(), &format!("{key}.private"), &pem, 0o600);
            let m = load_key_store(&store, pass).unwrap_or_else(|e| panic!("{key}: {e}"));
            if !pass.is_empty() {
                let e = message(load_key_store(&store, "nope").unwrap_err());
                assert!(e.contains("wrong password"), "{key}: {e}");
            }
            // openssl's self-signed certificates say CA:TRUE: pinned anyway.
            let trust = load_trust_store(&dir.path().join(&cert)).unwrap();
            let client = pinned("host1");
            server_config(m, client.trust()).unwrap();
            client_config(client.material(), trust).unwrap();
        }
    }

    #[test]
    fn trust_store_classifies_and_names_the_file_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test CA");
        let leaf = ca.issue("guest1", Eku::ServerAuth);
        let peer = pinned("host1");
        let pem = format!("{}{}{}", ca.cert_pem, leaf.cert_pem, peer.cert_pem);
        let path = write(dir.path(), "trust.public", &pem, 0o644);
        let t = load_trust_store(&path).unwrap();
        assert_eq!((t.cas.len(), t.pinned.len()), (1, 2));

        let empty = write(dir.path(), "empty.public", "", 0o644);
        let e = message(load_trust_store(&empty).unwrap_err());
        assert!(e.contains("empty.public") && e.contains("no certificate found"), "{e}");

        let missing = dir.path().join("missing.public");
        let e = message(load_trust_store(&missing).unwrap_err());
        assert!(e.contains("missing.public") && e.contains("does not exist"), "{e}");

        let private = write(dir.path(), "oops.public", &peer.key_store_pem(), 0o600);
        let e = message(load_trust_store(&private).unwrap_err());
        assert!(e.contains("holds a private key"), "{e}");

        let garbage = write(
            dir.path(),
            "garbage.public",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            0o644,
        );
        let e = message(load_trust_store(&garbage).unwrap_err());
        assert!(e.contains("not a valid X.509 certificate"), "{e}");
    }

    #[test]
    fn empty_trust_store_makes_no_config() {
        let party = pinned("guest1");
        assert!(server_config(party.material(), TrustStore::default()).is_err());
        assert!(client_config(party.material(), TrustStore::default()).is_err());
    }

    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }
}
