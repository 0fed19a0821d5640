//! The original product's configuration files, and our additions to them.
//!
//! Both files are Java-properties style: one `key=value` per line, `#` or `!`
//! starts a comment line, white space around keys and values is ignored, and
//! an empty value means "use the default" (the original ships its files with
//! `keyStore=` lines for exactly that). Keys are matched without regard to
//! case. An unknown key, a bad value or a key given twice is an error naming
//! the file and the line; [`ServerConfig::load`] and [`ManagerConfig::load`]
//! collect every problem in a file, not only the first, so that
//! `cmappserver --check-config` can list them all.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::DEFAULT_PORT;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line number, when the problem has one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one file (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A `key=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// Splits a properties text into entries; lines without a separator are errors.
pub fn parse_properties(path: &Path, text: &str) -> (Vec<Entry>, Vec<ConfigError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        match line.find(['=', ':']) {
            Some(at) if at > 0 => entries.push(Entry {
                key: line[..at].trim().to_string(),
                value: line[at + 1..].trim().to_string(),
                line: i + 1,
            }),
            _ => errors.push(ConfigError {
                path: path.to_path_buf(),
                line: Some(i + 1),
                message: format!("expected key=value, found {line:?}"),
            }),
        }
    }
    (entries, errors)
}

/// Walks the entries of one file, checking keys and collecting errors.
struct Reader<'a> {
    path: &'a Path,
    errors: Vec<ConfigError>,
    seen: BTreeMap<String, usize>,
}

impl<'a> Reader<'a> {
    fn new(path: &'a Path) -> Self {
        Reader {
            path,
            errors: Vec::new(),
            seen: BTreeMap::new(),
        }
    }

    fn error(&mut self, line: usize, message: String) {
        self.errors.push(ConfigError {
            path: self.path.to_path_buf(),
            line: Some(line),
            message,
        });
    }

    /// Records a single-valued key; a second occurrence is an error.
    fn once(&mut self, e: &Entry, canonical: &str) -> bool {
        if let Some(first) = self.seen.insert(canonical.to_string(), e.line) {
            self.error(e.line, format!("{canonical} is set twice (first on line {first})"));
            return false;
        }
        true
    }

    fn parse<T: std::str::FromStr>(&mut self, e: &Entry, canonical: &str, what: &str) -> Option<T> {
        match e.value.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(e.line, format!("{canonical}={} is not {what}", e.value));
                None
            }
        }
    }

    fn seconds(&mut self, e: &Entry, canonical: &str, allow_zero: bool) -> Option<Duration> {
        let secs: f64 = self.parse(e, canonical, "a number of seconds")?;
        if !secs.is_finite() || secs < 0.0 || (!allow_zero && secs == 0.0) || secs > 1e9 {
            let range = if allow_zero { "0 or more" } else { "more than 0" };
            self.error(e.line, format!("{canonical}={} must be {range} seconds", e.value));
            return None;
        }
        Some(Duration::from_secs_f64(secs))
    }

    fn count(&mut self, e: &Entry, canonical: &str, min: usize, max: usize) -> Option<usize> {
        let n: usize = self.parse(e, canonical, "a whole number")?;
        if n < min || n > max {
            self.error(e.line, format!("{canonical}={n} must be between {min} and {max}"));
            return None;
        }
        Some(n)
    }

    fn boolean(&mut self, e: &Entry, canonical: &str) -> Option<bool> {
        match e.value.to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" | "1" => Some(true),
            "no" | "false" | "off" | "0" => Some(false),
            _ => {
                self.error(e.line, format!("{canonical}={} is not yes or no", e.value));
                None
            }
        }
    }

    fn unknown(&mut self, e: &Entry, known: &[&str]) {
        self.error(
            e.line,
            format!("unknown key {:?} (known keys: {})", e.key, known.join(", ")),
        );
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read configuration file: {e}"),
        }])
    })
}

/// Finds the canonical spelling of `key` among `known`, ignoring case.
fn canonical<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known.iter().copied().find(|k| k.eq_ignore_ascii_case(key))
}

/// `cmappserver.conf`: what the guest daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// PEM file with the server's private key and certificate (chain).
    pub key_store: PathBuf,
    /// Password of an encrypted PKCS#8 key in `key_store`; unused otherwise.
    pub key_store_password: String,
    /// PEM file with the certificates of trusted managers or their CAs.
    pub trust_store: PathBuf,
    /// Accepted for compatibility; PEM trust stores have no password.
    pub trust_store_password: String,
    /// Addresses to listen on; empty means every address, IPv4 and IPv6, on `port`.
    pub listen: Vec<SocketAddr>,
    pub port: u16,
    /// At most this many monitored processes (running or with an uncollected exit status).
    pub max_processes: usize,
    /// Time between TERM and KILL when stopping a process group.
    pub stop_grace: Duration,
    /// Where process records and supervisors' sockets live.
    pub state_dir: PathBuf,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    /// Exit statuses kept for managers that have not collected them yet.
    pub exit_history: usize,
    /// A connection that sends nothing for this long is closed (managers ping far more often).
    pub idle_timeout: Duration,
    /// Stop monitored processes when cmappserver itself is stopped (the
    /// original's behaviour is to leave them running; so is ours by default).
    pub stop_processes_on_shutdown: bool,
}

impl ServerConfig {
    pub const DEFAULT_PATH: &'static str = "/opt/hp/cmappserver/cmappserver.conf";
    const KEYS: &'static [&'static str] = &[
        "keyStore",
        "keyStorePassword",
        "trustStore",
        "trustStorePassword",
        "listen",
        "port",
        "maxProcesses",
        "stopGracePeriod",
        "stateDir",
        "handshakeTimeout",
        "maxConnections",
        "exitHistory",
        "idleTimeout",
        "stopProcessesOnShutdown",
    ];

    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = read_file(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let (entries, errors) = parse_properties(path, text);
        let mut r = Reader::new(path);
        r.errors = errors;
        let mut c = ServerConfig::default();
        for e in &entries {
            let Some(key) = canonical(&e.key, Self::KEYS) else {
                r.unknown(e, Self::KEYS);
                continue;
            };
            if key != "listen" && !r.once(e, key) {
                continue;
            }
            if e.value.is_empty() {
                continue; // the default stands, as in the original's files
            }
            match key {
                "keyStore" => c.key_store = e.value.clone().into(),
                "keyStorePassword" => c.key_store_password = e.value.clone(),
                "trustStore" => c.trust_store = e.value.clone().into(),
                "trustStorePassword" => c.trust_store_password = e.value.clone(),
                "listen" => {
                    if let Some(a) = r.parse(e, key, "an address and port such as 0.0.0.0:5315 or [::1]:5315") {
                        c.listen.push(a)
                    }
                }
                "port" => c.port = r.parse(e, key, "a port number").unwrap_or(c.port),
                "maxProcesses" => c.max_processes = r.count(e, key, 1, 100_000).unwrap_or(c.max_processes),
                "stopGracePeriod" => c.stop_grace = r.seconds(e, key, true).unwrap_or(c.stop_grace),
                "stateDir" => c.state_dir = e.value.clone().into(),
                "handshakeTimeout" => c.handshake_timeout = r.seconds(e, key, false).unwrap_or(c.handshake_timeout),
                "maxConnections" => c.max_connections = r.count(e, key, 1, 1_000_000).unwrap_or(c.max_connections),
                "exitHistory" => c.exit_history = r.count(e, key, 1, 1_000_000).unwrap_or(c.exit_history),
                "idleTimeout" => c.idle_timeout = r.seconds(e, key, false).unwrap_or(c.idle_timeout),
                "stopProcessesOnShutdown" => {
                    c.stop_processes_on_shutdown = r.boolean(e, key).unwrap_or(c.stop_processes_on_shutdown)
                }
                _ => unreachable!("every known key is handled"),
            }
        }
        r.finish(c)
    }

    /// The addresses to bind: the configured ones, or `[::]` and `0.0.0.0` on `port`.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        if self.listen.is_empty() {
            vec![
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, self.port)),
                SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, self.port)),
            ]
        } else {
            self.listen.clone()
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            key_store: "/opt/hp/cmappserver/server.private".into(),
            key_store_password: "serverpw".into(),
            trust_store: "/opt/hp/cmappserver/client.public".into(),
            trust_store_password: "public".into(),
            listen: Vec::new(),
            port: DEFAULT_PORT,
            max_processes: 30,
            stop_grace: Duration::from_secs(10),
            state_dir: "/var/lib/cmappserver".into(),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            exit_history: 256,
            idle_timeout: Duration::from_secs(120),
            stop_processes_on_shutdown: false,
        }
    }
}

/// `/etc/cmappmgr.conf`: what the host-side manager runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerConfig {
    pub key_store: PathBuf,
    pub key_store_password: String,
    /// The trust store for nodes without one of their own.
    pub trust_store: PathBuf,
    /// `trustStore=<node>:<path>` entries, by lower-case node name.
    pub node_trust_stores: BTreeMap<String, PathBuf>,
    pub trust_store_password: String,
    /// Port used when `-node` names none.
    pub port: u16,
    /// Interval between pings; by default a quarter of the timeout, between 0.2 and 5 seconds.
    pub ping_interval: Option<Duration>,
    /// How long to wait for a stopped application to be gone (on SIGTERM with
    /// `stop_on_halt`, or a one-shot stop).
    pub stop_timeout: Duration,
    /// Stop the application when cmappmgr is halted (SIGTERM). Off by
    /// default: as in the original, a halted manager leaves it running.
    pub stop_on_halt: bool,
}

impl ManagerConfig {
    pub const DEFAULT_PATH: &'static str = "/etc/cmappmgr.conf";
    const KEYS: &'static [&'static str] = &[
        "keyStore",
        "keyStorePassword",
        "trustStore",
        "trustStorePassword",
        "port",
        "pingInterval",
        "stopTimeout",
        "stopOnHalt",
    ];

    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = read_file(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let (entries, errors) = parse_properties(path, text);
        let mut r = Reader::new(path);
        r.errors = errors;
        let mut c = ManagerConfig::default();
        for e in &entries {
            let Some(key) = canonical(&e.key, Self::KEYS) else {
                r.unknown(e, Self::KEYS);
                continue;
            };
            if key == "trustStore" {
                match split_node_prefix(&e.value) {
                    (Some(node), p) => {
                        if p.is_empty() {
                            r.error(e.line, format!("trustStore for node {node} names no file"));
                        } else if let Some(_old) = c.node_trust_stores.insert(node.to_ascii_lowercase(), p.into()) {
                            r.error(e.line, format!("trustStore for node {node} is set twice"));
                        }
                    }
                    (None, p) => {
                        if r.once(e, "trustStore (default)") && !p.is_empty() {
                            c.trust_store = p.into();
                        }
                    }
                }
                continue;
            }
            if !r.once(e, key) || e.value.is_empty() {
                continue;
            }
            match key {
                "keyStore" => c.key_store = e.value.clone().into(),
                "keyStorePassword" => c.key_store_password = e.value.clone(),
                "trustStorePassword" => c.trust_store_password = e.value.clone(),
                "port" => c.port = r.parse(e, key, "a port number").unwrap_or(c.port),
                "pingInterval" => c.ping_interval = r.seconds(e, key, false).or(c.ping_interval),
                "stopTimeout" => c.stop_timeout = r.seconds(e, key, false).unwrap_or(c.stop_timeout),
                "stopOnHalt" => c.stop_on_halt = r.boolean(e, key).unwrap_or(c.stop_on_halt),
                _ => unreachable!("every known key is handled"),
            }
        }
        r.finish(c)
    }

    /// The trust store for `node` (a host name or address, without a port).
    pub fn trust_store_for(&self, node: &str) -> &Path {
        self.node_trust_stores
            .get(&node.to_ascii_lowercase())
            .unwrap_or(&self.trust_store)
    }
}

/// `mmpf121:/etc/x.public` → (Some("mmpf121"), "/etc/x.public"); a plain path → (None, path).
fn split_node_prefix(value: &str) -> (Option<&str>, &str) {
    match value.split_once(':') {
        Some((node, path)) if !node.is_empty() && !node.contains('/') && !node.contains('\\') => {
            (Some(node.trim()), path.trim())
        }
        _ => (None, value),
    }
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            key_store: "/etc/client.private".into(),
            key_store_password: "clientpw".into(),
            trust_store: "/etc/server.public".into(),
            node_trust_stores: BTreeMap::new(),
            trust_store_password: "public".into(),
            port: DEFAULT_PORT,
            ping_interval: None,
            stop_timeout: Duration::from_secs(30),
            stop_on_halt: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL_MGR: &str = "\
###############################################################
# (C) Copyright 2008 Hewlett-Packard Development Company, L.P.
# @(#) SG cmappmgr Configuration File
###############################################################
keyStore=/etc/cmcluster/cmappmgr/client.private
# If unspecified, the default value is /etc/client.private
keyStorePassword=
# If unspecified, the default value is clientpw
trustStore=mmpf121:/etc/cmcluster/cmappmgr/server_mmpf121.public
trustStorePassword=public
";

    #[test]
    fn the_originals_manager_file_loads() {
        let c = ManagerConfig::parse(Path::new("/etc/cmappmgr.conf"), ORIGINAL_MGR).unwrap();
        assert_eq!(c.key_store, PathBuf::from("/etc/cmcluster/cmappmgr/client.private"));
        assert_eq!(c.key_store_password, "clientpw");
        assert_eq!(
            c.trust_store_for("MMPF121"),
            Path::new("/etc/cmcluster/cmappmgr/server_mmpf121.public")
        );
        assert_eq!(c.trust_store_for("other"), Path::new("/etc/server.public"));
    }

    #[test]
    fn the_originals_server_file_loads_with_defaults() {
        let text = "# Serviceguard cmappserver Configuration File\nkeyStore=\nkeyStorePassword=\ntrustStore=\ntrustStorePassword=\n";
        let c = ServerConfig::parse(Path::new("s.conf"), text).unwrap();
        assert_eq!(c, ServerConfig::default());
        assert_eq!(c.max_processes, 30);
        assert_eq!(c.listen_addrs().len(), 2);
    }

    #[test]
    fn every_problem_is_reported_with_file_and_line() {
        let text = "keystore=/a\nbogus=1\nmaxProcesses=0\nport=x\nno separator here\nKEYSTORE=/b\nlisten=1.2.3.4\n";
        let errs = ServerConfig::parse(Path::new("/etc/s.conf"), text).unwrap_err();
        let shown = errs.to_string();
        assert_eq!(errs.0.len(), 6, "{shown}");
        assert!(shown.contains("/etc/s.conf:2: unknown key \"bogus\""), "{shown}");
        assert!(
            shown.contains("/etc/s.conf:3: maxProcesses=0 must be between 1 and 100000"),
            "{shown}"
        );
        assert!(shown.contains("/etc/s.conf:4: port=x is not a port number"), "{shown}");
        assert!(shown.contains("/etc/s.conf:5: expected key=value"), "{shown}");
        assert!(
            shown.contains("/etc/s.conf:6: keyStore is set twice (first on line 1)"),
            "{shown}"
        );
        assert!(
            shown.contains("/etc/s.conf:7: listen=1.2.3.4 is not an address and port"),
            "{shown}"
        );
    }

    #[test]
    fn our_keys_parse() {
        let text = "listen=127.0.0.1:7000\nlisten=[::1]:7000\nstopGracePeriod=0.5\nstateDir=/tmp/x\nstopProcessesOnShutdown=yes\n";
        let c = ServerConfig::parse(Path::new("s"), text).unwrap();
        assert_eq!(c.listen_addrs().len(), 2);
        assert_eq!(c.stop_grace, Duration::from_millis(500));
        assert!(c.stop_processes_on_shutdown);
    }

    #[test]
    fn stop_on_halt_is_off_unless_asked_for() {
        assert!(!ManagerConfig::default().stop_on_halt);
        let c = ManagerConfig::parse(Path::new("m"), "stopOnHalt=yes\n").unwrap();
        assert!(c.stop_on_halt);
        let err = ManagerConfig::parse(Path::new("m"), "stoponhalt=sometimes\n").unwrap_err();
        assert_eq!(err.to_string(), "m:1: stopOnHalt=sometimes is not yes or no");
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = ServerConfig::load(Path::new("/nonexistent/cmappserver.conf")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/cmappserver.conf: cannot read configuration file"),
            "{err}"
        );
    }
}
