//! Generated material is written with the right modes, loads with
//! `common::tls` and completes real handshakes.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::tls::{self, KeyMaterial, TrustStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Writes `pem` as a key store and a trust store into `dir`, and loads them.
fn load(dir: &Path, stem: &str, pem: &Pem) -> (KeyMaterial, TrustStore) {
    let private = dir.join(format!("{stem}.private"));
    let public = dir.join(format!("{stem}.public"));
    write_private(&private, &pem.private_pem, false).unwrap();
    write_public(&public, &pem.public_pem, false).unwrap();
    (
        tls::load_key_store(&private, "").unwrap(),
        tls::load_trust_store(&public, "public").unwrap(),
    )
}

/// Handshakes and exchanges two bytes each way; returns the identities each side saw.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> (std::io::Result<String>, std::io::Result<String>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let server = async move {
        let mut tls = acceptor.accept(server_io).await?;
        let peer = tls::peer_identity(tls.get_ref().1);
        tls.write_all(b"ok").await?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        tls.shutdown().await?;
        Ok(peer)
    };
    let client = async move {
        let mut tls = connector.connect(name, client_io).await?;
        let peer = tls::peer_identity(tls.get_ref().1);
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"hi").await?;
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await?;
        Ok(peer)
    };
    let both = async { tokio::join!(server, client) };
    tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("handshake hung")
}

#[test]
fn files_have_their_modes_and_are_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("x.private");
    let public = dir.path().join("x.public");
    write_private(&private, "secret\n", false).unwrap();
    write_public(&public, "public\n", false).unwrap();
    assert_eq!(mode(&private), 0o600);
    assert_eq!(mode(&public), 0o644);

    let err = write_private(&private, "other\n", false).unwrap_err();
    assert!(matches!(err, CertError::Exists { .. }));
    assert_eq!(
        err.to_string(),
        format!("{} exists; use --force to overwrite", private.display())
    );
    assert_eq!(fs::read_to_string(&private).unwrap(), "secret\n");

    // --force replaces, and a loose mode on the old file does not survive.
    fs::set_permissions(&private, fs::Permissions::from_mode(0o666)).unwrap();
    write_private(&private, "new\n", true).unwrap();
    assert_eq!(fs::read_to_string(&private).unwrap(), "new\n");
    assert_eq!(mode(&private), 0o600);
    write_public(&public, "new public\n", true).unwrap();
    assert_eq!(mode(&public), 0o644);
    // Nothing else was left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn unwritable_directory_is_reported() {
    let err = write_public(Path::new("/nonexistent-dir/x.public"), "x", false).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent-dir/x.public: cannot create the file"),
        "{err}"
    );
}

#[test]
fn names_are_checked() {
    assert!(matches!(self_signed(Role::Server, &[]), Err(CertError::NoName)));
    let err = self_signed(Role::Server, &names(&["bad name"])).unwrap_err();
    assert!(matches!(err, CertError::InvalidName { .. }), "{err}");
    assert!(self_signed(
        Role::Server,
        &names(&["guest1", "guest1.example.com", "10.0.0.5", "fe80::1"])
    )
    .is_ok());
}

#[tokio::test]
async fn pinned_material_loads_and_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let server = self_signed(Role::Server, &names(&["guest1", "192.0.2.7"])).unwrap();
    let client = self_signed(Role::Client, &names(&["host1"])).unwrap();
    let (server_key, server_trust) = load(dir.path(), "server", &server);
    let (client_key, client_trust) = load(dir.path(), "client", &client);
    assert_eq!((server_trust.pinned.len(), server_trust.cas.len()), (1, 0));

    let s = tls::server_config(server_key, client_trust).unwrap();
    let c = tls::client_config(client_key, server_trust).unwrap();
    let (s_res, c_res) = handshake(s, c, "any-name").await;
    assert_eq!(s_res.unwrap(), "host1");
    assert_eq!(c_res.unwrap(), "guest1");
}

#[tokio::test]
async fn ca_material_loads_and_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("test CA").unwrap();
    let ca_cert = dir.path().join("ca.public");
    let ca_key = dir.path().join("ca.private");
    write_public(&ca_cert, &ca.cert_pem, false).unwrap();
    write_private(&ca_key, &ca.key_pem, false).unwrap();
    let ca = load_ca(&ca_cert, &ca_key).unwrap();

    let server = issue(&ca, Role::Server, &names(&["guest1"])).unwrap();
    let client = issue(&ca, Role::Client, &names(&["host1"])).unwrap();
    let (server_key, _) = load(dir.path(), "server", &server);
    let (client_key, _) = load(dir.path(), "client", &client);
    assert_eq!(server_key.certs.len(), 2, "leaf and CA certificate");
    let trust = tls::load_trust_store(&ca_cert, "public").unwrap();
    assert_eq!((trust.pinned.len(), trust.cas.len()), (0, 1));

    let s = tls::server_config(server_key.clone(), trust.clone()).unwrap();
    let c = tls::client_config(client_key.clone(), trust.clone()).unwrap();
    let (s_res, c_res) = handshake(s, c, "guest1").await;
    assert_eq!(s_res.unwrap(), "host1");
    assert_eq!(c_res.unwrap(), "guest1");

    // The manager checks the name in CA mode.
    let s = tls::server_config(server_key, trust.clone()).unwrap();
    let c = tls::client_config(client_key.clone(), trust.clone()).unwrap();
    let (_, c_res) = handshake(s, c, "guest2").await;
    let err = c_res.unwrap_err();
    assert!(tls::is_auth_failure(&err));
    assert!(tls::describe_handshake_error(&err).contains("does not carry the name"));

    // Role matters: a client certificate cannot serve.
    let (wrong_key, _) = load(
        dir.path(),
        "wrong",
        &issue(&ca, Role::Client, &names(&["guest1"])).unwrap(),
    );
    let s = tls::server_config(wrong_key, trust.clone()).unwrap();
    let c = tls::client_config(client_key, trust).unwrap();
    let (_, c_res) = handshake(s, c, "guest1").await;
    assert!(tls::is_auth_failure(&c_res.unwrap_err()));
}

#[test]
fn load_ca_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("test CA").unwrap();
    let other = new_ca("other CA").unwrap();
    let leaf = self_signed(Role::Server, &names(&["guest1"])).unwrap();
    let p = |n: &str| dir.path().join(n);
    write_public(&p("ca.public"), &ca.cert_pem, false).unwrap();
    write_private(&p("ca.private"), &ca.key_pem, false).unwrap();
    write_private(&p("other.private"), &other.key_pem, false).unwrap();
    write_public(&p("leaf.public"), &leaf.public_pem, false).unwrap();
    write_public(&p("open.private"), &ca.key_pem, false).unwrap();

    let err = load_ca(&p("ca.public"), &p("other.private")).unwrap_err().to_string();
    assert!(err.contains("does not belong to the CA certificate"), "{err}");
    let err = load_ca(&p("leaf.public"), &p("ca.private")).unwrap_err().to_string();
    assert!(err.contains("is not a CA certificate"), "{err}");
    let err = load_ca(&p("ca.public"), &p("open.private")).unwrap_err().to_string();
    assert!(err.contains("mode 0644"), "{err}");
    let err = load_ca(&p("missing.public"), &p("ca.private")).unwrap_err().to_string();
    assert!(err.contains("missing.public: cannot read"), "{err}");
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Keygen(KeygenArgs),
}

fn parse(args: &[&str]) -> Result<KeygenArgs, clap::Error> {
    let argv = std::iter::once("prog")
        .chain(std::iter::once("keygen"))
        .chain(args.iter().copied());
    Cli::try_parse_from(argv).map(|cli| match cli.command {
        Command::Keygen(args) => args,
    })
}

#[test]
fn command_line_shapes() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    let a = parse(&["--dir", "/x", "--name", "a", "--name", "b", "--force"]).unwrap();
    assert!(a.command.is_none() && a.force);
    assert_eq!(a.names, names(&["a", "b"]));
    let a = parse(&["ca", "--dir", "/x", "--name", "My CA"]).unwrap();
    assert!(matches!(a.command, Some(KeygenCommand::Ca { name: Some(ref n), .. }) if n == "My CA"));
    let a = parse(&["issue", "--ca-dir", "/ca", "--name", "g1", "--name", "10.0.0.1"]).unwrap();
    assert!(matches!(a.command, Some(KeygenCommand::Issue { ref names, .. }) if names.len() == 2));
    assert!(parse(&["issue"]).is_err(), "--ca-dir is required");
    assert!(
        parse(&["--dir", "/x", "ca"]).is_err(),
        "pinned options do not mix with subcommands"
    );
}

#[tokio::test]
async fn keygen_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    let guest = dir.path().join("guest");
    let d = |p: &Path| p.to_str().unwrap().to_string();

    // Pinned mode.
    let out = run(&parse(&["--dir", &d(&host), "--name", "host1"]).unwrap(), Side::Manager).unwrap();
    assert!(
        out.contains("client.public") && out.contains("/opt/hp/cmappserver/client.public"),
        "{out}"
    );
    let out = run(
        &parse(&["--dir", &d(&guest), "--name", "guest1"]).unwrap(),
        Side::Server,
    )
    .unwrap();
    assert!(out.contains("server.public"), "{out}");
    assert_eq!(mode(&host.join("client.private")), 0o600);
    assert_eq!(mode(&host.join("client.public")), 0o644);
    assert_eq!(mode(&guest.join("server.private")), 0o600);

    let err = run(&parse(&["--dir", &d(&host), "--name", "host1"]).unwrap(), Side::Manager).unwrap_err();
    assert!(matches!(err, CertError::Exists { .. }), "{err}");
    run(
        &parse(&["--dir", &d(&host), "--name", "host1", "--force"]).unwrap(),
        Side::Manager,
    )
    .unwrap();

    let s = tls::server_config(
        tls::load_key_store(&guest.join("server.private"), "serverpw").unwrap(),
        tls::load_trust_store(&host.join("client.public"), "public").unwrap(),
    )
    .unwrap();
    let c = tls::client_config(
        tls::load_key_store(&host.join("client.private"), "clientpw").unwrap(),
        tls::load_trust_store(&guest.join("server.public"), "public").unwrap(),
    )
    .unwrap();
    let (s_res, c_res) = handshake(s, c, "guest1").await;
    assert_eq!(
        (s_res.unwrap(), c_res.unwrap()),
        ("host1".to_string(), "guest1".to_string())
    );

    // CA mode.
    let ca_dir = dir.path().join("ca");
    let out = run(
        &parse(&["ca", "--dir", &d(&ca_dir), "--name", "test CA"]).unwrap(),
        Side::Manager,
    )
    .unwrap();
    assert!(out.contains("ca.public"), "{out}");
    assert_eq!(mode(&ca_dir.join("ca.private")), 0o600);
    run(
        &parse(&[
            "issue",
            "--ca-dir",
            &d(&ca_dir),
            "--dir",
            &d(&host),
            "--name",
            "host1",
            "--force",
        ])
        .unwrap(),
        Side::Manager,
    )
    .unwrap();
    let out = run(
        &parse(&[
            "issue",
            "--ca-dir",
            &d(&ca_dir),
            "--dir",
            &d(&guest),
            "--name",
            "guest1",
            "--name",
            "192.0.2.8",
            "--force",
        ])
        .unwrap(),
        Side::Server,
    )
    .unwrap();
    assert!(out.contains("guest1, 192.0.2.8"), "{out}");

    let trust = tls::load_trust_store(&ca_dir.join("ca.public"), "public").unwrap();
    let s = tls::server_config(
        tls::load_key_store(&guest.join("server.private"), "").unwrap(),
        trust.clone(),
    )
    .unwrap();
    let c = tls::client_config(tls::load_key_store(&host.join("client.private"), "").unwrap(), trust).unwrap();
    let (s_res, c_res) = handshake(s, c, "192.0.2.8").await;
    assert_eq!(
        (s_res.unwrap(), c_res.unwrap()),
        ("host1".to_string(), "guest1".to_string())
    );
}

#[test]
fn default_name_is_the_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&parse(&["--dir", dir.path().to_str().unwrap()]).unwrap(), Side::Server).unwrap();
    let host = cli_host_name();
    assert!(out.contains(&format!("for {host} ")), "{out}");
}

fn cli_host_name() -> String {
    nix::unistd::gethostname().unwrap().into_string().unwrap()
}

#[test]
fn certificates_carry_what_tools_expect() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use x509_parser::prelude::*;
    let pem = self_signed(Role::Server, &names(&["guest1", "10.0.0.5"])).unwrap();
    let der = CertificateDer::from_pem_slice(pem.public_pem.as_bytes()).unwrap();
    let (_, x509) = parse_x509_certificate(&der).unwrap();
    assert!(!x509.is_ca());
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(x509.key_usage().unwrap().unwrap().value.digital_signature());
    let sans = &x509.subject_alternative_name().unwrap().unwrap().value.general_names;
    assert_eq!(sans.len(), 2);
    let days = (x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp()) / 86400;
    assert!((3650..=3660).contains(&days), "{days}");

    let ca = new_ca("test CA").unwrap();
    let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
    let (_, x509) = parse_x509_certificate(&der).unwrap();
    assert!(x509.is_ca());
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());

    let leaf = issue(&ca, Role::Client, &names(&["host1"])).unwrap();
    let der = CertificateDer::from_pem_slice(leaf.public_pem.as_bytes()).unwrap();
    let (_, x509) = parse_x509_certificate(&der).unwrap();
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !x509.is_ca());
}

/// The validity period of the first certificate in `pem`, in seconds since the epoch.
fn validity_of(pem: &str) -> (i64, i64) {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    (
        x509.validity().not_before.timestamp(),
        x509.validity().not_after.timestamp(),
    )
}

fn names_of(pem: &str) -> Vec<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    common::tls::certificate_names(&der, false)
}

fn key_block(private_pem: &str) -> &str {
    let end = "-----END PRIVATE KEY-----";
    &private_pem[..private_pem.find(end).unwrap() + end.len()]
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn renew_keeps_the_key_and_the_names_with_a_new_ten_year_certificate() {
    let old = self_signed(Role::Server, &names(&["guest1", "10.0.0.5"])).unwrap();
    let new = renew(&old.private_pem, Role::Server, &[], None).unwrap();
    assert_eq!(key_block(&new.private_pem), key_block(&old.private_pem));
    assert_ne!(new.public_pem, old.public_pem);
    assert_eq!(names_of(&new.public_pem), ["guest1", "10.0.0.5"]);
    assert!(
        new.private_pem.ends_with(&new.public_pem),
        "the key, then its certificate"
    );
    let (from, to) = validity_of(&new.public_pem);
    assert!((from - (now() - 86_400)).abs() < 600, "valid from a day ago");
    assert!((to - (now() + 3653 * 86_400)).abs() < 600, "valid for ten years");
    tls::server_config(load(tempfile::tempdir().unwrap().path(), "s", &new).0, load_trust(&old)).unwrap();

    // New names replace the old ones; a CA signs instead of the key itself.
    let ca = new_ca("test CA").unwrap();
    let issued = renew(&old.private_pem, Role::Client, &names(&["host9"]), Some(&ca)).unwrap();
    assert_eq!(key_block(&issued.private_pem), key_block(&old.private_pem));
    assert_eq!(names_of(&issued.public_pem), ["host9"]);
    assert!(
        issued.private_pem.ends_with(&certificate_blocks(&ca.cert_pem)),
        "the chain ends with the CA"
    );

    for bad in [
        String::new(),
        old.public_pem.clone(),
        old.private_pem.replace("PRIVATE KEY", "EC PRIVATE KEY"),
    ] {
        let e = renew(&bad, Role::Server, &[], None).unwrap_err();
        assert!(e.to_string().contains("no unencrypted PKCS#8 private key"), "{e}");
    }
    let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    let e = renew(garbage, Role::Server, &[], None).unwrap_err();
    assert!(e.to_string().starts_with("not a usable private key"), "{e}");
}

fn load_trust(pem: &Pem) -> TrustStore {
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("t.public");
    write_public(&public, &pem.public_pem, false).unwrap();
    tls::load_trust_store(&public, "").unwrap()
}

#[test]
fn an_issued_certificate_lasts_the_days_asked_but_never_beyond_its_ca() {
    let ca = new_ca("test CA").unwrap();
    let leaf = issue_valid_for(&ca, Role::Server, &names(&["guest1"]), 30).unwrap();
    let (_, to) = validity_of(&leaf.public_pem);
    assert!((to - (now() + 30 * 86_400)).abs() < 600, "{to}");

    // A CA that ends in 10 days: what it signs ends with it.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = distinguished_name("short CA", None);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.not_before = time::OffsetDateTime::now_utc() - Duration::from_secs(86_400);
    p.not_after = time::OffsetDateTime::now_utc() + Duration::from_secs(10 * 86_400);
    let short = Ca {
        cert_pem: p.self_signed(&key).unwrap().pem(),
        key_pem: key.serialize_pem(),
    };
    let (_, ca_end) = validity_of(&short.cert_pem);
    for leaf in [
        issue(&short, Role::Client, &names(&["host1"])).unwrap(),
        issue_valid_for(&short, Role::Client, &names(&["host1"]), 30).unwrap(),
    ] {
        assert_eq!(validity_of(&leaf.public_pem).1, ca_end);
    }
    let sooner = issue_valid_for(&short, Role::Client, &names(&["host1"]), 5).unwrap();
    assert!(validity_of(&sooner.public_pem).1 < ca_end);
}

#[test]
fn private_keys_never_show_in_debug_output() {
    let pem = self_signed(Role::Server, &names(&["guest1"])).unwrap();
    let shown = format!("{pem:?}");
    assert!(
        shown.contains("<redacted>") && shown.contains(&format!("{:?}", pem.public_pem)),
        "{shown}"
    );
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let ca = new_ca("test CA").unwrap();
    let shown = format!("{ca:?}");
    assert!(
        shown.contains("<redacted>") && shown.contains("BEGIN CERTIFICATE"),
        "{shown}"
    );
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

#[test]
fn keygen_renew_replaces_both_files_for_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let guest = dir.path().join("guest");
    let d = |p: &Path| p.to_str().unwrap().to_string();
    run(
        &parse(&["--dir", &d(&guest), "--name", "guest1"]).unwrap(),
        Side::Server,
    )
    .unwrap();
    let (private, public) = (guest.join("server.private"), guest.join("server.public"));
    let old = fs::read_to_string(&private).unwrap();

    let out = run(&parse(&["renew", "--dir", &d(&guest)]).unwrap(), Side::Server).unwrap();
    assert!(
        out.starts_with(&format!(
            "Renewed the certificate of the key in {} (self-signed); wrote {} and {}.",
            private.display(),
            private.display(),
            public.display()
        )) && out.contains("give the new .public to the peers"),
        "{out}"
    );
    let new = fs::read_to_string(&private).unwrap();
    assert_eq!(key_block(&new), key_block(&old));
    assert_ne!(new, old);
    assert_eq!((mode(&private), mode(&public)), (0o600, 0o644));
    assert_eq!(names_of(&fs::read_to_string(&public).unwrap()), ["guest1"]);

    // Signed by a CA, with new names.
    let ca_dir = dir.path().join("ca");
    run(
        &parse(&["ca", "--dir", &d(&ca_dir), "--name", "test CA"]).unwrap(),
        Side::Manager,
    )
    .unwrap();
    let out = run(
        &parse(&[
            "renew",
            "--dir",
            &d(&guest),
            "--ca-dir",
            &d(&ca_dir),
            "--name",
            "guest2",
        ])
        .unwrap(),
        Side::Server,
    )
    .unwrap();
    assert!(
        out.contains("(signed by the CA)") && out.contains("systemctl reload cmappserver"),
        "{out}"
    );
    assert_eq!(names_of(&fs::read_to_string(&public).unwrap()), ["guest2"]);
    assert_eq!(key_block(&fs::read_to_string(&private).unwrap()), key_block(&old));

    // A key others may read is not renewed.
    fs::set_permissions(&private, fs::Permissions::from_mode(0o644)).unwrap();
    let e = run(&parse(&["renew", "--dir", &d(&guest)]).unwrap(), Side::Server).unwrap_err();
    assert!(e.to_string().contains("mode 0644"), "{e}");
}

#[test]
fn a_certificate_names_the_program_it_is_for() {
    let subject = |pem: &str| {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        x509.subject().to_string()
    };
    let server = self_signed(Role::Server, &names(&["guest1"])).unwrap();
    assert_eq!(subject(&server.public_pem), "CN=guest1, O=cmapp, OU=cmappserver");
    let client = self_signed(Role::Client, &names(&["host1"])).unwrap();
    assert_eq!(subject(&client.public_pem), "CN=host1, O=cmapp, OU=cmappmgr");
    assert_eq!(subject(&new_ca("test CA").unwrap().cert_pem), "CN=test CA, O=cmapp");
}
