//! Key and certificate generation: the `keygen` subcommand of both binaries.
//!
//! The original product had administrators make key pairs with Java's
//! `keytool`. This crate replaces those steps. Two ways to set up trust:
//!
//! * **pinned** (the original's way): each machine makes a self-signed
//!   certificate ([`self_signed`]); its public half is copied into the trust
//!   store of every machine that must accept it.
//! * **CA**: one certificate authority ([`new_ca`]) signs a certificate for
//!   every machine ([`issue`]); every trust store holds just the CA
//!   certificate, and the manager also checks the guest's name.
//!
//! | module  | what it holds                                                       |
//! |---------|---------------------------------------------------------------------|
//! | here    | making keys and certificates in PEM, writing them with safe modes   |
//! | [`cli`] | the `keygen` command line and what it tells the user                |
//!
//! Every function here touches only the paths it is given, so tests can make
//! throwaway key material in a temporary directory. Files are read back with
//! [`common::tls::load_key_store`] and [`common::tls::load_trust_store`].
#![deny(rust_2018_idioms)]

pub mod cli;

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use time::{Duration, OffsetDateTime};

pub use cli::{run, KeygenArgs, KeygenCommand, Side};

/// How long generated certificates are valid: from a day ago (some slack for
/// clocks that differ) to about ten years from now.
const VALID_BEFORE_NOW: Duration = Duration::days(1);
const VALID_AFTER_NOW: Duration = Duration::days(3653);

/// What can go wrong making, reading or writing key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The output file exists and `--force` was not given.
    #[error("{} exists; use --force to overwrite", path.display())]
    Exists { path: PathBuf },
    /// A file or directory could not be created, written or read.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// A name cannot go into a certificate.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// No name was given and none could be found.
    #[error("no name for the certificate; give one with --name")]
    NoName,
    /// The CA certificate file is unusable.
    #[error("{}: {source}", path.display())]
    BadCaCertificate {
        path: PathBuf,
        #[source]
        source: CaCertificateError,
    },
    /// The CA key file is unusable.
    #[error("{}: {message}", path.display())]
    BadCa { path: PathBuf, message: String },
    /// The key of a file to renew is unusable.
    #[error("{message}")]
    BadKey { message: String },
    /// rcgen failed (should not happen with valid input).
    #[error("{what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// Why the first certificate of a CA certificate file cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum CaCertificateError {
    #[error("no certificate found")]
    NoCertificate,
    #[error("not a valid PEM file: {source}")]
    Pem {
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("not a valid X.509 certificate: {source}")]
    X509 {
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error("{subject} is not a CA certificate (it lacks basicConstraints CA:TRUE)")]
    NotCa { subject: String },
}

fn generate_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Generate { what, source }
}

/// A private key with its certificate, and the certificate alone.
#[derive(Clone)]
pub struct Pem {
    /// Key, then certificate (chain): the `keyStore` file (`*.private`).
    pub private_pem: String,
    /// The certificate alone: what the peer's `trustStore` holds (`*.public`).
    pub public_pem: String,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem")
            .field("private_pem", &"<redacted>")
            .field("public_pem", &self.public_pem)
            .finish()
    }
}

/// Which end of the connection a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `cmappserver` in a guest: the TLS server.
    Server,
    /// `cmappmgr` on a host: the TLS client.
    Client,
}

impl Role {
    fn unit(self) -> &'static str {
        match self {
            Role::Server => "cmappserver",
            Role::Client => "cmappmgr",
        }
    }
}

/// A certificate authority: its certificate and its private key, in PEM.
#[derive(Clone)]
pub struct Ca {
    /// The CA certificate (`ca.public`): the trust store of CA mode.
    pub cert_pem: String,
    /// The CA's PKCS#8 private key (`ca.private`).
    pub key_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn new_key() -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate_error("generating an ECDSA P-256 key"))
}

/// Checks a name and turns it into a subject alternative name: an IP address
/// if it parses as one, else a DNS name.
fn subject_alt_name(name: &str) -> Result<SanType, CertError> {
    let invalid = |reason: &str| CertError::InvalidName {
        name: name.into(),
        reason: reason.into(),
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    rustls_pki_types::DnsName::try_from(name).map_err(|_| invalid("not a valid host name or IP address"))?;
    let ia5 = name
        .try_into()
        .map_err(|_| invalid("not a valid host name or IP address"))?;
    Ok(SanType::DnsName(ia5))
}

fn distinguished_name(common_name: &str, unit: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "cmapp");
    if let Some(unit) = unit {
        dn.push(DnType::OrganizationalUnitName, unit);
    }
    dn
}

fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - VALID_BEFORE_NOW;
    params.not_after = now + VALID_AFTER_NOW;
}

/// The parameters every end-entity certificate shares: names, validity, not a CA.
fn leaf_params(role: Role, names: &[String]) -> Result<CertificateParams, CertError> {
    let first = names.first().ok_or(CertError::NoName)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = names.iter().map(|n| subject_alt_name(n)).collect::<Result<_, _>>()?;
    params.distinguished_name = distinguished_name(first, Some(role.unit()));
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params);
    Ok(params)
}

/// A self-signed certificate for pinned mode.
///
/// The first name is the subject CN; every name is also a subject
/// alternative name. The certificate is not a CA and carries both the
/// serverAuth and clientAuth extended key usages, so tools that check
/// purposes accept it on either end.
pub fn self_signed(role: Role, names: &[String]) -> Result<Pem, CertError> {
    self_signed_with(new_key()?, role, names)
}

fn self_signed_with(key: KeyPair, role: Role, names: &[String]) -> Result<Pem, CertError> {
    let mut params = leaf_params(role, names)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .self_signed(&key)
        .map_err(generate_error("signing the certificate"))?;
    Ok(Pem {
        private_pem: format!("{}{}", key.serialize_pem(), cert.pem()),
        public_pem: cert.pem(),
    })
}

/// A new certificate authority named `common_name`.
pub fn new_ca(common_name: &str) -> Result<Ca, CertError> {
    if common_name.trim().is_empty() {
        return Err(CertError::InvalidName {
            name: common_name.into(),
            reason: "the CA name is empty".into(),
        });
    }
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name, None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params);
    let cert = params
        .self_signed(&key)
        .map_err(generate_error("signing the CA certificate"))?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The `-----BEGIN CERTIFICATE-----` blocks of a PEM text, verbatim.
fn certificate_blocks(text: &str) -> String {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push_str(&rest[start..end]);
        out.push('\n');
        rest = &rest[end..];
    }
    out
}

/// The first certificate of a PEM text, if it is a CA: its DER, or why not.
fn first_ca_certificate(text: &str) -> Result<Vec<u8>, CaCertificateError> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(text.as_bytes())
        .next()
        .ok_or(CaCertificateError::NoCertificate)?
        .map_err(|source| CaCertificateError::Pem { source })?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|source| CaCertificateError::X509 { source })?;
    if !x509.is_ca() {
        return Err(CaCertificateError::NotCa {
            subject: x509.subject().to_string(),
        });
    }
    Ok(der.to_vec())
}

/// Reads a CA made by [`new_ca`] (or any CA with a PKCS#8 key) back from its
/// files: `ca.public` and `ca.private`.
///
/// The key file must be readable by its owner only, and the key must be the
/// certificate's.
pub fn load_ca(cert_path: &Path, key_path: &Path) -> Result<Ca, CertError> {
    let bad = |path: &Path, message: String| CertError::BadCa {
        path: path.into(),
        message,
    };
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| CertError::Io {
            path: path.into(),
            action: "read",
            source,
        })
    };

    let cert_text = read(cert_path)?;
    let ca_der = first_ca_certificate(&cert_text).map_err(|source| CertError::BadCaCertificate {
        path: cert_path.into(),
        source,
    })?;

    let key_pem = common::tls::read_key_file(key_path).map_err(|e| match e {
        common::tls::TlsError::File { message, .. } => bad(key_path, message),
        other => bad(key_path, other.to_string()),
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        let message = if key_pem.contains("ENCRYPTED") {
            "the CA key is encrypted; decrypt it with `openssl pkcs8 -in ca.private -out ca.key` first".to_string()
        } else if key_pem.contains("EC PRIVATE KEY") || key_pem.contains("RSA PRIVATE KEY") {
            "the CA key must be PKCS#8 (\"PRIVATE KEY\"); convert it with \
             `openssl pkcs8 -topk8 -nocrypt -in OLD -out ca.private`"
                .to_string()
        } else {
            format!("not a usable PKCS#8 private key: {e}")
        };
        bad(key_path, message)
    })?;

    let (_, x509) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| bad(cert_path, e.to_string()))?;
    if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(bad(
            key_path,
            format!("this key does not belong to the CA certificate {}", cert_path.display()),
        ));
    }
    Ok(Ca {
        cert_pem: certificate_blocks(&cert_text),
        key_pem,
    })
}

/// Signs a certificate for `role` with `ca`.
///
/// The first name is the subject CN, every name a subject alternative name
/// (the manager checks the guest's name in CA mode). The certificate is not
/// a CA and carries serverAuth (for [`Role::Server`]) or clientAuth (for
/// [`Role::Client`]). `private_pem` holds the key, the certificate and the CA
/// certificate; the peers' trust store is `ca.cert_pem`.
pub fn issue(ca: &Ca, role: Role, names: &[String]) -> Result<Pem, CertError> {
    issue_with(ca, role, names, None, new_key()?)
}

/// [`issue`], valid for `days` days from now only (a short-lived
/// certificate, or one made to expire soon in a test).
pub fn issue_valid_for(ca: &Ca, role: Role, names: &[String], days: u32) -> Result<Pem, CertError> {
    issue_with(ca, role, names, Some(days), new_key()?)
}

/// A new certificate for the key of an existing `*.private` file made by
/// `keygen` (the key is kept; peers that pin the old certificate must be
/// given the new one): signed by `ca`, or self-signed without one. `names`
/// empty: the old certificate's names (its CN first, then its DNS and IP
/// subject alternative names).
pub fn renew(private_pem: &str, role: Role, names: &[String], ca: Option<&Ca>) -> Result<Pem, CertError> {
    let block = |kind: &str| {
        let begin = format!("-----BEGIN {kind}-----");
        let end = format!("-----END {kind}-----");
        let start = private_pem.find(&begin)?;
        let stop = private_pem[start..].find(&end)? + start + end.len();
        Some(private_pem[start..stop].to_string())
    };
    let key_pem = block("PRIVATE KEY").ok_or_else(|| CertError::BadKey {
        message:
            "no unencrypted PKCS#8 private key (\"BEGIN PRIVATE KEY\") in the file: renew works on files made by keygen"
                .into(),
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::BadKey {
        message: format!("not a usable private key: {e}"),
    })?;
    let names = if names.is_empty() {
        old_names(&block("CERTIFICATE").unwrap_or_default())
    } else {
        names.to_vec()
    };
    match ca {
        Some(ca) => issue_with(ca, role, &names, None, key),
        None => self_signed_with(key, role, &names),
    }
}

/// The names of a certificate (PEM): its CN, then its DNS and IP SANs.
fn old_names(cert_pem: &str) -> Vec<String> {
    use rustls_pki_types::pem::PemObject;
    match rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() {
        Some(Ok(der)) => common::tls::certificate_names(&der, false),
        _ => Vec::new(),
    }
}

fn issue_with(ca: &Ca, role: Role, names: &[String], days: Option<u32>, key: KeyPair) -> Result<Pem, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(generate_error("reading the CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(generate_error("reading the CA certificate"))?;
    let mut params = leaf_params(role, names)?;
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    if let Some(days) = days {
        params.not_after = OffsetDateTime::now_utc() + Duration::days(i64::from(days));
    }
    // A certificate cannot usefully outlive its CA.
    if let Ok(der) = first_ca_certificate(&ca.cert_pem) {
        if let Ok((_, x509)) = x509_parser::parse_x509_certificate(&der) {
            if let Ok(ca_end) = OffsetDateTime::from_unix_timestamp(x509.validity().not_after.timestamp()) {
                params.not_after = params.not_after.min(ca_end);
            }
        }
    }
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generate_error("signing the certificate"))?;
    Ok(Pem {
        private_pem: format!(
            "{}{}{}",
            key.serialize_pem(),
            cert.pem(),
            certificate_blocks(&ca.cert_pem)
        ),
        public_pem: cert.pem(),
    })
}

/// Writes a private file: mode 0600 from its creation on. An existing file
/// is replaced only with `force` (atomically, through a temporary file).
pub fn write_private(path: &Path, contents: &str, force: bool) -> Result<(), CertError> {
    write_file(path, contents, force, 0o600)
}

/// Writes a public file (a certificate) with mode 0644. An existing file is
/// replaced only with `force`.
pub fn write_public(path: &Path, contents: &str, force: bool) -> Result<(), CertError> {
    write_file(path, contents, force, 0o644)
}

/// Creates `path` (which must not exist) with exactly `mode` and `contents`.
fn create_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io_error = |action: &'static str| {
        move |source| CertError::Io {
            path: path.into(),
            action,
            source,
        }
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                CertError::Exists { path: path.into() }
            } else {
                io_error("create the file")(e)
            }
        })?;
    let written = (|| {
        // The umask may have taken bits away; the mode must be exact.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set the file's mode"))?;
        file.write_all(contents.as_bytes()).map_err(io_error("write"))?;
        file.sync_all().map_err(io_error("write"))
    })();
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

fn write_file(path: &Path, contents: &str, force: bool, mode: u32) -> Result<(), CertError> {
    if !force {
        return create_new(path, contents, mode);
    }
    let file_name = path.file_name().ok_or_else(|| CertError::Io {
        path: path.into(),
        action: "write",
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let _ = fs::remove_file(&temp);
    create_new(&temp, contents, mode)?;
    fs::rename(&temp, path).map_err(|source| {
        let _ = fs::remove_file(&temp);
        CertError::Io {
            path: path.into(),
            action: "replace the file",
            source,
        }
    })
}

#[cfg(test)]
mod tests;
