//! From a run string to an argv, and the identity a process is filed under.
//!
//! Cluster service entries pass the run string either as separate arguments
//! (`-service /bin/sh -c 'exit 7'`, which the cluster's shell has already
//! split) or as one quoted string (`-service "/apps/app --flag x"`, as older
//! entries do). Separate arguments are the argv as is and are never re-split.
//! A single argument that contains white space is split the way a POSIX shell
//! splits words (quotes and backslashes honoured, by the `shell-words` crate),
//! but no shell runs it: no globbing, no `;`, no `$()`, no variables.
//!
//! The identity used to re-attach is the run string exactly as the manager
//! received it (or an explicit name). Two entries that differ only in spacing
//! inside a quoted run string are therefore two services, which keeps the
//! original's advice ("add a space to make two service strings unique") true.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::probe::Probe;

/// The longest service name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// The longest run string, in bytes (all arguments together).
pub const MAX_RUN_LEN: usize = 64 * 1024;
/// The most arguments a run string may have (after splitting).
pub const MAX_ARGS: usize = 1024;

/// Why a run string cannot be turned into an argv.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("empty run string: nothing to run")]
    Empty,
    #[error("cannot split run string {}: {reason}", crate::text::clip(run, 200))]
    Split { run: String, reason: String },
    #[error("the {what} is {len} {unit}, over the limit of {limit} {unit}")]
    TooLong {
        what: &'static str,
        len: usize,
        limit: usize,
        unit: &'static str,
    },
    #[error("the {what} contains a NUL byte")]
    Nul { what: &'static str },
}

fn bounded(what: &'static str, len: usize, limit: usize, unit: &'static str) -> Result<(), ServiceError> {
    if len > limit {
        return Err(ServiceError::TooLong { what, len, limit, unit });
    }
    Ok(())
}

/// A parsed run string. cmappserver's state directory records it as
/// serialised here (`run`, `argv`, `name`, `probe` in `meta.json`: see
/// `appserver/FORMATS.md`), and adopts it from there without re-parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// What the manager sent, untouched.
    pub run: Vec<String>,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The explicit name, if any.
    pub name: Option<String>,
    /// The built-in probe the program names (by its file name, wherever
    /// the path points), or `None` for an ordinary command. Recorded as the
    /// probe's subcommand (`"net-mon"`); a name this build does not know
    /// reads as `None`.
    #[serde(default, deserialize_with = "crate::probe::lenient")]
    pub probe: Option<Probe>,
}

impl ServiceSpec {
    /// Checks the limits ([`MAX_NAME_LEN`], [`MAX_RUN_LEN`], [`MAX_ARGS`])
    /// before anything else, then splits the run string.
    pub fn parse(run: Vec<String>, name: Option<String>) -> Result<Self, ServiceError> {
        Self::check(&run, name.as_deref())?;
        let argv = split_run(&run)?;
        bounded("run string's list of arguments", argv.len(), MAX_ARGS, "arguments")?;
        Ok(ServiceSpec {
            probe: argv.first().and_then(|p| Probe::from_program(p)),
            run,
            argv,
            name: name.filter(|n| !n.is_empty()),
        })
    }

    /// Checks the limits of a run string and name as received, without
    /// splitting it (see [`ServiceSpec::parse`]).
    pub fn check(run: &[String], name: Option<&str>) -> Result<(), ServiceError> {
        if let Some(n) = name {
            bounded("name", n.len(), MAX_NAME_LEN, "bytes")?;
            if n.contains('\0') {
                return Err(ServiceError::Nul { what: "name" });
            }
        }
        bounded("run string", run.iter().map(String::len).sum(), MAX_RUN_LEN, "bytes")?;
        bounded("run string's list of arguments", run.len(), MAX_ARGS, "arguments")?;
        if run.iter().any(|a| a.contains('\0')) {
            return Err(ServiceError::Nul { what: "run string" });
        }
        Ok(())
    }

    /// The key processes are filed under: the explicit name, or the run string.
    pub fn key(&self) -> String {
        match &self.name {
            Some(n) => format!("name:{n}"),
            None => format!("run:{}", serde_json::to_string(&self.run).unwrap_or_default()),
        }
    }

    /// A human-readable form for logs and listings (as sent: escape it
    /// before printing, see [`crate::text`]).
    pub fn display(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self.run.join(" "),
        }
    }

    /// The host log file this run string names: only a probe's can, in
    /// any spelling the probe accepts (see [`Probe::host_log_file`]).
    pub fn host_log_file(&self) -> Option<std::path::PathBuf> {
        self.probe?.host_log_file(self.argv.get(1..).unwrap_or_default())
    }
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// Turns the run string into an argv (see the module documentation).
pub fn split_run(run: &[String]) -> Result<Vec<String>, ServiceError> {
    let argv = match run {
        [] => return Err(ServiceError::Empty),
        [one] if one.chars().any(char::is_whitespace) => shell_words::split(one).map_err(|e| ServiceError::Split {
            run: one.clone(),
            reason: e.to_string(),
        })?,
        many => many.to_vec(),
    };
    match argv.first() {
        Some(p) if !p.is_empty() => Ok(argv),
        _ => Err(ServiceError::Empty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn separate_arguments_are_never_resplit() {
        assert_eq!(
            split_run(&s(&["/bin/sh", "-c", "exit 7"])).unwrap(),
            s(&["/bin/sh", "-c", "exit 7"])
        );
    }

    #[test]
    fn one_string_is_split_like_a_shell_without_running_one() {
        assert_eq!(
            split_run(&s(&["/bin/sh -c 'exit 7'"])).unwrap(),
            s(&["/bin/sh", "-c", "exit 7"])
        );
        // Metacharacters stay literal: no shell runs this.
        assert_eq!(
            split_run(&s(&["echo a;b $(x) *"])).unwrap(),
            s(&["echo", "a;b", "$(x)", "*"])
        );
        assert!(matches!(
            split_run(&s(&["echo 'unterminated"])),
            Err(ServiceError::Split { .. })
        ));
        assert_eq!(split_run(&[]), Err(ServiceError::Empty));
        assert_eq!(split_run(&s(&["   "])), Err(ServiceError::Empty));
    }

    #[test]
    fn names_and_run_strings_are_bounded() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let e = ServiceSpec::parse(s(&["/bin/true"]), Some(long)).unwrap_err();
        assert_eq!(e.to_string(), "the name is 1025 bytes, over the limit of 1024 bytes");
        let e = ServiceSpec::parse(vec!["y".repeat(MAX_RUN_LEN + 1)], None).unwrap_err();
        assert!(e.to_string().starts_with("the run string is 65537 bytes"), "{e}");
        let e = ServiceSpec::parse(vec!["a".into(); MAX_ARGS + 1], None).unwrap_err();
        assert!(e.to_string().contains("1025 arguments, over the limit"), "{e}");
        let split = vec!["a ".repeat(MAX_ARGS + 1)];
        assert!(matches!(
            ServiceSpec::parse(split, None),
            Err(ServiceError::TooLong { .. })
        ));
        assert!(matches!(
            ServiceSpec::parse(s(&["/bin/echo", "a\0b"]), None),
            Err(ServiceError::Nul { .. })
        ));
        assert!(ServiceSpec::parse(s(&["/bin/true"]), Some("n".repeat(MAX_NAME_LEN))).is_ok());
    }

    #[test]
    fn the_probe_is_parsed_once_and_recorded_by_its_subcommand() {
        let spec = ServiceSpec::parse(s(&["/opt/hp/cmappserver/cmapp_net_mon.pl --lan eth0"]), None).unwrap();
        assert_eq!(spec.probe, Some(Probe::Net));
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["probe"], "net-mon");
        assert_eq!(serde_json::from_value::<ServiceSpec>(json).unwrap(), spec);
        let plain = ServiceSpec::parse(s(&["/bin/true"]), None).unwrap();
        assert_eq!(serde_json::to_value(&plain).unwrap()["probe"], serde_json::Value::Null);
    }

    #[test]
    fn identity_is_the_run_string_as_received() {
        let a = ServiceSpec::parse(s(&["/apps/a x"]), None).unwrap();
        let b = ServiceSpec::parse(s(&["/apps/a  x"]), None).unwrap();
        assert_eq!(a.argv, b.argv);
        assert_ne!(
            a.key(),
            b.key(),
            "a space keeps two service strings apart, as the original advises"
        );
        let named = ServiceSpec::parse(s(&["/apps/a x"]), Some("web".into())).unwrap();
        assert_eq!(named.key(), "name:web");
    }

    /// What `sh` makes of `line` as the arguments of a command: its words,
    /// or `None` when it refuses the line (an unterminated quote).
    fn shell_words_of(line: &str) -> Option<Vec<String>> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\0' START {line}"))
            .stderr(std::process::Stdio::null())
            .output()
            .expect("sh runs");
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).expect("UTF-8 in, UTF-8 out");
        let mut words: Vec<String> = text.split_terminator('\0').map(String::from).collect();
        assert_eq!(words.remove(0), "START", "{line:?}");
        Some(words)
    }

    /// Run strings made of what a shell splits on and quotes with, and
    /// nothing it would expand or treat as an operator.
    fn run_string() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                3 => Just(" "), 1 => Just("\t"), 2 => Just("'"), 2 => Just("\""), 2 => Just("\\"),
                1 => Just("#"), 4 => Just("a"), 2 => Just("b-"), 1 => Just("/x.y"), 1 => Just("é"),
            ],
            0..24,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// One run string with white space is split exactly as `sh` splits
        /// the words of a command line, and refused where `sh` refuses it.
        #[test]
        fn one_string_is_split_as_sh_splits_words(line in run_string()) {
            let line = format!("{line} ");
            let ours = split_run(std::slice::from_ref(&line));
            match shell_words_of(&line) {
                None => prop_assert!(matches!(ours, Err(ServiceError::Split { .. })), "{:?}: {:?}", line, ours),
                Some(words) if words.first().is_none_or(|w| w.is_empty()) => {
                    prop_assert_eq!(ours, Err(ServiceError::Empty), "{:?}", line)
                }
                Some(words) => prop_assert_eq!(ours, Ok(words), "{:?}", line),
            }
        }

        /// A single argument without white space, and several arguments,
        /// are the argv exactly as received, quotes and all.
        #[test]
        fn arguments_are_taken_as_they_are(
            args in proptest::collection::vec("[a-z'\"#$*;\\\\]{1,8}", 1..5),
        ) {
            prop_assert_eq!(split_run(&args), Ok(args.clone()));
            let spec = ServiceSpec::parse(args.clone(), None).unwrap();
            prop_assert_eq!(&spec.argv, &args);
            prop_assert_eq!(spec.display(), args.join(" "));
            prop_assert_eq!(spec.key(), format!("run:{}", serde_json::to_string(&args).unwrap()));
        }
    }

    #[test]
    fn an_empty_program_is_nothing_to_run() {
        assert_eq!(split_run(&s(&["", "x"])), Err(ServiceError::Empty));
        assert_eq!(split_run(&s(&["'' x"])), Err(ServiceError::Empty));
        assert_eq!(split_run(&s(&[""])), Err(ServiceError::Empty));
        assert_eq!(
            ServiceSpec::parse(s(&[" "]), None).unwrap_err().to_string(),
            "empty run string: nothing to run"
        );
    }

    #[test]
    fn limits_are_inclusive() {
        assert!(ServiceSpec::parse(vec!["y".repeat(MAX_RUN_LEN)], None).is_ok());
        assert!(ServiceSpec::parse(vec!["a".into(); MAX_ARGS], None).is_ok());
        assert!(ServiceSpec::parse(vec!["a ".repeat(MAX_ARGS)], None).is_ok());
        let e = ServiceSpec::parse(vec!["a ".repeat(MAX_ARGS + 1)], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the run string's list of arguments is 1025 arguments, over the limit of 1024 arguments"
        );
        assert_eq!(
            ServiceSpec::parse(s(&["/bin/true"]), Some("a\0b".into())),
            Err(ServiceError::Nul { what: "name" })
        );
        assert_eq!(
            ServiceSpec::parse(s(&["a\0b c"]), None).unwrap_err().to_string(),
            "the run string contains a NUL byte"
        );
        let e = ServiceSpec::parse(s(&["echo 'x"]), None).unwrap_err().to_string();
        assert!(e.starts_with("cannot split run string echo 'x: "), "{e}");
    }

    #[test]
    fn a_name_is_the_identity_and_the_display_an_empty_one_is_none() {
        let named = ServiceSpec::parse(s(&["/apps/a", "x"]), Some("web".into())).unwrap();
        assert_eq!(named.display(), "web");
        assert_eq!(named.to_string(), "web");
        let unnamed = ServiceSpec::parse(s(&["/apps/a", "x"]), Some(String::new())).unwrap();
        assert_eq!(unnamed.name, None);
        assert_eq!(unnamed.to_string(), "/apps/a x");
        assert_eq!(unnamed.key(), r#"run:["/apps/a","x"]"#);
    }

    #[test]
    fn a_probe_runs_as_its_subcommand() {
        assert_eq!(Probe::Net.subcommand(), "net-mon");
        assert_eq!(Probe::Disk.subcommand(), "disk-mon");
        let spec = ServiceSpec::parse(s(&["/opt/hp/cmappserver/cmapp_disk_mon.pl /dev/sda"]), None).unwrap();
        assert_eq!(spec.probe, Some(Probe::Disk));
        assert_eq!(Probe::from_program("cmapp_net_mon"), Some(Probe::Net));
        assert_eq!(ServiceSpec::parse(s(&["/bin/true"]), None).unwrap().probe, None);
    }
}
