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
use rustls_pki_types::{ServerName, UnixTime};
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
        parse_trust_store(self.cert_pem.as_bytes(), "").unwrap()
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
        parse_trust_store(self.cert_pem.as_bytes(), "").unwrap()
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
    let trust = parse_trust_store(trust_pem.as_bytes(), "").unwrap();
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

/// Every kind of handshake failure gets its own sentence, with the rustls
/// error after it, and only those retrying cannot fix count as auth failures.
#[test]
fn each_handshake_failure_is_explained_and_classified() {
    use rustls::AlertDescription as A;
    let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    let cert = |e: CertificateError| tls(rustls::Error::InvalidCertificate(e));
    let mismatch = CertificateError::Other(rustls::OtherError(Arc::new(super::verify::KeyMismatch)));
    let other = CertificateError::Other(rustls::OtherError(Arc::new(io::Error::other("x"))));
    let cases: Vec<(io::Error, &str, bool)> = vec![
        (
            io::Error::from(io::ErrorKind::ConnectionReset),
            "closed during the TLS handshake",
            false,
        ),
        (
            io::Error::from(io::ErrorKind::BrokenPipe),
            "closed during the TLS handshake",
            false,
        ),
        (
            io::Error::from(io::ErrorKind::TimedOut),
            "the TLS handshake timed out",
            false,
        ),
        (
            io::Error::from(io::ErrorKind::ConnectionRefused),
            "the TLS handshake failed (",
            false,
        ),
        (
            cert(CertificateError::NotValidForName),
            "does not carry the name we connected to",
            true,
        ),
        (
            cert(CertificateError::Expired),
            "the peer's certificate has expired",
            true,
        ),
        (
            cert(CertificateError::NotValidYet),
            "not valid yet (check both clocks)",
            true,
        ),
        (cert(CertificateError::InvalidPurpose), "not made for this use", true),
        (
            cert(CertificateError::BadEncoding),
            "the peer's certificate is malformed",
            true,
        ),
        (cert(mismatch), "does not hold its private key", true),
        (cert(other), "the peer's certificate is not trusted", true),
        (
            cert(CertificateError::BadSignature),
            "does not verify (a forged or corrupted",
            true,
        ),
        (
            cert(CertificateError::UnknownIssuer),
            "the peer's certificate is not trusted",
            true,
        ),
        (
            tls(rustls::Error::NoCertificatesPresented),
            "presented no certificate",
            true,
        ),
        (
            tls(rustls::Error::AlertReceived(A::ProtocolVersion)),
            "TLS 1.3 is required on both sides",
            true,
        ),
        (
            tls(rustls::Error::AlertReceived(A::HandshakeFailure)),
            "the peer refused the handshake",
            true,
        ),
        (
            tls(rustls::Error::AlertReceived(A::UnknownCA)),
            "the peer rejected our certificate (UnknownCA)",
            true,
        ),
        (
            tls(rustls::Error::AlertReceived(A::DecryptError)),
            "the peer rejected our certificate",
            true,
        ),
        (
            tls(rustls::Error::AlertReceived(A::InternalError)),
            "the TLS handshake failed (",
            false,
        ),
        (
            tls(rustls::Error::NoApplicationProtocol),
            "no common ALPN protocol",
            true,
        ),
        (
            tls(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)),
            "our private key does not match our certificate",
            true,
        ),
        (
            tls(rustls::Error::UnsupportedNameType),
            "the TLS handshake failed (",
            true,
        ),
        (tls(rustls::Error::DecryptError), "the TLS handshake failed (", false),
    ];
    for (err, hint, auth) in cases {
        let text = describe_handshake_error(&err);
        assert!(text.starts_with(hint) || text.contains(hint), "{err:?}: {text}");
        if let Some(tls) = rustls_error(&err) {
            assert!(text.ends_with(&format!("({tls})")), "{text}");
        }
        assert_eq!(is_auth_failure(&err), auth, "{err:?}");
    }
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
    let info = pkcs8::PrivateKeyInfoRef::try_from(der.as_slice()).unwrap();
    let params =
        pkcs8::pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(2048, b"saltsalt", [7u8; 16]).unwrap();
    let doc = info.encrypt_with_params(params, password).unwrap();
    doc.to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .unwrap()
        .to_string()
}

#[test]
fn a_trust_store_others_can_write_is_refused_and_a_readable_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let cert = pinned("host1").cert_pem;
    for (mode, refused) in [
        (0o644, None),
        (0o444, None),
        (0o664, Some("writable by its group (mode 0664)")),
        (0o646, Some("writable by others (mode 0646)")),
    ] {
        let path = write(dir.path(), &format!("t{mode:o}.public"), &cert, mode);
        match (load_trust_store(&path, ""), refused) {
            (Ok(_), None) => {}
            (Err(e), Some(why)) => {
                let e = message(e);
                assert!(e.starts_with(&path.display().to_string()) && e.contains(why), "{e}");
            }
            (r, _) => panic!("mode {mode:o}: {:?}", r.map(|_| ())),
        }
    }
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
    let e = parse_key_store(pem.as_bytes(), "").unwrap_err().to_string();
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
    let e = parse_key_store(pem.as_bytes(), "x").unwrap_err().to_string();
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
    let e = parse_key_store(&std::fs::read(p("sha1.key")).unwrap(), "secret")
        .unwrap_err()
        .to_string();
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
        let trust = load_trust_store(&dir.path().join(&cert), "").unwrap();
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
    let t = load_trust_store(&path, "").unwrap();
    assert_eq!((t.cas.len(), t.pinned.len()), (1, 2));

    let empty = write(dir.path(), "empty.public", "", 0o644);
    let e = message(load_trust_store(&empty, "").unwrap_err());
    assert!(e.contains("empty.public") && e.contains("no certificate found"), "{e}");

    let missing = dir.path().join("missing.public");
    let e = message(load_trust_store(&missing, "").unwrap_err());
    assert!(e.contains("missing.public") && e.contains("does not exist"), "{e}");

    let private = write(dir.path(), "oops.public", &peer.key_store_pem(), 0o600);
    let e = message(load_trust_store(&private, "").unwrap_err());
    assert!(e.contains("holds a private key"), "{e}");

    let garbage = write(
        dir.path(),
        "garbage.public",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        0o644,
    );
    let e = message(load_trust_store(&garbage, "").unwrap_err());
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

// ---- Java key stores (PKCS#12 and JKS), without keytool ----
// tests/tests/keytool.rs runs the real keytool; these cover the edges.

fn key_der(party: &Party) -> Vec<u8> {
    pkcs8::der::pem::decode_vec(party.key_pem.as_bytes()).unwrap().1
}

fn cert_der(party: &Party) -> Vec<u8> {
    CertificateDer::from_pem_slice(party.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// A PKCS#12 key store (with `key`) or trust store (without), as keytool writes them.
fn pkcs12(party: &Party, with_key: bool, password: &str) -> Vec<u8> {
    use p12_keystore::{KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let cert = p12_keystore::Certificate::from_der(&cert_der(party)).unwrap();
    let mut ks = KeyStore::new();
    if with_key {
        let key = PrivateKey::from_der(&key_der(party)).unwrap();
        let chain = PrivateKeyChain::new(vec![1u8, 2, 3, 4], key, [cert]);
        ks.add_entry("serverprivate", KeyStoreEntry::PrivateKeyChain(chain));
    } else {
        ks.add_entry("clientpublic", KeyStoreEntry::Certificate(cert));
    }
    ks.writer(password).write().unwrap()
}

fn sha1(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().to_vec()
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let n = content.len();
    let mut v = vec![tag];
    match n {
        0..=127 => v.push(n as u8),
        128..=255 => v.extend([0x81, n as u8]),
        _ => v.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    v.extend(content);
    v
}

fn utf16(password: &str) -> Vec<u8> {
    password.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// Sun's KeyProtector, as JKS stores a private key.
fn jks_protect(plain: &[u8], password: &str) -> Vec<u8> {
    let pw = utf16(password);
    let salt = [7u8; 20];
    let mut data = salt.to_vec();
    let mut block = sha1(&[&pw, &salt]);
    for chunk in plain.chunks(20) {
        data.extend(chunk.iter().zip(&block).map(|(a, b)| a ^ b));
        block = sha1(&[&pw, &block]);
    }
    data.extend(sha1(&[&pw, plain]));
    let oid = [0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x2a, 0x02, 0x11, 0x01, 0x01];
    let algorithm = tlv(0x30, &[&oid[..], &[0x05, 0x00]].concat());
    tlv(0x30, &[algorithm, tlv(0x04, &data)].concat())
}

fn utf(s: &str) -> Vec<u8> {
    [&(s.len() as u16).to_be_bytes()[..], s.as_bytes()].concat()
}

/// A JKS file as keytool -storetype JKS writes it.
fn jks(party: &Party, with_key: bool, store_password: &str, key_password: &str) -> Vec<u8> {
    let cert = cert_der(party);
    let cert_field = [utf("X.509"), (cert.len() as u32).to_be_bytes().to_vec(), cert].concat();
    let mut body = [0xFEED_FEEDu32.to_be_bytes(), 2u32.to_be_bytes(), 1u32.to_be_bytes()].concat();
    if with_key {
        let protected = jks_protect(&key_der(party), key_password);
        body.extend(1u32.to_be_bytes());
        body.extend(utf("serverprivate"));
        body.extend(0u64.to_be_bytes());
        body.extend((protected.len() as u32).to_be_bytes());
        body.extend(protected);
        body.extend(1u32.to_be_bytes());
        body.extend(cert_field);
    } else {
        body.extend(2u32.to_be_bytes());
        body.extend(utf("clientpublic"));
        body.extend(0u64.to_be_bytes());
        body.extend(cert_field);
    }
    let digest = sha1(&[&utf16(store_password), b"Mighty Aphrodite", &body]);
    [body, digest].concat()
}

/// Re-signs a hand-edited JKS body, so that only its structure is wrong.
fn jks_resign(body: &[u8], password: &str) -> Vec<u8> {
    [body.to_vec(), sha1(&[&utf16(password), b"Mighty Aphrodite", body])].concat()
}

/// A store of either Java format: key store, trust store, and how each is written.
type Maker = fn(&Party, bool, &str) -> Vec<u8>;

fn jks_same_password(party: &Party, with_key: bool, password: &str) -> Vec<u8> {
    jks(party, with_key, password, password)
}

#[tokio::test]
async fn java_key_and_trust_stores_load_and_handshake() {
    for (name, make) in [("PKCS#12", pkcs12 as Maker), ("JKS", jks_same_password as Maker)] {
        let server = pinned("guest1");
        let client = pinned("host1");
        let key = make(&server, true, "serverpw");
        let trust = make(&client, false, "public");
        let m = parse_key_store(&key, "serverpw").unwrap_or_else(|e| panic!("{name}: {e}"));
        let t = parse_trust_store(&trust, "public").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((t.pinned.len(), t.cas.len()), (1, 0), "{name}");
        let s = server_config(m, t).unwrap();
        let c = client_config(client.material(), server.trust()).unwrap();
        let (s_res, c_res) = handshake(s, c, "guest1").await;
        assert_eq!(s_res.unwrap(), "host1", "{name}");
        assert_eq!(c_res.unwrap(), "guest1", "{name}");

        let e = parse_key_store(&key, "nope").unwrap_err().to_string();
        assert!(e.contains("wrong password (keyStorePassword)"), "{name}: {e}");
        let e = parse_key_store(&key, "").unwrap_err().to_string();
        assert!(e.contains("none was given (keyStorePassword)"), "{name}: {e}");
        let e = parse_trust_store(&trust, "nope").unwrap_err().to_string();
        assert!(e.contains("wrong password (trustStorePassword)"), "{name}: {e}");
        // The two files swapped in the configuration.
        let e = parse_trust_store(&key, "serverpw").unwrap_err().to_string();
        assert!(e.contains("holds a private key"), "{name}: {e}");
        let e = parse_key_store(&trust, "public").unwrap_err().to_string();
        assert!(
            e.contains(&format!("no private key found in this {name} store")) && e.contains(".public file"),
            "{name}: {e}"
        );
    }
}

#[test]
fn ec_keys_without_their_public_key_load() {
    // Java writes EC keys without the optional public key; ring needs it.
    let party = pinned("guest1");
    let full = key_der(&party);
    let info = pkcs8::PrivateKeyInfoRef::try_from(full.as_slice()).unwrap();
    let secret = p256::SecretKey::from_sec1_der(info.private_key.as_bytes()).unwrap();
    let scalar = secret.to_bytes();
    // ECPrivateKey { version 1, privateKey } only.
    let sec1 = tlv(0x30, &[&[0x02, 0x01, 0x01][..], &tlv(0x04, &scalar)].concat());
    let algorithm = pkcs8::der::Encode::to_der(&info.algorithm).unwrap();
    let bare = tlv(0x30, &[&[0x02, 0x01, 0x00][..], &algorithm, &tlv(0x04, &sec1)].concat());
    let pem = pkcs8::der::pem::encode_string("PRIVATE KEY", pkcs8::LineEnding::LF, &bare).unwrap();
    let m = parse_key_store(format!("{pem}{}", party.cert_pem).as_bytes(), "").unwrap();
    server_config(m, pinned("host1").trust()).unwrap();
}

#[test]
fn jks_edge_cases_are_explained() {
    let party = pinned("guest1");
    let e = parse_key_store(&jks(&party, true, "serverpw", "other"), "serverpw")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("its private key has another password (keytool -keypass)"),
        "{e}"
    );

    // A damaged byte fails the integrity check, like a wrong password.
    let mut damaged = jks(&party, true, "serverpw", "serverpw");
    damaged[40] ^= 1;
    let e = parse_key_store(&damaged, "serverpw").unwrap_err().to_string();
    assert!(
        e.contains("wrong password (keyStorePassword), or the file is damaged"),
        "{e}"
    );

    // Well signed but lying about lengths: an error, no panic, no huge allocation.
    let good = jks(&party, false, "public", "public");
    let body = &good[..good.len() - 20];
    for cut in 0..body.len() {
        let e = parse_trust_store(&jks_resign(&body[..cut.max(4)], "public"), "public");
        assert!(e.is_err(), "cut at {cut}");
    }
    let mut huge = body.to_vec();
    let at = body.len() - cert_der(&party).len() - 4;
    huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    let e = parse_trust_store(&jks_resign(&huge, "public"), "public")
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated or damaged"), "{e}");

    let jceks = [0xCE, 0xCE, 0xCE, 0xCE, 0, 0, 0, 2];
    let e = parse_key_store(&jceks, "x").unwrap_err().to_string();
    assert!(e.contains("JCEKS") && e.contains("-deststoretype pkcs12"), "{e}");
}

#[test]
fn exported_der_certificate_is_a_trust_store_only() {
    let party = pinned("host1");
    let der = cert_der(&party);
    let t = parse_trust_store(&der, "public").unwrap();
    assert_eq!(t.pinned.len(), 1);
    let e = parse_key_store(&der, "clientpw").unwrap_err().to_string();
    assert!(e.contains("single certificate") && e.contains("keytool -export"), "{e}");
}

#[test]
fn dsa_key_is_refused_with_a_way_out() {
    // A PKCS#8 key with the DSA algorithm (its parameters do not matter here).
    let oid = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];
    let dsa = tlv(
        0x30,
        &[
            &[0x02, 0x01, 0x00][..],
            &tlv(0x30, &oid),
            &tlv(0x04, &[0x02, 0x01, 0x05]),
        ]
        .concat(),
    );
    let pem = pkcs8::der::pem::encode_string("PRIVATE KEY", pkcs8::LineEnding::LF, &dsa).unwrap();
    let party = pinned("guest1");
    let e = parse_key_store(format!("{pem}{}", party.cert_pem).as_bytes(), "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("DSA key") && e.contains("TLS 1.3 cannot use") && e.contains("keygen") && e.contains("-keyalg EC"),
        "{e}"
    );
}

#[test]
fn mode_policy_warns_for_encrypted_keys_and_refuses_plain_ones() {
    let dir = tempfile::tempdir().unwrap();
    let party = pinned("guest1");
    let write_bytes = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    };
    // keytool's files: 0644, key encrypted with the store password: used.
    let p12 = write_bytes("p12.private", &pkcs12(&party, true, "serverpw"));
    load_key_store(&p12, "serverpw").unwrap();
    let jks_file = write_bytes("jks.private", &jks(&party, true, "serverpw", "serverpw"));
    load_key_store(&jks_file, "serverpw").unwrap();
    let enc = format!("{}{}", encrypt(&party.key_pem, "secret"), party.chain_pem);
    let enc = write_bytes("enc.private", enc.as_bytes());
    load_key_store(&enc, "secret").unwrap();
    // Not encrypted: refused, whatever the format.
    let plain = write_bytes("plain.private", party.key_store_pem().as_bytes());
    let e = message(load_key_store(&plain, "").unwrap_err());
    assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
    let open_p12 = write_bytes("open.p12", &pkcs12(&party, true, ""));
    let e = message(load_key_store(&open_p12, "").unwrap_err());
    assert!(e.contains("mode 0644"), "{e}");
    // Encrypted but writable by group or others: refused.
    for mode in [0o664, 0o646] {
        std::fs::set_permissions(&p12, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = message(load_key_store(&p12, "serverpw").unwrap_err());
        assert!(
            e.contains("key store is writable by") && e.contains(&format!("(mode {mode:04o})")),
            "{e}"
        );
    }
}

// ---- names, validity, expiry warnings, file policy ----

fn der_of(party: &Party) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(party.cert_pem.as_bytes()).unwrap()
}

#[test]
fn a_certificate_is_named_by_its_cn_then_its_alternative_names_once_each() {
    let mut p = params("guest1");
    p.subject_alt_names = vec![
        rcgen::SanType::DnsName("guest1".try_into().unwrap()),
        rcgen::SanType::DnsName("g1.example".try_into().unwrap()),
        rcgen::SanType::URI("spiffe://cluster/guest1".try_into().unwrap()),
        rcgen::SanType::IpAddress("10.1.2.3".parse().unwrap()),
        rcgen::SanType::IpAddress("fd00::7".parse().unwrap()),
    ];
    let der = der_of(&self_signed_with(p));
    assert_eq!(
        certificate_names(&der, false),
        ["guest1", "g1.example", "10.1.2.3", "fd00::7"]
    );
    assert_eq!(
        certificate_names(&der, true),
        ["guest1", "g1.example", "spiffe://cluster/guest1", "10.1.2.3", "fd00::7"]
    );
    assert_eq!(certificate_name(&der).as_deref(), Some("guest1"));
    assert!(certificate_names(b"not a certificate", true).is_empty());
    assert_eq!(subject_of(&der), "CN=guest1");
    assert_eq!(
        subject_of(&CertificateDer::from(vec![1, 2, 3])),
        "an unparsable certificate"
    );
}

/// A certificate valid from midnight UTC of one day to midnight of another,
/// with those two instants in seconds since the epoch.
fn valid_between(from: (i32, u8, u8), to: (i32, u8, u8)) -> (CertificateDer<'static>, i64, i64) {
    let mut p = params("guest1");
    p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
    let der = der_of(&self_signed_with(p));
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    let (a, b) = (
        x509.validity().not_before.timestamp(),
        x509.validity().not_after.timestamp(),
    );
    (der.clone(), a, b)
}

#[test]
fn a_certificate_is_valid_from_its_first_second_to_its_last() {
    let (cert, from, to) = valid_between((2027, 1, 1), (2030, 3, 17));
    let at = |s: i64| UnixTime::since_unix_epoch(Duration::from_secs(s as u64));
    for ok in [from, from + 1, to - 1, to] {
        assert!(super::verify::check_validity(&cert, at(ok)).is_ok(), "{ok}");
    }
    assert!(matches!(
        super::verify::check_validity(&cert, at(from - 1)),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYetContext { .. }
        ))
    ));
    assert!(matches!(
        super::verify::check_validity(&cert, at(to + 1)),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ExpiredContext { .. }
        ))
    ));
    assert!(matches!(
        super::verify::check_validity(&CertificateDer::from(vec![0x30, 0]), at(0)),
        Err(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
    ));
}

#[test]
fn certificates_ending_within_thirty_days_are_warned_about_once_each() {
    let day = 86_400;
    let (cert, _, end) = valid_between((2027, 1, 1), (2030, 3, 17));
    let path = Path::new("/etc/cmapp/server.private");
    let warn = |left: i64| {
        let now = std::time::UNIX_EPOCH + Duration::from_secs((end - left) as u64);
        expiry_warnings("keyStore", path, std::slice::from_ref(&cert), now)
    };
    assert_eq!(WARN_BEFORE, Duration::from_secs(30 * day as u64));
    assert!(warn(30 * day + 1).is_empty());
    let w = warn(30 * day);
    assert_eq!(w.len(), 1);
    assert!(
        w[0].starts_with(
            "the certificate of guest1 in keyStore /etc/cmapp/server.private expires on 2030-03-17T00:00:00Z, in 30 day(s)"
        ),
        "{}",
        w[0]
    );
    assert!(warn(10 * day + 1)[0].contains("in 11 day(s)"));
    assert!(warn(10 * day)[0].contains("in 10 day(s)"));
    assert!(warn(1)[0].contains("in 1 day(s)"));
    for gone in [0, -1, -400 * day] {
        let w = warn(gone);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("expired on 2030-03-17T00:00:00Z: make a new one"),
            "{}",
            w[0]
        );
    }
    let several = [cert.clone(), CertificateDer::from(vec![1, 2]), cert.clone()];
    let now = std::time::UNIX_EPOCH + Duration::from_secs(end as u64);
    assert_eq!(
        expiry_warnings("trustStore", path, &several, now).len(),
        2,
        "one per certificate, garbage skipped"
    );
}

#[test]
fn a_key_store_is_refused_by_mode_unless_only_readable_and_password_protected() {
    let p = Path::new("/k.private");
    for (mode, encrypted, refused) in [
        (0o600, false, None),
        (0o400, false, None),
        (0o100600, false, None),
        (0o4700, false, None),
        (
            0o640,
            false,
            Some("private key is accessible by group or others (mode 0640)"),
        ),
        (
            0o604,
            false,
            Some("private key is accessible by group or others (mode 0604)"),
        ),
        (0o610, false, Some("(mode 0610)")),
        (0o644, true, None),
        (0o640, true, None),
        (0o660, true, Some("key store is writable by its group (mode 0660)")),
        (0o606, true, Some("key store is writable by others (mode 0606)")),
        (0o622, true, Some("key store is writable by others (mode 0622)")),
    ] {
        match (super::files::key_store_mode(p, mode, encrypted), refused) {
            (Ok(()), None) => {}
            (Err(e), Some(why)) => {
                let e = message(e);
                assert!(
                    e.starts_with("/k.private: ") && e.contains(why) && e.contains("chmod 600 /k.private"),
                    "{e}"
                );
            }
            (r, _) => panic!("{mode:o} {encrypted}: {r:?}"),
        }
    }
}

#[test]
fn store_files_must_be_regular_files_of_at_most_4_mib() {
    let dir = tempfile::tempdir().unwrap();
    let e = message(load_trust_store(dir.path(), "").unwrap_err());
    assert!(e.ends_with("the trust store is not a regular file"), "{e}");
    let e = message(load_key_store(dir.path(), "").unwrap_err());
    assert!(e.ends_with("the key store is not a regular file"), "{e}");

    let cert = pinned("host1").cert_pem;
    // PEM allows text around its sections: pad to exactly the limit.
    let exact = format!("{cert}{}", "x".repeat((4 << 20) - cert.len()));
    let path = write(dir.path(), "exact.public", &exact, 0o644);
    assert_eq!(load_trust_store(&path, "").unwrap().pinned.len(), 1);
    let over = write(dir.path(), "over.public", &format!("{exact}x"), 0o644);
    let e = message(load_trust_store(&over, "").unwrap_err());
    assert!(
        e.contains("over.public") && e.ends_with("the trust store is larger than 4 MiB"),
        "{e}"
    );

    let e = message(load_key_store(&dir.path().join("none.private"), "").unwrap_err());
    assert!(e.ends_with("key store file does not exist"), "{e}");
    let e = message(read_key_file(&dir.path().join("none.private")).unwrap_err());
    assert!(e.ends_with("key store file does not exist"), "{e}");
    let denied = io::Error::from(io::ErrorKind::PermissionDenied);
    assert_eq!(
        super::files::read_error("trust store", &denied),
        "cannot read the trust store: permission denied"
    );
    let other = io::Error::other("disk on fire");
    assert_eq!(
        super::files::read_error("key store", &other),
        "cannot read the key store: disk on fire"
    );
}

/// A JKS body (without its digest) of `version` holding `entries`, each
/// already encoded (tag, alias, date, then the entry's fields).
fn jks_body(version: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut body = [
        0xFEED_FEEDu32.to_be_bytes(),
        version.to_be_bytes(),
        (entries.len() as u32).to_be_bytes(),
    ]
    .concat();
    for e in entries {
        body.extend(e);
    }
    body
}

/// A trusted-certificate entry; version 1 stores no certificate type.
fn jks_trusted(version: u32, kind: &str, cert: &[u8]) -> Vec<u8> {
    let mut e = [2u32.to_be_bytes().to_vec(), utf("peer"), 0u64.to_be_bytes().to_vec()].concat();
    if version == 2 {
        e.extend(utf(kind));
    }
    e.extend((cert.len() as u32).to_be_bytes());
    e.extend(cert);
    e
}

#[test]
fn jks_stores_of_either_version_load_and_every_malformation_is_named() {
    let party = pinned("host1");
    let cert = cert_der(&party);
    let open = |body: Vec<u8>| parse_trust_store(&jks_resign(&body, "public"), "public");
    for version in [1, 2] {
        let t = open(jks_body(version, &[jks_trusted(version, "X.509", &cert)])).unwrap();
        assert_eq!(t.pinned, [CertificateDer::from(cert.clone())], "version {version}");
    }
    let e = open(jks_body(3, &[jks_trusted(2, "X.509", &cert)])).unwrap_err();
    assert!(matches!(e, StoreError::JksVersion { version: 3 }), "{e:?}");
    let e = open(jks_body(0, &[jks_trusted(2, "X.509", &cert)])).unwrap_err();
    assert!(matches!(e, StoreError::JksVersion { version: 0 }), "{e:?}");
    let e = open(jks_body(2, &[jks_trusted(2, "PGP", &cert)])).unwrap_err();
    assert!(
        matches!(&e, StoreError::JksCertificateType { kind } if kind == "PGP"),
        "{e:?}"
    );
    let mut unknown = jks_trusted(2, "X.509", &cert);
    unknown[..4].copy_from_slice(&3u32.to_be_bytes());
    let e = open(jks_body(2, &[unknown])).unwrap_err();
    assert!(matches!(e, StoreError::JksEntryType { tag: 3 }), "{e:?}");
    let mut trailing = jks_body(2, &[jks_trusted(2, "X.509", &cert)]);
    trailing.push(0);
    assert!(matches!(open(trailing), Err(StoreError::JksTrailingData)));
    let e = parse_trust_store(&[0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2], "public").unwrap_err();
    assert!(matches!(e, StoreError::JksTruncated), "{e:?}");
}

#[test]
fn a_jks_whose_digest_does_not_match_is_refused_naming_the_file_and_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let party = pinned("host1");
    let mut store = jks(&party, false, "public", "public");
    let last = store.len() - 1;
    store[last] ^= 1;
    let path = dir.path().join("peer.jks");
    std::fs::write(&path, &store).unwrap();
    let e = message(load_trust_store(&path, "public").unwrap_err());
    assert!(
        e.starts_with(&format!("{}: ", path.display()))
            && e.contains("cannot open the store: wrong password (trustStorePassword), or the file is damaged"),
        "{e}"
    );
    // Any password in any script is hashed as Java does (UTF-16, big-endian).
    let store = jks(&party, false, "pässwörd€", "x");
    assert_eq!(parse_trust_store(&store, "pässwörd€").unwrap().pinned.len(), 1);
    assert!(parse_trust_store(&store, "passwort").is_err());
}

#[test]
fn a_jks_private_key_protected_otherwise_or_damaged_is_refused() {
    let party = pinned("guest1");
    let cert = cert_der(&party);
    let key_entry = |protected: Vec<u8>| {
        let mut e = [
            1u32.to_be_bytes().to_vec(),
            utf("serverprivate"),
            0u64.to_be_bytes().to_vec(),
        ]
        .concat();
        e.extend((protected.len() as u32).to_be_bytes());
        e.extend(protected);
        e.extend(1u32.to_be_bytes());
        e.extend([utf("X.509"), (cert.len() as u32).to_be_bytes().to_vec(), cert.clone()].concat());
        e
    };
    let open = |protected: Vec<u8>| {
        let body = jks_body(2, &[key_entry(protected)]);
        parse_key_store(&jks_resign(&body, "pw"), "pw").unwrap_err()
    };
    // Another algorithm's OID (PBE with SHA-1 and 3DES, 1.2.840.113549.1.12.1.3).
    let oid = [0x06, 0x0a, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x03];
    let algorithm = tlv(0x30, &[&oid[..], &[0x05, 0x00]].concat());
    let other = tlv(0x30, &[algorithm, tlv(0x04, &[0u8; 64])].concat());
    let e = open(other);
    assert!(
        matches!(&e, StoreError::JksKeyAlgorithm { oid: Some(oid) } if oid == "1.2.840.113549.1.12.1.3"),
        "{e:?}"
    );
    // The protector's OID but fewer bytes than its salt and check.
    let good = jks_protect(&key_der(&party), "pw");
    let short = {
        let oid = [0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x2a, 0x02, 0x11, 0x01, 0x01];
        let algorithm = tlv(0x30, &[&oid[..], &[0x05, 0x00]].concat());
        tlv(0x30, &[algorithm, tlv(0x04, &[0u8; 39])].concat())
    };
    for damaged in [short, vec![0x04, 0x01, 0x00], good[..good.len() - 1].to_vec()] {
        let e = open(damaged);
        assert!(matches!(e, StoreError::JksKeyDamaged), "{e:?}");
    }
    // Exactly salt and check, no key: decrypts to nothing, which is no key.
    let empty = jks_protect(&[], "pw");
    let e = open(empty);
    assert!(
        !matches!(e, StoreError::JksKeyDamaged | StoreError::JksKeyPassword { .. }),
        "{e:?}"
    );
}

#[test]
fn a_bad_certificate_is_named_by_its_place_in_the_file() {
    let party = pinned("guest1");
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let trust = format!("{}{garbage}", party.cert_pem);
    let e = parse_trust_store(trust.as_bytes(), "").unwrap_err();
    assert!(matches!(e, StoreError::Certificate { number: 2, .. }), "{e:?}");
    let key = format!("{}{garbage}", party.key_store_pem());
    let e = parse_key_store(key.as_bytes(), "").unwrap_err();
    assert!(matches!(e, StoreError::Certificate { number: 2, .. }), "{e:?}");
    // A PEM file without a key says which sections it looked for.
    let e = parse_key_store(party.cert_pem.as_bytes(), "").unwrap_err();
    assert!(matches!(e, StoreError::NoKeyInPem), "{e:?}");
}
