//! `raftkv`: a replicated key-value store on Raft that speaks the etcd v3 API.
//!
//! Three parts: the etcd v3 API layer ([`api`]: client port, services, JSON gateway), the
//! member under it ([`member`]: startup, peers, membership, the state machine's hooks, the
//! store's upkeep, backups), and what runs the process (the CLI here, [`config`], [`tls`],
//! [`certexpiry`], [`metrics`], [`dev`]).

use clap::{Parser, Subcommand};

mod api;
mod certexpiry;
mod config;
mod dev;
mod etcd_flags;
mod member;
mod metrics;
mod tls;

// The member runtime (driver, disk worker, applier and their tokio shell).
use raftkv_node as node;

#[derive(Parser, Debug)]
#[command(
    name = "raftkv",
    version,
    about = "A replicated key-value store on Raft that speaks the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one cluster member (etcd's flag names and meanings).
    Server(Box<config::ServerArgs>),
    /// Run a local three-member cluster on 127.0.0.1 (client ports 2379, 22379, 32379).
    Dev(dev::DevArgs),
    /// Backups: restore a snapshot file into a new member's data dir, or print its status.
    Snapshot(member::backup::SnapshotArgs),
}

enum Run {
    Server(Box<config::ServerConfig>),
    Dev(dev::DevArgs),
}

fn init_logging(format: config::LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}

/// A member's runtime runs without tokio's LIFO slot. With it, a task that wakes another
/// runs that one next: each finished client request woke its HTTP/2 connection task, which
/// then wrote that one response to the socket before the next finished request could add
/// its own, and the same happened for proposals reaching the driver and messages reaching
/// a peer's writer. Without it the woken task queues behind the others already runnable, so
/// a burst of completions becomes one socket write (+38% puts at 256 clients, see
/// docs/BENCHMARKS.md). Needs `--cfg tokio_unstable` (set in .cargo/config.toml).
fn server_runtime(builder: &mut tokio::runtime::Builder) {
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    #[cfg(not(tokio_unstable))]
    let _ = builder;
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Snapshot(args) = cli.command {
        return match member::backup::run(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("raftkv: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let command = match cli.command {
        Command::Server(args) => match config::ServerConfig::resolve(*args) {
            Ok(config) => {
                builder.worker_threads(config.worker_threads);
                server_runtime(&mut builder);
                Ok(Run::Server(Box::new(config)))
            }
            Err(e) => Err(e.to_string()),
        },
        Command::Dev(args) => Ok(Run::Dev(args)),
        Command::Snapshot(_) => Err("unreachable: handled above".to_string()),
    };
    let result = command.and_then(|command| {
        let runtime = builder.build().map_err(|e| format!("cannot start the runtime: {e}"))?;
        match command {
            Run::Server(config) => {
                init_logging(config.log_format, &config.log_level);
                runtime.block_on(member::server::run(*config)).map_err(|e| e.to_string())
            }
            Run::Dev(args) => runtime.block_on(dev::run(args)).map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftkv: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
