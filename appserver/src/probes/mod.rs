//! Built-in probes that run in the guest like any monitored command.
//!
//! `net` is the LAN probe (the original's `cmapp_net_mon.pl`), `disk` the disk
//! probe (`cmapp_disk_mon`). Each exposes `main(args) -> exit code`, where
//! `args` are the arguments after the program name.

pub mod disk;
pub mod net;
