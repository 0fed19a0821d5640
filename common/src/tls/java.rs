//! Java key stores as keytool writes them: PKCS#12 (keytool's default since
//! Java 9) and JKS (`-storetype JKS`, the original's JREs).
//!
//! Both are opened with a password (`keyStorePassword` or
//! `trustStorePassword`); what comes out is DER: PKCS#8 private keys and
//! X.509 certificates, which the key and trust store code then check exactly
//! as it checks PEM files.

use ring::digest;
use rustls_pki_types::CertificateDer;

pub(super) use super::error::PasswordName;
use super::error::StoreError;

/// What a store file is, judged by its content (never by its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Pem,
    Pkcs12,
    Jks,
    /// A single DER certificate, as `keytool -export` writes it (`temp.key`).
    DerCertificate,
}

const JKS_MAGIC: u32 = 0xFEED_FEED;
const JCEKS_MAGIC: u32 = 0xCECE_CECE;

/// Tells the format from the first bytes; `Err` names a format we do not read.
pub(super) fn detect(data: &[u8]) -> Result<Format, StoreError> {
    match data.get(..4).map(|m| u32::from_be_bytes([m[0], m[1], m[2], m[3]])) {
        Some(JKS_MAGIC) => return Ok(Format::Jks),
        Some(JCEKS_MAGIC) => return Err(StoreError::Jceks),
        _ => {}
    }
    if data.first() == Some(&0x30) {
        // A DER SEQUENCE: a PKCS#12 file, or a bare certificate.
        if x509_parser::parse_x509_certificate(data).is_ok_and(|(rest, _)| rest.is_empty()) {
            return Ok(Format::DerCertificate);
        }
        return Ok(Format::Pkcs12);
    }
    Ok(Format::Pem)
}

impl Format {
    pub(super) fn name(self) -> &'static str {
        match self {
            Format::Pem => "PEM",
            Format::Pkcs12 => "PKCS#12",
            Format::Jks => "JKS",
            Format::DerCertificate => "DER certificate",
        }
    }
}

/// The keys and certificates of a Java key store.
#[derive(Debug, Default)]
pub(super) struct Contents {
    /// PKCS#8 DER private keys.
    pub(super) keys: Vec<Vec<u8>>,
    /// Every certificate: key entries' chains first (leaf first), then trusted entries.
    pub(super) certs: Vec<CertificateDer<'static>>,
    /// Number of private key entries seen (JKS trust stores are read without decrypting them).
    pub(super) key_entries: usize,
}

/// Opens a PKCS#12 file with `password`.
pub(super) fn read_pkcs12(data: &[u8], password: &str, which: PasswordName) -> Result<Contents, StoreError> {
    use p12_keystore::error::Error;
    let archive = p12_keystore::Pkcs12Archive::from_pkcs12(data, password).map_err(|source| match source {
        Error::MacError(_) | Error::UnpadError | Error::InvalidPrivateKey => StoreError::password(password, which),
        Error::UnsupportedEncryptionScheme | Error::UnsupportedMacAlgorithm | Error::UnsupportedContentType => {
            StoreError::Pkcs12Algorithm { source }
        }
        Error::InvalidVersion | Error::DerError(_) => StoreError::NotAStore { source },
        source => StoreError::Pkcs12 { source },
    })?;
    let key_entries = archive.keys.len();
    let keys = archive.keys.into_iter().map(|k| k.key.as_der().to_vec()).collect();
    let certs = archive
        .certs
        .into_iter()
        .map(|c| CertificateDer::from(c.cert.as_der().to_vec()))
        .collect();
    Ok(Contents {
        keys,
        certs,
        key_entries,
    })
}

/// A bounds-checked reader over a JKS file.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or(StoreError::JksShort)?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }
    fn u16(&mut self) -> Result<u16, StoreError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32_len(&mut self) -> Result<usize, StoreError> {
        usize::try_from(self.u32()?).map_err(|_| StoreError::JksDamaged)
    }
    /// Java's `DataInput.readUTF`: a 16-bit length, then (modified) UTF-8.
    fn utf(&mut self) -> Result<String, StoreError> {
        let n = usize::from(self.u16()?);
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn certificate(&mut self, version: u32) -> Result<CertificateDer<'static>, StoreError> {
        if version == 2 {
            let kind = self.utf()?;
            if kind != "X.509" {
                return Err(StoreError::JksCertificateType { kind });
            }
        }
        let n = self.u32_len()?;
        Ok(CertificateDer::from(self.take(n)?.to_vec()))
    }
}

/// The password as JKS hashes it: each UTF-16 code unit, big-endian.
fn jks_password(password: &str) -> Vec<u8> {
    password.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn sha1(parts: &[&[u8]]) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish()
}

/// Opens a JKS file with `password`, checking its integrity digest.
///
/// Private keys are decrypted with the same password (keytool's `-keypass`,
/// which the guide sets equal to `-storepass`) only when `decrypt_keys`.
pub(super) fn read_jks(
    data: &[u8],
    password: &str,
    which: PasswordName,
    decrypt_keys: bool,
) -> Result<Contents, StoreError> {
    const DIGEST_LEN: usize = 20;
    let body_len = data.len().checked_sub(DIGEST_LEN).ok_or(StoreError::JksTruncated)?;
    let (body, stored) = data.split_at(body_len);
    let pw = jks_password(password);
    // Sun's integrity check: SHA-1 over the password, a fixed phrase and the body.
    if sha1(&[&pw, b"Mighty Aphrodite", body]).as_ref() != stored {
        return Err(StoreError::password(password, which));
    }
    let mut c = Cursor { data: body, at: 0 };
    c.u32()?; // the magic, checked by `detect`
    let version = c.u32()?;
    if version != 1 && version != 2 {
        return Err(StoreError::JksVersion { version });
    }
    let count = c.u32()?;
    let mut contents = Contents::default();
    let mut trusted = Vec::new();
    for _ in 0..count {
        let tag = c.u32()?;
        let _alias = c.utf()?;
        c.take(8)?; // creation date
        match tag {
            1 => {
                contents.key_entries += 1;
                let n = c.u32_len()?;
                let protected = c.take(n)?;
                let chain_len = c.u32()?;
                for _ in 0..chain_len {
                    contents.certs.push(c.certificate(version)?);
                }
                if decrypt_keys {
                    contents.keys.push(jks_decrypt_key(protected, &pw, which)?);
                }
            }
            2 => trusted.push(c.certificate(version)?),
            tag => return Err(StoreError::JksEntryType { tag }),
        }
    }
    if c.at != body.len() {
        return Err(StoreError::JksTrailingData);
    }
    contents.certs.extend(trusted);
    Ok(contents)
}

/// The OID of Sun's JKS key protection, 1.3.6.1.4.1.42.2.17.1.1.
const JKS_KEY_PROTECTOR: &str = "1.3.6.1.4.1.42.2.17.1.1";

/// Undoes Sun's `KeyProtector`: an EncryptedPrivateKeyInfo whose data is
/// salt (20 bytes), the key XORed with a SHA-1 chain, and a SHA-1 check.
fn jks_decrypt_key(protected: &[u8], pw: &[u8], which: PasswordName) -> Result<Vec<u8>, StoreError> {
    use x509_parser::der_parser::ber::BerObjectContent;
    use x509_parser::der_parser::parse_der;
    let damaged = || StoreError::JksKeyDamaged;
    let (_, info) = parse_der(protected).map_err(|_| damaged())?;
    let BerObjectContent::Sequence(items) = &info.content else {
        return Err(damaged());
    };
    let [algorithm, data] = items.as_slice() else {
        return Err(damaged());
    };
    let oid = match &algorithm.content {
        BerObjectContent::Sequence(a) => a.first().and_then(|o| o.as_oid().ok()).map(|o| o.to_id_string()),
        _ => None,
    };
    if oid.as_deref() != Some(JKS_KEY_PROTECTOR) {
        return Err(StoreError::JksKeyAlgorithm { oid });
    }
    let data = data.as_slice().map_err(|_| damaged())?;
    const SALT: usize = 20;
    const CHECK: usize = 20;
    if data.len() < SALT + CHECK {
        return Err(damaged());
    }
    let (salt, rest) = data.split_at(SALT);
    let (encrypted, check) = rest.split_at(rest.len() - CHECK);
    let mut plain = Vec::with_capacity(encrypted.len());
    let mut block = sha1(&[pw, salt]);
    for chunk in encrypted.chunks(20) {
        plain.extend(chunk.iter().zip(block.as_ref()).map(|(a, b)| a ^ b));
        block = sha1(&[pw, block.as_ref()]);
    }
    if sha1(&[pw, &plain]).as_ref() != check {
        // The store's digest matched, so the key's own password differs.
        return Err(StoreError::JksKeyPassword { which });
    }
    Ok(plain)
}
