//! The original product's configuration files, and our additions to them.
//!
//! Both files are Java properties, read as the original's
//! `java.util.Properties` read them ([`parse_properties`]): `key=value`,
//! `key:value` or `key value`, `#` and `!` comments, `\` line continuations
//! and escapes. An empty value means "use the default" (the original ships
//! its files with `keyStore=` lines for exactly that). Keys are matched
//! without regard to case.
//!
//! An unknown key, or a key set twice (the last one wins, as in Java), is a
//! **warning** naming the file, the line and the nearest known key: one typo
//! in `/etc/cmappmgr.conf` must not stop every package on the host. A bad
//! value of a known key, or a malformed escape, is an **error**.
//! [`ServerConfig::check`] and [`ManagerConfig::check`] collect every problem
//! in a file, not only the first, so that `cmappserver --check-config` can
//! list them all; `load` and `parse` log the warnings.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::address::ListenAddr;
use crate::duration::Seconds;
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

/// A `\u` escape in a properties file that is not a character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscapeError {
    /// Not four hex digits; `hex` is what followed the `\u`.
    #[error("malformed \\uXXXX escape \"\\u{hex}\" (four hex digits expected)")]
    Malformed { hex: String },
    /// A UTF-16 surrogate not followed by its other half.
    #[error("\\u{hex} is half of a UTF-16 pair without its other half")]
    HalfPair { hex: String },
}

/// Why an `environment=` value is not a variable to set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvEntryError {
    #[error("environment={value} is not KEY=VALUE")]
    NotKeyValue { value: String },
    #[error("environment={value}: {key:?} is not a variable name (letters, digits and _, not starting with a digit)")]
    Name { value: String, key: String },
    #[error("environment={key}=...: the value contains a NUL character")]
    Nul { key: String },
}

/// One logical line of a properties file: a key and its value, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// The (1-based) line the entry starts on.
    pub line: usize,
}

/// Java's white space in properties files: space, tab and form feed.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{c}')
}

/// True when `s` ends with an odd number of backslashes (a line continuation).
fn ends_with_continuation(s: &str) -> bool {
    s.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

/// Splits a properties text into entries, as `java.util.Properties.load` reads it:
///
/// * natural lines end with `\n`, `\r\n` or `\r`; a line ending with an odd
///   number of backslashes continues on the next one, whose leading white
///   space is dropped;
/// * a line whose first non-blank character is `#` or `!` is a comment (and
///   never continues);
/// * the key ends at the first unescaped `=`, `:` or white space; white space
///   around the separator is skipped; a line with only a key has an empty value;
/// * `\t`, `\n`, `\r`, `\f`, `\uXXXX` and `\` before any other character are
///   escapes, in keys and values.
///
/// One difference: unescaped white space at the end of a value is dropped
/// (Java keeps it; `\ ` keeps a space), since it is never meant in a path or
/// password and is invisible in an editor.
pub fn parse_properties(path: &Path, text: &str) -> (Vec<Entry>, Vec<ConfigError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut lines = natural_lines(text).into_iter().enumerate().peekable();
    while let Some((i, first)) = lines.next() {
        let first = first.trim_start_matches(is_blank);
        if first.is_empty() || first.starts_with('#') || first.starts_with('!') {
            continue;
        }
        let mut logical = String::from(first);
        while ends_with_continuation(&logical) {
            logical.pop();
            match lines.next() {
                Some((_, next)) => {
                    let next = next.trim_start_matches(is_blank);
                    logical.push_str(next);
                    if next.is_empty() {
                        break;
                    }
                }
                None => break,
            }
        }
        match split_entry(&logical) {
            Ok((key, value)) => entries.push(Entry {
                key,
                value,
                line: i + 1,
            }),
            Err(e) => errors.push(ConfigError {
                path: path.to_path_buf(),
                line: Some(i + 1),
                message: e.to_string(),
            }),
        }
    }
    (entries, errors)
}

/// The natural lines of `text` (`\n`, `\r\n` or `\r` end one).
fn natural_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.find(['\n', '\r']) {
            Some(at) => {
                lines.push(&rest[..at]);
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
            }
            None => {
                lines.push(rest);
                rest = "";
            }
        }
    }
    lines
}

/// Splits one logical line (leading white space gone) into its unescaped key and value.
fn split_entry(line: &str) -> Result<(String, String), EscapeError> {
    let mut key_end = line.len();
    let mut value_start = line.len();
    let mut has_separator = false;
    let mut escaped = false;
    for (at, c) in line.char_indices() {
        if !escaped && (c == '=' || c == ':') {
            key_end = at;
            value_start = at + 1;
            has_separator = true;
            break;
        }
        if !escaped && is_blank(c) {
            key_end = at;
            value_start = at + 1;
            break;
        }
        escaped = c == '\\' && !escaped;
    }
    let mut rest = &line[value_start..];
    loop {
        rest = rest.trim_start_matches(is_blank);
        match rest.chars().next() {
            Some(c @ ('=' | ':')) if !has_separator => {
                has_separator = true;
                rest = &rest[c.len_utf8()..];
            }
            _ => break,
        }
    }
    let key = unescape(&line[..key_end])?;
    let value = unescape(trim_unescaped_end(rest))?;
    Ok((key, value))
}

/// `s` without its trailing white space, except white space escaped by a backslash.
fn trim_unescaped_end(s: &str) -> &str {
    let mut end = s.len();
    while let Some(c) = s[..end].chars().next_back() {
        if !is_blank(c) {
            break;
        }
        let before = &s[..end - c.len_utf8()];
        if ends_with_continuation(before) {
            break; // `\ `: an escaped blank stays
        }
        end -= c.len_utf8();
    }
    &s[..end]
}

/// Java's escapes: `\t \n \r \f`, `\uXXXX`, and `\` + any other character is that character.
fn unescape(s: &str) -> Result<String, EscapeError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let unit = (hex.len() == 4 && hex.chars().all(|h| h.is_ascii_hexdigit()))
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten();
                let Some(unit) = unit else {
                    return Err(EscapeError::Malformed { hex });
                };
                // A UTF-16 surrogate pair is two escapes.
                match char::from_u32(unit) {
                    Some(ch) => out.push(ch),
                    None => {
                        let low = chars.as_str().strip_prefix("\\u").and_then(|r| r.get(..4));
                        let low = low.and_then(|h| u32::from_str_radix(h, 16).ok());
                        match low.and_then(|l| char::decode_utf16([unit as u16, l as u16]).next()?.ok()) {
                            Some(ch) => {
                                out.push(ch);
                                chars.nth(5);
                            }
                            None => return Err(EscapeError::HalfPair { hex }),
                        }
                    }
                }
            }
            Some(other) => out.push(other),
            None => {} // a lone backslash at the very end: dropped, as Java does
        }
    }
    Ok(out)
}

/// A configuration read from a file, or its errors, and the file's warnings either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<T> {
    pub result: Result<T, ConfigErrors>,
    /// Problems that do not stop the program: unknown keys, keys set twice.
    pub warnings: Vec<ConfigError>,
}

impl<T> Checked<T> {
    /// Logs the warnings (stderr, and syslog where it is set up) and returns the result.
    pub fn logged(self) -> Result<T, ConfigErrors> {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
        self.result
    }
}

/// Walks the entries of one file, checking keys and collecting errors and warnings.
struct Reader<'a> {
    path: &'a Path,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    /// Slot → index of its entry in `effective`'s output.
    seen: BTreeMap<String, usize>,
}

impl<'a> Reader<'a> {
    fn new(path: &'a Path, errors: Vec<ConfigError>) -> Self {
        Reader {
            path,
            errors,
            warnings: Vec::new(),
            seen: BTreeMap::new(),
        }
    }

    fn problem(&self, line: usize, message: String) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: Some(line),
            message,
        }
    }

    fn error(&mut self, line: usize, message: String) {
        self.errors.push(self.problem(line, message));
    }

    fn warn(&mut self, line: usize, message: String) {
        self.warnings.push(self.problem(line, message));
    }

    /// The entries that take effect, with their canonical keys. An unknown
    /// key is dropped with a warning; of two entries in the same `slot` (the
    /// canonical key, or `None` for a repeatable key) the last one wins, as in
    /// Java, with a warning.
    fn effective<'e>(
        &mut self,
        entries: &'e [Entry],
        known: &[&'static str],
        slot: impl Fn(&'static str, &Entry) -> Option<String>,
    ) -> Vec<(&'e Entry, &'static str)> {
        let mut out: Vec<Option<(&'e Entry, &'static str)>> = Vec::new();
        for e in entries {
            let Some(key) = canonical(&e.key, known) else {
                self.unknown(e, known);
                continue;
            };
            if let Some(slot) = slot(key, e) {
                if let Some(first) = self.seen.insert(slot.clone(), out.len()) {
                    if let Some((earlier, _)) = out[first].take() {
                        self.warn(
                            e.line,
                            format!("{slot} is set twice (first on line {}); this line wins", earlier.line),
                        );
                    }
                }
            }
            out.push(Some((e, key)));
        }
        out.into_iter().flatten().collect()
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

    fn seconds(&mut self, e: &Entry, canonical: &str, bounds: Seconds) -> Option<Duration> {
        match bounds.parse(&e.value) {
            Ok(d) => Some(d),
            Err(err) => {
                self.error(e.line, format!("{canonical}={err}"));
                None
            }
        }
    }

    fn count(&mut self, e: &Entry, canonical: &str, min: usize, max: usize) -> Option<usize> {
        let n: usize = self.parse(e, canonical, "a whole number")?;
        if n < min || n > max {
            self.error(e.line, format!("{canonical}={n} must be between {min} and {max}"));
            return None;
        }
        Some(n)
    }

    /// A size in bytes, with an optional K, M or G suffix (powers of 1024).
    fn bytes(&mut self, e: &Entry, canonical: &str, min: u64, max: u64) -> Option<u64> {
        let v = e.value.trim();
        let (digits, unit) = match v.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c.to_ascii_uppercase()),
            _ => (v, 'B'),
        };
        let shift = match unit {
            'B' => 0,
            'K' => 10,
            'M' => 20,
            'G' => 30,
            _ => {
                self.error(
                    e.line,
                    format!("{canonical}={v} is not a size (bytes, or with K, M or G)"),
                );
                return None;
            }
        };
        let n = match digits
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
        {
            Some(n) => n,
            None => {
                self.error(
                    e.line,
                    format!("{canonical}={v} is not a size (bytes, or with K, M or G)"),
                );
                return None;
            }
        };
        if n < min || n > max {
            self.error(e.line, format!("{canonical}={v} must be between {min} and {max} bytes"));
            return None;
        }
        Some(n)
    }

    fn boolean(&mut self, e: &Entry, canonical: &str) -> Option<bool> {
        match crate::args::yes_no(&e.value) {
            Some(b) => Some(b),
            None => {
                self.error(e.line, format!("{canonical}={} is not yes or no", e.value));
                None
            }
        }
    }

    /// An unknown key is ignored with a warning naming the nearest known key:
    /// one typo must not stop every package that reads the file.
    fn unknown(&mut self, e: &Entry, known: &[&str]) {
        let nearest = nearest_key(&e.key, known);
        self.warn(
            e.line,
            format!("unknown key {:?} ignored (nearest known key: {nearest})", e.key),
        );
    }

    fn finish<T>(self, value: T) -> Checked<T> {
        let result = if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        };
        Checked {
            result,
            warnings: self.warnings,
        }
    }
}

/// The known key closest to `key` by edit distance, ignoring case.
fn nearest_key<'k>(key: &str, known: &[&'k str]) -> &'k str {
    let key = key.to_ascii_lowercase();
    known
        .iter()
        .copied()
        .min_by_key(|k| strsim::levenshtein(&key, &k.to_ascii_lowercase()))
        .unwrap_or("")
}

/// Configuration files larger than this are refused unread.
const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// Reads a configuration file: UTF-8, or else ISO 8859-1 as Java's
/// `Properties.load(InputStream)` reads it.
fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    let fail = |message: String| {
        ConfigErrors(vec![ConfigError {
            path: path.to_path_buf(),
            line: None,
            message,
        }])
    };
    // A configuration anyone else can change is anyone else's (as sshd's StrictModes).
    if let Ok(meta) = std::fs::metadata(path) {
        if let Some(why) = crate::perms::writable_by_others(path, &meta, false) {
            return Err(fail(format!(
                "refusing a configuration file others can change: {why}; run chmod go-w {}",
                path.display()
            )));
        }
    }
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read configuration file: {e}")))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_CONFIG_SIZE + 1), &mut bytes)
        .map_err(|e| fail(format!("cannot read configuration file: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(fail(format!(
            "configuration file is larger than {} MiB",
            MAX_CONFIG_SIZE >> 20
        )));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => e.into_bytes().iter().map(|&b| char::from(b)).collect(),
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
    /// Addresses to listen on (TCP, or `vsock:PORT`); empty means every
    /// address, IPv4 and IPv6, on `port`.
    pub listen: Vec<ListenAddr>,
    pub port: u16,
    /// At most this many monitored processes (running or with an uncollected exit status).
    pub max_processes: usize,
    /// Time between TERM and KILL when stopping a process group.
    pub stop_grace: Duration,
    /// Where process records and supervisors' sockets live.
    pub state_dir: PathBuf,
    pub handshake_timeout: Duration,
    /// Authenticated sessions at once; one more is refused (never one dropped).
    pub max_connections: usize,
    /// Connections in the TLS handshake at once; the oldest is shed for a newcomer.
    pub max_pending_connections: usize,
    /// Connections that have sent nothing yet; the oldest is shed for a newcomer.
    pub max_silent_connections: usize,
    /// How often failed handshakes beyond the first few are summarised in the log.
    pub handshake_log_interval: Duration,
    /// Exit statuses kept for managers that have not collected them yet.
    pub exit_history: usize,
    /// A connection that sends nothing for this long is closed (managers ping far more often).
    pub idle_timeout: Duration,
    /// Stop monitored processes when cmappserver itself is stopped (the
    /// original's behaviour is to leave them running; so is ours by default).
    pub stop_processes_on_shutdown: bool,
    /// Whether applications start from the daemon's environment or an empty one.
    pub process_environment: ProcessEnvironment,
    /// Variables set for every application (`environment=KEY=VALUE`, repeatable), in order.
    pub environment: Vec<(String, String)>,
    /// The applications' OOM score adjustment (the daemon's own is not passed on).
    pub process_oom_score_adjust: i32,
    /// Where the applications' stdout and stderr go in the guest.
    pub output_log: OutputLog,
    /// The directory of the per-service output files.
    pub output_log_dir: PathBuf,
    /// Size of one output file before it is rotated, in bytes.
    pub output_log_size: u64,
    /// Output files kept per service, the current one included.
    pub output_log_files: u32,
    /// Last lines of output kept in memory and sent with the exit status.
    pub output_tail: usize,
    /// The command policy's entries (`allow.RULE.KEY=...`), in file order,
    /// unchecked: cmappserver's `policy` module reads them.
    pub rules: Vec<Entry>,
    /// Clients allowed to connect at all (`allowedClients`), unchecked
    /// patterns; empty: every client the trust store accepts.
    pub allowed_clients: Option<Entry>,
    /// Where the audit records go (JSON lines), if anywhere.
    pub audit_log: Option<PathBuf>,
}

/// Where an application's environment starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessEnvironment {
    /// The daemon's own environment (the original's behaviour).
    #[default]
    Inherit,
    /// Only `PATH` (a standard one), plus the `environment` entries.
    Clean,
}

/// Parses `KEY=VALUE` for `environment=`: a portable variable name.
fn env_entry(value: &str) -> Result<(String, String), EnvEntryError> {
    let (k, v) = value
        .split_once('=')
        .ok_or_else(|| EnvEntryError::NotKeyValue { value: value.into() })?;
    let portable = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !portable {
        return Err(EnvEntryError::Name {
            value: value.into(),
            key: k.into(),
        });
    }
    if v.contains('\0') {
        return Err(EnvEntryError::Nul { key: k.into() });
    }
    Ok((k.to_string(), v.to_string()))
}

/// `outputLog`: where the applications' output goes in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLog {
    /// A size-capped, rotated file per service under `outputLogDir`.
    File,
    /// The guest's syslog (the journal, where it collects syslog).
    Syslog,
    Both,
    /// Nowhere in the guest (the tail is still kept for the exit).
    None,
}

impl OutputLog {
    pub fn to_file(self) -> bool {
        matches!(self, OutputLog::File | OutputLog::Both)
    }

    pub fn to_syslog(self) -> bool {
        matches!(self, OutputLog::Syslog | OutputLog::Both)
    }
}

impl ServerConfig {
    pub const DEFAULT_PATH: &'static str = "/opt/hp/cmappserver/cmappserver.conf";
    /// Every key the file may set.
    pub const KEYS: &'static [&'static str] = &[
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
        "maxPendingConnections",
        "maxSilentConnections",
        "handshakeLogInterval",
        "exitHistory",
        "idleTimeout",
        "stopProcessesOnShutdown",
        "processEnvironment",
        "environment",
        "processOomScoreAdjust",
        "outputLog",
        "outputLogDir",
        "outputLogSize",
        "outputLogFiles",
        "outputTail",
        "allowedClients",
        "auditLog",
    ];

    /// The prefix of the command policy's keys (`allow.RULE.KEY`).
    pub const RULE_PREFIX: &'static str = "allow.";

    /// Reads the file; its warnings are logged.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = read_file(path)?;
        Self::parse(path, &text)
    }

    /// Parses a file's text; its warnings are logged.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        Self::check(path, text).logged()
    }

    /// Parses a file's text, returning its warnings too.
    pub fn check(path: &Path, text: &str) -> Checked<Self> {
        let (mut entries, errors) = parse_properties(path, text);
        let mut r = Reader::new(path, errors);
        let mut c = ServerConfig::default();
        // The command policy's keys are open-ended: its own module checks them.
        let is_rule = |e: &Entry| {
            e.key.len() > Self::RULE_PREFIX.len()
                && e.key.is_char_boundary(Self::RULE_PREFIX.len())
                && e.key[..Self::RULE_PREFIX.len()].eq_ignore_ascii_case(Self::RULE_PREFIX)
        };
        c.rules = entries.iter().filter(|e| is_rule(e)).cloned().collect();
        entries.retain(|e| !is_rule(e));
        // Repeatable: `listen`, and `environment` (one slot per variable).
        let slot = |key: &str, e: &Entry| match key {
            "listen" => None,
            "environment" => Some(format!("environment {}", e.value.split('=').next().unwrap_or(""))),
            _ => Some(key.to_string()),
        };
        for (e, key) in r.effective(&entries, Self::KEYS, slot) {
            if e.value.is_empty() {
                continue; // the default stands, as in the original's files
            }
            match key {
                "keyStore" => c.key_store = e.value.clone().into(),
                "keyStorePassword" => c.key_store_password = e.value.clone(),
                "trustStore" => c.trust_store = e.value.clone().into(),
                "trustStorePassword" => c.trust_store_password = e.value.clone(),
                "listen" => {
                    if let Some(a) = r.parse(
                        e,
                        key,
                        "an address and port such as 0.0.0.0:5315 or [::1]:5315, or vsock:PORT",
                    ) {
                        c.listen.push(a)
                    }
                }
                "port" => c.port = r.parse(e, key, "a port number").unwrap_or(c.port),
                "maxProcesses" => c.max_processes = r.count(e, key, 1, 100_000).unwrap_or(c.max_processes),
                "stopGracePeriod" => c.stop_grace = r.seconds(e, key, Seconds::NON_NEGATIVE).unwrap_or(c.stop_grace),
                "stateDir" => c.state_dir = e.value.clone().into(),
                "handshakeTimeout" => {
                    c.handshake_timeout = r.seconds(e, key, Seconds::POSITIVE).unwrap_or(c.handshake_timeout)
                }
                "maxConnections" => c.max_connections = r.count(e, key, 1, 1_000_000).unwrap_or(c.max_connections),
                "maxPendingConnections" => {
                    c.max_pending_connections = r.count(e, key, 1, 1_000_000).unwrap_or(c.max_pending_connections)
                }
                "maxSilentConnections" => {
                    c.max_silent_connections = r.count(e, key, 1, 1_000_000).unwrap_or(c.max_silent_connections)
                }
                "handshakeLogInterval" => {
                    c.handshake_log_interval = r.seconds(e, key, Seconds::POSITIVE).unwrap_or(c.handshake_log_interval)
                }
                "exitHistory" => c.exit_history = r.count(e, key, 1, 1_000_000).unwrap_or(c.exit_history),
                "idleTimeout" => c.idle_timeout = r.seconds(e, key, Seconds::POSITIVE).unwrap_or(c.idle_timeout),
                "stopProcessesOnShutdown" => {
                    c.stop_processes_on_shutdown = r.boolean(e, key).unwrap_or(c.stop_processes_on_shutdown)
                }
                "processEnvironment" => match e.value.to_ascii_lowercase().as_str() {
                    "inherit" => c.process_environment = ProcessEnvironment::Inherit,
                    "clean" => c.process_environment = ProcessEnvironment::Clean,
                    _ => r.error(
                        e.line,
                        format!("processEnvironment={} is not inherit or clean", e.value),
                    ),
                },
                "environment" => match env_entry(&e.value) {
                    Ok(kv) => c.environment.push(kv),
                    Err(err) => r.error(e.line, err.to_string()),
                },
                "processOomScoreAdjust" => match e.value.parse::<i32>() {
                    Ok(n) if (-1000..=1000).contains(&n) => c.process_oom_score_adjust = n,
                    _ => r.error(
                        e.line,
                        format!(
                            "processOomScoreAdjust={} must be a whole number from -1000 to 1000",
                            e.value
                        ),
                    ),
                },
                "outputLog" => match e.value.to_ascii_lowercase().as_str() {
                    "file" => c.output_log = OutputLog::File,
                    "syslog" => c.output_log = OutputLog::Syslog,
                    "both" => c.output_log = OutputLog::Both,
                    "none" => c.output_log = OutputLog::None,
                    _ => r.error(
                        e.line,
                        format!("outputLog={} is not file, syslog, both or none", e.value),
                    ),
                },
                "outputLogDir" => {
                    if e.value.starts_with('/') {
                        c.output_log_dir = e.value.clone().into()
                    } else {
                        r.error(e.line, format!("outputLogDir={} is not an absolute path", e.value))
                    }
                }
                "outputLogSize" => c.output_log_size = r.bytes(e, key, 4096, 1 << 40).unwrap_or(c.output_log_size),
                "outputLogFiles" => {
                    c.output_log_files = r.count(e, key, 1, 100).map_or(c.output_log_files, |n| n as u32)
                }
                "outputTail" => c.output_tail = r.count(e, key, 0, 1000).unwrap_or(c.output_tail),
                "allowedClients" => c.allowed_clients = Some(e.clone()),
                "auditLog" => c.audit_log = Some(e.value.clone().into()),
                _ => unreachable!("every known key is handled"),
            }
        }
        r.finish(c)
    }

    /// The addresses to bind: the configured ones, or `[::]` and `0.0.0.0` on `port`.
    pub fn listen_addrs(&self) -> Vec<ListenAddr> {
        if self.listen.is_empty() {
            vec![
                ListenAddr::Tcp(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, self.port))),
                ListenAddr::Tcp(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, self.port))),
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
            max_pending_connections: 512,
            max_silent_connections: 8192,
            handshake_log_interval: Duration::from_secs(60),
            exit_history: 256,
            idle_timeout: Duration::from_secs(120),
            stop_processes_on_shutdown: false,
            process_environment: ProcessEnvironment::Inherit,
            environment: Vec::new(),
            process_oom_score_adjust: 0,
            output_log: OutputLog::File,
            output_log_dir: "/var/log/cmappserver".into(),
            output_log_size: 10 << 20,
            output_log_files: 5,
            output_tail: 20,
            rules: Vec::new(),
            allowed_clients: None,
            audit_log: None,
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
    /// Forward every line of the application's output to the package log
    /// (the built-in probes always are); off by default: the output stays
    /// in the guest and only its last lines come with the exit.
    pub forward_output: bool,
    /// Forwarding rate limit: lines per second and bytes per second.
    pub forward_lines_per_sec: u32,
    pub forward_bytes_per_sec: u64,
}

impl ManagerConfig {
    pub const DEFAULT_PATH: &'static str = "/etc/cmappmgr.conf";
    /// Every key the file may set.
    pub const KEYS: &'static [&'static str] = &[
        "keyStore",
        "keyStorePassword",
        "trustStore",
        "trustStorePassword",
        "port",
        "pingInterval",
        "stopTimeout",
        "stopOnHalt",
        "forwardOutput",
        "forwardLinesPerSecond",
        "forwardBytesPerSecond",
    ];

    /// Reads the file; its warnings are logged.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = read_file(path)?;
        Self::parse(path, &text)
    }

    /// Parses a file's text; its warnings are logged.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        Self::check(path, text).logged()
    }

    /// Parses a file's text, returning its warnings too.
    pub fn check(path: &Path, text: &str) -> Checked<Self> {
        let (entries, errors) = parse_properties(path, text);
        let mut r = Reader::new(path, errors);
        let mut c = ManagerConfig::default();
        // `trustStore=<node>:<path>` has a slot per node.
        let slot = |key: &str, e: &Entry| match (key, split_node_prefix(&e.value)) {
            ("trustStore", (Some(node), _)) => Some(format!("trustStore for node {}", node.to_ascii_lowercase())),
            _ => Some(key.to_string()),
        };
        for (e, key) in r.effective(&entries, Self::KEYS, slot) {
            if key == "trustStore" {
                match split_node_prefix(&e.value) {
                    (Some(node), "") => r.error(e.line, format!("trustStore for node {node} names no file")),
                    (Some(node), p) => {
                        c.node_trust_stores.insert(node.to_ascii_lowercase(), p.into());
                    }
                    (None, "") => {}
                    (None, p) => c.trust_store = p.into(),
                }
                continue;
            }
            if e.value.is_empty() {
                continue;
            }
            match key {
                "keyStore" => c.key_store = e.value.clone().into(),
                "keyStorePassword" => c.key_store_password = e.value.clone(),
                "trustStorePassword" => c.trust_store_password = e.value.clone(),
                "port" => c.port = r.parse(e, key, "a port number").unwrap_or(c.port),
                "pingInterval" => c.ping_interval = r.seconds(e, key, Seconds::POSITIVE).or(c.ping_interval),
                "stopTimeout" => c.stop_timeout = r.seconds(e, key, Seconds::POSITIVE).unwrap_or(c.stop_timeout),
                "stopOnHalt" => c.stop_on_halt = r.boolean(e, key).unwrap_or(c.stop_on_halt),
                "forwardOutput" => c.forward_output = r.boolean(e, key).unwrap_or(c.forward_output),
                "forwardLinesPerSecond" => {
                    c.forward_lines_per_sec = r
                        .count(e, key, 1, 1_000_000)
                        .map_or(c.forward_lines_per_sec, |n| n as u32)
                }
                "forwardBytesPerSecond" => {
                    c.forward_bytes_per_sec = r.bytes(e, key, 1024, 1 << 30).unwrap_or(c.forward_bytes_per_sec)
                }
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
            forward_output: false,
            forward_lines_per_sec: 200,
            forward_bytes_per_sec: 64 << 10,
        }
    }
}

/// What each `cmappserver.conf` key means, for the man page:
/// `(key, default, meaning)`. A test checks it names exactly [`ServerConfig::KEYS`].
pub const SERVER_KEY_DOCS: &[(&str, &str, &str)] = &[
    (
        "keyStore",
        "/opt/hp/cmappserver/server.private",
        "private key and certificate (chain), PEM",
    ),
    (
        "keyStorePassword",
        "serverpw",
        "decrypts an encrypted PKCS#8 key; unused otherwise",
    ),
    (
        "trustStore",
        "/opt/hp/cmappserver/client.public",
        "trusted managers' certificates or CAs, PEM",
    ),
    ("trustStorePassword", "public", "accepted for compatibility, unused"),
    (
        "listen",
        "every address, IPv4 and IPv6",
        "ADDR:PORT (TCP) or vsock:PORT (virtio-vsock) to listen on, repeatable (--listen overrides)",
    ),
    ("port", "5315", "port of the default listeners"),
    ("maxProcesses", "30", "processes running at once; one more is refused"),
    (
        "stopGracePeriod",
        "10",
        "seconds between TERM and KILL of a process group",
    ),
    (
        "stateDir",
        "/var/lib/cmappserver",
        "process records and shim sockets (what survives a restart)",
    ),
    ("handshakeTimeout", "10", "TLS handshake and hello, seconds"),
    ("maxConnections", "1024", "concurrent connections"),
    (
        "maxPendingConnections",
        "512",
        "connections in the TLS handshake; the oldest is shed for a newcomer",
    ),
    (
        "maxSilentConnections",
        "8192",
        "connections that have sent nothing yet; the oldest is shed for a newcomer",
    ),
    (
        "handshakeLogInterval",
        "60",
        "seconds between summaries of failed handshakes and shed connections",
    ),
    ("exitHistory", "256", "uncollected exit statuses kept"),
    (
        "idleTimeout",
        "120",
        "a connection silent this long (seconds) is closed",
    ),
    (
        "stopProcessesOnShutdown",
        "no",
        "yes: stopping cmappserver stops the applications too",
    ),
    (
        "processEnvironment",
        "inherit",
        "inherit: applications start with the daemon's environment; clean: with only a standard PATH",
    ),
    (
        "environment",
        "none",
        "KEY=VALUE, repeatable: set for every application, on top of either",
    ),
    (
        "processOomScoreAdjust",
        "0",
        "the applications' OOM score adjustment, -1000 to 1000 (the daemon's own is not passed on)",
    ),
    (
        "outputLog",
        "file",
        "where the applications' stdout and stderr go in the guest: file, syslog, both or none",
    ),
    (
        "outputLogDir",
        "/var/log/cmappserver",
        "directory of the per-service output files NAME-HASH.log (absolute)",
    ),
    (
        "outputLogSize",
        "10M",
        "size of one output file before it rotates (.1, .2, ...): bytes, or with K, M, G (4 KiB to 1 TiB)",
    ),
    (
        "outputLogFiles",
        "5",
        "output files kept per service, the current one included (1 to 100)",
    ),
    (
        "outputTail",
        "20",
        "last lines of output sent to the package log when an application ends (0 to 1000; at most 64 KiB)",
    ),
    (
        "allowedClients",
        "every trusted client",
        "certificate names (CN, DNS or URI SAN; * and ? match) or sha256:FINGERPRINT, comma-separated: only these may connect",
    ),
    (
        "auditLog",
        "none",
        "file for the audit records (JSON lines): every authenticated request, its client, decision and outcome",
    ),
];

/// What each `cmappmgr.conf` key means, for the man page:
/// `(key, default, meaning)`. A test checks it names exactly [`ManagerConfig::KEYS`].
pub const MANAGER_KEY_DOCS: &[(&str, &str, &str)] = &[
    (
        "keyStore",
        "/etc/client.private",
        "private key and certificate (chain), PEM",
    ),
    (
        "keyStorePassword",
        "clientpw",
        "decrypts an encrypted PKCS#8 key; unused otherwise",
    ),
    (
        "trustStore",
        "/etc/server.public",
        "default trust store; trustStore=NODE:PATH chooses one per guest (repeatable)",
    ),
    ("trustStorePassword", "public", "accepted for compatibility, unused"),
    ("port", "5315", "port when -node names none"),
    (
        "pingInterval",
        "a quarter of the timeout, 0.2 to 5 s",
        "liveness pings, seconds",
    ),
    (
        "stopTimeout",
        "30",
        "seconds to wait for a requested stop to be confirmed",
    ),
    (
        "stopOnHalt",
        "no",
        "yes: a halt (SIGTERM) stops the application; no: it keeps running (the original's behaviour); -detach overrides yes",
    ),
    (
        "forwardOutput",
        "no",
        "yes: every line of the applications' output to the package log (the original's behaviour), within the rate limit; no: it stays in the guest and the last lines come with the exit; -forward_output and -no_forward_output override it",
    ),
    (
        "forwardLinesPerSecond",
        "200",
        "rate limit of forwarded output, lines per second, 1 to 1000000 (lines over it are counted, summarised and kept in the guest)",
    ),
    (
        "forwardBytesPerSecond",
        "64K",
        "rate limit of forwarded output, bytes per second: bytes, or with K, M, G (1 KiB to 1 GiB)",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_man_page_documents_every_key() {
        fn keys(d: &[(&'static str, &str, &str)]) -> Vec<&'static str> {
            d.iter().map(|k| k.0).collect()
        }
        assert_eq!(keys(SERVER_KEY_DOCS), ServerConfig::KEYS);
        assert_eq!(keys(MANAGER_KEY_DOCS), ManagerConfig::KEYS);
    }

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

    fn shown(problems: &[ConfigError]) -> String {
        problems.iter().map(|p| format!("{p}\n")).collect()
    }

    #[test]
    fn errors_and_warnings_are_reported_with_file_and_line() {
        let text =
            "keystore=/a\nbogus=1\nmaxProcesses=0\nport=x\nkeyStor=/c\nKEYSTORE=/b\nlisten=1.2.3.4\nport=\\u12\n";
        let checked = ServerConfig::check(Path::new("/etc/s.conf"), text);
        let errs = checked.result.unwrap_err();
        let errors = errs.to_string();
        assert_eq!(errs.0.len(), 4, "{errors}");
        assert!(
            errors.contains("/etc/s.conf:3: maxProcesses=0 must be between 1 and 100000"),
            "{errors}"
        );
        assert!(
            errors.contains("/etc/s.conf:4: port=x is not a port number"),
            "{errors}"
        );
        assert!(
            errors.contains("/etc/s.conf:7: listen=1.2.3.4 is not an address and port"),
            "{errors}"
        );
        assert!(errors.contains("/etc/s.conf:8: malformed \\uXXXX escape"), "{errors}");
        let warnings = shown(&checked.warnings);
        assert_eq!(checked.warnings.len(), 3, "{warnings}");
        assert!(
            warnings.contains("/etc/s.conf:2: unknown key \"bogus\" ignored (nearest known key: port)"),
            "{warnings}"
        );
        assert!(
            warnings.contains("/etc/s.conf:5: unknown key \"keyStor\" ignored (nearest known key: keyStore)"),
            "{warnings}"
        );
        assert!(
            warnings.contains("/etc/s.conf:6: keyStore is set twice (first on line 1); this line wins"),
            "{warnings}"
        );
    }

    #[test]
    fn unknown_keys_and_repeats_are_only_warnings() {
        let text = "keyStor=/typo\nkeyStore=/a\ntrustStorePasword=x\nkeyStore=/b\n";
        let checked = ManagerConfig::check(Path::new("/etc/cmappmgr.conf"), text);
        let c = checked.result.unwrap();
        assert_eq!(c.key_store, PathBuf::from("/b"), "the last one wins, as in Java");
        let warnings = shown(&checked.warnings);
        assert!(
            warnings.contains("/etc/cmappmgr.conf:1: unknown key \"keyStor\" ignored (nearest known key: keyStore)"),
            "{warnings}"
        );
        assert!(
            warnings.contains("/etc/cmappmgr.conf:3: unknown key \"trustStorePasword\" ignored (nearest known key: trustStorePassword)"),
            "{warnings}"
        );
        assert!(
            warnings.contains(":4: keyStore is set twice (first on line 2)"),
            "{warnings}"
        );
        // A later empty value gives the default back, as the original's getProperty did.
        let c = ManagerConfig::parse(Path::new("m"), "keyStore=/a\nkeyStore=\n").unwrap();
        assert_eq!(c.key_store, ManagerConfig::default().key_store);
        // Per-node trust stores: one slot per node.
        let c = ManagerConfig::parse(Path::new("m"), "trustStore=g1:/a\ntrustStore=G1:/b\ntrustStore=g2:/c\n").unwrap();
        assert_eq!(c.trust_store_for("g1"), Path::new("/b"));
        assert_eq!(c.trust_store_for("g2"), Path::new("/c"));
    }

    #[test]
    fn the_guides_manager_file_as_printed_loads() {
        // The guide's sample, with its comment wrapped onto a line of its own.
        let text = "keyStore=/etc/cmcluster/cmappmgr/client.private\n\
                    # If unspecified, the default value is /etc/client.private\n\
                    keyStorePassword=\n\
                    # Specify node name where the trustStore comes from, followed by a \":\", e.g.,\n\
                    mmpf121:\n\
                    trustStore=/etc/cmcluster/cmappmgr/server_mmpf121.public\n\
                    trustStorePassword=public\n";
        let checked = ManagerConfig::check(Path::new("/etc/cmappmgr.conf"), text);
        let c = checked.result.unwrap();
        assert_eq!(
            c.trust_store,
            PathBuf::from("/etc/cmcluster/cmappmgr/server_mmpf121.public")
        );
        assert_eq!(checked.warnings.len(), 1);
        assert!(checked.warnings[0].to_string().contains(":5: unknown key \"mmpf121\""));
    }

    /// `text` as `java.util.Properties.load` splits it: (key, value, line).
    fn props(text: &str) -> Vec<(String, String, usize)> {
        let (entries, errors) = parse_properties(Path::new("p"), text);
        assert!(errors.is_empty(), "{text:?}: {errors:?}");
        entries.into_iter().map(|e| (e.key, e.value, e.line)).collect()
    }

    fn one(text: &str) -> (String, String) {
        let mut all = props(text);
        assert_eq!(all.len(), 1, "{text:?}: {all:?}");
        let (k, v, _) = all.remove(0);
        (k, v)
    }

    #[test]
    fn every_java_spelling_of_a_property() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        for (text, expected) in [
            // Separators: '=', ':', white space, and white space around them.
            ("keyStore=/a", kv("keyStore", "/a")),
            ("keyStore:/a", kv("keyStore", "/a")),
            ("keyStore /a", kv("keyStore", "/a")),
            ("keyStore\t/a", kv("keyStore", "/a")),
            ("keyStore = /a", kv("keyStore", "/a")),
            ("keyStore : /a", kv("keyStore", "/a")),
            ("keyStore\u{c}=\u{c}/a", kv("keyStore", "/a")),
            // Only the first separator counts; the rest is the value.
            ("keyStore==/a", kv("keyStore", "=/a")),
            ("keyStore=:/a", kv("keyStore", ":/a")),
            ("keyStore = = /a", kv("keyStore", "= /a")),
            ("trustStore=g1:/a", kv("trustStore", "g1:/a")),
            // Leading white space; trailing white space dropped unless escaped.
            ("   keyStore=/a", kv("keyStore", "/a")),
            ("\t keyStore=/a   ", kv("keyStore", "/a")),
            ("keyStorePassword=pw\\ ", kv("keyStorePassword", "pw ")),
            // A key alone has an empty value.
            ("keyStore", kv("keyStore", "")),
            ("keyStore=", kv("keyStore", "")),
            ("keyStore   ", kv("keyStore", "")),
            // Escapes, in keys and values.
            ("key\\=Store=/a", kv("key=Store", "/a")),
            ("key\\:Store=/a", kv("key:Store", "/a")),
            ("key\\ Store=/a", kv("key Store", "/a")),
            ("keyStore=/path\\ with\\ spaces", kv("keyStore", "/path with spaces")),
            ("keyStore=C:\\\\dir\\\\x", kv("keyStore", "C:\\dir\\x")),
            ("keyStore=\\u002fetc\\u002Fx", kv("keyStore", "/etc/x")),
            ("keyStorePassword=\\u00e9t\\u00E9", kv("keyStorePassword", "été")),
            ("keyStorePassword=\\ud83d\\ude00", kv("keyStorePassword", "\u{1F600}")),
            (
                "keyStorePassword=a\\tb\\nc\\rd\\fe",
                kv("keyStorePassword", "a\tb\nc\rd\u{c}e"),
            ),
            ("keyStorePassword=\\q\\#\\!", kv("keyStorePassword", "q#!")),
            (
                "keyStorePassword=#not!a comment",
                kv("keyStorePassword", "#not!a comment"),
            ),
            // Continuations: the next line's leading white space is dropped.
            (
                "keyStore=/etc/\\\n    cmappmgr/client.private",
                kv("keyStore", "/etc/cmappmgr/client.private"),
            ),
            ("keyStore=/etc/\\\r\n  x", kv("keyStore", "/etc/x")),
            ("keyStore=/etc/\\\r  x", kv("keyStore", "/etc/x")),
            ("keyStore=/a\\\n\\\n  /b", kv("keyStore", "/a/b")),
            ("key\\\n  Store=/a", kv("keyStore", "/a")),
            ("keyStore=\\\n  /a", kv("keyStore", "/a")),
            // A continued line starting with '#' is not a comment.
            ("keyStorePassword=a\\\n#b", kv("keyStorePassword", "a#b")),
            // An even number of backslashes does not continue.
            ("keyStore=C:\\\\\n", kv("keyStore", "C:\\")),
            // A continuation at the end of the file just ends the value.
            ("keyStore=/a\\", kv("keyStore", "/a")),
        ] {
            assert_eq!(one(text), expected, "{text:?}");
        }
    }

    #[test]
    fn comments_blank_lines_and_line_numbers() {
        let text = "# comment\n! bang comment\n   # indented\n\t! indented too\n\n   \n\
                    # a comment ending in a backslash does not continue \\\n\
                    keyStore=/a\n\
                    port=5315\\\n\
                    \n\
                    stateDir=/s\r\
                    listen=1.2.3.4:5\r\n\
                    maxProcesses\\\n  =\\\n  7\n";
        let got = props(text);
        let expect = [
            ("keyStore", "/a", 8),
            ("port", "5315", 9), // a blank continuation line ends the value
            ("stateDir", "/s", 11),
            ("listen", "1.2.3.4:5", 12),
            ("maxProcesses", "7", 13),
        ];
        let expect: Vec<_> = expect
            .iter()
            .map(|(k, v, l)| (k.to_string(), v.to_string(), *l))
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn malformed_unicode_escapes_are_errors_with_the_line() {
        for bad in ["k=\\u12", "k=\\u12zz", "k=\\ud83d", "k\\u=1"] {
            let (_, errors) = parse_properties(Path::new("/etc/x.conf"), &format!("# c\n{bad}\n"));
            assert_eq!(errors.len(), 1, "{bad}");
            assert!(
                errors[0].to_string().starts_with("/etc/x.conf:2: "),
                "{bad}: {}",
                errors[0]
            );
        }
    }

    #[test]
    fn a_latin1_file_is_read_as_java_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.conf");
        std::fs::write(&path, b"keyStorePassword=caf\xe9\n").unwrap();
        let c = ManagerConfig::load(&path).unwrap();
        assert_eq!(c.key_store_password, "café");
        std::fs::write(&path, "keyStorePassword=café\n").unwrap();
        assert_eq!(ManagerConfig::load(&path).unwrap().key_store_password, "café");
    }

    #[test]
    fn our_keys_parse() {
        let text = "listen=127.0.0.1:7000\nlisten=[::1]:7000\nlisten=vsock:5315\nstopGracePeriod=0.5\nstateDir=/tmp/x\nstopProcessesOnShutdown=yes\n";
        let c = ServerConfig::parse(Path::new("s"), text).unwrap();
        assert_eq!(c.listen_addrs().len(), 3);
        assert_eq!(c.listen_addrs()[2], ListenAddr::Vsock { port: 5315 });
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
    fn the_application_environment_keys_parse_and_are_checked() {
        let text = "processEnvironment=Clean\nenvironment=A=1\nenvironment=B=x=y z\nprocessOomScoreAdjust=-17\n";
        let c = ServerConfig::parse(Path::new("/s"), text).unwrap();
        assert_eq!(c.process_environment, ProcessEnvironment::Clean);
        assert_eq!(c.environment, [("A".into(), "1".into()), ("B".into(), "x=y z".into())]);
        assert_eq!(c.process_oom_score_adjust, -17);
        let bad = "processEnvironment=some\nenvironment=1A=x\nenvironment=novalue\nenvironment=A=1\nenvironment=A=2\nprocessOomScoreAdjust=2000\n";
        let shown = ServerConfig::parse(Path::new("/s"), bad).unwrap_err().to_string();
        for needle in [
            "/s:1: processEnvironment=some is not inherit or clean",
            "/s:2: environment=1A=x: \"1A\" is not a variable name",
            "/s:3: environment=novalue is not KEY=VALUE",
            "/s:6: processOomScoreAdjust=2000 must be a whole number from -1000 to 1000",
        ] {
            assert!(shown.contains(needle), "{needle} not in {shown}");
        }
        // One variable set twice: the last line wins, with a warning, as for any key.
        let twice = ServerConfig::check(Path::new("/s"), "environment=A=1\nenvironment=B=0\nenvironment=A=2\n");
        assert_eq!(
            twice.result.unwrap().environment,
            [("B".into(), "0".into()), ("A".into(), "2".into())]
        );
        let warned: Vec<String> = twice.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            warned,
            ["/s:3: environment A is set twice (first on line 1); this line wins"]
        );
    }

    #[test]
    fn a_configuration_file_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmappserver.conf");
        std::fs::write(&path, "port=1\n").unwrap();
        for (mode, ok) in [(0o644, true), (0o664, false), (0o606, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = ServerConfig::load(&path);
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if let Err(e) = r {
                let shown = e.to_string();
                assert!(shown.contains(&format!("(mode {mode:04o})")), "{shown}");
                assert!(ManagerConfig::load(&path).is_err());
            }
        }
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

    #[test]
    fn output_keys_parse_and_bad_values_are_named() {
        let p = Path::new("s.conf");
        let c = ServerConfig::parse(
            p,
            "outputLog=both\noutputLogDir=/srv/log\noutputLogSize=2M\noutputLogFiles=3\noutputTail=0\n",
        )
        .unwrap();
        assert_eq!(c.output_log, OutputLog::Both);
        assert!(c.output_log.to_file() && c.output_log.to_syslog());
        assert_eq!(c.output_log_dir, Path::new("/srv/log"));
        assert_eq!((c.output_log_size, c.output_log_files, c.output_tail), (2 << 20, 3, 0));
        let d = ServerConfig::default();
        assert_eq!(
            (d.output_log, d.output_log_size, d.output_tail),
            (OutputLog::File, 10 << 20, 20)
        );
        let err = ServerConfig::parse(
            p,
            "outputLog=disk\noutputLogDir=relative\noutputLogSize=1X\noutputLogFiles=0\noutputTail=5000\n",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        assert!(
            err.to_string()
                .contains("outputLogDir=relative is not an absolute path"),
            "{err}"
        );

        let m = ManagerConfig::parse(
            p,
            "forwardOutput=yes\nforwardLinesPerSecond=10\nforwardBytesPerSecond=1M\n",
        )
        .unwrap();
        assert!(m.forward_output);
        assert_eq!((m.forward_lines_per_sec, m.forward_bytes_per_sec), (10, 1 << 20));
        assert!(!ManagerConfig::default().forward_output);
        assert!(
            ManagerConfig::parse(p, "forwardBytesPerSecond=10\n").is_err(),
            "below 1 KiB"
        );
    }

    // ---- Every key, every bound, every spelling (see issue 19) ----

    /// A valid, non-default value for every server key, and how it shows.
    type Setting<C> = (&'static str, &'static str, fn(&C) -> bool);

    fn server_settings() -> Vec<Setting<ServerConfig>> {
        vec![
            ("keyStore", "/k", |c| c.key_store == Path::new("/k")),
            ("keyStorePassword", "kpw", |c| c.key_store_password == "kpw"),
            ("trustStore", "g1:/t", |c| c.trust_store == Path::new("g1:/t")),
            ("trustStorePassword", "tpw", |c| c.trust_store_password == "tpw"),
            ("listen", "127.0.0.1:7", |c| {
                c.listen == ["127.0.0.1:7".parse().unwrap()]
            }),
            ("port", "7000", |c| c.port == 7000),
            ("maxProcesses", "31", |c| c.max_processes == 31),
            ("stopGracePeriod", "0", |c| c.stop_grace == Duration::ZERO),
            ("stateDir", "/st", |c| c.state_dir == Path::new("/st")),
            ("handshakeTimeout", "2.5", |c| {
                c.handshake_timeout == Duration::from_millis(2500)
            }),
            ("maxConnections", "3", |c| c.max_connections == 3),
            ("maxPendingConnections", "4", |c| c.max_pending_connections == 4),
            ("maxSilentConnections", "5", |c| c.max_silent_connections == 5),
            ("handshakeLogInterval", "6", |c| {
                c.handshake_log_interval == Duration::from_secs(6)
            }),
            ("exitHistory", "8", |c| c.exit_history == 8),
            ("idleTimeout", "9", |c| c.idle_timeout == Duration::from_secs(9)),
            ("stopProcessesOnShutdown", "yes", |c| c.stop_processes_on_shutdown),
            ("processEnvironment", "clean", |c| {
                c.process_environment == ProcessEnvironment::Clean
            }),
            ("environment", "A=b", |c| c.environment == [("A".into(), "b".into())]),
            ("processOomScoreAdjust", "-1000", |c| {
                c.process_oom_score_adjust == -1000
            }),
            ("outputLog", "syslog", |c| c.output_log == OutputLog::Syslog),
            ("outputLogDir", "/o", |c| c.output_log_dir == Path::new("/o")),
            ("outputLogSize", "4K", |c| c.output_log_size == 4096),
            ("outputLogFiles", "100", |c| c.output_log_files == 100),
            ("outputTail", "0", |c| c.output_tail == 0),
            ("allowedClients", "CN=a*", |c| {
                c.allowed_clients.as_ref().map(|e| e.value.as_str()) == Some("CN=a*")
            }),
            ("auditLog", "/audit", |c| {
                c.audit_log.as_deref() == Some(Path::new("/audit"))
            }),
        ]
    }

    fn manager_settings() -> Vec<Setting<ManagerConfig>> {
        vec![
            ("keyStore", "/k", |c| c.key_store == Path::new("/k")),
            ("keyStorePassword", "kpw", |c| c.key_store_password == "kpw"),
            ("trustStore", "/t", |c| c.trust_store == Path::new("/t")),
            ("trustStorePassword", "tpw", |c| c.trust_store_password == "tpw"),
            ("port", "7000", |c| c.port == 7000),
            ("pingInterval", "0.25", |c| {
                c.ping_interval == Some(Duration::from_millis(250))
            }),
            ("stopTimeout", "3", |c| c.stop_timeout == Duration::from_secs(3)),
            ("stopOnHalt", "on", |c| c.stop_on_halt),
            ("forwardOutput", "true", |c| c.forward_output),
            ("forwardLinesPerSecond", "1000000", |c| {
                c.forward_lines_per_sec == 1_000_000
            }),
            ("forwardBytesPerSecond", "1G", |c| c.forward_bytes_per_sec == 1 << 30),
        ]
    }

    /// The separators Java accepts between a key and its value.
    fn separator() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("="),
            Just(":"),
            Just(" "),
            Just("\t"),
            Just(" = "),
            Just("\u{c}:  ")
        ]
    }

    /// `key` with each letter's case drawn from `upper`.
    fn respelled(key: &str, upper: &[bool]) -> String {
        key.chars()
            .zip(upper.iter().cycle())
            .map(|(c, &u)| {
                if u {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every server key, spelled in any case with any separator, sets
        /// its setting and nothing else, without a warning.
        #[test]
        fn every_server_key_in_any_spelling_sets_its_setting(
            i in 0..ServerConfig::KEYS.len(),
            upper in proptest::collection::vec(any::<bool>(), 1..8),
            sep in separator(),
        ) {
            let (key, value, set) = server_settings()[i];
            prop_assert_eq!(ServerConfig::KEYS[i], key);
            let text = format!("{}{sep}{value}\n", respelled(key, &upper));
            let checked = ServerConfig::check(Path::new("s"), &text);
            prop_assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
            let c = checked.result.unwrap();
            prop_assert!(set(&c), "{text:?}: {c:?}");
            prop_assert!(!set(&ServerConfig::default()));
            // Nothing else changed: putting the default back gives the default.
            let mut back = c.clone();
            let d = ServerConfig::default();
            match key {
                "keyStore" => back.key_store = d.key_store.clone(),
                "keyStorePassword" => back.key_store_password = d.key_store_password.clone(),
                "trustStore" => back.trust_store = d.trust_store.clone(),
                "trustStorePassword" => back.trust_store_password = d.trust_store_password.clone(),
                "listen" => back.listen.clear(),
                "port" => back.port = d.port,
                "maxProcesses" => back.max_processes = d.max_processes,
                "stopGracePeriod" => back.stop_grace = d.stop_grace,
                "stateDir" => back.state_dir = d.state_dir.clone(),
                "handshakeTimeout" => back.handshake_timeout = d.handshake_timeout,
                "maxConnections" => back.max_connections = d.max_connections,
                "maxPendingConnections" => back.max_pending_connections = d.max_pending_connections,
                "maxSilentConnections" => back.max_silent_connections = d.max_silent_connections,
                "handshakeLogInterval" => back.handshake_log_interval = d.handshake_log_interval,
                "exitHistory" => back.exit_history = d.exit_history,
                "idleTimeout" => back.idle_timeout = d.idle_timeout,
                "stopProcessesOnShutdown" => back.stop_processes_on_shutdown = d.stop_processes_on_shutdown,
                "processEnvironment" => back.process_environment = d.process_environment,
                "environment" => back.environment.clear(),
                "processOomScoreAdjust" => back.process_oom_score_adjust = d.process_oom_score_adjust,
                "outputLog" => back.output_log = d.output_log,
                "outputLogDir" => back.output_log_dir = d.output_log_dir.clone(),
                "outputLogSize" => back.output_log_size = d.output_log_size,
                "outputLogFiles" => back.output_log_files = d.output_log_files,
                "outputTail" => back.output_tail = d.output_tail,
                "allowedClients" => back.allowed_clients = d.allowed_clients.clone(),
                "auditLog" => back.audit_log = d.audit_log.clone(),
                other => panic!("{other} has no setting in this test"),
            }
            prop_assert_eq!(back, d);
        }

        #[test]
        fn every_manager_key_in_any_spelling_sets_its_setting(
            i in 0..ManagerConfig::KEYS.len(),
            upper in proptest::collection::vec(any::<bool>(), 1..8),
            sep in separator(),
        ) {
            let (key, value, set) = manager_settings()[i];
            prop_assert_eq!(ManagerConfig::KEYS[i], key);
            let text = format!("{}{sep}{value}\n", respelled(key, &upper));
            let checked = ManagerConfig::check(Path::new("m"), &text);
            prop_assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
            let c = checked.result.unwrap();
            prop_assert!(set(&c), "{text:?}: {c:?}");
            prop_assert!(!set(&ManagerConfig::default()));
        }

        /// Any key and value survive Java's escaping: what a properties
        /// writer stores is what the reader gets back, on any line ending.
        #[test]
        fn escaped_keys_and_values_read_back(
            key in "[a-zA-Z =:#!\\\\\t\u{e9}]{1,10}",
            value in "[a-z =:#!\\\\\t\n\r\u{c}\u{e9}\u{1F600}]{0,12}",
            eol in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        ) {
            let text = format!("# x{eol}{}={}{eol}{eol}", java_escape(&key, true), java_escape(&value, false));
            let (entries, errors) = parse_properties(Path::new("p"), &text);
            prop_assert!(errors.is_empty(), "{:?}", errors);
            prop_assert_eq!(entries.len(), 1);
            prop_assert_eq!(&entries[0].key, &key);
            prop_assert_eq!(&entries[0].value, &value);
            prop_assert_eq!(entries[0].line, 2);
        }
    }

    /// How `java.util.Properties.store` escapes a key or a value (plus
    /// `\uXXXX` for characters outside Latin-1, which is allowed too).
    fn java_escape(s: &str, key: bool) -> String {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\u{c}' => out.push_str("\\f"),
                '=' | ':' | '#' | '!' => {
                    out.push('\\');
                    out.push(c);
                }
                ' ' if key || i == 0 || i + 1 == s.chars().count() => out.push_str("\\ "),
                c if (c as u32) > 0xff => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04X}"));
                    }
                }
                c => out.push(c),
            }
        }
        out
    }

    fn server_error(text: &str) -> String {
        ServerConfig::parse(Path::new("s"), text).unwrap_err().to_string()
    }

    fn manager_error(text: &str) -> String {
        ManagerConfig::parse(Path::new("m"), text).unwrap_err().to_string()
    }

    #[test]
    fn every_count_is_bounded_at_both_ends() {
        for (key, min, max) in [
            ("maxProcesses", 1, 100_000),
            ("maxConnections", 1, 1_000_000),
            ("maxPendingConnections", 1, 1_000_000),
            ("maxSilentConnections", 1, 1_000_000),
            ("exitHistory", 1, 1_000_000),
        ] {
            for n in [min, max] {
                let c = ServerConfig::parse(Path::new("s"), &format!("{key}={n}\n")).unwrap();
                let got = match key {
                    "maxProcesses" => c.max_processes,
                    "maxConnections" => c.max_connections,
                    "maxPendingConnections" => c.max_pending_connections,
                    "maxSilentConnections" => c.max_silent_connections,
                    _ => c.exit_history,
                };
                assert_eq!(got, n, "{key}={n}");
            }
            for n in [min - 1, max + 1] {
                assert_eq!(
                    server_error(&format!("{key}={n}\n")),
                    format!("s:1: {key}={n} must be between {min} and {max}")
                );
            }
            assert_eq!(
                server_error(&format!("{key}=-1\n")),
                format!("s:1: {key}=-1 is not a whole number")
            );
        }
    }

    #[test]
    fn every_duration_is_bounded_at_both_ends() {
        // (key, zero allowed), for both files.
        let server = [
            ("stopGracePeriod", true),
            ("handshakeTimeout", false),
            ("handshakeLogInterval", false),
            ("idleTimeout", false),
        ];
        let manager = [("pingInterval", false), ("stopTimeout", false)];
        let cases = server
            .iter()
            .map(|&(k, z)| (k, z, true))
            .chain(manager.iter().map(|&(k, z)| (k, z, false)));
        for (key, zero_ok, is_server) in cases {
            let error = |v: &str| {
                let text = format!("{key}={v}\n");
                if is_server {
                    server_error(&text)
                } else {
                    manager_error(&text)
                }
            };
            let ok = |v: &str| {
                let text = format!("{key}={v}\n");
                if is_server {
                    ServerConfig::parse(Path::new("s"), &text).is_ok()
                } else {
                    ManagerConfig::parse(Path::new("m"), &text).is_ok()
                }
            };
            let file = if is_server { "s" } else { "m" };
            let range = if zero_ok { "0 or more" } else { "more than 0" };
            for good in ["0.001", "1", "1e9", "1000000000"] {
                assert!(ok(good), "{key}={good}");
            }
            assert_eq!(ok("0"), zero_ok, "{key}=0");
            assert_eq!(ok("0.0"), zero_ok, "{key}=0.0");
            for bad in ["-1", "-0.001", "NaN", "-inf"] {
                assert_eq!(error(bad), format!("{file}:1: {key}={bad} must be {range} seconds"));
            }
            if !zero_ok {
                assert_eq!(error("0"), format!("{file}:1: {key}=0 must be more than 0 seconds"));
            }
            for bad in ["1000000000.5", "1e10", "inf"] {
                assert_eq!(
                    error(bad),
                    format!("{file}:1: {key}={bad} seconds is over the limit of 1000000000 seconds")
                );
            }
            assert!(error("soon").ends_with("is not a number of seconds"), "{key}");
        }
        let c = ServerConfig::parse(Path::new("s"), "idleTimeout=0.5\nstopGracePeriod=1e9\n").unwrap();
        assert_eq!(c.idle_timeout, Duration::from_millis(500));
        assert_eq!(c.stop_grace, Duration::from_secs(1_000_000_000));
    }

    #[test]
    fn every_yes_and_no_spelling_the_original_accepted() {
        for (v, b) in [
            ("yes", true),
            ("YES", true),
            ("true", true),
            ("True", true),
            ("on", true),
            ("ON", true),
            ("1", true),
            ("no", false),
            ("No", false),
            ("false", false),
            ("FALSE", false),
            ("off", false),
            ("Off", false),
            ("0", false),
            ("y", true),
            ("N", false),
        ] {
            let s = ServerConfig::parse(
                Path::new("s"),
                &format!("stopProcessesOnShutdown=yes\nstopProcessesOnShutdown={v}\n"),
            )
            .unwrap();
            assert_eq!(s.stop_processes_on_shutdown, b, "{v}");
            let s = ServerConfig::parse(
                Path::new("s"),
                &format!("stopProcessesOnShutdown=no\nstopProcessesOnShutdown={v}\n"),
            )
            .unwrap();
            assert_eq!(s.stop_processes_on_shutdown, b, "{v}");
            let m = ManagerConfig::parse(Path::new("m"), &format!("stopOnHalt={v}\n")).unwrap();
            assert_eq!(m.stop_on_halt, b, "{v}");
        }
        for bad in ["2", "yess", "enabled", "ja"] {
            assert_eq!(
                server_error(&format!("stopProcessesOnShutdown={bad}\n")),
                format!("s:1: stopProcessesOnShutdown={bad} is not yes or no")
            );
        }
        let c = ServerConfig::parse(Path::new("s"), "processEnvironment=clean\nprocessEnvironment=INHERIT\n").unwrap();
        assert_eq!(c.process_environment, ProcessEnvironment::Inherit);
    }

    #[test]
    fn ports_addresses_and_the_oom_adjustment_are_checked() {
        assert_eq!(server_error("port=65536\n"), "s:1: port=65536 is not a port number");
        assert_eq!(manager_error("port=-1\n"), "m:1: port=-1 is not a port number");
        let c = ServerConfig::parse(Path::new("s"), "port=7\n").unwrap();
        assert_eq!(
            c.listen_addrs(),
            ["[::]:7".parse().unwrap(), "0.0.0.0:7".parse().unwrap()]
        );
        let c = ServerConfig::parse(Path::new("s"), "port=7\nlisten=127.0.0.1:8\nlisten=[::1]:9\n").unwrap();
        assert_eq!(
            c.listen_addrs(),
            ["127.0.0.1:8".parse().unwrap(), "[::1]:9".parse().unwrap()]
        );
        for n in ["-1000", "1000", "0"] {
            let c = ServerConfig::parse(Path::new("s"), &format!("processOomScoreAdjust={n}\n")).unwrap();
            assert_eq!(c.process_oom_score_adjust.to_string(), n);
        }
        for n in ["-1001", "1001", "x"] {
            assert_eq!(
                server_error(&format!("processOomScoreAdjust={n}\n")),
                format!("s:1: processOomScoreAdjust={n} must be a whole number from -1000 to 1000")
            );
        }
        assert!(server_error("environment==x\n").contains("\"\" is not a variable name"));
        assert!(server_error("environment=A-B=x\n").contains("\"A-B\" is not a variable name"));
        assert_eq!(
            server_error("environment=A=x\\u0000\n"),
            "s:1: environment=A=...: the value contains a NUL character"
        );
        let c = ServerConfig::parse(Path::new("s"), "environment=_a9=\n").unwrap();
        assert_eq!(c.environment, [("_a9".into(), String::new())]);
    }

    #[test]
    fn a_trust_store_for_one_node_needs_a_node_and_a_file() {
        let m = |text: &str| ManagerConfig::parse(Path::new("m"), text).unwrap();
        // A node name has neither '/' nor '\' and is not empty; otherwise the
        // whole value is the path of the default trust store.
        for plain in ["/etc/a:b", "dir/x:y", "C\\x:y", ":/a", "/plain"] {
            let c = m(&format!("trustStore={}\n", plain.replace('\\', "\\\\")));
            assert_eq!(c.trust_store, Path::new(plain), "{plain}");
            assert!(c.node_trust_stores.is_empty(), "{plain}");
        }
        let c = m("trustStore= G1 : /a \ntrustStore=g2:/b\n");
        assert_eq!(c.trust_store_for("g1"), Path::new("/a"));
        assert_eq!(c.trust_store_for("G2"), Path::new("/b"));
        assert_eq!(c.trust_store, ManagerConfig::default().trust_store);
        assert_eq!(
            manager_error("trustStore=g1:\n"),
            "m:1: trustStore for node g1 names no file"
        );
        assert_eq!(
            manager_error("trustStore=g1: \n"),
            "m:1: trustStore for node g1 names no file"
        );
        // An empty trustStore gives the default back, as for any key.
        let c = m("trustStore=/a\ntrustStore=\n");
        assert_eq!(c.trust_store, ManagerConfig::default().trust_store);
        // A node's entry and the default's are different slots: no warning.
        let checked = ManagerConfig::check(Path::new("m"), "trustStore=/a\ntrustStore=g1:/b\n");
        assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    }

    #[test]
    fn problems_are_listed_one_a_line_with_or_without_a_line_number() {
        let e = ConfigErrors(vec![
            ConfigError {
                path: "/a".into(),
                line: Some(3),
                message: "x".into(),
            },
            ConfigError {
                path: "/a".into(),
                line: None,
                message: "y".into(),
            },
        ]);
        assert_eq!(e.to_string(), "/a:3: x\n/a: y");
        let checked = ServerConfig::check(Path::new("s"), "bogus=1\nport=x\n");
        assert_eq!(checked.clone().logged(), checked.result);
        assert_eq!(checked.warnings.len(), 1);
    }

    #[test]
    fn a_file_over_one_mebibyte_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.conf");
        let mut text = "#".repeat((1 << 20) - 1);
        text.push('\n');
        std::fs::write(&path, &text).unwrap();
        assert_eq!(ServerConfig::load(&path).unwrap(), ServerConfig::default());
        text.push('\n');
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            ServerConfig::load(&path).unwrap_err().to_string(),
            format!("{}: configuration file is larger than 1 MiB", path.display())
        );
    }

    #[test]
    fn a_value_may_end_in_escaped_blanks_and_continue_over_blank_lines() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(one("k=a\\ \\ \t "), kv("k", "a  "));
        assert_eq!(one("k=a\\\\ "), kv("k", "a\\"));
        assert_eq!(one("k=\\u0041\\u00e9"), kv("k", "Aé"));
        assert_eq!(
            props("k\\\n\n=v"),
            [("k".into(), String::new(), 1), (String::new(), "v".into(), 3)]
        );
        assert_eq!(
            props("a=1\r\rb=2\n\nc=3"),
            [
                ("a".to_string(), "1".to_string(), 1),
                ("b".to_string(), "2".to_string(), 3),
                ("c".to_string(), "3".to_string(), 5),
            ]
        );
    }

    #[test]
    fn every_size_is_bounded_at_both_ends_in_any_unit() {
        let server_size =
            |v: &str| ServerConfig::parse(Path::new("s"), &format!("outputLogSize={v}\n")).map(|c| c.output_log_size);
        for (v, n) in [
            ("4096", 4096),
            ("4k", 4096),
            ("4K", 4096),
            ("1m", 1 << 20),
            ("2G", 2 << 30),
            ("1024G", 1 << 40),
        ] {
            assert_eq!(server_size(v), Ok(n), "{v}");
        }
        for v in ["4095", "1025G", "3"] {
            assert_eq!(
                server_size(v).unwrap_err().to_string(),
                format!("s:1: outputLogSize={v} must be between 4096 and 1099511627776 bytes")
            );
        }
        for v in ["4T", "x", "K", "-1", "99999999999999999999", "18014398509481984K"] {
            assert_eq!(
                server_size(v).unwrap_err().to_string(),
                format!("s:1: outputLogSize={v} is not a size (bytes, or with K, M or G)")
            );
        }
        let manager_rate = |v: &str| {
            ManagerConfig::parse(Path::new("m"), &format!("forwardBytesPerSecond={v}\n"))
                .map(|c| c.forward_bytes_per_sec)
        };
        assert_eq!(manager_rate("1024"), Ok(1024));
        assert_eq!(manager_rate("1G"), Ok(1 << 30));
        assert!(manager_rate("1023").is_err());
        assert!(manager_rate("1073741825").is_err());
    }

    #[test]
    fn each_output_log_setting_names_its_sinks() {
        for (v, file, syslog) in [
            ("file", true, false),
            ("syslog", false, true),
            ("both", true, true),
            ("NONE", false, false),
        ] {
            let c = ServerConfig::parse(Path::new("s"), &format!("outputLog={v}\n")).unwrap();
            assert_eq!(
                (c.output_log.to_file(), c.output_log.to_syslog()),
                (file, syslog),
                "{v}"
            );
        }
    }
}
