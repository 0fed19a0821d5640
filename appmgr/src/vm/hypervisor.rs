//! What the lifecycle commands need from a hypervisor, and nothing more.
//!
//! The commands (`start`, `stop`, `monitor`, `validate`) speak only to the
//! [`Hypervisor`] trait; [`super::virsh::Virsh`] implements it for libvirt. A
//! driver reports every failure as a [`HvError`] that names the command it ran
//! and carries the hypervisor's own words, so the package log shows exactly
//! what failed.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::domain::DomainXml;

/// The state of a domain, as libvirt names them (`virsh domstate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainState {
    Running,
    /// Running, with every vCPU idle or blocked on a resource.
    Blocked,
    Paused,
    /// The guest is shutting down; it will be `ShutOff` soon.
    InShutdown,
    ShutOff,
    Crashed,
    /// Suspended by guest power management (S3/S4).
    PmSuspended,
    NoState,
    /// A state this build does not know, as the driver printed it.
    Other(String),
}

impl DomainState {
    /// Parses `virsh domstate` output (`running`, `shut off`, ...).
    pub fn parse(text: &str) -> DomainState {
        match text.trim() {
            "running" => DomainState::Running,
            "idle" | "blocked" => DomainState::Blocked,
            "paused" => DomainState::Paused,
            "in shutdown" => DomainState::InShutdown,
            "shut off" => DomainState::ShutOff,
            "crashed" => DomainState::Crashed,
            "pmsuspended" => DomainState::PmSuspended,
            "no state" => DomainState::NoState,
            other => DomainState::Other(other.to_string()),
        }
    }

    /// The guest is executing (running, or running with idle vCPUs).
    pub fn is_running(&self) -> bool {
        matches!(self, DomainState::Running | DomainState::Blocked)
    }

    /// No QEMU process: the domain is stopped, cleanly or not.
    pub fn is_stopped(&self) -> bool {
        matches!(self, DomainState::ShutOff | DomainState::Crashed)
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::InShutdown => "in shutdown",
            DomainState::ShutOff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::PmSuspended => "pmsuspended",
            DomainState::NoState => "no state",
            DomainState::Other(s) => s,
        })
    }
}

/// A hypervisor command that failed. `command` is the command line as run,
/// `detail` the hypervisor's message (its stderr, trimmed).
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// The domain does not exist on this host.
    #[error("{command} failed: {detail}")]
    NotFound { command: String, detail: String },
    #[error("{command} failed: {detail}")]
    Failed { command: String, detail: String },
    /// The domain's definition could not be read.
    #[error("{command} failed: {source}")]
    Definition {
        command: String,
        #[source]
        source: super::domain::DomainXmlError,
    },
    #[error("{command} did not finish within {} s and was killed", timeout.as_secs_f64())]
    Timeout { command: String, timeout: Duration },
    #[error("could not run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

impl HvError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, HvError::NotFound { .. })
    }
}

/// What a domain's definition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDefinition {
    /// Defined (survives a stop), as opposed to transient.
    pub persistent: bool,
    /// Its XML definition, parsed.
    pub domain: DomainXml,
}

impl DomainDefinition {
    /// Local files the domain needs to start: file- and block-backed disks
    /// (other than those marked optional), and a direct-boot kernel/initrd.
    pub fn files(&self) -> Vec<PathBuf> {
        self.domain.referenced_files()
    }
}

/// A notification from a lifecycle event subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HvEvent {
    /// One lifecycle event, as the driver described it (`virsh event` prints
    /// `event 'lifecycle' for domain 'vm1': Stopped Destroyed`).
    Lifecycle(String),
    /// The subscription ended (the hypervisor went away, for instance); no
    /// more events will come from it.
    Ended(String),
}

/// A live event subscription; dropping it ends the subscription and reaps
/// whatever process backs it.
pub trait Subscription: fmt::Debug + Send {
    /// How the subscription is made, for the log.
    fn describe(&self) -> String;
}

/// The operations the VM lifecycle hooks need. Every call is bounded in time.
pub trait Hypervisor: fmt::Debug + Send + Sync {
    /// Names the driver and its connection, for the log.
    fn describe(&self) -> String;
    /// The current state; [`HvError::NotFound`] if the domain is not defined.
    fn state(&self, domain: &str) -> Result<DomainState, HvError>;
    /// Starts a defined, stopped domain.
    fn start(&self, domain: &str) -> Result<(), HvError>;
    /// Resumes a paused domain.
    fn resume(&self, domain: &str) -> Result<(), HvError>;
    /// Asks the guest to shut down (ACPI power button, or the guest agent
    /// where the domain has one); returns once the request is delivered.
    fn shutdown(&self, domain: &str) -> Result<(), HvError>;
    /// Stops the domain at once (kills the emulator process).
    fn destroy(&self, domain: &str) -> Result<(), HvError>;
    /// The domain's definition; fails if the domain does not exist or its
    /// definition cannot be read.
    fn definition(&self, domain: &str) -> Result<DomainDefinition, HvError>;
    /// Subscribes to the domain's lifecycle events: each one is sent to
    /// `events` as it happens, until the returned subscription is dropped.
    fn subscribe(&self, domain: &str, events: UnboundedSender<HvEvent>) -> Result<Box<dyn Subscription>, HvError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_virsh_state() {
        for (text, state) in [
            ("running\n\n", DomainState::Running),
            ("idle", DomainState::Blocked),
            ("blocked", DomainState::Blocked),
            ("paused", DomainState::Paused),
            ("in shutdown", DomainState::InShutdown),
            ("shut off", DomainState::ShutOff),
            ("crashed", DomainState::Crashed),
            ("pmsuspended", DomainState::PmSuspended),
            ("no state", DomainState::NoState),
        ] {
            assert_eq!(DomainState::parse(text), state, "{text:?}");
        }
        assert_eq!(DomainState::parse("dying").to_string(), "dying");
        assert_eq!(DomainState::ShutOff.to_string(), "shut off");
    }
}
