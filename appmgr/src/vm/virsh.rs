//! The libvirt driver: every operation is one `virsh --connect URI ...` call.
//!
//! Going through `virsh` keeps the binary free of libvirt's C library and makes
//! each step reproducible by hand: an error names the exact command line and
//! carries virsh's own message. Every call runs with `LC_ALL=C` (the messages
//! are parsed) and is killed if it outlives the call timeout, so a hung
//! libvirtd cannot hang a package's start, stop or monitor.
//!
//! Lifecycle events come from a long-running
//! `virsh event --domain D --loop --event lifecycle` child whose stdout lines
//! are forwarded, one event per line, by a reader thread.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::domain::DomainXml;
use super::hypervisor::{DomainDefinition, DomainState, HvError, HvEvent, Hypervisor, Subscription};

/// libvirt through the `virsh` command.
#[derive(Debug, Clone)]
pub struct Virsh {
    program: PathBuf,
    uri: String,
    call_timeout: Duration,
}

impl Virsh {
    /// `program` is usually `virsh`; `uri` the connection (`qemu:///system`);
    /// `call_timeout` bounds each call.
    pub fn new(program: PathBuf, uri: String, call_timeout: Duration) -> Self {
        Virsh {
            program,
            uri,
            call_timeout,
        }
    }

    /// The command line as a person would type it, for messages.
    fn command_line(&self, args: &[&str]) -> String {
        let mut line = format!("{} --connect {}", self.program.display(), quote(&self.uri));
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        line
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--connect")
            .arg(&self.uri)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs one virsh command to completion (bounded); returns its stdout.
    fn run(&self, args: &[&str]) -> Result<String, HvError> {
        let command = self.command_line(args);
        tracing::debug!("running {command}");
        let mut child = match self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
            Ok(c) => c,
            Err(source) => return Err(HvError::Spawn { command, source }),
        };
        // Drain both pipes while waiting: a full pipe must never stall virsh.
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = match wait_bounded(&mut child, self.call_timeout) {
            Ok(Some(status)) => status,
            Ok(None) => {
                return Err(HvError::Timeout {
                    command,
                    timeout: self.call_timeout,
                });
            }
            Err(source) => return Err(HvError::Spawn { command, source }),
        };
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        if status.success() {
            return Ok(out);
        }
        let detail = one_line(&err);
        let detail = if detail.is_empty() {
            format!("{status} (no message)")
        } else {
            detail
        };
        if is_not_found(&detail) {
            Err(HvError::NotFound { command, detail })
        } else {
            Err(HvError::Failed { command, detail })
        }
    }
}

impl Hypervisor for Virsh {
    fn describe(&self) -> String {
        format!("libvirt ({} --connect {})", self.program.display(), self.uri)
    }

    fn state(&self, domain: &str) -> Result<DomainState, HvError> {
        self.run(&["domstate", domain]).map(|out| DomainState::parse(&out))
    }

    fn start(&self, domain: &str) -> Result<(), HvError> {
        self.run(&["start", domain]).map(drop)
    }

    fn resume(&self, domain: &str) -> Result<(), HvError> {
        self.run(&["resume", domain]).map(drop)
    }

    fn shutdown(&self, domain: &str) -> Result<(), HvError> {
        self.run(&["shutdown", domain]).map(drop)
    }

    fn destroy(&self, domain: &str) -> Result<(), HvError> {
        self.run(&["destroy", domain]).map(drop)
    }

    fn definition(&self, domain: &str) -> Result<DomainDefinition, HvError> {
        let info = self.run(&["dominfo", domain])?;
        let persistent = info.lines().any(|l| {
            let mut kv = l.splitn(2, ':');
            kv.next().map(str::trim) == Some("Persistent") && kv.next().map(str::trim) == Some("yes")
        });
        let command = self.command_line(&["dumpxml", domain]);
        let xml = self.run(&["dumpxml", domain])?;
        let domain = DomainXml::parse(&xml).map_err(|source| HvError::Definition { command, source })?;
        Ok(DomainDefinition { persistent, domain })
    }

    fn subscribe(&self, domain: &str, events: UnboundedSender<HvEvent>) -> Result<Box<dyn Subscription>, HvError> {
        let args = ["event", "--domain", domain, "--loop", "--event", "lifecycle"];
        let command = self.command_line(&args);
        // Same process group as ours on purpose: if the cluster kills the
        // service's group, this child goes with it instead of lingering.
        let mut child = match self
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(source) => return Err(HvError::Spawn { command, source }),
        };
        let stdout = child.stdout.take();
        let stderr = drain(child.stderr.take());
        let what = command.clone();
        thread::Builder::new()
            .name("virsh-event".into())
            .spawn(move || {
                if let Some(out) = stdout {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        let line = line.trim();
                        if line.is_empty() {
                            continue;
                        }
                        if events.send(HvEvent::Lifecycle(line.to_string())).is_err() {
                            return;
                        }
                    }
                }
                let err = one_line(&stderr.join().unwrap_or_default());
                let why = if err.is_empty() {
                    format!("{what} ended")
                } else {
                    format!("{what} ended: {err}")
                };
                let _ = events.send(HvEvent::Ended(why));
            })
            .map_err(|source| HvError::Spawn {
                command: command.clone(),
                source,
            })?;
        Ok(Box::new(VirshEvents { child, command }))
    }
}

/// A running `virsh event` child; dropping it kills and reaps the child.
#[derive(Debug)]
struct VirshEvents {
    child: Child,
    command: String,
}

impl Subscription for VirshEvents {
    fn describe(&self) -> String {
        self.command.clone()
    }
}

impl Drop for VirshEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a pipe to its end on a thread; the text comes back on join.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` at most `timeout`; on timeout kills and reaps it and
/// returns `None`.
fn wait_bounded(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// virsh's message on one line: its lines joined by spaces.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_not_found(detail: &str) -> bool {
    detail.contains("failed to get domain") || detail.contains("Domain not found")
}

/// Quotes an argument for display if a shell would split it.
fn quote(arg: &str) -> std::borrow::Cow<'_, str> {
    shell_words::quote(arg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_command_and_quote_odd_arguments() {
        let v = Virsh::new("virsh".into(), "qemu:///system".into(), Duration::from_secs(1));
        assert_eq!(
            v.command_line(&["start", "vm1"]),
            "virsh --connect qemu:///system start vm1"
        );
        assert_eq!(
            v.command_line(&["start", "my vm"]),
            "virsh --connect qemu:///system start 'my vm'"
        );
        assert!(is_not_found("error: failed to get domain 'x'"));
        assert_eq!(one_line("error: a\n\nerror: b\n"), "error: a error: b");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_the_command() {
        let v = Virsh::new(
            "/nonexistent/virsh".into(),
            "qemu:///system".into(),
            Duration::from_secs(1),
        );
        let e = v.state("vm1").unwrap_err();
        assert!(matches!(e, HvError::Spawn { .. }), "{e:?}");
        assert!(e
            .to_string()
            .starts_with("could not run /nonexistent/virsh --connect qemu:///system domstate vm1"));
    }

    #[test]
    fn a_hung_call_is_killed_at_the_timeout() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let t = Instant::now();
        let status = wait_bounded(&mut child, Duration::from_millis(200)).unwrap();
        assert!(status.is_none());
        assert!(t.elapsed() < Duration::from_secs(5));
        // Killed and reaped: nothing left to wait for.
        assert!(child.try_wait().unwrap().is_some());
    }
}
