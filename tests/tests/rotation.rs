//! Key rotation without downtime (README, "Rotating keys"): SIGHUP makes
//! cmappserver re-read its configuration and key material; new connections
//! use the new material, established sessions and monitored processes carry
//! on; a bad file on reload leaves the old material in force. cmappmgr reads
//! its material at each connection attempt. Certificate expiry warnings.

use std::path::{Path, PathBuf};

use cmapp_tests::keys::{manager_conf, Keys};
use cmapp_tests::mgr::{pid_in, Mgr};
use cmapp_tests::server::Server;
use cmapp_tests::{alive, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Managers attached throughout the rotation, each with its own process.
const MANAGERS: usize = 30;

fn private(path: &Path, pem: &str) {
    certs::write_private(path, pem, true).unwrap();
}

fn public(path: &Path, pems: &[&str]) {
    certs::write_public(path, &pems.concat(), true).unwrap();
}

fn check(conf: &Path, node: &str) -> (i32, String) {
    let (code, m) = Mgr::run_in(None, &["check", "-node", node, "--conf", conf.to_str().unwrap()], WAIT);
    (code, m.err.text())
}

fn hup(server: &Server) {
    kill(Pid::from_raw(server.pid() as i32), Signal::SIGHUP).unwrap();
}

#[test]
fn rotating_the_guests_key_then_the_hosts_under_30_attached_managers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let role = |r, n: &str| certs::self_signed(r, &[n.to_string()]).unwrap();
    let (s1, s2) = (
        role(certs::Role::Server, "guest-old"),
        role(certs::Role::Server, "guest-new"),
    );
    let (c1, c2) = (
        role(certs::Role::Client, "host-old"),
        role(certs::Role::Client, "host-new"),
    );
    let p = |n: &str| -> PathBuf { dir.join(n) };

    // The guest runs with S1 and trusts C1; the hosts already trust S1 and
    // S2 (step 1 of the procedure: distribute the guest's new certificate).
    private(&p("server.private"), &s1.private_pem);
    public(&p("client.public"), &[&c1.public_pem]);
    private(&p("client.private"), &c1.private_pem);
    public(&p("servers.public"), &[&s1.public_pem, &s2.public_pem]);
    let keys = Keys {
        server_private: p("server.private"),
        server_public: PathBuf::new(),
        client_private: p("client.private"),
        client_public: PathBuf::new(),
        server_trust: p("client.public"),
        client_trust: p("servers.public"),
    };
    let mut server = Server::start(&dir.join("guest"), &keys, "maxProcesses=40\n");
    let node = server.node();
    let conf = manager_conf(dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    // Probes of the material in force: trusting only one server certificate.
    public(&p("s1.public"), &[&s1.public_pem]);
    public(&p("s2.public"), &[&s2.public_pem]);
    let only_s1 = manager_conf(dir, "only-s1.conf", &keys.client_private, &p("s1.public"), "");
    let only_s2 = manager_conf(dir, "only-s2.conf", &keys.client_private, &p("s2.public"), "");

    let mut managers: Vec<Mgr> = (0..MANAGERS)
        .map(|i| {
            let name = format!("svc{i}");
            Mgr::spawn(&conf, &node, 60.0, &["-name", &name], &["/bin/sleep", "600"])
        })
        .collect();
    let pids: Vec<u32> = managers
        .iter()
        .map(|m| pid_in(&m.expect_line("started", WAIT)))
        .collect();

    // A bad key store: refused, and the old material stays in force.
    std::fs::write(p("server.private"), "not a key\n").unwrap();
    hup(&server);
    server
        .log
        .wait_for("reload refused", WAIT)
        .expect("the bad file refused");
    assert!(server.log.text().contains("keyStore"), "{}", server.log.text());
    assert_eq!(check(&only_s1, &node).0, 0, "the old key still serves");

    // The guest's new key: new connections get it.
    private(&p("server.private"), &s2.private_pem);
    hup(&server);
    server.log.wait_for("reloaded", WAIT).expect("reloaded");
    let (code, err) = check(&only_s1, &node);
    assert_eq!(code, 77, "the old key is gone: {err}");
    assert_eq!(check(&only_s2, &node).0, 0);

    // The hosts' key: the guest trusts C1 and C2, the hosts switch to C2,
    // their next connection uses it (forced here by a maintenance restart of
    // cmappserver), then the guest drops C1.
    public(&p("client.public"), &[&c1.public_pem, &c2.public_pem]);
    hup(&server);
    server.log.wait_for_nth("reloaded", 2, WAIT).expect("reloaded");
    private(&p("client.private"), &c2.private_pem);
    server.term();
    server.restart(None);
    for m in &managers {
        m.expect_line("re-attached to", WAIT);
    }
    public(&p("client.public"), &[&c2.public_pem]);
    hup(&server);
    server.log.wait_for("reloaded", WAIT).expect("reloaded");
    private(&p("c1.private"), &c1.private_pem);
    let old_host = manager_conf(dir, "old-host.conf", &p("c1.private"), &keys.client_trust, "");
    assert_eq!(check(&old_host, &node).0, 77, "the hosts' old key is refused");
    // Every manager reconnects with C2 (else it would exit 77).
    server.term();
    server.restart(None);
    for m in &managers {
        assert!(
            m.err.wait_for_nth("re-attached to", 2, WAIT).is_some(),
            "{}",
            m.err.text()
        );
    }
    for (m, pid) in managers.iter_mut().zip(&pids) {
        assert!(m.running(), "no manager exited: {}", m.err.text());
        assert!(alive(*pid), "no application restarted");
    }
}

#[test]
fn expiring_certificates_are_warned_about_at_check_config_start_and_by_cmappmgr_check() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = certs::new_ca("expiry CA").unwrap();
    let server = certs::issue_valid_for(&ca, certs::Role::Server, &["127.0.0.1".into()], 10).unwrap();
    let client = certs::issue_valid_for(&ca, certs::Role::Client, &["host".into()], 5).unwrap();
    let p = |n: &str| -> PathBuf { dir.join(n) };
    private(&p("server.private"), &server.private_pem);
    private(&p("client.private"), &client.private_pem);
    public(&p("ca.public"), &[&ca.cert_pem]);
    let keys = Keys {
        server_private: p("server.private"),
        server_public: PathBuf::new(),
        client_private: p("client.private"),
        client_public: PathBuf::new(),
        server_trust: p("ca.public"),
        client_trust: p("ca.public"),
    };
    let server = Server::start(&dir.join("guest"), &keys, "");
    let warning = "warning: the certificate of 127.0.0.1 in keyStore";
    let out = std::process::Command::new(cmapp_tests::bin("cmappserver"))
        .args(["--check-config", "--conf"])
        .arg(&server.conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(warning) && text.contains("in 10 day(s)"), "{text}");
    assert!(
        server.log.text().contains("the certificate of 127.0.0.1 in keyStore"),
        "warned at start: {}",
        server.log.text()
    );
    let conf = manager_conf(dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    let (code, err) = check(&conf, &server.node());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("the certificate of host in keyStore") && err.contains("in 5 day(s)"),
        "{err}"
    );
}

#[test]
fn keygen_renew_makes_a_new_certificate_for_the_same_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = |bin: &str, args: &[&str]| {
        let out = std::process::Command::new(cmapp_tests::bin(bin))
            .args(args)
            .output()
            .unwrap();
        let text = cmapp_tests::stdout_and_stderr(&out);
        assert!(out.status.success(), "{bin} {args:?}: {text}");
        text
    };
    let d = dir.join("guest");
    let ds = d.to_str().unwrap();
    run(
        "cmappserver",
        &["keygen", "--dir", ds, "--name", "guest1", "--name", "10.0.0.21"],
    );
    let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap();
    let key_of = |pem: &str| pem[..pem.find("-----END PRIVATE KEY-----").unwrap()].to_string();
    let (old_private, old_public) = (read("server.private"), read("server.public"));

    let text = run("cmappserver", &["keygen", "renew", "--dir", ds]);
    assert!(text.contains("self-signed"), "{text}");
    let (new_private, new_public) = (read("server.private"), read("server.public"));
    assert_eq!(key_of(&new_private), key_of(&old_private), "the key is kept");
    assert_ne!(new_public, old_public, "a new certificate");
    let shown = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(d.join("server.public"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("CN=guest1") || shown.contains("CN = guest1"), "{shown}");
    assert!(
        shown.contains("DNS:guest1") && shown.contains("IP Address:10.0.0.21"),
        "{shown}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(d.join("server.private"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Signed by a CA: the same key, a certificate the CA vouches for.
    let c = dir.join("ca");
    run("cmappmgr", &["keygen", "ca", "--dir", c.to_str().unwrap()]);
    run(
        "cmappserver",
        &["keygen", "renew", "--dir", ds, "--ca-dir", c.to_str().unwrap()],
    );
    assert_eq!(key_of(&read("server.private")), key_of(&old_private));
    let verify = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(c.join("ca.public"))
        .arg(d.join("server.public"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    // And the renewed store loads: --check-config with it.
    let conf = dir.join("cmappserver.conf");
    std::fs::write(
        &conf,
        format!(
            "keyStore={}\ntrustStore={}\nstateDir={}\n",
            d.join("server.private").display(),
            c.join("ca.public").display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    run("cmappserver", &["--check-config", "--conf", conf.to_str().unwrap()]);
}
