//! Reading key and trust store files, and the policy on their modes.
//!
//! Every check of a file's permissions lives here, so the policy can be
//! read (and extended) in one place.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::TlsError;

pub(super) fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.into(),
        message: message.into(),
    }
}

/// Reads a plain (PEM) private key file, from one open file and at most
/// `MAX_STORE_SIZE` bytes, refusing it if group or others may read or
/// write it, as ssh does.
pub fn read_key_file(path: &Path) -> Result<String, TlsError> {
    let file = read_file(path, "key store")?;
    key_store_mode(path, file.mode, false)?;
    String::from_utf8(file.bytes).map_err(|_| file_error(path, "the key store is not PEM text"))
}

/// The mode policy for a key store file.
///
/// A plain private key that group or others may read or write is refused,
/// as ssh does. A private key encrypted with `keyStorePassword` (a PKCS#12 or
/// JKS store, or an `ENCRYPTED PRIVATE KEY`) readable by them is only warned
/// about: keytool writes its files 0644, and the original's guide never asks
/// for a chmod. Writable by group or others is refused in every case.
pub(super) fn key_store_mode(path: &Path, mode: u32, encrypted: bool) -> Result<(), TlsError> {
    let mode = mode & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if encrypted && mode & 0o022 != 0 {
        // Readable is tolerated for keytool's files; writable never is: whoever
        // can write it chooses the identity this side presents.
        let whom = if mode & 0o002 != 0 { "others" } else { "its group" };
        return Err(file_error(
            path,
            format!(
                "key store is writable by {whom} (mode {mode:04o}); run chmod 600 {}",
                path.display()
            ),
        ));
    }
    if encrypted {
        tracing::warn!(
            "{}: key store is accessible by group or others (mode {mode:04o}); its private key is \
             password-protected, so it is used, but run chmod 600 {}",
            path.display(),
            path.display()
        );
        return Ok(());
    }
    Err(file_error(
        path,
        format!(
            "private key is accessible by group or others (mode {mode:04o}); run chmod 600 {}",
            path.display()
        ),
    ))
}

/// Refuses a trust store file that group or others may write (reading it is
/// fine: it holds only certificates), as sshd's `StrictModes` does: whoever
/// can write it can add a certificate and be trusted.
pub fn check_trust_file_mode(path: &Path) -> Result<(), TlsError> {
    let meta = std::fs::metadata(path).map_err(|e| file_error(path, read_error("trust store", &e)))?;
    if let Some(crate::perms::Writable { by, mode, .. }) = crate::perms::writable_by_others(path, &meta, false) {
        return Err(file_error(
            path,
            format!(
                "trust store is writable by {by} (mode {mode:04o}), who could make any certificate trusted; run chmod go-w {}",
                path.display()
            ),
        ));
    }
    Ok(())
}

pub(super) fn read_error(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!("{what} file does not exist"),
        io::ErrorKind::PermissionDenied => format!("cannot read the {what}: permission denied"),
        _ => format!("cannot read the {what}: {e}"),
    }
}

/// Key and trust stores larger than this are refused unread.
const MAX_STORE_SIZE: u64 = 4 << 20;

/// A store file's contents and its mode, both from one open file.
#[derive(Debug)]
pub(super) struct StoreFile {
    pub(super) bytes: Vec<u8>,
    pub(super) mode: u32,
}

pub(super) fn read_file(path: &Path, what: &str) -> Result<StoreFile, TlsError> {
    let fail = |e: io::Error| file_error(path, read_error(what, &e));
    let file = std::fs::File::open(path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if !meta.is_file() {
        return Err(file_error(path, format!("the {what} is not a regular file")));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, MAX_STORE_SIZE + 1), &mut bytes).map_err(fail)?;
    if bytes.len() as u64 > MAX_STORE_SIZE {
        return Err(file_error(
            path,
            format!("the {what} is larger than {} MiB", MAX_STORE_SIZE >> 20),
        ));
    }
    Ok(StoreFile {
        bytes,
        mode: meta.permissions().mode(),
    })
}
