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
//! `CMAPP_TEST_FAULT=notify-before-record` is passed on to cmappserver (a
//! debug build's deliberate defect, to see the checker catch it).

use std::process::ExitCode;

use cmapp_tests::campaign::{run_campaign, Config};

fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        eprintln!("usage: [CAMPAIGN_SECS=N] [CAMPAIGN_SEED=S] cmapp-campaign (no arguments)");
        return ExitCode::from(2);
    }
    let mut cfg = Config::from_env(3600);
    if let Ok(f) = std::env::var("CMAPP_TEST_FAULT") {
        cfg.server_env.push(("CMAPP_TEST_FAULT".into(), f));
    }
    // The report goes to stderr as the campaign ends.
    let report = run_campaign(&cfg);
    if report.violations.is_empty() && report.leftovers.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
