//! The disk probe (the original's `cmapp_disk_mon`).
//!
//! Every poll interval it reads 4 KiB from each device at up to three offsets:
//! the start, the last block, and one that moves on with every poll, so that
//! a device that lost its end (a truncated backing file, a shrunken LUN) is
//! noticed as well as a dead one. Reads use O_DIRECT so that the page cache
//! cannot answer for a disk that no longer does. Any error, or reads that
//! outlast `--io-timeout`, end the probe with exit code 1 and a log line that
//! names the device; otherwise it runs until it is killed.
//!
//! Why the reads run in a helper process and not a thread: a read stuck in
//! the block layer waits uninterruptibly (D state), and a process with such a
//! thread cannot be reaped. Its main thread can exit, but the parent's
//! `wait()` returns only when the last thread is gone, that is when the I/O
//! ends, which for a hung disk may be never; cmappmgr would never learn of
//! the failure. So each poll starts one reader per device, this same binary
//! re-executed with the hidden first argument `--read-worker`, its stdout a
//! private pipe and its stdin and stderr `/dev/null`. On a timeout the probe
//! kills the reader (the kill takes effect when its I/O ends), logs and exits
//! at once; the stuck reader holds none of the supervisor's descriptors.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;

use super::log::Log;
use super::{parse_args, EXIT_FAILED, EX_SOFTWARE, EX_USAGE};
use common::duration::show as secs;

use common::probe::{DiskArgs as Args, Probe};

const PROBE: Probe = Probe::Disk;

/// The unit of every read: the largest logical block size in use, so that
/// O_DIRECT accepts the buffer, the offset and the length on any disk.
const BLOCK: usize = 4096;

/// Runs the probe with the arguments after the program name; returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    if args.first().map(String::as_str) == Some(WORKER_FLAG) {
        return read_worker(&args[1..]);
    }
    let args: Args = match parse_args(PROBE, args) {
        Ok(args) => args,
        Err(code) => return code,
    };
    super::log::watch(PROBE.name(), args.log_level, None, |log| run(&args, log))
}

/// Watches until a device fails; returns the exit code and the reason.
fn run(args: &Args, log: &Log) -> (i32, String) {
    let names: Vec<String> = args.devices.iter().map(|d| d.display().to_string()).collect();
    log.at(
        0,
        format!(
            "watching {}: reads every {}, a device whose reads take over {} counts as hung",
            names.join(" "),
            secs(args.poll_interval),
            secs(args.io_timeout)
        ),
    );
    let mut poll = 0u64;
    loop {
        poll += 1;
        let deadline = Instant::now() + args.poll_interval;
        if let Err(failure) = poll_devices(&args.devices, poll, args.io_timeout, log) {
            return failure;
        }
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }
}

/// One poll: a reader per device, all at once, each given `timeout`.
fn poll_devices(devices: &[PathBuf], poll: u64, timeout: Duration, log: &Log) -> Result<(), (i32, String)> {
    let (tx, rx) = mpsc::channel::<(usize, std::io::Result<String>, Duration)>();
    // Readers not yet waited for; killing one of them can hit no other process.
    let mut readers: Vec<Option<Child>> = Vec::with_capacity(devices.len());
    let kill_all = |readers: &mut [Option<Child>]| {
        for reader in readers.iter_mut().flatten() {
            let _ = reader.kill();
        }
    };
    for (i, device) in devices.iter().enumerate() {
        let spawned = Command::new(common::exe::reexec())
            .arg0("cmappserver")
            .args(["disk-mon", WORKER_FLAG])
            .arg(device)
            .arg(poll.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                kill_all(&mut readers);
                return Err((
                    EX_SOFTWARE,
                    format!("cannot start a reader for {}: {e}", device.display()),
                ));
            }
        };
        let mut stdout = child.stdout.take().expect("piped stdout");
        readers.push(Some(child));
        let (tx, started) = (tx.clone(), Instant::now());
        std::thread::spawn(move || {
            let mut text = String::new();
            let read = stdout.read_to_string(&mut text).map(|_| text);
            let _ = tx.send((i, read, started.elapsed()));
        });
    }
    let deadline = Instant::now() + timeout;
    for _ in devices {
        let Ok((i, text, took)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let hung = readers.iter().position(Option::is_some).unwrap_or(0);
            kill_all(&mut readers);
            let message = format!("read of {} timed out after {}", devices[hung].display(), secs(timeout));
            return Err((EXIT_FAILED, message));
        };
        // The reader closes its stdout by exiting: this wait is short.
        let waited = readers[i].take().expect("each reader reports once").wait();
        let device = devices[i].display();
        let (text, status) = match (text, waited) {
            (Ok(text), Ok(status)) => (text, status),
            (Err(e), _) | (_, Err(e)) => {
                kill_all(&mut readers);
                return Err((EX_SOFTWARE, format!("lost the reader for {device}: {e}")));
            }
        };
        let mut lines = text.lines();
        match status.code() {
            Some(0) => {
                let reads = lines.clone().count();
                lines.for_each(|line| log.at(7, line));
                log.at(
                    6,
                    format!("poll {poll}: {device} readable ({reads} reads in {:.1} ms)", ms(took)),
                );
                if took > timeout / 2 {
                    log.at(
                        4,
                        format!("reads of {device} took {} of the {} allowed", secs(took), secs(timeout)),
                    );
                }
            }
            Some(1) => {
                kill_all(&mut readers);
                let failure = lines.next_back().unwrap_or("failed").to_string();
                lines.for_each(|line| log.at(7, line));
                return Err((EXIT_FAILED, failure));
            }
            _ => {
                kill_all(&mut readers);
                return Err((EX_SOFTWARE, format!("the reader for {device} ended with {status}")));
            }
        }
    }
    Ok(())
}

const WORKER_FLAG: &str = "--read-worker";

/// The reader: `--read-worker DEVICE POLL`. Prints one line per read; on a
/// failure prints the reason last and exits 1.
fn read_worker(args: &[String]) -> i32 {
    let [device, poll] = args else { return EX_USAGE };
    let Ok(poll) = poll.parse::<u64>() else { return EX_USAGE };
    let mut lines = Vec::new();
    let result = read_device(Path::new(device), poll, &mut lines);
    if let Err(failure) = &result {
        lines.push(failure.to_string());
    }
    println!("{}", lines.join("\n"));
    if result.is_ok() {
        0
    } else {
        EXIT_FAILED
    }
}

/// Why a reader failed on its device: the last line it prints.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("open of {} failed: {source}", device.display())]
    Open {
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("size of {} unknown: {source}", device.display())]
    Size {
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is empty (size 0)", device.display())]
    Empty { device: PathBuf },
    /// A read returned nothing before the size the device claims.
    #[error("read of {} at offset {offset} failed: end of device before its size {size}", device.display())]
    Eof { device: PathBuf, offset: u64, size: u64 },
    #[error("read of {} at offset {offset} failed: {source}", device.display())]
    Read {
        device: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Reads one block at each of this poll's offsets of `device`, bypassing the
/// page cache; records a line per read in `lines`.
fn read_device(device: &Path, poll: u64, lines: &mut Vec<String>) -> Result<(), ReadError> {
    let name = device.display();
    let mut file: File = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_DIRECT.bits())
        .open(device)
        .map_err(|source| ReadError::Open {
            device: device.into(),
            source,
        })?;
    let size = file.seek(SeekFrom::End(0)).map_err(|source| ReadError::Size {
        device: device.into(),
        source,
    })?;
    if size == 0 {
        return Err(ReadError::Empty { device: device.into() });
    }
    // O_DIRECT wants an aligned buffer: take the aligned part of a larger one.
    let mut buf = vec![0u8; 2 * BLOCK];
    let start = buf.as_ptr().align_offset(BLOCK);
    let block = &mut buf[start..start + BLOCK];
    for offset in offsets(size, poll) {
        let begun = Instant::now();
        match file.read_at(block, offset) {
            Ok(0) => {
                return Err(ReadError::Eof {
                    device: device.into(),
                    offset,
                    size,
                })
            }
            Ok(n) => lines.push(format!(
                "read {n} bytes of {name} at offset {offset} in {:.3} ms",
                ms(begun.elapsed())
            )),
            Err(source) => {
                return Err(ReadError::Read {
                    device: device.into(),
                    offset,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// The offsets read at poll `poll` of a device of `size` bytes: the first
/// block, the last one, and one that steps through the device (by a prime
/// number of blocks, so that it visits them all in turn).
fn offsets(size: u64, poll: u64) -> Vec<u64> {
    const STEP: u64 = 7919;
    let blocks = size.div_ceil(BLOCK as u64);
    let block = BLOCK as u64;
    let mut offsets = vec![0, (blocks - 1) * block, poll.wrapping_mul(STEP) % blocks * block];
    offsets.sort_unstable();
    offsets.dedup();
    offsets
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, i32> {
        parse_args(PROBE, args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn defaults_and_the_manuals_spellings() {
        let args = parse(&["/dev/sdb"]).unwrap();
        assert_eq!(args.poll_interval, Duration::from_secs(60));
        assert_eq!((args.log_level, args.io_timeout), (0, Duration::from_secs(10)));
        let args = parse(&[
            "/dev/disk/disk12",
            "/dev/rdisk/disk13",
            "--log_level",
            "3",
            "--log_file",
            "/var/adm/x.log",
        ])
        .unwrap();
        assert_eq!(args.devices.len(), 2);
        assert_eq!(args.log_level, 3);
        let args = parse(&["-O", "/var/adm/x.log", "-D", "7", "-t", "0.2", "/dev/sdb", "/dev/sdc"]).unwrap();
        assert_eq!(args.poll_interval, Duration::from_millis(200));
        assert_eq!(args.log_file, Some(PathBuf::from("/var/adm/x.log")));
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for bad in [
            &[][..],
            &["-t", "5"],
            &["-t", "0", "/dev/sdb"],
            &["-t", "-1", "/dev/sdb"],
            &["-t", "soon", "/dev/sdb"],
            &["-D", "8", "/dev/sdb"],
            &["-O", "relative.log", "/dev/sdb"],
            &["--io-timeout", "0", "/dev/sdb"],
            &["--bogus", "/dev/sdb"],
            &["/dev/sdb", "-t"],
        ] {
            assert_eq!(parse(bad).err(), Some(EX_USAGE), "{bad:?}");
        }
        assert_eq!(parse(&["-h"]).err(), Some(0));
        assert_eq!(parse(&["-v"]).err(), Some(0));
    }

    #[test]
    fn offsets_cover_both_ends_and_move() {
        let size = 64 << 20;
        let last = size - BLOCK as u64;
        assert_eq!(offsets(size, 0), vec![0, last]);
        let a = offsets(size, 1);
        let b = offsets(size, 2);
        assert!(a.contains(&0) && a.contains(&last) && a.len() == 3);
        assert_ne!(a, b);
        assert!(a.iter().chain(&b).all(|o| o % BLOCK as u64 == 0 && *o < size));
        assert_eq!(offsets(512, 7), vec![0]);
    }
}
