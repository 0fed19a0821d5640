//! The state directory and the shim protocol are versioned formats: a
//! cmappserver of version N adopts the records and the running shims that
//! version N-1 left behind (an upgrade in place, applications untouched).
//! These tests hold the current code to the formats recorded from v1 (see
//! `appserver/FORMATS.md` and `tests/fixtures/golden/v1/`):
//!
//! * a recorded state directory (processes that exited with a code and by a
//!   signal, each with its `exit.json`, and a running one whose shim is gone)
//!   is adopted, and each recorded status is handed to the manager that
//!   re-attaches (the lost one as 70);
//! * a stand-in v1 shim replays the recorded frames, byte for byte, to a
//!   current server, which understands them and sends a stop request that
//!   the frozen v1 types decode;
//! * records a current server writes still decode as v1.
//!
//! `record_golden` (ignored) re-records the fixtures from the current code
//! when a format version is bumped:
//! `CMAPP_GOLDEN_RECORD=/tmp/v2 cargo nextest run -p cmapp-tests --test golden --run-ignored only`.

use std::path::{Path, PathBuf};

use cmapp_tests::golden::{
    self, FakeShim, FrameLog, Peer, V1ExitRecord, V1Meta, V1PidRecord, V1ShimEvent, V1ShimRequest, FIXTURE_PID,
    FIXTURE_SHIM_PID,
};
use cmapp_tests::keys::{self, Keys};
use cmapp_tests::mgr::{pid_in, Mgr};
use cmapp_tests::server::Server;
use cmapp_tests::{wait_until, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The server configuration the conversation was recorded with.
const RECORDED_CONF: &str = "stopProcessesOnShutdown=yes\nstopGracePeriod=5\n";

/// Fields drop in order: the server before the directory holding its state.
struct Fixture {
    server: Server,
    conf: PathBuf,
    /// Every exited record (an exit code, a signal).
    exited: Vec<Record>,
    running: Record,
    _tmp: tempfile::TempDir,
}

/// One recorded process, as found in the copied state directory.
struct Record {
    dir: PathBuf,
    meta: V1Meta,
}

impl Record {
    fn run(&self) -> Vec<&str> {
        self.meta.run.iter().map(String::as_str).collect()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not v1: {e}\n{text}", path.display()))
}

/// Copies the recorded v1 state directory into a fresh server directory and
/// starts a current cmappserver over it, on the recorded boot (so that the
/// records are not cleared as belonging to an earlier boot). `before_start`
/// runs once the records are in place (to put a stand-in shim at a `sock`).
fn fixture(extra: &str, before_start: impl FnOnce(&Record)) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let keys: Keys = keys::pinned(&dir, "");
    let conf = keys::manager_conf(&dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    let srv = dir.join("srv");
    let state = srv.join("state");
    copy_tree(&golden::fixtures("v1").join("state"), &state);
    let boot_id = std::fs::read_to_string(state.join("boot_id")).unwrap();

    let mut exited = Vec::new();
    let mut running = None;
    for e in std::fs::read_dir(state.join("procs")).unwrap() {
        let dir = e.unwrap().path();
        let meta: V1Meta = read(&dir.join("meta.json"));
        let pid: V1PidRecord = read(&dir.join("pid.json"));
        assert!(
            pid.pid > 4_194_304 && pid.shim_pid > 4_194_304,
            "fixture pids must not exist"
        );
        let r = Record { dir: dir.clone(), meta };
        if dir.join("exit.json").exists() {
            exited.push(r);
        } else {
            running = Some(r);
        }
    }
    assert!(
        exited.len() >= 2,
        "the v1 state has an exited record per kind of status"
    );
    let running = running.expect("a running record");
    before_start(&running);
    let server = Server::start_with(
        &srv,
        &keys,
        extra,
        cmapp_tests::bin("cmappserver"),
        None,
        vec![("CMAPPSERVER_BOOT_ID".into(), boot_id.trim().to_string())],
    );
    Fixture {
        server,
        conf,
        exited,
        running,
        _tmp: tmp,
    }
}

impl Fixture {
    fn mgr(&self, run: &[&str]) -> Mgr {
        Mgr::spawn(&self.conf, &self.server.node(), 10.0, &[], run)
    }
}

#[test]
fn a_current_server_adopts_v1_records_and_hands_out_their_exit_codes() {
    let f = fixture("", |_| {});
    let mut kinds = Vec::new();
    for exited in &f.exited {
        let recorded: V1ExitRecord = read(&exited.dir.join("exit.json"));
        let code = match recorded.status {
            golden::V1ExitStatus::Code(c) => c,
            golden::V1ExitStatus::Signal(s) => 128 + s,
            other => panic!("no exited record of this kind in v1: {other:?}"),
        };
        kinds.push(code);
        // The manager re-attaching gets the recorded status, and
        // acknowledging it removes the record.
        let mut m = f.mgr(&exited.run());
        assert_eq!(m.code(), code, "{}", m.err.text());
        assert!(m.err.contains(&format!("PROGRAM EXIT CODE {code}")), "{}", m.err.text());
        assert!(
            wait_until(WAIT, || !exited.dir.exists()),
            "the acknowledged v1 record was not removed"
        );
    }
    kinds.sort();
    assert_eq!(kinds, [3, 137], "the recorded exits: code 3, signal 9");

    // The running one, whose shim is gone: its status is lost (70), not
    // invented, and nothing is signalled (the recorded pids cannot exist).
    let mut m = f.mgr(&f.running.run());
    assert_eq!(m.code(), 70, "{}", m.err.text());
    assert!(m.err.contains("PROGRAM EXIT CODE 70"), "{}", m.err.text());

    // What the current server records for a new process still reads as v1:
    // a server rolled back to v1 adopts it.
    let flag = f.server.state_dir.join("go");
    let mut m = f.mgr(&[
        "/bin/sh",
        "-c",
        &format!("while [ ! -e {} ]; do sleep 0.05; done; exit 9", flag.display()),
    ]);
    let pid = pid_in(&m.expect_line("started", WAIT));
    let rec = f
        .server
        .recorded()
        .into_iter()
        .find(|r| r.pid == pid)
        .expect("recorded");
    let dir = f.server.state_dir.join("procs").join(&rec.id);
    let meta: V1Meta = read(&dir.join("meta.json"));
    assert_eq!(meta.id, rec.id);
    let p: V1PidRecord = read(&dir.join("pid.json"));
    assert_eq!(p.pid, pid);
    std::fs::write(&flag, "").unwrap();
    assert!(
        wait_until(WAIT, || dir.join("exit.json").exists() || !dir.exists()),
        "no exit record"
    );
    if dir.join("exit.json").exists() {
        let e: V1ExitRecord = read(&dir.join("exit.json"));
        assert_eq!(e.status, golden::V1ExitStatus::Code(9));
    }
    assert_eq!(m.code(), 9, "{}", m.err.text());
}

#[test]
fn a_current_server_speaks_the_v1_shim_protocol() {
    let frames = golden::conversation("v1");
    let hello = frames
        .iter()
        .find(|f| f.from == Peer::Shim)
        .expect("the conversation opens with the shim's hello")
        .body
        .clone();
    let V1ShimEvent::Hello { protocol: 1, pid, .. } = serde_json::from_str(&hello).expect("v1 hello") else {
        panic!("the first shim frame is not a v1 hello: {hello}");
    };
    assert_eq!(pid, FIXTURE_PID);

    let mut shim = None;
    let mut f = fixture(RECORDED_CONF, |running| {
        shim = Some(FakeShim::listen(&running.dir.join("sock"), &hello));
    });
    let shim = shim.unwrap();
    shim.wait_connected(WAIT);
    f.server
        .log
        .wait_for("re-attached to running process", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));

    // A manager re-attaches to the adopted process, by its run string.
    let m = f.mgr(&f.running.run());
    let line = m.expect_line("attached to running", WAIT);
    assert!(line.contains(&format!("(pid {FIXTURE_PID})")), "{line}");
    assert_eq!(
        FIXTURE_SHIM_PID,
        read::<V1PidRecord>(&f.running.dir.join("pid.json")).shim_pid
    );

    // Replay the rest of the conversation in its recorded order.
    let mut stopped = false;
    for frame in frames.iter().skip_while(|f| f.body != hello).skip(1) {
        match frame.from {
            Peer::Shim => {
                let ev: V1ShimEvent = serde_json::from_str(&frame.body).expect("a v1 shim event");
                if let V1ShimEvent::Exited { status, exited_at_ms } = &ev {
                    // A shim records the exit on disk before it says so.
                    let rec = V1ExitRecord {
                        status: status.clone(),
                        exited_at_ms: *exited_at_ms,
                    };
                    std::fs::write(f.running.dir.join("exit.json"), serde_json::to_vec(&rec).unwrap()).unwrap();
                }
                shim.send(&frame.body);
                // Output before the stop reaches the attached manager.
                if let (V1ShimEvent::Output { stream, line }, false) = (&ev, stopped) {
                    let lines = match stream {
                        golden::V1Stream::Stdout => &m.out,
                        golden::V1Stream::Stderr => &m.err,
                    };
                    assert!(
                        lines.wait_for(line, WAIT).is_some(),
                        "the manager did not print {line:?}; stdout:\n{}\nstderr:\n{}",
                        m.out.text(),
                        m.err.text()
                    );
                }
            }
            Peer::Server => {
                // The recorded request came from a maintenance stop with
                // stopProcessesOnShutdown=yes: do the same.
                if !stopped {
                    kill(Pid::from_raw(f.server.pid() as i32), Signal::SIGTERM).unwrap();
                    stopped = true;
                }
                let got = shim
                    .next_received(WAIT)
                    .unwrap_or_else(|| panic!("the server sent no request; log:\n{}", f.server.log.text()));
                let got_v1: V1ShimRequest = serde_json::from_str(&got)
                    .unwrap_or_else(|e| panic!("a v1 shim cannot decode the server's request {got}: {e}"));
                let want: V1ShimRequest = serde_json::from_str(&frame.body).unwrap();
                assert_eq!(got_v1, want, "server sent {got}, v1 recorded {}", frame.body);
            }
        }
    }
    assert!(stopped, "the recorded conversation has no request from the server");
    shim.close();
    let status = f.server.term();
    assert!(status.success(), "{status:?}; log:\n{}", f.server.log.text());
    let log = f.server.log.text();
    let Some(V1ShimEvent::Exited { status, .. }) = frames
        .iter()
        .filter_map(|f| serde_json::from_str::<V1ShimEvent>(&f.body).ok())
        .find(|e| matches!(e, V1ShimEvent::Exited { .. }))
    else {
        panic!("the recorded conversation has no exit");
    };
    let golden::V1ExitStatus::Code(code) = status else {
        panic!("recorded exit is not a code: {status:?}")
    };
    assert!(log.contains(&format!("exit code {code}")), "{log}");
    assert!(!log.contains("exit status lost"), "{log}");
}

/// Re-records the fixtures of the current formats into `$CMAPP_GOLDEN_RECORD`
/// (a new version's directory), from real binaries: a real state directory,
/// and the frames a real server and a real shim exchange through a proxy put
/// at the shim's socket. Pids are replaced by [`FIXTURE_PID`] and friends.
#[test]
#[ignore = "records fixtures: CMAPP_GOLDEN_RECORD=DIR cargo nextest run -p cmapp-tests --test golden --run-ignored only"]
fn record_golden() {
    let out = PathBuf::from(std::env::var("CMAPP_GOLDEN_RECORD").expect("set CMAPP_GOLDEN_RECORD to the output dir"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = keys::pinned(dir, "");
    let conf = keys::manager_conf(dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    let mut server = Server::start(&dir.join("srv"), &keys, RECORDED_CONF);
    let (fx, fy, fz) = (dir.join("fx"), dir.join("fy"), dir.join("fz"));
    let run_x = format!("while [ ! -e {} ]; do sleep 0.05; done; exit 3", fx.display());
    let run_z = format!("while [ ! -e {} ]; do sleep 0.05; done; kill -9 $$", fz.display());
    let run_y = format!(
        "trap 'echo v1 stopping; exit 7' TERM; while [ ! -e {} ]; do sleep 0.05; done; \
         echo v1 stdout line; echo v1 stderr line >&2; while :; do sleep 0.05; done",
        fy.display()
    );
    let mut mx = Mgr::spawn(&conf, &server.node(), 30.0, &[], &["/bin/sh", "-c", &run_x]);
    let mut my = Mgr::spawn(&conf, &server.node(), 30.0, &[], &["/bin/sh", "-c", &run_y]);
    let mut mz = Mgr::spawn(&conf, &server.node(), 30.0, &[], &["/bin/sh", "-c", &run_z]);
    let px = pid_in(&mx.expect_line("started", WAIT));
    let pz = pid_in(&mz.expect_line("started", WAIT));
    let py = pid_in(&my.expect_line("started", WAIT));
    let record = |pid: u32| {
        let r = server.recorded().into_iter().find(|r| r.pid == pid).unwrap();
        (server.state_dir.join("procs").join(&r.id), r)
    };
    let (dx, rx) = record(px);
    let (dy, ry) = record(py);
    let (dz, rz) = record(pz);
    let read_text = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let y_files = (read_text(dy.join("meta.json")), read_text(dy.join("pid.json")));
    mx.kill9();
    my.kill9();
    mz.kill9();
    std::fs::write(&fx, "").unwrap();
    std::fs::write(&fz, "").unwrap();
    assert!(wait_until(WAIT, || dx.join("exit.json").exists() && dz.join("exit.json").exists()));
    server.kill9();

    // The conversation of an adoption, through a recording proxy.
    std::fs::rename(dy.join("sock"), dy.join("sock.real")).unwrap();
    let log = FrameLog::default();
    log.proxy(&dy.join("sock"), &dy.join("sock.real"));
    server.restart(None);
    assert!(log.wait_for("\"hello\"", WAIT));
    let m = Mgr::spawn(&conf, &server.node(), 30.0, &[], &["/bin/sh", "-c", &run_y]);
    m.expect_line("attached to running", WAIT);
    std::fs::write(&fy, "").unwrap();
    assert!(log.wait_for("v1 stderr line", WAIT));
    server.term();
    assert!(log.wait_for("\"exited\"", WAIT));

    let sanitize = |text: &str, pid: u32, shim: u32, new_pid: u32, new_shim: u32| {
        text.replace(&format!("\"pid\":{pid},"), &format!("\"pid\":{new_pid},"))
            .replace(&format!("\"shim_pid\":{shim},"), &format!("\"shim_pid\":{new_shim},"))
    };
    let state = out.join("state");
    let procs = state.join("procs");
    let (ox, oy) = (procs.join(&rx.id), procs.join(&ry.id));
    std::fs::create_dir_all(&ox).unwrap();
    std::fs::create_dir_all(&oy).unwrap();
    std::fs::write(state.join("lock"), "").unwrap();
    std::fs::copy(server.state_dir.join("boot_id"), state.join("boot_id")).unwrap();
    std::fs::copy(dx.join("meta.json"), ox.join("meta.json")).unwrap();
    std::fs::copy(dx.join("exit.json"), ox.join("exit.json")).unwrap();
    let (xp, xs) = (FIXTURE_PID + 2, FIXTURE_SHIM_PID + 2);
    std::fs::write(
        ox.join("pid.json"),
        sanitize(&read_text(dx.join("pid.json")), rx.pid, rx.shim_pid, xp, xs),
    )
    .unwrap();
    let oz = procs.join(&rz.id);
    std::fs::create_dir_all(&oz).unwrap();
    std::fs::copy(dz.join("meta.json"), oz.join("meta.json")).unwrap();
    std::fs::copy(dz.join("exit.json"), oz.join("exit.json")).unwrap();
    std::fs::write(
        oz.join("pid.json"),
        sanitize(
            &read_text(dz.join("pid.json")),
            rz.pid,
            rz.shim_pid,
            FIXTURE_PID + 4,
            FIXTURE_SHIM_PID + 4,
        ),
    )
    .unwrap();
    std::fs::write(oy.join("meta.json"), &y_files.0).unwrap();
    std::fs::write(
        oy.join("pid.json"),
        sanitize(&y_files.1, ry.pid, ry.shim_pid, FIXTURE_PID, FIXTURE_SHIM_PID),
    )
    .unwrap();
    let mut text = String::from(
        "# A v1 shim conversation, recorded from real binaries: a cmappserver adopting a running\n\
         # shim, a manager attaching, two output lines, a maintenance stop with\n\
         # stopProcessesOnShutdown=yes and stopGracePeriod=5. One frame per line, in order:\n\
         # `shim <json>` (shim to server) or `server <json>`; on the wire each is a big-endian\n\
         # u32 length followed by the JSON bytes. The pid is replaced by an impossible one.\n",
    );
    for f in log.frames() {
        let who = match f.from {
            Peer::Shim => "shim",
            Peer::Server => "server",
        };
        text.push_str(&format!(
            "{who} {}\n",
            sanitize(&f.body, ry.pid, ry.shim_pid, FIXTURE_PID, FIXTURE_SHIM_PID)
        ));
    }
    std::fs::write(out.join("shim-conversation.txt"), text).unwrap();
    eprintln!("recorded into {}", out.display());
}
