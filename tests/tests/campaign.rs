//! The randomized fault campaign (`cmapp_tests::campaign`), short: one
//! fixed seed and one random seed (printed), and the same campaign against
//! a deliberately broken build, to show the checker catches a lost exit.
//! `CAMPAIGN_SECS` lengthens the first two, `CAMPAIGN_SEED` replays a seed
//! in the second; `cmapp-campaign` is the long run (README, Testing).

use cmapp_tests::campaign::{run_campaign, Config, SmallFs};
use cmapp_tests::keys;
use cmapp_tests::mgr::Mgr;
use cmapp_tests::server::Server;
use cmapp_tests::WAIT;

fn assert_clean(cfg: &Config) {
    let report = run_campaign(cfg);
    assert!(report.violations.is_empty() && report.leftovers.is_empty(), "{report}");
    assert!(report.exits_checked > 20, "too few exits to mean anything:\n{report}");
    assert!(report.faults.len() >= 6, "too few kinds of fault injected:\n{report}");
}

fn secs() -> u64 {
    std::env::var("CAMPAIGN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

#[test]
fn campaign_with_a_fixed_seed_keeps_every_promise() {
    assert_clean(&Config::new(0x00c0_ffee, secs()));
}

#[test]
fn campaign_with_a_random_seed_keeps_every_promise() {
    assert_clean(&Config::from_env(secs()));
}

/// Two deliberate defects of debug builds at once (`CMAPP_TEST_FAULT`), and
/// the checker must report both. The shim tells the server of an exit
/// before recording it and dies in between (`notify-before-record`): an
/// exit while cmappserver is down is then lost. cmappmgr reports an exit
/// without its acknowledgement reaching the server and without waiting for
/// `Acked` (`ack-held-up`, the defect 2702f5a fixed): the cluster's next
/// start is handed the same exit, starting nothing.
#[test]
fn the_checker_catches_an_exit_lost_by_a_broken_build() {
    let mut cfg = Config::new(0x0bad_5eed, 30);
    cfg.server_env
        .push(("CMAPP_TEST_FAULT".into(), "notify-before-record".into()));
    cfg.mgr_env.push(("CMAPP_TEST_FAULT".into(), "ack-held-up".into()));
    let report = run_campaign(&cfg);
    let lost: Vec<&String> = report
        .violations
        .iter()
        .filter(|v| v.contains("though its shim was never killed") || v.contains("never reported"))
        .collect();
    assert!(!lost.is_empty(), "the checker missed the lost exits:\n{report}");
    assert!(
        report.violations.iter().any(|v| v.contains("reported again")),
        "the checker missed the exits handed to the next start:\n{report}"
    );
    if let Some(kept) = &report.kept {
        let _ = std::fs::remove_dir_all(kept);
    }
}

/// Found by the campaign: an application that ended while the state
/// directory's filesystem was full had its exit status reported lost (70),
/// its shim unable to write `exit.json` and so telling nobody.
#[test]
fn an_exit_on_a_full_state_disk_is_reported_with_its_code() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fs = SmallFs::new(dir, 8);
    let keys = keys::pinned(dir, "");
    let conf = keys::manager_conf(dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    let state = fs.mountpoint.join("state");
    let mut server = Server::start(&dir.join("srv"), &keys, &format!("stateDir={}\n", state.display()));
    server.state_dir = state;
    let flag = dir.join("flag");
    let app = format!("while [ ! -e {} ]; do sleep 0.05; done; exit 42", flag.display());
    let mut m = Mgr::spawn(&conf, &server.node(), 10.0, &[], &["/bin/sh", "-c", &app]);
    m.err
        .wait_for("started", WAIT)
        .unwrap_or_else(|| panic!("{}", m.err.text()));
    fs.fill();
    std::fs::write(&flag, "").unwrap();
    let code = m.code();
    fs.free();
    assert_eq!(code, 42, "{}", m.err.text());
    drop(m);
    drop(server);
}
