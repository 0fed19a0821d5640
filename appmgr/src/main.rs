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
//! | `manual` | the man page's sections beyond the command line (`cmappmgr generate`) |
#![deny(rust_2018_idioms)]

mod cli;
mod client;
mod demo;
mod exit;
mod manual;
mod oneshot;
mod vm;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use common::config::ManagerConfig;
use common::logging::{self, Verbosity};
use common::message::{Event, Request};

fn main() -> ExitCode {
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
        cli::Invocation::Generate(dir) => {
            i32::from(common::docs::generate_main(&cli::command(), &manual::sections(), &dir))
        }
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
        cli::Invocation::Monitor(m) => {
            init_logging(&m.common);
            let Some(conf) = load_conf(&m.common) else {
                return code(exit::CONFIG);
            };
            runtime(watch::run(m, conf))
        }
        cli::Invocation::OneShot(verb, a) => {
            init_logging(&a.common);
            let Some(conf) = load_conf(&a.common) else {
                return code(exit::ocf::ERR_CONFIGURED);
            };
            runtime(oneshot::run(verb, a, conf))
        }
        cli::Invocation::Check(c) => {
            init_logging(&c.common);
            let Some(conf) = load_conf(&c.common) else {
                return code(exit::CONFIG);
            };
            runtime(check(c, conf))
        }
        cli::Invocation::Status(s) => {
            init_logging(&s.common);
            let Some(conf) = load_conf(&s.common) else {
                return code(exit::CONFIG);
            };
            runtime(status(s, conf))
        }
    })
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}

fn init_logging(c: &cli::Common) {
    logging::init(
        "cmappmgr",
        if c.verbose { Verbosity::Debug } else { Verbosity::Normal },
        !c.no_syslog,
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

/// A small runtime: a manager watches one process.
fn runtime(fut: impl std::future::Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
        exit::for_error(&e)
    })?;
    connector
        .connect(tokio::time::Instant::now() + timeout)
        .await
        .map_err(|e| {
            tracing::error!("Could not connect to the node {node}: {e}");
            exit::for_error(&e)
        })
}

async fn check(args: cli::CheckArgs, conf: ManagerConfig) -> i32 {
    let mut c = match connect(&args.node, args.timeout, &conf).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let t0 = std::time::Instant::now();
    match c
        .call(&Request::Ping(common::message::Ping { seq: 1 }), args.timeout)
        .await
    {
        Ok(Event::Pong(_)) => {
            let w = &c.welcome;
            println!(
                "{} on {}: {} monitored processes (limit {}), protocol {}, round trip {:.2} ms",
                common::text::clip(&w.software, 200),
                args.node,
                w.monitored,
                w.max_processes,
                w.protocol,
                t0.elapsed().as_secs_f64() * 1000.0
            );
            c.close().await;
            0
        }
        other => {
            tracing::error!("cmappserver on {} did not answer the ping: {other:?}", args.node);
            exit::UNREACHABLE
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
            return exit::for_error(&e);
        }
    };
    c.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return 0;
    }
    let now = common::message::now_ms();
    println!(
        "{:<8} {:<10} {:<10} {:<9} SERVICE",
        "PID", "STATE", "UPTIME", "ATTACHED"
    );
    for p in list {
        let state = match &p.exit {
            None => "running".to_string(),
            Some(s) => format!("exited:{}", s.exit_code()),
        };
        let up = Duration::from_millis(now.saturating_sub(p.started_at_ms)).as_secs();
        let uptime = format!("{}:{:02}:{:02}", up / 3600, up / 60 % 60, up % 60);
        println!(
            "{:<8} {:<10} {:<10} {:<9} {}",
            p.pid,
            state,
            uptime,
            match (p.attached, p.managers) {
                (false, _) => "no".to_string(),
                (true, 0 | 1) => "yes".to_string(),
                (true, n) => format!("yes ({n})"),
            },
            common::text::escape(&p.service)
        );
    }
    0
}
