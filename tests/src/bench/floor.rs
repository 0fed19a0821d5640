//! The floor under the detection latency on this machine: the chain of
//! processes an exit crosses, with none of the work (no TLS, no JSON, no
//! record on disk, no runtime, no acknowledgement), triggered and timed as
//! [`super::latency`] times cmappserver and cmappmgr (the same application,
//! trigger and clock; one manager waiting at a time rather than 25).
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
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    /// Seconds per whole bare one-shot run (`floor-mgr … run`: process
    /// start, connection, the spare shim's fork and exec of `/bin/true`,
    /// its exit back), sorted.
    pub run: Vec<f64>,
    /// Seconds per whole bare ping (`floor-mgr … ping`: process start,
    /// connection, one round trip), sorted.
    pub ping: Vec<f64>,
    /// What a run took beyond the ping of the same round, sorted: its
    /// median is what a run adds to a ping at the floor.
    pub adds: Vec<f64>,
}

/// A child process in a process group of its own, which is killed (with
/// whatever the process started in it: a shim's application blocked on its
/// FIFO) and reaped when dropped, or by the bench's cleanup on a signal.
struct Owned {
    child: Child,
    token: Option<sys::Token>,
}

impl Owned {
    fn spawn(mut cmd: Command) -> Result<Owned, String> {
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let token = Some(sys::register_group(child.id()));
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
            let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
            self.reaped();
        }
    }
}

/// How long a floor process waits for anything before it gives up (exit
/// 70): a lost message ends the run with an error, never hangs it.
const GIVE_UP: Duration = Duration::from_secs(30);

/// Ends this process (exit 70) after [`GIVE_UP`], whatever it is blocked in.
fn watchdog() {
    std::thread::spawn(|| {
        std::thread::sleep(GIVE_UP);
        eprintln!("cmapp-bench: a floor process waited {GIVE_UP:?} for its peer; giving up");
        std::process::exit(70);
    });
}

pub fn run(env: &Env, events: usize, runs: usize) -> Result<Floor, String> {
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
    let (mut run, mut ping, mut adds) = (
        Vec::with_capacity(runs),
        Vec::with_capacity(runs),
        Vec::with_capacity(runs),
    );
    for i in 0..runs + WARM_UP {
        let id = (events + i) as u32;
        // The spare, made ahead as ours is; not timed.
        let mut spare = Command::new(&env.bins.bench);
        spare
            .arg("floor-shim")
            .arg(&sock)
            .arg(id.to_string())
            .args(["spare", "/bin/true"]);
        let mut spare = Owned::spawn(spare)?;
        if spare.first_line()? != "ready" {
            return Err("the floor's spare shim did not register with its relay".into());
        }
        let timed = |mode: &str| -> Result<f64, String> {
            let mut c = Command::new(&env.bins.bench);
            c.args(["floor-mgr", &port, &id.to_string(), mode])
                .stdout(Stdio::null());
            let t0 = Instant::now();
            let status = c.status().map_err(|e| format!("cannot run the floor's manager: {e}"))?;
            let took = t0.elapsed().as_secs_f64();
            if !status.success() {
                return Err(format!("the floor's manager ({mode}) exited with {status}"));
            }
            Ok(took)
        };
        // Alternated, the order swapped every round, as in the one-shot run.
        let (r, p) = if i % 2 == 0 {
            let r = timed("run")?;
            (r, timed("ping")?)
        } else {
            let p = timed("ping")?;
            (timed("run")?, p)
        };
        let _ = spare.child.wait();
        spare.reaped();
        if i >= WARM_UP {
            run.push(r);
            ping.push(p);
            adds.push(r - p);
        }
    }
    for v in [&mut run, &mut ping, &mut adds] {
        v.sort_by(f64::total_cmp);
    }
    Ok(Floor {
        ns,
        direct_ns,
        run,
        ping,
        adds,
    })
}

/// Bare one-shot runs and pings not counted at the start.
const WARM_UP: usize = 3;

/// One exit through the relay (`Some((relay's port, its socket))`) or
/// straight from the application's parent to the manager (`None`).
fn event(env: &Env, dir: &Path, i: usize, code: i32, relay: Option<(&str, &Path)>) -> Result<u64, String> {
    let fifo = dir.join(format!("go-{i}"));
    let out = dir.join(format!("t-{i}"));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)
        .map_err(|e| format!("mkfifo {}: {e}", fifo.display()))?;
    let mut mgr = Command::new(&env.bins.bench);
    match relay {
        Some((port, _)) => mgr.args(["floor-mgr", port, &i.to_string(), "wait"]),
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
        .args(["now", "exit-now"])
        .arg(&fifo)
        .arg(&out)
        .arg(code.to_string());
    let mut shim = Owned::spawn(shim)?;
    if relay.is_some() && shim.first_line()? != "ready" {
        return Err("the floor's shim did not register with its relay".into());
    }
    std::thread::sleep(GAP);
    trigger_fifo(&fifo, || {
        let s = mgr.child.try_wait().ok().flatten()?;
        Some(format!(
            "the floor's manager exited ({s}) before its application could be triggered"
        ))
    })?;
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

type Registry<S> = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u32, S>>>;

/// `cmapp-bench floor-relay SOCKET`: prints its TCP port, then relays.
///
/// - A manager connects over TCP and sends its id (4 bytes); once it is
///   registered the relay answers `k`. It may then send `r` (run): the
///   relay sends `g` (go) to the shim registered under that id.
/// - A shim connects to SOCKET and sends its id; the relay answers `k`.
///   When its application has ended it sends the code (4 bytes), which the
///   relay sends, as one byte, to the manager registered under its id.
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
    let managers: Registry<TcpStream> = Default::default();
    let shims: Registry<UnixStream> = Default::default();
    let (m_reg, s_reg) = (managers.clone(), shims.clone());
    // One thread per connection, blocked in read: the one wake-up a relay
    // costs per message. An entry leaves its registry when its connection's
    // part is done.
    std::thread::spawn(move || {
        for m in tcp.incoming() {
            let Ok(mut m) = m else {
                eprintln!("cmapp-bench floor-relay: accept failed: {}", m.unwrap_err());
                std::process::exit(71);
            };
            let (managers, shims) = (m_reg.clone(), s_reg.clone());
            std::thread::spawn(move || {
                let _ = m.set_nodelay(true);
                let Some(id) = enroll(&mut m, TcpStream::try_clone, &managers) else {
                    return;
                };
                let mut req = [0u8; 1];
                if m.read_exact(&mut req).is_ok() && req == *b"r" {
                    let shim = shims.lock().unwrap().remove(&id);
                    if let Some(mut shim) = shim {
                        let _ = shim.write_all(b"g");
                    }
                    // The code comes back through the shim's thread, which
                    // takes this manager out of the registry.
                    return;
                }
                // A ping, or a manager gone.
                managers.lock().unwrap().remove(&id);
            });
        }
    });
    println!("{}", addr.port());
    let _ = std::io::stdout().flush();
    for shim in unix.incoming() {
        let Ok(mut shim) = shim else {
            eprintln!("cmapp-bench floor-relay: accept failed: {}", shim.unwrap_err());
            return 71;
        };
        let (managers, shims) = (managers.clone(), shims.clone());
        std::thread::spawn(move || {
            let Some(id) = enroll(&mut shim, UnixStream::try_clone, &shims) else {
                return;
            };
            let mut code = [0u8; 4];
            let ended = shim.read_exact(&mut code).is_ok();
            shims.lock().unwrap().remove(&id);
            if !ended {
                return;
            }
            // A manager not registered (gone) gets nothing: it gives up by
            // itself (`watchdog`), and the harness says so.
            let m = managers.lock().unwrap().remove(&id);
            if let Some(mut m) = m {
                let _ = m.write_all(&[i32::from_le_bytes(code) as u8]);
            }
        });
    }
    0
}

/// The relay's side of a registration: reads the peer's id, files a clone
/// of its connection under it, and answers `k`. `None` if the peer went.
fn enroll<S: Read + Write>(s: &mut S, try_clone: fn(&S) -> std::io::Result<S>, registry: &Registry<S>) -> Option<u32> {
    let mut id = [0u8; 4];
    s.read_exact(&mut id).ok()?;
    let id = u32::from_le_bytes(id);
    registry.lock().unwrap().insert(id, try_clone(s).ok()?);
    if s.write_all(b"k").is_err() {
        registry.lock().unwrap().remove(&id);
        return None;
    }
    Some(id)
}

/// The peer's side: sends `id` and waits for the relay's `k`.
fn register(s: &mut impl ReadWrite, id: u32) -> std::io::Result<()> {
    s.write_all(&id.to_le_bytes())?;
    s.read_exact(&mut [0u8; 1])
}

/// `cmapp-bench floor-mgr PORT ID MODE`: registers ID with the relay, then
/// - `wait`: says `ready` and exits with the code the relay sends;
/// - `ping`: exits 0 (its registration was the round trip);
/// - `run`: asks the relay to start the spare shim's program, and exits
///   with its code.
///
/// `floor-mgr listen ID`: says `ready PORT` and exits with the code the
/// first connection to PORT sends.
pub fn manager(args: &[String]) -> i32 {
    watchdog();
    match args {
        [l, _] if l == "listen" => {
            let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
                return 71;
            };
            let Ok(addr) = l.local_addr() else {
                return 71;
            };
            println!("ready {}", addr.port());
            let _ = std::io::stdout().flush();
            let mut code = [0u8; 1];
            match l.accept().map(|(mut s, _)| s.read_exact(&mut code)) {
                Ok(Ok(())) => i32::from(code[0]),
                _ => 69,
            }
        }
        [port, id, mode] => {
            let (Ok(port), Ok(id)) = (port.parse::<u16>(), id.parse::<u32>()) else {
                return 64;
            };
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                eprintln!("cmapp-bench floor-mgr: cannot connect to the relay");
                return 69;
            };
            let _ = s.set_nodelay(true);
            if register(&mut s, id).is_err() {
                return 69;
            }
            match mode.as_str() {
                "ping" => return 0,
                "wait" => {
                    println!("ready");
                    let _ = std::io::stdout().flush();
                }
                "run" => {
                    if s.write_all(b"r").is_err() {
                        return 69;
                    }
                }
                _ => return 64,
            }
            let mut code = [0u8; 1];
            match s.read_exact(&mut code) {
                Ok(()) => i32::from(code[0]),
                Err(_) => 69,
            }
        }
        _ => {
            eprintln!("usage: cmapp-bench floor-mgr PORT ID wait|ping|run, or floor-mgr listen ID");
            64
        }
    }
}

/// `cmapp-bench floor-shim TO ID MODE PROGRAM ARGS...`: connects to the
/// relay's SOCKET (TO; it registers ID there and says `ready`) or to the
/// manager listening on `tcp:PORT`, starts the program (`now`: at once;
/// `spare`: when the relay says go), waits for it, and sends its code.
pub fn shim(args: &[String]) -> i32 {
    watchdog();
    let [to, id, mode, program, program_args @ ..] = args else {
        eprintln!("usage: cmapp-bench floor-shim SOCKET|tcp:PORT ID now|spare PROGRAM ARGS...");
        return 64;
    };
    let Ok(id) = id.parse::<u32>() else {
        return 64;
    };
    let mut peer: Box<dyn ReadWrite> = match to.strip_prefix("tcp:").map(str::parse::<u16>) {
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
    if !direct {
        if register(&mut peer, id).is_err() {
            return 69;
        }
        println!("ready");
        let _ = std::io::stdout().flush();
    }
    if mode == "spare" {
        let mut go = [0u8; 1];
        if peer.read_exact(&mut go).is_err() {
            return 69;
        }
    }
    let mut cmd = if program == "exit-now" {
        // The latency run's application: this binary in that role.
        let Ok(me) = std::env::current_exe() else {
            return 71;
        };
        let mut c = Command::new(me);
        c.arg("exit-now");
        c
    } else {
        Command::new(program)
    };
    let child = cmd.args(program_args).stdin(Stdio::null()).spawn();
    let Ok(mut child) = child else {
        return 71;
    };
    let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(255);
    let sent = if direct {
        peer.write_all(&[code as u8])
    } else {
        peer.write_all(&code.to_le_bytes())
    };
    if sent.is_err() {
        return 69;
    }
    0
}

/// A stream either way: a Unix or a TCP socket.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
