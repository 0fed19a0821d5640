//! The `keygen` subcommand both binaries embed, and what it tells the user.
//!
//! ```text
//! keygen [--dir DIR] [--name NAME]... [--force]                 pinned mode
//! keygen ca [--dir DIR] [--name NAME] [--force]                 a new CA
//! keygen issue --ca-dir DIR [--dir OUT] [--name NAME]... [--force]
//! ```
//!
//! `cmappmgr` (the host, [`Side::Manager`]) writes `client.private` and
//! `client.public`, by default in `/etc`; `cmappserver` (the guest,
//! [`Side::Server`]) writes `server.private` and `server.public`, by default
//! in `/opt/hp/cmappserver`: the paths the original's configuration files use.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{CertError, Role};

/// Make this machine's private key and certificate.
///
/// Without a subcommand: a self-signed certificate, trusted by copying it
/// into the peers' trust stores (pinned mode).
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KeygenArgs {
    #[command(subcommand)]
    pub command: Option<KeygenCommand>,
    /// Directory to write into [default: /etc for cmappmgr, /opt/hp/cmappserver for cmappserver]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// A name (host name or IP address) of this machine; repeat for more. The
    /// first is the certificate's common name [default: the host name]
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Overwrite existing files
    #[arg(long)]
    pub force: bool,
}

/// The CA-mode steps of `keygen`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeygenCommand {
    /// Create a certificate authority: ca.public (its certificate, the trust
    /// store of CA mode) and ca.private (its key)
    Ca {
        /// Directory to write into [default: the current directory]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The CA's name [default: "cmapp CA on <host name>"]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Overwrite existing files
        #[arg(long)]
        force: bool,
    },
    /// Sign a certificate for this machine with a CA made by `keygen ca`
    Issue {
        /// The directory holding the CA's ca.public and ca.private
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Directory to write into [default: as for keygen]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// A name (host name or IP address) of this machine; repeat for
        /// more. The first is the common name [default: the host name]
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Overwrite existing files
        #[arg(long)]
        force: bool,
    },
    /// A new certificate for the existing key in DIR's .private file (made
    /// by keygen), replacing the .private and .public files: self-signed, or
    /// signed by the CA in --ca-dir. Peers that pin the old certificate
    /// must be given the new .public (README, Rotating keys)
    Renew {
        /// The directory of the .private file [default: as for keygen]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Sign with the CA in this directory (ca.public, ca.private)
        #[arg(long, value_name = "DIR")]
        ca_dir: Option<PathBuf>,
        /// The certificate's names [default: the old certificate's]
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
    },
}

/// Which program runs `keygen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `cmappmgr` on a cluster host: the TLS client (`client.private`, `client.public`).
    Manager,
    /// `cmappserver` in a guest: the TLS server (`server.private`, `server.public`).
    Server,
}

impl Side {
    /// The certificate role of this side.
    pub fn role(self) -> Role {
        match self {
            Side::Manager => Role::Client,
            Side::Server => Role::Server,
        }
    }

    /// Where this side's files go by default.
    pub fn default_dir(self) -> &'static Path {
        match self {
            Side::Manager => Path::new("/etc"),
            Side::Server => Path::new("/opt/hp/cmappserver"),
        }
    }

    /// `client` or `server`: the stem of the `.private` and `.public` files.
    pub fn file_stem(self) -> &'static str {
        match self {
            Side::Manager => "client",
            Side::Server => "server",
        }
    }

    fn files(self, dir: &Path) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("{}.private", self.file_stem())),
            dir.join(format!("{}.public", self.file_stem())),
        )
    }
}

/// Runs `keygen` for `side`; returns what was written and what to do next.
pub fn run(args: &KeygenArgs, side: Side) -> Result<String, CertError> {
    match &args.command {
        None => run_pinned(args, side),
        Some(KeygenCommand::Ca { dir, name, force }) => run_ca(dir.as_deref(), name.as_deref(), *force),
        Some(KeygenCommand::Issue {
            ca_dir,
            dir,
            names,
            force,
        }) => run_issue(ca_dir, dir.as_deref(), names, *force, side),
        Some(KeygenCommand::Renew { dir, ca_dir, names }) => run_renew(dir.as_deref(), ca_dir.as_deref(), names, side),
    }
}

/// The machine's host name.
fn host_name() -> Result<String, CertError> {
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .or_else(|| fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_string())
        .unwrap_or_default();
    if name.is_empty() {
        Err(CertError::NoName)
    } else {
        Ok(name)
    }
}

fn names_or_host_name(names: &[String]) -> Result<Vec<String>, CertError> {
    if names.is_empty() {
        Ok(vec![host_name()?])
    } else {
        Ok(names.to_vec())
    }
}

/// Creates the output directory if need be, and refuses (without `force`)
/// before anything is written when any output file exists.
fn prepare(dir: &Path, files: &[&Path], force: bool) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.into(),
        action: "create the directory",
        source,
    })?;
    if !force {
        if let Some(path) = files.iter().find(|p| p.symlink_metadata().is_ok()) {
            return Err(CertError::Exists {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn write_pair(side: Side, dir: &Path, pem: &crate::Pem, force: bool) -> Result<(PathBuf, PathBuf), CertError> {
    let (private, public) = side.files(dir);
    prepare(dir, &[&private, &public], force)?;
    crate::write_private(&private, &pem.private_pem, force)?;
    crate::write_public(&public, &pem.public_pem, force)?;
    Ok((private, public))
}

fn run_pinned(args: &KeygenArgs, side: Side) -> Result<String, CertError> {
    let names = names_or_host_name(&args.names)?;
    let dir = args.dir.as_deref().unwrap_or(side.default_dir());
    let pem = crate::self_signed(side.role(), &names)?;
    let (private, public) = write_pair(side, dir, &pem, args.force)?;

    let mut out = format!(
        "Wrote {} (private key and certificate, mode 0600: keep it on this machine)\n\
         and {} (the certificate) for {} (names: {}).\n",
        private.display(),
        public.display(),
        names[0],
        names.join(", ")
    );
    let _ = match side {
        Side::Manager => write!(
            out,
            "Next: copy {} to /opt/hp/cmappserver/client.public on every guest (the trustStore of\n\
             cmappserver.conf), and put every guest's server.public into this host's trustStore\n\
             (/etc/server.public by default; several guests' certificates may be concatenated in it).\n",
            public.display()
        ),
        Side::Server => write!(
            out,
            "Next: add {} to the trustStore of every cluster host (/etc/server.public by default,\n\
             where several guests' certificates may be concatenated, or a file of its own named by\n\
             trustStore={}:<path> in /etc/cmappmgr.conf), and copy the hosts' client.public to\n\
             /opt/hp/cmappserver/client.public here (the trustStore of cmappserver.conf).\n",
            public.display(),
            names[0]
        ),
    };
    Ok(out)
}

fn run_renew(dir: Option<&Path>, ca_dir: Option<&Path>, names: &[String], side: Side) -> Result<String, CertError> {
    let dir = dir.unwrap_or(side.default_dir());
    let (private, public) = side.files(dir);
    let text = common::tls::read_key_file(&private).map_err(|e| CertError::BadKey {
        message: format!("{}: {e}", private.display()),
    })?;
    let ca = match ca_dir {
        Some(d) => Some(crate::load_ca(&d.join("ca.public"), &d.join("ca.private"))?),
        None => None,
    };
    let pem = crate::renew(&text, side.role(), names, ca.as_ref())?;
    crate::write_private(&private, &pem.private_pem, true)?;
    crate::write_public(&public, &pem.public_pem, true)?;
    Ok(format!(
        "Renewed the certificate of the key in {} ({}); wrote {} and {}.\n\
         Next: {}\n",
        private.display(),
        if ca.is_some() {
            "signed by the CA"
        } else {
            "self-signed"
        },
        private.display(),
        public.display(),
        if ca.is_some() {
            "reload the daemon that uses it (systemctl reload cmappserver); managers read their files at each connection."
        } else {
            "give the new .public to the peers that pin this certificate (add it to their trust stores), then reload (README, Rotating keys)."
        }
    ))
}

fn run_ca(dir: Option<&Path>, name: Option<&str>, force: bool) -> Result<String, CertError> {
    let dir = dir.unwrap_or(Path::new("."));
    let name = match name {
        Some(name) => name.to_string(),
        None => format!("cmapp CA on {}", host_name()?),
    };
    let (cert_path, key_path) = (dir.join("ca.public"), dir.join("ca.private"));
    prepare(dir, &[&cert_path, &key_path], force)?;
    let ca = crate::new_ca(&name)?;
    crate::write_private(&key_path, &ca.key_pem, force)?;
    crate::write_public(&cert_path, &ca.cert_pem, force)?;
    Ok(format!(
        "Wrote {} (the certificate of CA \"{name}\") and {} (its private key, mode 0600).\n\
         Next: sign a certificate for every machine with `cmappmgr keygen issue --ca-dir {}` on each\n\
         host and `cmappserver keygen issue --ca-dir {}` on each guest (or run them here with --dir\n\
         and copy the files), and use ca.public as the trustStore everywhere. Keep ca.private off\n\
         the guests.\n",
        cert_path.display(),
        key_path.display(),
        dir.display(),
        dir.display()
    ))
}

fn run_issue(
    ca_dir: &Path,
    dir: Option<&Path>,
    names: &[String],
    force: bool,
    side: Side,
) -> Result<String, CertError> {
    let names = names_or_host_name(names)?;
    let ca_cert = ca_dir.join("ca.public");
    let ca = crate::load_ca(&ca_cert, &ca_dir.join("ca.private"))?;
    let dir = dir.unwrap_or(side.default_dir());
    let pem = crate::issue(&ca, side.role(), &names)?;
    let (private, public) = write_pair(side, dir, &pem, force)?;

    let mut out = format!(
        "Wrote {} (private key, certificate and CA certificate, mode 0600: keep it on this machine)\n\
         and {} (the certificate) for {} (names: {}), signed by the CA in {}.\n",
        private.display(),
        public.display(),
        names[0],
        names.join(", "),
        ca_dir.display()
    );
    let _ = match side {
        Side::Manager => write!(
            out,
            "Next: use {} as the trustStore on every guest (/opt/hp/cmappserver/client.public by\n\
             default) and on this host (/etc/server.public by default, in /etc/cmappmgr.conf).\n",
            ca_cert.display()
        ),
        Side::Server => write!(
            out,
            "Next: use {} as the trustStore here (/opt/hp/cmappserver/client.public by default)\n\
             and on every cluster host (/etc/server.public by default). The hosts check this\n\
             guest's name: they must reach it by one of: {}.\n",
            ca_cert.display(),
            names.join(", ")
        ),
    };
    Ok(out)
}
