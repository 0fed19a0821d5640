//! `cmappserver`: the guest-side daemon.
//!
//! | module         | role                                                          |
//! |----------------|---------------------------------------------------------------|
//! | `server`       | listeners, TLS handshakes, connection cap, shutdown           |
//! | `session`      | one manager connection: hello, requests, pushed events        |
//! | `supervisor`   | the process table, the per-process shims, the state directory |
//! | `probes`       | the built-in LAN and disk probes                              |
//! | `policy`       | the command policy: who may run what, as whom                 |
//! | `runas`        | `cmappserver run-as`: becoming a rule's user before the exec  |
//! | `audit`        | the audit log: one JSON line per authenticated request        |
//! | `reload`       | what SIGHUP replaces: TLS material, policy, audit log         |
//! | `notify`       | systemd readiness, status and watchdog                        |
//! | `manual`       | the man page's sections beyond the command line               |
//!
//! The binary (`src/bin/cmappserver.rs`) is [`main`]; [`docs`] is the command
//! line and the manual for `cmapp-docgen` (the `docgen` crate), which writes
//! the man page and completions for the packages.
//!
//! The same binary is also the shim (`cmappserver shim <dir>`, internal), the
//! probes (`cmappserver net-mon`, `cmappserver disk-mon`, or installed as
//! `cmapp_net_mon` / `cmapp_disk_mon`), and the key generator
//! (`cmappserver keygen`).
#![deny(rust_2018_idioms)]

mod audit;
mod manual;
mod notify;
mod policy;
mod probes;
mod reload;
mod runas;
mod server;
mod session;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use common::address::ListenAddr;
use common::config::ServerConfig;
use common::probe::Probe;

#[derive(Debug, Parser)]
#[command(
    name = "cmappserver",
    version,
    about = "Guest application monitoring server: runs and watches the processes cmappmgr asks for"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, short = 'c', value_name = "PATH", default_value = ServerConfig::DEFAULT_PATH, global = true)]
    conf: PathBuf,
    /// Address to listen on, TCP (`0.0.0.0:5315`) or virtio-vsock
    /// (`vsock:5315`); repeatable; overrides the configuration's `listen`.
    #[arg(long, value_name = "ADDR:PORT|vsock:PORT")]
    listen: Vec<ListenAddr>,
    /// Check the configuration and key material, report every problem, and exit.
    #[arg(long)]
    check_config: bool,
    /// Log debugging detail.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Once ready (every listener bound, the state directory adopted), write
    /// the daemon's pid to this file; it is removed when the daemon stops.
    /// For init scripts; under systemd, readiness comes through NOTIFY_SOCKET.
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate this guest's key and certificate (pinned or CA-signed).
    Keygen(certs::KeygenArgs),
    /// Run the LAN probe (also installed as cmapp_net_mon).
    #[command(name = "net-mon", disable_help_flag = true)]
    NetMon {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the disk probe (also installed as cmapp_disk_mon).
    #[command(name = "disk-mon", disable_help_flag = true)]
    DiskMon {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Internal: supervise one process (started by cmappserver itself).
    #[command(hide = true)]
    Shim { dir: PathBuf },
}

/// Exit codes of cmappserver itself (besides 0, and 1 for `--check-config` problems).
/// cmappserver's own exit codes (see the README), sysexits-style.
mod exit {
    /// A configuration, key or state-directory problem (EX_CONFIG).
    pub const CONFIG: u8 = 78;
    /// No address could be listened on (EX_OSERR).
    pub const CANNOT_LISTEN: u8 = 71;
    /// The pid file cannot be written (EX_CANTCREAT).
    pub const CANNOT_CREATE: u8 = 73;
    /// An internal failure: a thread or a signal handler that cannot be set up.
    pub const INTERNAL: u8 = 1;
}

/// The command line, for the man page and completions.
fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().long_about(
        "Runs in each guest: listens on TLS port 5315 for cmappmgr on the cluster's hosts, starts the \
         applications they ask for, each under its own small supervisor (the shim), and reports their \
         output and exit. Applications outlive a stop, crash or upgrade of cmappserver; the next \
         cmappserver adopts them. Under systemd (Type=notify) it reports readiness once every listener \
         is bound and the state directory adopted.",
    )
}

/// cmappserver's command line and manual sections, for the man page and completions.
pub fn docs() -> (clap::Command, Vec<common::docs::Section>) {
    (command(), manual::sections())
}

/// The whole `cmappserver` program (also the shim, the probes and run-as).
pub fn main() -> ExitCode {
    // Internal, and once per monitored process: a shim started by the
    // supervisor (`shim DIR`) skips clap, whose parser would cost every shim
    // heap pages it keeps for life, and the daemon's code below, whose stack
    // frame would be probed (touched) whole before the shim ran.
    if let Some(dir) = shim_dir() {
        return code(supervisor::shim::main(dir));
    }
    // Internal too: the zygote that forks the spare shims (`cmappserver
    // zygote PAD`, started by the supervisor), for the same reasons.
    if std::env::args_os().nth(1).is_some_and(|a| a == supervisor::zygote::ARG) && std::env::args_os().len() == 3 {
        return code(supervisor::zygote::main());
    }
    not_a_shim()
}

/// Everything but the shim: kept out of `main`'s own stack frame.
#[inline(never)]
fn not_a_shim() -> ExitCode {
    // Multi-call: installed under a probe's name, run that probe.
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    match Probe::from_program(&argv0) {
        Some(Probe::Net) => return code(probes::net::main(args.collect())),
        Some(Probe::Disk) => return code(probes::disk::main(args.collect())),
        None => {}
    }
    // Internal: the shim starts a run-as application through this (see
    // `runas`); not parsed by clap, whose `--` handling would touch the argv.
    if std::env::args().nth(1).as_deref() == Some("run-as") {
        return code(runas::main(std::env::args().skip(2).collect()));
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::NetMon { args }) => code(probes::net::main(args)),
        Some(Command::DiskMon { args }) => code(probes::disk::main(args)),
        Some(Command::Shim { dir }) => code(supervisor::shim::main(dir)),
        Some(Command::Keygen(ref k)) => match certs::run(k, certs::Side::Server) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cmappserver keygen: {e}");
                ExitCode::from(1)
            }
        },
        None => serve(cli),
    }
}

/// `DIR` when the command line is exactly `cmappserver shim DIR`, as the
/// supervisor starts a shim (`launch.rs`).
fn shim_dir() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(cmd), Some(dir), None)
            if cmd == "shim" && !dir.is_empty() && !dir.as_encoded_bytes().starts_with(b"-") =>
        {
            Some(PathBuf::from(dir))
        }
        _ => None,
    }
}

/// Raises the soft limit on open files to the hard limit: every connection
/// the budgets allow (authenticated, in the handshake, silent) holds a
/// descriptor, and so does each process's shim link; the usual soft limit of
/// 1024 would make `accept` fail long before the budgets shed anything.
fn raise_open_file_limit(config: &ServerConfig) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let needed = (config.max_connections
        + config.max_pending_connections
        + config.max_silent_connections
        + 2 * config.max_processes
        + 64) as u64;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
        }
    }
    let now = getrlimit(Resource::RLIMIT_NOFILE).map(|l| l.0).unwrap_or(soft);
    if now < needed {
        tracing::warn!(
            "the open-file limit is {now}, below the {needed} descriptors the connection budgets allow; \
             raise LimitNOFILE or lower maxConnections, maxPendingConnections, maxSilentConnections"
        );
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}

/// Everything `--check-config` checks, and what the server runs with.
struct Loaded {
    config: ServerConfig,
    tls: std::sync::Arc<rustls::ServerConfig>,
    policy: policy::Policy,
    /// The certificates of the key store and the trust store, for the
    /// expiry warnings: (what, file, certificates).
    certs: Certs,
}

type Certs = Vec<(&'static str, PathBuf, Vec<rustls::pki_types::CertificateDer<'static>>)>;

/// Warnings about certificates that expire within 30 days (or have).
fn expiry_warnings(certs: &Certs) -> Vec<String> {
    let now = std::time::SystemTime::now();
    certs
        .iter()
        .flat_map(|(what, path, list)| common::tls::expiry_warnings(what, path, list, now))
        .collect()
}

fn load(cli: &Cli) -> Result<Loaded, Vec<String>> {
    load_from(&cli.conf, &cli.listen)
}

fn load_from(conf: &std::path::Path, listen: &[ListenAddr]) -> Result<Loaded, Vec<String>> {
    common::tls::install_crypto_provider();
    let mut config = ServerConfig::load(conf).map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    if !listen.is_empty() {
        config.listen = listen.to_vec();
    }
    let mut problems = Vec::new();
    if !config.key_store.exists() {
        problems.push(format!(
            "keyStore {} does not exist: make this guest's key and certificate with `cmappserver keygen` \
             (or `cmappserver keygen issue --ca-dir DIR` in CA mode), see `man cmappserver`",
            config.key_store.display()
        ));
    }
    if !config.trust_store.exists() {
        problems.push(format!(
            "trustStore {} does not exist: copy there the client.public that `cmappmgr keygen` made on \
             each host (or the CA's ca.public), see `man cmappserver`",
            config.trust_store.display()
        ));
    }
    let policy = policy::Policy::from_config(conf, &config)
        .map_err(|errs| problems.extend(errs.iter().map(|e| e.to_string())))
        .ok();
    if let Some(audit) = &config.audit_log {
        if !audit.is_absolute() {
            problems.push(format!("auditLog={}: not an absolute path", audit.display()));
        } else if !audit.parent().is_some_and(|d| d.is_dir()) {
            problems.push(format!("auditLog={}: its directory does not exist", audit.display()));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let key = common::tls::load_key_store(&config.key_store, &config.key_store_password)
        .map_err(|e| problems.push(format!("keyStore: {e}")))
        .ok();
    let trust = common::tls::load_trust_store(&config.trust_store, &config.trust_store_password)
        .map_err(|e| problems.push(format!("trustStore: {e}")))
        .ok();
    let mut certs: Certs = Vec::new();
    if let Some(k) = &key {
        certs.push(("keyStore", config.key_store.clone(), k.certs.clone()));
    }
    if let Some(t) = &trust {
        let all = t.pinned.iter().chain(&t.cas).cloned().collect();
        certs.push(("trustStore", config.trust_store.clone(), all));
    }
    let tls = match (key, trust) {
        (Some(k), Some(t)) => common::tls::server_config(k, t)
            .map_err(|e| problems.push(e.to_string()))
            .ok(),
        _ => None,
    };
    match (tls, policy) {
        (Some(tls), Some(policy)) if problems.is_empty() => Ok(Loaded {
            config,
            tls,
            policy,
            certs,
        }),
        _ => Err(problems),
    }
}

fn serve(cli: Cli) -> ExitCode {
    common::logging::init(
        "cmappserver",
        if cli.verbose {
            common::logging::Verbosity::Debug
        } else {
            common::logging::Verbosity::Normal
        },
        !cli.check_config,
    );
    let loaded = match load(&cli) {
        Ok(l) => l,
        Err(problems) => {
            for p in &problems {
                eprintln!("cmappserver: {p}");
            }
            if !cli.check_config {
                tracing::error!(
                    "cannot start: {} problem(s) in the configuration or key material",
                    problems.len()
                );
            }
            return ExitCode::from(if cli.check_config { 1 } else { exit::CONFIG });
        }
    };
    if cli.check_config {
        println!(
            "cmappserver: configuration {} and key material are valid",
            cli.conf.display()
        );
        println!("cmappserver: {}", loaded.policy.summary());
        for w in expiry_warnings(&loaded.certs) {
            println!("cmappserver: warning: {w}");
        }
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let reload = Reload {
        conf: cli.conf.clone(),
        listen: cli.listen.clone(),
    };
    rt.block_on(run(loaded, cli.pid_file, reload))
}

/// Where a reload reads from: the same file and `--listen` as the start.
struct Reload {
    conf: PathBuf,
    listen: Vec<ListenAddr>,
}

/// Everything a reload replaces.
#[derive(Clone)]
struct Live {
    tls: reload::Swap<rustls::ServerConfig>,
    policy: policy::Current,
    audit: reload::Swap<Option<audit::Audit>>,
    certs: reload::Swap<Certs>,
}

impl Reload {
    /// Re-reads the configuration and the key material; replaces what is
    /// in force only when all of it is good.
    fn apply(&self, live: &Live) {
        let loaded = load_from(&self.conf, &self.listen);
        let loaded = loaded.and_then(|l| {
            let audit = l.config.audit_log.as_deref().map(audit::Audit::open).transpose();
            audit.map(|a| (l, a)).map_err(|e| vec![e.to_string()])
        });
        match loaded {
            Err(problems) => {
                for p in &problems {
                    tracing::error!("reload: {p}");
                }
                tracing::error!(
                    "reload refused ({} problem(s)): the configuration and key material in force stay",
                    problems.len()
                );
            }
            Ok((l, a)) => {
                live.tls.set(std::sync::Arc::unwrap_or_clone(l.tls));
                tracing::info!(
                    "reloaded {}: keyStore {}, trustStore {}; new connections use them, established ones carry on; {}",
                    self.conf.display(),
                    l.config.key_store.display(),
                    l.config.trust_store.display(),
                    l.policy.summary()
                );
                live.policy.set(l.policy);
                live.audit.set(a);
                for w in expiry_warnings(&l.certs) {
                    tracing::warn!("{w}");
                }
                live.certs.set(l.certs);
            }
        }
    }
}

async fn run(loaded: Loaded, pid_file: Option<PathBuf>, reload: Reload) -> ExitCode {
    let Loaded {
        config,
        tls,
        policy,
        certs,
    } = loaded;
    for w in expiry_warnings(&certs) {
        tracing::warn!("{w}");
    }
    let audit = match config.audit_log.as_deref().map(audit::Audit::open).transpose() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(e.exit_code());
        }
    };
    tracing::info!("{}", policy.summary());
    let shutdown = match common::shutdown::shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let state = match supervisor::state::StateDir::open(&config.state_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    // Only the name shims show in `ps`: they are started from /proc/self/exe.
    let exe = common::exe::path().unwrap_or_else(|| PathBuf::from("cmappserver"));
    let limits = supervisor::Limits {
        max_processes: config.max_processes,
        stop_grace: config.stop_grace,
        exit_history: config.exit_history,
        // A manager that went away is waited for as long as a silent
        // connection is kept: the server's one notion of "gone".
        ack_wait: config.idle_timeout,
        output: supervisor::output::Settings::from_config(&config),
        keep_spare: true,
    };
    let environment = match config.process_environment {
        common::config::ProcessEnvironment::Inherit if config.environment.is_empty() => None,
        mode => Some(supervisor::state::Environment {
            clean: mode == common::config::ProcessEnvironment::Clean,
            set: config.environment.clone(),
        }),
    };
    let settings = supervisor::AppSettings {
        environment,
        oom_score_adj: config.process_oom_score_adjust,
    };
    let sup = supervisor::Supervisor::open(state, limits, settings, exe).await;
    raise_open_file_limit(&config);
    let listeners = match server::bind(&config.listen_addrs()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(exit::CANNOT_LISTEN);
        }
    };
    let opts = server::ServerOptions {
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
        max_pending: config.max_pending_connections,
        max_silent: config.max_silent_connections,
        handshake_log_interval: config.handshake_log_interval,
        stop_processes_on_shutdown: config.stop_processes_on_shutdown,
        policy: policy::Current::new(policy),
        audit: reload::Swap::new(audit),
        tls: reload::Swap::new(std::sync::Arc::unwrap_or_clone(tls)),
    };
    let live = Live {
        tls: opts.tls.clone(),
        policy: opts.policy.clone(),
        audit: opts.audit.clone(),
        certs: reload::Swap::new(certs),
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            let live = live.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("received SIGHUP: reloading the configuration and key material");
                    reload.apply(&live);
                }
            });
        }
        Err(e) => tracing::warn!("cannot handle SIGHUP ({e}): reload by restarting"),
    }
    // Certificates that expire: said at start, on each reload, and daily.
    let certs = live.certs.clone();
    tokio::spawn(async move {
        let mut day = tokio::time::interval(std::time::Duration::from_secs(86_400));
        day.tick().await;
        loop {
            day.tick().await;
            for w in expiry_warnings(&certs.get()) {
                tracing::warn!("{w}");
            }
        }
    });
    tracing::info!(
        "cmappserver {} ready: {} monitored processes (limit {})",
        common::SOFTWARE_VERSION,
        sup.monitored(),
        config.max_processes
    );
    notify::ready(sup.clone(), config.max_processes);
    let pid_file = match pid_file.map(notify::PidFile::write).transpose() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(exit::CANNOT_CREATE);
        }
    };
    server::run(listeners, sup, opts, async move {
        let sig = shutdown.await;
        tracing::info!("received {sig:?}");
        notify::stopping();
    })
    .await;
    drop(pid_file);
    ExitCode::SUCCESS
}
