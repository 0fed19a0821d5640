//! Where an application's output goes: kept in the guest (a size-capped,
//! rotated file per service), its last lines to the package log with the
//! exit, every line only on request and within a rate limit, and
//! `cmappmgr logs` to read the guest's file from the host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cmapp_tests::fixture::Fixture;
use cmapp_tests::mgr::Mgr;
use cmapp_tests::{wait_until, WAIT};
use nix::sys::signal::Signal;

/// The guest's output directory of a fixture's server (see `Server::start_with`).
fn output_dir(f: &Fixture) -> PathBuf {
    f.dir.join("output")
}

/// Every file in `dir` with its size.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Bytes cmappmgr wrote to its stdout and stderr (the package log).
fn package_log_bytes(m: &Mgr) -> usize {
    m.out
        .snapshot()
        .iter()
        .chain(m.err.snapshot().iter())
        .map(|l| l.len() + 1)
        .sum()
}

fn status_json(f: &Fixture) -> serde_json::Value {
    let conf = f.conf.to_str().unwrap();
    let node = f.server.node();
    let mut s = Mgr::spawn_args(&["status", "--node", &node, "--conf", conf, "--json", "--no_syslog"]);
    assert_eq!(s.code(), 0, "{}", s.err.text());
    serde_json::from_str(&s.out.text()).unwrap()
}

#[test]
fn a_hundred_megabytes_of_output_stay_in_the_guest_within_the_cap() {
    let f = Fixture::new("outputLogSize=1M\noutputLogFiles=3\n");
    // 100 MiB in lines of 1000 bytes, then last words on stderr.
    let run = "yes \"$(printf '%0999d' 7)\" | head -c 104857600; echo 'last words: giving up' >&2; exit 5";
    let mut m = f.mgr(&["/bin/sh", "-c", run]);
    assert_eq!(m.code_within(Duration::from_secs(300)), 5, "{}", m.err.text());
    let host = package_log_bytes(&m);
    assert!(host < 64 << 10, "the package log got {host} bytes");
    assert!(m.err.contains("last words: giving up"), "{}", m.err.text());
    assert!(m.err.contains("PROGRAM EXIT CODE 5"), "{}", m.err.text());

    let dir = output_dir(&f);
    let listed = files(&dir);
    assert!(!listed.is_empty() && listed.len() <= 3, "{listed:?}");
    for (name, size) in &listed {
        assert!(*size <= 1 << 20, "{name} is {size} bytes");
        assert!(name.starts_with("bin_sh_-c_yes_"), "{name}");
    }
    let current = listed
        .iter()
        .find(|(n, _)| n.ends_with(".log"))
        .expect("the current file");
    let text = std::fs::read_to_string(dir.join(&current.0)).unwrap();
    assert!(
        text.lines().any(|l| l.len() == 999 && l.ends_with('7')),
        "the application's lines"
    );
    println!(
        "100 MiB written: package log {host} bytes; guest files {listed:?}; {} lines in the package log",
        m.out.snapshot().len() + m.err.snapshot().len()
    );
}

#[test]
fn the_last_lines_of_a_failing_application_are_in_the_package_log() {
    let f = Fixture::new("");
    let run =
        "i=1; while [ $i -le 100 ]; do echo \"step $i\"; i=$((i+1)); done; echo 'fatal: cannot open /db' >&2; exit 3";
    let mut m = f.mgr(&["/bin/sh", "-c", run]);
    assert_eq!(m.code(), 3, "{}", m.err.text());
    let err = m.err.snapshot();
    let header = err
        .iter()
        .position(|l| l.contains("last 20 lines of output"))
        .unwrap_or_else(|| panic!("no tail header in {err:?}"));
    let fatal = err
        .iter()
        .position(|l| l == "fatal: cannot open /db")
        .expect("the error line");
    let exit = err
        .iter()
        .position(|l| l.contains("PROGRAM EXIT CODE 3"))
        .expect("exit line");
    assert!(header < fatal && fatal < exit, "{err:?}");
    // The default tail is 20 lines: steps 82-100 and the error.
    assert!(
        m.out.contains("step 82") && m.out.contains("step 100"),
        "{}",
        m.out.text()
    );
    assert!(!m.out.contains("step 81"), "more than the tail: {}", m.out.text());

    // Configurable on the guest; a failed start says why.
    let f = Fixture::new("outputTail=2\n");
    let mut m = f.mgr(&["/bin/sh", "-c", run]);
    assert_eq!(m.code(), 3);
    assert!(
        m.out.contains("step 100") && !m.out.contains("step 99"),
        "{}",
        m.out.text()
    );
    let mut m = f.mgr(&["/nonexistent/app"]);
    assert_eq!(m.code(), 127);
    assert!(m.err.contains("No such file or directory"), "{}", m.err.text());
}

#[test]
fn forwarding_on_request_keeps_to_its_rate_limit_and_says_what_it_dropped() {
    let f = Fixture::new("");
    let conf = f.mgr_conf("forward.conf", "forwardOutput=yes\nforwardLinesPerSecond=50\n");
    let run =
        "i=0; while [ $i -lt 5000 ]; do echo \"line $i\"; i=$((i+1)); done; sleep 1.5; echo after-the-pause; exit 0";
    let t0 = Instant::now();
    let mut m = Mgr::spawn(&conf, &f.server.node(), 10.0, &[], &["/bin/sh", "-c", run]);
    assert_eq!(m.code_within(Duration::from_secs(60)), 0, "{}", m.err.text());
    let secs = t0.elapsed().as_secs_f64();
    let forwarded = m.out.snapshot().iter().filter(|l| l.starts_with("line ")).count();
    // The bucket starts full (one second's worth) and refills at 50/s.
    let bound = 50.0 * (secs + 1.0);
    assert!(
        forwarded > 10 && (forwarded as f64) <= bound,
        "{forwarded} lines forwarded in {secs:.1} s (limit 50/s)"
    );
    assert!(
        m.out.contains("line 0") && m.out.contains("after-the-pause"),
        "{}",
        m.out.text()
    );
    let summaries: Vec<String> = m
        .err
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("output lines not forwarded: over the rate limit of 50 lines/s"))
        .collect();
    let count = |needle: &str| -> usize {
        m.err
            .snapshot()
            .iter()
            .filter(|l| l.contains(needle))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap())
            .sum()
    };
    let dropped = count("output lines not forwarded: over the rate limit");
    // Lines lost on the way (a queue from the shim, or to cmappmgr, was full) are said too.
    let unread = count("output lines dropped:");
    assert!(dropped > 0, "{summaries:?}");
    assert!(
        (5000..=5001).contains(&(forwarded + dropped + unread)),
        "{forwarded} forwarded + {dropped} over the limit + {unread} unread: {summaries:?}"
    );
    assert!(!m.err.contains("last 20 lines"), "no tail when every line is forwarded");

    // The byte limit: 1000-byte lines at 4 KiB/s (the command-line option).
    let conf = f.mgr_conf("bytes.conf", "forwardBytesPerSecond=4K\n");
    let run = "yes \"$(printf '%0999d' 1)\" | head -n 400; sleep 1; exit 0";
    let t0 = Instant::now();
    let mut m = Mgr::spawn(
        &conf,
        &f.server.node(),
        10.0,
        &["-forward_output"],
        &["/bin/sh", "-c", run],
    );
    assert_eq!(m.code_within(Duration::from_secs(60)), 0, "{}", m.err.text());
    let secs = t0.elapsed().as_secs_f64();
    let forwarded = m.out.snapshot().iter().filter(|l| l.len() == 999).count();
    assert!(
        (forwarded as f64) <= 4.096 * (secs + 1.0) + 1.0 && forwarded > 0,
        "{forwarded} lines of 1000 bytes in {secs:.1} s (limit 4 KiB/s)"
    );
    assert!(m.err.contains("bytes/s; the guest's log has them"), "{}", m.err.text());
}

#[test]
fn logs_shows_the_guests_lines_with_tail_and_follow() {
    let f = Fixture::new("");
    let run = [
        "/bin/sh",
        "-c",
        "i=0; while true; do echo \"tick $i\"; i=$((i+1)); sleep 0.05; done",
    ];
    let app = f.mgr(&run);
    app.err.wait_for("started", WAIT).unwrap();
    let file_has = |n: &str| {
        files(&output_dir(&f)).iter().any(|(name, _)| {
            std::fs::read_to_string(output_dir(&f).join(name)).is_ok_and(|t| t.lines().any(|l| l == n))
        })
    };
    assert!(wait_until(WAIT, || file_has("tick 10")), "{:?}", files(&output_dir(&f)));
    let conf = f.conf.to_str().unwrap();
    let node = f.server.node();
    let mut args = vec!["logs", "-node", &node, "--conf", conf, "--no_syslog", "--tail", "3"];
    args.extend(run);
    let mut tail = Mgr::spawn_args(&args);
    assert_eq!(tail.code(), 0, "{}", tail.err.text());
    let lines = tail.out.snapshot();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let n: Vec<u64> = lines
        .iter()
        .map(|l| l.strip_prefix("tick ").unwrap().parse().unwrap())
        .collect();
    assert!(n[2] >= 10 && n[1] == n[0] + 1 && n[2] == n[1] + 1, "{lines:?}");

    // Options come before the run string (which is taken as written).
    let mut args = vec!["logs", "-node", &node, "--conf", conf, "--no_syslog", "--follow"];
    args.extend(run);
    let follow = Mgr::spawn_args(&args);
    let later = format!("tick {}", n[2] + 20);
    follow
        .out
        .wait_for(&later, WAIT)
        .unwrap_or_else(|| panic!("{}\n{}", follow.out.text(), follow.err.text()));
    follow.signal(Signal::SIGTERM);

    // A service the guest does not know has no log to read.
    let mut none = Mgr::spawn_args(&[
        "logs",
        "-node",
        &node,
        "--conf",
        conf,
        "--no_syslog",
        "/bin/nothing-here",
    ]);
    assert_eq!(none.code(), 1);
    assert!(none.err.contains("cannot read"), "{}", none.err.text());
    app.signal(Signal::SIGTERM);

    // status says where the output goes.
    let v = status_json(&f);
    let output = v[0]["output"].as_str().unwrap();
    assert!(output.contains(&output_dir(&f).display().to_string()), "{output}");
    assert_eq!(v[0]["log_dropped"], 0);
}

/// The guest file of the service named `name`, made by a first short run of it.
fn file_of(f: &Fixture, name: &str) -> PathBuf {
    let mut first = f.mgr_with(&["-name", name], &["/bin/sh", "-c", "echo first"]);
    assert_eq!(first.code(), 0, "{}", first.err.text());
    let dir = output_dir(f);
    let listed = files(&dir);
    let (file, _) = listed
        .iter()
        .find(|(n, _)| n.starts_with(&format!("{name}-")) && n.ends_with(".log"))
        .unwrap_or_else(|| panic!("no file for {name} in {listed:?}"));
    dir.join(file)
}

/// A service that writes `lines` lines, then creates `marker`, then sleeps:
/// the marker proves the application was not held up by its output.
fn writer_then_marker(lines: u32, marker: &Path) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("seq 1 {lines}; touch {}; exec sleep 1000", marker.display()),
    ]
}

/// Waits until `status --json` counts at least `n` lines not written to the guest's log.
fn wait_log_dropped(f: &Fixture, n: u64) -> u64 {
    let mut last = 0;
    let reached = wait_until(Duration::from_secs(30), || {
        last = status_json(f)[0]["log_dropped"].as_u64().unwrap_or(0);
        last >= n
    });
    assert!(reached, "only {last} lines counted as dropped: {}", status_json(f));
    last
}

#[test]
fn fast_output_on_a_healthy_disk_is_kept_whole_in_the_guest() {
    // As fast as a program can write: every line must reach the file (the
    // shim's reading waits for its writer instead of dropping lines).
    let f = Fixture::new("outputLogSize=1G\n");
    let n = 500_000;
    let mut m = f.mgr(&["/bin/sh", "-c", &format!("seq 1 {n}; exit 0")]);
    assert_eq!(m.code_within(Duration::from_secs(300)), 0, "{}", m.err.text());
    let dir = output_dir(&f);
    let path = dir.join(&files(&dir)[0].0);
    let mut text = String::new();
    let complete = wait_until(WAIT, || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        text.ends_with(&format!("\n{n}\n")) || text.contains("[cmappserver:")
    });
    let lines: Vec<&str> = text.lines().collect();
    let notes: Vec<&&str> = lines.iter().filter(|l| l.starts_with("[cmappserver:")).collect();
    assert!(complete && notes.is_empty(), "{} lines; notes {notes:?}", lines.len());
    assert_eq!(lines.len(), n, "lines lost on a healthy disk");
    assert!(
        lines.iter().enumerate().all(|(i, l)| *l == (i + 1).to_string()),
        "lines out of order"
    );
    assert!(
        !f.server.log.contains("not written to the guest's log"),
        "{}",
        f.server.log.text()
    );
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Tmpfs {
        cmapp_tests::require_root("mounts a small tmpfs to fill");
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "cmapp-full"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount -t tmpfs -o {options} {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_drops_and_counts_lines_and_blocks_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let full = Tmpfs::mount(&tmp.path().join("full"), "size=256k,mode=0750");
    // Filled to the last block.
    let mut filler = std::fs::File::create(full.0.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    use std::io::Write;
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);
    let f = Fixture::new(&format!("outputLogDir={}\n", full.0.display()));
    let marker = tmp.path().join("written");
    let run = writer_then_marker(20_000, &marker);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let mut m = f.mgr_with(&["-stop_on_halt"], &run);
    m.err.wait_for("started", WAIT).unwrap();
    assert!(
        wait_until(WAIT, || marker.exists()),
        "the application is held up by a full disk"
    );
    // Every line dropped and counted, and the count logged.
    assert_eq!(wait_log_dropped(&f, 20_000), 20_000);
    let line = f
        .server
        .log
        .wait_for("not written to the guest's log", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));
    assert!(line.contains("20000"), "{line}");
    let mut table = Mgr::spawn_args(&[
        "status",
        "--node",
        &f.server.node(),
        "--conf",
        f.conf.to_str().unwrap(),
        "--no_syslog",
    ]);
    assert_eq!(table.code(), 0);
    assert!(table.out.contains("output: file "), "{}", table.out.text());
    assert!(
        table
            .out
            .snapshot()
            .iter()
            .any(|l| l.split_whitespace().nth(4) == Some("20000")),
        "the DROPPED column: {}",
        table.out.text()
    );
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(m.err.contains("stopped on request"), "{}", m.err.text());
}

#[test]
fn a_stuck_disk_drops_and_counts_lines_and_blocks_nothing() {
    // A FIFO nobody reads in place of the file: the writer's open(2) never
    // returns, as on a disk that stopped answering.
    let f = Fixture::new("");
    let path = file_of(&f, "stuck-disk");
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let marker = f.dir.join("written");
    let run = writer_then_marker(20_000, &marker);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let mut m = f.mgr_with(&["-name", "stuck-disk", "-stop_on_halt"], &run);
    m.err.wait_for("started", WAIT).unwrap();
    assert!(
        wait_until(WAIT, || marker.exists()),
        "the application is held up by a stuck disk"
    );
    // What did not fit the writer's queue is dropped and counted.
    let dropped = wait_log_dropped(&f, 20_000 - 4096 - 1);
    assert!(dropped <= 20_000, "{dropped}");
    f.server
        .log
        .wait_for("not written to the guest's log", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));
    m.signal(Signal::SIGTERM);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    // The writer thread, stuck in open(2), ends with its shim.
}

#[test]
fn an_output_file_that_is_a_link_is_not_followed() {
    let f = Fixture::new("");
    let path = file_of(&f, "linked");
    let target = f.dir.join("elsewhere");
    std::fs::write(&target, "").unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let mut m = f.mgr_with(&["-name", "linked"], &["/bin/sh", "-c", "seq 1 100; exit 0"]);
    assert_eq!(m.code(), 0, "{}", m.err.text());
    assert!(m.err.contains("PROGRAM EXIT CODE 0"), "{}", m.err.text());
    let line = f
        .server
        .log
        .wait_for("not written to the guest's log", WAIT)
        .unwrap_or_else(|| panic!("{}", f.server.log.text()));
    assert!(line.contains("100"), "{line}");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "",
        "written through the link"
    );
    assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
}

/// Issue 14: an idle shim's memory is multiplied by the number of processes,
/// so the guest log's writer thread starts only with the first line. Its
/// shim runs one thread while the application is silent, two once it has
/// written, and the line reaches the file.
#[test]
fn a_silent_application_costs_its_shim_no_writer_thread_until_its_first_line() {
    let f = Fixture::new("");
    let go = f.dir.join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let wrote = f.dir.join("wrote");
    let run = format!(
        "read x < {}; echo first words; touch {}; exec sleep 1000",
        go.display(),
        wrote.display()
    );
    let mut m = f.mgr_with(&["-stop_on_halt"], &["/bin/sh", "-c", &run]);
    let app = cmapp_tests::mgr::pid_in(&m.expect_line("started", WAIT));
    let shim = f
        .server
        .recorded()
        .into_iter()
        .find(|r| r.pid == app)
        .expect("a pid record for the application")
        .shim_pid;
    assert_eq!(cmapp_tests::usage(shim).threads, 1, "a silent application's shim");
    // The application writes its first line.
    std::fs::write(&go, "go\n").unwrap();
    assert!(wait_until(WAIT, || wrote.exists()), "the application did not go on");
    let dir = output_dir(&f);
    let in_file = wait_until(WAIT, || {
        files(&dir)
            .first()
            .is_some_and(|(name, _)| std::fs::read_to_string(dir.join(name)).is_ok_and(|t| t == "first words\n"))
    });
    assert!(in_file, "the line is not in the guest's log: {:?}", files(&dir));
    assert_eq!(
        cmapp_tests::usage(shim).threads,
        2,
        "the writer runs once there is output"
    );
    m.signal(Signal::SIGTERM);
    assert!(m.status_within(WAIT).is_some(), "cmappmgr did not stop");
}
