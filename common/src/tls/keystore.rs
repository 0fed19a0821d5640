//! The `keyStore` file: one private key and its certificate chain (PEM, PKCS#12 or JKS).

use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer, UnixTime,
};
use std::path::Path;

use super::error::StoreError;
use super::files::{key_store_mode, read_file};
use super::java::{self, Format, PasswordName};
use super::verify::check_validity;
use super::{provider, subject_of, KeyMaterial, TlsError};

/// Loads a `keyStore` file: one private key and its certificate chain.
///
/// The format is told by content: PEM (a `PRIVATE KEY`, `EC PRIVATE KEY`,
/// `RSA PRIVATE KEY` or `ENCRYPTED PRIVATE KEY` section and the certificates),
/// PKCS#12 or JKS as keytool writes them. `password` opens a PKCS#12 or JKS
/// store and decrypts an `ENCRYPTED PRIVATE KEY`; it is ignored for a plain
/// PEM key (the original's configuration always names one).
pub fn load_key_store(path: &Path, password: &str) -> Result<KeyMaterial, TlsError> {
    let file = read_file(path, "key store")?;
    let opened = open_key_store(&file.bytes, password).map_err(|source| TlsError::store(path, source))?;
    key_store_mode(path, file.mode, opened.encrypted)?;
    tracing::debug!("{}: {} key store", path.display(), opened.format.name());
    Ok(opened.material)
}

/// A key store's material, with what the mode policy needs to know.
#[derive(Debug)]
pub(super) struct Opened {
    pub(super) material: KeyMaterial,
    /// The private key is encrypted with the password.
    pub(super) encrypted: bool,
    pub(super) format: Format,
}

pub(super) fn open_key_store(data: &[u8], password: &str) -> Result<Opened, StoreError> {
    const WHICH: PasswordName = "keyStorePassword";
    let format = java::detect(data)?;
    let pkcs8 = |keys: Vec<Vec<u8>>| -> Vec<PrivateKeyDer<'static>> {
        keys.into_iter().map(|k| PrivatePkcs8KeyDer::from(k).into()).collect()
    };
    let (keys, certs, encrypted) = match format {
        Format::Pem => parse_pem(data, password)?,
        Format::Pkcs12 => {
            let c = java::read_pkcs12(data, password, WHICH)?;
            (pkcs8(c.keys), c.certs, !password.is_empty())
        }
        Format::Jks => {
            let c = java::read_jks(data, password, WHICH, true)?;
            (pkcs8(c.keys), c.certs, !password.is_empty())
        }
        Format::DerCertificate => return Err(StoreError::SingleCertificate),
    };
    let material = assemble(keys, certs, format)?;
    Ok(Opened {
        material,
        encrypted,
        format,
    })
}

/// The PEM sections rustls-pki-types does not know: PKCS#8 encrypted keys.
fn encrypted_key_sections(text: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    const BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
    const END: &str = "-----END ENCRYPTED PRIVATE KEY-----";
    let mut sections = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let section = &rest[start..];
        let Some(end) = section.find(END) else {
            return Err(StoreError::EncryptedKeyUnterminated);
        };
        let block = &section[..end + END.len()];
        let (_label, der) =
            pkcs8::der::pem::decode_vec(block.as_bytes()).map_err(|source| StoreError::EncryptedKeyPem { source })?;
        sections.push(der);
        rest = &section[end + END.len()..];
    }
    Ok(sections)
}

fn decrypt_pkcs8(der: &[u8], password: &str) -> Result<PrivatePkcs8KeyDer<'static>, StoreError> {
    use pkcs8::pkcs5;
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der).map_err(|source| match source {
        pkcs8::Error::EncryptedPrivateKey(_) => StoreError::KeyEncryption { source },
        _ => StoreError::EncryptedKeyMalformed { source },
    })?;
    let wrong = || {
        if password.is_empty() {
            StoreError::KeyNoPassword
        } else {
            StoreError::KeyWrongPassword
        }
    };
    // pkcs5 reports a bad padding (the usual sign of a wrong password)
    // as `EncryptFailed`, so both count.
    let doc = info.decrypt(password).map_err(|source| match source {
        pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::DecryptFailed | pkcs5::Error::EncryptFailed)
        | pkcs8::Error::Asn1(_) => wrong(),
        source => StoreError::KeyEncryption { source },
    })?;
    // A wrong password passes the padding check once in 256 tries: the
    // plaintext must also be a private key.
    pkcs8::PrivateKeyInfoRef::try_from(doc.as_bytes()).map_err(|_| wrong())?;
    Ok(PrivatePkcs8KeyDer::from(doc.as_bytes().to_vec()))
}

/// The material of a key store, or why it cannot be used.
#[cfg(test)]
pub(super) fn parse_key_store(data: &[u8], password: &str) -> Result<KeyMaterial, StoreError> {
    open_key_store(data, password).map(|o| o.material)
}

type Parts = (Vec<PrivateKeyDer<'static>>, Vec<CertificateDer<'static>>, bool);

/// The keys and certificates of a PEM key store, and whether a key was encrypted.
fn parse_pem(pem: &[u8], password: &str) -> Result<Parts, StoreError> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(StoreError::LegacyEncryptedKey);
    }
    let mut certs = Vec::new();
    let mut keys: Vec<PrivateKeyDer<'static>> = Vec::new();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|source| StoreError::Pem { source })?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => keys.push(PrivatePkcs8KeyDer::from(der).into()),
            SectionKind::EcPrivateKey => keys.push(PrivateSec1KeyDer::from(der).into()),
            SectionKind::RsaPrivateKey => keys.push(PrivatePkcs1KeyDer::from(der).into()),
            _ => {}
        }
    }
    let mut encrypted = false;
    for der in encrypted_key_sections(&text)? {
        keys.push(decrypt_pkcs8(&der, password)?.into());
        encrypted = true;
    }
    Ok((keys, certs, encrypted))
}

/// The one private key, checked against its certificate, which goes first.
fn assemble(
    mut keys: Vec<PrivateKeyDer<'static>>,
    mut certs: Vec<CertificateDer<'static>>,
    format: Format,
) -> Result<KeyMaterial, StoreError> {
    let key = match keys.len() {
        0 if format == Format::Pem => return Err(StoreError::NoKeyInPem),
        0 => return Err(StoreError::NoKey { format: format.name() }),
        1 => keys.remove(0),
        count => return Err(StoreError::ManyKeys { count }),
    };
    if certs.is_empty() {
        return Err(StoreError::NoCertificate);
    }
    for (i, cert) in certs.iter().enumerate() {
        if let Err(source) = x509_parser::parse_x509_certificate(cert) {
            return Err(StoreError::Certificate { number: i + 1, source });
        }
    }

    if is_dsa(&key) {
        return Err(StoreError::DsaKey);
    }
    // Re-encoding costs an elliptic-curve multiplication in pure Rust (about
    // half a millisecond, at every connection of a cmappmgr): only for keys
    // ring does not take as they are.
    let (key, signing_key) = match provider().key_provider.load_private_key(key.clone_key()) {
        Ok(signing_key) => (key, signing_key),
        Err(_) => {
            let key = with_ec_public_key(key);
            let signing_key = provider()
                .key_provider
                .load_private_key(key.clone_key())
                .map_err(|source| StoreError::UnusableKey { source })?;
            (key, signing_key)
        }
    };
    let matches = |cert: &CertificateDer<'static>| match CertifiedKey::new(vec![cert.clone()], signing_key.clone())
        .keys_match()
    {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(true),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Ok(false),
        Err(source) => Err(StoreError::CompareKey { source }),
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
                return Err(StoreError::KeyMismatch {
                    subject: subject_of(&certs[0]),
                })
            }
        }
    }
    warn_if_outside_validity(&certs[0]);
    Ok(KeyMaterial { certs, key })
}

/// Java writes EC private keys without their public key, which ring needs:
/// a P-256 or P-384 key is re-encoded with its public key, computed from the
/// private one. Any other key is returned as it is.
fn with_ec_public_key(key: PrivateKeyDer<'static>) -> PrivateKeyDer<'static> {
    use pkcs8::{DecodePrivateKey, EncodePrivateKey};
    let PrivateKeyDer::Pkcs8(der) = &key else {
        return key;
    };
    let der = der.secret_pkcs8_der();
    let reencoded = match p256::SecretKey::from_pkcs8_der(der) {
        Ok(k) => k.to_pkcs8_der().ok(),
        Err(_) => p384::SecretKey::from_pkcs8_der(der).and_then(|k| k.to_pkcs8_der()).ok(),
    };
    match reencoded {
        Some(doc) => PrivatePkcs8KeyDer::from(doc.as_bytes().to_vec()).into(),
        None => key,
    }
}

/// The OID of DSA keys, keytool's default algorithm before Java 17.
const DSA: &str = "1.2.840.10040.4.1";

/// A DSA key, which TLS 1.3 cannot use (and rustls would only call unusable).
fn is_dsa(key: &PrivateKeyDer<'_>) -> bool {
    let PrivateKeyDer::Pkcs8(der) = key else {
        return false;
    };
    pkcs8::PrivateKeyInfoRef::try_from(der.secret_pkcs8_der()).is_ok_and(|info| info.algorithm.oid.to_string() == DSA)
}

fn warn_if_outside_validity(cert: &CertificateDer<'_>) {
    if let Err(e) = check_validity(cert, UnixTime::now()) {
        tracing::warn!(
            "our own certificate ({}) will be refused by peers: {e}",
            subject_of(cert)
        );
    }
}
