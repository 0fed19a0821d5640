//! A kept history read back, to judge it again with the current checker
//! (`cmapp-campaign --check-history DIR`).
//!
//! A failed campaign keeps `history.txt`: the runner's [`History`] as Rust's
//! pretty `Debug` prints it. This reads that notation back: strings,
//! integers, `None`/`Some(..)`, `true`/`false`, tuples, lists and structs.
//! Fields a later checker added are absent from an older history and take
//! their defaults (see [`to_history`]).

use std::collections::BTreeMap;
use std::path::Path;

use super::check::{AppRun, Dup, History, MgrRun, Ms};

/// A value in `Debug` notation.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    None,
    Some(Box<Value>),
    /// A tuple or a list.
    Seq(Vec<Value>),
    /// A struct's fields (its name is not kept).
    Struct(BTreeMap<String, Value>),
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        let line = self.s[..self.at.min(self.s.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        format!("line {line}: {what}")
    }

    fn skip_space(&mut self) {
        while self.s.get(self.at).is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.s.get(self.at).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {:?}", c as char)))
        }
    }

    fn ident(&mut self) -> String {
        self.skip_space();
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            self.at += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.at]).into_owned()
    }

    /// Values up to `close`, comma-separated (a trailing comma allowed).
    fn seq(&mut self, close: u8) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.at += 1;
                return Ok(out);
            }
            out.push(self.value()?);
            if self.peek() == Some(b',') {
                self.at += 1;
            } else {
                self.expect(close)?;
                return Ok(out);
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.at) else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match b {
                b'"' => return String::from_utf8(out).map_err(|_| self.error("a string is not UTF-8")),
                b'\\' => {
                    let Some(&e) = self.s.get(self.at) else {
                        return Err(self.error("unterminated escape"));
                    };
                    self.at += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'0' => out.push(0),
                        b'u' => {
                            self.expect(b'{')?;
                            let start = self.at;
                            while self.s.get(self.at).is_some_and(|b| *b != b'}') {
                                self.at += 1;
                            }
                            let hex = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
                            self.expect(b'}')?;
                            let c = u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.error(&format!("bad escape \\u{{{hex}}}")))?;
                            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                other => out.push(other),
            }
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'"') => self.string().map(Value::Str),
            Some(b'[') => {
                self.at += 1;
                self.seq(b']').map(Value::Seq)
            }
            Some(b'(') => {
                self.at += 1;
                self.seq(b')').map(Value::Seq)
            }
            Some(b) if b == b'-' || b.is_ascii_digit() => {
                let start = self.at;
                self.at += 1;
                while self.s.get(self.at).is_some_and(u8::is_ascii_digit) {
                    self.at += 1;
                }
                let text = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
                text.parse()
                    .map(Value::Int)
                    .map_err(|_| self.error(&format!("bad number {text:?}")))
            }
            Some(b) if b.is_ascii_alphabetic() => {
                let name = self.ident();
                match (name.as_str(), self.peek()) {
                    ("None", _) => Ok(Value::None),
                    ("true", _) => Ok(Value::Bool(true)),
                    ("false", _) => Ok(Value::Bool(false)),
                    ("Some", Some(b'(')) => {
                        self.at += 1;
                        let mut inner = self.seq(b')')?;
                        match inner.len() {
                            1 => Ok(Value::Some(Box::new(inner.remove(0)))),
                            _ => Err(self.error("Some with other than one value")),
                        }
                    }
                    (_, Some(b'{')) => {
                        self.at += 1;
                        let mut fields = BTreeMap::new();
                        loop {
                            if self.peek() == Some(b'}') {
                                self.at += 1;
                                return Ok(Value::Struct(fields));
                            }
                            let field = self.ident();
                            if field.is_empty() {
                                return Err(self.error("expected a field name"));
                            }
                            self.expect(b':')?;
                            fields.insert(field, self.value()?);
                            if self.peek() == Some(b',') {
                                self.at += 1;
                            }
                        }
                    }
                    _ => Err(self.error(&format!("unexpected {name:?}"))),
                }
            }
            _ => Err(self.error("expected a value")),
        }
    }
}

fn parse(text: &str) -> Result<Value, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
    };
    let v = p.value()?;
    match p.peek() {
        None => Ok(v),
        Some(_) => Err(p.error("text after the history")),
    }
}

/// The names the runner uses for outages and signals, as `&'static str`
/// (any other name is leaked: this reads one file per process).
fn name(s: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "server-kill",
        "server-term",
        "upgrade",
        "reboot",
        "partition-link",
        "partition-loss",
        "KILL",
        "TERM",
    ];
    KNOWN
        .iter()
        .find(|k| **k == s)
        .copied()
        .unwrap_or_else(|| Box::leak(s.to_string().into_boxed_str()))
}

/// Field access with the field's name in the error.
struct Fields<'a>(&'a BTreeMap<String, Value>);

impl Fields<'_> {
    fn get(&self, f: &str) -> Result<&Value, String> {
        self.0.get(f).ok_or_else(|| format!("no field {f}"))
    }
    fn int(&self, f: &str) -> Result<i64, String> {
        int(self.get(f)?).map_err(|e| format!("{f}: {e}"))
    }
    fn str(&self, f: &str) -> Result<String, String> {
        match self.get(f)? {
            Value::Str(s) => Ok(s.clone()),
            v => Err(format!("{f}: expected a string, found {v:?}")),
        }
    }
    fn opt(&self, f: &str) -> Result<Option<&Value>, String> {
        match self.0.get(f) {
            None | Some(Value::None) => Ok(None),
            Some(Value::Some(v)) => Ok(Some(v)),
            Some(v) => Err(format!("{f}: expected an option, found {v:?}")),
        }
    }
    fn list(&self, f: &str) -> Result<&[Value], String> {
        match self.0.get(f) {
            None => Ok(&[]),
            Some(Value::Seq(v)) => Ok(v),
            Some(v) => Err(format!("{f}: expected a list, found {v:?}")),
        }
    }
    fn bool(&self, f: &str) -> Result<Option<bool>, String> {
        match self.0.get(f) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(format!("{f}: expected a bool, found {v:?}")),
        }
    }
}

fn int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        v => Err(format!("expected an integer, found {v:?}")),
    }
}

fn fields(v: &Value) -> Result<Fields<'_>, String> {
    match v {
        Value::Struct(f) => Ok(Fields(f)),
        v => Err(format!("expected a struct, found {v:?}")),
    }
}

fn tuple(v: &Value, n: usize) -> Result<&[Value], String> {
    match v {
        Value::Seq(items) if items.len() == n => Ok(items),
        v => Err(format!("expected a {n}-tuple, found {v:?}")),
    }
}

fn ms(v: &Value) -> Result<Ms, String> {
    int(v).map(|i| i as Ms)
}

fn str_of(v: &Value) -> Result<&str, String> {
    match v {
        Value::Str(s) => Ok(s),
        v => Err(format!("expected a string, found {v:?}")),
    }
}

/// The [`History`] a `Debug` value describes. A manager run of a history
/// kept before `unacked` existed says so in its last lines, if at all.
fn to_history(v: &Value) -> Result<History, String> {
    let h = fields(v)?;
    let mut out = History {
        timeout_ms: h.int("timeout_ms")? as Ms,
        ping_ms: h.int("ping_ms")? as Ms,
        ..History::default()
    };
    for a in h.list("apps")? {
        let a = fields(a)?;
        out.apps.push(AppRun {
            service: a.str("service")?,
            pid: a.int("pid")? as u32,
            started: a.int("started")? as Ms,
            exit: match a.opt("exit")? {
                Some(t) => {
                    let t = tuple(t, 2)?;
                    Some((int(&t[0])? as i32, ms(&t[1])?))
                }
                None => None,
            },
        });
    }
    for d in h.list("dups")? {
        let d = fields(d)?;
        out.dups.push(Dup {
            service: d.str("service")?,
            pid: d.int("pid")? as u32,
            at: d.int("at")? as Ms,
            holder: d.str("holder")?,
        });
    }
    for m in h.list("managers")? {
        let m = fields(m)?;
        let tail = m.str("tail")?;
        out.managers.push(MgrRun {
            service: m.str("service")?,
            mgr_pid: m.int("mgr_pid")? as u32,
            started: m.int("started")? as Ms,
            ended: m.int("ended")? as Ms,
            code: m.opt("code")?.map(int).transpose()?.map(|c| c as i32),
            signalled: m.opt("signalled")?.map(str_of).transpose()?.map(name),
            pids: m
                .list("pids")?
                .iter()
                .map(|p| int(p).map(|p| p as u32))
                .collect::<Result<_, _>>()?,
            printed: m.opt("printed")?.map(int).transpose()?.map(|c| c as i32),
            refused: m.bool("refused")?.unwrap_or(false),
            unacked: m
                .bool("unacked")?
                .unwrap_or_else(|| tail.contains(super::check::NOT_ACKNOWLEDGED)),
            tail,
            output: m
                .list("output")?
                .iter()
                .map(|o| {
                    let t = tuple(o, 2)?;
                    Ok((ms(&t[0])?, str_of(&t[1])?.to_string()))
                })
                .collect::<Result<_, String>>()?,
        });
    }
    for o in h.list("outages")? {
        let t = tuple(o, 3)?;
        out.outages.push((ms(&t[0])?, ms(&t[1])?, name(str_of(&t[2])?)));
    }
    for d in h.list("disk_full")? {
        let t = tuple(d, 2)?;
        out.disk_full.push((ms(&t[0])?, ms(&t[1])?));
    }
    for k in h.list("shim_kills")? {
        let t = tuple(k, 2)?;
        out.shim_kills.push((int(&t[0])? as u32, ms(&t[1])?));
    }
    for r in h.list("reboots")? {
        out.reboots.push(ms(r)?);
    }
    Ok(out)
}

/// Reads `history.txt` in `dir` (as a failed campaign keeps it).
pub fn read_history(dir: &Path) -> Result<History, String> {
    let path = dir.join("history.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text)
        .and_then(|v| to_history(&v))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the runner writes reads back as it was.
    #[test]
    fn a_history_reads_back_from_its_debug_text() {
        let h = History {
            apps: vec![AppRun {
                service: "s01".into(),
                pid: 10,
                started: 1,
                exit: Some((7, 2)),
            }],
            dups: vec![Dup {
                service: "s01".into(),
                pid: 11,
                at: 3,
                holder: "10".into(),
            }],
            managers: vec![MgrRun {
                service: "s01".into(),
                mgr_pid: 9,
                started: 0,
                ended: 4,
                code: None,
                signalled: Some("KILL"),
                pids: vec![10, 0],
                printed: Some(7),
                refused: true,
                unacked: true,
                tail: " INFO \"quoted\" \\ | tab\tünï".into(),
                output: vec![(3, " INFO started x (pid 10)".into()), (4, "".into())],
            }],
            outages: vec![(1, 2, "partition-link"), (3, 4, "some-new-kind")],
            disk_full: vec![(5, 6)],
            shim_kills: vec![(10, 3)],
            reboots: vec![8],
            timeout_ms: 6000,
            ping_ms: 1500,
        };
        let back = to_history(&parse(&format!("{h:#?}")).unwrap()).unwrap();
        assert_eq!(format!("{back:#?}"), format!("{h:#?}"));
    }

    /// A history kept before a field existed: the field takes its default
    /// (`unacked` from the manager's last lines).
    #[test]
    fn an_older_history_without_new_fields_reads() {
        let text = r#"History {
            apps: [],
            dups: [],
            managers: [
                MgrRun {
                    service: "s00",
                    mgr_pid: 5,
                    started: 1,
                    ended: 2,
                    code: Some(
                        7,
                    ),
                    signalled: None,
                    pids: [],
                    printed: None,
                    refused: false,
                    tail: " WARN exit status not acknowledged by cmappserver: timed out | WARN PROGRAM EXIT CODE 7",
                },
            ],
            outages: [],
            disk_full: [],
            shim_kills: [],
            reboots: [],
            timeout_ms: 6000,
            ping_ms: 1500,
        }"#;
        let h = to_history(&parse(text).unwrap()).unwrap();
        assert!(h.managers[0].unacked);
        assert_eq!(h.managers[0].code, Some(7));
    }

    #[test]
    fn bad_text_is_an_error_naming_the_line() {
        let e = parse("History {\n  apps: [\n  }").unwrap_err();
        assert!(e.starts_with("line 3"), "{e}");
        assert!(parse("History { } trailing").is_err());
        assert!(parse("\"unterminated").is_err());
    }
}
