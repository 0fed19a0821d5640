//! The protocol between cmappserver and a process's supervisor (the shim),
//! over the Unix socket in the process's state directory. Same framing as the
//! network protocol; versioned so that a new server can adopt the shims of an
//! older one after an upgrade. A frozen format: see `appserver/FORMATS.md`,
//! and `tests/tests/golden.rs`, which holds this code to frames recorded
//! from v1.

use common::message::{ExitStatus, Stream};

use serde::{Deserialize, Serialize};

/// Bumped when the shim protocol changes incompatibly.
pub const SHIM_PROTOCOL: u32 = 1;

/// Shim to server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimEvent {
    /// First frame on every connection.
    Hello {
        protocol: u32,
        pid: u32,
        started_at_ms: u64,
    },
    Output {
        stream: Stream,
        line: String,
    },
    /// Lines the shim had to drop because the server did not keep up.
    Dropped {
        lines: u64,
    },
    /// The process ended; the status is already on disk (`exit.json`).
    Exited {
        status: ExitStatus,
        exited_at_ms: u64,
    },
}

/// Server to shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimRequest {
    /// TERM the process group now, KILL it after `grace_ms`.
    Stop { grace_ms: u64 },
}
