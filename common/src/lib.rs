//! Everything cmappmgr (host) and cmappserver (guest) must agree on.
//!
//! | module         | what it holds                                                        |
//! |----------------|----------------------------------------------------------------------|
//! | [`address`]    | listen addresses (TCP, vsock) and `-node` values (TCP, vsock, vsock-unix) |
//! | [`codec`]      | the frame: a 4-byte length header and a JSON body, capped at 1 MiB   |
//! | [`fuzzing`]    | entry points for the fuzz targets and their corpus replay            |
//! | [`connection`] | typed message reader and writer over any byte stream               |
//! | [`message`]    | the messages: hello/welcome, requests, events, exit statuses        |
//! | [`probe`]      | the built-in probes: names, subcommands, options, host log file      |
//! | [`args`]       | single-dash long options and yes/no values, as the original took them|
//! | [`duration`]   | numbers of seconds, each use with its bounds                         |
//! | [`proc`]       | `/proc/PID/stat`: running, parent, group, CPU time, start tick       |
//! | [`exe`]        | this very binary, to run it again (`/proc/self/exe`)                 |
//! | [`service`]    | how a run string becomes an argv, and the identity used to attach    |
//! | [`config`]     | the original's `key=value` files (`cmappmgr.conf`, `cmappserver.conf`)|
//! | [`tls`]        | TLS 1.3 with mutual authentication: key material, pinning, CA trust  |
//! | [`logging`]    | tracing to stderr plus warnings and errors to syslog                 |
//! | [`perms`]      | who may write a file we trust (sshd's `StrictModes` checks)          |
//! | [`shutdown`]   | one future that resolves on SIGTERM or SIGINT                        |
//! | [`text`]       | peer-supplied strings made safe to log and print (escaped, clipped)  |
//! | [`docs`]       | the man pages' sections beyond the command line (`cmapp-docgen` renders the pages) |
//!
//! The layers never mix: `codec` knows bytes, `connection` knows I/O, and
//! `message` knows meaning. Neither binary frames or parses anything itself.
#![deny(rust_2018_idioms)]

pub mod address;
pub mod args;
pub mod codec;
pub mod config;
pub mod connection;
pub mod docs;
pub mod duration;
pub mod exe;
pub mod fuzzing;
pub mod logging;
pub mod message;
pub mod perms;
pub mod probe;
pub mod proc;
pub mod service;
pub mod shutdown;
pub mod text;
pub mod tls;

/// The TCP port the original product uses, and our default.
pub const DEFAULT_PORT: u16 = 5315;

/// This build's version, as both binaries report it.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
