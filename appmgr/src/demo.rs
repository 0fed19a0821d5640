//! `cmappmgr demo`: the whole path on loopback with nothing set up.
//!
//! Makes throwaway pinned key material in a temporary directory, starts the
//! `cmappserver` that sits next to this binary on 127.0.0.1, runs a sample
//! application through a real `cmappmgr` (this binary, as a child, exactly
//! as a cluster would run it), shows its output and exit code, and cleans up.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Why the demo could not run (the sample application's own exit is not an error).
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("cannot find this program")]
    NoExe,
    #[error("{} not found next to cmappmgr (build the whole workspace: cargo build --workspace)", path.display())]
    Missing { path: PathBuf },
    #[error("cannot make a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error(transparent)]
    Keys(#[from] certs::CertError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {}: {source}", program.display())]
    Start {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read cmappserver's log: {0}")]
    ServerLog(#[source] std::io::Error),
    #[error("cmappserver exited before listening")]
    ServerExited,
}

impl DemoError {
    /// `cmappmgr demo`'s exit code when it could not show the path.
    fn exit_code(&self) -> i32 {
        1
    }
}

fn sibling(name: &str) -> Result<PathBuf, DemoError> {
    let me = common::exe::path().ok_or(DemoError::NoExe)?;
    let path = me.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(DemoError::Missing { path })
    }
}

fn write_keys(dir: &Path) -> Result<(), DemoError> {
    let server = certs::self_signed(certs::Role::Server, &["127.0.0.1".into()])?;
    let client = certs::self_signed(certs::Role::Client, &["demo-host".into()])?;
    certs::write_private(&dir.join("server.private"), &server.private_pem, true)?;
    certs::write_public(&dir.join("server.public"), &server.public_pem, true)?;
    certs::write_private(&dir.join("client.private"), &client.private_pem, true)?;
    certs::write_public(&dir.join("client.public"), &client.public_pem, true)?;
    Ok(())
}

fn write(path: &Path, text: String) -> Result<(), DemoError> {
    std::fs::write(path, text).map_err(|source| DemoError::Write {
        path: path.into(),
        source,
    })
}

/// The demo's private directory (mode 0700, made fresh: an existing path is
/// never reused), removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let base = std::env::temp_dir();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last = None;
        for attempt in 0..16u32 {
            let dir = base.join(format!("cmappmgr-demo-{}-{stamp:x}-{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(TempDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn main() -> i32 {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cmappmgr demo: {e}");
            e.exit_code()
        }
    }
}

fn run() -> Result<i32, DemoError> {
    let tmp = TempDir::new().map_err(DemoError::TempDir)?;
    let dir = tmp.0.as_path();
    let server_bin = sibling("cmappserver")?;
    println!("demo: throwaway keys in {}", dir.display());
    write_keys(dir)?;
    let server_conf = dir.join("cmappserver.conf");
    write(
        &server_conf,
        format!(
            "keyStore={0}/server.private\ntrustStore={0}/client.public\nlisten=127.0.0.1:0\nstateDir={0}/state\n",
            dir.display()
        ),
    )?;
    let mgr_conf = dir.join("cmappmgr.conf");
    write(
        &mgr_conf,
        format!(
            "keyStore={0}/client.private\ntrustStore={0}/server.public\n",
            dir.display()
        ),
    )?;

    let mut server = Command::new(&server_bin)
        .arg("--conf")
        .arg(&server_conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DemoError::Start {
            program: server_bin.clone(),
            source,
        })?;
    let mut log = BufReader::new(server.stderr.take().expect("piped"));
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() {
        line.clear();
        if log.read_line(&mut line).map_err(DemoError::ServerLog)? == 0 {
            return Err(DemoError::ServerExited);
        }
        print!("  guest | {line}");
        addr = line.split("listening on ").nth(1).map(|a| a.trim().to_string());
    }
    let addr = addr.unwrap_or_default();
    // Keep echoing the server's log in the background.
    std::thread::spawn(move || {
        for l in log.lines().map_while(Result::ok) {
            println!("  guest | {l}");
        }
    });

    let app = "echo hello from the guest; echo this goes to stderr >&2; sleep 1; exit 3";
    println!("demo: cmappmgr -node {addr} -cmappserver_timeout 10 -service /bin/sh -c '{app}'");
    let manager = common::exe::reexec();
    let status = Command::new(&manager)
        .args(["-node", &addr, "-cmappserver_timeout", "10", "--conf"])
        .arg(&mgr_conf)
        .args(["--no_syslog", "-service", "/bin/sh", "-c", app])
        .status()
        .map_err(|source| DemoError::Start {
            program: manager.clone(),
            source,
        })?;
    let code = status.code().unwrap_or(1);
    println!("demo: cmappmgr exited with {code}: the application's own exit code, reported the moment it ended");

    let _ = kill(Pid::from_raw(server.id() as i32), Signal::SIGTERM);
    let _ = server.wait();
    println!("demo: done (cmappserver stopped, keys removed)");
    Ok(if code == 3 { 0 } else { 1 })
}
