//! `raftkv-bench`: load against etcd v3 endpoints (raftkv or etcd), throughput and latency.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "raftkv-bench",
    version,
    about = "Generate load against etcd v3 endpoints (raftkv or etcd) and report throughput and latency"
)]
struct Cli {
    #[command(flatten)]
    args: raftkv_bench::BenchArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // As in the server: a burst of responses wakes its clients, whose next requests then
    // leave together instead of one write each (needs `--cfg tokio_unstable`, set in
    // .cargo/config.toml).
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let result = builder
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|runtime| runtime.block_on(raftkv_bench::run(cli.args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftkv-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
