//! Configuration files read as the original read them (Java properties), and
//! a typo that no longer stops cmappmgr or cmappserver: the real binaries.

use std::process::Command;

use cmapp_tests::keys;
use cmapp_tests::mgr::Mgr;
use cmapp_tests::server::Server;

#[test]
fn a_typo_in_cmappmgr_conf_is_a_warning_and_the_application_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = keys::pinned(dir, "");
    let server = Server::start(&dir.join("server"), &keys, "");
    // Java spellings as well: ':' as the separator, a continued line.
    let conf = dir.join("cmappmgr.conf");
    std::fs::write(
        &conf,
        format!(
            "! the original's comment style\nkeyStore : {}\ntrustStore={}\\\n    {}\nkeyStorPassword=clientpw\n",
            keys.client_private.display(),
            keys.client_trust.parent().unwrap().display(),
            format_args!("/{}", keys.client_trust.file_name().unwrap().to_str().unwrap()),
        ),
    )
    .unwrap();
    let mut m = Mgr::spawn(&conf, &server.node(), 10.0, &[], &["/bin/sh", "-c", "exit 7"]);
    assert_eq!(m.code(), 7, "{}", m.err.text());
    let warning = format!(
        "{}:5: unknown key \"keyStorPassword\" ignored (nearest known key: keyStorePassword)",
        conf.display()
    );
    assert!(m.err.contains(&warning), "{warning:?} missing from:\n{}", m.err.text());
    assert!(m.err.contains("PROGRAM EXIT CODE 7"), "{}", m.err.text());
}

#[test]
fn a_typo_in_cmappserver_conf_is_a_warning_and_the_server_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = keys::pinned(dir, "");
    let server = Server::start(&dir.join("server"), &keys, "stopGracePerod=1\n");
    assert!(
        server
            .log
            .contains("unknown key \"stopGracePerod\" ignored (nearest known key: stopGracePeriod)"),
        "{}",
        server.log.text()
    );

    // --check-config shows the warning and still exits 0; a bad value is still an error.
    let check = |conf: &std::path::Path| {
        let out = Command::new(cmapp_tests::bin("cmappserver"))
            .args(["--check-config", "--conf"])
            .arg(conf)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = check(&server.conf);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("unknown key \"stopGracePerod\""), "{err}");

    let bad = dir.join("bad.conf");
    let text = std::fs::read_to_string(&server.conf).unwrap() + "maxProcesses=lots\n";
    std::fs::write(&bad, text).unwrap();
    let (code, err) = check(&bad);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("maxProcesses=lots is not a whole number"), "{err}");
    assert!(err.contains("unknown key \"stopGracePerod\""), "warnings too: {err}");
}
