//! Built-in probes that run in the guest like any monitored command.
//!
//! `net` is the LAN probe (the original's `cmapp_net_mon.pl`), `disk` the disk
//! probe (`cmapp_disk_mon`). Each exposes `main(args) -> exit code`, where
//! `args` are the arguments after the program name. A probe runs until the
//! thing it watches fails, then exits; the exit codes are shared:
//!
//! | code | meaning                                                         |
//! |------|-----------------------------------------------------------------|
//! | 0    | `--help` / `--version` only (a probe never stops by itself)     |
//! | 1    | the LAN or a disk failed; the last log line says what and where |
//! | 64   | bad command line or guest log file (EX_USAGE), nothing watched  |
//! | 70   | the probe cannot work here (EX_SOFTWARE), e.g. no ICMP socket   |
//!
//! [`log`] holds the line format both write on stdout.

pub mod disk;
pub mod log;
pub mod net;

/// The watched LAN or disk failed.
pub const EXIT_FAILED: i32 = 1;
/// Bad command line (sysexits.h EX_USAGE).
pub const EX_USAGE: i32 = 64;
/// The probe cannot run here at all (sysexits.h EX_SOFTWARE).
pub const EX_SOFTWARE: i32 = 70;

/// Parses `args` (after the program name) with the probe's clap definition
/// (in `common::probe`, which cmappmgr reads run strings with too). On `--help` or
/// `--version` prints to stdout and returns `Err(0)`; on a usage error prints
/// the error and the usage line to stderr and returns `Err(EX_USAGE)`.
fn parse_args<T: clap::FromArgMatches>(probe: common::probe::Probe, args: Vec<String>) -> Result<T, i32> {
    use clap::error::ErrorKind;
    let mut command = probe.command();
    let parsed = command
        .try_get_matches_from_mut(std::iter::once(probe.name().to_string()).chain(probe.normalise(args)))
        .and_then(|mut matches| T::from_arg_matches_mut(&mut matches));
    parsed.map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            print!("{}", e.render());
            0
        }
        _ => {
            // clap shows the usage with some errors only (not with a bad value).
            let text = e.render().to_string();
            let usage = command.render_usage().to_string();
            match text.find("\nFor more information") {
                Some(at) if !text.contains("Usage:") => {
                    eprint!("{}\n{usage}\n{}", &text[..at], &text[at..]);
                }
                _ => eprint!("{text}"),
            }
            EX_USAGE
        }
    })
}
