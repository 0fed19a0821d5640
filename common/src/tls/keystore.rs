//! The `keyStore` file: one private key and its certificate chain.

use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer, UnixTime,
};
use std::path::Path;

use super::files::{check_key_file_mode, file_error, read_file};
use super::verify::check_validity;
use super::{provider, subject_of, KeyMaterial, TlsError};

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

pub(super) fn parse_key_store(pem: &[u8], password: &str) -> Result<KeyMaterial, String> {
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
