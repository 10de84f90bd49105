//! `bulwark-load`: SMTP load generator and downstream sink for testing Bulwark (and any
//! other MTA) under load.

mod message;
mod send;
mod sink;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bulwark-load",
    version,
    about = "SMTP load generator and test sink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send messages to an SMTP server as fast as it takes them (or at --rate).
    Send(send::Options),
    /// Accept SMTP mail, count it, check it, and report.
    Sink(sink::Options),
}

/// Parses HOST:PORT to its first address (clap value parser).
fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{s:?} has no address"))
}

/// Worker threads: as given, or one per CPU.
fn threads(given: Option<usize>) -> usize {
    given
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1)
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Send(opts) => send::run(opts),
        Command::Sink(opts) => sink::run(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwark-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
