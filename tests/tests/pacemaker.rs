//! The OCF agent `ocf:cmapp:guestapp` in a real Pacemaker cluster: corosync
//! and pacemakerd (single node, in the test's own network and mount
//! namespaces, see `cmapp_tests::pacemaker`), a real cmappserver as the guest
//! in a second network namespace, resources configured with `cibadmin`.
//! And `ocf-tester` against a real cmappserver.
//!
//! The restart times printed by `a_killed_application_is_restarted_...` are
//! the figures in BENCHMARKS.md:
//!
//! ```text
//! cargo nextest run -p cmapp-tests --test pacemaker --no-capture -E 'test(restarted)'
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cmapp_tests::keys::{self, Keys};
use cmapp_tests::netpair::NetPair;
use cmapp_tests::pacemaker::Cluster;
use cmapp_tests::server::Server;
use cmapp_tests::{alive, wait_until, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ocf/guestapp")
}

/// A cluster in the host namespace of a pair, a cmappserver in its guest
/// namespace. Fields drop in order: the cluster (and with its executor the
/// watchers), the guest (and its applications), the namespaces, the files.
struct Testbed {
    cluster: Cluster,
    guest: Server,
    net: NetPair,
    conf: PathBuf,
    _keys: Keys,
    _tmp: tempfile::TempDir,
}

impl Testbed {
    fn new(tag: &str) -> Testbed {
        let tmp = tempfile::tempdir().unwrap();
        // The cluster's daemons run as hacluster and must reach their log file.
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let dir = tmp.path().to_path_buf();
        let net = NetPair::new(tag);
        let keys = keys::pinned(&dir.join("keys"), "");
        let guest = Server::start_with(
            &dir.join("guest"),
            &keys,
            &format!("listen={}:0\nstopGracePeriod=2\n", net.guest_ip),
            cmapp_tests::bin("cmappserver"),
            Some(net.guest_ns.clone()),
            Vec::new(),
        );
        let conf = keys::manager_conf(&dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
        let cluster = Cluster::start(&net.host_ns, &dir.join("cluster"), &agent());
        Testbed {
            cluster,
            guest,
            net,
            conf,
            _keys: keys,
            _tmp: tmp,
        }
    }

    /// Adds a guestapp resource `id` running `/bin/sleep` under the name `id`.
    fn add(&self, id: &str, watcher: bool, interval: &str, timeout_s: u32, meta: &[(&str, &str)]) {
        self.add_service(id, "/bin/sleep 1000000", watcher, interval, timeout_s, meta)
    }

    fn add_service(
        &self,
        id: &str,
        service: &str,
        watcher: bool,
        interval: &str,
        timeout_s: u32,
        meta: &[(&str, &str)],
    ) {
        let params = [
            ("node", self.guest.node()),
            ("service", service.to_string()),
            ("name", id.to_string()),
            ("cmappserver_timeout", timeout_s.to_string()),
            ("conf", self.conf.display().to_string()),
            ("cmappmgr", cmapp_tests::bin("cmappmgr").display().to_string()),
            ("watcher", watcher.to_string()),
        ];
        let nv = |set: &str, (k, v): (&str, &str)| format!(r#"<nvpair id="{id}-{set}-{k}" name="{k}" value="{v}"/>"#);
        let ia: String = params.iter().map(|(k, v)| nv("ia", (k, v))).collect();
        let ma: String = meta.iter().map(|kv| nv("ma", *kv)).collect();
        let xml = format!(
            r#"<primitive id="{id}" class="ocf" provider="cmapp" type="guestapp">
                 <instance_attributes id="{id}-ia">{ia}</instance_attributes>
                 <meta_attributes id="{id}-ma">{ma}</meta_attributes>
                 <operations>
                   <op id="{id}-monitor" name="monitor" interval="{interval}" timeout="{}s"/>
                   <op id="{id}-start" name="start" interval="0" timeout="60s"/>
                   <op id="{id}-stop" name="stop" interval="0" timeout="{}s"/>
                 </operations>
               </primitive>"#,
            timeout_s + 20,
            timeout_s + 40
        );
        self.cluster.create_resource(&xml);
    }

    /// The pids of the watchers (`cmappmgr watch`) of resource `rsc` of this testbed.
    fn watchers(&self, rsc: &str) -> Vec<u32> {
        let report = format!("--resource {rsc} ");
        let conf = self.conf.display().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.iter().any(|a| a == "watch")
                && args.contains(&conf)
                && args.iter().any(|a| a.contains(&report))
                && alive(pid)
            {
                out.push(pid);
            }
        }
        out
    }

    /// The pid of the running application named `name` in the guest.
    fn app_pid(&self, name: &str) -> Option<u32> {
        for e in std::fs::read_dir(self.guest.state_dir.join("procs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = e.path();
            let Ok(meta) = std::fs::read_to_string(dir.join("meta.json")) else {
                continue;
            };
            let meta: serde_json::Value = serde_json::from_str(&meta).unwrap_or_default();
            if meta["name"].as_str() != Some(name) || dir.join("exit.json").exists() {
                continue;
            }
            let pid: Option<u32> = std::fs::read_to_string(dir.join("pid.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["pid"].as_u64())
                .map(|p| p as u32);
            if let Some(pid) = pid.filter(|p| *p != 0 && alive(*p)) {
                return Some(pid);
            }
        }
        None
    }

    /// Waits for `name` to run as a process other than `not`; returns its pid.
    fn wait_running(&self, name: &str, not: Option<u32>, limit: Duration) -> u32 {
        let mut found = None;
        let ok = wait_until(limit, || {
            found = self.app_pid(name).filter(|p| Some(*p) != not);
            found.is_some()
        });
        assert!(
            ok,
            "{name} is not running (as a new process) after {limit:?}\n{}\n{}",
            self.cluster.status(),
            self.cluster.log_tail()
        );
        found.unwrap()
    }

    fn wait_gone(&self, name: &str, limit: Duration) {
        assert!(
            wait_until(limit, || self.app_pid(name).is_none()),
            "{name} still runs after {limit:?}\n{}",
            self.cluster.status()
        );
    }
}

fn kill9(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

#[test]
fn a_killed_application_is_restarted_by_pacemaker_within_2_s_with_the_watcher_and_at_the_monitor_without() {
    let t = Testbed::new("pr");
    t.add("pushed", true, "60s", 10, &[]);
    t.add("polled", false, "60s", 10, &[]);
    // Start launches the application in the guest.
    let pushed = t.wait_running("pushed", None, WAIT);
    let polled = t.wait_running("polled", None, WAIT);
    t.cluster.settle();
    assert_eq!(t.app_pid("pushed"), Some(pushed), "started twice");

    let t0 = Instant::now();
    kill9(pushed);
    kill9(polled);
    let pushed2 = t.wait_running("pushed", Some(pushed), Duration::from_secs(10));
    let with_watcher = t0.elapsed();
    let polled2 = t.wait_running("polled", Some(polled), Duration::from_secs(90));
    let monitor_only = t0.elapsed();
    eprintln!(
        "kill in the guest -> new process running (monitor interval 60 s): with the watcher {:.0} ms; monitor alone {:.1} s",
        with_watcher.as_secs_f64() * 1000.0,
        monitor_only.as_secs_f64()
    );
    assert!(
        with_watcher < Duration::from_secs(2),
        "with the watcher: {with_watcher:?}"
    );
    assert!(alive(pushed2) && alive(polled2));
    t.cluster.settle();
    // One watcher for the new process (the old one ended after its report);
    // none where the watcher is off.
    assert_eq!(t.watchers("pushed").len(), 1);
    assert!(t.watchers("polled").is_empty());
    // The watcher reported the exit exactly once; the monitor alone
    // counted one failure. (Pacemaker 2.1.5's controller sometimes counts
    // one `crm_resource --fail` twice: see the README's Pacemaker section.)
    assert_eq!(t.cluster.failures_pushed("pushed"), 1, "{}", t.cluster.log_tail());
    assert_eq!(t.cluster.failures_pushed("polled"), 0, "the watcher was off");
    assert_eq!(t.cluster.fail_count("polled"), 1, "{}", t.cluster.status());
    eprintln!(
        "fail-count after one pushed failure: {}",
        t.cluster.fail_count("pushed")
    );

    // The node leaves the cluster (its daemons killed): the watcher goes too,
    // without reporting anything; the application is left as it is.
    let mut t = t;
    t.cluster.kill();
    assert!(
        wait_until(Duration::from_secs(5), || t.watchers("pushed").is_empty()),
        "the watcher outlived the node's cluster membership"
    );
    assert!(alive(pushed2));
}

#[test]
fn threshold_target_role_unmanaged_and_maintenance_mode() {
    let t = Testbed::new("pt");
    t.add("limited", true, "60s", 10, &[("migration-threshold", "2")]);
    t.add("stopped", true, "60s", 10, &[]);
    t.add("unmanaged", true, "60s", 10, &[]);
    t.add("maint", true, "60s", 10, &[]);
    t.add_service("broken", "/nonexistent/app", true, "60s", 10, &[]);
    let limited = t.wait_running("limited", None, WAIT);
    let stopped = t.wait_running("stopped", None, WAIT);
    let unmanaged = t.wait_running("unmanaged", None, WAIT);
    let maint = t.wait_running("maint", None, WAIT);
    t.cluster.settle();
    // A failed start (the program is not installed in the guest) leaves no watcher.
    assert!(t.cluster.fail_count("broken") >= 1, "{}", t.cluster.status());
    assert!(t.watchers("broken").is_empty());
    assert_eq!(t.watchers("limited").len(), 1);

    // migration-threshold exhausted: the resource stops and stays stopped.
    // (Each kill is restarted until the fail count reaches the threshold.)
    let mut pid = limited;
    let mut kills = 0;
    while t.cluster.fail_count("limited") < 2 {
        assert!(kills < 2, "two failures did not exhaust migration-threshold=2");
        kill9(pid);
        kills += 1;
        assert!(wait_until(WAIT, || t.cluster.fail_count("limited") >= kills));
        t.cluster.settle();
        if let Some(p) = t.app_pid("limited") {
            pid = p;
        }
    }
    t.cluster.settle();
    assert_eq!(t.app_pid("limited"), None, "{}", t.cluster.status());
    assert!(
        t.watchers("limited").is_empty(),
        "a watcher outlived its stopped resource"
    );
    let located = t.cluster.tool("crm_resource", &["--locate", "--resource", "limited"]);
    let text = String::from_utf8_lossy(&located.stdout).to_string() + &String::from_utf8_lossy(&located.stderr);
    assert!(text.contains("NOT running"), "{text}");

    // target-role Stopped stops the application in the guest.
    t.cluster.set_meta("stopped", "target-role", "Stopped");
    t.wait_gone("stopped", WAIT);
    assert!(!alive(stopped));
    t.cluster.settle();
    assert!(t.watchers("stopped").is_empty(), "stop must end the watcher");

    // An unmanaged resource is left alone: neither stopped nor restarted.
    t.cluster.set_meta("unmanaged", "is-managed", "false");
    t.cluster.set_meta("unmanaged", "target-role", "Stopped");
    t.cluster.settle();
    assert_eq!(t.app_pid("unmanaged"), Some(unmanaged), "{}", t.cluster.status());
    let before = t.cluster.transitions();
    kill9(unmanaged);
    assert!(
        wait_until(WAIT, || t.cluster.fail_count("unmanaged") >= 1),
        "the watcher's report did not reach the cluster\n{}",
        t.cluster.status()
    );
    t.cluster.decided_since(before);
    assert_eq!(t.app_pid("unmanaged"), None, "restarted although unmanaged");

    // Maintenance mode: the cluster touches nothing.
    t.cluster.set_property("maintenance-mode", "true");
    let before = t.cluster.transitions();
    t.cluster.set_meta("maint", "target-role", "Stopped");
    t.cluster.decided_since(before);
    assert_eq!(t.app_pid("maint"), Some(maint), "{}", t.cluster.status());

    // Still stopped after all those transitions.
    assert_eq!(t.app_pid("limited"), None);
}

#[test]
fn a_guest_unreachable_longer_than_the_timeout_fails_the_monitor_and_pacemaker_recovers() {
    let t = Testbed::new("pu");
    t.add("far", true, "2s", 5, &[]);
    let far = t.wait_running("far", None, WAIT);
    t.cluster.settle();
    let t0 = Instant::now();
    t.net.partition();
    assert!(
        wait_until(Duration::from_secs(40), || t.cluster.fail_count("far") >= 1),
        "no monitor failure while the guest was unreachable\n{}",
        t.cluster.status()
    );
    let failed_after = t0.elapsed();
    t.net.heal();
    assert!(
        failed_after >= Duration::from_secs(5),
        "failed before the timeout: {failed_after:?}"
    );
    // Recovery: stop (once the guest answers again), then a new start.
    let far2 = t.wait_running("far", Some(far), Duration::from_secs(60));
    assert!(alive(far2) && !alive(far));
    t.cluster.settle();
    let status = t.cluster.status();
    assert!(
        status.contains("monitor on") && status.contains("returned 'error'"),
        "{status}"
    );
}

#[test]
fn ocf_tester_passes_against_a_real_cmappserver() {
    cmapp_tests::require_root("ocf-tester checks the agent's permissions as nobody");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let keys = keys::pinned(&dir.join("keys"), "");
    let server = Server::start(&dir.join("guest"), &keys, "stopGracePeriod=2\n");
    let conf = keys::manager_conf(dir, "cmappmgr.conf", &keys.client_private, &keys.client_trust, "");
    // A copy nobody can read (ocf-tester runs meta-data as nobody).
    let copy = dir.join("guestapp");
    std::fs::copy(agent(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new("ocf-tester")
        .args(["-n", "tester1"])
        .args(["-o", &format!("node={}", server.node())])
        .args(["-o", "service=/bin/sleep 1000000"])
        .args(["-o", &format!("conf={}", conf.display())])
        .args(["-o", &format!("cmappmgr={}", cmapp_tests::bin("cmappmgr").display())])
        .args(["-o", "cmappserver_timeout=5"])
        .arg(&copy)
        .env("HA_RSCTMP", dir.join("rsctmp"))
        .output()
        .expect("run ocf-tester (apt-get install resource-agents libxml2-utils)");
    let text = cmapp_tests::stdout_and_stderr(&out);
    assert!(out.status.success() && text.contains("passed all tests"), "{text}");
    // It stopped what it started (the records go at the server's next sweep).
    assert!(
        wait_until(WAIT, || server.recorded().is_empty()),
        "{:?}\n{}",
        server.recorded(),
        server.log.text()
    );
}

#[test]
fn the_agents_meta_data_validates() {
    let md = Command::new(agent()).arg("meta-data").output().unwrap();
    assert!(md.status.success());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &md.stdout).unwrap();
    for schema in [
        vec!["--dtdvalid", "/usr/share/resource-agents/ra-api-1.dtd"],
        vec!["--relaxng", "/usr/share/resource-agents/metadata.rng"],
    ] {
        let out = Command::new("xmllint")
            .arg("--noout")
            .args(&schema)
            .arg(file.path())
            .output()
            .expect("xmllint (apt-get install libxml2-utils resource-agents)");
        assert!(
            out.status.success(),
            "{schema:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every parameter the issue names, with its default.
    let text = String::from_utf8_lossy(&md.stdout);
    for p in [
        r#"name="node" required="1""#,
        r#"name="service" required="1""#,
        r#"name="name""#,
        r#"name="cmappserver_timeout""#,
        r#"default="/etc/cmappmgr.conf""#,
        r#"default="/usr/sbin/cmappmgr""#,
    ] {
        assert!(text.contains(p), "meta-data lacks {p}");
    }
}
