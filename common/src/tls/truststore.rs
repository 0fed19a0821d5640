//! The `trustStore` file: the certificates a peer is trusted by.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::CertificateDer;

use super::files::{file_error, read_file};
use super::{subject_of, TlsError, TrustStore};

/// Loads a `trustStore` PEM file.
pub fn load_trust_store(path: &Path) -> Result<TrustStore, TlsError> {
    let pem = read_file(path, "trust store")?;
    parse_trust_store(&pem).map_err(|message| file_error(path, message))
}

pub(super) fn parse_trust_store(pem: &[u8]) -> Result<TrustStore, String> {
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
