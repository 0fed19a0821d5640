//! The floor under the detection latency on this machine: the chain of
//! processes an exit crosses, with none of the work (no TLS, no JSON, no
//! record on disk, no runtime, no acknowledgement), measured exactly as
//! [`super::latency`] measures cmappserver and cmappmgr.
//!
//! ```text
//! application (exit-now) ──exit──► its parent, blocked in waitpid   (the shim's place)
//!   ──4 bytes, unix socket──► a relay thread, blocked in read         (cmappserver's)
//!   ──1 byte, TCP loopback──► a manager process, blocked in read      (cmappmgr's)
//!   ──exit(code)──► the harness, blocked in waitpid
//! ```
//!
//! Beside it, the same with three processes: the application's parent
//! writes the code to the manager's TCP connection itself (the shape of a
//! server that is its applications' parent, as the original's is; ours
//! puts a shim between them so that applications outlive a server restart).
//!
//! Every process is this bench binary in another role (`floor-relay`,
//! `floor-shim`, `floor-mgr`); the application is the same `exit-now` as in
//! the latency run, triggered the same way. What the figure shows is what
//! four wake-ups across four processes cost here (a 2-vCPU virtual machine
//! wakes a halted vCPU through the hypervisor), which no design with a
//! supervisor between the application and the manager goes below.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::fixture::Env;
use super::latency::{read_stamp, trigger_fifo};
use super::sys;

/// Pause before each trigger, as in the latency run.
const GAP: Duration = Duration::from_millis(3);

#[derive(Debug)]
pub struct Floor {
    /// Latencies in nanoseconds, sorted: four processes (ours: a
    /// supervisor, a server and a manager between the exit and the harness).
    pub ns: Vec<u64>,
    /// The same with three: the application's parent writes to the
    /// manager's TCP connection itself (a server that is the applications'
    /// parent, as the original's is).
    pub direct_ns: Vec<u64>,
}

/// The `p`-th percentile of sorted nanoseconds.
pub fn percentile(ns: &[u64], p: f64) -> u64 {
    super::latency::percentile(ns, p)
}

/// A child process killed and reaped when dropped.
struct Owned {
    child: Child,
    token: Option<sys::Token>,
}

impl Owned {
    fn spawn(mut cmd: Command) -> Result<Owned, String> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let token = Some(sys::register_pid(child.id()));
        Ok(Owned { child, token })
    }

    /// The first line the process prints (its port, or `ready`).
    fn first_line(&mut self) -> Result<String, String> {
        let out = self.child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("reading a floor process's first line: {e}"))?;
        Ok(line.trim().to_string())
    }

    fn reaped(&mut self) {
        if let Some(t) = self.token.take() {
            sys::forget(t);
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.token.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped();
        }
    }
}

pub fn run(env: &Env, events: usize) -> Result<Floor, String> {
    let dir = env.dir("floor")?;
    let sock = dir.join("relay.sock");
    let mut relay = Command::new(&env.bins.bench);
    relay.arg("floor-relay").arg(&sock);
    let mut relay = Owned::spawn(relay)?;
    let port = relay.first_line()?;
    let mut ns = Vec::with_capacity(events);
    let mut direct_ns = Vec::with_capacity(events);
    for i in 0..events {
        let code = 100 + (i % 26) as i32;
        // Alternated, so that both see the same moments of the machine.
        ns.push(event(env, &dir, i, code, Some((&port, &sock)))?);
        direct_ns.push(event(env, &dir, i, code, None)?);
    }
    ns.sort_unstable();
    direct_ns.sort_unstable();
    Ok(Floor { ns, direct_ns })
}

/// One exit through the relay (`Some((relay's port, its socket))`) or
/// straight from the application's parent to the manager (`None`).
fn event(env: &Env, dir: &Path, i: usize, code: i32, relay: Option<(&str, &Path)>) -> Result<u64, String> {
    let fifo = dir.join(format!("go-{i}"));
    let out = dir.join(format!("t-{i}"));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)
        .map_err(|e| format!("mkfifo {}: {e}", fifo.display()))?;
    let mut mgr = Command::new(&env.bins.bench);
    match relay {
        Some((port, _)) => mgr.args(["floor-mgr", port, &i.to_string()]),
        None => mgr.args(["floor-mgr", "listen", &i.to_string()]),
    };
    let mut mgr = Owned::spawn(mgr)?;
    let ready = mgr.first_line()?;
    let to = match (relay, ready.strip_prefix("ready")) {
        (Some((_, sock)), Some("")) => sock.display().to_string(),
        (None, Some(port)) => format!("tcp:{}", port.trim()),
        _ => return Err(format!("the floor's manager said {ready:?}, not ready")),
    };
    let mut shim = Command::new(&env.bins.bench);
    shim.arg("floor-shim")
        .arg(&to)
        .arg(i.to_string())
        .arg(&fifo)
        .arg(&out)
        .arg(code.to_string());
    let mut shim = Owned::spawn(shim)?;
    std::thread::sleep(GAP);
    trigger_fifo(&fifo, || matches!(mgr.child.try_wait(), Ok(Some(_))))?;
    let status = mgr
        .child
        .wait()
        .map_err(|e| format!("waitpid on the floor's manager: {e}"))?;
    let t_end = sys::mono_ns();
    mgr.reaped();
    if status.code() != Some(code) {
        return Err(format!(
            "the floor's manager exited with {status} where its application exited with code {code}"
        ));
    }
    let took = t_end.saturating_sub(read_stamp(&out)?);
    let _ = shim.child.wait();
    shim.reaped();
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_file(&out);
    Ok(took)
}

/// `cmapp-bench floor-relay SOCKET`: prints its TCP port, then relays each
/// shim's (id, code) from SOCKET to the manager registered under that id.
pub fn relay(args: &[String]) -> i32 {
    let [sock] = args else {
        eprintln!("usage: cmapp-bench floor-relay SOCKET");
        return 64;
    };
    let (Ok(tcp), Ok(unix)) = (TcpListener::bind("127.0.0.1:0"), UnixListener::bind(sock)) else {
        eprintln!("cmapp-bench floor-relay: cannot listen");
        return 71;
    };
    let Ok(addr) = tcp.local_addr() else {
        return 71;
    };
    type Managers = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u32, TcpStream>>>;
    let managers: Managers = Default::default();
    let registry = managers.clone();
    std::thread::spawn(move || {
        for mut m in tcp.incoming().flatten() {
            let _ = m.set_nodelay(true);
            let mut id = [0u8; 4];
            if m.read_exact(&mut id).is_ok() {
                // Registered before the manager hears it is.
                registry
                    .lock()
                    .unwrap()
                    .insert(u32::from_le_bytes(id), m.try_clone().unwrap());
                let _ = m.write_all(b"k");
            }
        }
    });
    println!("{}", addr.port());
    let _ = std::io::stdout().flush();
    for mut shim in unix.incoming().flatten() {
        let managers = managers.clone();
        // One thread per shim connection, blocked in read until the exit:
        // the one wake-up a relay costs.
        std::thread::spawn(move || {
            let mut msg = [0u8; 8];
            if shim.read_exact(&mut msg).is_err() {
                return;
            }
            let id = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
            let code = i32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
            let m = managers.lock().unwrap().remove(&id);
            if let Some(mut m) = m {
                let _ = m.write_all(&[code as u8]);
            }
        });
    }
    0
}

/// `cmapp-bench floor-mgr PORT ID`: registers ID with the relay, says
/// `ready`, and exits with the code the relay sends. `floor-mgr listen ID`:
/// says `ready PORT` and exits with the code the first connection to PORT
/// sends.
pub fn manager(args: &[String]) -> i32 {
    let [port, id] = args else {
        eprintln!("usage: cmapp-bench floor-mgr PORT|listen ID");
        return 64;
    };
    if port == "listen" {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            return 71;
        };
        let Ok(addr) = l.local_addr() else {
            return 71;
        };
        println!("ready {}", addr.port());
        let _ = std::io::stdout().flush();
        let mut code = [0u8; 1];
        return match l.accept().map(|(mut s, _)| s.read_exact(&mut code)) {
            Ok(Ok(())) => i32::from(code[0]),
            _ => 69,
        };
    }
    let (Ok(port), Ok(id)) = (port.parse::<u16>(), id.parse::<u32>()) else {
        return 64;
    };
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        eprintln!("cmapp-bench floor-mgr: cannot connect to the relay");
        return 69;
    };
    let _ = s.set_nodelay(true);
    let mut ack = [0u8; 1];
    if s.write_all(&id.to_le_bytes()).is_err() || s.read_exact(&mut ack).is_err() {
        return 69;
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut code = [0u8; 1];
    match s.read_exact(&mut code) {
        Ok(()) => i32::from(code[0]),
        Err(_) => 69,
    }
}

/// `cmapp-bench floor-shim SOCKET ID FIFO STAMP CODE`: starts the
/// application (`exit-now FIFO STAMP CODE`), waits for it, and sends (ID,
/// its code) to the relay; with `tcp:PORT` for SOCKET, sends the code alone
/// to the manager listening on PORT.
pub fn shim(args: &[String]) -> i32 {
    let [to, id, app @ ..] = args else {
        eprintln!("usage: cmapp-bench floor-shim SOCKET|tcp:PORT ID FIFO STAMP CODE");
        return 64;
    };
    let Ok(id) = id.parse::<u32>() else {
        return 64;
    };
    let mut peer: Box<dyn Write> = match to.strip_prefix("tcp:").map(str::parse::<u16>) {
        Some(Ok(port)) => match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
            Err(_) => return 69,
        },
        Some(Err(_)) => return 64,
        None => match UnixStream::connect(to) {
            Ok(s) => Box::new(s),
            Err(_) => return 69,
        },
    };
    let direct = to.starts_with("tcp:");
    let Ok(me) = std::env::current_exe() else {
        return 71;
    };
    let child = Command::new(me).arg("exit-now").args(app).stdin(Stdio::null()).spawn();
    let Ok(mut child) = child else {
        return 71;
    };
    let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(255);
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&id.to_le_bytes());
    msg[4..].copy_from_slice(&code.to_le_bytes());
    let sent = if direct {
        peer.write_all(&[code as u8])
    } else {
        peer.write_all(&msg)
    };
    if sent.is_err() {
        return 69;
    }
    0
}
