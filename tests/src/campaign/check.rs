//! The campaign's history and the checker that judges it.
//!
//! The history has two sources that never consult cmapp's own state: what
//! the applications wrote into their log (`cmapp-campaign-app`), and what the
//! runner did (faults, with their times) and saw (each manager's output and
//! exit). Times are wall-clock milliseconds since the epoch, the clock the
//! applications write.

use std::collections::{BTreeMap, HashMap};

/// Wall-clock milliseconds since the epoch.
pub type Ms = u64;

/// Exit codes the applications choose from: none is one of cmappmgr's own
/// codes (0 halted, 1 unreachable, 64, 69, 70, 75-78), so a manager's code
/// tells which it is.
pub const APP_CODES: std::ops::RangeInclusive<i32> = 2..=63;

/// What cmappmgr prints when cmappserver did not confirm its
/// acknowledgement of the exit it reports (`watch.rs`, `exited`): the record
/// may then still be there for the next manager of the service.
pub const NOT_ACKNOWLEDGED: &str = "exit status not acknowledged by cmappserver";

/// A process of a service, as it recorded itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRun {
    pub service: String,
    pub pid: u32,
    pub started: Ms,
    /// Its exit code and when, if it reached its exit (not killed).
    pub exit: Option<(i32, Ms)>,
}

/// A copy that found another copy of its service running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dup {
    pub service: String,
    pub pid: u32,
    pub at: Ms,
    pub holder: String,
}

/// How a manager run ended, as the runner saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgrRun {
    pub service: String,
    pub mgr_pid: u32,
    pub started: Ms,
    pub ended: Ms,
    /// Its exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// The signal the runner sent it ("KILL" or "TERM"), if any.
    pub signalled: Option<&'static str>,
    /// The application pids it named (started / attached / re-attached), in order.
    pub pids: Vec<u32>,
    /// The code of its last `PROGRAM EXIT CODE n` line, if it printed one.
    pub printed: Option<i32>,
    /// Whether it said cmappserver could not start the application.
    pub refused: bool,
    /// Whether it said cmappserver did not acknowledge the exit it reported
    /// ([`NOT_ACKNOWLEDGED`]): the exit may then be reported again.
    pub unacked: bool,
    /// Its last lines, for the report.
    pub tail: String,
    /// Every line it wrote to stderr, with the wall-clock time the runner
    /// read it at: for a human reading a kept history, not for the checker.
    pub output: Vec<(Ms, String)>,
}

/// Everything that happened.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub apps: Vec<AppRun>,
    pub dups: Vec<Dup>,
    pub managers: Vec<MgrRun>,
    /// Periods when managers could not reach cmappserver: partitions and
    /// cmappserver being down (from the kill to its next readiness).
    pub outages: Vec<(Ms, Ms, &'static str)>,
    /// Periods when the state directory's filesystem was full.
    pub disk_full: Vec<(Ms, Ms)>,
    /// Application pids whose shim the runner killed, and when.
    pub shim_kills: Vec<(u32, Ms)>,
    /// Guest "reboots".
    pub reboots: Vec<Ms>,
    /// `cmappmgr_timeout`, and the longest a manager may go without hearing
    /// from the server before an outage starts (its ping interval) plus slack.
    pub timeout_ms: Ms,
    pub ping_ms: Ms,
}

/// Parses the applications' log; malformed lines are reported as violations.
pub fn parse_app_log(text: &str) -> (Vec<AppRun>, Vec<Dup>, Vec<String>) {
    let mut runs: Vec<AppRun> = Vec::new();
    let mut open: HashMap<(String, u32), usize> = HashMap::new();
    let mut dups = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|v| v.parse::<u64>().ok());
        match (w.first().copied(), w.len()) {
            (Some("start"), 4) if num(2).is_some() && num(3).is_some() => {
                let pid = num(2).unwrap() as u32;
                open.insert((w[1].to_string(), pid), runs.len());
                runs.push(AppRun {
                    service: w[1].to_string(),
                    pid,
                    started: num(3).unwrap(),
                    exit: None,
                });
            }
            (Some("exit"), 5) if num(2).is_some() && num(3).is_some() && num(4).is_some() => {
                match open.remove(&(w[1].to_string(), num(2).unwrap() as u32)) {
                    Some(i) => runs[i].exit = Some((num(3).unwrap() as i32, num(4).unwrap())),
                    None => bad.push(format!("application log: an exit with no start: {line:?}")),
                }
            }
            (Some("dup"), 5) if num(2).is_some() && num(3).is_some() => dups.push(Dup {
                service: w[1].to_string(),
                pid: num(2).unwrap() as u32,
                at: num(3).unwrap(),
                holder: w[4].to_string(),
            }),
            _ => bad.push(format!("application log: malformed line {line:?}")),
        }
    }
    (runs, dups, bad)
}

/// cmappserver reachable for less than this between two outages may go
/// unseen by a manager, so the two count as one. A reconnecting cmappmgr
/// puts a fresh SYN on the wire every second (`client::tcp_connect`: a
/// lone connect started during an outage waits in TCP's SYN backoff across
/// the heal, a defect the long campaigns found), so a window of a second
/// and the handshake's time is seen.
const RETRY_GAP: Ms = 1100;

/// The same after an outage during which cmappserver restarted: every
/// manager then reconnects at once (refused meanwhile, each retries within
/// 250 ms), to a server that has just started, and goes through TCP, TLS,
/// the hello, the re-attach and a ping before it counts as heard. Measured
/// in the one-hour campaigns of 2026-11-29 (debug build, load 10 to 20):
/// from the restarted server's readiness to the start of the application of
/// a manager that waited for it, median 0.50 s, 90th percentile 1.55 s
/// (1.82 s in the other run), 95th 2.1 s; three bursts of managers gave up
/// after reachable windows of 1.14 to 1.39 s between such an outage and the
/// next.
const RESTART_GAP: Ms = 2000;

/// Whether an outage of this kind is cmappserver down (it restarts at its end).
fn server_down(kind: &str) -> bool {
    matches!(kind, "server-kill" | "server-term" | "upgrade" | "reboot")
}

/// An outage as a manager lives it: from its start until a manager can
/// have been heard again (its end and the time to reconnect).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outage {
    from: Ms,
    to: Ms,
    /// `to` and the time to reconnect: [`RETRY_GAP`], or [`RESTART_GAP`]
    /// when cmappserver restarted during it.
    back: Ms,
    kind: String,
}

/// The outages merged where they overlap or where the next begins before a
/// manager can be back from the last.
fn merged(outages: &[(Ms, Ms, &'static str)]) -> Vec<Outage> {
    let mut v: Vec<(Ms, Ms, &str)> = outages.to_vec();
    v.sort();
    let mut out: Vec<Outage> = Vec::new();
    for (a, b, kind) in v {
        match out.last_mut() {
            Some(last) if a <= last.back => {
                last.to = last.to.max(b);
                if !last.kind.contains(kind) {
                    last.kind = format!("{}+{kind}", last.kind);
                }
            }
            _ => out.push(Outage {
                from: a,
                to: b,
                back: 0,
                kind: kind.to_string(),
            }),
        }
        let last = out.last_mut().expect("just pushed or extended");
        let restarted = last.kind.split('+').any(server_down);
        last.back = last.to + if restarted { RESTART_GAP } else { RETRY_GAP };
    }
    out
}

fn secs(ms: Ms) -> f64 {
    ms as f64 / 1000.0
}

/// Checks the history against the README's promises; returns one line per violation.
pub fn check(h: &History) -> Vec<String> {
    judge(h).violations
}

/// The checker's findings.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Broken promises.
    pub violations: Vec<String>,
    /// Oddities that break no promise (worth a look).
    pub notes: Vec<String>,
}

/// Checks the history; violations and notes.
pub fn judge(h: &History) -> Verdict {
    let mut v = Vec::new();
    for d in &h.dups {
        v.push(format!(
            "two copies of {} at once: pid {} started at {} while pid {} held the service's lock",
            d.service, d.pid, d.at, d.holder
        ));
    }
    // Pids are reused in a long campaign: a pid at an instant names the
    // run of that pid (and service) that had started by then, the latest.
    let run_at = |service: Option<&str>, pid: u32, t: Ms| -> Option<usize> {
        h.apps
            .iter()
            .enumerate()
            .filter(|(_, r)| r.pid == pid && r.started <= t + 50 && service.is_none_or(|s| r.service == s))
            .max_by_key(|(_, r)| r.started)
            .map(|(i, _)| i)
    };
    let shim_killed = |run: usize| h.shim_kills.iter().any(|(p, t)| run_at(None, *p, *t) == Some(run));
    let rebooted_after = |t: Ms| h.reboots.iter().any(|r| *r + 50 >= t);
    let outages = merged(&h.outages);
    let mut pid_zero = Vec::new();
    // Exits reported to some manager, by run.
    let mut reported: HashMap<usize, i32> = HashMap::new();
    // The manager runs each exit was reported to, by run.
    let mut reported_to: HashMap<usize, Vec<&MgrRun>> = HashMap::new();

    for m in &h.managers {
        let who = format!("manager {} of {} (pid {})", m.mgr_pid, m.service, m.mgr_pid);
        let mut pid = m.pids.last().copied();
        if pid == Some(0) {
            // Attached to a process whose shim a restarted cmappserver
            // adopted before it started it: cmappmgr names pid 0 (a known
            // flaw, see the report). The process is then the latest of the
            // service that had ended with the code reported when the
            // manager ended, else the one that started nearest its start.
            let code = m.code.or(m.printed);
            let of_service = || h.apps.iter().filter(|r| r.service == m.service && r.started <= m.ended);
            pid = of_service()
                .filter(|r| r.exit.is_some_and(|(c, at)| Some(c) == code && at <= m.ended + 50))
                .max_by_key(|r| r.started)
                .or_else(|| of_service().min_by_key(|r| r.started.abs_diff(m.started)))
                .map(|r| r.pid);
            pid_zero.push(format!("{who}: attached to running {} (pid 0)", m.service));
        }
        let idx = pid.and_then(|p| run_at(Some(&m.service), p, m.ended));
        let run = idx.map(|i| &h.apps[i]);
        // What it reported: its exit code, or, killed after it printed the
        // exit, the code it printed (the package log has it).
        let outcome = m.code.or(m.printed);
        let Some(c) = outcome else {
            if m.signalled.is_none() {
                v.push(format!("{who} was killed by a signal nobody sent; {}", m.tail));
            }
            continue;
        };
        if APP_CODES.contains(&c) {
            let Some(p) = pid else {
                v.push(format!("{who} exited {c} without naming a process; {}", m.tail));
                continue;
            };
            match run.and_then(|r| r.exit) {
                Some((code, _)) if code == c => {
                    if let Some(i) = idx {
                        reported_to.entry(i).or_default().push(m);
                    }
                    if let Some(other) = idx.and_then(|i| reported.insert(i, c)) {
                        if other != c {
                            v.push(format!(
                                "pid {p} of {} reported as two different exits: {other} and {c}",
                                m.service
                            ));
                        }
                    }
                }
                Some((code, _)) => v.push(format!(
                    "{who} reported exit {c} for pid {p}, which exited {code}; {}",
                    m.tail
                )),
                None => v.push(format!(
                    "{who} reported exit {c} for pid {p}, which never exited by itself; {}",
                    m.tail
                )),
            }
            continue;
        }
        match c {
            0 if m.signalled == Some("TERM") => {}
            70 => match pid {
                Some(_) if idx.is_some_and(shim_killed) => {
                    let i = idx.unwrap_or_default();
                    reported.insert(i, 70);
                    reported_to.entry(i).or_default().push(m);
                }
                Some(p) => v.push(format!(
                    "{who} was told the exit status of pid {p} was lost (70), though its shim was never killed{}; {}",
                    match run.and_then(|r| r.exit) {
                        Some((code, at)) => format!(" (the application had exited {code} at {at})"),
                        None => String::new(),
                    },
                    m.tail
                )),
                None => v.push(format!("{who} exited 70 without naming a process; {}", m.tail)),
            },
            69 => {
                let since = run.map(|r| r.started).unwrap_or(m.started);
                if !h.reboots.iter().any(|r| *r >= since) {
                    v.push(format!(
                        "{who} was told its process was gone (69) with no reboot since it started; {}",
                        m.tail
                    ));
                }
            }
            1 => {
                // Unreachable for cmappserver_timeout: some outage (partition,
                // server down) lasted, within this manager's life and before
                // its exit, at least the timeout less one ping interval (the
                // last answer may predate the outage by that much). A manager
                // is unheard until it can have reconnected after the outage's
                // end (`back`): an exit in that time counts it.
                let need = h.timeout_ms.saturating_sub(h.ping_ms + 500);
                let longest = outages
                    .iter()
                    .filter(|o| o.from <= m.ended && o.back >= m.started)
                    .map(|o| {
                        let until = if m.ended <= o.back { m.ended } else { o.to };
                        (until.saturating_sub(o.from.max(m.started)), o.kind.clone())
                    })
                    .max();
                match longest {
                    Some((len, _)) if len >= need => {}
                    Some((len, kind)) => v.push(format!(
                        "{who} gave up on the node (exit 1), but its longest outage ({kind}) was {:.1} s, shorter than the timeout ({:.1} s); {}",
                        secs(len),
                        secs(h.timeout_ms),
                        m.tail
                    )),
                    None => v.push(format!(
                        "{who} gave up on the node (exit 1) with no outage during its life; {}",
                        m.tail
                    )),
                }
            }
            // cmappserver could not start it (71; 75 before cmappmgr's exit
            // codes were split): a launch on a full state disk.
            71 | 75 if m.refused && h.disk_full.iter().any(|(a, b)| *a <= m.ended && *b + 500 >= m.started) => {}
            _ => v.push(format!(
                "{who} exited {c}, which nothing in the history explains; {}",
                m.tail
            )),
        }
    }

    // An exit reported and acknowledged is forgotten by cmappserver: a
    // manager started after that (the cluster's next start of the service)
    // must start a new process, not be handed the old exit again. Only a
    // manager that said its acknowledgement went unconfirmed leaves the
    // record for the next one.
    let mut again: Vec<(usize, &MgrRun, &MgrRun)> = reported_to
        .iter()
        .filter_map(|(i, runs)| {
            runs.iter().find_map(|first| {
                runs.iter()
                    .filter(|later| !first.unacked && later.started >= first.ended)
                    .min_by_key(|later| later.started)
                    .map(|later| (*i, *first, *later))
            })
        })
        .collect();
    again.sort_by_key(|(i, _, _)| *i);
    for (i, first, later) in again {
        let r = &h.apps[i];
        v.push(format!(
            "the exit of {} pid {} was reported again: manager {} reported it (acknowledged) and ended at {}; manager {}, started after that at {}, was handed the same exit instead of a new start; {}",
            r.service, r.pid, first.mgr_pid, first.ended, later.mgr_pid, later.started, later.tail
        ));
    }

    for (i, r) in h.apps.iter().enumerate() {
        match r.exit {
            Some((code, at)) => {
                if reported.contains_key(&i) || shim_killed(i) || rebooted_after(at) {
                    continue;
                }
                v.push(format!(
                    "the exit of {} pid {} (code {code} at {at}) was never reported to a manager",
                    r.service, r.pid
                ));
            }
            None => {
                // Killed: only a reboot or the end of a killed shim may do that.
                if !shim_killed(i) && !h.reboots.iter().any(|t| *t >= r.started) {
                    v.push(format!(
                        "{} pid {} (started at {}) never exited, and neither a reboot nor its shim's end explains it",
                        r.service, r.pid, r.started
                    ));
                }
            }
        }
    }
    Verdict {
        violations: v,
        notes: pid_zero,
    }
}

/// How many of each fault kind, for the report.
pub type FaultCounts = BTreeMap<&'static str, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    fn app(service: &str, pid: u32, started: Ms, exit: Option<(i32, Ms)>) -> AppRun {
        AppRun {
            service: service.into(),
            pid,
            started,
            exit,
        }
    }

    fn mgr(service: &str, pids: &[u32], started: Ms, ended: Ms, code: Option<i32>) -> MgrRun {
        MgrRun {
            service: service.into(),
            mgr_pid: 1000 + pids.first().copied().unwrap_or(0),
            started,
            ended,
            code,
            signalled: None,
            pids: pids.to_vec(),
            printed: code,
            refused: false,
            unacked: false,
            tail: String::new(),
            output: Vec::new(),
        }
    }

    fn history() -> History {
        History {
            timeout_ms: 6000,
            ping_ms: 1500,
            ..History::default()
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let mut h = history();
        h.apps = vec![app("s1", 10, 0, Some((7, 500))), app("s1", 11, 600, Some((9, 900)))];
        h.managers = vec![mgr("s1", &[10], 0, 520, Some(7)), mgr("s1", &[11], 550, 950, Some(9))];
        assert_eq!(check(&h), Vec::<String>::new());
    }

    #[test]
    fn the_log_parses_and_flags_what_it_cannot_read() {
        let (runs, dups, bad) = parse_app_log(
            "start s1 10 100\nexit s1 10 7 200\nstart s2 11 150\ndup s2 12 160 11\nexit s3 99 1 5\ngarbage\n",
        );
        assert_eq!(runs, vec![app("s1", 10, 100, Some((7, 200))), app("s2", 11, 150, None)]);
        assert_eq!(dups.len(), 1);
        assert_eq!(bad.len(), 2, "{bad:?}");
    }

    #[test]
    fn an_unreported_exit_is_a_violation() {
        let mut h = history();
        h.apps = vec![app("s1", 10, 0, Some((7, 500)))];
        h.managers = vec![mgr("s1", &[10], 0, 300, None)];
        h.managers[0].signalled = Some("KILL");
        let v = check(&h);
        assert!(v.len() == 1 && v[0].contains("never reported"), "{v:?}");
    }

    #[test]
    fn status_lost_is_allowed_only_where_the_shim_was_killed() {
        let mut h = history();
        h.apps = vec![app("s1", 10, 0, Some((7, 500)))];
        h.managers = vec![mgr("s1", &[10], 0, 600, Some(70))];
        let v = check(&h);
        assert!(v.iter().any(|l| l.contains("lost (70)")), "{v:?}");
        assert!(v.iter().any(|l| l.contains("never reported")), "{v:?}");
        h.shim_kills.push((10, 490));
        assert_eq!(check(&h), Vec::<String>::new());
    }

    #[test]
    fn a_wrong_or_invented_code_and_two_copies_are_violations() {
        let mut h = history();
        h.apps = vec![app("s1", 10, 0, Some((7, 500))), app("s1", 11, 0, None)];
        h.managers = vec![mgr("s1", &[10], 0, 600, Some(8)), mgr("s1", &[11], 0, 600, Some(9))];
        h.dups.push(Dup {
            service: "s1".into(),
            pid: 11,
            at: 10,
            holder: "10".into(),
        });
        let v = check(&h).join("\n");
        assert!(v.contains("which exited 7"), "{v}");
        assert!(v.contains("never exited by itself"), "{v}");
        assert!(v.contains("two copies of s1"), "{v}");
    }

    #[test]
    fn exit_1_needs_an_outage_as_long_as_the_timeout() {
        let mut h = history();
        h.managers = vec![mgr("s1", &[], 0, 4600, Some(1))];
        // Overlapping, and cmappserver reachable for a moment too short to
        // be seen: one outage, 1.0 to 4.5 s, a manager back by 5.6 s.
        h.outages = vec![
            (1000, 2000, "partition-link"),
            (1500, 3000, "partition-loss"),
            (4000, 4500, "partition-link"),
        ];
        let v = check(&h);
        assert!(v.len() == 1 && v[0].contains("3.6 s, shorter"), "{v:?}");
        // An exit while the manager cannot have reconnected yet counts
        // that time as outage: 4.1 s, enough (6 s less a ping and slack).
        h.managers[0].ended = 5100;
        assert_eq!(check(&h), Vec::<String>::new());
        // Reachable for 1.2 s: a manager sees that (a fresh SYN every
        // second), so the outages count apart.
        h.outages[2] = (4200, 4500, "partition-link");
        let v = check(&h);
        assert!(v.len() == 1 && v[0].contains("2.0 s, shorter"), "{v:?}");
        h.outages.push((5000, 11_000, "partition-link"));
        h.managers[0].ended = 11_000;
        assert_eq!(check(&h), Vec::<String>::new());
    }

    /// Found in the long runs: after cmappserver restarted, every manager
    /// reconnects at once to a server that has just started, and 1.15 s
    /// between that and a long partition was not enough for all of them.
    #[test]
    fn after_a_restart_a_window_counts_once_managers_can_be_back() {
        let mut h = history();
        h.managers = vec![mgr("s1", &[], 0, 5100, Some(1))];
        h.outages = vec![
            (1000, 2000, "partition-link"),
            (1500, 3000, "upgrade"),
            (4150, 20_000, "partition-loss"),
        ];
        // Up 1.15 s after the restart: one outage from 1.0 s.
        assert_eq!(check(&h), Vec::<String>::new());
        // The same window after a partition alone is seen: 2.0 s, then 0.95 s.
        h.outages[1].2 = "partition-loss";
        let v = check(&h);
        assert!(v.len() == 1 && v[0].contains("2.0 s, shorter"), "{v:?}");
        // Up 2.1 s after a restart is seen too.
        h.outages[1].2 = "server-kill";
        h.outages[2].0 = 5100;
        h.managers[0].ended = 5300;
        let v = check(&h);
        assert!(v.len() == 1 && v[0].contains("2.0 s, shorter"), "{v:?}");
        // An exit within 2 s of the restart's end counts that time.
        h.managers[0].ended = 5000;
        assert_eq!(check(&h), Vec::<String>::new());
    }

    /// Found in the long run: pids wrap (pid_max 32768 here), and one
    /// service's processes may share a pid an hour apart.
    #[test]
    fn a_reused_pid_names_the_run_of_its_time() {
        let mut h = history();
        h.apps = vec![
            app("s1", 10, 0, Some((42, 500))),
            app("s1", 10, 90_000, Some((25, 90_500))),
        ];
        h.managers = vec![
            mgr("s1", &[10], 0, 520, Some(42)),
            mgr("s1", &[10], 89_900, 90_600, Some(25)),
        ];
        h.shim_kills.push((10, 200));
        assert_eq!(check(&h), Vec::<String>::new());
        h.managers[1].code = Some(70);
        let v = check(&h);
        assert!(v.iter().any(|l| l.contains("lost (70)")), "{v:?}");
    }

    #[test]
    fn pid_0_is_matched_by_the_code_reported() {
        let mut h = history();
        h.apps = vec![app("s1", 10, 0, Some((42, 500))), app("s1", 11, 600, Some((25, 900)))];
        h.managers = vec![mgr("s1", &[10], 0, 520, Some(42)), mgr("s1", &[0], 400, 950, Some(25))];
        let verdict = judge(&h);
        assert_eq!(verdict.violations, Vec::<String>::new());
        assert_eq!(verdict.notes.len(), 1);
        h.managers[1].code = Some(26);
        h.managers[1].printed = Some(26);
        assert!(!check(&h).is_empty());
    }

    /// The defect 2702f5a fixed: cmappmgr exited without waiting for
    /// `Acked`, the acknowledgement was held up, and the cluster's next start
    /// of the service attached to the old record and reported the same exit
    /// again, starting nothing. The same code twice is no "two different
    /// exits"; the checker needs the order of the managers.
    #[test]
    fn an_acknowledged_exit_handed_to_the_next_start_is_a_violation() {
        let mut h = history();
        h.apps = vec![app("s1", 10, 0, Some((7, 500)))];
        h.managers = vec![mgr("s1", &[10], 0, 520, Some(7)), mgr("s1", &[10], 900, 1000, Some(7))];
        let v = check(&h);
        assert!(
            v.len() == 1 && v[0].contains("reported again") && v[0].contains("started after that at 900"),
            "{v:?}"
        );
        // The first said its acknowledgement went unconfirmed: the record
        // may rightly be there for the next one.
        h.managers[0].unacked = true;
        assert_eq!(check(&h), Vec::<String>::new());
        // Two managers watching the process at once both report it.
        h.managers[0].unacked = false;
        h.managers[1].started = 400;
        assert_eq!(check(&h), Vec::<String>::new());
        // A lost status (its shim killed) handed on counts the same.
        h.shim_kills.push((10, 450));
        h.managers[0].code = Some(70);
        h.managers[1].code = Some(70);
        h.managers[1].started = 900;
        let v = check(&h);
        assert!(v.len() == 1 && v[0].contains("reported again"), "{v:?}");
    }

    #[test]
    fn a_reboot_explains_69_and_killed_processes() {
        let mut h = history();
        h.apps = vec![app("s1", 10, 0, None), app("s2", 11, 0, Some((5, 100)))];
        h.managers = vec![mgr("s1", &[10], 0, 600, Some(69))];
        let v = check(&h);
        assert_eq!(v.len(), 3, "{v:?}");
        h.reboots.push(300);
        assert_eq!(check(&h), Vec::<String>::new());
    }
}
