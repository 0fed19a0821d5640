//! The zygote: one idle copy of this binary that forks the spare shims.
//!
//! Exec'ing a shim costs the loader's work every time (mapping the binary
//! and libc, relocating them, starting Rust's runtime), and leaves each shim
//! with its own dirty copy of every page that work wrote: about a third of a
//! shim's private memory. The server therefore starts, once, `cmappserver
//! zygote PAD` (its own binary, as for a shim) and asks it for each spare;
//! the zygote `fork`s, and the child runs [`shim::main`] on the spare's
//! directory exactly as an exec'd shim would. Its loader-written pages stay
//! shared with the zygote and with every other shim until written.
//!
//! The zygote is single-threaded and runs no runtime, so `fork` in it is
//! sound; it is the one `unsafe` call in the workspace (see [`fork`]).
//!
//! What a forked shim inherits is the zygote's, never the server's: the
//! zygote is exec'd fresh, reads no configuration and holds no key, so no
//! shim carries a copy of the server's TLS keys. One thing is shared that
//! exec'd shims did not share: the address-space layout (ASLR is drawn at
//! exec), the same in every shim of one zygote. A shim's inputs are its
//! socket (only root's or the server's uid may connect) and its
//! application's output; the applications themselves are exec'd and get
//! a layout (and a stack canary) of their own.
//!
//! The conversation runs on a `SOCK_SEQPACKET` socket pair (the zygote's
//! stdin), one request at a time:
//!
//! - request: the spare's directory (the message's bytes), with the write
//!   end of a pipe (`SCM_RIGHTS`) that becomes the shim's stdout, on which
//!   it says `listening` as an exec'd shim does on its piped stdout;
//! - reply: 8 bytes, `errno` (0: forked) and the pid, with a pidfd of the
//!   new shim when forked. The server watches and kills it by that pidfd, so
//!   a pid reused after the zygote reaped it is never signalled.
//!
//! The zygote reaps its children (the shims) whenever it wakes, at least
//! once a second, and exits when the server's end closes: a server that
//! dies takes its zygote with it. A spare shim's parent is the zygote, so a
//! spare whose zygote is gone discards itself as it does when its server is
//! gone (`shim::wait_for_start`). A filed shim does not care: it is adopted
//! by the next server as before. Whatever goes wrong with the zygote (an
//! old kernel without pidfds, a zygote killed by someone), the server falls
//! back to exec'ing the shim ([`launch`](super::launch)): in the same
//! directory when nothing was forked ([`Failed::NotAsked`],
//! [`Failed::Refused`]), in a new one when the answer was lost after the
//! request went out ([`Failed::Lost`]: a shim may run for the first, which
//! is removed so that it discards itself). A zygote that answers is kept;
//! one that did not is dropped, and killed, and the next spare starts
//! another. A spare it forked that the server has not yet connected to
//! watches the zygote as its parent: a zygote killed by someone in that
//! instant costs that spare (and a launch that was waiting for it fails
//! with "process supervisor failed", as when a spare itself is killed).
//!
//! The child's command line is rewritten to `<exe> shim <dir>` (within the
//! zygote's own argument area, which `PAD` makes long enough), so that `ps`
//! and the tools that look for shims see what an exec'd shim shows.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The zygote's first argument (`cmappserver zygote PAD`).
pub const ARG: &str = "zygote";

/// How long the server waits for the zygote's reply to one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest request: a spare's directory path.
const MAX_REQUEST: usize = 4096;

/// The server's handle on its zygote, started on first use.
#[derive(Debug, Default)]
pub(super) struct Zygote {
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// Set for good once the zygote said it cannot work here (no pidfds,
    /// SIGCHLD ignored): every shim is exec'd from then on.
    unsupported: AtomicBool,
}

#[derive(Debug)]
struct Conn {
    /// Killed when dropped (a zygote that stopped answering).
    _process: tokio::process::Child,
    sock: AsyncFd<OwnedFd>,
}

/// A shim the zygote forked.
#[derive(Debug)]
pub(super) struct Forked {
    pub pid: u32,
    pub pidfd: OwnedFd,
    /// Its stdout, on which it says `listening`.
    pub hello: tokio::net::unix::pipe::Receiver,
}

impl Zygote {
    /// True once the zygote cannot be used on this system at all.
    pub(super) fn is_unsupported(&self) -> bool {
        self.unsupported.load(Ordering::Relaxed)
    }

    /// Has the zygote (started now if none runs) fork a shim for `dir`.
    /// `exe` is the argv\[0\] shims show; the zygote's room for the shims'
    /// command lines is sized for `dir`. A zygote that answered (a shim, or
    /// an errno) is kept; one that could not be asked or did not answer is
    /// dropped (and killed), and the next call starts another.
    ///
    /// Cancellation-safe: the connection is taken out of its slot for the
    /// request and put back only once the reply has been read, so a caller
    /// dropped between the request and the reply drops (and kills) the
    /// zygote with it, and no later request can read that reply as its own.
    pub(super) async fn fork(&self, exe: &Path, dir: &Path) -> Result<Forked, Failed> {
        let mut slot = self.conn.lock().await;
        let conn = match slot.take() {
            Some(conn) => conn,
            None => start(exe, dir).map_err(Failed::NotAsked)?,
        };
        let failed = match tokio::time::timeout(REPLY_TIMEOUT, ask(&conn.sock, dir)).await {
            Ok(Ok(forked)) => {
                *slot = Some(conn);
                return Ok(forked);
            }
            Ok(Err(failed)) => failed,
            Err(_) => Failed::Lost(io::Error::new(
                io::ErrorKind::TimedOut,
                "the zygote did not answer in time",
            )),
        };
        if let Failed::Refused(e) = &failed {
            if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::ENOTSUP)) {
                self.unsupported.store(true, Ordering::Relaxed);
            }
            // It answered: it is in step with us, and fine for the next request.
            *slot = Some(conn);
        }
        Err(failed)
    }
}

/// Why the zygote forked no shim for the server.
#[derive(Debug)]
pub(super) enum Failed {
    /// It could not be started or asked: nothing was forked.
    NotAsked(io::Error),
    /// It said why not (an errno: no pidfds here, no room for the command
    /// line, fork failed): nothing was forked.
    Refused(io::Error),
    /// The request went out and no usable answer came back: a shim may
    /// have been forked for the directory, which must not be used again.
    Lost(io::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::NotAsked(e) => write!(f, "cannot ask the zygote: {e}"),
            Failed::Refused(e) => write!(f, "the zygote could not fork: {e}"),
            Failed::Lost(e) => write!(f, "no answer from the zygote: {e}"),
        }
    }
}

use nix::libc;

/// Starts the zygote with room in its argument area for a shim's command
/// line about `dir` (plus 128 bytes for longer names later).
fn start(exe: &Path, dir: &Path) -> io::Result<Conn> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    rustix::io::ioctl_fionbio(&ours, true)?;
    let pad = " ".repeat(dir.as_os_str().len() + 128);
    let process = tokio::process::Command::new(common::exe::SELF)
        .arg0(exe)
        .args([ARG, &pad])
        .env_remove(crate::notify::ENV[0])
        .env_remove(crate::notify::ENV[1])
        .env_remove(crate::notify::ENV[2])
        .process_group(0)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    // An `OwnedFd` the `AsyncFd` owns: see `launch.rs` on the deprecation.
    #[allow(deprecated)]
    let sock = AsyncFd::with_interest(ours, Interest::READABLE | Interest::WRITABLE)?;
    Ok(Conn {
        _process: process,
        sock,
    })
}

/// One request and its reply (see the module documentation).
async fn ask(sock: &AsyncFd<OwnedFd>, dir: &Path) -> Result<Forked, Failed> {
    let (hello, stdout) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Failed::NotAsked(e.into()))?;
    {
        let fds = [stdout.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let request = [IoSlice::new(dir.as_os_str().as_bytes())];
        // A datagram: sent whole or not at all.
        sock.async_io(Interest::WRITABLE, |s| {
            Ok(rustix::net::sendmsg(s, &request, &mut control, SendFlags::NOSIGNAL)?)
        })
        .await
        .map_err(Failed::NotAsked)?;
    }
    // Only the zygote and its new child hold the write end now: the hello
    // pipe ends when the shim does, whatever happens to it.
    drop(stdout);
    let mut reply = [0u8; 8];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let (len, pidfd) = sock
        .async_io(Interest::READABLE, |s| {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = rustix::net::recvmsg(
                s,
                &mut [IoSliceMut::new(&mut reply)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )?;
            Ok((got.bytes, first_fd(&mut control)))
        })
        .await
        .map_err(Failed::Lost)?;
    if len != reply.len() {
        return Err(Failed::Lost(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the zygote is gone",
        )));
    }
    let errno = i32::from_le_bytes(reply[..4].try_into().expect("4 bytes"));
    let pid = u32::from_le_bytes(reply[4..].try_into().expect("4 bytes"));
    if errno != 0 {
        return Err(Failed::Refused(io::Error::from_raw_os_error(errno)));
    }
    let pidfd = pidfd.ok_or_else(|| Failed::Lost(io::Error::other("the zygote sent no pidfd")))?;
    match tokio::net::unix::pipe::Receiver::from_owned_fd(hello) {
        Ok(hello) => Ok(Forked { pid, pidfd, hello }),
        Err(e) => {
            // A shim we cannot hear from: it must not stay.
            let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
            Err(Failed::Lost(e))
        }
    }
}

/// The first descriptor a message carried (any others are closed).
fn first_fd(control: &mut RecvAncillaryBuffer<'_>) -> Option<OwnedFd> {
    let mut first = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                first.get_or_insert(fd);
            }
        }
    }
    first
}

/// Entry point of `cmappserver zygote PAD`; returns its exit code.
pub fn main() -> i32 {
    // What the server may have left open (it opens everything close-on-exec)
    // is not kept for the zygote's life: only the socket and stdio.
    super::shim::close_inherited_descriptors();
    let stdin = std::io::stdin();
    let sock = stdin.as_fd();
    // A second without a request is a chance to reap finished shims.
    if rustix::net::sockopt::set_socket_timeout(sock, rustix::net::sockopt::Timeout::Recv, Some(Duration::from_secs(1)))
        .is_err()
    {
        return 1;
    }
    let cannot = unsupported();
    // `ps` shows `<exe> zygote`, without the padding. An argument area that
    // cannot even hold that (unreadable, or none) means no shim's command
    // line can be written: ENOTSUP, and the server execs its shims.
    let title = Title::of_self().and_then(|t| Some((t.line(&[ARG.as_bytes()])?, t)));
    let title = title.map(|(line, t)| {
        t.set(&line);
        t
    });
    // Tests only (debug builds): gone after the first fork, before its answer.
    let mut lost = super::shim::test_fault("zygote-lost-first");
    serve(sock, |dir, stdout| {
        let answer = match (cannot, &title) {
            (Some(errno), _) => (errno, 0, None),
            (None, None) => (libc::ENOTSUP, 0, None),
            (None, Some(title)) => spawn(dir, stdout, title),
        };
        if std::mem::take(&mut lost) {
            std::process::exit(0);
        }
        answer
    })
}

/// Answers the requests on `sock` with what `spawn` (given the directory
/// and the stdout the request carried) returns, reaping ended children at
/// every wake-up, until the server's end closes (0) or fails (1).
fn serve(sock: BorrowedFd<'_>, mut spawn: impl FnMut(&Path, OwnedFd) -> (i32, u32, Option<OwnedFd>)) -> i32 {
    let mut request = vec![0u8; MAX_REQUEST];
    loop {
        reap();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut request)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let len = match got {
            // The server's end closed: the server is gone.
            Ok(got) if got.bytes == 0 => return 0,
            // No directory is that long (PATH_MAX): answered, not forked.
            Ok(got) if got.flags.contains(rustix::net::ReturnFlags::TRUNC) => usize::MAX,
            Ok(got) => got.bytes,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            Err(_) => return 1,
        };
        let stdout = first_fd(&mut control);
        let (errno, pid, pidfd) = match (request.get(..len), stdout) {
            (None, _) => (libc::ENAMETOOLONG, 0, None),
            (Some(_), None) => (libc::EINVAL, 0, None),
            (Some(dir), Some(stdout)) => spawn(Path::new(std::ffi::OsStr::from_bytes(dir)), stdout),
        };
        let mut reply = [0u8; 8];
        reply[..4].copy_from_slice(&errno.to_le_bytes());
        reply[4..].copy_from_slice(&pid.to_le_bytes());
        let fds: Vec<BorrowedFd<'_>> = pidfd.iter().map(|fd| fd.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(&fds));
        }
        if rustix::net::sendmsg(sock, &[IoSlice::new(&reply)], &mut control, SendFlags::NOSIGNAL).is_err() {
            return 1;
        }
    }
}

/// Why this zygote cannot fork shims the server can watch safely, as an
/// errno: no pidfds (Linux < 5.3), or SIGCHLD ignored (inherited), which
/// would let the kernel reap a shim, and reuse its pid, before its pidfd
/// is taken.
fn unsupported() -> Option<i32> {
    if rustix::process::pidfd_open(rustix::process::getpid(), rustix::process::PidfdFlags::empty()).is_err() {
        return Some(libc::ENOSYS);
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    sigchld_ignored(&status).then_some(libc::ENOTSUP)
}

/// True when /proc/PID/status (`status`) says SIGCHLD is ignored.
fn sigchld_ignored(status: &str) -> bool {
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0);
    ignored & (1 << (libc::SIGCHLD - 1)) != 0
}

/// Reaps every shim that has ended.
fn reap() {
    // `wait` (any child), not `waitpid(None)`, which is any child of our
    // own process group, and each shim has its own.
    use rustix::process::{wait, WaitOptions};
    while let Ok(Some(_)) = wait(WaitOptions::NOHANG) {}
}

/// Forks a shim for `dir` with `stdout` as its stdout: (errno, pid, pidfd).
fn spawn(dir: &Path, stdout: OwnedFd, title: &Title) -> (i32, u32, Option<OwnedFd>) {
    let Some(cmdline) = title.for_shim(dir) else {
        return (libc::ENAMETOOLONG, 0, None);
    };
    match fork() {
        Err(e) => (e as i32, 0, None),
        Ok(None) => child(dir, stdout, title, &cmdline),
        Ok(Some(pid)) => {
            drop(stdout);
            // Our unreaped child (we reap only in `reap`, after this): the
            // pid is its own until then.
            let raw = rustix::process::Pid::from_raw(pid.as_raw()).expect("a child's pid is positive");
            match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
                Ok(fd) => (0, pid.as_raw() as u32, Some(fd)),
                Err(e) => {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    (e.raw_os_error(), 0, None)
                }
            }
        }
    }
}

/// `fork()`: `None` in the child, the child's pid in the parent.
#[allow(unsafe_code)]
fn fork() -> nix::Result<Option<nix::unistd::Pid>> {
    // SAFETY: the zygote is single-threaded (it runs no runtime and starts
    // no thread: `main` above is all it does), so no lock or state of
    // another thread can be left half-held in the child.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(None),
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child)),
    }
}

/// The forked child: becomes the shim for `dir`. Never returns.
fn child(dir: &Path, stdout: OwnedFd, title: &Title, cmdline: &[u8]) -> ! {
    // As an exec'd shim is started: its own process group, stdout the
    // hello pipe, stdin and stderr /dev/null.
    let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    let ok = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .and_then(|null| {
            nix::unistd::dup2_stdin(&null)?;
            nix::unistd::dup2_stdout(&stdout)?;
            nix::unistd::dup2_stderr(&null)?;
            Ok(())
        });
    drop(stdout);
    if ok.is_err() {
        std::process::exit(1);
    }
    title.set(cmdline);
    std::process::exit(super::shim::main(dir.to_path_buf()))
}

/// The zygote's argument area (`arg_start..arg_end` of /proc/self/stat),
/// which /proc/<pid>/cmdline shows, and its argv\[0\].
#[derive(Debug)]
struct Title {
    start: u64,
    len: usize,
    exe: Vec<u8>,
}

impl Title {
    fn of_self() -> Option<Title> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields 48 and 49 (arg_start, arg_end), counted after the
        // parenthesised command name, which may hold spaces.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(45);
        let start: u64 = fields.next()?.parse().ok()?;
        let end: u64 = fields.next()?.parse().ok()?;
        let exe = std::env::args_os().next()?.as_bytes().to_vec();
        Some(Title {
            start,
            len: usize::try_from(end.checked_sub(start)?).ok()?,
            exe,
        })
    }

    /// `<exe>\0shim\0<dir>\0`, padded with NULs to the area's length, if it fits.
    fn for_shim(&self, dir: &Path) -> Option<Vec<u8>> {
        self.line(&[b"shim", dir.as_os_str().as_bytes()])
    }

    /// `<exe>\0<args>\0...`, padded with NULs to the area's length, if it fits.
    fn line(&self, args: &[&[u8]]) -> Option<Vec<u8>> {
        let mut line = Vec::with_capacity(self.len);
        for part in std::iter::once(self.exe.as_slice()).chain(args.iter().copied()) {
            line.extend_from_slice(part);
            line.push(0);
        }
        (line.len() <= self.len).then(|| {
            line.resize(self.len, 0);
            line
        })
    }

    /// Writes `cmdline` over our argument area (through /proc/self/mem:
    /// the area is ours, and writing it needs no `unsafe`).
    fn set(&self, cmdline: &[u8]) {
        use std::os::unix::fs::FileExt;
        if let Ok(mem) = std::fs::OpenOptions::new().write(true).open("/proc/self/mem") {
            let _ = mem.write_all_at(cmdline, self.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_shims_command_line_fills_the_zygotes_argument_area_or_is_refused() {
        let title = Title {
            start: 0,
            len: 38,
            exe: b"/usr/sbin/cmappserver".to_vec(),
        };
        let line = title.for_shim(Path::new("/s/spare/x")).unwrap();
        assert_eq!(line.len(), 38);
        let args: Vec<&[u8]> = line.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
        assert_eq!(args, [&b"/usr/sbin/cmappserver"[..], b"shim", b"/s/spare/x"]);
        assert_eq!(title.for_shim(Path::new("/s/spare/xy")).map(|l| l.len()), None);
    }

    /// A zygote answering on the other end of a socket pair (in a thread)
    /// with `spawn` in place of a fork; its exit code when its socket closes.
    fn fake_zygote(
        spawn: impl FnMut(&Path, OwnedFd) -> (i32, u32, Option<OwnedFd>) + Send + 'static,
    ) -> (AsyncFd<OwnedFd>, std::thread::JoinHandle<i32>) {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let (ours, theirs) =
            socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
        rustix::io::ioctl_fionbio(&ours, true).unwrap();
        let zygote = std::thread::spawn(move || serve(theirs.as_fd(), spawn));
        #[allow(deprecated)]
        let sock = AsyncFd::with_interest(ours, Interest::READABLE | Interest::WRITABLE).unwrap();
        (sock, zygote)
    }

    #[tokio::test]
    async fn the_server_gets_the_pid_a_pidfd_and_the_shims_stdout_or_the_errno() {
        use tokio::io::AsyncBufReadExt;
        let (asked, seen) = std::sync::mpsc::channel();
        let (sock, zygote) = fake_zygote(move |dir, stdout| {
            asked.send(dir.to_path_buf()).unwrap();
            if dir == Path::new("/too/long") {
                return (libc::ENAMETOOLONG, 0, None);
            }
            // As a shim says it: on the stdout the request carried.
            std::fs::File::from(stdout).write_all(b"listening\n").unwrap();
            let me = rustix::process::getpid();
            (
                0,
                4242,
                Some(rustix::process::pidfd_open(me, rustix::process::PidfdFlags::empty()).unwrap()),
            )
        });
        let forked = ask(&sock, Path::new("/state/spare/a")).await.unwrap();
        assert_eq!(seen.recv().unwrap(), Path::new("/state/spare/a"));
        assert_eq!(forked.pid, 4242);
        let mut line = String::new();
        tokio::io::BufReader::new(forked.hello)
            .read_line(&mut line)
            .await
            .unwrap();
        assert_eq!(line, "listening\n");
        // The descriptor is a pidfd of the process the zygote named.
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", forked.pidfd.as_raw_fd())).unwrap();
        assert!(info.contains(&format!("Pid:\t{}\n", std::process::id())), "{info}");

        match ask(&sock, Path::new("/too/long")).await {
            Err(Failed::Refused(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG)),
            other => panic!("{other:?}"),
        }
        drop(sock);
        assert_eq!(
            zygote.join().unwrap(),
            0,
            "the zygote ends when the server's end closes"
        );
    }

    #[tokio::test]
    async fn a_request_longer_than_any_directory_is_refused_not_cut_short() {
        let (sock, zygote) = fake_zygote(|dir, _| panic!("forked for {}", dir.display()));
        let long = std::path::PathBuf::from(format!("/{}", "d".repeat(MAX_REQUEST + 10)));
        match ask(&sock, &long).await {
            Err(e @ Failed::Refused(_)) => {
                assert_eq!(
                    e.to_string(),
                    "the zygote could not fork: File name too long (os error 36)"
                )
            }
            other => panic!("{other:?}"),
        }
        drop(sock);
        assert_eq!(zygote.join().unwrap(), 0);
    }

    #[test]
    fn a_request_without_a_stdout_is_refused_and_the_zygote_goes_on() {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let (ours, theirs) =
            socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
        let zygote = std::thread::spawn(move || serve(theirs.as_fd(), |_, _| panic!("nothing to spawn")));
        for _ in 0..2 {
            rustix::net::send(&ours, b"/state/spare/a", SendFlags::empty()).unwrap();
            let mut reply = [0u8; 16];
            let n = rustix::net::recv(&ours, &mut reply, RecvFlags::empty()).unwrap().0;
            assert_eq!(n, 8);
            assert_eq!(i32::from_le_bytes(reply[..4].try_into().unwrap()), libc::EINVAL);
        }
        drop(ours);
        assert_eq!(zygote.join().unwrap(), 0);
    }

    /// A `Zygote` whose connection is to `fake_zygote(spawn)` (and whose
    /// process, killed with it, is a `sleep`).
    fn zygote_with(spawn: impl FnMut(&Path, OwnedFd) -> (i32, u32, Option<OwnedFd>) + Send + 'static) -> Zygote {
        let (sock, _) = fake_zygote(spawn);
        let process = tokio::process::Command::new("sleep")
            .arg("60")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Zygote {
            conn: tokio::sync::Mutex::new(Some(Conn {
                _process: process,
                sock,
            })),
            unsupported: AtomicBool::new(false),
        }
    }

    #[tokio::test]
    async fn a_zygote_that_answers_is_kept_one_that_cannot_work_here_given_up_and_a_lost_one_dropped() {
        let exe = Path::new("/usr/sbin/cmappserver");
        let dir = Path::new("/state/spare/a");
        for (errno, unsupported) in [
            (libc::ENOSYS, true),
            (libc::ENOTSUP, true),
            (libc::ENAMETOOLONG, false),
            (libc::EAGAIN, false),
        ] {
            let z = zygote_with(move |_, _| (errno, 0, None));
            match z.fork(exe, dir).await {
                Err(Failed::Refused(e)) => assert_eq!(e.raw_os_error(), Some(errno)),
                other => panic!("{other:?}"),
            }
            assert_eq!(z.is_unsupported(), unsupported, "errno {errno}");
            assert!(z.conn.lock().await.is_some(), "errno {errno}: it answered, it stays");
        }
        // Gone after the request went out (a crash): the directory may
        // have a shim, and the zygote is dropped.
        let z = zygote_with(|_, _| panic!("the zygote crashes"));
        match z.fork(exe, dir).await {
            Err(e @ Failed::Lost(_)) => assert_eq!(e.to_string(), "no answer from the zygote: the zygote is gone"),
            other => panic!("{other:?}"),
        }
        assert!(z.conn.lock().await.is_none());
        assert!(!z.is_unsupported());
    }

    #[tokio::test]
    async fn a_request_given_up_before_its_reply_takes_the_zygote_with_it() {
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (sock, zygote) = fake_zygote(move |_, _| {
            // The reply comes only after the caller has given up.
            let _ = hold.recv();
            (
                0,
                7,
                Some(
                    rustix::process::pidfd_open(rustix::process::getpid(), rustix::process::PidfdFlags::empty())
                        .unwrap(),
                ),
            )
        });
        let process = tokio::process::Command::new("sleep")
            .arg("60")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let z = Zygote {
            conn: tokio::sync::Mutex::new(Some(Conn {
                _process: process,
                sock,
            })),
            unsupported: AtomicBool::new(false),
        };
        let dir = Path::new("/state/spare/a");
        let given_up = tokio::time::timeout(Duration::from_millis(50), z.fork(Path::new("/x"), dir)).await;
        assert!(given_up.is_err(), "no reply yet");
        assert!(z.conn.lock().await.is_none(), "the connection went with the request");
        release.send(()).unwrap();
        assert_eq!(zygote.join().unwrap(), 1, "its reply found nobody: the zygote ends");
    }

    #[test]
    fn this_system_can_run_the_zygote_and_an_ignored_sigchld_is_seen() {
        assert_eq!(unsupported(), None);
        let status = |mask: &str| format!("Name:\tx\nSigBlk:\t0000000000010000\nSigIgn:\t{mask}\nSigCgt:\t0\n");
        assert!(sigchld_ignored(&status("0000000000010000")));
        assert!(sigchld_ignored(&status("0000000000011000")));
        assert!(!sigchld_ignored(&status("0000000000001000")));
        assert!(!sigchld_ignored(&status("0000000000000000")));
        assert!(!sigchld_ignored("Name:\tx\n"));
    }

    #[test]
    fn our_own_command_line_is_rewritten_in_place() {
        let title = Title::of_self().unwrap();
        let line = title.line(&[b"zygote"]).unwrap();
        title.set(&line);
        assert_eq!(std::fs::read("/proc/self/cmdline").unwrap(), line);
        assert!(title.line(&[&vec![b'x'; title.len]]).is_none(), "longer than the area");
    }

    #[test]
    fn our_own_argument_area_is_found() {
        let title = Title::of_self().unwrap();
        let raw = std::fs::read("/proc/self/cmdline").unwrap();
        assert_eq!(title.len, raw.len());
        assert!(raw.starts_with(&title.exe));
    }
}
