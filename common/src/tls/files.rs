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

pub(super) fn read_error(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!("{what} file does not exist"),
        io::ErrorKind::PermissionDenied => format!("cannot read the {what}: permission denied"),
        _ => format!("cannot read the {what}: {e}"),
    }
}

pub(super) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(path, read_error(what, &e)))
}
