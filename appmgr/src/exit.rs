//! Every exit code cmappmgr uses, in one place (see the README's table).
//!
//! When the application ends, cmappmgr exits with the application's own code
//! (128 + N when a signal N killed it). The codes below are cmappmgr's own;
//! every one comes with a message on stderr and in syslog, never with the
//! `PROGRAM EXIT CODE` line, so the package log always tells them apart.

/// Could not reach cmappserver within `cmappserver_timeout` (at start or after
/// losing it). The original's code for the same condition.
pub const UNREACHABLE: i32 = 1;
/// Halted on request (SIGTERM): the application was left running (the
/// default), or stopped (`-stop_on_halt` / `stopOnHalt=yes`).
pub const HALTED: i32 = 0;
/// The command line is wrong.
pub const USAGE: i32 = 64;
/// The process this manager was attached to is gone: cmappserver has no
/// record of it (the guest rebooted). The cluster's restart starts it anew.
pub const PROCESS_GONE: i32 = 69;
// 70 (`common::message::LOST_EXIT_CODE`): the process's supervisor died
// without recording its exit status; it arrives as the process's own code.
/// cmappserver failed, on its side, to start the process's supervisor or to
/// reach it (the guest's log says why): an internal failure, not a refusal
/// and not the application's doing. EX_OSERR.
pub const SERVER_FAILED: i32 = 71;
/// cmappserver refused to start the process: its process limit is reached.
pub const REFUSED: i32 = 75;
/// Incompatible protocol versions, or the server broke the protocol.
pub const PROTOCOL: i32 = 76;
/// TLS authentication failed: a certificate was rejected, ours or the server's.
pub const AUTH: i32 = 77;
/// The configuration file or key material is unusable.
pub const CONFIG: i32 = 78;
/// The guest's command policy refused the request: this client may not run
/// (or attach to, or stop) this program with these arguments there, or may
/// not connect at all (`allowedClients`).
pub const FORBIDDEN: i32 = 79;

use common::message::ErrorKind;

/// The exit code for cmappserver's error reply of kind `kind`.
pub fn for_refusal(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::NotFound => PROCESS_GONE,
        ErrorKind::Limit => REFUSED,
        ErrorKind::Internal => SERVER_FAILED,
        ErrorKind::BadRequest => USAGE,
        ErrorKind::Version => PROTOCOL,
        ErrorKind::ShuttingDown => UNREACHABLE,
        ErrorKind::Forbidden => FORBIDDEN,
    }
}

/// `cmappmgr vm`'s exit codes: success, failure (the message says which), and
/// [`USAGE`] for a bad command line, as everywhere.
pub mod vm {
    /// Done (and a guest monitor stopped by a signal).
    pub const SUCCESS: i32 = 0;
    /// The operation failed: the domain is not running, could not be started,
    /// stopped or validated, is not defined, or maintenance mode is refused.
    pub const FAILURE: i32 = 1;
}

/// The one-shot verbs' exit codes (`cmappmgr start|monitor|stop|watch`):
/// the OCF resource agent API's, one to one, so that an agent returns them
/// unchanged.
pub mod ocf {
    /// start/stop done; monitor: running.
    pub const SUCCESS: i32 = 0;
    /// Anything else went wrong (the guest unreachable within the timeout,
    /// the application ended at once, a stop not confirmed in time).
    pub const ERR_GENERIC: i32 = 1;
    /// Bad command line or run string.
    pub const ERR_ARGS: i32 = 2;
    /// The program is not installed (or not executable) in the guest, or the
    /// guest's cmappserver speaks another protocol version.
    pub const ERR_INSTALLED: i32 = 5;
    /// The configuration file or key material is unusable, or a certificate
    /// was rejected.
    pub const ERR_CONFIGURED: i32 = 6;
    /// The guest's command policy refused the request.
    pub const ERR_PERM: i32 = 4;
    /// monitor: not running.
    pub const NOT_RUNNING: i32 = 7;
}
