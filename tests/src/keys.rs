//! Throwaway key material, made at test time with the `certs` crate.

use std::path::{Path, PathBuf};

use certs::Role;

/// Key files for one server and one manager.
#[derive(Debug, Clone)]
pub struct Keys {
    pub server_private: PathBuf,
    pub server_public: PathBuf,
    pub client_private: PathBuf,
    pub client_public: PathBuf,
    /// The trust store the server uses (client.public, or the CA).
    pub server_trust: PathBuf,
    /// The trust store the manager uses (server.public, or the CA).
    pub client_trust: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str, private: bool) -> PathBuf {
    let p = dir.join(name);
    if private {
        certs::write_private(&p, text, true).expect("write private key");
    } else {
        certs::write_public(&p, text, true).expect("write public");
    }
    p
}

/// Pinned mode: each side self-signed, each trusting the other's certificate.
pub fn pinned(dir: &Path, tag: &str) -> Keys {
    std::fs::create_dir_all(dir).unwrap();
    let s = certs::self_signed(Role::Server, &["guest-under-test".into()]).expect("server key");
    let c = certs::self_signed(Role::Client, &["host-under-test".into()]).expect("client key");
    let server_public = write(dir, &format!("server{tag}.public"), &s.public_pem, false);
    let client_public = write(dir, &format!("client{tag}.public"), &c.public_pem, false);
    Keys {
        server_private: write(dir, &format!("server{tag}.private"), &s.private_pem, true),
        client_private: write(dir, &format!("client{tag}.private"), &c.private_pem, true),
        server_trust: client_public.clone(),
        client_trust: server_public.clone(),
        server_public,
        client_public,
    }
}

/// CA mode: one CA signs the server (for `server_names`) and the client.
pub fn ca(dir: &Path, tag: &str, server_names: &[&str]) -> Keys {
    std::fs::create_dir_all(dir).unwrap();
    let ca = certs::new_ca(&format!("test CA {tag}")).expect("CA");
    let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
    let s = certs::issue(&ca, Role::Server, &names).expect("server cert");
    let c = certs::issue(&ca, Role::Client, &["host-under-test".into()]).expect("client cert");
    let ca_public = write(dir, &format!("ca{tag}.public"), &ca.cert_pem, false);
    Keys {
        server_private: write(dir, &format!("server{tag}.private"), &s.private_pem, true),
        server_public: write(dir, &format!("server{tag}.public"), &s.public_pem, false),
        client_private: write(dir, &format!("client{tag}.private"), &c.private_pem, true),
        client_public: write(dir, &format!("client{tag}.public"), &c.public_pem, false),
        server_trust: ca_public.clone(),
        client_trust: ca_public,
    }
}

/// A manager configuration file using `private` and trusting `trust`.
pub fn manager_conf(dir: &Path, name: &str, private: &Path, trust: &Path, extra: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "keyStore={}\ntrustStore={}\n{extra}",
            private.display(),
            trust.display()
        ),
    )
    .unwrap();
    p
}

/// Key files as `keygen` writes them: `client.*` in `host`, `server.*` in
/// `guest`; each side trusts the other's public file, or `ca` when given.
pub fn from_keygen_dirs(host: &Path, guest: &Path, ca: Option<&Path>) -> Keys {
    Keys {
        server_private: guest.join("server.private"),
        server_public: guest.join("server.public"),
        client_private: host.join("client.private"),
        client_public: host.join("client.public"),
        server_trust: ca.map_or_else(|| host.join("client.public"), Path::to_path_buf),
        client_trust: ca.map_or_else(|| guest.join("server.public"), Path::to_path_buf),
    }
}
