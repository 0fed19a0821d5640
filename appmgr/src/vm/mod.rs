//! Host-side VM lifecycle hooks (`cmappmgr vm ...`): what the original
//! toolkit's module script (`tkit_module.sh start|stop|validate|guest_monitor`)
//! and `cmdeployvpkg -m 1|0` do for HP Integrity VM, done for KVM/QEMU guests
//! managed by libvirt, in the shape of Pacemaker's VirtualDomain agent.
//!
//! ```text
//! cmappmgr vm [--connect URI] [--virsh PATH] [--virsh-timeout SECS] COMMAND ...
//!
//!   start GUEST [--timeout SECS] [--check-node NODE [--check-timeout SECS] [--conf PATH]]
//!               [--tkit-dir DIR] [--package-conf FILE]
//!       Starts the domain unless it runs (a paused one is resumed) and waits,
//!       at most --timeout (60 s), until it is running. With --check-node, then
//!       waits at most --check-timeout (240 s) until the guest's cmappserver
//!       answers, so the application services that follow do not race the
//!       guest's boot. Already running is success. Warns if the package is in
//!       maintenance mode. A failed check leaves the domain running (the
//!       cluster runs the halt script, which stops it).
//!
//!   stop GUEST [--timeout SECS] [--force]
//!       Graceful shutdown (`virsh shutdown`: ACPI power button, or the guest
//!       agent if the domain has one), waiting at most --timeout (60 s); then,
//!       or at once with --force, --timeout 0 or a paused domain, a forced stop
//!       (`virsh destroy`). Already stopped, or not defined here, is success.
//!       Not done yet: asking the guest's cmappserver to stop its monitored
//!       applications before the shutdown.
//!
//!   monitor GUEST [--interval SECS] [--no-events] [--max-query-failures N]
//!                 [--check-node NODE [--check-timeout SECS] [--conf PATH]]
//!                 [--tkit-dir DIR] [--maintenance-flag yes|no] [--package-conf FILE]
//!       The package's guest-monitor service. Checks the domain's state every
//!       --interval seconds (MONITOR_INTERVAL, default 30; fractions allowed)
//!       and at once on each libvirt lifecycle event (a `virsh event` child;
//!       polling remains the fallback). Exits 1 when the domain is anything
//!       but running ("guest vm1 is no longer running (state: shut off)"), is
//!       no longer defined, its state cannot be read at --max-query-failures
//!       (3) intervals in a row (libvirtd down), or, with --check-node, its
//!       cmappserver does not answer within --check-timeout (10 s; asked once
//!       per interval, the first time one interval after the monitor starts).
//!       While the maintenance file exists (and MAINTENANCE_FLAG is yes) it
//!       logs "Maintenance mode is enabled for the package" and fails for
//!       nothing; once the file is removed it checks again (and fails if the
//!       domain is not running). A file created while a cycle is in flight
//!       counts: it looks again right before failing. Each change of mode is
//!       logged, and its first line says which file it watches and why. SIGTERM or
//!       SIGINT ends it with exit 0 and ends its `virsh event` child.
//!
//!   validate GUEST [--no-check-files]
//!       The domain is defined persistently on this host and its definition
//!       can be read (`virsh dominfo`, `virsh dumpxml`); the disk images,
//!       block devices and boot files it names exist.
//!
//!   maintenance on|off|status GUEST [--tkit-dir DIR] [--maintenance-flag yes|no]
//!                                   [--package-conf FILE]
//!       Creates or removes TKIT_DIR/maintenance (`cmdeployvpkg -m 1|0`), or
//!       prints `on` or `off`. `on` is refused when MAINTENANCE_FLAG is no.
//!       Without --tkit-dir or --package-conf, it uses the file a running
//!       guest monitor of GUEST watches (see [`registry`]); with one that
//!       differs from the monitor's, it refuses. Its log says where it looked.
//!
//!   deploy GUEST [-x appmon=NAME:CMD:TIMEOUT:RESTART:HALT]... [-n NODE]...
//!                [--guest-node NODE] [--tkit-dir DIR] [--maintenance-flag yes|no]
//!                [--monitor-interval SECS] [--cmappmgr PATH] [-o FILE]
//!       Writes the guest's Serviceguard package configuration
//!       (`cmdeployvpkg -P GUEST`), see [`deploy`] and `packaging/serviceguard/`.
//! ```
//!
//! In a package, e.g. for guest vm1 (an external script's start and stop,
//! and a service):
//!
//! ```text
//! start:   cmappmgr vm start vm1 --check-node vm1
//! stop:    cmappmgr vm stop vm1 --timeout 120
//! service: cmappmgr vm monitor vm1 --package-conf /etc/cmcluster/vm1/vm1.conf
//! ```
//!
//! `--connect` defaults to `$LIBVIRT_DEFAULT_URI`, then `qemu:///system`.
//! TKIT_DIR defaults to `$SGCONF/GUEST` (`/etc/cmcluster/GUEST`); TKIT_DIR,
//! MAINTENANCE_FLAG and MONITOR_INTERVAL can also come from the package
//! configuration file (`tkit/vtn/vtn/NAME value` lines): the one named by
//! --package-conf, or `$SGCONF/GUEST/GUEST.conf` if it exists, see [`tkit`].
//!
//! Exit codes: 0 success (and monitor stopped by a signal); 1 failure (the
//! domain is not running, could not be started, stopped or validated, is not
//! defined, or maintenance mode is refused); 64 usage error (`--help` exits 0).
//! Hypervisor errors are reported with the command that failed, e.g.
//! `virsh --connect qemu:///system start vm1 failed: error: ...`.
//!
//! Layout: [`hypervisor`] is the driver trait, [`virsh`] the libvirt driver,
//! [`domain`] the domain definition's parser, [`tkit`] the package attributes
//! and the maintenance file, [`registry`] where running monitors look for it;
//! one file per command.

mod deploy;
mod domain;
mod hypervisor;
mod maintenance;
mod monitor;
mod registry;
mod start;
mod stop;
mod tkit;
mod validate;
mod virsh;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use hypervisor::{HvError, Hypervisor};

use crate::exit;

/// Why a VM command failed. Every variant says which guest and what was done.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    #[error("guest {guest} is not defined on this host: {source}")]
    NotDefined {
        guest: String,
        #[source]
        source: HvError,
    },
    /// The monitor found the guest unhealthy (the original's wording).
    #[error("Service monitor detected a failure in guest {guest}: {detail}")]
    GuestFailed { guest: String, detail: String },
    /// A bad package configuration or toolkit directory.
    #[error("{0}")]
    Config(String),
    /// The guest's name cannot be a package's.
    #[error("the guest's name is the package's name, and {0}; rename the domain (virsh domrename)")]
    GuestName(#[source] deploy::NameError),
    /// A step on a file or directory failed (`doing`: "create the maintenance file", ...).
    #[error("cannot {doing} {}: {source}", path.display())]
    File {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The async runtime or the signal handlers could not be set up.
    #[error("cannot {doing}: {source}")]
    Setup {
        doing: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The guest runs, but its cmappserver did not answer in time.
    #[error(
        "guest {guest} is running but its cmappserver at {node} did not answer within {} s: {source}",
        timeout.as_secs_f64()
    )]
    NoAnswer {
        guest: String,
        node: String,
        timeout: Duration,
        #[source]
        source: Box<crate::client::ClientError>,
    },
    /// Even the forced stop failed.
    #[error("could not stop guest {guest}: {source}")]
    NotStopped {
        guest: String,
        #[source]
        source: HvError,
    },
    /// The guest did something else than asked (the full story in the message).
    #[error("{0}")]
    Failed(String),
}

impl VmError {
    /// Wraps a hypervisor error, telling "not defined" apart.
    fn from_hv(guest: &str, e: HvError) -> VmError {
        if e.is_not_found() {
            VmError::NotDefined {
                guest: guest.to_string(),
                source: e,
            }
        } else {
            VmError::Hypervisor(e)
        }
    }
}

/// The end of `cmappmgr vm --help`.
pub const AFTER_HELP: &str = "Exit codes: 0 success, 1 failure, 64 usage error.";

/// `cmappmgr vm`'s command line (a subcommand of [`crate::cli::Sub`]).
#[derive(Debug, Args)]
pub struct VmArgs {
    /// libvirt connection URI.
    #[arg(
        long,
        global = true,
        value_name = "URI",
        env = "LIBVIRT_DEFAULT_URI",
        default_value = "qemu:///system"
    )]
    connect: String,
    /// The virsh program.
    #[arg(long, global = true, value_name = "PATH", default_value = "virsh")]
    virsh: PathBuf,
    /// Longest time one virsh call may take, in seconds.
    #[arg(long, global = true, value_name = "SECS", default_value = "60", value_parser = parse_positive_secs)]
    virsh_timeout: Duration,
    /// Log debugging detail.
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    /// Do not log to syslog (stderr only).
    #[arg(long = "no-syslog", alias = "no_syslog", global = true)]
    no_syslog: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the guest unless it runs; wait until it runs (and its cmappserver answers).
    Start(StartArgs),
    /// Shut the guest down gracefully, then force it off after --timeout.
    Stop(StopArgs),
    /// Watch the guest until it stops running (the package's guest-monitor service).
    Monitor(MonitorArgs),
    /// Check that the guest is defined here and its definition is usable.
    Validate(ValidateArgs),
    /// Turn the package's maintenance mode on or off, or show it.
    Maintenance(MaintenanceArgs),
    /// Write the guest's Serviceguard package configuration (the original's cmdeployvpkg).
    Deploy(DeployArgs),
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// The libvirt domain; also the package's name.
    guest: String,
    /// An application monitor service, as cmdeployvpkg takes it (repeatable):
    /// NAME, the run string in the guest, -cmappserver_timeout, service_restart
    /// (none, unlimited or a count), service_halt_timeout.
    #[arg(short = 'x', value_name = "appmon=NAME:CMD:TIMEOUT:RESTART:HALT", value_parser = deploy::parse_x)]
    appmon: Vec<deploy::AppMon>,
    /// A cluster node that may run the package, in order (repeatable; default `*`, every node).
    #[arg(short = 'n', long = "node-name", value_name = "NODE")]
    nodes: Vec<String>,
    /// The guest's cmappserver address for the services' -node (default: the guest's name).
    #[arg(long, value_name = "NODE")]
    guest_node: Option<String>,
    /// TKIT_DIR (default $SGCONF/GUEST).
    #[arg(long, value_name = "DIR")]
    tkit_dir: Option<PathBuf>,
    /// MAINTENANCE_FLAG.
    #[arg(long, value_name = "yes|no", ignore_case = true, default_value = "yes")]
    maintenance_flag: YesNo,
    /// MONITOR_INTERVAL, seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_positive_secs)]
    monitor_interval: Duration,
    /// The cmappmgr the services run.
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/cmappmgr")]
    cmappmgr: PathBuf,
    /// Where to write the configuration (default $SGCONF/GUEST/GUEST.conf;
    /// an existing file is moved to .backup/ beside it first).
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StartArgs {
    /// The libvirt domain (the package name in the original).
    guest: String,
    /// Longest wait for the domain to be running, in seconds.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_positive_secs)]
    timeout: Duration,
    #[command(flatten)]
    check: CheckArgs,
    #[command(flatten)]
    tkit: TkitArgs,
}

#[derive(Debug, Args)]
struct StopArgs {
    guest: String,
    /// Longest wait for the graceful shutdown before forcing the guest off, in
    /// seconds (0: force at once).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    timeout: Duration,
    /// Force the guest off at once (`virsh destroy`), without a graceful shutdown.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct MonitorArgs {
    guest: String,
    /// Seconds between checks (MONITOR_INTERVAL; default 30, or the package's).
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    interval: Option<Duration>,
    /// Do not subscribe to libvirt lifecycle events; poll only.
    #[arg(long)]
    no_events: bool,
    /// Fail after this many state queries in a row fail (libvirtd unreachable).
    #[arg(long, value_name = "N", default_value = "3", value_parser = clap::value_parser!(u32).range(1..))]
    max_query_failures: u32,
    #[command(flatten)]
    check: CheckArgs,
    #[command(flatten)]
    tkit: TkitArgs,
}

#[derive(Debug, Args)]
struct ValidateArgs {
    guest: String,
    /// Do not check that the disk images and boot files exist.
    #[arg(long)]
    no_check_files: bool,
}

#[derive(Debug, Args)]
struct MaintenanceArgs {
    action: MaintenanceAction,
    guest: String,
    #[command(flatten)]
    tkit: TkitArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MaintenanceAction {
    On,
    Off,
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum YesNo {
    Yes,
    No,
}

/// The optional check that the guest's cmappserver answers.
#[derive(Debug, Args)]
struct CheckArgs {
    /// The guest's cmappserver (host name or address, optionally :port).
    #[arg(long, value_name = "NODE")]
    check_node: Option<String>,
    /// Longest wait for the guest's cmappserver to answer, in seconds
    /// (default: 240 for start, 10 for monitor).
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    check_timeout: Option<Duration>,
    /// cmappmgr's configuration (keys and trust stores for the check).
    #[arg(long, value_name = "PATH", default_value = "/etc/cmappmgr.conf")]
    conf: PathBuf,
}

impl CheckArgs {
    fn guest_check(&self, default_timeout: Duration) -> Option<GuestCheck> {
        self.check_node.as_ref().map(|node| GuestCheck {
            node: node.clone(),
            conf: self.conf.clone(),
            timeout: self.check_timeout.unwrap_or(default_timeout),
        })
    }
}

/// The toolkit's package attributes (see [`tkit`]).
#[derive(Debug, Args)]
struct TkitArgs {
    /// The package directory holding the maintenance file (TKIT_DIR;
    /// default /etc/cmcluster/GUEST).
    #[arg(long, value_name = "DIR")]
    tkit_dir: Option<PathBuf>,
    /// Whether the package may run in maintenance mode (MAINTENANCE_FLAG; default yes).
    #[arg(long, value_name = "yes|no", ignore_case = true)]
    maintenance_flag: Option<YesNo>,
    /// A Serviceguard package configuration file to read TKIT_DIR,
    /// MAINTENANCE_FLAG and MONITOR_INTERVAL from.
    #[arg(long, value_name = "FILE")]
    package_conf: Option<PathBuf>,
}

impl TkitArgs {
    fn resolve(&self, guest: &str) -> Result<tkit::Toolkit, VmError> {
        tkit::Toolkit::resolve(
            guest,
            &tkit::Overrides {
                tkit_dir: self.tkit_dir.clone(),
                maintenance_flag: self.maintenance_flag.map(|f| f == YesNo::Yes),
                package_conf: self.package_conf.clone(),
            },
        )
    }
}

/// Wait for the guest's cmappserver to answer.
#[derive(Debug, Clone)]
pub struct GuestCheck {
    pub node: String,
    pub conf: PathBuf,
    pub timeout: Duration,
}

impl GuestCheck {
    /// Asks the guest's cmappserver once (the client retries until the
    /// timeout); bounded even if the client overruns it.
    async fn ask(&self) -> Result<common::message::Welcome, crate::client::ClientError> {
        use crate::error::{Cause, ClientError, ConfigError};
        let conf = common::config::ManagerConfig::load(&self.conf).map_err(ConfigError::File)?;
        let grace = Duration::from_secs(5);
        match tokio::time::timeout(
            self.timeout + grace,
            crate::client::check(&conf, &self.node, self.timeout),
        )
        .await
        {
            Ok(r) => r.map(|c| c.welcome),
            Err(_) => Err(ClientError::unreachable(
                format!("asking the cmappserver at {}", self.node),
                Cause::TimedOut,
            )),
        }
    }
}

use common::duration::{non_negative as parse_secs, positive as parse_positive_secs};

/// The runtime for the async parts (signals, events, the cmappserver check):
/// the program's one kind (see [`crate::runtime`]).
fn runtime() -> Result<tokio::runtime::Runtime, VmError> {
    crate::runtime().map_err(|source| VmError::Setup {
        doing: "start the async runtime",
        source,
    })
}

/// Runs `cmappmgr vm`; returns the exit code.
pub fn main(args: VmArgs) -> i32 {
    crate::init_logging(args.verbose, !args.no_syslog);
    match run(args) {
        Ok(()) => exit::vm::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            exit::vm::FAILURE
        }
    }
}

/// The maintenance file a running guest monitor of `guest` looks for, if
/// there is one and it differs from `own`: without a TKIT_DIR chosen on
/// purpose, `maintenance` uses the monitor's; with one, it refuses, since a
/// file the monitor does not read would not protect the package.
fn follow_monitor(guest: &str, own: tkit::Toolkit) -> Result<tkit::Toolkit, VmError> {
    let monitors = registry::monitors(guest);
    let Some(m) = monitors.iter().find(|m| m.tkit_dir != own.tkit_dir) else {
        if monitors.is_empty() {
            tracing::debug!("no guest monitor of {guest} runs on this node");
        }
        return Ok(own);
    };
    let theirs = m.tkit_dir.join(tkit::MAINTENANCE_FILE);
    if own.explicit {
        return Err(VmError::Config(format!(
            "the guest monitor of {guest} (pid {}) looks for the maintenance file at {} (TKIT_DIR from {}), \
             not at {}: give --tkit-dir {} or correct TKIT_DIR",
            m.pid,
            theirs.display(),
            m.tkit_dir_from,
            own.describe(),
            m.tkit_dir.display()
        )));
    }
    Ok(tkit::Toolkit {
        tkit_dir: m.tkit_dir.clone(),
        maintenance_allowed: m.maintenance_allowed,
        monitor_interval: own.monitor_interval,
        tkit_dir_from: format!(
            "the running guest monitor of {guest} (pid {}), which has it from {}",
            m.pid, m.tkit_dir_from
        ),
        explicit: false,
    })
}

fn run(cli: VmArgs) -> Result<(), VmError> {
    let cli_uri = cli.connect.clone();
    let hv = Arc::new(virsh::Virsh::new(cli.virsh, cli.connect, cli.virsh_timeout));
    match cli.command {
        Command::Start(a) => {
            let tkit = a.tkit.resolve(&a.guest)?;
            let opts = start::StartOptions {
                timeout: a.timeout,
                check: a.check.guest_check(Duration::from_secs(240)),
            };
            start::run(hv.as_ref(), &a.guest, &tkit, &opts)
        }
        Command::Stop(a) => {
            let opts = stop::StopOptions {
                timeout: a.timeout,
                force: a.force,
            };
            stop::run(hv.as_ref(), &a.guest, &opts)
        }
        Command::Monitor(a) => {
            let tkit = a.tkit.resolve(&a.guest)?;
            let opts = monitor::MonitorOptions {
                interval: a
                    .interval
                    .or(tkit.monitor_interval)
                    .unwrap_or(tkit::DEFAULT_MONITOR_INTERVAL),
                events: !a.no_events,
                max_query_failures: a.max_query_failures,
                check: a.check.guest_check(Duration::from_secs(10)),
            };
            let hv: Arc<dyn Hypervisor> = hv;
            monitor::run(hv, a.guest, tkit, opts)
        }
        Command::Validate(a) => validate::run(hv.as_ref(), &a.guest, !a.no_check_files),
        Command::Deploy(a) => {
            let opts = deploy::DeployOptions {
                appmons: a.appmon,
                nodes: a.nodes,
                guest_node: a.guest_node,
                tkit_dir: a.tkit_dir,
                maintenance_flag: a.maintenance_flag == YesNo::Yes,
                monitor_interval: a.monitor_interval,
                cmappmgr: a.cmappmgr,
                uri: cli_uri,
                output: a.output,
            };
            deploy::run(hv.as_ref(), &a.guest, &opts)
        }
        Command::Maintenance(a) => {
            let tkit = follow_monitor(&a.guest, a.tkit.resolve(&a.guest)?)?;
            let action = match a.action {
                MaintenanceAction::On => maintenance::Action::On,
                MaintenanceAction::Off => maintenance::Action::Off,
                MaintenanceAction::Status => maintenance::Action::Status,
            };
            maintenance::run(action, &a.guest, &tkit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cmappmgr vm ARGS`, through the program's own parser.
    fn parse(args: &[&str]) -> Result<VmArgs, clap::Error> {
        let argv = std::iter::once("vm").chain(args.iter().copied()).map(String::from);
        match crate::cli::parse(argv.collect())? {
            crate::cli::Invocation::Vm(v) => Ok(v),
            other => panic!("not vm: {other:?}"),
        }
    }

    #[test]
    fn options_and_defaults() {
        let cli = parse(&["monitor", "vm1", "--interval", "0.5", "--connect", "test:///default"]).unwrap();
        assert_eq!(cli.connect, "test:///default");
        let Command::Monitor(m) = cli.command else { panic!() };
        assert_eq!(m.interval, Some(Duration::from_millis(500)));
        assert_eq!(m.check.check_timeout, None);
        assert_eq!(m.check.conf, PathBuf::from("/etc/cmappmgr.conf"));

        let Command::Start(s) = parse(&["start", "vm1"]).unwrap().command else {
            panic!()
        };
        assert_eq!(s.timeout, Duration::from_secs(60));
        assert!(s.check.guest_check(Duration::from_secs(240)).is_none());
        let Command::Start(s) = parse(&["start", "vm1", "--check-node", "g1"]).unwrap().command else {
            panic!()
        };
        assert_eq!(
            s.check.guest_check(Duration::from_secs(240)).unwrap().timeout,
            Duration::from_secs(240)
        );

        let Command::Stop(s) = parse(&["stop", "vm1", "--timeout", "0"]).unwrap().command else {
            panic!()
        };
        assert_eq!(s.timeout, Duration::ZERO);

        let Command::Maintenance(m) = parse(&["maintenance", "on", "vm1", "--maintenance-flag", "NO"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(m.action, MaintenanceAction::On);
        assert_eq!(m.tkit.maintenance_flag, Some(YesNo::No));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(parse(&["monitor", "vm1", "--interval", "0"]).is_err());
        assert!(parse(&["monitor", "vm1", "--interval", "-1"]).is_err());
        assert!(parse(&["stop", "vm1", "--timeout", "soon"]).is_err());
        assert!(parse(&["maintenance", "maybe", "vm1"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&[]).is_err());
        // A long option spelled with one dash is not rewritten for vm.
        assert!(parse(&["stop", "vm1", "-timeout", "5"]).is_err());
        assert_eq!(
            AFTER_HELP,
            format!(
                "Exit codes: {} success, {} failure, {} usage error.",
                exit::vm::SUCCESS,
                exit::vm::FAILURE,
                exit::USAGE
            )
        );
        let help = parse(&["--help"]).unwrap_err();
        assert!(!help.use_stderr(), "--help is not an error");
    }
}
