//! The application the fault campaign (`tests/src/campaign`) monitors:
//! `cmapp-campaign-app <dir> <service>`.
//!
//! It keeps its own history, outside cmapp's state, in `<dir>/apps.log`
//! (appended with O_APPEND, one line per event, each written whole):
//!
//! ```text
//! start <service> <pid> <ms>          it began (wall clock, ms since the epoch)
//! dup <service> <pid> <ms> <holder>   another copy of the service held its lock: two ran at once
//! exit <service> <pid> <code> <ms>    it is about to exit with <code>
//! ```
//!
//! How long it runs and its exit code come from `<dir>/plans/<service>`
//! (`<code> <milliseconds>`, rewritten by the campaign before each launch):
//! the run string, which names the service, stays the same across restarts.
//! While it runs it holds an exclusive lock on `<dir>/locks/<service>`,
//! which the kernel releases however it ends: a second copy of the service
//! finds the lock taken and records `dup`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Appends one line in a single write (O_APPEND: lines never interleave).
fn record(log: &mut File, line: &str) {
    let _ = log.write_all(format!("{line}\n").as_bytes());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, service] = args.as_slice() else {
        eprintln!("usage: cmapp-campaign-app <dir> <service>");
        std::process::exit(2);
    };
    let dir = Path::new(dir);
    let pid = std::process::id();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join("apps.log"))
        .unwrap_or_else(|e| {
            eprintln!("cannot open the history: {e}");
            std::process::exit(3)
        });
    let plan = std::fs::read_to_string(dir.join("plans").join(service)).unwrap_or_default();
    let mut words = plan.split_whitespace().map(|w| w.parse::<u64>().unwrap_or(0));
    let code = words.next().unwrap_or(3) as i32;
    let ms = words.next().unwrap_or(1000);

    record(&mut log, &format!("start {service} {pid} {}", now_ms()));
    let lock = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("locks").join(service))
        .unwrap_or_else(|e| {
            eprintln!("cannot open the lock: {e}");
            std::process::exit(3)
        });
    // Held until the process ends, however it ends.
    let _held = match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
        Ok(mut held) => {
            let _ = held.set_len(0);
            let _ = held.rewind();
            let _ = held.write_all(pid.to_string().as_bytes());
            Some(held)
        }
        Err((mut lock, _)) => {
            // The holder wrote its pid into the lock file.
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            record(&mut log, &format!("dup {service} {pid} {} {}", now_ms(), holder.trim()));
            None
        }
    };
    println!("{service} (pid {pid}) runs {ms} ms, then exits {code}");
    std::thread::sleep(Duration::from_millis(ms));
    record(&mut log, &format!("exit {service} {pid} {code} {}", now_ms()));
    std::process::exit(code);
}
