//! The protocol between cmappserver and a process's supervisor (the shim),
//! over the Unix socket in the process's state directory. Same framing as the
//! network protocol; versioned so that a new server can adopt the shims of an
//! older one after an upgrade. A frozen format: see `appserver/FORMATS.md`,
//! and `tests/tests/golden.rs`, which holds this code to frames recorded
//! from v1.
//!
//! Version 2: a new shim says hello *before* it starts the process
//! (`waiting`), and starts it only on the server's `Start`, so that a shim
//! and a server that do not understand each other never leave an
//! application running unmonitored. The shim answers `Start` with `Started`
//! (or `Exited` when the program could not be started). A shim whose
//! process runs already (the server restarted) says hello with the pid and
//! protocol 1, because everything after that hello is exactly version 1's:
//! so a server of either version adopts it (an upgrade, or a rollback), and a
//! server adopts shims of versions 1 and 2.

use common::message::{ExitStatus, Stream, TailLine};

use serde::{Deserialize, Serialize};

/// Bumped when the shim protocol changes incompatibly.
pub const SHIM_PROTOCOL: u32 = 2;

/// The oldest shims a server adopts (their processes run already), and the
/// version a running shim announces: adoption is version 1's exchange.
pub const OLDEST_ADOPTED: u32 = 1;

/// Shim to server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimEvent {
    /// First frame on every connection.
    Hello {
        protocol: u32,
        pid: u32,
        started_at_ms: u64,
        /// True while the shim waits for `Start` (version 2 on); the pid is then 0.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        waiting: bool,
    },
    /// The process runs (the answer to `Start`).
    Started {
        pid: u32,
        started_at_ms: u64,
    },
    Output {
        stream: Stream,
        line: String,
    },
    /// Lines the shim had to drop: `lines` in all, of which `unconnected`
    /// while no server was connected (the rest because the server took them
    /// slower than the process wrote them).
    Dropped {
        lines: u64,
        /// Absent from a shim of an older build, which does not say why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unconnected: Option<u64>,
        /// Lines not written to the guest log so far (a total; added after v1).
        #[serde(default, skip_serializing_if = "is_zero")]
        log: u64,
    },
    /// The process ended; the status is already on disk (`exit.json`).
    Exited {
        status: ExitStatus,
        exited_at_ms: u64,
        /// The last lines of output (added after v1; bounded, see `output`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tail: Vec<TailLine>,
    },
}

/// Server to shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimRequest {
    /// Start the process: the hello was accepted (version 2 on).
    Start,
    /// TERM the process group now, KILL it after `grace_ms`.
    Stop { grace_ms: u64 },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The v1 fixtures (`tests/fixtures/golden/v1`, see `appserver/FORMATS.md`)
/// read with the live types: a quick guard for `cargo test -p appserver`;
/// `tests/tests/golden.rs` runs the real binaries over them.
#[cfg(test)]
mod golden {
    use super::super::state::{self, ExitRecord, Meta, PidRecord};
    use super::*;
    use std::path::PathBuf;

    fn v1() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden/v1")
    }

    #[test]
    fn every_recorded_v1_shim_frame_decodes() {
        let text = std::fs::read_to_string(v1().join("shim-conversation.txt")).unwrap();
        let (mut events, mut requests) = (0, 0);
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (who, body) = line.split_once(' ').unwrap();
            match who {
                "shim" => {
                    let ev: ShimEvent = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
                    if let ShimEvent::Hello { protocol, .. } = ev {
                        assert!(
                            (OLDEST_ADOPTED..=SHIM_PROTOCOL).contains(&protocol),
                            "a v1 hello must be adopted as is"
                        );
                    }
                    events += 1;
                }
                "server" => {
                    let _: ShimRequest = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
                    requests += 1;
                }
                other => panic!("unknown sender {other}"),
            }
        }
        assert!(events >= 3 && requests >= 1, "{events} events, {requests} requests");
    }

    #[test]
    fn every_recorded_v1_record_decodes() {
        let mut exits = 0;
        for e in std::fs::read_dir(v1().join("state/procs")).unwrap() {
            let dir = e.unwrap().path();
            let meta: Meta = state::read_json(&dir, state::META).unwrap().unwrap();
            assert_eq!(Some(meta.id.as_str()), dir.file_name().and_then(|n| n.to_str()));
            let _: PidRecord = state::read_json(&dir, state::PID).unwrap().unwrap();
            if let Some(_exit) = state::read_json::<ExitRecord>(&dir, state::EXIT).unwrap() {
                exits += 1;
            }
        }
        assert!(exits >= 2);
    }
}

/// Fuzz entry point (the `shim_protocol` target in `fuzz/`, and the corpus
/// replay below): a frame body from either side is parsed or refused, never
/// panics, and what parses serialises back to itself.
#[cfg_attr(not(test), allow(dead_code))]
pub fn fuzz_entry(data: &[u8]) {
    fn round_trip<T>(data: &[u8]) -> Option<T>
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let value: T = serde_json::from_slice(data).ok()?;
        let again: T = serde_json::from_slice(&serde_json::to_vec(&value).expect("serialises")).expect("parses");
        assert_eq!(value, again);
        Some(value)
    }
    if let Some(ShimEvent::Exited { status, .. }) = round_trip::<ShimEvent>(data) {
        let _ = status.check();
        let _ = status.exit_code();
    }
    round_trip::<ShimRequest>(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count of lines the guest log lost is on the wire only when
    /// there is one, so that a v1 server reads the frame as it always did.
    #[test]
    fn a_log_loss_is_sent_only_when_there_is_one() {
        let dropped = |log| ShimEvent::Dropped {
            lines: 3,
            unconnected: None,
            log,
        };
        let json = serde_json::to_string(&dropped(0)).unwrap();
        assert_eq!(json, r#"{"type":"dropped","lines":3}"#);
        let json = serde_json::to_string(&dropped(5)).unwrap();
        assert_eq!(json, r#"{"type":"dropped","lines":3,"log":5}"#);
        assert_eq!(serde_json::from_str::<ShimEvent>(&json).unwrap(), dropped(5));
    }

    /// Replays the committed fuzz corpus (`fuzz/corpus/shim_protocol`).
    #[test]
    fn the_fuzz_corpus_replays_without_a_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/shim_protocol");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            super::fuzz_entry(&std::fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "{} is empty", dir.display());
    }
}
