//! The long fault campaign (see `cmapp_tests::campaign`): runs as root,
//! `CAMPAIGN_SECS` seconds of faults (default 3600) with `CAMPAIGN_SEED`
//! (random if unset, printed first), then prints the report. Exits 0 with
//! no violation, 1 with any, 2 on bad usage.
//!
//! ```text
//! cargo build --workspace --bins
//! CAMPAIGN_SECS=3600 target/debug/cmapp-campaign
//! CAMPAIGN_SEED=0x5eed CAMPAIGN_SECS=120 target/debug/cmapp-campaign   # replay a schedule
//! ```
//!
//! `CMAPP_TEST_FAULT` is passed on to cmappserver and the managers (a debug
//! build's deliberate defect, to see the checker catch it:
//! `notify-before-record` in the shim, `ack-held-up` in cmappmgr).
//!
//! `cmapp-campaign --check-history DIR` judges a kept history again
//! (`DIR/history.txt`, as a failed campaign keeps it) with this build's
//! checker, and prints its violations and notes; no root needed.

use std::process::ExitCode;

use cmapp_tests::campaign::{check, run_campaign, saved, Config};

const USAGE: &str =
    "usage: [CAMPAIGN_SECS=N] [CAMPAIGN_SEED=S] cmapp-campaign\n       cmapp-campaign --check-history DIR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {}
        [flag, dir] if flag == "--check-history" => return check_history(std::path::Path::new(dir)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    let mut cfg = Config::from_env(3600);
    if let Ok(f) = std::env::var("CMAPP_TEST_FAULT") {
        cfg.server_env.push(("CMAPP_TEST_FAULT".into(), f.clone()));
        cfg.mgr_env.push(("CMAPP_TEST_FAULT".into(), f));
    }
    // The report goes to stderr as the campaign ends.
    let report = run_campaign(&cfg);
    if report.violations.is_empty() && report.leftovers.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Judges a kept history again: exit 0 with no violation, 1 with any, 2
/// when it cannot be read.
fn check_history(dir: &std::path::Path) -> ExitCode {
    let h = match saved::read_history(dir) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cmapp-campaign: {e}");
            return ExitCode::from(2);
        }
    };
    let verdict = check::judge(&h);
    for n in &verdict.notes {
        println!("note: {n}");
    }
    for v in &verdict.violations {
        println!("VIOLATION: {v}");
    }
    println!(
        "{}: {} applications, {} manager runs; {} violations",
        dir.display(),
        h.apps.len(),
        h.managers.len(),
        verdict.violations.len()
    );
    if verdict.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
