//! pinpost's benchmark harness.
//!
//! Layout: `main.rs` parses the command line and dispatches one subcommand per benchmark, each
//! in its own module:
//! - `smsc` (`smsc.rs`): throughput of the loopback SMSC on one core, driven by pipelined raw
//!   SMPP clients.
//! - `daemon` (`daemon.rs`): the whole path, HTTP API to SMSC, with the release binaries,
//!   driven by wrk (throughput) or a paced client (latency).
//! - `vouchers` (`vouchers.rs`): voucher issuance/s, redemptions/s and redemption latency
//!   (closed loop with wrk, open loop with a paced client) with the release binaries.
//!
//! Results and the commands that produced them are kept in `BENCHMARKS.md` at the workspace
//! root.

mod daemon;
mod nodes;
mod smsc;
mod vouchers;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "pinpost-bench", about = "Benchmarks for pinpost", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// submit_sm and receipt throughput of the loopback SMSC on a single-threaded runtime.
    Smsc(smsc::SmscArgs),
    /// Deliveries/s, enqueue->submit latency and peak RSS of the daemon, API to SMSC.
    Daemon(daemon::DaemonArgs),
    /// Vouchers issued/s, redemptions/s and redemption p50/p99, API to SMSC and back.
    Vouchers(vouchers::VouchersArgs),
    /// Deliveries/s with 1, 2 and 3 nodes on PostgreSQL next to one node on SQLite.
    Nodes(nodes::NodesArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Smsc(args) => smsc::run(args),
        Command::Daemon(args) => daemon::run(args),
        Command::Vouchers(args) => vouchers::run(args),
        Command::Nodes(args) => nodes::run(args),
    }
}
