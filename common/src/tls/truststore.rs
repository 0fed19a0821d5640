//! The `trustStore` file: the certificates a peer is trusted by.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::CertificateDer;

use super::files::{check_trust_file_mode, file_error, read_file};
use super::java::{self, Format, PasswordName};
use super::{subject_of, TlsError, TrustStore};

/// Loads a `trustStore` file: PEM certificates, a PKCS#12 or JKS trust store
/// as keytool writes them (opened with `password`, the `trustStorePassword`),
/// or one DER certificate as `keytool -export` writes it.
pub fn load_trust_store(path: &Path, password: &str) -> Result<TrustStore, TlsError> {
    check_trust_file_mode(path)?;
    let file = read_file(path, "trust store")?;
    parse_trust_store(&file.bytes, password).map_err(|message| file_error(path, message))
}

fn private_key() -> String {
    "holds a private key: a trust store holds only certificates (the peer's .public file, \
     never a .private file)"
        .to_string()
}

pub(super) fn parse_trust_store(data: &[u8], password: &str) -> Result<TrustStore, String> {
    const WHICH: PasswordName = PasswordName("trustStorePassword");
    let certs = match java::detect(data)? {
        Format::Pem => pem_certificates(data)?,
        Format::DerCertificate => vec![CertificateDer::from(data.to_vec())],
        Format::Pkcs12 => java_certificates(java::read_pkcs12(data, password, WHICH)?)?,
        Format::Jks => java_certificates(java::read_jks(data, password, WHICH, false)?)?,
    };
    let mut store = TrustStore::default();
    for (i, der) in certs.into_iter().enumerate() {
        let n = i + 1;
        let is_ca = match x509_parser::parse_x509_certificate(&der) {
            Ok((_, x509)) => x509.is_ca(),
            Err(e) => return Err(format!("certificate #{n} is not a valid X.509 certificate: {e}")),
        };
        if is_ca {
            RootCertStore::empty().add(der.clone()).map_err(|e| {
                format!(
                    "CA certificate #{n} ({}) cannot be a trust anchor: {e}",
                    subject_of(&der)
                )
            })?;
            store.cas.push(der);
        } else {
            store.pinned.push(der);
        }
    }
    if store.is_empty() {
        return Err("no certificate found (expected the peer's certificate or a CA certificate)".into());
    }
    Ok(store)
}

fn java_certificates(contents: java::Contents) -> Result<Vec<CertificateDer<'static>>, String> {
    if contents.key_entries > 0 {
        return Err(private_key());
    }
    Ok(contents.certs)
}

fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    if String::from_utf8_lossy(pem).contains("PRIVATE KEY-----") {
        return Err(private_key());
    }
    let mut certs = Vec::new();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|e| format!("not a valid PEM file: {e}"))?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey => {
                return Err(private_key())
            }
            _ => {}
        }
    }
    Ok(certs)
}
