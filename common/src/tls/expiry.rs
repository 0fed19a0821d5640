//! Certificates about to expire: `cmappserver --check-config`, `cmappmgr
//! check` and the server's log (at start, on a reload and daily) warn about
//! every certificate of a key store or trust store that expires within
//! [`WARN_BEFORE`] (or has expired), so that a rotation is planned, not
//! discovered by a cluster that can no longer reach its guests.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

/// How long before its end a certificate is warned about.
pub const WARN_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// One warning per certificate of `certs` (from the file at `path`, called
/// `what`) that ends within [`WARN_BEFORE`] of `now`, or has ended.
pub fn expiry_warnings(what: &str, path: &Path, certs: &[CertificateDer<'_>], now: SystemTime) -> Vec<String> {
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut out = Vec::new();
    for cert in certs {
        let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert) else {
            continue;
        };
        let end = x509.validity().not_after.timestamp();
        let left = end - now_s;
        if left > WARN_BEFORE.as_secs() as i64 {
            continue;
        }
        let name = super::certificate_name(cert).unwrap_or_else(|| x509.subject().to_string());
        let when = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(end.max(0) as u64));
        let name = crate::text::clip(&name, 100);
        out.push(if left <= 0 {
            format!(
                "the certificate of {name} in {what} {} expired on {when}: make a new one (keygen) and rotate it (README, Rotating keys)",
                path.display()
            )
        } else {
            format!(
                "the certificate of {name} in {what} {} expires on {when}, in {} day(s): make a new one (keygen) and rotate it (README, Rotating keys)",
                path.display(),
                (left + 86_399) / 86_400
            )
        });
    }
    out
}
