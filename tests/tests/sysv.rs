//! The SysV init script (`packaging/sysv/cmappserver`), run as an init
//! system would run it, against the debug cmappserver: LSB actions and exit
//! codes, readiness through the pid file, and the applications untouched by
//! stop and restart. (The packaged copy runs as root in tests/tests/packages.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;

use cmapp_tests::keys::{self, Keys};
use cmapp_tests::mgr::{pid_in, Mgr};
use cmapp_tests::{alive, WAIT};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/sysv/cmappserver")
}

struct Init {
    dir: PathBuf,
    conf: PathBuf,
    pidfile: PathBuf,
    port: u16,
    apps: Vec<u32>,
    _tmp: tempfile::TempDir,
}

/// A free port on 127.0.0.1 (the init script cannot report one chosen at bind time).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Init {
    fn new(keys: impl FnOnce(&Path) -> Option<Keys>) -> Init {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let port = free_port();
        let conf = dir.join("cmappserver.conf");
        let mut text = format!("listen=127.0.0.1:{port}\nstateDir={}\n", dir.join("state").display());
        match keys(&dir) {
            Some(k) => text.push_str(&format!(
                "keyStore={}\ntrustStore={}\n",
                k.server_private.display(),
                k.server_trust.display()
            )),
            None => text.push_str(&format!(
                "keyStore={0}/server.private\ntrustStore={0}/client.public\n",
                dir.display()
            )),
        }
        std::fs::write(&conf, text).unwrap();
        Init {
            pidfile: dir.join("cmappserver.pid"),
            dir,
            conf,
            port,
            apps: Vec::new(),
            _tmp: tmp,
        }
    }

    /// Runs the script with an action; its exit code and output.
    fn run(&self, action: &str) -> (i32, String) {
        let out = Command::new("/bin/sh")
            .arg(script())
            .arg(action)
            .env("DAEMON", cmapp_tests::bin("cmappserver"))
            .env("CONF", &self.conf)
            .env("PIDFILE", &self.pidfile)
            .env("START_TIMEOUT", WAIT.as_secs().to_string())
            .output()
            .unwrap();
        let text = cmapp_tests::stdout_and_stderr(&out);
        (out.status.code().unwrap_or(-1), text)
    }

    fn daemon(&self) -> u32 {
        std::fs::read_to_string(&self.pidfile)
            .unwrap_or_else(|e| panic!("no pid file {}: {e}", self.pidfile.display()))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for &app in &self.apps {
            let _ = killpg(Pid::from_raw(app as i32), Signal::SIGKILL);
        }
    }
}

#[test]
fn lsb_actions_and_exit_codes_and_the_applications_survive_stop_and_restart() {
    let mut keys = None;
    let mut init = Init::new(|d| {
        keys = Some(keys::pinned(d, ""));
        keys.clone()
    });
    let keys = keys.unwrap();
    let mgr_conf = keys::manager_conf(&init.dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");

    assert_eq!(init.run("status"), (3, "cmappserver: not running\n".into()));
    assert_eq!(init.run("stop").0, 0, "stopping a stopped service succeeds");

    let (code, out) = init.run("start");
    assert_eq!(code, 0, "{out}");
    // Ready when start returns: the pid file is there and managers connect.
    let first = init.daemon();
    assert!(alive(first));
    std::net::TcpStream::connect(("127.0.0.1", init.port)).expect("listening once start returns");
    let (code, out) = init.run("status");
    assert_eq!((code, out), (0, format!("cmappserver: running (pid {first})\n")));
    let (code, out) = init.run("start");
    assert_eq!(
        (code, out),
        (0, format!("cmappserver: already running (pid {first})\n"))
    );

    // An application, monitored.
    let node = format!("127.0.0.1:{}", init.port);
    let mut m = Mgr::spawn(&mgr_conf, &node, 30.0, &[], &["/bin/sleep", "600"]);
    let app = pid_in(&m.err.wait_for("started", WAIT).expect("started"));
    init.apps.push(app);

    // restart and force-reload: a new daemon, the same application, and the
    // manager stays attached through it.
    for action in ["restart", "force-reload", "try-restart"] {
        let before = init.daemon();
        let (code, out) = init.run(action);
        assert_eq!(code, 0, "{action}: {out}");
        let after = init.daemon();
        assert_ne!(before, after, "{action} started a new daemon");
        assert!(!alive(before), "{action} stopped the old daemon");
        assert!(alive(app), "{action} left the application running");
        assert!(m.running(), "{action}: the manager is still attached");
    }

    // stop: the daemon goes, the application stays; try-restart then does nothing.
    let daemon = init.daemon();
    let (code, out) = init.run("stop");
    assert_eq!((code, out.as_str()), (0, "cmappserver: stopped\n"));
    assert!(!alive(daemon));
    assert!(!init.pidfile.exists());
    assert!(alive(app), "stop left the application running");
    assert_eq!(init.run("status").0, 3);
    assert_eq!(init.run("try-restart"), (0, "cmappserver: not running\n".into()));

    // A stale pid file naming another process: "dead", and stop kills nothing.
    let mut other = Command::new("/bin/sleep").arg("600").spawn().unwrap();
    std::fs::write(&init.pidfile, format!("{}\n", other.id())).unwrap();
    assert_eq!(init.run("status").0, 1);
    assert_eq!(init.run("stop").0, 0);
    assert!(alive(other.id()), "stop signalled a process that is not cmappserver");
    other.kill().unwrap();
    other.wait().unwrap();

    // Start again: the new daemon adopts the application, the manager follows.
    assert_eq!(init.run("start").0, 0);
    assert!(m.running());
    assert_eq!(init.run("stop").0, 0);

    assert_eq!(init.run("reload").0, 7, "reload of a stopped daemon: not running");
    assert_eq!(init.run("bogus").0, 2);
    assert_eq!(init.run("").0, 2);
    m.kill9();
}

#[test]
fn start_without_keys_is_not_configured_and_says_how_to_make_them() {
    let init = Init::new(|_| None);
    let (code, out) = init.run("start");
    assert_eq!(code, 6, "LSB: program is not configured; {out}");
    assert!(out.contains("cmappserver keygen"), "{out}");
    assert!(out.contains("cmappmgr keygen"), "{out}");
    assert!(!init.pidfile.exists());
    assert_eq!(init.run("status").0, 3);
}
