//! The messages cmappmgr and cmappserver exchange, and their meaning.
//!
//! A connection opens with [`Hello`] (manager to server) answered by
//! [`Welcome`] or an [`ErrorReply`] of kind [`ErrorKind::Version`]. After that
//! the manager sends [`Request`]s and the server sends [`Event`]s: replies to
//! requests, and pushes (`Output`, `Exited`, `ShuttingDown`) for the
//! processes the connection is attached to. Several managers may be attached
//! to one process; each gets its output and its exit.
//!
//! Compatibility: `Hello` and `Welcome` are plain structs that ignore unknown
//! fields, so any two versions can at least tell each other what they speak.
//! New optional fields carry `#[serde(default)]`; a new request or event kind
//! needs a new [`PROTOCOL_VERSION`], unless only a request that an older peer
//! never sends gets it as its answer: [`Request::Logs`] and [`Event::LogLines`]
//! are such a pair (an older server answers `logs` with a `bad_request`
//! error, which the manager reports as "too old").

use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this build speaks. Peers must speak the same one.
pub const PROTOCOL_VERSION: u32 = 1;

/// First frame from the manager.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    /// Free text for logs, e.g. `cmappmgr 0.1.0`.
    #[serde(default)]
    pub software: String,
    /// Who this manager is, the same on each of its reconnections (for
    /// example `cmappmgr on host1 (pid 4242, 5f0c9e21)`): the server waits for every
    /// manager attached at an exit to acknowledge it, and tells a manager's
    /// new connection from another manager. Free text for logs otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
}

impl Hello {
    pub fn current(program: &str) -> Self {
        Hello {
            protocol: PROTOCOL_VERSION,
            software: format!("{program} {}", crate::SOFTWARE_VERSION),
            manager: Some(manager_name(program)),
        }
    }
}

/// This process's name as a manager: `cmappmgr on host1 (pid 4242, 5f0c9e21)`.
/// The same on every connection of this process, and different for any
/// other process, even one with the same host name and pid (containers):
/// the last part is drawn once per process from the standard library's
/// randomly seeded hasher.
fn manager_name(program: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    static TAG: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let tag = *TAG.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() as u32
    });
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{program} on {} (pid {}, {tag:08x})", host.trim(), std::process::id())
}

/// The server's answer to a compatible [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Welcome {
    pub protocol: u32,
    #[serde(default)]
    pub software: String,
    /// Processes currently monitored (running or with an uncollected exit).
    #[serde(default)]
    pub monitored: usize,
    #[serde(default)]
    pub max_processes: usize,
}

/// The server's first message, its answer to a [`Hello`]: a [`Welcome`]
/// (which carries no `type`), or an error event (`{"type":"error",...}`:
/// another protocol version, the session limit). Anything else is a
/// protocol violation, refused by the parser.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum HelloReply {
    Refused(Refusal),
    Welcome(Welcome),
}

/// The one event a server may send instead of a [`Welcome`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Refusal {
    Error(ErrorReply),
}

/// An opaque, server-assigned identifier of one launched process instance.
/// It changes when the same service is launched again, so a manager can tell
/// "my process" from "a new process with the same service string".
pub type InstanceId = String;

/// Requests from the manager.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Launch(Launch),
    Stop(Stop),
    Ack(Ack),
    List,
    Ping(Ping),
    /// Read a service's output log in the guest; answered by `log_lines`.
    Logs(Logs),
}

/// The longest instance id a request may carry, in bytes (ours are about 30).
pub const MAX_ID_LEN: usize = 128;

/// Why a request is refused before it is acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the instance id is {len} bytes, over the limit of {MAX_ID_LEN} bytes")]
    IdTooLong { len: usize },
    /// A `logs` request's service identity.
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
}

/// A status received from a peer that no process can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("exit code {0} is out of range (0 to 255)")]
    Code(i32),
    #[error("signal number {0} is out of range (1 to {MAX_SIGNAL})")]
    Signal(i32),
}

impl Request {
    /// Checks the bounds of what the request carries that the run-string
    /// parser does not check (see [`crate::service`] for those), and those of
    /// a `logs` request's service identity, which nothing launches.
    pub fn check(&self) -> Result<(), RequestError> {
        let id = match self {
            Request::Launch(l) => l.attach_only.as_deref(),
            Request::Stop(s) => Some(s.id.as_str()),
            Request::Ack(a) => Some(a.id.as_str()),
            Request::Logs(l) => {
                crate::service::ServiceSpec::check(&l.run, l.name.as_deref())?;
                None
            }
            Request::List | Request::Ping(_) => None,
        };
        match id {
            Some(id) if id.len() > MAX_ID_LEN => Err(RequestError::IdTooLong { len: id.len() }),
            _ => Ok(()),
        }
    }
}

/// Launch a service, or attach to it if it runs already or its exit status
/// has not been collected yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Launch {
    /// The run string as the manager received it: several arguments are the
    /// argv as is; one argument containing white space is split like a shell
    /// splits words (see [`crate::service`]).
    pub run: Vec<String>,
    /// An explicit service name; when set it, not the run string, identifies the process.
    #[serde(default)]
    pub name: Option<String>,
    /// Re-attach only: never start a new process. Set when a manager reconnects
    /// to a process it launched earlier; the server answers `NotFound` when
    /// that instance is gone.
    #[serde(default)]
    pub attach_only: Option<InstanceId>,
    /// Forward every output line, within this rate limit. Without it only
    /// the last lines come, with the exit status (in [`Exited::tail`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
}

/// The rate limit of forwarded output.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Forward {
    pub lines_per_sec: u32,
    pub bytes_per_sec: u64,
}

/// Read the guest's output log of a service (identified as in [`Launch`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Logs {
    pub run: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The last this many lines first (at most [`MAX_LOG_TAIL`]).
    pub tail: u32,
    /// Then keep sending lines as they are written, until the connection closes.
    #[serde(default)]
    pub follow: bool,
}

/// The most lines `logs --tail` returns.
pub const MAX_LOG_TAIL: u32 = 10_000;

/// Stop a process: TERM to its process group, KILL after the grace period.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stop {
    pub id: InstanceId,
    /// Overrides the server's configured grace period.
    #[serde(default)]
    pub grace_ms: Option<u64>,
}

/// The manager has received the exit status of `id`; the server may forget it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ack {
    pub id: InstanceId,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ping {
    pub seq: u64,
}

/// Everything the server sends after the welcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Reply to `Launch`: the connection is now attached to this process.
    Started(Started),
    /// A line the process wrote.
    Output(Output),
    /// The process ended. The manager answers with `Ack`.
    Exited(Exited),
    /// Reply to `Ack`.
    Acked(Ack),
    /// Reply to `Stop`: the signal has been sent; `Exited` follows.
    Stopping(Ack),
    Pong(Ping),
    /// Reply to `List`.
    Processes(ProcessList),
    /// The server is going away on purpose (maintenance or upgrade).
    ShuttingDown(ShuttingDown),
    /// Sent by earlier servers when another manager attached to this process
    /// and took it over. Current servers never send it: several managers may
    /// watch one process. Kept so that a manager still understands an old server.
    Superseded(Ack),
    Error(ErrorReply),
    /// Lines of a guest output log, in answer to `logs`.
    LogLines(LogLines),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLines {
    /// Where they come from (the file in the guest).
    pub source: String,
    pub lines: Vec<String>,
    /// The tail is complete (without `follow`, nothing more comes).
    pub end: bool,
}

impl Event {
    /// The event's name on the wire (`started`, `pong`, ...), for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Started(_) => "started",
            Event::Output(_) => "output",
            Event::Exited(_) => "exited",
            Event::Acked(_) => "acked",
            Event::Stopping(_) => "stopping",
            Event::Pong(_) => "pong",
            Event::Processes(_) => "processes",
            Event::ShuttingDown(_) => "shutting_down",
            Event::Superseded(_) => "superseded",
            Event::Error(_) => "error",
            Event::LogLines(_) => "log_lines",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    pub id: InstanceId,
    /// The identity the server filed the process under (for logs).
    pub service: String,
    pub pid: u32,
    /// Start time, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// True when this request attached to an existing process instead of starting one.
    pub attached: bool,
    /// Set when the process has already exited (an uncollected status); `Exited` follows at once.
    #[serde(default)]
    pub exited: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Output {
    pub id: InstanceId,
    pub stream: Stream,
    /// One line without its newline, cut at [`MAX_LINE_LEN`] bytes (lossy UTF-8).
    pub line: String,
}

/// The longest output line forwarded; longer lines are cut into pieces.
pub const MAX_LINE_LEN: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exited {
    pub id: InstanceId,
    pub pid: u32,
    pub status: ExitStatus,
    /// When it ended, milliseconds since the Unix epoch.
    #[serde(default)]
    pub exited_at_ms: u64,
    /// Its last lines of output (bounded: `outputTail` lines, 64 KiB).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tail: Vec<TailLine>,
}

/// One line of an application's last output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TailLine {
    pub stream: Stream,
    pub line: String,
}

/// The most bytes of tail lines an exit carries.
pub const MAX_TAIL_BYTES: usize = 64 << 10;

/// How a process ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It could not be started (code 127: not found, 126: not executable).
    SpawnFailed { code: i32, error: String },
    /// Its supervisor vanished without recording the status (for example it
    /// was killed with SIGKILL). The real status is unknown.
    Lost { error: String },
}

/// The highest signal number (Linux's `SIGRTMAX`).
pub const MAX_SIGNAL: i32 = 64;

/// The exit code a manager reports for a status that carries none.
pub const LOST_EXIT_CODE: i32 = 70;

impl ExitStatus {
    /// The exit code a shell would report: the code, or 128 + signal.
    /// (Saturating: a status from a broken peer never overflows; see [`check`](Self::check).)
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitStatus::Code(c) => *c,
            ExitStatus::Signal(s) => s.saturating_add(128),
            ExitStatus::SpawnFailed { code, .. } => *code,
            ExitStatus::Lost { .. } => LOST_EXIT_CODE,
        }
    }

    /// Whether a status received from a peer is one a process can have: an
    /// exit code in 0..=255, a signal in 1..=[`MAX_SIGNAL`].
    pub fn check(&self) -> Result<(), StatusError> {
        match self {
            ExitStatus::Code(c) | ExitStatus::SpawnFailed { code: c, .. } if !(0..=255).contains(c) => {
                Err(StatusError::Code(*c))
            }
            ExitStatus::Signal(s) if !(1..=MAX_SIGNAL).contains(s) => Err(StatusError::Signal(*s)),
            _ => Ok(()),
        }
    }

    pub fn from_std(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => ExitStatus::Code(c),
            (None, Some(s)) => ExitStatus::Signal(s),
            (None, None) => ExitStatus::Lost {
                error: format!("unrecognised wait status {status:?}"),
            },
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "killed by signal {s} ({name})")
            }
            ExitStatus::SpawnFailed { code, error } => {
                write!(f, "could not be started (exit code {code}): {error}")
            }
            ExitStatus::Lost { error } => write!(f, "exit status lost: {error}"),
        }
    }
}

/// Reply to `List`, in pages: a listing larger than [`LIST_PAGE_LEN`] comes
/// as several `Processes` events, every one but the last with `more` set, so
/// that no reply can exceed the frame cap however many processes there are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
    /// More pages follow.
    #[serde(default)]
    pub more: bool,
}

/// The size a page of a listing is cut at (its JSON, in bytes). One entry is
/// bounded well below the frame cap by the limits on names and run strings.
pub const LIST_PAGE_LEN: usize = 256 * 1024;

impl ProcessList {
    /// Cuts a listing into pages of about [`LIST_PAGE_LEN`] bytes each (at least one page).
    pub fn pages(processes: Vec<ProcessInfo>) -> Vec<ProcessList> {
        let mut pages = vec![ProcessList {
            processes: Vec::new(),
            more: false,
        }];
        let mut size = 0;
        for p in processes {
            let len = serde_json::to_vec(&p).map(|v| v.len()).unwrap_or(0);
            let page = pages.last_mut().expect("one page at least");
            if !page.processes.is_empty() && size + len > LIST_PAGE_LEN {
                page.more = true;
                pages.push(ProcessList {
                    processes: Vec::new(),
                    more: false,
                });
                size = 0;
            }
            size += len;
            pages.last_mut().expect("one page at least").processes.push(p);
        }
        pages
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    pub id: InstanceId,
    /// The identity the process is filed under (see `ServiceSpec::key`);
    /// empty from a server that predates it.
    #[serde(default)]
    pub key: String,
    pub service: String,
    #[serde(default)]
    pub name: Option<String>,
    pub pid: u32,
    pub started_at_ms: u64,
    /// `None` while running.
    pub exit: Option<ExitStatus>,
    /// True when a manager connection is attached.
    pub attached: bool,
    /// How many managers are attached (several may watch one process).
    #[serde(default)]
    pub managers: usize,
    /// A manager has acknowledged the exit; the record stays only for the
    /// other managers that owe their acknowledgement.
    #[serde(default)]
    pub acked: bool,
    /// Built-in probe (`"net-mon"`, `"disk-mon"`) or `None` for an ordinary
    /// command (or a probe this build does not know).
    #[serde(default, deserialize_with = "crate::probe::lenient")]
    pub probe: Option<crate::probe::Probe>,
    /// Where its output goes (`None` from a server that does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Output lines not written to the guest log (the disk did not keep up).
    #[serde(default)]
    pub log_dropped: u64,
    /// Output lines not forwarded (rate limit, or the manager did not keep up).
    #[serde(default)]
    pub forward_dropped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShuttingDown {
    pub reason: String,
    /// True when monitored processes keep running and the server expects to
    /// come back (a stop for maintenance or an upgrade): managers should wait
    /// for it within their timeout instead of failing.
    pub processes_keep_running: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Incompatible protocol versions.
    Version,
    /// The process limit is reached.
    Limit,
    /// No such process (for `attach_only`, `Stop`, `Ack`).
    NotFound,
    /// A request the server could not make sense of.
    BadRequest,
    /// The server is shutting down and takes no new work.
    ShuttingDown,
    /// Anything else on the server's side.
    Internal,
    /// The guest's command policy does not allow this client this request
    /// (or this client at all); the message names the rules and the reason.
    Forbidden,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_hello_reply_is_a_welcome_or_a_refusal_and_nothing_else() {
        let w: HelloReply = serde_json::from_str(r#"{"protocol":1,"software":"0.1.0"}"#).unwrap();
        assert!(matches!(w, HelloReply::Welcome(Welcome { protocol: 1, .. })));
        let r: HelloReply = serde_json::from_str(r#"{"type":"error","kind":"version","message":"speak 2"}"#).unwrap();
        assert!(matches!(
            r,
            HelloReply::Refused(Refusal::Error(ErrorReply {
                kind: ErrorKind::Version,
                ..
            }))
        ));
        // The same bytes a server writes for an error event.
        let event = serde_json::to_string(&Event::Error(ErrorReply {
            kind: ErrorKind::Limit,
            message: "full".into(),
        }))
        .unwrap();
        assert!(matches!(serde_json::from_str(&event).unwrap(), HelloReply::Refused(_)));
        for bad in [r#"{"type":"pong","seq":1}"#, r#"{"software":"x"}"#, "[]", "7"] {
            assert!(serde_json::from_str::<HelloReply>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wire_format_is_tagged_json() {
        let r = Request::Launch(Launch {
            run: vec!["/bin/true".into()],
            name: None,
            attach_only: None,
            forward: None,
        });
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"type":"launch","run":["/bin/true"],"name":null,"attach_only":null}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"type":"launch","run":["x"]}"#).unwrap(),
            Request::Launch(Launch {
                run: vec!["x".into()],
                name: None,
                attach_only: None,
                forward: None,
            })
        );
        let e = Event::Exited(Exited {
            id: "a".into(),
            pid: 3,
            status: ExitStatus::Signal(9),
            exited_at_ms: 0,
            tail: vec![],
        });
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), e);
        // Every variant must serialise (internally tagged enums cannot hold sequences).
        let l = Event::Processes(ProcessList {
            processes: vec![],
            more: false,
        });
        assert_eq!(
            serde_json::from_str::<Event>(&serde_json::to_string(&l).unwrap()).unwrap(),
            l
        );
    }

    fn id() -> impl Strategy<Value = String> {
        "[a-z0-9-]{0,12}"
    }

    fn text() -> impl Strategy<Value = String> {
        any::<String>()
    }

    fn status() -> impl Strategy<Value = ExitStatus> {
        prop_oneof![
            any::<i32>().prop_map(ExitStatus::Code),
            any::<i32>().prop_map(ExitStatus::Signal),
            (any::<i32>(), text()).prop_map(|(code, error)| ExitStatus::SpawnFailed { code, error }),
            text().prop_map(|error| ExitStatus::Lost { error }),
        ]
    }

    fn request() -> impl Strategy<Value = Request> {
        let forward =
            proptest::option::of(
                (any::<u32>(), any::<u64>()).prop_map(|(lines_per_sec, bytes_per_sec)| Forward {
                    lines_per_sec,
                    bytes_per_sec,
                }),
            );
        prop_oneof![
            (
                proptest::collection::vec(text(), 0..4),
                proptest::option::of(text()),
                proptest::option::of(id()),
                forward,
            )
                .prop_map(|(run, name, attach_only, forward)| Request::Launch(Launch {
                    run,
                    name,
                    attach_only,
                    forward,
                })),
            (id(), proptest::option::of(any::<u64>())).prop_map(|(id, grace_ms)| Request::Stop(Stop { id, grace_ms })),
            id().prop_map(|id| Request::Ack(Ack { id })),
            Just(Request::List),
            any::<u64>().prop_map(|seq| Request::Ping(Ping { seq })),
            (
                proptest::collection::vec(text(), 0..3),
                proptest::option::of(text()),
                any::<u32>(),
                any::<bool>()
            )
                .prop_map(|(run, name, tail, follow)| Request::Logs(Logs {
                    run,
                    name,
                    tail,
                    follow,
                })),
        ]
    }

    fn process_info() -> impl Strategy<Value = ProcessInfo> {
        let probe = prop_oneof![Just(crate::probe::Probe::Net), Just(crate::probe::Probe::Disk)];
        (
            (
                id(),
                text(),
                text(),
                proptest::option::of(text()),
                any::<u32>(),
                any::<u64>(),
            ),
            (
                proptest::option::of(status()),
                any::<bool>(),
                any::<usize>(),
                any::<bool>(),
                proptest::option::of(probe),
            ),
            (proptest::option::of(text()), any::<u64>(), any::<u64>()),
        )
            .prop_map(
                |(
                    (id, key, service, name, pid, started_at_ms),
                    (exit, attached, managers, acked, probe),
                    (output, log_dropped, forward_dropped),
                )| ProcessInfo {
                    id,
                    key,
                    service,
                    name,
                    pid,
                    started_at_ms,
                    exit,
                    attached,
                    managers,
                    acked,
                    probe,
                    output,
                    log_dropped,
                    forward_dropped,
                },
            )
    }

    fn event() -> impl Strategy<Value = Event> {
        let kind = prop_oneof![
            Just(ErrorKind::Version),
            Just(ErrorKind::Limit),
            Just(ErrorKind::NotFound),
            Just(ErrorKind::BadRequest),
            Just(ErrorKind::ShuttingDown),
            Just(ErrorKind::Internal),
        ];
        prop_oneof![
            (id(), text(), any::<u32>(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
                |(id, service, pid, started_at_ms, attached, exited)| Event::Started(Started {
                    id,
                    service,
                    pid,
                    started_at_ms,
                    attached,
                    exited
                })
            ),
            (id(), any::<bool>(), text()).prop_map(|(id, err, line)| Event::Output(Output {
                id,
                stream: if err { Stream::Stderr } else { Stream::Stdout },
                line
            })),
            (
                id(),
                any::<u32>(),
                status(),
                any::<u64>(),
                proptest::collection::vec((any::<bool>(), text()), 0..3)
            )
                .prop_map(|(id, pid, status, exited_at_ms, tail)| Event::Exited(Exited {
                    id,
                    pid,
                    status,
                    exited_at_ms,
                    tail: tail
                        .into_iter()
                        .map(|(err, line)| TailLine {
                            stream: if err { Stream::Stderr } else { Stream::Stdout },
                            line,
                        })
                        .collect(),
                })),
            (text(), proptest::collection::vec(text(), 0..3), any::<bool>())
                .prop_map(|(source, lines, end)| Event::LogLines(LogLines { source, lines, end })),
            id().prop_map(|id| Event::Acked(Ack { id })),
            id().prop_map(|id| Event::Stopping(Ack { id })),
            any::<u64>().prop_map(|seq| Event::Pong(Ping { seq })),
            (proptest::collection::vec(process_info(), 0..3), any::<bool>())
                .prop_map(|(processes, more)| Event::Processes(ProcessList { processes, more })),
            (text(), any::<bool>()).prop_map(|(reason, processes_keep_running)| Event::ShuttingDown(ShuttingDown {
                reason,
                processes_keep_running
            })),
            id().prop_map(|id| Event::Superseded(Ack { id })),
            (kind, text()).prop_map(|(kind, message)| Event::Error(ErrorReply { kind, message })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn every_request_round_trips(r in request()) {
            let json = serde_json::to_string(&r).unwrap();
            prop_assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
        }

        /// Every event round-trips, and [`Event::kind`] is its name on the wire.
        #[test]
        fn every_event_round_trips_under_its_kind(e in event()) {
            let json = serde_json::to_value(&e).unwrap();
            prop_assert_eq!(json["type"].as_str(), Some(e.kind()));
            prop_assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
        }

        #[test]
        fn hello_and_welcome_round_trip_and_ignore_unknown_fields(
            protocol in any::<u32>(), software in text(), manager in proptest::option::of(text()),
            monitored in any::<usize>(), max_processes in any::<usize>(),
        ) {
            let hello = Hello { protocol, software: software.clone(), manager };
            let mut json = serde_json::to_value(&hello).unwrap();
            json["from_the_future"] = serde_json::json!({"x": [1, 2]});
            prop_assert_eq!(serde_json::from_value::<Hello>(json).unwrap(), hello);
            let welcome = Welcome { protocol, software, monitored, max_processes };
            let mut json = serde_json::to_value(&welcome).unwrap();
            json["from_the_future"] = serde_json::json!(null);
            prop_assert_eq!(serde_json::from_value::<Welcome>(json).unwrap(), welcome);
        }

        /// A request or event of a kind this version does not know is refused
        /// (a new kind needs a new protocol version), whatever it carries.
        #[test]
        fn unknown_kinds_are_refused(kind in "[a-z_]{1,12}", e in event()) {
            let known = ["launch", "stop", "ack", "list", "ping", "started", "output", "exited", "acked",
                "stopping", "pong", "processes", "shutting_down", "superseded", "error", "logs", "log_lines"];
            prop_assume!(!known.contains(&kind.as_str()));
            let mut json = serde_json::to_value(&e).unwrap();
            json["type"] = serde_json::Value::String(kind);
            prop_assert!(serde_json::from_value::<Event>(json.clone()).is_err());
            prop_assert!(serde_json::from_value::<Request>(json).is_err());
        }
    }

    #[test]
    fn frames_without_a_kind_or_a_required_field_are_refused() {
        for bad in [
            r#"{"run":["x"]}"#,
            r#"{"type":"stop"}"#,
            r#"{"type":"ack","id":7}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"LIST"}"#,
            r#"[]"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"type":"list"}"#).unwrap(),
            Request::List
        );
        assert!(serde_json::from_str::<Hello>(r#"{"software":"x"}"#).is_err());
        assert!(serde_json::from_str::<Event>(r#"{"type":"exited","id":"a","pid":1,"status":{"code":1}}"#).is_ok());
        assert!(serde_json::from_str::<Event>(r#"{"type":"exited","id":"a","pid":1,"status":{"crashed":1}}"#).is_err());
    }

    #[test]
    fn instance_ids_are_bounded_in_every_request_that_carries_one() {
        let ok = "i".repeat(MAX_ID_LEN);
        let long = "i".repeat(MAX_ID_LEN + 1);
        let carrying = |id: &str| {
            [
                Request::Launch(Launch {
                    run: vec!["x".into()],
                    name: None,
                    attach_only: Some(id.into()),
                    forward: None,
                }),
                Request::Stop(Stop {
                    id: id.into(),
                    grace_ms: None,
                }),
                Request::Ack(Ack { id: id.into() }),
            ]
        };
        for r in carrying(&ok) {
            assert_eq!(r.check(), Ok(()), "{r:?}");
        }
        for r in carrying(&long) {
            let e = r.check().unwrap_err();
            assert_eq!(e, RequestError::IdTooLong { len: 129 }, "{r:?}");
            assert_eq!(
                e.to_string(),
                "the instance id is 129 bytes, over the limit of 128 bytes"
            );
        }
        assert_eq!(Request::List.check(), Ok(()));
        assert_eq!(Request::Ping(Ping { seq: 1 }).check(), Ok(()));
    }

    #[test]
    fn statuses_read_and_print_as_a_shell_would_say() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            ExitStatus::from_std(std::process::ExitStatus::from_raw(7 << 8)),
            ExitStatus::Code(7)
        );
        assert_eq!(
            ExitStatus::from_std(std::process::ExitStatus::from_raw(9)),
            ExitStatus::Signal(9)
        );
        assert!(matches!(
            ExitStatus::from_std(std::process::ExitStatus::from_raw(0x137f)),
            ExitStatus::Lost { .. }
        ));
        assert_eq!(ExitStatus::Lost { error: "x".into() }.exit_code(), LOST_EXIT_CODE);
        assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
        assert_eq!(
            ExitStatus::Signal(99).to_string(),
            "killed by signal 99 (unknown signal)"
        );
        assert_eq!(
            ExitStatus::SpawnFailed {
                code: 127,
                error: "not found".into()
            }
            .to_string(),
            "could not be started (exit code 127): not found"
        );
        assert_eq!(
            ExitStatus::Lost { error: "gone".into() }.to_string(),
            "exit status lost: gone"
        );
        assert!(ExitStatus::SpawnFailed {
            code: 256,
            error: String::new()
        }
        .check()
        .is_err());
        let e = ErrorReply {
            kind: ErrorKind::Limit,
            message: "too many".into(),
        };
        assert_eq!(e.to_string(), "too many");
    }

    #[test]
    fn a_long_listing_comes_in_pages_under_the_cap() {
        let info = |i: usize| ProcessInfo {
            id: format!("id{i:05}"),
            key: String::new(),
            service: "s".repeat(10_000),
            name: None,
            pid: 1,
            started_at_ms: 0,
            exit: None,
            attached: false,
            managers: 0,
            acked: false,
            probe: None,
            output: None,
            log_dropped: 0,
            forward_dropped: 0,
        };
        let one_len = serde_json::to_vec(&info(10)).unwrap().len();
        let n = 3 * LIST_PAGE_LEN / one_len;
        let pages = ProcessList::pages((10..10 + n).map(info).collect());
        assert!(pages.len() >= 3, "{} pages", pages.len());
        let mut all = Vec::new();
        for (i, page) in pages.iter().enumerate() {
            assert_eq!(page.more, i + 1 < pages.len());
            let len: usize = page
                .processes
                .iter()
                .map(|p| serde_json::to_vec(p).unwrap().len())
                .sum();
            assert!(len <= LIST_PAGE_LEN, "page {i}: {len} bytes");
            assert!(
                len + one_len > LIST_PAGE_LEN || i + 1 == pages.len(),
                "page {i} is full"
            );
            all.extend(page.processes.iter().map(|p| p.id.clone()));
        }
        assert_eq!(all, (10..10 + n).map(|i| format!("id{i:05}")).collect::<Vec<_>>());
        let empty = ProcessList::pages(Vec::new());
        assert_eq!(empty.len(), 1);
        assert!(!empty[0].more && empty[0].processes.is_empty());
    }

    #[test]
    fn now_is_after_the_epoch() {
        assert!(now_ms() > 1_600_000_000_000);
    }

    #[test]
    fn a_manager_keeps_its_name_across_connections() {
        let (a, b) = (Hello::current("cmappmgr"), Hello::current("cmappmgr"));
        assert_eq!(a.manager, b.manager);
        let name = a.manager.unwrap();
        assert!(
            name.starts_with("cmappmgr on ") && name.contains(&format!("(pid {}, ", std::process::id())),
            "{name}"
        );
        // An older manager's hello, without the field, still parses.
        let h: Hello = serde_json::from_str(r#"{"protocol":1,"software":"x"}"#).unwrap();
        assert_eq!(h.manager, None);
    }

    #[test]
    fn hello_from_a_future_version_still_parses() {
        let h: Hello = serde_json::from_str(r#"{"protocol":9,"software":"x","new_field":[1]}"#).unwrap();
        assert_eq!(h.protocol, 9);
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(ExitStatus::Code(7).exit_code(), 7);
        assert_eq!(ExitStatus::Signal(9).exit_code(), 137);
        assert_eq!(
            ExitStatus::SpawnFailed {
                code: 127,
                error: "x".into()
            }
            .exit_code(),
            127
        );
        assert_eq!(ExitStatus::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(ExitStatus::Signal(i32::MAX).exit_code(), i32::MAX, "saturates");
    }

    #[test]
    fn statuses_out_of_range_are_refused() {
        for ok in [
            ExitStatus::Code(0),
            ExitStatus::Code(255),
            ExitStatus::Signal(1),
            ExitStatus::Signal(64),
        ] {
            assert_eq!(ok.check(), Ok(()), "{ok:?}");
        }
        for bad in [
            ExitStatus::Code(256),
            ExitStatus::Code(-1),
            ExitStatus::Signal(0),
            ExitStatus::Signal(65),
            ExitStatus::Signal(i32::MIN),
        ] {
            assert!(bad.check().unwrap_err().to_string().contains("out of range"), "{bad:?}");
        }
    }
}
