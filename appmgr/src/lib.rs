//! `cmappmgr`: the host-side service command.
//!
//! | module   | role                                                                |
//! |----------|---------------------------------------------------------------------|
//! | `cli`    | the command line: the original's `-node ... -service ...` form and subcommands |
//! | `client` | connecting, authenticating, typed requests                          |
//! | `watch`  | the monitoring loop: launch or re-attach, wait, exit with the code  |
//! | `oneshot`| start / monitor / stop / watch for cluster managers (OCF exit codes) |
//! | `exit`   | every exit code, in one place                                       |
//! | `vm`     | host-side VM lifecycle hooks (`cmappmgr vm ...`)                    |
//! | `demo`   | the loopback demo (`cmappmgr demo`)                                 |
//! | `manual` | the man page's sections beyond the command line |
//!
//! The binary (`src/bin/cmappmgr.rs`) is [`main`]; [`docs`] is the command
//! line and the manual for `cmapp-docgen` (the `docgen` crate), which writes
//! the man page and completions for the packages. The generator is not in
//! the binary: its code would be mapped by every manager.
#![deny(rust_2018_idioms)]

mod cli;
mod client;
mod demo;
mod error;
mod exit;
mod manual;
mod oneshot;
mod vm;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use common::config::ManagerConfig;
use common::logging::{self, Verbosity};

/// cmappmgr's command line and manual sections, for the man page and completions.
pub fn docs() -> (clap::Command, Vec<common::docs::Section>) {
    (cli::command(), manual::sections())
}

/// The whole `cmappmgr` program.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = if cli::is_one_shot(&args) {
        exit::ocf::ERR_ARGS
    } else {
        exit::USAGE
    };
    let inv = match cli::parse(args) {
        Ok(inv) => inv,
        Err(e) => {
            let _ = e.print();
            return code(if e.use_stderr() { usage } else { 0 });
        }
    };
    code(match inv {
        cli::Invocation::Vm(args) => vm::main(args),
        cli::Invocation::Demo => demo::main(),
        cli::Invocation::Keygen(k) => match certs::run(&k, certs::Side::Manager) {
            Ok(report) => {
                println!("{report}");
                0
            }
            Err(e) => {
                eprintln!("cmappmgr keygen: {e}");
                1
            }
        },
        cli::Invocation::Monitor(m) => monitor(m),
        cli::Invocation::OneShot(verb, a) => one_shot(verb, a),
        cli::Invocation::Check(c) => {
            init_logging(c.common.log.verbose, !c.common.log.no_syslog);
            let Some(conf) = load_conf(&c.common) else {
                return code(exit::CONFIG);
            };
            block_on(Box::pin(check(c, conf)))
        }
        cli::Invocation::Status(s) => {
            init_logging(s.common.log.verbose, !s.common.log.no_syslog);
            let Some(conf) = load_conf(&s.common) else {
                return code(exit::CONFIG);
            };
            block_on(Box::pin(status(s, conf)))
        }
        cli::Invocation::Logs(l) => {
            init_logging(l.common.log.verbose, !l.common.log.no_syslog);
            let Some(conf) = load_conf(&l.common) else {
                return code(exit::CONFIG);
            };
            block_on(Box::pin(logs(l, conf)))
        }
    })
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}

/// The one logging set-up: stderr, and syslog unless told not to.
fn init_logging(verbose: bool, syslog: bool) {
    logging::init(
        "cmappmgr",
        if verbose { Verbosity::Debug } else { Verbosity::Normal },
        syslog,
    );
}

fn load_conf(c: &cli::Common) -> Option<ManagerConfig> {
    match ManagerConfig::load(&c.conf) {
        Ok(conf) => Some(conf),
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("{e}");
            }
            None
        }
    }
}

/// The monitoring form, for as long as its application runs. Not inlined
/// into [`main`], nor is [`one_shot`]: a long-lived manager's stack pages
/// stay resident (and private) once touched, and with every command's
/// future inlined into it, `main`'s frame was 32 KiB, all of it touched by
/// the stack probe as the process started; an idle manager's stack was
/// 88 KiB, now 44 KiB (BENCHMARKS.md, "the 1000 idle managers' private
/// memory").
#[inline(never)]
fn monitor(m: cli::MonitorArgs) -> i32 {
    init_logging(m.common.log.verbose, !m.common.log.no_syslog);
    let Some(conf) = load_conf(&m.common) else {
        return exit::CONFIG;
    };
    block_on(Box::pin(watch::run(m, conf)))
}

/// The one-shot verbs (`start`, `monitor`, `stop`, `watch`): the OCF
/// agent's `watch` is another long-lived manager ([`monitor`] says why
/// this is a function of its own).
#[inline(never)]
fn one_shot(verb: cli::Verb, a: cli::OneShotArgs) -> i32 {
    init_logging(a.common.log.verbose, !a.common.log.no_syslog);
    let Some(conf) = load_conf(&a.common) else {
        return exit::ocf::ERR_CONFIGURED;
    };
    block_on(Box::pin(oneshot::run(verb, a, conf)))
}

/// The one runtime set-up: a small one, since a manager watches one process
/// over one connection (two while a second handshake runs), with a signal
/// pipe, a timerfd and perhaps a pidfd: 16 readiness events per poll are
/// plenty, where tokio's default of 1024 allocates 12 KiB for them.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_io_events_per_tick(16)
        .build()
}

/// Runs a command's future to its exit code. Boxed: the future is not
/// copied from frame to frame on the way into the runtime, and polled
/// through one pointer.
fn block_on(fut: std::pin::Pin<Box<dyn std::future::Future<Output = i32> + '_>>) -> i32 {
    match runtime() {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            1
        }
    }
}

async fn connect(node: &str, timeout: Duration, conf: &ManagerConfig) -> Result<client::Client, i32> {
    let connector = client::Connector::new(conf, node).map_err(|e| {
        tracing::error!("{e}");
        e.exit_code()
    })?;
    connector
        .connect(tokio::time::Instant::now() + timeout)
        .await
        .map_err(|e| {
            tracing::error!("Could not connect to the node {node}: {e}");
            e.exit_code()
        })
}

async fn check(args: cli::CheckArgs, conf: ManagerConfig) -> i32 {
    match client::check(&conf, &args.node, args.timeout).await {
        Ok(c) => {
            let w = &c.welcome;
            println!(
                "{} on {}: {} monitored processes (limit {}), protocol {}, round trip {:.2} ms",
                common::text::clip(&w.software, 200),
                args.node,
                w.monitored,
                w.max_processes,
                w.protocol,
                c.round_trip.as_secs_f64() * 1000.0
            );
            0
        }
        Err(e @ client::ClientError::Config(_)) => {
            tracing::error!("{e}");
            e.exit_code()
        }
        Err(e) => {
            tracing::error!("Could not connect to the node {}: {e}", args.node);
            e.exit_code()
        }
    }
}

async fn status(args: cli::StatusArgs, conf: ManagerConfig) -> i32 {
    let mut c = match connect(&args.node, args.timeout, &conf).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let list = match c.list(args.timeout).await {
        Ok(list) => list,
        Err(e) => {
            tracing::error!("cmappserver on {} did not list its processes: {e}", args.node);
            return e.exit_code();
        }
    };
    c.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return 0;
    }
    let now = common::message::now_ms();
    println!(
        "{:<8} {:<10} {:<10} {:<9} {:<8} SERVICE",
        "PID", "STATE", "UPTIME", "ATTACHED", "DROPPED"
    );
    for p in list {
        let state = match &p.exit {
            None => "running".to_string(),
            Some(s) => format!("exited:{}", s.exit_code()),
        };
        let up = Duration::from_millis(now.saturating_sub(p.started_at_ms)).as_secs();
        let uptime = format!("{}:{:02}:{:02}", up / 3600, up / 60 % 60, up % 60);
        println!(
            "{:<8} {:<10} {:<10} {:<9} {:<8} {}",
            p.pid,
            state,
            uptime,
            match (p.attached, p.managers) {
                (false, _) => "no".to_string(),
                (true, 0 | 1) => "yes".to_string(),
                (true, n) => format!("yes ({n})"),
            },
            p.log_dropped + p.forward_dropped,
            common::text::escape(&p.service)
        );
        if let Some(output) = &p.output {
            println!("{:<8} output: {}", "", common::text::escape(output));
        }
    }
    0
}

/// `cmappmgr logs`: a service's output log in the guest.
async fn logs(args: cli::LogsArgs, conf: ManagerConfig) -> i32 {
    use common::message::{Event, Request};
    use std::io::Write;
    let mut c = match connect(&args.node, args.timeout, &conf).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let req = Request::Logs(common::message::Logs {
        run: args.service.clone(),
        name: args.name.clone(),
        tail: args.tail,
        follow: args.follow,
    });
    if let Err(e) = c.send(&req).await {
        tracing::error!("cmappserver on {}: {e}", args.node);
        return exit::UNREACHABLE;
    }
    let mut stop = match common::shutdown::shutdown_signal() {
        Ok(s) => Box::pin(s),
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    // Pings keep a followed log's connection from looking idle.
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    let mut got_any = false;
    loop {
        // The first answer is due within the timeout; a followed log may be quiet for ever.
        let limit = if got_any {
            Duration::from_secs(1 << 30)
        } else {
            args.timeout
        };
        let ev = tokio::select! {
            ev = tokio::time::timeout(limit, c.next_event()) => Some(ev),
            _ = ping.tick(), if args.follow => None,
            _ = &mut stop => {
                c.close().await;
                return 0;
            }
        };
        let Some(ev) = ev else {
            seq += 1;
            if c.send(&Request::Ping(common::message::Ping { seq })).await.is_err() {
                tracing::error!("lost the connection to cmappserver on {}", args.node);
                return exit::UNREACHABLE;
            }
            continue;
        };
        match ev {
            Ok(Ok(Some(Event::LogLines(l)))) => {
                got_any = true;
                let mut out = std::io::stdout().lock();
                for line in &l.lines {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
                if l.end && !args.follow {
                    c.close().await;
                    return 0;
                }
            }
            Ok(Ok(Some(Event::Pong(_)))) => {}
            Ok(Ok(Some(Event::Error(e)))) => {
                if e.kind == common::message::ErrorKind::BadRequest && !got_any {
                    tracing::error!(
                        "cmappserver on {} cannot send logs (an older version?): {}",
                        args.node,
                        e.message
                    );
                } else {
                    tracing::error!("cmappserver on {}: {}", args.node, e.message);
                }
                return 1;
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => {
                tracing::error!("lost the connection to cmappserver on {}", args.node);
                return exit::UNREACHABLE;
            }
            Err(_) => {
                tracing::error!(
                    "cmappserver on {} sent no log lines within {} s",
                    args.node,
                    args.timeout.as_secs_f64()
                );
                return exit::UNREACHABLE;
            }
        }
    }
}
