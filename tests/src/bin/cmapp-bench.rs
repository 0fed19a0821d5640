//! `cmapp-bench`: the benchmark suite (see BENCHMARKS.md).
//!
//! ```text
//! cargo build --release --workspace && target/release/cmapp-bench [--quick] [--strict] [--only SECTIONS]
//! ```
//!
//! It runs the release binaries found next to itself (cmappserver, cmappmgr)
//! on loopback, prints a Markdown table of figures against the targets, and
//! exits 0 when every measurement ran (a missed target is printed as MISSED;
//! with `--strict` it also makes the exit code 2), 1 when something is broken
//! (a manager exited with the wrong code, a server did not start, ...).
//! Everything it starts it stops, and all its files live in one temporary
//! directory.
//!
//! `cmapp-bench exit-now FIFO STAMP_FILE CODE` is the measured application
//! of the detection-latency run, and `floor-relay`, `floor-mgr` and
//! `floor-shim` are the processes of its floor (internal).

#[path = "../bench/mod.rs"]
mod bench;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bench::fixture::{Bins, Env, Server, ShmDir};
use bench::report::{mib, ms, Report};
use bench::{floor, footprint, handshake, latency, oneshot, report, roundtrip, scale, storm, sys};

const SECTIONS: &[&str] = &[
    "footprint",
    "latency",
    "floor",
    "roundtrip",
    "oneshot",
    "handshake",
    "scale",
    "storm",
];

/// How much of everything to do.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    strict: bool,
    only: Vec<String>,
    events: usize,
    runs: usize,
    handshake_window: Duration,
    handshake_tasks: usize,
    scale_n: usize,
    scale_window: Duration,
    scale_settle: Duration,
    storm_n: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                strict: false,
                only: Vec::new(),
                events: 50,
                runs: 20,
                handshake_window: Duration::from_secs(2),
                handshake_tasks: 8,
                scale_n: 100,
                scale_window: Duration::from_secs(10),
                scale_settle: Duration::from_secs(2),
                storm_n: 100,
            }
        } else {
            Plan {
                quick,
                strict: false,
                only: Vec::new(),
                events: 1000,
                runs: 200,
                handshake_window: Duration::from_secs(5),
                handshake_tasks: 8,
                scale_n: 1000,
                scale_window: Duration::from_secs(60),
                scale_settle: Duration::from_secs(5),
                storm_n: 1000,
            }
        }
    }

    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

const USAGE: &str = "usage: cmapp-bench [--quick] [--strict] [--only SECTION[,SECTION...]]
                   [--events N] [--processes N] [--window SECONDS]
  --quick      the CI size: 50 detection events, 20 round trips and one-shot runs each, 100 processes,
               10 s windows, a storm of 100
  --strict     exit 2 when a target is missed (default: print MISSED and exit 0)
  --only       run only these sections: footprint, latency, floor, roundtrip, oneshot, handshake, scale, storm
  --events     detection-latency events, and the floor's (default 1000, 50 with --quick)
  --processes  processes and managers of the scale and storm runs (default 1000, 100 with --quick)
  --window     seconds of steady state measured in the scale run (default 60, 10 with --quick)
Build first: cargo build --release --workspace (the bench runs the binaries next to it).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role: Option<fn(&[String]) -> i32> = match args.first().map(String::as_str) {
        Some("exit-now") => Some(latency::exit_now),
        Some("floor-relay") => Some(floor::relay),
        Some("floor-mgr") => Some(floor::manager),
        Some("floor-shim") => Some(floor::shim),
        _ => None,
    };
    if let Some(role) = role {
        std::process::exit(role(&args[1..]));
    }
    let plan = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(if e == USAGE { 0 } else { 64 });
        }
    };
    sys::install_signal_cleanup();
    sys::become_subreaper();
    let nofile = sys::raise_nofile();
    if nofile != 0 && (nofile as usize) < 4 * plan.scale_n + 256 && plan.wants("scale") {
        eprintln!("cmapp-bench: warning: the open-file limit is {nofile}; the scale run may hit it");
    }
    let started = Instant::now();
    let machine = report::machine();
    let load_before = report::loadavg();
    let mut results = Results::default();
    let outcome = run(&plan, &mut results);
    let report = build_report(&results);
    println!("\n{machine}");
    println!(
        "load average: {load_before} at the start, {} at the end\n",
        report::loadavg()
    );
    println!(
        "command: target/release/cmapp-bench{}\n",
        if plan.quick { " --quick" } else { "" }
    );
    print!("{}", report.render());
    println!("\ntotal time: {:.1} s", started.elapsed().as_secs_f64());
    sys::kill_everything();
    match outcome {
        Err(e) => {
            eprintln!("\ncmapp-bench: BROKEN: {e}");
            ExitCode::from(1)
        }
        Ok(()) if plan.strict && report.missed() > 0 => {
            eprintln!("cmapp-bench: {} target(s) missed", report.missed());
            ExitCode::from(2)
        }
        Ok(()) => ExitCode::SUCCESS,
    }
}

fn parse(args: &[String]) -> Result<Plan, String> {
    let mut quick = false;
    let mut strict = false;
    let mut only = Vec::new();
    let mut events = None;
    let mut processes = None;
    let mut window = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--strict" => strict = true,
            "--events" => events = Some(positive(it.next(), "--events")?),
            "--processes" => processes = Some(positive(it.next(), "--processes")?),
            "--window" => window = Some(Duration::from_secs(positive(it.next(), "--window")? as u64)),
            "--only" => {
                let list = it
                    .next()
                    .ok_or_else(|| format!("--only needs a list of sections\n{USAGE}"))?;
                for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !SECTIONS.contains(&s) {
                        return Err(format!("unknown section {s:?}\n{USAGE}"));
                    }
                    only.push(s.to_string());
                }
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let mut plan = Plan::new(quick);
    plan.strict = strict;
    plan.only = only;
    if let Some(n) = events {
        plan.events = n;
    }
    if let Some(n) = processes {
        plan.scale_n = n;
        plan.storm_n = n;
    }
    if let Some(w) = window {
        plan.scale_window = w;
    }
    Ok(plan)
}

fn positive(v: Option<&String>, what: &str) -> Result<usize, String> {
    v.and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{what} needs a positive number\n{USAGE}"))
}

/// What each section measured (absent: not run, or it failed).
#[derive(Debug, Default)]
struct Results {
    footprint: Option<footprint::Footprint>,
    latency: Option<latency::Latency>,
    latency_tmpfs: Option<latency::Latency>,
    floor: Option<floor::Floor>,
    server_after_latency_kb: Option<u64>,
    roundtrip: Option<roundtrip::RoundTrip>,
    oneshot: Option<oneshot::OneShot>,
    handshake: Option<handshake::Handshakes>,
    scale: Option<scale::Scale>,
    storm: Option<storm::Storm>,
}

fn progress(msg: &str) {
    eprintln!("cmapp-bench: {msg}");
}

fn run(plan: &Plan, r: &mut Results) -> Result<(), String> {
    let env = Env::new(Bins::locate()?)?;
    if plan.wants("floor") {
        progress(&format!(
            "the floor: {} detection events through bare processes, {} bare one-shot runs and pings",
            plan.events, plan.runs
        ));
        r.floor = Some(floor::run(&env, plan.events, plan.runs)?);
    }
    if ["footprint", "latency", "roundtrip", "oneshot", "handshake"]
        .iter()
        .any(|s| plan.wants(s))
    {
        let dir = env.dir("server")?;
        let server = Server::start(&env, &dir, "maxProcesses=200\n")?;
        if plan.wants("footprint") {
            progress("footprint at idle");
            r.footprint = Some(footprint::run(&env, &server)?);
        }
        if plan.wants("latency") {
            progress(&format!("detection latency: {} events", plan.events));
            r.latency = Some(latency::run(&env, &server, plan.events)?);
            r.server_after_latency_kb = sys::rss_kb(server.pid);
            // The same with the state directory in memory, for comparison.
            if sys::fs_type(&server.state_dir) != "tmpfs" {
                if let Some(shm) = ShmDir::new() {
                    progress(&format!(
                        "detection latency, state directory on tmpfs: {} events",
                        plan.events
                    ));
                    let s2 = Server::start(&env, shm.path(), "maxProcesses=200\n")?;
                    r.latency_tmpfs = Some(latency::run(&env, &s2, plan.events)?);
                    s2.stop(Duration::from_secs(20))?;
                }
            }
        }
        if plan.wants("roundtrip") {
            progress(&format!(
                "remote run round trip: {} runs each, cmappmgr, check_nrpe and ssh",
                plan.runs
            ));
            let rt = roundtrip::run(&env, &server, plan.runs)?;
            if let Err(why) = &rt.nrpe {
                eprintln!("cmapp-bench: NRPE column skipped: {why}");
            }
            r.roundtrip = Some(rt);
        }
        if plan.wants("oneshot") {
            progress(&format!(
                "one-shot run against check: {} runs each, alternated",
                plan.runs
            ));
            r.oneshot = Some(oneshot::run(&env, &server, plan.runs)?);
        }
        if plan.wants("handshake") {
            progress(&format!(
                "handshake rate: {} concurrent clients for {:?}",
                plan.handshake_tasks, plan.handshake_window
            ));
            let h = handshake::run(&env, &server, plan.handshake_window, plan.handshake_tasks)?;
            if h.failed > 0 {
                let e = format!(
                    "{} of {} handshakes failed; first: {}",
                    h.failed,
                    h.failed + h.done,
                    h.first_error.clone().unwrap_or_default()
                );
                r.handshake = Some(h);
                return Err(e);
            }
            r.handshake = Some(h);
        }
        let status = server.stop(Duration::from_secs(20))?;
        if !status.success() {
            return Err(format!("cmappserver exited {status} on SIGTERM, 0 expected"));
        }
    }
    if plan.wants("scale") {
        progress(&format!(
            "scale: {n} processes and {n} managers, {:?} steady state",
            plan.scale_window,
            n = plan.scale_n
        ));
        r.scale = Some(scale::run(&env, plan.scale_n, plan.scale_window, plan.scale_settle)?);
    }
    if plan.wants("storm") {
        progress(&format!(
            "reconnect storm: {n} managers of {n} processes, cmappserver killed (SIGKILL) and restarted",
            n = plan.storm_n
        ));
        r.storm = Some(storm::run(&env, plan.storm_n)?);
    }
    Ok(())
}

fn pct(v: f64) -> String {
    format!("{v:.2} %")
}

fn build_report(r: &Results) -> Report {
    let mut rep = Report::default();
    if let Some(l) = &r.latency {
        rep.section("Detection latency (application exit → cmappmgr exited with its code)");
        rep.info(
            "events",
            format!(
                "{} in {:.1} s (batches of 25 waiting managers, one event at a time)",
                l.ns.len(),
                l.wall.as_secs_f64()
            ),
        );
        let on = format!("stateDir on {}", l.state_fs);
        rep.info(format!("p50, {on}"), ms(l.percentile(50.0)));
        rep.check(
            format!("p99, {on}"),
            ms(l.percentile(99.0)),
            "< 1 ms",
            l.percentile(99.0) < 1_000_000,
        );
        rep.info(format!("max, {on}"), ms(l.ns.last().copied().unwrap_or(0)));
        if let Some(t) = &r.latency_tmpfs {
            let on = format!("stateDir on {} (comparison)", t.state_fs);
            rep.info(format!("p50, {on}"), ms(t.percentile(50.0)));
            rep.info(format!("p99, {on}"), ms(t.percentile(99.0)));
            rep.info(format!("max, {on}"), ms(t.ns.last().copied().unwrap_or(0)));
        }
    }
    if let Some(f) = &r.floor {
        rep.section("The floor: the same processes and hops with no work (`bench/floor.rs`)");
        rep.info(
            "detection events",
            format!("{} of each, alternated, one at a time", f.ns.len()),
        );
        for (what, ns) in [
            ("four processes (application, its parent, a relay, a manager)", &f.ns),
            ("three (the application's parent writes to the manager)", &f.direct_ns),
        ] {
            rep.info(format!("p50, {what}"), ms(latency::percentile(ns, 50.0)));
            rep.info(format!("p99, {what}"), ms(latency::percentile(ns, 99.0)));
        }
        let (run, ping) = (roundtrip::median(&f.run), roundtrip::median(&f.ping));
        rep.info(
            format!(
                "bare one-shot run (process, connection, a spare's fork and exec of /bin/true, its exit back), median of {}",
                f.run.len()
            ),
            format!("{:.2} ms", run * 1e3),
        );
        rep.info(
            format!(
                "bare ping (process, connection, one round trip), median of {}",
                f.ping.len()
            ),
            format!("{:.2} ms", ping * 1e3),
        );
        rep.info(
            "what a bare run adds to a bare ping (median of the rounds' differences)",
            format!("{:.2} ms", roundtrip::median(&f.adds) * 1e3),
        );
    }
    if let Some(rt) = &r.roundtrip {
        rep.section("Remote run round trip (whole process, `/bin/echo ok`, alternated)");
        let ours = roundtrip::median(&rt.ours);
        rep.info(
            format!("cmappmgr -node … -service /bin/echo ok, median of {}", rt.ours.len()),
            format!("{:.2} ms", ours * 1e3),
        );
        rep.info(
            format!(
                "the same over -node vsock-unix:… (hybrid-vsock relay, no AF_VSOCK here), median of {}",
                rt.vsock.len()
            ),
            format!("{:.2} ms", roundtrip::median(&rt.vsock) * 1e3),
        );
        match &rt.nrpe {
            Ok(n) => {
                let theirs = roundtrip::median(&n.secs);
                rep.info(
                    format!("check_nrpe -c check_ok (NRPE 4.1), median of {}", n.secs.len()),
                    format!("{:.2} ms", theirs * 1e3),
                );
                let ratio = ours / theirs;
                rep.check(
                    "ratio cmappmgr / check_nrpe",
                    format!("{ratio:.3}"),
                    "≤ 0.25",
                    ratio <= 0.25,
                );
                rep.notes.push(format!("NRPE's TLS: {}.", n.tls));
            }
            Err(why) => {
                rep.info("check_nrpe -c check_ok (NRPE)", "skipped");
                rep.info("ratio cmappmgr / check_nrpe", "n/a");
                rep.notes.push(format!("NRPE column skipped: {why}."));
            }
        }
        let ssh = roundtrip::median(&rt.ssh.secs);
        rep.info(
            format!(
                "ssh USER@127.0.0.1 /bin/echo ok (key authentication, no connection reuse), median of {}",
                rt.ssh.secs.len()
            ),
            format!("{:.2} ms", ssh * 1e3),
        );
        rep.info("ratio cmappmgr / ssh", format!("{:.3}", ours / ssh));
        rep.notes.push(format!(
            "ssh: {}, the bench's own sshd on 127.0.0.1 (Ed25519 host and user keys generated for the run, \
             the host key checked against a generated known_hosts, UsePAM no, -o ControlMaster=no \
             -o ControlPath=none, -F /dev/null); the command runs through the user's login shell, \
             with HOME set to the bench's directory (the machine's own ~/.bashrc is not measured).",
            rt.ssh.version
        ));
    }
    if let Some(o) = &r.oneshot {
        rep.section("One-shot run against a handshake (whole process, alternated, same server)");
        rep.info(
            format!("cmappmgr -node … -service /bin/true, median of {}", o.run.len()),
            format!("{:.2} ms", roundtrip::median(&o.run) * 1e3),
        );
        rep.info(
            format!(
                "cmappmgr check (connect, mutual TLS, ping), median of {}",
                o.check.len()
            ),
            format!("{:.2} ms", roundtrip::median(&o.check) * 1e3),
        );
        rep.check(
            "ratio one-shot run / check",
            format!("{:.2}", o.ratio()),
            "≤ 1.5",
            o.ratio() <= 1.5,
        );
        if let Some(f) = &r.floor {
            let check = roundtrip::median(&o.check);
            let adds = roundtrip::median(&f.adds);
            rep.info(
                "the same ratio at the floor: (check + what a bare run adds to a bare ping, measured apart) / check",
                format!("{:.2}", (check + adds) / check),
            );
        }
    }
    if let Some(s) = &r.scale {
        rep.section(&format!(
            "Scale: {n} monitored processes, {n} connected managers (pinging every 5 s)",
            n = s.n
        ));
        let target_n = if s.n != 1000 { " (target is for 1000)" } else { "" };
        rep.check(
            format!("all {} up (first spawn → last \"started\" line)", s.n),
            format!("{:.2} s", s.up.as_secs_f64()),
            format!("≤ 10 s{target_n}"),
            s.up <= Duration::from_secs(10),
        );
        rep.check(
            format!("cmappserver CPU, steady state over {:.0} s", s.window.as_secs_f64()),
            pct(s.server_cpu),
            "< 2 % of one core",
            s.server_cpu < 2.0,
        );
        rep.info(format!("all {} shims together, CPU", s.n), pct(s.shims_cpu));
        rep.info(format!("all {} cmappmgr together, CPU", s.n), pct(s.mgrs_cpu));
        rep.check(
            "cmappserver resident (VmRSS)",
            mib(s.server_rss_kb),
            "< 64 MiB",
            s.server_rss_kb < 64 * 1024,
        );
        rep.info("one shim resident (median VmRSS)", mib(s.shim_rss_kb));
        rep.info(format!("all {} shims, PSS total", s.n), mib(s.shims_pss_kb));
        let zygote = s.zygote_pss_kb.unwrap_or(0);
        rep.info(
            "the zygote that forks them (one per cmappserver), PSS",
            s.zygote_pss_kb.map_or("none".to_string(), |kb| format!("{kb} KiB")),
        );
        let per_shim = (s.shims_pss_kb + zygote) / s.n.max(1) as u64;
        rep.check(
            "one shim: PSS ((the total + the zygote) / N)",
            format!("{per_shim} KiB"),
            format!("≤ 200 KiB{target_n}"),
            per_shim <= 200,
        );
        rep.info("one shim: Private_Dirty (median)", format!("{} KiB", s.shim_private_kb));
        rep.info("one cmappmgr resident (median VmRSS)", mib(s.mgr_rss_kb));
        rep.info(format!("all {} cmappmgr, PSS total", s.n), mib(s.mgrs_pss_kb));
        rep.info(
            "one cmappmgr: PSS (the total / N), Private_Dirty (median)",
            format!("{:.0} KiB, {} KiB", s.mgrs_pss_kb as f64 / s.n as f64, s.mgr_private_kb),
        );
        let at = &s.mgr_private_places;
        rep.info(
            "the median cmappmgr's Private_Dirty: heap, stack, the program's data, other",
            format!("{}, {}, {}, {} KiB", at.heap, at.stack, at.program, at.other),
        );
        rep.info(
            "one cmappmgr: wake-ups per minute (mean), threads (most)",
            format!("{:.1}, {}", s.mgr_wakeups_per_min, s.mgr_threads),
        );
        rep.info(
            "teardown (SIGKILL managers, SIGTERM server, kill shims and apps)",
            format!("{:.2} s", s.teardown.as_secs_f64()),
        );
    }
    if let Some(s) = &r.storm {
        rep.section(&format!(
            "Reconnect storm: {n} managers attached to {n} processes, cmappserver SIGKILLed and restarted",
            n = s.n
        ));
        let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        rep.info("restart → server ready (adopted every shim, listening)", secs(s.ready));
        rep.info("restart → first manager re-attached", secs(s.percentile(0.0)));
        rep.info("restart → half of them re-attached", secs(s.percentile(50.0)));
        let target_n = if s.n != 1000 { " (target is for 1000)" } else { "" };
        rep.check(
            format!("restart → all {} re-attached", s.n),
            secs(s.last()),
            format!("< 2 s{target_n}"),
            s.last() < Duration::from_secs(2),
        );
        rep.info(
            "handshaking connections shed by the new server (maxPendingConnections)",
            s.shed.to_string(),
        );
    }
    if let Some(f) = &r.footprint {
        rep.section("Footprint at idle");
        rep.check(
            "cmappserver, fresh (VmRSS)",
            mib(f.server_fresh_kb),
            "< 8 MiB",
            f.server_fresh_kb < 8 * 1024,
        );
        rep.info("cmappserver with one monitored process", mib(f.server_one_kb));
        if let Some(kb) = r.server_after_latency_kb {
            rep.info("cmappserver after the detection-latency run", mib(kb));
        }
        rep.info("shim of one sleeping application", mib(f.shim_kb));
        rep.check(
            "cmappmgr attached to a sleeping application",
            mib(f.mgr_kb),
            "< 6 MiB",
            f.mgr_kb < 6 * 1024,
        );
        if let Some(Ok(n)) = r.roundtrip.as_ref().map(|rt| &rt.nrpe) {
            if let Some(kb) = n.idle_rss_kb {
                rep.info("for comparison: nrpe daemon, idle", mib(kb));
            }
        }
        rep.info("cmappserver binary (release, stripped)", mib(f.server_bin / 1024));
        rep.info("cmappmgr binary (release, stripped)", mib(f.mgr_bin / 1024));
    }
    if let Some(h) = &r.handshake {
        rep.section("Handshake rate (mutual TLS 1.3, full handshakes, Hello → Welcome)");
        rep.info(
            format!(
                "connections accepted per second ({} clients, 1 client thread)",
                h.concurrency
            ),
            format!("{:.0} /s", h.per_sec()),
        );
        let cpu_pct = h.server_cpu / h.wall.as_secs_f64() * 100.0;
        rep.info(
            "cmappserver CPU during the run",
            format!(
                "{cpu_pct:.0} % of one core = {:.0} handshakes per server CPU second",
                h.done as f64 / h.server_cpu.max(1e-9)
            ),
        );
        rep.info("connect → welcome, p50", ms(latency::percentile(&h.ns, 50.0)));
        rep.info("failures", h.failed.to_string());
    }
    rep
}
