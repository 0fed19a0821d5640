//! A hostile guest user, for the tests of the guest-local attack surface
//! (run as an unprivileged user with `setpriv`, or as root for the
//! same-user cases). Each subcommand tries one thing and says on stdout how
//! it went; the exit code is 0 when the attempt succeeded, 3 when it was
//! refused (denied, closed), 2 on bad usage.
//!
//! ```text
//! cmapp-hostile stop <sock>                  connect to a shim socket, read its hello, send Stop
//! cmapp-hostile hold <sock>                  connect to a shim socket and read (steal) its events until closed
//! cmapp-hostile listen <path> <pid>          pose as a shim: answer every connection with a v1 hello naming pid
//! cmapp-hostile symlink <link> <target>      plant a symlink
//! cmapp-hostile plant <procs> <server-pid> <target>
//!                                            plant symlinks at the record ids the server would use next
//! cmapp-hostile forge <procs> <victim-pid>   write a record whose pid.json names the victim's process group
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        ["stop", sock] => stop(Path::new(sock)),
        ["hold", sock] => hold(Path::new(sock)),
        ["listen", path, pid] => listen(Path::new(path), pid.parse().unwrap_or(0)),
        ["symlink", link, target] => std::os::unix::fs::symlink(target, link).map_err(|e| e.to_string()),
        ["plant", procs, pid, target] => plant(Path::new(procs), pid.parse().unwrap_or(0), Path::new(target)),
        ["forge", procs, victim] => forge(Path::new(procs), victim.parse().unwrap_or(0)),
        _ => {
            eprintln!("usage: see the source");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => {
            println!("done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("refused: {e}");
            ExitCode::from(3)
        }
    }
}

fn read_frame(s: &mut UnixStream) -> Result<String, String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .map_err(|e| format!("closed before a frame: {e}"))?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).map_err(|e| format!("closed in a frame: {e}"))?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn write_frame(s: &mut UnixStream, body: &str) -> Result<(), String> {
    let mut buf = (body.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(body.as_bytes());
    s.write_all(&buf).map_err(|e| format!("write: {e}"))
}

fn connect(sock: &Path) -> Result<UnixStream, String> {
    let s = UnixStream::connect(sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    Ok(s)
}

fn stop(sock: &Path) -> Result<(), String> {
    let mut s = connect(sock)?;
    let hello = read_frame(&mut s)?;
    println!("hello: {hello}");
    write_frame(&mut s, r#"{"type":"stop","grace_ms":0}"#)?;
    // The shim closes the connection when it has gone; wait for that.
    while read_frame(&mut s).is_ok() {}
    Ok(())
}

fn hold(sock: &Path) -> Result<(), String> {
    let mut s = connect(sock)?;
    s.set_read_timeout(None).ok();
    println!("connected");
    let mut frames = 0;
    loop {
        match read_frame(&mut s) {
            Ok(f) => {
                frames += 1;
                println!("frame: {f}");
            }
            Err(e) if frames == 0 => return Err(e),
            Err(_) => return Ok(()),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Ids were `{ms:x}-{server pid:x}-{seq:x}`: cover the next 20 s and the first sequence numbers.
fn plant(procs: &Path, server_pid: u32, target: &Path) -> Result<(), String> {
    let from = now_ms();
    let mut planted = 0;
    for ms in from..from + 20_000 {
        for seq in 0..2u64 {
            let link = procs.join(format!("{ms:x}-{server_pid:x}-{seq:x}"));
            std::os::unix::fs::symlink(target, &link).map_err(|e| format!("symlink {}: {e}", link.display()))?;
            planted += 1;
        }
    }
    println!("planted {planted}");
    Ok(())
}

/// A process record naming the victim, as its own shim would have written it
/// (start tick included), with a shim that is gone.
fn forge(procs: &Path, victim: u32) -> Result<(), String> {
    let ticks = common::proc::start_ticks(victim).ok_or("no start tick")?;
    let dir = procs.join("forged");
    std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let meta = format!(
        r#"{{"id":"forged","key":"forged","run":["/bin/true"],"argv":["/bin/true"],"name":null,"probe":null,"created_at_ms":{}}}"#,
        now_ms()
    );
    let pid = format!(
        r#"{{"pid":{victim},"started_at_ms":{},"shim_pid":0,"start_ticks":{ticks}}}"#,
        now_ms()
    );
    std::fs::write(dir.join("meta.json"), meta).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("pid.json"), pid).map_err(|e| e.to_string())?;
    Ok(())
}

/// Listens at `path` as if it were a shim, and answers every connection with
/// a v1 hello naming `pid`; says on stdout what it was asked.
fn listen(path: &Path, pid: u32) -> Result<(), String> {
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    println!("listening");
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let hello = format!(r#"{{"type":"hello","protocol":1,"pid":{pid},"started_at_ms":1}}"#);
        if write_frame(&mut s, &hello).is_err() {
            continue;
        }
        println!("said hello");
        while let Ok(frame) = read_frame(&mut s) {
            println!("asked: {frame}");
        }
    }
    Ok(())
}
