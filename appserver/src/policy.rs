//! The command policy: who may run what, as whom (`allow.RULE.KEY=` lines in
//! `cmappserver.conf`), and which clients may connect at all
//! (`allowedClients`).
//!
//! Without any rule everything is allowed, as in the original: any trusted
//! manager runs any program as root. With one rule or more, a launch, an
//! attach, a stop or an acknowledgement is allowed only when a rule allows
//! the process's program and arguments to this client; the first such rule
//! (in the order the rules first appear in the file) decides whom the
//! process runs as. A refusal names the configuration file and every rule
//! that came close, and why it did not apply.
//!
//! ```text
//! allow.db.program=/opt/db/bin/server        exact path
//! allow.tools.program=/opt/tools/            any program under a directory
//! allow.lan.program=probe:net-mon            a built-in probe (wherever its path points)
//! allow.db.args=--config /etc/db/*.conf ...  argument patterns (* ?), `...` = any more
//! allow.db.maxArgs=4
//! allow.db.clients=host1.example, *.cluster.example, sha256:AB:CD:...
//! allow.db.user=dbuser   allow.db.group=db   allow.db.cwd=/srv/db
//! allow.db.limit.nofile=4096   allow.db.limit.core=0   allow.db.limit.as=8G
//! ```

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use common::config::{ConfigError, Entry, ServerConfig};
use common::service::Probe;
use serde::Serialize;

use crate::runas::{self, RunAs};

/// A connected manager's certificate: what rules and audit records name.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Client {
    /// The subject, as a distinguished name (`CN=host1,O=...`).
    pub subject: String,
    /// Its common name and subject alternative names (DNS, URI, IP), in that order.
    pub names: Vec<String>,
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub fingerprint: String,
}

impl Client {
    /// The identity of the end-entity certificate a TLS peer presented.
    pub fn from_tls(conn: &rustls::CommonState) -> Client {
        match conn.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => Client::from_der(cert),
            None => Client::default(),
        }
    }

    pub fn from_der(der: &[u8]) -> Client {
        let fingerprint = hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
        let subject = x509_parser::parse_x509_certificate(der)
            .map(|(_, x509)| x509.subject().to_string())
            .unwrap_or_default();
        Client {
            subject,
            names: common::tls::certificate_names(der, true),
            fingerprint,
        }
    }

    /// For log lines: `host1 (sha256:0a1b2c3d4e5f...)`, escaped.
    pub fn short(&self) -> String {
        let name = self.names.first().map_or("(no name)", String::as_str);
        format!(
            "{} (sha256:{})",
            common::text::clip(name, 100),
            &self.fingerprint[..self.fingerprint.len().min(16)]
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why the value of a rule's key (or of `allowedClients`) is not one it takes.
/// The configuration error around it names the file, line and key.
#[derive(Debug, thiserror::Error)]
enum ValueError {
    #[error("{value:?} is not sha256: and 32 bytes in hex")]
    Fingerprint { value: String },
    #[error("{value:?} is not a name pattern: {source}")]
    NamePattern {
        value: String,
        #[source]
        source: glob::PatternError,
    },
    #[error("names no client")]
    NoClient,
    #[error("{value:?}: the built-in probes are probe:net-mon and probe:disk-mon")]
    UnknownProbe { value: String },
    #[error("{value:?} is not an absolute path (nor probe:NAME)")]
    RelativeProgram { value: String },
    #[error("{value:?} contains \"..\"")]
    ParentDir { value: String },
    #[error("cannot split {value:?}: {source}")]
    Split {
        value: String,
        #[source]
        source: shell_words::ParseError,
    },
    #[error("{word:?} is not a pattern: {source}")]
    ArgPattern {
        word: String,
        #[source]
        source: glob::PatternError,
    },
    #[error("not a whole number")]
    NotAWholeNumber(#[source] std::num::ParseIntError),
    #[error("no such user in the user database")]
    NoUser,
    #[error("cannot look the user up: {0}")]
    LookUpUser(#[source] nix::errno::Errno),
    #[error("no such group in the group database")]
    NoGroup,
    #[error("cannot look the group up: {0}")]
    LookUpGroup(#[source] nix::errno::Errno),
    #[error("not an absolute path")]
    RelativeCwd,
    #[error(transparent)]
    Limit(#[from] runas::LimitError),
}

/// A client that `allowedClients` does not name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("client {client} is not among the allowedClients of {}", config.display())]
pub struct NotAdmitted {
    /// The client, as [`Client::short`] shows it.
    pub client: String,
    /// The configuration file that has the list.
    pub config: PathBuf,
}

/// Whom a rule (or `allowedClients`) applies to.
#[derive(Debug, Clone)]
enum ClientPattern {
    /// SHA-256 of the certificate, lowercase hex without colons.
    Fingerprint(String),
    /// A name (CN, DNS or URI SAN, IP); `*` and `?` match, case ignored.
    Name(glob::Pattern),
}

impl ClientPattern {
    fn parse(s: &str) -> Result<ClientPattern, ValueError> {
        let fp = s.strip_prefix("sha256:").or_else(|| s.strip_prefix("SHA256:"));
        if let Some(fp) = fp {
            let hexed: String = fp
                .chars()
                .filter(|&c| c != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            if hexed.len() != 64 || !hexed.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ValueError::Fingerprint { value: s.into() });
            }
            return Ok(ClientPattern::Fingerprint(hexed));
        }
        glob::Pattern::new(s)
            .map(ClientPattern::Name)
            .map_err(|source| ValueError::NamePattern {
                value: s.into(),
                source,
            })
    }

    fn matches(&self, c: &Client) -> bool {
        match self {
            ClientPattern::Fingerprint(f) => *f == c.fingerprint,
            ClientPattern::Name(p) => {
                let opts = glob::MatchOptions {
                    case_sensitive: false,
                    require_literal_separator: false,
                    require_literal_leading_dot: false,
                };
                c.names.iter().any(|n| p.matches_with(n, opts))
            }
        }
    }
}

fn parse_clients(value: &str) -> Result<Vec<ClientPattern>, ValueError> {
    let list: Vec<ClientPattern> = value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(ClientPattern::parse)
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err(ValueError::NoClient);
    }
    Ok(list)
}

/// Which programs a rule allows.
#[derive(Debug, Clone)]
enum Program {
    Exact(PathBuf),
    Under(PathBuf),
    Probe(Probe),
}

impl Program {
    fn parse(v: &str) -> Result<Program, ValueError> {
        if let Some(p) = v.strip_prefix("probe:") {
            return match p {
                "net-mon" | "cmapp_net_mon" | "cmapp_net_mon.pl" => Ok(Program::Probe(Probe::Net)),
                "disk-mon" | "cmapp_disk_mon" | "cmapp_disk_mon.pl" => Ok(Program::Probe(Probe::Disk)),
                _ => Err(ValueError::UnknownProbe { value: v.into() }),
            };
        }
        let path = Path::new(v);
        if !path.is_absolute() {
            return Err(ValueError::RelativeProgram { value: v.into() });
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(ValueError::ParentDir { value: v.into() });
        }
        if v.ends_with('/') {
            Ok(Program::Under(path.to_path_buf()))
        } else {
            Ok(Program::Exact(path.to_path_buf()))
        }
    }

    fn matches(&self, program: &str) -> bool {
        let probe = Probe::from_program(program);
        match self {
            Program::Probe(p) => probe == Some(*p),
            _ if probe.is_some() => false,
            Program::Exact(p) => Path::new(program).components().eq(p.components()),
            Program::Under(d) => {
                let path = Path::new(program);
                path.starts_with(d) && !path.components().eq(d.components())
            }
        }
    }
}

/// Which arguments a rule allows (absent: any).
#[derive(Debug, Clone)]
struct Args {
    patterns: Vec<glob::Pattern>,
    /// The last word was `...`: any further arguments.
    more: bool,
}

impl Args {
    fn parse(v: &str) -> Result<Args, ValueError> {
        let mut words = shell_words::split(v).map_err(|source| ValueError::Split {
            value: v.into(),
            source,
        })?;
        let more = words.last().is_some_and(|w| w == "...");
        if more {
            words.pop();
        }
        let patterns = words
            .iter()
            .map(|w| {
                glob::Pattern::new(w).map_err(|source| ValueError::ArgPattern {
                    word: w.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Args { patterns, more })
    }

    fn matches(&self, args: &[String]) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        let count_ok = if self.more {
            args.len() >= self.patterns.len()
        } else {
            args.len() == self.patterns.len()
        };
        count_ok && self.patterns.iter().zip(args).all(|(p, a)| p.matches_with(a, opts))
    }

    fn describe(&self) -> String {
        let mut words: Vec<&str> = self.patterns.iter().map(glob::Pattern::as_str).collect();
        if self.more {
            words.push("...");
        }
        if words.is_empty() {
            "no arguments".into()
        } else {
            format!("arguments {}", words.join(" "))
        }
    }
}

/// One `allow.NAME.*` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    program: Program,
    args: Option<Args>,
    max_args: Option<usize>,
    clients: Option<Vec<ClientPattern>>,
    pub run_as: Option<RunAs>,
}

/// The policy in force.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The file the rules come from (named in refusals).
    pub source: PathBuf,
    pub rules: Vec<Rule>,
    allowed_clients: Option<Vec<ClientPattern>>,
}

/// The policy in force, replaced whole on a reload.
pub type Current = crate::reload::Swap<Policy>;

/// What the policy says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No rules: everything is allowed.
    Open,
    /// Allowed by this rule, which may say whom to run as.
    Allowed { rule: String, run_as: Option<RunAs> },
    /// Refused, and why (a full sentence naming the file and the rules).
    Refused(String),
}

impl Decision {
    /// The rule's name for logs and audit records: `-` without rules.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Allowed { rule, .. } => Some(rule),
            _ => None,
        }
    }
}

/// The keys of one rule.
const RULE_KEYS: &[&str] = &["program", "args", "maxArgs", "clients", "user", "group", "cwd"];

impl Policy {
    /// Reads the rules and `allowedClients` of a configuration; every
    /// problem is an error naming the file and line. Users and groups must
    /// exist in the user database now.
    pub fn from_config(path: &Path, config: &ServerConfig) -> Result<Policy, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let error = |errors: &mut Vec<ConfigError>, line: usize, message: String| {
            errors.push(ConfigError {
                path: path.to_path_buf(),
                line: Some(line),
                message,
            })
        };
        let allowed_clients = match &config.allowed_clients {
            Some(e) => match parse_clients(&e.value) {
                Ok(l) => Some(l),
                Err(m) => {
                    error(&mut errors, e.line, format!("allowedClients: {m}"));
                    None
                }
            },
            None => None,
        };
        // Rules in the order they first appear; each key once.
        let mut order: Vec<String> = Vec::new();
        let mut by_rule: BTreeMap<String, Vec<(&Entry, String)>> = BTreeMap::new();
        for e in &config.rules {
            let rest = &e.key[ServerConfig::RULE_PREFIX.len()..];
            let Some((name, key)) = rest.split_once('.') else {
                error(
                    &mut errors,
                    e.line,
                    format!("{}: a rule's key is allow.RULE.KEY (KEY: program, args, maxArgs, clients, user, group, cwd, limit.RESOURCE)", e.key),
                );
                continue;
            };
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                error(
                    &mut errors,
                    e.line,
                    format!("{}: a rule's name is 1 to 64 letters, digits, - or _", e.key),
                );
                continue;
            }
            let name = name.to_string();
            if !order.contains(&name) {
                order.push(name.clone());
            }
            by_rule.entry(name).or_default().push((e, key.to_string()));
        }
        let mut rules = Vec::new();
        for name in order {
            let entries = &by_rule[&name];
            match Self::rule(&name, entries) {
                Ok(r) => rules.push(r),
                Err(list) => {
                    for (line, m) in list {
                        error(&mut errors, line, m);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(Policy {
                source: path.to_path_buf(),
                rules,
                allowed_clients,
            })
        } else {
            Err(errors)
        }
    }

    fn rule(name: &str, entries: &[(&Entry, String)]) -> Result<Rule, Vec<(usize, String)>> {
        let mut errors = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut program = None;
        let mut args = None;
        let mut max_args = None;
        let mut clients = None;
        let mut run_as = RunAs::default();
        let first_line = entries.first().map_or(0, |(e, _)| e.line);
        for (e, key) in entries {
            let full = format!("allow.{name}.{key}");
            let canonical = if let Some(res) = key.strip_prefix("limit.").or_else(|| key.strip_prefix("Limit.")) {
                match runas::RESOURCES.iter().find(|r| r.0.eq_ignore_ascii_case(res)) {
                    Some(r) => format!("limit.{}", r.0),
                    None => {
                        let known: Vec<&str> = runas::RESOURCES.iter().map(|r| r.0).collect();
                        errors.push((
                            e.line,
                            format!("{full}: unknown resource {res:?} (one of {})", known.join(", ")),
                        ));
                        continue;
                    }
                }
            } else {
                match RULE_KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) {
                    Some(k) => k.to_string(),
                    None => {
                        errors.push((
                            e.line,
                            format!(
                                "{full}: unknown key {key:?} (one of {}, limit.RESOURCE)",
                                RULE_KEYS.join(", ")
                            ),
                        ));
                        continue;
                    }
                }
            };
            if let Some(first) = seen.insert(canonical.clone(), e.line) {
                errors.push((
                    e.line,
                    format!("{full} is set twice (first on line {first}) in a rule: say what you mean once"),
                ));
                continue;
            }
            let v = e.value.trim();
            if v.is_empty() {
                errors.push((e.line, format!("{full} is empty")));
                continue;
            }
            let bad = |m: ValueError| (e.line, format!("allow.{name}.{canonical}={v}: {m}"));
            match canonical.as_str() {
                "program" => match Program::parse(v) {
                    Ok(p) => program = Some(p),
                    Err(m) => errors.push(bad(m)),
                },
                "args" => match Args::parse(v) {
                    Ok(a) => args = Some(a),
                    Err(m) => errors.push(bad(m)),
                },
                "maxArgs" => match v.parse::<usize>() {
                    Ok(n) => max_args = Some(n),
                    Err(err) => errors.push(bad(ValueError::NotAWholeNumber(err))),
                },
                "clients" => match parse_clients(v) {
                    Ok(c) => clients = Some(c),
                    Err(m) => errors.push(bad(m)),
                },
                "user" => match nix::unistd::User::from_name(v) {
                    Ok(Some(_)) => run_as.user = Some(v.to_string()),
                    Ok(None) => errors.push(bad(ValueError::NoUser)),
                    Err(err) => errors.push(bad(ValueError::LookUpUser(err))),
                },
                "group" => match nix::unistd::Group::from_name(v) {
                    Ok(Some(_)) => run_as.group = Some(v.to_string()),
                    Ok(None) => errors.push(bad(ValueError::NoGroup)),
                    Err(err) => errors.push(bad(ValueError::LookUpGroup(err))),
                },
                "cwd" => {
                    if Path::new(v).is_absolute() {
                        run_as.cwd = Some(v.into());
                    } else {
                        errors.push(bad(ValueError::RelativeCwd));
                    }
                }
                limit => {
                    let res = &limit["limit.".len()..];
                    let bytes = runas::RESOURCES.iter().any(|r| r.0 == res && r.2);
                    match runas::parse_limit(res, v, bytes) {
                        Ok(l) => run_as.limits.push(l),
                        Err(m) => errors.push(bad(m.into())),
                    }
                }
            }
        }
        let Some(program) = program else {
            if errors.is_empty() {
                errors.push((first_line, format!("rule {name} has no allow.{name}.program")));
            }
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Rule {
            name: name.to_string(),
            program,
            args,
            max_args,
            clients,
            run_as: (run_as != RunAs::default()).then_some(run_as),
        })
    }

    /// True when no rule is set: everything is allowed.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    /// May this client connect at all? `Err` says why not.
    pub fn admit(&self, client: &Client) -> Result<(), NotAdmitted> {
        match &self.allowed_clients {
            Some(list) if !list.iter().any(|p| p.matches(client)) => Err(NotAdmitted {
                client: client.short(),
                config: self.source.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// May `client` run (attach to, stop) `argv`?
    pub fn decide(&self, client: &Client, argv: &[String]) -> Decision {
        if self.is_open() {
            return Decision::Open;
        }
        let Some(program) = argv.first() else {
            return Decision::Refused("empty run string".into());
        };
        let probe = Probe::from_program(program).is_some();
        if !probe {
            if !program.starts_with('/') {
                return self.refused(format!(
                    "the program {} is not an absolute path, and the rules allow programs by path",
                    common::text::clip(program, 200)
                ));
            }
            if Path::new(program).components().any(|c| c == Component::ParentDir) {
                return self.refused(format!(
                    "the program path {} contains \"..\"",
                    common::text::clip(program, 200)
                ));
            }
        }
        let args = &argv[1..];
        let mut near = Vec::new();
        for r in &self.rules {
            if !r.program.matches(program) {
                continue;
            }
            if let Some(max) = r.max_args {
                if args.len() > max {
                    near.push(format!(
                        "rule {} allows at most {max} arguments, not {}",
                        r.name,
                        args.len()
                    ));
                    continue;
                }
            }
            if let Some(a) = &r.args {
                if !a.matches(args) {
                    near.push(format!("rule {} allows only {}", r.name, a.describe()));
                    continue;
                }
            }
            if let Some(c) = &r.clients {
                if !c.iter().any(|p| p.matches(client)) {
                    near.push(format!("rule {} is not for client {}", r.name, client.short()));
                    continue;
                }
            }
            return Decision::Allowed {
                rule: r.name.clone(),
                run_as: r.run_as.clone(),
            };
        }
        if near.is_empty() {
            let names: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
            self.refused(format!(
                "no rule allows the program {} (rules: {})",
                common::text::clip(program, 200),
                names.join(", ")
            ))
        } else {
            self.refused(near.join("; "))
        }
    }

    fn refused(&self, why: String) -> Decision {
        Decision::Refused(format!(
            "refused by the command policy of {}: {why}",
            self.source.display()
        ))
    }

    /// One line for `--check-config` and the start-up log.
    pub fn summary(&self) -> String {
        if self.is_open() {
            return "command policy: no rules (allow.RULE.program): every trusted client may run any program, as root"
                .into();
        }
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                let who = r
                    .run_as
                    .as_ref()
                    .and_then(|a| a.user.clone())
                    .map_or_else(String::new, |u| format!(" as {u}"));
                format!("{}{who}", r.name)
            })
            .collect();
        format!(
            "command policy: {} rule(s): {}; anything else is refused",
            self.rules.len(),
            rules.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Result<Policy, Vec<ConfigError>> {
        let path = Path::new("/etc/test.conf");
        let c = ServerConfig::parse(path, text).expect("config");
        Policy::from_config(path, &c)
    }

    fn client(names: &[&str]) -> Client {
        Client {
            subject: String::new(),
            names: names.iter().map(|s| s.to_string()).collect(),
            fingerprint: "ab".repeat(32),
        }
    }

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_rules_is_open() {
        let p = policy("port=5315\n").unwrap();
        assert!(p.is_open());
        assert_eq!(p.decide(&client(&["h"]), &argv(&["/bin/sh"])), Decision::Open);
        assert!(p.summary().contains("no rules"));
    }

    #[test]
    fn programs_args_and_clients() {
        let p = policy(
            &("allow.sh.program=/bin/sh\nallow.sh.args=-c exit*\n\
             allow.tools.program=/opt/tools/\nallow.tools.clients=host1, *.cluster.example\n\
             allow.lan.program=probe:net-mon\n\
             allow.fp.program=/bin/true\nallow.fp.maxArgs=0\nallow.fp.clients=sha256:"
                .to_string()
                + &"AB:".repeat(31)
                + "AB\n"),
        )
        .unwrap();
        let h1 = client(&["host1"]);
        let other = client(&["other"]);
        let ok = |d: Decision| matches!(d, Decision::Allowed { .. });
        assert!(ok(p.decide(&h1, &argv(&["/bin/sh", "-c", "exit 3"]))));
        assert!(!ok(p.decide(&h1, &argv(&["/bin/sh", "-c", "rm -rf /"]))));
        assert!(!ok(p.decide(&h1, &argv(&["/bin/sh"]))));
        assert!(ok(p.decide(&h1, &argv(&["/opt/tools/x", "any"]))));
        assert!(ok(
            p.decide(&client(&["a.cluster.example"]), &argv(&["/opt/tools/sub/y"]))
        ));
        assert!(!ok(p.decide(&other, &argv(&["/opt/tools/x"]))));
        assert!(!ok(p.decide(&h1, &argv(&["/opt/tools"]))));
        assert!(!ok(p.decide(&h1, &argv(&["/opt/tools/../../bin/sh"]))));
        assert!(!ok(p.decide(&h1, &argv(&["sh", "-c", "exit 1"]))));
        assert!(ok(p.decide(&other, &argv(&["/anywhere/cmapp_net_mon", "-i", "eth0"]))));
        assert!(ok(p.decide(&other, &argv(&["/bin/true"]))));
        assert!(!ok(p.decide(&other, &argv(&["/bin/true", "x"]))));
        match p.decide(&other, &argv(&["/opt/tools/x"])) {
            Decision::Refused(m) => {
                assert!(m.contains("/etc/test.conf"), "{m}");
                assert!(m.contains("rule tools is not for client other"), "{m}");
            }
            d => panic!("{d:?}"),
        }
        match p.decide(&h1, &argv(&["/usr/bin/id"])) {
            Decision::Refused(m) => assert!(m.contains("no rule allows the program /usr/bin/id"), "{m}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn bad_rules_are_errors_with_their_line() {
        let errs = policy(
            "allow.a.program=relative\nallow.b.args=x\nallow.c.program=/x\nallow.c.user=no-such-user-here\n\
             allow.d.program=/x\nallow.d.limit.bogus=1\nallow.e.program=/x\nallow.e.colour=red\nallow..program=/x\n",
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let text = text.join("\n");
        assert!(
            text.contains(":1: allow.a.program=relative: \"relative\" is not an absolute path"),
            "{text}"
        );
        assert!(text.contains(":2: rule b has no allow.b.program"), "{text}");
        assert!(
            text.contains(":4: allow.c.user=no-such-user-here: no such user"),
            "{text}"
        );
        assert!(text.contains(":6: allow.d.limit.bogus: unknown resource"), "{text}");
        assert!(text.contains(":8: allow.e.colour: unknown key"), "{text}");
        assert!(text.contains(":9: allow..program: a rule's name"), "{text}");
    }

    #[test]
    fn run_as_and_allowed_clients() {
        let p = policy(
            "allowedClients=host*\nallow.app.program=/bin/sh\nallow.app.user=root\nallow.app.limit.nofile=100:200\n",
        )
        .unwrap();
        assert!(p.admit(&client(&["host7"])).is_ok());
        assert!(p
            .admit(&client(&["evil"]))
            .unwrap_err()
            .to_string()
            .contains("allowedClients"));
        match p.decide(&client(&["host7"]), &argv(&["/bin/sh"])) {
            Decision::Allowed { rule, run_as: Some(r) } => {
                assert_eq!(rule, "app");
                assert_eq!(r.user.as_deref(), Some("root"));
                assert_eq!(r.limits[0].soft, Some(100));
            }
            d => panic!("{d:?}"),
        }
    }
}
