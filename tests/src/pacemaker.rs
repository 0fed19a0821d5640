//! A real single-node Pacemaker cluster (corosync + pacemakerd) for a test,
//! isolated from the machine and from any other cluster:
//!
//! - in the test's own network namespace (corosync on that namespace's
//!   loopback; Pacemaker's IPC uses abstract sockets, which are per network
//!   namespace, so the cluster tools reach this cluster and no other);
//! - in a private mount namespace where `/var/lib/pacemaker`,
//!   `/var/lib/corosync` and `/usr/lib/ocf/resource.d` are the test's own
//!   directories (Pacemaker has no setting for its state location; a bind
//!   mount gives it one), with `ocf:cmapp:guestapp` copied in, and `/run` is
//!   a fresh tmpfs (corosync's lock file, `/run/crm`, `/run/resource-agents`);
//! - started from an initial CIB with `stonith-enabled=false` and
//!   `dc-deadtime=2s`, so the node is online in seconds.
//!
//! A leftover from a crashed run lives in namespaces nobody uses again and
//! cannot disturb the next run. Everything is stopped by pid on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::output::Lines;

/// The directories bind-mounted over the system's, by name under the cluster's dir.
const PRIVATE: &[(&str, &str)] = &[
    ("pacemaker", "/var/lib/pacemaker"),
    ("corosync", "/var/lib/corosync"),
    ("resource.d", "/usr/lib/ocf/resource.d"),
];

/// A running single-node cluster.
#[derive(Debug)]
pub struct Cluster {
    pub netns: String,
    pub dir: PathBuf,
    pub node: String,
    corosync: Option<Child>,
    pacemakerd: Option<Child>,
    pub corosync_log: Lines,
    pub pacemakerd_log: Lines,
    pub pacemaker_log: PathBuf,
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn chown_hacluster(p: &Path) {
    let out = run(Command::new("chown").args(["-R", "hacluster:haclient"]).arg(p));
    assert!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
}

impl Cluster {
    /// Starts corosync and pacemakerd in network namespace `netns` with
    /// state under `dir` (which must be traversable by hacluster), installs
    /// `agent` as ocf:cmapp:guestapp, and waits until the node is online.
    pub fn start(netns: &str, dir: &Path, agent: &Path) -> Cluster {
        crate::require_root("corosync and pacemakerd");
        for tool in [
            "corosync",
            "pacemakerd",
            "cibadmin",
            "crm_resource",
            "unshare",
            "nsenter",
        ] {
            assert!(
                run(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
                    .status
                    .success(),
                "{tool} is not installed (apt-get install pacemaker corosync pacemaker-cli-utils util-linux)"
            );
        }
        let node = String::from_utf8(run(Command::new("uname").arg("-n")).stdout)
            .unwrap()
            .trim()
            .to_string();
        std::fs::create_dir_all(dir).unwrap();
        for (name, _) in PRIVATE {
            std::fs::create_dir_all(dir.join(name)).unwrap();
        }
        let pcmk = dir.join("pacemaker");
        for sub in ["cib", "pengine", "blackbox", "cores"] {
            std::fs::create_dir_all(pcmk.join(sub)).unwrap();
        }
        let cib = pcmk.join("cib/cib.xml");
        std::fs::write(&cib, initial_cib()).unwrap();
        chown_hacluster(&pcmk);
        let provider = dir.join("resource.d/cmapp");
        std::fs::create_dir_all(&provider).unwrap();
        std::fs::copy(agent, provider.join("guestapp")).unwrap();
        let conf = dir.join("corosync.conf");
        std::fs::write(&conf, corosync_conf(&node)).unwrap();
        let pacemaker_log = dir.join("pacemaker.log");
        std::fs::write(&pacemaker_log, "").unwrap();
        chown_hacluster(&pacemaker_log);

        let mut c = Cluster {
            netns: netns.to_string(),
            dir: dir.to_path_buf(),
            node,
            corosync: None,
            pacemakerd: None,
            corosync_log: Lines::default(),
            pacemakerd_log: Lines::default(),
            pacemaker_log,
        };
        let mut corosync = c
            .private_command(&["corosync", "-f", "-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start corosync");
        c.corosync_log.follow(corosync.stderr.take().unwrap());
        c.corosync = Some(corosync);
        eprintln!("corosync started");
        // pacemakerd refuses to start before corosync answers.
        assert!(
            crate::wait_until(crate::WAIT, || c
                .tool_within(3, "corosync-cmapctl", &["-g", "runtime.votequorum.this_node_id"])
                .status
                .success()),
            "corosync did not come up; its log:\n{}",
            c.corosync_log.text()
        );
        let mut pacemakerd = c
            .private_command(&["pacemakerd"])
            .env("PCMK_logfile", &c.pacemaker_log)
            .env("PCMK_logfacility", "none")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pacemakerd");
        c.pacemakerd_log.follow(pacemakerd.stderr.take().unwrap());
        c.pacemakerd = Some(pacemakerd);
        eprintln!("corosync up; pacemakerd started");
        let t0 = Instant::now();
        let online = crate::wait_until(Duration::from_secs(60), || {
            let out = c.tool_within(3, "crmadmin", &["-D", "-t", "1000"]);
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&c.node)
        });
        assert!(online, "the cluster did not elect a DC within 60 s; {}", c.log_tail());
        eprintln!("cluster online in {:.1} s", t0.elapsed().as_secs_f64());
        c
    }

    /// A command run in the cluster's network namespace and a private mount
    /// namespace (the same pid: nsenter, unshare and sh all exec).
    fn private_command(&self, argv: &[&str]) -> Command {
        // A private /run too: corosync's lock (/run/corosync.pid), Pacemaker's
        // /run/crm and the agents' /run/resource-agents.
        let mut script = String::from(
            "set -e; mount -t tmpfs -o mode=0755 cmapp-run /run; \
             mkdir -p /run/crm /run/resource-agents /run/lock; \
             chown hacluster:haclient /run/crm; chmod 0750 /run/crm; ln -s /dev/shm /run/shm; ",
        );
        for (name, target) in PRIVATE {
            script.push_str(&format!(
                "mount --bind '{}' '{target}'; ",
                self.dir.join(name).display()
            ));
        }
        script.push_str("exec \"$@\"");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .args([
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
                "sh",
            ])
            .args(argv)
            .stdin(Stdio::null());
        cmd
    }

    /// A cluster tool (cibadmin, crm_resource, crm_mon, ...) talking to this cluster.
    pub fn tool(&self, prog: &str, args: &[&str]) -> Output {
        self.tool_within(150, prog, args)
    }

    /// A cluster tool, killed after `secs` seconds: one talking to a daemon
    /// that is still starting can wait for ever.
    pub fn tool_within(&self, secs: u32, prog: &str, args: &[&str]) -> Output {
        run(Command::new("timeout")
            .arg(secs.to_string())
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(prog)
            .args(args)
            .stdin(Stdio::null()))
    }

    /// Runs a tool and panics with its output unless it succeeds; returns stdout.
    pub fn ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.tool(prog, args);
        assert!(
            out.status.success(),
            "{prog} {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cibadmin -C -o resources -X XML`.
    pub fn create_resource(&self, xml: &str) {
        self.ok("cibadmin", &["-C", "-o", "resources", "-X", xml]);
    }

    /// Sets a meta attribute of resource `rsc`.
    pub fn set_meta(&self, rsc: &str, name: &str, value: &str) {
        self.ok(
            "crm_resource",
            &[
                "--resource",
                rsc,
                "--meta",
                "--set-parameter",
                name,
                "--parameter-value",
                value,
            ],
        );
    }

    /// Sets a cluster property.
    pub fn set_property(&self, name: &str, value: &str) {
        self.ok(
            "crm_attribute",
            &["--type", "crm_config", "--name", name, "--update", value],
        );
    }

    /// Waits until the cluster has no actions pending (`crm_resource --wait`).
    pub fn settle(&self) {
        self.ok("crm_resource", &["--wait", "--timeout", "120s"]);
    }

    /// Waits until the controller is idle (no transition running). Unlike
    /// [`settle`](Self::settle), this returns while actions the cluster may
    /// not take (an unmanaged resource's recovery) are still wanted.
    pub fn idle(&self) {
        let idle = crate::wait_until(Duration::from_secs(120), || {
            let out = self.tool_within(10, "crmadmin", &["-S", &self.node, "-t", "5000"]);
            String::from_utf8_lossy(&out.stdout).contains("S_IDLE")
        });
        assert!(idle, "the controller did not go idle\n{}", self.status());
    }

    /// How many transitions the scheduler has calculated so far (from its log).
    pub fn transitions(&self) -> usize {
        let text = std::fs::read_to_string(&self.pacemaker_log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("pacemaker-schedulerd") && l.contains("Calculated transition"))
            .count()
    }

    /// Waits until the scheduler has calculated a transition after `before`
    /// (see [`transitions`](Self::transitions)) and the controller is idle
    /// again: the cluster has decided about a change and done what it will.
    pub fn decided_since(&self, before: usize) {
        assert!(
            crate::wait_until(Duration::from_secs(60), || self.transitions() > before),
            "no new transition\n{}",
            self.log_tail()
        );
        self.idle();
    }

    /// How many times the watcher told the cluster that `rsc` failed
    /// (`crm_resource --fail`), from the controller's log.
    pub fn failures_pushed(&self, rsc: &str) -> usize {
        let text = std::fs::read_to_string(&self.pacemaker_log).unwrap_or_default();
        let needle = format!("Failing resource {rsc}...");
        text.lines().filter(|l| l.ends_with(&needle)).count()
    }

    /// The resource's fail count on this node (0 when none; `u64::MAX` for INFINITY).
    pub fn fail_count(&self, rsc: &str) -> u64 {
        let out = self.tool(
            "crm_failcount",
            &["--query", "--resource", rsc, "--node", &self.node, "-q"],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| match l.trim() {
                "INFINITY" => Some(u64::MAX),
                n => n.parse::<u64>().ok(),
            })
            .fold(0, u64::saturating_add)
    }

    /// `crm_mon -1` (for failure messages).
    pub fn status(&self) -> String {
        let out = self.tool("crm_mon", &["-1", "--include", "all"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The end of Pacemaker's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.pacemaker_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "pacemakerd stderr:\n{}\npacemaker log (last lines):\n{}",
            self.pacemakerd_log.text(),
            lines[from..].join("\n")
        )
    }

    /// Every process whose parent is `pid`.
    fn children(pid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if common::proc::stat(p).is_some_and(|s| s.ppid == pid) {
                out.push(p);
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Cluster {
    /// The node leaves the cluster at once: pacemakerd and its daemons are
    /// killed by pid (the daemons are its children), then corosync. No
    /// graceful shutdown: nothing is stopped on the way out.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.pacemakerd.take() {
            let daemons = Self::children(p.id());
            let _ = p.kill();
            let _ = p.wait();
            for d in daemons {
                let _ = kill(Pid::from_raw(d as i32), Signal::SIGKILL);
            }
        }
        if let Some(mut c) = self.corosync.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn corosync_conf(node: &str) -> String {
    format!(
        "totem {{
    version: 2
    cluster_name: cmapptest
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: 1000
}}
logging {{
    to_stderr: yes
    to_syslog: no
    to_logfile: no
}}
quorum {{
    provider: corosync_votequorum
    expected_votes: 1
}}
nodelist {{
    node {{
        ring0_addr: 127.0.0.1
        name: {node}
        nodeid: 1
    }}
}}
"
    )
}

fn initial_cib() -> &'static str {
    r#"<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="cib-bootstrap-options-stonith-enabled" name="stonith-enabled" value="false"/>
        <nvpair id="cib-bootstrap-options-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="cib-bootstrap-options-no-quorum-policy" name="no-quorum-policy" value="ignore"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
"#
}
