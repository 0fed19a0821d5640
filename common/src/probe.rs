//! The built-in probes' interface, known in one place.
//!
//! cmappserver runs the probes (`cmappserver net-mon`, `disk-mon`, or under
//! the original's program names); cmappmgr reads a probe's run string for the
//! host log file it must write. Both use the option definitions here, so a
//! spelling the probe accepts (`--host-logfile=X`, `-OX`, ...) is one cmappmgr
//! sees: [`Probe::host_log_file`] parses with the very parser the probe runs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, Parser};
use serde::{Deserialize, Deserializer, Serialize};

use crate::duration;

/// A built-in probe cmappserver runs in place of the original's scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Probe {
    /// The LAN probe (`cmapp_net_mon`, `cmapp_net_mon.pl`): [`NetArgs`].
    #[serde(rename = "net-mon")]
    Net,
    /// The disk probe (`cmapp_disk_mon`, `cmapp_disk_mon.pl`): [`DiskArgs`].
    #[serde(rename = "disk-mon")]
    Disk,
}

impl Probe {
    /// Every probe.
    pub const ALL: [Probe; 2] = [Probe::Net, Probe::Disk];

    /// The program names it is installed and named under in run strings;
    /// the first is the name it logs under.
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Probe::Net => &["cmapp_net_mon", "cmapp_net_mon.pl"],
            Probe::Disk => &["cmapp_disk_mon", "cmapp_disk_mon.pl"],
        }
    }

    /// The name it logs under (`cmapp_net_mon`).
    pub fn name(self) -> &'static str {
        self.programs()[0]
    }

    /// Recognises a probe by the file name of `program`, wherever it points.
    pub fn from_program(program: &str) -> Option<Probe> {
        let base = program.rsplit('/').next().unwrap_or(program);
        Probe::ALL.into_iter().find(|p| p.programs().contains(&base))
    }

    /// The subcommand of `cmappserver` that runs it (also its name in the
    /// state directory and on the wire).
    pub fn subcommand(self) -> &'static str {
        match self {
            Probe::Net => "net-mon",
            Probe::Disk => "disk-mon",
        }
    }

    /// The probe a subcommand names.
    pub fn from_subcommand(word: &str) -> Option<Probe> {
        Probe::ALL.into_iter().find(|p| p.subcommand() == word)
    }

    /// Its options, as clap parses them.
    pub fn command(self) -> clap::Command {
        match self {
            Probe::Net => NetArgs::command(),
            Probe::Disk => DiskArgs::command(),
        }
        .name(self.name())
    }

    /// The id of the option that names the host log file (see [`Probe::host_log_file`]).
    pub fn host_log_option(self) -> &'static str {
        match self {
            Probe::Net => "host_logfile",
            Probe::Disk => "log_file",
        }
    }

    /// The arguments as clap should see them: the LAN probe, like the
    /// original's Perl option parser, also takes single-dash long options
    /// (`-probe_count 5`).
    pub fn normalise(self, args: Vec<String>) -> Vec<String> {
        match self {
            Probe::Net => crate::args::single_dash(args, &crate::args::long_names(&self.command())),
            Probe::Disk => args,
        }
    }

    /// The host log file that `args` (the arguments after the program name)
    /// name, in any spelling the probe itself accepts; `None` if they name
    /// none (or only a value the probe would refuse, such as a relative path).
    /// Parsed leniently: a missing option, or a mistake after the host log
    /// option, which the probe reports in the guest, still leaves the host
    /// log file found, so that the report reaches it.
    pub fn host_log_file(self, args: &[String]) -> Option<PathBuf> {
        let argv = std::iter::once(self.name().to_string()).chain(self.normalise(args.to_vec()));
        let matches = self
            .command()
            .ignore_errors(true)
            .disable_help_flag(true)
            .disable_version_flag(true)
            .try_get_matches_from(argv)
            .ok()?;
        matches
            .try_get_one::<PathBuf>(self.host_log_option())
            .ok()
            .flatten()
            .cloned()
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.subcommand())
    }
}

/// Deserialises an optional probe, reading a name this build does not know
/// (a newer peer's or a newer server's record) as no probe rather than
/// refusing the whole message or record. For `#[serde(deserialize_with)]`.
pub fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Probe>, D::Error> {
    let word = Option::<String>::deserialize(d)?;
    Ok(word.as_deref().and_then(Probe::from_subcommand))
}

/// The LAN probe's options, the original's. Each also has a spelling with
/// dashes (`--guest-logfile`), and, as with the original's Perl option
/// parser, a single leading dash works too (`-probe_count 5`, see
/// [`Probe::normalise`]).
#[derive(Debug, Parser)]
#[command(
    name = "cmapp_net_mon",
    version,
    about = "Watch a guest LAN: ping a target through it, exit 1 when it fails"
)]
pub struct NetArgs {
    /// The LAN (network interface) to watch, e.g. eth1
    #[arg(long, value_name = "LAN", value_parser = parse_lan)]
    pub lan: String,
    /// The address to ping through it, e.g. the gateway all package nodes share
    #[arg(long, value_name = "IP_ADDRESS")]
    pub ip: IpAddr,
    /// A file in this guest that gets a copy of every log line
    #[arg(long = "guest_logfile", alias = "guest-logfile", value_name = "FILE")]
    pub guest_logfile: Option<PathBuf>,
    /// The file on the host that cmappmgr writes this probe's output to
    /// (accepted and checked, never opened here)
    #[arg(long = "host_logfile", alias = "host-logfile", value_name = "FILE", value_parser = parse_host_path)]
    pub host_logfile: Option<PathBuf>,
    /// 0: failures only; 1: also missed pings; 2: every ping
    #[arg(long = "log_level", alias = "log-level", value_name = "LEVEL", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=2))]
    pub log_level: u8,
    /// Consecutive missed pings that declare the LAN down
    #[arg(long = "probe_count", alias = "probe-count", value_name = "COUNT", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub probe_count: u32,
    /// Seconds between pings, and how long each waits for its reply (fractions allowed)
    #[arg(long = "polling_interval", alias = "polling-interval", value_name = "SECONDS",
          default_value = "2", value_parser = duration::positive)]
    pub polling_interval: Duration,
}

/// The disk probe's options: the original's, plus `--io-timeout`. The
/// manual's example also spells them with underscores (`--log_level`), which
/// works too. Devices may come before, between or after the options.
#[derive(Debug, Parser)]
#[command(
    name = "cmapp_disk_mon",
    version,
    disable_version_flag = true,
    about = "Watch guest disks: read each one every poll interval, exit 1 when one fails"
)]
pub struct DiskArgs {
    /// The file on the host that cmappmgr writes this probe's output to
    /// (accepted and checked, never opened here)
    #[arg(short = 'O', long = "log-file", alias = "log_file", value_name = "LOG_FILE",
          value_parser = parse_host_path)]
    pub log_file: Option<PathBuf>,
    /// 0-7, as syslog severities: failures always; 4 and up: slow reads;
    /// 6 and up: every poll; 7: every read
    #[arg(short = 'D', long = "log-level", alias = "log_level", value_name = "LEVEL", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=7))]
    pub log_level: u8,
    /// Seconds between polls, greater than 0 (fractions allowed)
    #[arg(short = 't', long = "poll-interval", alias = "poll_interval", value_name = "SECONDS",
          default_value = "60", value_parser = duration::positive)]
    pub poll_interval: Duration,
    /// Seconds a device's reads may take before it counts as hung
    #[arg(long = "io-timeout", alias = "io_timeout", value_name = "SECONDS", default_value = "10",
          value_parser = duration::positive)]
    pub io_timeout: Duration,
    /// Print the version
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    pub version: Option<bool>,
    /// The disks to watch, e.g. /dev/sdb
    #[arg(value_name = "DISK", required = true)]
    pub devices: Vec<PathBuf>,
}

/// A probe option's value that is not of its form (clap adds the option's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeArgError {
    #[error("{0:?} is not a network interface name")]
    Interface(String),
    #[error("{0:?} is not an absolute path")]
    NotAbsolute(String),
}

/// Interface names are at most 15 bytes and never contain `/` or spaces.
fn parse_lan(s: &str) -> Result<String, ProbeArgError> {
    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ', '\t', '\n']) {
        return Err(ProbeArgError::Interface(s.into()));
    }
    Ok(s.to_string())
}

/// Checks a host log file option: written by cmappmgr on the host, so in the
/// guest only its form matters.
fn parse_host_path(s: &str) -> Result<PathBuf, ProbeArgError> {
    if s.is_empty() || !s.starts_with('/') {
        return Err(ProbeArgError::NotAbsolute(s.into()));
    }
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn probes_are_recognised_by_program_name_anywhere() {
        assert_eq!(
            Probe::from_program("/opt/hp/cmappserver/cmapp_net_mon.pl"),
            Some(Probe::Net)
        );
        assert_eq!(Probe::from_program("cmapp_disk_mon"), Some(Probe::Disk));
        assert_eq!(Probe::from_program("/usr/bin/cmapp_disk_monitor"), None);
    }

    #[test]
    fn each_probe_has_its_program_names_and_its_subcommand() {
        assert_eq!(Probe::Net.programs(), ["cmapp_net_mon", "cmapp_net_mon.pl"]);
        assert_eq!(Probe::Disk.programs(), ["cmapp_disk_mon", "cmapp_disk_mon.pl"]);
        assert_eq!(
            (Probe::Net.name(), Probe::Disk.name()),
            ("cmapp_net_mon", "cmapp_disk_mon")
        );
        assert_eq!(
            (Probe::Net.to_string(), Probe::Disk.to_string()),
            ("net-mon".into(), "disk-mon".into())
        );
        assert_eq!(Probe::from_subcommand("disk-mon"), Some(Probe::Disk));
        assert_eq!(Probe::from_subcommand("cmapp_disk_mon"), None);
        assert_eq!(Probe::Disk.command().get_name(), "cmapp_disk_mon");
        assert_eq!(Probe::Net.command().get_name(), "cmapp_net_mon");
    }

    #[test]
    fn a_lan_is_an_interface_name_of_1_to_15_bytes() {
        let net = |lan: &str| NetArgs::try_parse_from(["p", "--lan", lan, "--ip", "10.0.0.1"]).map(|a| a.lan);
        for ok in ["eth0", "a", "enp0s31f6.12345"] {
            assert_eq!(net(ok).unwrap(), ok);
        }
        for bad in ["", "enp0s31f6.123456", "a/b", "a b", "a\tb"] {
            let e = net(bad).unwrap_err().to_string();
            assert!(e.contains("is not a network interface name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_host_log_option_is_one_the_parser_defines() {
        for p in Probe::ALL {
            let cmd = p.command();
            let arg = cmd.get_arguments().find(|a| a.get_id() == p.host_log_option());
            assert!(arg.is_some(), "{p}: no option {}", p.host_log_option());
            assert_eq!(Probe::from_subcommand(p.subcommand()), Some(p));
        }
    }

    #[test]
    fn the_host_log_file_in_every_spelling_the_probe_accepts() {
        let x = Some(PathBuf::from("/var/adm/x.log"));
        let net = ["--lan", "eth0", "--ip", "10.0.0.1"];
        for spelling in [
            &["--host_logfile", "/var/adm/x.log"][..],
            &["--host_logfile=/var/adm/x.log"],
            &["--host-logfile", "/var/adm/x.log"],
            &["--host-logfile=/var/adm/x.log"],
            &["-host_logfile", "/var/adm/x.log"],
            &["-host_logfile=/var/adm/x.log"],
            &["-host-logfile", "/var/adm/x.log"],
        ] {
            let args = s(&[&net[..], spelling].concat());
            assert_eq!(Probe::Net.host_log_file(&args), x, "{spelling:?}");
            // The probe itself takes the same spelling.
            let parsed =
                NetArgs::try_parse_from(std::iter::once("p".to_string()).chain(Probe::Net.normalise(args.clone())))
                    .unwrap();
            assert_eq!(parsed.host_logfile, x, "{spelling:?}");
        }
        for spelling in [
            &["-O", "/var/adm/x.log"][..],
            &["-O/var/adm/x.log"],
            &["-O=/var/adm/x.log"],
            &["--log-file", "/var/adm/x.log"],
            &["--log-file=/var/adm/x.log"],
            &["--log_file", "/var/adm/x.log"],
            &["--log_file=/var/adm/x.log"],
            &["-D6", "-O/var/adm/x.log"],
        ] {
            let args = s(&[spelling, &["/dev/sdb"][..]].concat());
            assert_eq!(Probe::Disk.host_log_file(&args), x, "{spelling:?}");
            let parsed = DiskArgs::try_parse_from(std::iter::once("p".to_string()).chain(args)).unwrap();
            assert_eq!(parsed.log_file, x, "{spelling:?}");
        }
    }

    #[test]
    fn a_later_mistake_leaves_the_host_log_file_found() {
        let args = s(&["--host-logfile", "/h.log", "--lan", "a/b", "--bogus"]);
        assert_eq!(Probe::Net.host_log_file(&args), Some(PathBuf::from("/h.log")));
        // No device (the probe refuses that) and help asked for.
        assert_eq!(
            Probe::Disk.host_log_file(&s(&["-O/h.log", "-h"])),
            Some(PathBuf::from("/h.log"))
        );
        // What the probe refuses names no host file: relative, empty, absent.
        assert_eq!(Probe::Disk.host_log_file(&s(&["-O", "x.log", "/dev/sdb"])), None);
        assert_eq!(Probe::Net.host_log_file(&s(&["--host_logfile="])), None);
        assert_eq!(Probe::Net.host_log_file(&s(&["--lan", "eth0"])), None);
        // After `--`, an option is an argument.
        assert_eq!(Probe::Disk.host_log_file(&s(&["--", "-O/h.log"])), None);
    }

    #[test]
    fn serialised_as_the_subcommand_and_read_leniently() {
        assert_eq!(serde_json::to_string(&Probe::Net).unwrap(), "\"net-mon\"");
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "lenient", default)]
            probe: Option<Probe>,
        }
        let t: T = serde_json::from_str(r#"{"probe":"disk-mon"}"#).unwrap();
        assert_eq!(t.probe, Some(Probe::Disk));
        let t: T = serde_json::from_str(r#"{"probe":"future-mon"}"#).unwrap();
        assert_eq!(t.probe, None);
        let t: T = serde_json::from_str(r#"{"probe":null}"#).unwrap();
        assert_eq!(t.probe, None);
    }
}
