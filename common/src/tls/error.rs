//! Why the content of a key store or trust store cannot be used.
//!
//! [`StoreError`] is what the parsers (`java`, `keystore`, `truststore`)
//! return; the loaders put the file's path around it
//! ([`TlsError::Store`](super::TlsError::Store)). Each variant keeps what was
//! found (a count, an index, a version, the library's own error as the
//! source) and says in its message what to do about it.

/// The password a message names: `keyStorePassword` or `trustStorePassword`.
pub(super) type PasswordName = &'static str;

/// What is wrong with a store's content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "is a JCEKS key store, which is not supported; convert it with \
         `keytool -importkeystore -srckeystore FILE -destkeystore NEW -deststoretype pkcs12`"
    )]
    Jceks,
    /// The store's integrity check failed, and no password was given.
    #[error("cannot open the store: it needs a password and none was given ({which})")]
    NoPassword { which: PasswordName },
    /// The store's integrity check failed with the password given.
    #[error("cannot open the store: wrong password ({which}), or the file is damaged")]
    WrongPassword { which: PasswordName },
    #[error("the PKCS#12 store uses an algorithm that is not supported ({source})")]
    Pkcs12Algorithm {
        #[source]
        source: p12_keystore::error::Error,
    },
    /// Neither PEM, JKS nor a DER certificate, and no PKCS#12 either.
    #[error("not a key store: neither PEM, PKCS#12 nor JKS (as PKCS#12: {source})")]
    NotAStore {
        #[source]
        source: p12_keystore::error::Error,
    },
    #[error("cannot read the PKCS#12 store: {source}")]
    Pkcs12 {
        #[source]
        source: p12_keystore::error::Error,
    },
    #[error("the JKS store is truncated")]
    JksTruncated,
    /// A length or count inside the JKS store runs past its end.
    #[error("the JKS store is truncated or damaged")]
    JksShort,
    #[error("the JKS store is damaged")]
    JksDamaged,
    #[error("the JKS store holds a {kind:?} certificate; only X.509 is supported")]
    JksCertificateType { kind: String },
    #[error("the JKS store has an unknown version ({version})")]
    JksVersion { version: u32 },
    #[error("the JKS store holds an entry of unknown type {tag}")]
    JksEntryType { tag: u32 },
    #[error("the JKS store has trailing data")]
    JksTrailingData,
    #[error("the JKS store's private key entry is damaged")]
    JksKeyDamaged,
    #[error(
        "the JKS store's private key is protected by an unsupported algorithm ({})",
        oid.as_deref().unwrap_or("unknown")
    )]
    JksKeyAlgorithm { oid: Option<String> },
    /// The store's digest matched, so the key's own password differs.
    #[error(
        "the store opened with {which}, but its private key has another password (keytool -keypass); \
         make them equal with `keytool -keypasswd -alias ALIAS -keystore FILE`"
    )]
    JksKeyPassword { which: PasswordName },
    #[error(
        "holds a single certificate (as `keytool -export` writes it), not a key store; \
         keyStore names the .private file"
    )]
    SingleCertificate,
    #[error("the ENCRYPTED PRIVATE KEY section has no end line")]
    EncryptedKeyUnterminated,
    #[error("the ENCRYPTED PRIVATE KEY section is not valid PEM: {source}")]
    EncryptedKeyPem {
        #[source]
        source: pkcs8::der::pem::Error,
    },
    #[error("the ENCRYPTED PRIVATE KEY is malformed: {source}")]
    EncryptedKeyMalformed {
        #[source]
        source: pkcs8::Error,
    },
    #[error(
        "the private key's encryption is not supported: {source} (supported: PKCS#8 PBES2 with \
         PBKDF2-HMAC-SHA256 or scrypt and AES-CBC, as written by `openssl pkcs8 -topk8 -v2 aes-256-cbc`)"
    )]
    KeyEncryption {
        #[source]
        source: pkcs8::Error,
    },
    #[error("the private key is encrypted but no password was given (keyStorePassword)")]
    KeyNoPassword,
    #[error("cannot decrypt the private key: wrong password (keyStorePassword)")]
    KeyWrongPassword,
    #[error(
        "the private key is encrypted in the legacy OpenSSL format, which is not supported; \
         convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc` and keep the certificates after it"
    )]
    LegacyEncryptedKey,
    #[error("not a valid PEM file: {source}")]
    Pem {
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "no private key found (expected a PRIVATE KEY, ENCRYPTED PRIVATE KEY, \
         EC PRIVATE KEY or RSA PRIVATE KEY section)"
    )]
    NoKeyInPem,
    /// A PKCS#12 or JKS key store with certificates only.
    #[error(
        "no private key found in this {format} store: it holds only certificates \
         (is it the .public file? keyStore names the .private file)"
    )]
    NoKey { format: &'static str },
    #[error("holds {count} private keys; a key store holds exactly one")]
    ManyKeys { count: usize },
    #[error("no certificate found; a key store holds the private key and its certificate (chain)")]
    NoCertificate,
    /// Certificate number `number` (from 1) of the file.
    #[error("certificate #{number} is not a valid X.509 certificate: {source}")]
    Certificate {
        number: usize,
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error(
        "the private key is a DSA key (the old keytool default), which TLS 1.3 cannot use; \
         make a new key with `cmappmgr keygen` (host) or `cmappserver keygen` (guest), \
         or with keytool adding `-keyalg EC`, and distribute its certificate again"
    )]
    DsaKey,
    #[error(
        "the private key cannot be used: {source} (TLS 1.3 here takes RSA, ECDSA P-256 or P-384, or Ed25519 keys)"
    )]
    UnusableKey {
        #[source]
        source: rustls::Error,
    },
    #[error("cannot compare the private key with the certificate: {source}")]
    CompareKey {
        #[source]
        source: rustls::Error,
    },
    /// `subject`: the first certificate's.
    #[error("the private key does not match the certificate ({subject}) nor any other certificate in the file")]
    KeyMismatch { subject: String },
    #[error(
        "holds a private key: a trust store holds only certificates (the peer's .public file, \
         never a .private file)"
    )]
    KeyInTrustStore,
    #[error("CA certificate #{number} ({subject}) cannot be a trust anchor: {source}")]
    TrustAnchor {
        number: usize,
        subject: String,
        #[source]
        source: rustls::Error,
    },
    #[error("no certificate found (expected the peer's certificate or a CA certificate)")]
    NoTrustedCertificate,
}

impl StoreError {
    /// The store's own password did not open it (`which` names the setting).
    pub(super) fn password(password: &str, which: PasswordName) -> StoreError {
        if password.is_empty() {
            StoreError::NoPassword { which }
        } else {
            StoreError::WrongPassword { which }
        }
    }
}
