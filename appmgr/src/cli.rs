//! The command line, in two layers (as ripgrep does): this module only
//! mirrors argv and validates it; `main` turns it into the objects that run.
//!
//! The original's form must keep working exactly as cluster service entries
//! write it:
//!
//! ```text
//! cmappmgr -node <guest> -cmappserver_timeout <seconds> -service <program> [args...]
//! ```
//!
//! Everything after `-service` is the run string, untouched (a single quoted
//! string works too; see `common::service`). Options before it may be written
//! with one dash, as the original does, or GNU-style with two. Subcommands
//! (`check`, `status`, `keygen`, `vm`) sit beside the legacy form, and so do
//! the one-shot verbs for cluster managers, which take the same options and
//! run string: `cmappmgr start|monitor|stop|watch -node ... -service ...`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use common::config::ManagerConfig;

/// Options shared by everything that talks to a cmappserver.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Configuration file.
    #[arg(long, value_name = "PATH", default_value = ManagerConfig::DEFAULT_PATH)]
    pub conf: PathBuf,
    #[command(flatten)]
    pub log: Logging,
}

/// Where the log goes: every command's, `vm` included.
#[derive(Debug, Clone, Copy, Args)]
pub struct Logging {
    /// Log debugging detail.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Do not log to syslog (stderr only).
    #[arg(long = "no_syslog", alias = "no-syslog")]
    pub no_syslog: bool,
}

/// The legacy monitoring form: start or re-attach, then wait for the exit.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cmappmgr",
    version,
    about = "Starts (or re-attaches to) an application in a guest and exits with its exit code",
    after_help = "Usage as a cluster service command:\n  cmappmgr -node <guest> -cmappserver_timeout <seconds> -service <program> [args...]\n\nOther commands: cmappmgr check|status|keygen|vm --help"
)]
pub struct MonitorArgs {
    /// The guest: host name or address, optionally with :port; or
    /// [NAME@]vsock:CID[:PORT] (AF_VSOCK), or [NAME@]vsock-unix:/PATH[:PORT]
    /// (a user-space vsock device's Unix socket).
    #[arg(long, value_name = "GUEST")]
    pub node: String,
    /// Seconds to keep trying to reach cmappserver (at start, and after the
    /// connection is lost) before giving up with exit code 1.
    #[arg(long = "cmappserver_timeout", alias = "cmappserver-timeout", value_name = "SECONDS", default_value = "240", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Identify the process by this name instead of by its run string.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// On SIGTERM, leave the application running (the default; overrides
    /// `stopOnHalt=yes` in the configuration file).
    #[arg(long, conflicts_with = "stop_on_halt")]
    pub detach: bool,
    /// On SIGTERM, stop the application (TERM, KILL after the server's grace
    /// period) and wait up to `stopTimeout` for it to be gone.
    #[arg(long = "stop_on_halt", alias = "stop-on-halt")]
    pub stop_on_halt: bool,
    /// Forward every line of the application's output to our stdout and
    /// stderr (the package log), within `forwardLinesPerSecond` and
    /// `forwardBytesPerSecond`. Without it the output stays in the guest
    /// (`cmappmgr logs`) and only its last lines come with the exit.
    #[arg(
        long = "forward_output",
        alias = "forward-output",
        conflicts_with = "no_forward_output"
    )]
    pub forward_output: bool,
    /// Do not forward every line, whatever `forwardOutput` in the
    /// configuration file says (the built-in probes are always forwarded).
    #[arg(long = "no_forward_output", alias = "no-forward-output")]
    pub no_forward_output: bool,
    #[command(flatten)]
    pub common: Common,
    /// The run string (everything after -service).
    #[arg(skip)]
    pub run: Vec<String>,
}

/// Subcommands beside the legacy form.
#[derive(Debug, Parser)]
#[command(name = "cmappmgr", version)]
pub struct Sub {
    #[command(subcommand)]
    pub command: SubCommand,
}

#[derive(Debug, Subcommand)]
pub enum SubCommand {
    /// Connect, authenticate and ping a guest's cmappserver; print its version
    /// and how many processes it monitors.
    Check(CheckArgs),
    /// List the processes a guest's cmappserver monitors.
    Status(StatusArgs),
    /// Print a service's output log from the guest (the last lines, then
    /// new ones with --follow), over the same authenticated connection.
    Logs(LogsArgs),
    /// Generate this host's key and certificate (pinned or CA-signed).
    Keygen(certs::KeygenArgs),
    /// Start, stop, monitor and validate a libvirt guest run as a cluster package.
    #[command(after_help = crate::vm::AFTER_HELP)]
    Vm(crate::vm::VmArgs),
    /// Loopback demo: throwaway keys, a real cmappserver, an application's exit code.
    Demo,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The guest, as -node takes it (host[:port], vsock:CID[:PORT], vsock-unix:/PATH[:PORT]).
    #[arg(long, value_name = "GUEST")]
    pub node: String,
    /// Seconds to keep trying.
    #[arg(long, alias = "cmappserver_timeout", value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The guest, as -node takes it (host[:port], vsock:CID[:PORT], vsock-unix:/PATH[:PORT]).
    #[arg(long, value_name = "GUEST")]
    pub node: String,
    #[arg(long, alias = "cmappserver_timeout", value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: Common,
}

/// A one-shot verb for cluster managers whose actions are short commands
/// (see `oneshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Monitor,
    Stop,
    Watch,
}

impl Verb {
    fn from_word(w: &str) -> Option<Verb> {
        Some(match w {
            "start" => Verb::Start,
            "monitor" => Verb::Monitor,
            "stop" => Verb::Stop,
            "watch" => Verb::Watch,
            _ => return None,
        })
    }
}

/// The one-shot verbs' options: the legacy form's, plus the watcher's.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cmappmgr",
    version,
    about = "One-shot actions for cluster managers; exit codes are OCF's (0 running/done, 7 not running, 1 error, 2 bad arguments, 5 not installed, 6 not configured)",
    override_usage = "cmappmgr start|monitor|stop|watch -node <guest> [-cmappserver_timeout S] [-name N] [-on_exit CMD -while_pid PID] -service <program> [args...]"
)]
pub struct OneShotArgs {
    /// The guest: host name or address, optionally with :port; or
    /// [NAME@]vsock:CID[:PORT] (AF_VSOCK), or [NAME@]vsock-unix:/PATH[:PORT]
    /// (a user-space vsock device's Unix socket).
    #[arg(long, value_name = "GUEST")]
    pub node: String,
    /// Seconds to keep trying to reach cmappserver before giving up with 1.
    #[arg(long = "cmappserver_timeout", alias = "cmappserver-timeout", value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Identify the process by this name instead of by its run string.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// watch only: run this command (split into words like a shell does, but
    /// no shell runs it) when the application ends.
    #[arg(long = "on_exit", alias = "on-exit", value_name = "COMMAND")]
    pub on_exit: Option<String>,
    /// watch only: stop watching, without reporting anything, once this
    /// process is gone (the cluster's resource executor).
    #[arg(long = "while_pid", alias = "while-pid", value_name = "PID")]
    pub while_pid: Option<u32>,
    #[command(flatten)]
    pub common: Common,
    /// The run string (everything after -service).
    #[arg(skip)]
    pub run: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    #[arg(long, value_name = "GUEST")]
    pub node: String,
    #[arg(long, alias = "cmappserver_timeout", value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Print the last N lines (at most 10000).
    #[arg(long, short = 'n', value_name = "N", default_value = "20", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub tail: u32,
    /// Then keep printing lines as the application writes them.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The service's name, when it was started with -name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub common: Common,
    /// The service's run string, as on its cmappmgr command line (after -service).
    #[arg(
        value_name = "SERVICE",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "name"
    )]
    pub service: Vec<String>,
}

/// What was asked for.
#[derive(Debug)]
pub enum Invocation {
    Monitor(MonitorArgs),
    OneShot(Verb, OneShotArgs),
    Check(CheckArgs),
    Status(StatusArgs),
    Logs(LogsArgs),
    Keygen(certs::KeygenArgs),
    /// `cmappmgr vm ...`: the VM lifecycle hooks.
    Vm(crate::vm::VmArgs),
    /// `cmappmgr demo`: the loopback demo.
    Demo,
}

use common::duration::positive as parse_seconds;

/// Long options the original spells with a single dash.
const WORD_OPTIONS: &[&str] = &[
    "node",
    "cmappserver_timeout",
    "cmappserver-timeout",
    "name",
    "detach",
    "stop_on_halt",
    "stop-on-halt",
    "forward_output",
    "forward-output",
    "no_forward_output",
    "no-forward-output",
    "follow",
    "tail",
    "conf",
    "timeout",
    "json",
    "help",
    "version",
    "verbose",
    "no_syslog",
    "on_exit",
    "while_pid",
];

/// True when argv asks for a one-shot verb (their usage errors exit 2, OCF's code).
pub fn is_one_shot(args: &[String]) -> bool {
    args.first().and_then(|w| Verb::from_word(w)).is_some()
}

/// Splits argv at `-service`: the options before it, and the run string.
fn split_service(args: Vec<String>) -> (Vec<String>, Vec<String>) {
    let at = args
        .iter()
        .position(|a| a == "-service" || a == "--service" || a.starts_with("--service=") || a.starts_with("-service="));
    match at {
        Some(i) => {
            let mut run = args[i + 1..].to_vec();
            if let Some((_, inline)) = args[i].split_once('=') {
                run.insert(0, inline.to_string());
            }
            (args[..i].to_vec(), run)
        }
        None => (args, Vec::new()),
    }
}

fn missing_run_string(usage: &str) -> clap::Error {
    clap::Error::raw(
        clap::error::ErrorKind::MissingRequiredArgument,
        format!(
            "-service <program> [args...] is required: the application to run in the guest\n\n\
             Usage: {usage}\n\n\
             For more information, try '--help'.\n"
        ),
    )
}

fn parse_one_shot(verb: Verb, args: Vec<String>) -> Result<Invocation, clap::Error> {
    let (before, run) = split_service(args);
    let argv = std::iter::once("cmappmgr".to_string()).chain(before.into_iter().map(normalise));
    let mut a = OneShotArgs::try_parse_from(argv)?;
    if run.is_empty() || run.iter().all(|s| s.trim().is_empty()) {
        return Err(missing_run_string(
            "cmappmgr start|monitor|stop|watch -node <guest> [options] -service <program> [args...]",
        ));
    }
    let watch_only = a.on_exit.is_some() || a.while_pid.is_some();
    if verb == Verb::Watch && a.on_exit.as_deref().is_none_or(|c| c.trim().is_empty()) {
        return Err(clap::Error::raw(
            clap::error::ErrorKind::MissingRequiredArgument,
            "watch needs -on_exit <command>: what to run when the application ends\n",
        ));
    }
    if verb != Verb::Watch && watch_only {
        return Err(clap::Error::raw(
            clap::error::ErrorKind::ArgumentConflict,
            "-on_exit and -while_pid belong to the watch verb only\n",
        ));
    }
    a.run = run;
    Ok(Invocation::OneShot(verb, a))
}

/// `-node` → `--node` for the known word options; everything else as is.
fn normalise(arg: String) -> String {
    common::args::single_dash_word(arg, WORD_OPTIONS)
}

/// The whole command line as one clap command, for the man page and the
/// completions: the legacy form (with `-service`, which `parse` splits off by
/// hand) and every subcommand of [`Sub`] (`vm` and `demo` included). A
/// subcommand added to [`Sub`] appears here by itself.
pub fn command() -> clap::Command {
    use clap::{Arg, CommandFactory};
    let mut cmd = MonitorArgs::command()
        .long_about(
            "Starts an application in a guest through the guest's cmappserver, or re-attaches to it \
             if it already runs there, stays connected, and exits with the application's exit code \
             the moment it ends: the form a cluster service entry runs. Options before -service may \
             be written with one dash (the original's form) or two; everything after -service is the \
             run string, passed on untouched and never given to a shell.",
        )
        .arg(
            Arg::new("service")
                .long("service")
                .value_name("PROGRAM")
                .num_args(1..)
                .trailing_var_arg(true)
                .allow_hyphen_values(true)
                .help("The application to run in the guest and its arguments: everything after -service"),
        )
        .subcommand_negates_reqs(true)
        .args_conflicts_with_subcommands(true);
    for sub in Sub::command().get_subcommands() {
        cmd = cmd.subcommand(sub.clone());
    }
    cmd
}

/// Where the run string of `logs ... SERVICE...` begins: the first argument
/// that is neither an option nor an option's value (or everything after `--`).
fn logs_service_start(args: &[String]) -> usize {
    const WITH_VALUE: &[&str] = &["node", "timeout", "cmappserver_timeout", "tail", "n", "name", "conf"];
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            return i + 1;
        }
        let Some(word) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            return i;
        };
        i += if !word.contains('=') && WITH_VALUE.contains(&word) {
            2
        } else {
            1
        };
    }
    i
}

/// Parses argv (without the program name). Errors are clap's, ready to print.
pub fn parse(args: Vec<String>) -> Result<Invocation, clap::Error> {
    match args.first().map(String::as_str) {
        Some(w) if Verb::from_word(w).is_some() => {
            let verb = Verb::from_word(w).unwrap_or(Verb::Monitor);
            return parse_one_shot(verb, args[1..].to_vec());
        }
        Some(w @ ("check" | "status" | "keygen" | "logs" | "vm" | "demo")) => {
            // `vm` is GNU-style only (its short options are letters: `-x`, `-n`, `-o`).
            let (gnu_only, logs) = (w == "vm", w == "logs");
            // The run string of `logs` is kept as written (it is the service's identity).
            let mut args = args;
            if logs {
                let cut = logs_service_start(&args);
                if cut < args.len() && args[cut - 1] != "--" {
                    args.insert(cut, "--".into());
                }
            }
            let cut = args.iter().position(|a| a == "--").unwrap_or(args.len());
            let argv = args
                .into_iter()
                .enumerate()
                .map(|(i, a)| if gnu_only || i >= cut { a } else { normalise(a) });
            return Ok(
                match Sub::try_parse_from(std::iter::once("cmappmgr".to_string()).chain(argv))?.command {
                    SubCommand::Check(c) => Invocation::Check(c),
                    SubCommand::Status(s) => Invocation::Status(s),
                    SubCommand::Logs(l) => Invocation::Logs(l),
                    SubCommand::Keygen(k) => Invocation::Keygen(k),
                    SubCommand::Vm(v) => Invocation::Vm(v),
                    SubCommand::Demo => Invocation::Demo,
                },
            );
        }
        _ => {}
    }
    let (before, run) = split_service(args);
    let argv = std::iter::once("cmappmgr".to_string()).chain(before.into_iter().map(normalise));
    let mut m = MonitorArgs::try_parse_from(argv)?;
    if run.is_empty() || run.iter().all(|s| s.trim().is_empty()) {
        return Err(missing_run_string(
            "cmappmgr -node <guest> -cmappserver_timeout <seconds> -service <program> [args...]",
        ));
    }
    m.run = run;
    Ok(Invocation::Monitor(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Result<Invocation, clap::Error> {
        parse(s.iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn the_originals_service_entry_parses() {
        let Invocation::Monitor(m) = p(&[
            "-node",
            "mmpf121",
            "-cmappserver_timeout",
            "240",
            "-service",
            "/usr/bin/X11/xclock",
            "-display",
            "16.213.12.70:0.0",
        ])
        .unwrap() else {
            panic!("not monitor")
        };
        assert_eq!(m.node, "mmpf121");
        assert_eq!(m.timeout, Duration::from_secs(240));
        assert_eq!(m.run, ["/usr/bin/X11/xclock", "-display", "16.213.12.70:0.0"]);
    }

    #[test]
    fn gnu_style_and_options_after_service_belong_to_the_run_string() {
        let Invocation::Monitor(m) = p(&[
            "--node",
            "g:5400",
            "--cmappserver_timeout=2.5",
            "--detach",
            "--service",
            "/bin/sh",
            "-c",
            "exit 7",
            "--node",
            "x",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(m.node, "g:5400");
        assert_eq!(m.timeout, Duration::from_millis(2500));
        assert!(m.detach);
        assert_eq!(m.run, ["/bin/sh", "-c", "exit 7", "--node", "x"]);
    }

    #[test]
    fn stop_on_halt_is_an_explicit_choice() {
        let Invocation::Monitor(m) = p(&["-node", "g", "-service", "/bin/true"]).unwrap() else {
            panic!()
        };
        assert!(!m.stop_on_halt && !m.detach);
        let Invocation::Monitor(m) = p(&["-node", "g", "-stop_on_halt", "-service", "/bin/true"]).unwrap() else {
            panic!()
        };
        assert!(m.stop_on_halt);
        assert!(p(&["-node", "g", "-stop_on_halt", "-detach", "-service", "x"]).is_err());
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert!(p(&["-node", "g"]).is_err(), "no -service");
        assert!(p(&["-node", "g", "-service"]).is_err(), "empty run string");
        assert!(p(&["-service", "/bin/true"]).is_err(), "no -node");
        assert!(p(&["-node", "g", "-cmappserver_timeout", "0", "-service", "x"]).is_err());
        assert!(p(&["-node", "g", "-bogus", "-service", "x"]).is_err());
    }

    #[test]
    fn the_documented_command_line_is_consistent() {
        let cmd = command();
        cmd.clone().debug_assert();
        let subs: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
        for name in ["check", "status", "keygen", "vm", "demo"] {
            assert!(subs.contains(&name), "{name} is missing from {subs:?}");
        }
    }

    #[test]
    fn subcommands_parse() {
        assert!(matches!(p(&["check", "-node", "g"]).unwrap(), Invocation::Check(_)));
        assert!(matches!(p(&["status", "--node", "g", "--json"]).unwrap(), Invocation::Status(s) if s.json));
        assert!(matches!(p(&["vm", "start", "x"]).unwrap(), Invocation::Vm(_)));
        assert!(matches!(p(&["demo"]).unwrap(), Invocation::Demo));
        // The man page and completions are cmapp-docgen's, not the binary's.
        assert!(p(&["generate", "d"]).is_err());
        assert!(p(&["demo", "extra"]).is_err());
    }

    #[test]
    fn one_shot_verbs_parse_like_the_legacy_form() {
        let Invocation::OneShot(Verb::Monitor, a) = p(&[
            "monitor", "-node", "g", "-name", "db", "-service", "/bin/app", "-node", "x",
        ])
        .unwrap() else {
            panic!("not monitor")
        };
        assert_eq!((a.node.as_str(), a.name.as_deref()), ("g", Some("db")));
        assert_eq!(a.timeout, Duration::from_secs(30));
        assert_eq!(a.run, ["/bin/app", "-node", "x"]);
        let Invocation::OneShot(Verb::Watch, w) = p(&[
            "watch",
            "-node",
            "g",
            "-on_exit",
            "crm_resource --fail -r r1",
            "-while_pid",
            "42",
            "-service",
            "/bin/app",
        ])
        .unwrap() else {
            panic!("not watch")
        };
        assert_eq!(w.on_exit.as_deref(), Some("crm_resource --fail -r r1"));
        assert_eq!(w.while_pid, Some(42));
        assert!(is_one_shot(&["stop".to_string()]));
    }

    #[test]
    fn one_shot_misuse_is_refused() {
        assert!(p(&["start", "-node", "g"]).is_err(), "no -service");
        assert!(
            p(&["watch", "-node", "g", "-service", "x"]).is_err(),
            "watch without -on_exit"
        );
        assert!(p(&["start", "-node", "g", "-on_exit", "x", "-service", "x"]).is_err());
        assert!(p(&["stop", "-node", "g", "-detach", "-service", "x"]).is_err());
    }

    #[test]
    fn logs_takes_the_run_string_as_written() {
        let Invocation::Logs(l) = p(&[
            "logs",
            "-node",
            "g",
            "-tail",
            "5",
            "-follow",
            "/bin/sh",
            "-c",
            "echo -node",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!((l.node.as_str(), l.tail, l.follow), ("g", 5, true));
        assert_eq!(l.service, ["/bin/sh", "-c", "echo -node"]);
        let Invocation::Logs(l) = p(&["logs", "--node", "g", "--name", "web"]).unwrap() else {
            panic!()
        };
        assert!(l.service.is_empty() && l.name.as_deref() == Some("web"));
        assert!(p(&["logs", "--node", "g"]).is_err(), "no service");
        let Invocation::Monitor(m) = p(&["-node", "g", "-forward_output", "-service", "x"]).unwrap() else {
            panic!()
        };
        assert!(m.forward_output);
    }
}
