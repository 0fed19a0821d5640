use super::diagnose::rustls_error;
use super::keystore::parse_key_store;
use super::truststore::parse_trust_store;
use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName as Dn, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::CertificateError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::ServerName;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A key and its certificate (chain), made by rcgen.
struct Party {
    key_pem: String,
    cert_pem: String,
    chain_pem: String,
}

impl Party {
    fn key_store_pem(&self) -> String {
        format!("{}{}", self.key_pem, self.chain_pem)
    }
    fn material(&self) -> KeyMaterial {
        parse_key_store(self.key_store_pem().as_bytes(), "").unwrap()
    }
    fn trust(&self) -> TrustStore {
        parse_trust_store(self.cert_pem.as_bytes()).unwrap()
    }
}

fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
    p.distinguished_name = Dn::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p
}

fn self_signed_with(p: CertificateParams) -> Party {
    let key = new_key();
    let cert = p.self_signed(&key).unwrap();
    Party {
        key_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
        chain_pem: cert.pem(),
    }
}

/// A pinned-mode certificate, as `certs::self_signed` makes them.
fn pinned(name: &str) -> Party {
    let mut p = params(name);
    p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    self_signed_with(p)
}

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = new_key();
        let mut p = CertificateParams::default();
        p.distinguished_name = Dn::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            issuer: Issuer::new(p, key),
            cert_pem: cert.pem(),
        }
    }
    fn issue(&self, name: &str, eku: Eku) -> Party {
        let key = new_key();
        let mut p = params(name);
        p.extended_key_usages = vec![eku];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Party {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
        }
    }
    fn trust(&self) -> TrustStore {
        parse_trust_store(self.cert_pem.as_bytes()).unwrap()
    }
}

/// Runs a handshake and a two-byte exchange each way over an in-memory
/// pipe; returns what each side saw: the peer's identity or the error.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> (io::Result<String>, io::Result<String>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from(name.to_string()).unwrap();
    let server = async move {
        let mut tls = acceptor.accept(server_io).await?;
        let peer = peer_identity(tls.get_ref().1);
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_PROTOCOL));
        tls.write_all(b"ok").await?;
        tls.flush().await?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        tls.shutdown().await?;
        Ok(peer)
    };
    let client = async move {
        let mut tls = connector.connect(name, client_io).await?;
        let peer = peer_identity(tls.get_ref().1);
        // In TLS 1.3 a rejection of our certificate shows up here.
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"hi").await?;
        tls.flush().await?;
        // Wait for the server's close_notify.
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await?;
        Ok(peer)
    };
    let both = async { tokio::join!(server, client) };
    tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("handshake hung")
}

fn tls_error(result: &io::Result<String>) -> &rustls::Error {
    let err = result.as_ref().expect_err("expected a failure");
    rustls_error(err).unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
}

#[tokio::test]
async fn pinned_pair_handshakes() {
    let server = pinned("guest1");
    let client = pinned("host1");
    let s = server_config(server.material(), client.trust()).unwrap();
    let c = client_config(client.material(), server.trust()).unwrap();
    // No name check in pinned mode: any name will do.
    let (s_res, c_res) = handshake(s, c, "some-other-name").await;
    assert_eq!(s_res.unwrap(), "host1");
    assert_eq!(c_res.unwrap(), "guest1");
}

#[tokio::test]
async fn pinned_trust_store_with_several_peers() {
    let server = pinned("guest1");
    let client = pinned("host1");
    let others = [pinned("guest2"), pinned("guest3")];
    let trust_pem = format!("{}{}{}", others[0].cert_pem, server.cert_pem, others[1].cert_pem);
    let trust = parse_trust_store(trust_pem.as_bytes()).unwrap();
    assert_eq!(trust.pinned.len(), 3);
    let s = server_config(server.material(), client.trust()).unwrap();
    let c = client_config(client.material(), trust).unwrap();
    let (s_res, c_res) = handshake(s, c, "guest1").await;
    assert_eq!(s_res.unwrap(), "host1");
    assert_eq!(c_res.unwrap(), "guest1");
}

#[tokio::test]
async fn pinned_self_signed_ca_certificate_is_accepted_as_itself() {
    // `openssl req -x509` marks self-signed certificates CA:TRUE.
    let mut p = params("guest1");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let server = self_signed_with(p);
    assert_eq!(server.trust().cas.len(), 1);
    let client = pinned("host1");
    let s = server_config(server.material(), client.trust()).unwrap();
    let c = client_config(client.material(), server.trust()).unwrap();
    let (s_res, c_res) = handshake(s, c, "guest1").await;
    assert_eq!(s_res.unwrap(), "host1");
    assert_eq!(c_res.unwrap(), "guest1");
}

#[tokio::test]
async fn expired_pinned_certificate_is_refused() {
    let mut p = params("guest1");
    p.not_before = rcgen::date_time_ymd(2000, 1, 1);
    p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let server = self_signed_with(p);
    let client = pinned("host1");
    let s = server_config(server.material(), client.trust()).unwrap();
    let c = client_config(client.material(), server.trust()).unwrap();
    let (_s_res, c_res) = handshake(s, c, "guest1").await;
    assert!(matches!(
        tls_error(&c_res),
        rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
    ));
    let err = c_res.unwrap_err();
    assert!(is_auth_failure(&err));
    assert!(
        describe_handshake_error(&err).contains("expired"),
        "{}",
        describe_handshake_error(&err)
    );
}

#[tokio::test]
async fn ca_mode_handshakes_and_checks_the_server_name() {
    let ca = TestCa::new("test CA");
    let client = ca.issue("host1", Eku::ClientAuth);
    let good = ca.issue("guest1", Eku::ServerAuth);
    let s = server_config(good.material(), ca.trust()).unwrap();
    let c = client_config(client.material(), ca.trust()).unwrap();
    let (s_res, c_res) = handshake(s, c.clone(), "guest1").await;
    assert_eq!(s_res.unwrap(), "host1");
    assert_eq!(c_res.unwrap(), "guest1");

    let other = ca.issue("other", Eku::ServerAuth);
    let s = server_config(other.material(), ca.trust()).unwrap();
    let (s_res, c_res) = handshake(s, c, "guest1").await;
    assert!(s_res.is_err());
    assert!(matches!(
        tls_error(&c_res),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
            | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
    ));
    let err = c_res.unwrap_err();
    assert!(is_auth_failure(&err));
    let text = describe_handshake_error(&err);
    eprintln!("{text}");
    assert!(text.contains("does not carry the name"), "{text}");
}

#[tokio::test]
async fn ca_mode_accepts_an_ip_address_name() {
    let ca = TestCa::new("test CA");
    let client = ca.issue("host1", Eku::ClientAuth);
    let server = ca.issue("192.0.2.10", Eku::ServerAuth);
    let s = server_config(server.material(), ca.trust()).unwrap();
    let c = client_config(client.material(), ca.trust()).unwrap();
    let (s_res, c_res) = handshake(s, c, "192.0.2.10").await;
    assert_eq!(s_res.unwrap(), "host1");
    assert_eq!(c_res.unwrap(), "192.0.2.10");
}

#[tokio::test]
async fn ca_mode_rejects_a_client_of_another_ca() {
    let ca = TestCa::new("test CA");
    let rogue_ca = TestCa::new("rogue CA");
    let server = ca.issue("guest1", Eku::ServerAuth);
    let client = rogue_ca.issue("host1", Eku::ClientAuth);
    let s = server_config(server.material(), ca.trust()).unwrap();
    let c = client_config(client.material(), ca.trust()).unwrap();
    let (s_res, c_res) = handshake(s, c, "guest1").await;
    assert!(matches!(tls_error(&s_res), rustls::Error::InvalidCertificate(_)));
    assert!(is_auth_failure(s_res.as_ref().unwrap_err()));
    assert!(is_auth_failure(c_res.as_ref().unwrap_err()));
}

#[tokio::test]
async fn client_with_unknown_certificate_is_rejected() {
    let server = pinned("guest1");
    let client = pinned("host1");
    let stranger = pinned("host1");
    let s = server_config(server.material(), client.trust()).unwrap();
    let c = client_config(stranger.material(), server.trust()).unwrap();
    let (s_res, c_res) = handshake(s, c, "guest1").await;
    assert!(matches!(
        tls_error(&s_res),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    ));
    let s_err = s_res.unwrap_err();
    assert!(is_auth_failure(&s_err));
    assert!(describe_handshake_error(&s_err).contains("not trusted"));
    // The client learns it from the server's alert.
    assert!(
        matches!(tls_error(&c_res), rustls::Error::AlertReceived(_)),
        "{c_res:?}"
    );
    let c_err = c_res.unwrap_err();
    assert!(is_auth_failure(&c_err));
    let text = describe_handshake_error(&c_err);
    eprintln!("{text}");
    assert!(text.contains("the peer rejected our certificate"), "{text}");
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let server = pinned("guest1");
    let client = pinned("host1");
    let s = server_config(server.material(), client.trust()).unwrap();
    let provider = provider();
    let verifier = Arc::new(ServerVerifier::new(&server.trust(), &provider).unwrap());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    let (s_res, c_res) = handshake(s, Arc::new(c), "guest1").await;
    assert!(matches!(tls_error(&s_res), rustls::Error::NoCertificatesPresented));
    assert!(describe_handshake_error(s_res.as_ref().unwrap_err()).contains("no certificate"));
    let c_err = c_res.unwrap_err();
    assert!(is_auth_failure(&c_err), "{c_err:?}");
    assert!(describe_handshake_error(&c_err).contains("rejected our certificate"));
}

#[tokio::test]
async fn server_not_in_trust_store_is_rejected() {
    let server = pinned("guest1");
    let impostor = pinned("guest1");
    let client = pinned("host1");
    let s = server_config(impostor.material(), client.trust()).unwrap();
    let c = client_config(client.material(), server.trust()).unwrap();
    let (s_res, c_res) = handshake(s, c, "guest1").await;
    assert!(matches!(
        tls_error(&c_res),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    ));
    let c_err = c_res.unwrap_err();
    assert!(is_auth_failure(&c_err));
    let text = describe_handshake_error(&c_err);
    eprintln!("{text}");
    assert!(
        text.contains("not trusted (not in the trust store and not signed by a trusted CA)"),
        "{text}"
    );
    assert!(is_auth_failure(s_res.as_ref().unwrap_err()));
}

#[test]
fn plain_io_errors_are_not_auth_failures() {
    let err = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
    assert!(!is_auth_failure(&err));
    assert!(describe_handshake_error(&err).contains("closed during the TLS handshake"));
    let err = io::Error::new(
        io::ErrorKind::InvalidData,
        rustls::Error::PeerIncompatible(rustls::PeerIncompatible::SupportedVersionsExtensionRequired),
    );
    assert!(is_auth_failure(&err));
    assert!(describe_handshake_error(&err).contains("TLS 1.3 is required"));
}

#[test]
fn peer_name_falls_back_to_the_first_san() {
    let mut p = CertificateParams::new(vec!["10.1.2.3".to_string(), "guest1".to_string()]).unwrap();
    p.distinguished_name = Dn::new();
    let party = self_signed_with(p);
    let der = CertificateDer::from_pem_slice(party.cert_pem.as_bytes()).unwrap();
    assert_eq!(certificate_name(&der).as_deref(), Some("10.1.2.3"));
}

// ---- key and trust store files ----

fn write(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .unwrap();
    io::Write::write_all(&mut f, contents.as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn message(err: TlsError) -> String {
    err.to_string()
}

fn encrypt(key_pem: &str, password: &str) -> String {
    let der = pkcs8::der::pem::decode_vec(key_pem.as_bytes()).unwrap().1;
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).unwrap();
    let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"saltsalt", &[7u8; 16]).unwrap();
    let doc = info.encrypt_with_params(params, password).unwrap();
    doc.to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .unwrap()
        .to_string()
}

#[test]
fn key_store_loads_and_names_the_file_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let party = pinned("guest1");
    let ok = write(dir.path(), "ok.private", &party.key_store_pem(), 0o600);
    let m = load_key_store(&ok, "ignored").unwrap();
    assert_eq!(m.certs.len(), 1);

    let missing = dir.path().join("missing.private");
    let e = message(load_key_store(&missing, "").unwrap_err());
    assert!(e.contains("missing.private") && e.contains("does not exist"), "{e}");

    let open = write(dir.path(), "open.private", &party.key_store_pem(), 0o644);
    let e = message(load_key_store(&open, "").unwrap_err());
    assert_eq!(
        e,
        format!(
            "{0}: private key is accessible by group or others (mode 0644); run chmod 600 {0}",
            open.display()
        )
    );
    let group = write(dir.path(), "group.private", &party.key_store_pem(), 0o640);
    assert!(message(load_key_store(&group, "").unwrap_err()).contains("mode 0640"));

    let no_key = write(dir.path(), "nokey.private", &party.cert_pem, 0o600);
    let e = message(load_key_store(&no_key, "").unwrap_err());
    assert!(e.contains("nokey.private") && e.contains("no private key found"), "{e}");

    let no_cert = write(dir.path(), "nocert.private", &party.key_pem, 0o600);
    let e = message(load_key_store(&no_cert, "").unwrap_err());
    assert!(e.contains("no certificate found"), "{e}");

    let other = pinned("guest1");
    let two = format!("{}{}", other.key_pem, party.key_store_pem());
    let two = write(dir.path(), "two.private", &two, 0o600);
    assert!(message(load_key_store(&two, "").unwrap_err()).contains("holds 2 private keys"));

    let empty = write(dir.path(), "empty.private", "", 0o600);
    assert!(message(load_key_store(&empty, "").unwrap_err()).contains("no private key found"));
}

#[test]
fn key_certificate_mismatch_is_reported() {
    let a = pinned("guest1");
    let b = pinned("guest2");
    let pem = format!("{}{}", a.key_pem, b.cert_pem);
    let e = parse_key_store(pem.as_bytes(), "").unwrap_err();
    assert!(e.contains("does not match the certificate (CN=guest2)"), "{e}");
}

#[test]
fn key_store_chain_order_is_forgiven() {
    let ca = TestCa::new("test CA");
    let leaf = ca.issue("guest1", Eku::ServerAuth);
    // CA certificate first, then the leaf, then the key.
    let pem = format!("{}{}{}", ca.cert_pem, leaf.cert_pem, leaf.key_pem);
    let m = parse_key_store(pem.as_bytes(), "").unwrap();
    assert_eq!(m.certs.len(), 2);
    assert_eq!(certificate_name(&m.certs[0]).as_deref(), Some("guest1"));
}

#[test]
fn encrypted_pkcs8_key_needs_the_right_password() {
    let dir = tempfile::tempdir().unwrap();
    let party = pinned("guest1");
    let pem = format!("{}{}", encrypt(&party.key_pem, "secret"), party.chain_pem);
    let path = write(dir.path(), "enc.private", &pem, 0o600);
    let m = load_key_store(&path, "secret").unwrap();
    assert!(matches!(m.key, PrivateKeyDer::Pkcs8(_)));
    let e = message(load_key_store(&path, "wrong").unwrap_err());
    assert!(e.contains("enc.private") && e.contains("wrong password"), "{e}");
    let e = message(load_key_store(&path, "").unwrap_err());
    assert!(e.contains("no password was given"), "{e}");
    // The decrypted key really is the certificate's: it handshakes.
    let client = pinned("host1");
    let _ = server_config(m, client.trust()).unwrap();
}

#[test]
fn legacy_encrypted_key_is_explained() {
    let pem = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n";
    let e = parse_key_store(pem.as_bytes(), "x").unwrap_err();
    assert!(e.contains("legacy OpenSSL format"), "{e}");
}

fn openssl(args: &[&str]) -> Option<()> {
    match Command::new("openssl").args(args).output() {
        Ok(out) if out.status.success() => Some(()),
        Ok(out) => panic!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(_) => None,
    }
}

/// Key formats as the openssl command writes them (skipped without openssl).
#[test]
fn openssl_key_formats_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // PBES2 with AES-256-CBC from genpkey, and a -topk8 -v2 re-encryption.
    if openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-aes256",
        "-pass",
        "pass:secret",
        "-out",
        &p("gen.key"),
    ])
    .is_none()
    {
        eprintln!("openssl not found; skipping");
        return;
    }
    openssl(&[
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-noout",
        "-out",
        &p("sec1.key"),
    ])
    .unwrap();
    openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-in",
        &p("sec1.key"),
        "-passout",
        "pass:secret",
        "-out",
        &p("topk8.key"),
    ])
    .unwrap();
    openssl(&["genrsa", "-traditional", "-out", &p("rsa.key"), "2048"]).unwrap();
    // PBKDF2 with HMAC-SHA1 (OpenSSL 1.0's default) is refused, clearly.
    openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-v2prf",
        "hmacWithSHA1",
        "-in",
        &p("sec1.key"),
        "-passout",
        "pass:secret",
        "-out",
        &p("sha1.key"),
    ])
    .unwrap();
    let e = parse_key_store(&std::fs::read(p("sha1.key")).unwrap(), "secret").unwrap_err();
    eprintln!("{e}");
    assert!(e.contains("encryption is not supported"), "{e}");
    for (key, pass) in [
        ("gen.key", "secret"),
        ("sec1.key", ""),
        ("topk8.key", "secret"),
        ("rsa.key", ""),
    ] {
        let cert = format!("{key}.crt");
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-key",
            &p(key),
            "-passin",
            &format!("pass:{pass}"),
            "-subj",
            "/CN=guest1",
            "-days",
            "2",
            "-out",
            &p(&cert),
        ])
        .unwrap();
        let pem = std::fs::read_to_string(p(key)).unwrap() + &std::fs::read_to_string(p(&cert)).unwrap();
        let store = write(dir.path(), &format!("{key}.private"), &pem, 0o600);
        let m = load_key_store(&store, pass).unwrap_or_else(|e| panic!("{key}: {e}"));
        if !pass.is_empty() {
            let e = message(load_key_store(&store, "nope").unwrap_err());
            assert!(e.contains("wrong password"), "{key}: {e}");
        }
        // openssl's self-signed certificates say CA:TRUE: pinned anyway.
        let trust = load_trust_store(&dir.path().join(&cert)).unwrap();
        let client = pinned("host1");
        server_config(m, client.trust()).unwrap();
        client_config(client.material(), trust).unwrap();
    }
}

#[test]
fn trust_store_classifies_and_names_the_file_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let leaf = ca.issue("guest1", Eku::ServerAuth);
    let peer = pinned("host1");
    let pem = format!("{}{}{}", ca.cert_pem, leaf.cert_pem, peer.cert_pem);
    let path = write(dir.path(), "trust.public", &pem, 0o644);
    let t = load_trust_store(&path).unwrap();
    assert_eq!((t.cas.len(), t.pinned.len()), (1, 2));

    let empty = write(dir.path(), "empty.public", "", 0o644);
    let e = message(load_trust_store(&empty).unwrap_err());
    assert!(e.contains("empty.public") && e.contains("no certificate found"), "{e}");

    let missing = dir.path().join("missing.public");
    let e = message(load_trust_store(&missing).unwrap_err());
    assert!(e.contains("missing.public") && e.contains("does not exist"), "{e}");

    let private = write(dir.path(), "oops.public", &peer.key_store_pem(), 0o600);
    let e = message(load_trust_store(&private).unwrap_err());
    assert!(e.contains("holds a private key"), "{e}");

    let garbage = write(
        dir.path(),
        "garbage.public",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        0o644,
    );
    let e = message(load_trust_store(&garbage).unwrap_err());
    assert!(e.contains("not a valid X.509 certificate"), "{e}");
}

#[test]
fn empty_trust_store_makes_no_config() {
    let party = pinned("guest1");
    assert!(server_config(party.material(), TrustStore::default()).is_err());
    assert!(client_config(party.material(), TrustStore::default()).is_err());
}

#[test]
fn install_crypto_provider_is_idempotent() {
    install_crypto_provider();
    install_crypto_provider();
    assert!(CryptoProvider::get_default().is_some());
}
