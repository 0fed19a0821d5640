//! A seeded, randomized campaign of concurrent faults against the real
//! binaries (in the spirit of Jepsen and of FoundationDB's simulation), and
//! a checker of the recorded history ([`check`]).
//!
//! The guest is a cmappserver in a network namespace, its state directory on
//! a small loop-mounted ext4 filesystem; the host is a second namespace
//! where one manager per service runs, restarted like a cluster restarts a
//! service (same run string) whenever it ends. The applications
//! (`cmapp-campaign-app`) exit on their own after a planned time with a
//! planned code, some at once, and log their own history outside cmapp's
//! state. Faults, chosen by a seeded generator and overlapping in time:
//!
//! | fault | how |
//! |-------|-----|
//! | `server-kill` / `server-term` | SIGKILL / SIGTERM of cmappserver, restarted after a random time, sometimes from the other of two copies of the binary (an upgrade) |
//! | `shim-kill` | SIGKILL of a random shim |
//! | `mgr-kill` / `mgr-term` | SIGKILL / SIGTERM of a random manager (restarted with the same run string) |
//! | `partition-link` | the guest's link down, shorter or longer than the timeout |
//! | `partition-loss` | every packet the guest sends dropped (`tc qdisc ... pfifo limit 0`; this kernel has no `sch_netem` for `netem loss 100%`) while the link stays up, shorter or longer |
//! | `net-delay` | `tc netem delay` with jitter where the kernel has it, else a slow link (`tbf rate 512kbit`): no outage |
//! | `disk-full` | the state directory's filesystem filled up, then freed |
//! | `reboot` | cmappserver, shims and applications killed, the boot id changed, cmappserver started again |
//!
//! Slow disk writes are not simulated: the kernel here has no device-mapper
//! (no `dm-delay`), see the README's Testing section.
//!
//! After the campaign, the faults stop, every service's last application
//! ends and is collected, and the checker judges the history; then nothing
//! may be left over (process, shim, record) and cmappserver's descriptors
//! and memory must be back at their level after the warm-up.

pub mod check;
pub mod saved;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::keys;
use crate::mgr::{monitor_args, Mgr};
use crate::netpair::NetPair;
use crate::server::Server;
use crate::{usage, Usage};
use check::{History, MgrRun, Ms};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// How long faults are injected (the drain and the checks come after).
    pub secs: u64,
    pub services: usize,
    /// The managers' `cmappserver_timeout`, seconds.
    pub timeout: u64,
    /// Extra environment for cmappserver (and so its shims), e.g. a test-only fault.
    pub server_env: Vec<(String, String)>,
    /// Extra environment for the managers, e.g. a test-only fault.
    pub mgr_env: Vec<(String, String)>,
}

impl Config {
    /// `CAMPAIGN_SEED` (decimal or 0x-hex; random if unset) and
    /// `CAMPAIGN_SECS` (`default_secs` if unset).
    pub fn from_env(default_secs: u64) -> Config {
        let seed = std::env::var("CAMPAIGN_SEED")
            .ok()
            .map(|s| parse_seed(&s).unwrap_or_else(|| panic!("CAMPAIGN_SEED={s:?} is not a number")))
            .unwrap_or_else(|| fastrand::u64(..));
        let secs = std::env::var("CAMPAIGN_SECS")
            .ok()
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| panic!("CAMPAIGN_SECS={s:?} is not a number of seconds"))
            })
            .unwrap_or(default_secs);
        Config::new(seed, secs)
    }

    pub fn new(seed: u64, secs: u64) -> Config {
        Config {
            seed,
            secs,
            services: 10,
            timeout: 6,
            server_env: Vec::new(),
            mgr_env: Vec::new(),
        }
    }
}

/// `123` or `0x7b`.
pub fn parse_seed(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// What a campaign did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub secs: u64,
    pub faults: check::FaultCounts,
    /// Application exits the checker matched against the managers' reports.
    pub exits_checked: usize,
    pub apps_started: usize,
    pub manager_runs: usize,
    /// Broken promises found in the history.
    pub violations: Vec<String>,
    /// What the checker found odd without a promise broken.
    pub notes: Vec<String>,
    /// What was left over at the end, or grew.
    pub leftovers: Vec<String>,
    /// cmappserver's usage after the warm-up and at the end.
    pub usage: Option<(Usage, Usage)>,
    /// Where the history of a campaign with violations was kept.
    pub kept: Option<PathBuf>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "campaign seed {:#x}, {} s of faults: {} applications started, {} exits checked, {} manager runs",
            self.seed, self.secs, self.apps_started, self.exits_checked, self.manager_runs
        )?;
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(f, "faults injected: {}", faults.join(", "))?;
        if let Some((a, b)) = &self.usage {
            writeln!(f, "cmappserver after warm-up {a:?}, at the end {b:?}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for v in &self.violations {
            writeln!(f, "VIOLATION: {v}")?;
        }
        for l in &self.leftovers {
            writeln!(f, "LEFT OVER: {l}")?;
        }
        if self.violations.is_empty() && self.leftovers.is_empty() {
            writeln!(f, "no violation")?;
        }
        write!(
            f,
            "replay: CAMPAIGN_SEED={:#x} CAMPAIGN_SECS={} (the fault schedule; the processes' timing differs)",
            self.seed, self.secs
        )
    }
}

pub fn now_ms() -> Ms {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Ms)
        .unwrap_or(0)
}

/// A small ext4 filesystem on a loop device (`mount -o loop`, no blocks
/// reserved for root), unmounted on drop.
#[derive(Debug)]
pub struct SmallFs {
    pub mountpoint: PathBuf,
}

impl SmallFs {
    /// Makes and mounts a filesystem of `mib` MiB in `dir` (needs root).
    pub fn new(dir: &Path, mib: u64) -> SmallFs {
        crate::require_root("loop devices and mounts");
        let image = crate::loopdev::sparse_file(&dir.join("state.img"), mib << 20);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
            .arg(&image));
        let mountpoint = dir.join("statefs");
        std::fs::create_dir(&mountpoint).unwrap();
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&image)
            .arg(&mountpoint));
        SmallFs { mountpoint }
    }

    fn filler(&self) -> PathBuf {
        self.mountpoint.join("filler")
    }

    /// Writes until the filesystem is full.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler()).expect("create the filler");
        let chunk = vec![0xa5u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        // Then byte by byte into the last partial block.
        while f.write_all(&chunk[..1]).is_ok() {}
        let _ = f.sync_all();
    }

    /// Deletes what [`fill`](Self::fill) wrote.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mountpoint)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `tc ARGS` inside a namespace; returns whether it worked.
fn tc(ns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "tc"])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One manager's end, sent by its watcher thread.
struct Ended {
    slot: usize,
    run: MgrRun,
}

/// One service: its manager, if one runs, and when to start the next.
#[derive(Debug, Default)]
struct Slot {
    /// pid, start time, what the runner sent it.
    running: Option<(u32, Ms, Option<&'static str>)>,
    restart_at: Option<Instant>,
    /// In the drain: its last application's end was collected.
    done: bool,
}

/// A fault with an end, in progress.
#[derive(Debug, Default)]
struct Durational {
    /// The partition in progress: kind, since, until.
    partition: Option<(&'static str, Ms, Instant)>,
    /// `tc netem delay` in place until.
    delay: Option<Instant>,
    /// The disk full since, until.
    disk: Option<(Ms, Instant)>,
    /// cmappserver down since, restart at (or once the disk is free), why,
    /// and whether it comes back from the other copy of the binary.
    server_down: Option<(Ms, Instant, &'static str, bool)>,
}

/// The campaign in progress.
struct Campaign<'a> {
    cfg: &'a Config,
    /// The fault schedule: one draw per fault (its own generator's seed)
    /// and per interval, whatever the fault consumes, so that a seed
    /// replays the same schedule.
    frng: fastrand::Rng,
    /// The processes' plans and the restart delays (timing-dependent in number).
    prng: fastrand::Rng,
    dir: PathBuf,
    apps: PathBuf,
    app_bin: PathBuf,
    binaries: [PathBuf; 2],
    conf: PathBuf,
    net: &'a NetPair,
    fs: &'a SmallFs,
    server: Server,
    node: String,
    boot: u32,
    slots: Vec<Slot>,
    ended_tx: mpsc::Sender<Ended>,
    ended_rx: mpsc::Receiver<Ended>,
    hist: History,
    faults: BTreeMap<&'static str, u64>,
    now: Durational,
    extra_violations: Vec<String>,
    /// The logs of cmappserver's earlier runs, each line after the
    /// wall-clock time it was read at, for a kept history.
    server_logs: String,
}

/// Runs one campaign; the report says what it found.
pub fn run_campaign(cfg: &Config) -> Report {
    crate::require_root("network namespaces, loop devices and mounts");
    eprintln!(
        "campaign: seed {:#x}, {} s of faults over {} services (replay with CAMPAIGN_SEED={:#x} CAMPAIGN_SECS={})",
        cfg.seed, cfg.secs, cfg.services, cfg.seed, cfg.secs
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let net = NetPair::new("c");
    let fs = SmallFs::new(&dir, 24);
    let keys = keys::pinned(&dir, "");
    let conf = keys::manager_conf(&dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    let binaries = ["v1", "v2"].map(|v| {
        let p = dir.join(v).join("cmappserver");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(crate::bin("cmappserver"), &p).unwrap();
        p
    });
    let apps = dir.join("apps");
    for d in ["plans", "locks"] {
        std::fs::create_dir_all(apps.join(d)).unwrap();
    }
    let state_dir = fs.mountpoint.join("state");
    let extra = format!(
        "listen={}:5315\nstateDir={}\nidleTimeout=20\nmaxProcesses=64\nstopGracePeriod=2\n",
        net.guest_ip,
        state_dir.display()
    );
    let mut env = vec![("CMAPPSERVER_BOOT_ID".to_string(), "campaign-boot-0".to_string())];
    env.extend(cfg.server_env.iter().cloned());
    let mut server = Server::start_with(
        &dir.join("srv"),
        &keys,
        &extra,
        binaries[0].clone(),
        Some(net.guest_ns.clone()),
        env,
    );
    server.state_dir = state_dir;
    let node = server.node();
    let (ended_tx, ended_rx) = mpsc::channel();
    let mut c = Campaign {
        cfg,
        frng: fastrand::Rng::with_seed(cfg.seed),
        prng: fastrand::Rng::with_seed(cfg.seed ^ 0x9e37_79b9_7f4a_7c15),
        dir: dir.clone(),
        apps,
        app_bin: crate::bin("cmapp-campaign-app"),
        binaries,
        conf,
        net: &net,
        fs: &fs,
        server,
        node,
        boot: 0,
        slots: (0..cfg.services).map(|_| Slot::default()).collect(),
        ended_tx,
        ended_rx,
        hist: History {
            timeout_ms: cfg.timeout * 1000,
            // cmappmgr's default: a quarter of the timeout.
            ping_ms: cfg.timeout * 250,
            ..History::default()
        },
        faults: BTreeMap::new(),
        now: Durational::default(),
        extra_violations: Vec::new(),
        server_logs: String::new(),
    };
    let report = c.run();
    drop(c);
    drop(fs);
    drop(net);
    eprintln!("{report}");
    report
}

impl Campaign<'_> {
    fn service(&self, slot: usize) -> String {
        format!("s{slot:02}")
    }

    fn run_string(&self, slot: usize) -> Vec<String> {
        vec![
            self.app_bin.display().to_string(),
            self.apps.display().to_string(),
            self.service(slot),
        ]
    }

    /// The next application of this service: its code and how long it runs
    /// (a fifth end at once, the rest within `max_ms`).
    fn plan(&mut self, slot: usize, max_ms: u64) {
        let code = self.prng.i32(check::APP_CODES);
        let ms = if self.prng.u8(..5) == 0 {
            self.prng.u64(0..100)
        } else {
            self.prng.u64(300..max_ms.max(301))
        };
        let path = self.apps.join("plans").join(self.service(slot));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{code} {ms}\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// Starts the manager of a service, and a thread that reports its end.
    fn start_manager(&mut self, slot: usize, max_ms: u64) {
        self.plan(slot, max_ms);
        let run = self.run_string(slot);
        let run: Vec<&str> = run.iter().map(String::as_str).collect();
        let args = monitor_args(&self.conf, &self.node, self.cfg.timeout as f64, &[], &run);
        let env: Vec<(&str, &str)> = self.cfg.mgr_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut m = Mgr::spawn_env(Some(&self.net.host_ns), &args, &env);
        let started = now_ms();
        let pid = m.pid();
        self.slots[slot].running = Some((pid, started, None));
        self.slots[slot].restart_at = None;
        let tx = self.ended_tx.clone();
        let service = self.service(slot);
        std::thread::spawn(move || {
            // stderr closes when it exits (nothing else holds it).
            m.err.wait_closed(Duration::from_secs(86_400));
            let status = m.status_within(crate::WAIT);
            let ended = now_ms();
            m.out.wait_closed(Duration::from_secs(5));
            let output = m.err.timed();
            let lines: Vec<String> = output.iter().map(|(_, l)| l.clone()).collect();
            let pids = lines
                .iter()
                .filter(|l| l.contains("started ") || l.contains("attached to "))
                .filter_map(|l| pid_of(l))
                .collect();
            let printed = lines
                .iter()
                .rev()
                .find_map(|l| l.split("PROGRAM EXIT CODE ").nth(1))
                .and_then(|c| c.trim().parse().ok());
            let refused = lines.iter().any(|l| l.contains("could not start the application"));
            let unacked = lines.iter().any(|l| l.contains(check::NOT_ACKNOWLEDGED));
            let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
            let _ = tx.send(Ended {
                slot,
                run: MgrRun {
                    service,
                    mgr_pid: pid,
                    started,
                    ended,
                    code: status.and_then(|s| s.code()),
                    signalled: None,
                    pids,
                    printed,
                    refused,
                    unacked,
                    tail,
                    output,
                },
            });
        });
    }

    /// Collects the managers that ended; schedules their restart (unless `draining`).
    fn reap(&mut self, draining: bool) {
        while let Ok(ended) = self.ended_rx.try_recv() {
            self.ended(ended, draining);
        }
    }

    /// Records one manager's end, and when its slot starts another.
    fn ended(&mut self, Ended { slot, mut run }: Ended, draining: bool) {
        let s = &mut self.slots[slot];
        if let Some((_, _, sig)) = s.running.take() {
            run.signalled = sig;
        }
        let outcome = run.code.or(run.printed);
        if draining && outcome.is_some_and(|c| check::APP_CODES.contains(&c) || c == 69 || c == 70) {
            s.done = true;
        } else {
            let delay = self.prng.u64(0..800);
            s.restart_at = Some(Instant::now() + Duration::from_millis(delay));
        }
        self.hist.managers.push(run);
    }

    fn restart_due(&mut self, max_ms: u64) {
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if self.slots[slot].running.is_none()
                && !self.slots[slot].done
                && self.slots[slot].restart_at.is_some_and(|t| t <= now)
            {
                self.start_manager(slot, max_ms);
            }
        }
    }

    fn count(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }

    /// A duration: short (below the timeout, less a ping and slack for a
    /// reconnection under load) or long (above it).
    fn outage_length(&self, r: &mut fastrand::Rng, long_one_in: u8) -> Duration {
        let t = self.cfg.timeout as f64;
        let s = if r.u8(..long_one_in) == 0 {
            t * (1.25 + r.f64() * 0.4)
        } else {
            0.2 + r.f64() * (t * 0.42 - 0.2)
        };
        Duration::from_secs_f64(s)
    }

    fn inject(&mut self) {
        let kinds: [(&'static str, u32); 11] = [
            ("server-kill", 6),
            ("server-term", 3),
            ("upgrade", 3),
            ("shim-kill", 6),
            ("mgr-kill", 8),
            ("mgr-term", 4),
            ("partition-link", 5),
            ("partition-loss", 4),
            ("net-delay", 3),
            ("disk-full", 4),
            ("reboot", 2),
        ];
        let total: u32 = kinds.iter().map(|k| k.1).sum();
        let mut r = fastrand::Rng::with_seed(self.frng.u64(..));
        let mut pick = r.u32(..total);
        let kind = kinds
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap()
            .0;
        let now = Instant::now();
        match kind {
            "server-kill" | "server-term" | "upgrade" | "reboot" => {
                if self.now.server_down.is_some() {
                    return;
                }
                let down = now_ms();
                let how = match kind {
                    "server-term" => {
                        let st = self.server.term();
                        if !st.success() {
                            self.extra_violations
                                .push(format!("cmappserver exited {st:?} on SIGTERM"));
                        }
                        "server-term"
                    }
                    "reboot" => {
                        self.reboot();
                        "reboot"
                    }
                    _ => {
                        self.server.kill9();
                        if kind == "upgrade" {
                            "upgrade"
                        } else {
                            "server-kill"
                        }
                    }
                };
                let len = if kind == "reboot" {
                    Duration::from_millis(r.u64(300..2500))
                } else {
                    self.outage_length(&mut r, 5)
                };
                // Back from the other copy of the binary: always after an
                // upgrade, one time in four after a kill or a stop.
                let other = how == "upgrade" || (how != "reboot" && r.u8(..4) == 0);
                self.now.server_down = Some((down, now + len, how, other));
            }
            "shim-kill" => {
                let live: Vec<_> = self
                    .server
                    .recorded()
                    .into_iter()
                    .filter(|r| r.shim_pid > 1 && crate::alive(r.shim_pid) && self.is_shim(r.shim_pid))
                    .collect();
                if live.is_empty() {
                    return;
                }
                let rec = &live[r.usize(..live.len())];
                let at = now_ms();
                if kill(Pid::from_raw(rec.shim_pid as i32), Signal::SIGKILL).is_ok() {
                    self.hist.shim_kills.push((rec.pid, at));
                }
            }
            "mgr-kill" | "mgr-term" => {
                let running: Vec<usize> = (0..self.slots.len())
                    .filter(|s| matches!(self.slots[*s].running, Some((_, _, None))))
                    .collect();
                if running.is_empty() {
                    return;
                }
                let slot = running[r.usize(..running.len())];
                let (pid, at, _) = self.slots[slot].running.unwrap();
                let (sig, name) = if kind == "mgr-kill" {
                    (Signal::SIGKILL, "KILL")
                } else {
                    (Signal::SIGTERM, "TERM")
                };
                self.slots[slot].running = Some((pid, at, Some(name)));
                let _ = kill(Pid::from_raw(pid as i32), sig);
            }
            "partition-link" | "partition-loss" => {
                if self.now.partition.is_some() || (kind == "partition-loss" && self.now.delay.is_some()) {
                    return;
                }
                let len = self.outage_length(&mut r, 3);
                if kind == "partition-link" {
                    self.net.partition();
                } else if !tc(
                    &self.net.guest_ns,
                    // A queue of length 0 drops every packet the guest sends
                    // (`netem loss 100%` without sch_netem, absent here).
                    &["qdisc", "add", "dev", &self.net.guest_if, "root", "pfifo", "limit", "0"],
                ) {
                    self.extra_violations
                        .push("tc pfifo is not available: partition-loss not injected".into());
                    return;
                }
                self.now.partition = Some((kind, now_ms(), now + len));
            }
            "net-delay" => {
                if self.now.delay.is_some() || matches!(self.now.partition, Some(("partition-loss", _, _))) {
                    return;
                }
                // Delay with jitter where sch_netem exists, else a slow
                // link (a token bucket: latency under load, no loss).
                let ms = r.u64(50..400).to_string() + "ms";
                let jitter = r.u64(10..100).to_string() + "ms";
                let dev = self.net.guest_if.clone();
                if !tc(
                    &self.net.guest_ns,
                    &["qdisc", "add", "dev", &dev, "root", "netem", "delay", &ms, &jitter],
                ) && !tc(
                    &self.net.guest_ns,
                    &[
                        "qdisc", "add", "dev", &dev, "root", "tbf", "rate", "512kbit", "burst", "16kb", "latency", &ms,
                    ],
                ) {
                    self.extra_violations
                        .push("tc: neither netem nor tbf: net-delay not injected".into());
                    return;
                }
                self.now.delay = Some(now + Duration::from_millis(r.u64(1000..5000)));
            }
            "disk-full" => {
                if self.now.disk.is_some() {
                    return;
                }
                // Full from the first write that fails, during the filling.
                let since = now_ms();
                self.fs.fill();
                self.now.disk = Some((since, now + Duration::from_millis(r.u64(500..5000))));
            }
            _ => unreachable!(),
        }
        self.count(kind);
    }

    fn is_shim(&self, pid: u32) -> bool {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        self.is_shim_cmd(&String::from_utf8_lossy(&cmd).replace('\0', " "))
    }

    /// `cmappserver shim <record>` of our state directory.
    fn is_shim_cmd(&self, cmd: &str) -> bool {
        cmd.contains(" shim ") && cmd.contains(&*self.server.state_dir.to_string_lossy())
    }

    /// One of our applications (not a manager, whose arguments name it too).
    fn is_app_cmd(&self, cmd: &str) -> bool {
        cmd.starts_with(&*self.app_bin.to_string_lossy())
    }

    /// Live processes whose command line (arguments joined by spaces) satisfies `pred`.
    fn processes(except: Option<u32>, pred: impl Fn(&str) -> bool) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if Some(pid) == except || !crate::alive(pid) {
                continue;
            }
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if pred(&cmd) {
                out.push((pid, cmd));
            }
        }
        out
    }

    /// The guest "reboots": cmappserver, every shim and every application
    /// die at once, and the boot id changes.
    fn reboot(&mut self) {
        self.server.kill9();
        for (pid, _) in Self::processes(None, |c| self.is_shim_cmd(c)) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for (pid, _) in Self::processes(None, |c| self.is_app_cmd(c)) {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        self.hist.reboots.push(now_ms());
        self.boot += 1;
        for (k, v) in &mut self.server.env {
            if k == "CMAPPSERVER_BOOT_ID" {
                *v = format!("campaign-boot-{}", self.boot);
            }
        }
    }

    /// Ends the durational faults that are due (all of them with `all`).
    fn end_faults(&mut self, all: bool) {
        let now = Instant::now();
        if let Some((kind, since, until)) = self.now.partition {
            if all || until <= now {
                if kind == "partition-link" {
                    self.net.heal();
                } else {
                    tc(&self.net.guest_ns, &["qdisc", "del", "dev", &self.net.guest_if, "root"]);
                }
                self.hist.outages.push((since, now_ms(), kind));
                self.now.partition = None;
            }
        }
        if let Some(until) = self.now.delay {
            if all || until <= now {
                tc(&self.net.guest_ns, &["qdisc", "del", "dev", &self.net.guest_if, "root"]);
                self.now.delay = None;
            }
        }
        if let Some((since, until)) = self.now.disk {
            if all || until <= now {
                self.fs.free();
                self.hist.disk_full.push((since, now_ms()));
                self.now.disk = None;
            }
        }
        // cmappserver starts only with room on its disk (its boot id must be written).
        if let Some((since, until, how, other)) = self.now.server_down {
            if (all || until <= now) && self.now.disk.is_none() {
                let binary = if other {
                    let other = if self.server.binary == self.binaries[0] { 1 } else { 0 };
                    Some(self.binaries[other].clone())
                } else {
                    None
                };
                self.keep_server_log();
                self.server.restart(binary);
                self.hist.outages.push((since, now_ms(), how));
                self.now.server_down = None;
            }
        }
    }

    /// Adds the current cmappserver run's log to [`Campaign::server_logs`]
    /// (a restart replaces it).
    fn keep_server_log(&mut self) {
        use std::fmt::Write;
        let _ = writeln!(self.server_logs, "--- cmappserver {} ---", self.server.binary.display());
        for (at, line) in self.server.log.timed() {
            let _ = writeln!(self.server_logs, "{at} {line}");
        }
    }

    /// Undoes the faults without restarting anything (on the way out).
    fn end_faults_quietly(&mut self) {
        if self.now.partition.take().is_some() {
            self.net.heal();
        }
        tc(&self.net.guest_ns, &["qdisc", "del", "dev", &self.net.guest_if, "root"]);
        self.fs.free();
    }

    /// Starts every service once, waits for each application's end, lets
    /// the records go: cmappserver's usage then is the reference.
    fn warm_up(&mut self) -> Usage {
        for slot in 0..self.slots.len() {
            self.start_manager(slot, 1000);
        }
        self.until_all_done(Duration::from_secs(60), 1000);
        assert!(
            self.slots.iter().all(|s| s.done),
            "the warm-up did not finish: {:?}",
            self.hist.managers
        );
        self.wait_records_gone(Duration::from_secs(30));
        for s in &mut self.slots {
            s.done = false;
        }
        usage(self.server.pid())
    }

    /// Restarts managers (no faults) until every service's application
    /// ended and was collected, or `limit` passes.
    fn until_all_done(&mut self, limit: Duration, max_ms: u64) {
        let end = Instant::now() + limit;
        while self.slots.iter().any(|s| !s.done) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
            self.reap(true);
            self.restart_due(max_ms);
        }
    }

    fn wait_records_gone(&self, limit: Duration) -> bool {
        crate::wait_until(limit, || self.server.recorded().is_empty())
    }

    fn run(&mut self) -> Report {
        let base = self.warm_up();
        let warm_runs = self.hist.managers.len();
        eprintln!("campaign: warmed up ({warm_runs} manager runs); cmappserver {base:?}");
        for slot in 0..self.slots.len() {
            self.start_manager(slot, 8000);
        }
        let t0 = Instant::now();
        let stop = t0 + Duration::from_secs(self.cfg.secs);
        let mut next_fault = t0 + Duration::from_millis(self.frng.u64(300..1500));
        let mut last_progress = t0;
        while Instant::now() < stop {
            std::thread::sleep(Duration::from_millis(20));
            self.reap(false);
            self.end_faults(false);
            if Instant::now() >= next_fault {
                self.inject();
                next_fault = Instant::now() + Duration::from_millis(self.frng.u64(300..2500));
            }
            // Managers are restarted once cmappserver is up again or not:
            // a cluster does not wait.
            self.restart_due(8000);
            if last_progress.elapsed() > Duration::from_secs(30) {
                last_progress = Instant::now();
                eprintln!(
                    "campaign: {} s, {} manager runs, faults {:?}",
                    t0.elapsed().as_secs(),
                    self.hist.managers.len(),
                    self.faults
                );
            }
        }
        // The drain: faults end, every service's last application (short
        // now) ends and is collected.
        self.end_faults(true);
        for slot in 0..self.slots.len() {
            self.plan(slot, 1500);
        }
        self.until_all_done(Duration::from_secs(90), 1500);
        for (slot, s) in self.slots.iter().enumerate() {
            if !s.done {
                self.extra_violations.push(format!(
                    "service s{slot:02} did not end and report within 90 s after the faults stopped"
                ));
            }
        }
        // Managers still running (a stuck one) end here, reported above.
        for s in &self.slots {
            if let Some((pid, _, _)) = s.running {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        // Each killed manager's end, as its waiter thread reports it.
        let end = Instant::now() + Duration::from_secs(10);
        while self.slots.iter().any(|s| s.running.is_some()) {
            let left = end.saturating_duration_since(Instant::now());
            match self.ended_rx.recv_timeout(left) {
                Ok(ended) => self.ended(ended, true),
                Err(_) => break,
            }
        }

        let mut leftovers = Vec::new();
        // Records whose exit a killed manager still owes are kept idleTimeout (20 s).
        if !self.wait_records_gone(Duration::from_secs(45)) {
            leftovers.push(format!(
                "records left in the state directory: {:?}",
                self.server.recorded()
            ));
        }
        let spid = self.server.pid();
        // The server keeps one shim started ahead of the next launch (its
        // spare), waiting in spare/: that one is not left over. A spare of an
        // earlier server (whose directory the next one cleared), or a second
        // one, is.
        let spare_root = self.server.state_dir.join("spare");
        let in_spare = |p: &Path| p.parent() == Some(spare_root.as_path()) && p.exists();
        let mut spares = Vec::new();
        for (pid, cmd) in Self::processes(Some(spid), |c| self.is_shim_cmd(c) || self.is_app_cmd(c)) {
            let dir = cmd.split(' ').nth(2).map(PathBuf::from);
            if self.is_shim_cmd(&cmd) && dir.as_deref().is_some_and(in_spare) && spares.is_empty() {
                spares.push(dir);
                continue;
            }
            leftovers.push(format!("process {pid} left running: {cmd}"));
        }
        let sockets: Vec<_> = walk(&self.server.state_dir)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "sock"))
            .filter(|p| !spares.iter().any(|d| d.as_deref() == p.parent()))
            .collect();
        if !sockets.is_empty() {
            leftovers.push(format!("shim sockets left: {sockets:?}"));
        }
        // The last server may be a fresh process: its memory settles at once.
        let end = usage(spid);
        if end.fds > base.fds + 2 {
            leftovers.push(format!("cmappserver's descriptors grew: {base:?} → {end:?}"));
        }
        if end.rss_kb > base.rss_kb + 8192 {
            leftovers.push(format!("cmappserver's memory grew: {base:?} → {end:?}"));
        }
        if end.zombies > 0 {
            leftovers.push(format!("{} zombie children of cmappserver", end.zombies));
        }

        let log = std::fs::read_to_string(self.apps.join("apps.log")).unwrap_or_default();
        let (apps, dups, bad) = check::parse_app_log(&log);
        self.hist.apps = apps;
        self.hist.dups = dups;
        let verdict = check::judge(&self.hist);
        let mut violations = verdict.violations;
        violations.extend(bad);
        violations.append(&mut self.extra_violations);
        let mut kept = None;
        if !violations.is_empty() {
            let keep = self.dir.with_extension("history");
            kept = Some(keep.clone());
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::write(keep.join("apps.log"), &log);
            let _ = std::fs::write(keep.join("history.txt"), format!("{:#?}", self.hist));
            self.keep_server_log();
            let _ = std::fs::write(keep.join("cmappserver.log"), &self.server_logs);
            eprintln!("campaign: the history is kept in {}", keep.display());
        }
        Report {
            seed: self.cfg.seed,
            secs: self.cfg.secs,
            faults: std::mem::take(&mut self.faults),
            exits_checked: self.hist.apps.iter().filter(|a| a.exit.is_some()).count(),
            apps_started: self.hist.apps.len(),
            manager_runs: self.hist.managers.len(),
            violations,
            notes: verdict.notes,
            leftovers,
            usage: Some((base, end)),
            kept,
        }
    }
}

impl Drop for Campaign<'_> {
    /// Managers still running (a failed campaign) do not outlive it.
    fn drop(&mut self) {
        for s in &self.slots {
            if let Some((pid, _, _)) = s.running {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        self.end_faults_quietly();
    }
}

/// The pid in a cmappmgr line "started/attached to/re-attached to SERVICE (pid N) on NODE".
fn pid_of(line: &str) -> Option<u32> {
    if !(line.contains("started ") || line.contains("attached to ")) {
        return None;
    }
    let at = line.rfind("(pid ")? + 5;
    line[at..].split(')').next()?.parse().ok()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
