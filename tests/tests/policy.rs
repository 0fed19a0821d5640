//! The command policy (`allow.RULE.*` in cmappserver.conf), per-client rules
//! and `allowedClients`, run-as users with their limits, and the audit log:
//! the real binaries over real sockets, with certificates made at test time.
//! The run-as tests need root (they create a test user; see test.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use cmapp_tests::fixture::Fixture;
use cmapp_tests::keys::{self, Keys};
use cmapp_tests::mgr::{pid_in, Mgr};
use cmapp_tests::peer::{runtime, RawClient};
use cmapp_tests::server::Server;
use cmapp_tests::{require_root, wait_until, WAIT};
use common::message::{ErrorKind, Event, Launch, Request};

/// cmappmgr's exit code for a request the guest's command policy refused.
const FORBIDDEN: i32 = 79;

fn run(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn check_config(conf: &Path) -> (i32, String) {
    let out = Command::new(cmapp_tests::bin("cmappserver"))
        .arg("--conf")
        .arg(conf)
        .arg("--check-config")
        .output()
        .unwrap();
    let text = cmapp_tests::stdout_and_stderr(&out);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn without_rules_everything_is_allowed_and_check_config_says_so() {
    let f = Fixture::new("");
    let (code, text) = check_config(&f.server.conf);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("command policy: no rules") && text.contains("any program, as root"),
        "{text}"
    );
    let mut m = f.mgr(&["/bin/sh", "-c", "exit 6"]);
    assert_eq!(m.code(), 6, "{}", m.err.text());
}

const RULES: &str = "\
allow.sh.program=/bin/sh
allow.sh.args=-c exit*
allow.tools.program=/usr/bin/
allow.tools.maxArgs=1
";

#[test]
fn a_refused_launch_exits_79_naming_the_rules_and_the_reason() {
    let f = Fixture::new(RULES);
    let (code, text) = check_config(&f.server.conf);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("command policy: 2 rule(s): sh, tools"), "{text}");

    let mut m = f.mgr(&["/bin/sh", "-c", "exit 3"]);
    assert_eq!(m.code(), 3, "allowed by rule sh: {}", m.err.text());
    let mut m = f.mgr(&["/usr/bin/env", "true"]);
    assert_eq!(m.code(), 0, "allowed by rule tools: {}", m.err.text());
    // Their records go once collected (at the server's next sweep).
    assert!(
        wait_until(WAIT, || f.records() == 0),
        "the collected exits' records stayed"
    );

    let conf = f.server.conf.display().to_string();
    for (argv, why) in [
        (
            vec!["/bin/sh", "-c", "touch /tmp/x"],
            "rule sh allows only arguments -c exit*".to_string(),
        ),
        (
            vec!["/bin/dash", "-c", "exit 0"],
            "no rule allows the program /bin/dash (rules: sh, tools)".into(),
        ),
        (
            vec!["/usr/bin/env", "a", "b"],
            "rule tools allows at most 1 arguments, not 2".into(),
        ),
        (
            vec!["sh", "-c", "exit 0"],
            "the program sh is not an absolute path".into(),
        ),
        (vec!["/usr/bin/../../bin/dash"], "contains \"..\"".into()),
    ] {
        let mut m = f.mgr(&argv);
        assert_eq!(m.code(), FORBIDDEN, "{argv:?}: {}", m.err.text());
        let err = m.err.text();
        assert!(
            err.contains(&format!("refused by the command policy of {conf}")),
            "{argv:?}: {err}"
        );
        assert!(err.contains(&why), "{argv:?}: {err}");
        assert!(!err.contains("PROGRAM EXIT CODE"), "{argv:?}: {err}");
    }
    // The server names the client and the reason.
    assert!(
        f.server
            .log
            .wait_for("refused: refused by the command policy", WAIT)
            .is_some(),
        "{}",
        f.server.log.text()
    );
    assert!(
        f.server.log.text().contains("host-under-test (sha256:"),
        "{}",
        f.server.log.text()
    );
    assert_eq!(f.records(), 0, "a refused launch leaves no record");
}

#[test]
fn a_refusal_changes_nothing_else_and_the_connection_stays_usable() {
    let f = Fixture::new(RULES);
    // A process that runs throughout, started under the rules.
    let mut long = f.mgr(&["/usr/bin/sleep", "60"]);
    let started = long.expect_line("started", WAIT);
    let pid = pid_in(&started);

    runtime().block_on(async {
        let mut c = RawClient::connect(f.server.addr, &f.keys).await;
        let refused = c
            .call(&Request::Launch(Launch {
                run: run(&["/bin/dash", "-c", "exit 0"]),
                name: None,
                attach_only: None,
                forward: None,
            }))
            .await;
        match refused {
            Event::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Forbidden, "{e:?}");
                assert!(e.message.contains("no rule allows the program /bin/dash"), "{e:?}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The same connection: a listing, then an allowed launch.
        match c.call(&Request::List).await {
            Event::Processes(p) => assert!(p.processes.iter().any(|p| p.pid == pid), "{p:?}"),
            other => panic!("expected the listing, got {other:?}"),
        }
        match c
            .call(&Request::Launch(Launch {
                run: run(&["/bin/sh", "-c", "exit 9"]),
                name: None,
                attach_only: None,
                forward: None,
            }))
            .await
        {
            Event::Started(s) => assert!(!s.attached),
            other => panic!("expected a start, got {other:?}"),
        }
    });
    assert!(cmapp_tests::alive(pid), "the running process was not touched");
    assert!(long.running(), "its manager was not touched: {}", long.err.text());
}

/// A certificate's SHA-256 fingerprint as openssl prints it (`AB:CD:...`).
fn fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().rsplit('=').next().unwrap().to_string()
}

/// A CA, a server certificate for 127.0.0.1, and manager configurations for
/// client certificates with the names asked for.
struct Ca {
    dir: PathBuf,
    ca: certs::Ca,
    keys: Keys,
    _tmp: tempfile::TempDir,
}

impl Ca {
    fn new() -> Ca {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let ca = certs::new_ca("policy test CA").unwrap();
        let s = certs::issue(&ca, certs::Role::Server, &["127.0.0.1".into()]).unwrap();
        let w = |name: &str, text: &str, private: bool| {
            let p = dir.join(name);
            if private {
                certs::write_private(&p, text, true).unwrap();
            } else {
                certs::write_public(&p, text, true).unwrap();
            }
            p
        };
        let ca_public = w("ca.public", &ca.cert_pem, false);
        let keys = Keys {
            server_private: w("server.private", &s.private_pem, true),
            server_public: w("server.public", &s.public_pem, false),
            client_private: PathBuf::new(),
            client_public: PathBuf::new(),
            server_trust: ca_public.clone(),
            client_trust: ca_public,
        };
        Ca {
            dir,
            ca,
            keys,
            _tmp: tmp,
        }
    }

    /// A manager configuration with a client certificate for `names`;
    /// returns it and the certificate's SHA-256 fingerprint (openssl's form).
    fn client(&self, names: &[&str]) -> (PathBuf, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let c = certs::issue(&self.ca, certs::Role::Client, &names).unwrap();
        let tag = names[0].replace(['/', ':'], "_");
        let private = self.dir.join(format!("client-{tag}.private"));
        certs::write_private(&private, &c.private_pem, true).unwrap();
        let public = self.dir.join(format!("client-{tag}.public"));
        certs::write_public(&public, &c.public_pem, true).unwrap();
        let fp = fingerprint(&public);
        let conf = keys::manager_conf(&self.dir, &format!("{tag}.conf"), &private, &self.keys.client_trust, "");
        (conf, fp)
    }

    /// A client certificate with a URI subject alternative name, made by
    /// openssl (our keygen makes host names only).
    fn client_with_uri(&self, cn: &str, uri: &str) -> (PathBuf, String) {
        let d = &self.dir;
        std::fs::write(d.join("ca.key"), &self.ca.key_pem).unwrap();
        std::fs::write(d.join("ca.pem"), &self.ca.cert_pem).unwrap();
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("openssl").current_dir(d).args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "uri.key",
            "-out",
            "uri.csr",
            "-subj",
            &format!("/CN={cn}"),
        ]));
        std::fs::write(
            d.join("uri.ext"),
            format!("subjectAltName=URI:{uri}\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        ok(Command::new("openssl").current_dir(d).args([
            "x509",
            "-req",
            "-in",
            "uri.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "uri.ext",
            "-out",
            "uri.crt",
        ]));
        let pem =
            std::fs::read_to_string(d.join("uri.key")).unwrap() + &std::fs::read_to_string(d.join("uri.crt")).unwrap();
        let private = d.join("client-uri.private");
        certs::write_private(&private, &pem, true).unwrap();
        let fp = fingerprint(&d.join("uri.crt"));
        let conf = keys::manager_conf(d, "uri.conf", &private, &self.keys.client_trust, "");
        (conf, fp)
    }

    fn server(&self, extra: &str) -> Server {
        Server::start(&self.dir.join("guest"), &self.keys, extra)
    }
}

#[test]
fn rules_name_the_clients_they_apply_to_by_name_pattern_or_fingerprint() {
    let ca = Ca::new();
    let (a, _) = ca.client(&["host-a.cluster.example"]);
    let (b, _) = ca.client_with_uri("host-b", "spiffe://cluster/host-b");
    let (c, c_fp) = ca.client(&["host-c"]);
    let server = ca.server(&format!(
        "allow.cluster.program=/bin/sh\nallow.cluster.clients=*.cluster.example, spiffe://cluster/*\n\
         allow.pinned.program=/bin/true\nallow.pinned.clients=sha256:{c_fp}\n"
    ));
    let node = server.node();
    let mgr = |conf: &Path, argv: &[&str]| Mgr::spawn(conf, &node, 10.0, &[], argv);

    assert_eq!(mgr(&a, &["/bin/sh", "-c", "exit 4"]).code(), 4, "DNS name pattern");
    assert_eq!(mgr(&b, &["/bin/sh", "-c", "exit 5"]).code(), 5, "URI SAN pattern");
    assert_eq!(mgr(&c, &["/bin/true"]).code(), 0, "fingerprint");
    let mut m = mgr(&c, &["/bin/sh", "-c", "exit 0"]);
    assert_eq!(m.code(), FORBIDDEN, "{}", m.err.text());
    assert!(
        m.err.contains("rule cluster is not for client host-c (sha256:"),
        "{}",
        m.err.text()
    );
    let mut m = mgr(&a, &["/bin/true"]);
    assert_eq!(m.code(), FORBIDDEN, "{}", m.err.text());
    assert!(
        m.err.contains("rule pinned is not for client host-a.cluster.example"),
        "{}",
        m.err.text()
    );
}

#[test]
fn attaching_to_a_running_process_obeys_the_policy_too() {
    let ca = Ca::new();
    let (a, _) = ca.client(&["host-a"]);
    let (b, _) = ca.client(&["host-b"]);
    let server = ca.server(
        "allow.a.program=/usr/bin/sleep\nallow.a.clients=host-a\n\
         allow.b.program=/bin/true\nallow.b.clients=host-b\n",
    );
    let node = server.node();
    let mut owner = Mgr::spawn(&a, &node, 10.0, &["-name", "shared"], &["/usr/bin/sleep", "60"]);
    let pid = pid_in(&owner.expect_line("started", WAIT));

    // The same run string: host-b may not attach to it (nor learn its exit).
    let mut m = Mgr::spawn(&b, &node, 10.0, &["-name", "shared"], &["/usr/bin/sleep", "60"]);
    assert_eq!(m.code(), FORBIDDEN, "{}", m.err.text());
    // Under the same name with a program host-b may run: the running
    // process's program is what is judged, not the request's.
    let mut m = Mgr::spawn(&b, &node, 10.0, &["-name", "shared"], &["/bin/true"]);
    assert_eq!(m.code(), FORBIDDEN, "{}", m.err.text());
    assert!(
        m.err.contains("no rule allows the program /usr/bin/sleep")
            || m.err.contains("rule a is not for client host-b"),
        "{}",
        m.err.text()
    );
    // Nor stop it (cmappmgr stop: OCF's "insufficient privileges", 4).
    let (code, m) = Mgr::run_in(
        None,
        &[
            "stop",
            "-node",
            &node,
            "--conf",
            b.to_str().unwrap(),
            "--no_syslog",
            "-name",
            "shared",
            "-service",
            "/usr/bin/sleep",
            "60",
        ],
        WAIT,
    );
    assert_eq!(code, 4, "{}", m.err.text());
    assert!(cmapp_tests::alive(pid), "the process runs on");
    assert!(owner.running(), "{}", owner.err.text());
    // host-a re-attaches freely.
    let again = Mgr::spawn(&a, &node, 10.0, &["-name", "shared"], &["/usr/bin/sleep", "60"]);
    again.expect_line("attached to running", WAIT);
}

#[test]
fn allowed_clients_turns_other_certificates_away_at_the_door() {
    let ca = Ca::new();
    let (a, _) = ca.client(&["host-a"]);
    let (b, _) = ca.client(&["host-b"]);
    let server = ca.server("allowedClients=host-a, host-z\n");
    let node = server.node();
    assert_eq!(Mgr::spawn(&a, &node, 10.0, &[], &["/bin/sh", "-c", "exit 2"]).code(), 2);
    let mut m = Mgr::spawn(&b, &node, 10.0, &[], &["/bin/sh", "-c", "exit 2"]);
    assert_eq!(m.code(), FORBIDDEN, "{}", m.err.text());
    assert!(
        m.err.contains("client host-b (sha256:") && m.err.contains("allowedClients"),
        "{}",
        m.err.text()
    );
    let (code, m) = Mgr::run_in(None, &["check", "-node", &node, "--conf", b.to_str().unwrap()], WAIT);
    assert_eq!(code, FORBIDDEN, "{}", m.err.text());
}

#[test]
fn a_bad_rule_is_a_configuration_error_at_check_config_and_start() {
    let f = Fixture::new("");
    let conf = f.dir.join("bad.conf");
    let base = std::fs::read_to_string(&f.server.conf).unwrap();
    std::fs::write(
        &conf,
        format!("{base}allow.app.program=/bin/sh\nallow.app.user=cmapp-no-such-user\nallow.x.args=-v\n"),
    )
    .unwrap();
    let (code, text) = check_config(&conf);
    assert_eq!(code, 1, "{text}");
    let lines = base.lines().count();
    assert!(
        text.contains(&format!(
            "{}:{}: allow.app.user=cmapp-no-such-user: no such user",
            conf.display(),
            lines + 2
        )),
        "{text}"
    );
    assert!(text.contains("rule x has no allow.x.program"), "{text}");
    let out = Command::new(cmapp_tests::bin("cmappserver"))
        .arg("--conf")
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_audit_log_records_every_request_with_client_decision_and_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit.jsonl");
    let f = Fixture::new(&format!("{RULES}auditLog={}\n", audit.display()));
    assert_eq!(f.mgr(&["/bin/sh", "-c", "exit 3"]).code(), 3);
    assert_eq!(f.mgr(&["/bin/dash"]).code(), FORBIDDEN);
    let (code, m) = Mgr::run_in(
        None,
        &["status", "-node", &f.server.node(), "--conf", f.conf.to_str().unwrap()],
        WAIT,
    );
    assert_eq!(code, 0, "{}", m.err.text());
    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    };
    assert!(
        wait_until(WAIT, || records().iter().any(|r| r["request"] == "list")),
        "{:?}",
        records()
    );
    let all = records();
    let launch = all
        .iter()
        .find(|r| r["request"] == "launch" && r["decision"] == "allowed")
        .expect("the allowed launch");
    assert_eq!(launch["rule"], "sh");
    assert_eq!(launch["service"], "/bin/sh -c exit 3");
    assert!(
        launch["outcome"].as_str().unwrap().starts_with("started pid "),
        "{launch}"
    );
    assert_eq!(launch["client"]["names"][0], "host-under-test");
    assert_eq!(launch["client"]["fingerprint"].as_str().unwrap().len(), 64);
    assert!(launch["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{launch}");
    assert!(
        launch["manager"].as_str().unwrap().starts_with("cmappmgr on "),
        "{launch}"
    );
    assert!(launch["time"].as_str().unwrap().ends_with('Z'), "{launch}");
    let ack = all.iter().find(|r| r["request"] == "ack").expect("the ack of the exit");
    assert_eq!(ack["id"], launch["id"]);
    let refused = all
        .iter()
        .find(|r| r["decision"] == "refused")
        .expect("the refused launch");
    assert_eq!(refused["service"], "/bin/dash");
    assert!(
        refused["outcome"]
            .as_str()
            .unwrap()
            .contains("no rule allows the program /bin/dash"),
        "{refused}"
    );
    assert!(!all.iter().any(|r| r["request"] == "ping"), "pings are not audited");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777, 0o600);
}

// ---- run-as (root) ----

const USER: &str = "cmapp-pol-user";
const GROUP: &str = "cmapp-pol-grp";

/// Creates the test user (home /home/cmapp-pol-user, shell /bin/sh, a
/// supplementary group) once; returns (uid, gid, supplementary gid, home).
fn test_user() -> (u32, u32, u32, PathBuf) {
    require_root("it creates a test user and runs processes as that user");
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    if !ok(Command::new("getent").args(["group", GROUP])) {
        let _ = Command::new("groupadd").args(["-f", GROUP]).status();
    }
    if !ok(Command::new("id").arg(USER)) {
        // Two tests may race here: whichever loses finds the user made.
        let _ = Command::new("useradd")
            .args(["-m", "-d", "/home/cmapp-pol-user", "-s", "/bin/sh", USER])
            .status();
    }
    let _ = Command::new("usermod").args(["-a", "-G", GROUP, USER]).status();
    let user = nix::unistd::User::from_name(USER).unwrap().expect("test user");
    let grp = nix::unistd::Group::from_name(GROUP).unwrap().expect("test group");
    (user.uid.as_raw(), user.gid.as_raw(), grp.gid.as_raw(), user.dir)
}

#[test]
fn run_as_a_user_with_groups_environment_home_and_limits() {
    let (uid, gid, supp, home) = test_user();
    let f = Fixture::new(&format!(
        "allow.app.program=/bin/sh\nallow.app.user={USER}\n\
         allow.app.limit.nofile=123:456\nallow.app.limit.nproc=777\nallow.app.limit.as=1G\nallow.app.limit.core=0\n\
         environment=APP_SETTING=on\n"
    ));
    let (code, text) = check_config(&f.server.conf);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("app as {USER}")), "{text}");
    let script = "id -u; id -g; id -G; pwd; env; cat /proc/self/limits; echo APP-READY; exec sleep 60";
    // Every line as it comes (by default only the last ones, with the exit).
    let mut m = f.mgr_with(&["-forward_output"], &["/bin/sh", "-c", script]);
    let pid = pid_in(&m.expect_line("started", WAIT));
    assert!(
        m.out.wait_for("APP-READY", WAIT).is_some(),
        "{}\n{}",
        m.out.text(),
        m.err.text()
    );
    let out = m.out.snapshot();
    assert_eq!(out[0], uid.to_string(), "{out:?}");
    assert_eq!(out[1], gid.to_string(), "{out:?}");
    let groups: Vec<u32> = out[2].split_whitespace().map(|g| g.parse().unwrap()).collect();
    assert!(groups.contains(&supp) && groups.contains(&gid), "{out:?}");
    assert!(!groups.contains(&0), "no root group left: {out:?}");
    assert_eq!(out[3], home.display().to_string(), "{out:?}");
    for want in [
        format!("HOME={}", home.display()),
        format!("USER={USER}"),
        format!("LOGNAME={USER}"),
        "SHELL=/bin/sh".into(),
        "PATH=/usr/local/bin:/usr/bin:/bin".into(),
        "APP_SETTING=on".into(),
    ] {
        assert!(out.contains(&want), "{want} in {out:?}");
    }
    assert!(
        !out.iter().any(|l| l.starts_with("RUST_LOG=")),
        "the daemon's environment leaked: {out:?}"
    );
    let limit = |name: &str| -> Vec<String> {
        let l = out
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {out:?}"));
        l[name.len()..].split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(limit("Max open files")[..2], ["123", "456"]);
    assert_eq!(limit("Max processes")[..2], ["777", "777"]);
    assert_eq!(limit("Max address space")[..2], ["1073741824", "1073741824"]);
    assert_eq!(limit("Max core file size")[..2], ["0", "0"]);

    // The application runs as the user; its shim and its records stay root's.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == uid.to_string()),
        "{uid_line}"
    );
    let rec = f.server.recorded();
    assert_eq!(rec.len(), 1, "{rec:?}");
    let shim = std::fs::read_to_string(format!("/proc/{}/status", rec[0].shim_pid)).unwrap();
    assert!(shim.lines().any(|l| l.starts_with("Uid:\t0\t0\t0\t0")), "{shim}");
    use std::os::unix::fs::MetadataExt;
    let pid_record = f.server.state_dir.join("procs").join(&rec[0].id).join("pid.json");
    assert_eq!(std::fs::metadata(pid_record).unwrap().uid(), 0);
    // The exit is reported as ever, and recorded by root.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(m.code(), 143, "{}", m.err.text());
}

#[test]
fn run_as_a_program_the_user_cannot_execute_exits_126() {
    test_user();
    let f = Fixture::new(&format!(
        "allow.app.program=/\nallow.app.user={USER}\nallow.app.cwd=/tmp\n"
    ));
    // Root may run it; the user may not even reach it (0700 directory).
    let private = f.dir.join("private");
    std::fs::create_dir_all(&private).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let script = private.join("app.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut m = f.mgr(&[script.to_str().unwrap()]);
    assert_eq!(m.code(), 126, "{}", m.err.text());
    assert!(m.err.contains("Permission denied"), "{}", m.err.text());
    let mut m = f.mgr(&["/nonexistent/program"]);
    assert_eq!(m.code(), 127, "{}", m.err.text());
    // cwd is honoured.
    let mut m = f.mgr(&["/bin/pwd"]);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert_eq!(m.out.snapshot(), ["/tmp"]);
}
