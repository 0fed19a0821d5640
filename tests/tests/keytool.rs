//! Key stores made by the real Java keytool, with the original guide's exact
//! aliases, passwords and steps ("Key generation on the VM or vPar Host" and
//! "... guest"), used unchanged by the real cmappserver and cmappmgr.
//!
//! Needs `keytool` (Debian's openjdk-17-jre-headless, installed by `.ci/run`);
//! without it the tests fail, naming the package.

use std::path::{Path, PathBuf};
use std::process::Command;

use cmapp_tests::keys::{self, Keys};
use cmapp_tests::mgr::Mgr;
use cmapp_tests::server::Server;

const KEYTOOL: &str = "keytool";

/// Runs keytool in `dir`; panics with its output when it fails.
fn keytool(dir: &Path, args: &[&str]) {
    let out = Command::new(KEYTOOL)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run keytool ({e}): install openjdk-17-jre-headless (.ci/run does)"));
    assert!(
        out.status.success(),
        "keytool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One side's three steps from the guide, run in `dir`:
/// `-genkey` (with `-keyalg`, which a current keytool insists on, and `-dname`
/// instead of the prompts), `-export` to temp.key, `-import -noprompt`.
/// `side` is "client" (the host, password clientpw) or "server" (the guest, serverpw).
fn guide_steps(dir: &Path, side: &str, keyalg: &str, storetype: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    let private = format!("{side}.private");
    let public = format!("{side}.public");
    let alias = format!("{side}private");
    let password = format!("{side}pw");
    let cn = format!("CN={side}-{}", keyalg.to_lowercase());
    let mut genkey = vec![
        "-genkey",
        "-alias",
        &alias,
        "-keystore",
        &private,
        "-storepass",
        &password,
        "-keypass",
        &password,
        "-validity",
        "400",
        "-keyalg",
        keyalg,
        "-dname",
        &cn,
    ];
    let mut import = vec![
        "-import",
        "-noprompt",
        "-alias",
        if side == "client" {
            "clientpublic"
        } else {
            "serverpublic"
        },
        "-keystore",
        &public,
        "-file",
        "temp.key",
        "-storepass",
        "public",
    ];
    if let Some(t) = storetype {
        genkey.extend(["-storetype", t]);
        import.extend(["-storetype", t]);
    }
    keytool(dir, &genkey);
    keytool(
        dir,
        &[
            "-export",
            "-alias",
            &alias,
            "-keystore",
            &private,
            "-file",
            "temp.key",
            "-storepass",
            &password,
        ],
    );
    keytool(dir, &import);
}

/// The host's and a guest's key files, as the guide makes and distributes them.
struct GuideKeys {
    keys: Keys,
    host: PathBuf,
    _tmp: tempfile::TempDir,
}

fn guide_keys(keyalg: &str, storetype: Option<&str>) -> GuideKeys {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    let guest = tmp.path().join("guest");
    guide_steps(&host, "client", keyalg, storetype);
    guide_steps(&guest, "server", keyalg, storetype);
    let keys = keys::from_keygen_dirs(&host, &guest, None);
    GuideKeys { keys, host, _tmp: tmp }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The guide's key files, untouched (mode 0644, default passwords), run a
/// real application end to end: its exit code comes back through cmappmgr.
fn end_to_end(keyalg: &str, storetype: Option<&str>) {
    let g = guide_keys(keyalg, storetype);
    assert_eq!(mode(&g.keys.client_private), 0o644, "keytool writes its files 0644");
    let server = Server::start(&g.host.join("../server-run"), &g.keys, "");
    // The original's cmappmgr.conf, with its empty password lines (defaults apply).
    let conf = keys::manager_conf(
        &g.host,
        "cmappmgr.conf",
        &g.keys.client_private,
        &g.keys.client_trust,
        "keyStorePassword=\ntrustStorePassword=public\n",
    );
    let mut m = Mgr::spawn(&conf, &server.node(), 10.0, &[], &["/bin/sh", "-c", "exit 7"]);
    assert_eq!(m.code(), 7, "{}", m.err.text());
    assert!(m.err.contains("PROGRAM EXIT CODE 7"), "{}", m.err.text());
    // A password-protected key store readable by others is used, with a warning.
    assert!(
        m.err.contains("key store is accessible by group or others (mode 0644)"),
        "{}",
        m.err.text()
    );
    assert!(
        server
            .log
            .contains("key store is accessible by group or others (mode 0644)"),
        "{}",
        server.log.text()
    );
}

#[test]
fn pkcs12_ec_keys_from_the_guide_work() {
    end_to_end("EC", None);
}

#[test]
fn pkcs12_rsa_keys_from_the_guide_work() {
    end_to_end("RSA", None);
}

#[test]
fn jks_ec_keys_from_the_guide_work() {
    end_to_end("EC", Some("JKS"));
}

#[test]
fn jks_rsa_keys_from_the_guide_work() {
    end_to_end("RSA", Some("JKS"));
}

/// Runs cmappmgr once against an address nobody needs to answer: the key
/// material is loaded before any connection.
fn mgr_with(conf: &Path) -> (i32, String) {
    let mut m = Mgr::spawn(conf, "127.0.0.1:9", 2.0, &[], &["/bin/true"]);
    let code = m.code();
    (code, m.err.text())
}

/// `cmappserver --check-config`, and a plain start, with this configuration.
fn server_with(conf: &Path) -> (Option<i32>, Option<i32>, String) {
    let bin = cmapp_tests::bin("cmappserver");
    let check = Command::new(&bin)
        .args(["--check-config", "--conf"])
        .arg(conf)
        .output()
        .unwrap();
    let start = Command::new(&bin).arg("--conf").arg(conf).output().unwrap();
    (
        check.status.code(),
        start.status.code(),
        String::from_utf8_lossy(&check.stderr).into_owned(),
    )
}

#[test]
fn dsa_key_store_is_refused_with_a_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Both sides as the old keytool made them by default: DSA.
    guide_steps(&dir.join("host"), "client", "DSA", None);
    guide_steps(&dir.join("guest"), "server", "DSA", Some("JKS"));
    let keys = keys::from_keygen_dirs(&dir.join("host"), &dir.join("guest"), None);

    let conf = keys::manager_conf(dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    let (code, err) = mgr_with(&conf);
    assert_eq!(code, 78, "{err}");
    for needle in [
        keys.client_private.display().to_string().as_str(),
        "DSA key",
        "TLS 1.3 cannot use",
        "cmappmgr keygen",
        "-keyalg EC",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }

    let server_conf = dir.join("cmappserver.conf");
    std::fs::write(
        &server_conf,
        format!(
            "keyStore={}\ntrustStore={}\nstateDir={}\n",
            keys.server_private.display(),
            keys.server_trust.display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    let (check, start, err) = server_with(&server_conf);
    assert_eq!((check, start), (Some(1), Some(78)), "{err}");
    assert!(err.contains("DSA key") && err.contains("TLS 1.3 cannot use"), "{err}");
}

#[test]
fn wrong_passwords_name_the_file() {
    let g = guide_keys("EC", None);
    let jks = guide_keys("EC", Some("JKS"));
    for (keys, extra, file, which) in [
        (
            &g.keys,
            "keyStorePassword=nope\n",
            &g.keys.client_private,
            "keyStorePassword",
        ),
        (
            &g.keys,
            "trustStorePassword=nope\n",
            &g.keys.client_trust,
            "trustStorePassword",
        ),
        (
            &jks.keys,
            "keyStorePassword=nope\n",
            &jks.keys.client_private,
            "keyStorePassword",
        ),
        (
            &jks.keys,
            "trustStorePassword=nope\n",
            &jks.keys.client_trust,
            "trustStorePassword",
        ),
    ] {
        let conf = keys::manager_conf(&g.host, "wrong.conf", &keys.client_private, &keys.client_trust, extra);
        let (code, err) = mgr_with(&conf);
        assert_eq!(code, 78, "{extra}: {err}");
        let expected = format!("{}: cannot open the store: wrong password ({which})", file.display());
        assert!(err.contains(&expected), "{expected:?} missing from: {err}");
    }
}

/// The trust store may also be the exported certificate itself (temp.key, DER),
/// and a guide-made PKCS#12 store mixes with a PEM one from `keygen`.
#[test]
fn exported_certificate_and_mixed_formats_work() {
    let g = guide_keys("EC", None);
    let tmp = tempfile::tempdir().unwrap();
    let pem = keys::pinned(tmp.path(), "");
    // Guest: PEM from keygen, trusting the host's keytool-exported temp.key.
    let mixed = Keys {
        server_private: pem.server_private.clone(),
        server_public: pem.server_public.clone(),
        server_trust: g.host.join("temp.key"),
        client_private: g.keys.client_private.clone(),
        client_public: g.keys.client_public.clone(),
        client_trust: pem.server_public.clone(),
    };
    let server = Server::start(&tmp.path().join("run"), &mixed, "");
    let conf = keys::manager_conf(
        tmp.path(),
        "cmappmgr.conf",
        &mixed.client_private,
        &mixed.client_trust,
        "",
    );
    let mut m = Mgr::spawn(&conf, &server.node(), 10.0, &[], &["/bin/sh", "-c", "exit 3"]);
    assert_eq!(m.code(), 3, "{}", m.err.text());
}
