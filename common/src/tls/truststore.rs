//! The `trustStore` file: the certificates a peer is trusted by.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::CertificateDer;

use super::error::StoreError;
use super::files::{check_trust_file_mode, read_file};
use super::java::{self, Format, PasswordName};
use super::{subject_of, TlsError, TrustStore};

/// Loads a `trustStore` file: PEM certificates, a PKCS#12 or JKS trust store
/// as keytool writes them (opened with `password`, the `trustStorePassword`),
/// or one DER certificate as `keytool -export` writes it.
pub fn load_trust_store(path: &Path, password: &str) -> Result<TrustStore, TlsError> {
    check_trust_file_mode(path)?;
    let file = read_file(path, "trust store")?;
    parse_trust_store(&file.bytes, password).map_err(|source| TlsError::store(path, source))
}

pub(super) fn parse_trust_store(data: &[u8], password: &str) -> Result<TrustStore, StoreError> {
    const WHICH: PasswordName = "trustStorePassword";
    let certs = match java::detect(data)? {
        Format::Pem => pem_certificates(data)?,
        Format::DerCertificate => vec![CertificateDer::from(data.to_vec())],
        Format::Pkcs12 => java_certificates(java::read_pkcs12(data, password, WHICH)?)?,
        Format::Jks => java_certificates(java::read_jks(data, password, WHICH, false)?)?,
    };
    let mut store = TrustStore::default();
    for (i, der) in certs.into_iter().enumerate() {
        let number = i + 1;
        let is_ca = match x509_parser::parse_x509_certificate(&der) {
            Ok((_, x509)) => x509.is_ca(),
            Err(source) => return Err(StoreError::Certificate { number, source }),
        };
        if is_ca {
            RootCertStore::empty()
                .add(der.clone())
                .map_err(|source| StoreError::TrustAnchor {
                    number,
                    subject: subject_of(&der),
                    source,
                })?;
            store.cas.push(der);
        } else {
            store.pinned.push(der);
        }
    }
    if store.is_empty() {
        return Err(StoreError::NoTrustedCertificate);
    }
    Ok(store)
}

fn java_certificates(contents: java::Contents) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    if contents.key_entries > 0 {
        return Err(StoreError::KeyInTrustStore);
    }
    Ok(contents.certs)
}

fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    if String::from_utf8_lossy(pem).contains("PRIVATE KEY-----") {
        return Err(StoreError::KeyInTrustStore);
    }
    let mut certs = Vec::new();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|source| StoreError::Pem { source })?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey => {
                return Err(StoreError::KeyInTrustStore)
            }
            _ => {}
        }
    }
    Ok(certs)
}
