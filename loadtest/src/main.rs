//! `bulwark-load`: SMTP load generator and downstream sink for testing Bulwark (and any
//! other MTA) under load.

mod message;
mod send;
mod sink;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
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
    Send {
        /// Server to load, HOST:PORT.
        #[arg(long)]
        target: String,
        /// Concurrent connections, each reused for message after message.
        #[arg(long, default_value_t = 10)]
        connections: usize,
        /// Messages to send in all (default 1000, or unlimited with --duration).
        #[arg(long)]
        messages: Option<u64>,
        /// Approximate size of each message in octets.
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Recipients per message.
        #[arg(long, default_value_t = 1)]
        recipients: usize,
        /// Use STARTTLS (fails if the server does not offer it).
        #[arg(long)]
        tls: bool,
        /// Messages per second in all; default: as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Print one JSON object instead of the text report.
        #[arg(long)]
        json: bool,
        /// Add a base64 attachment of this many octets.
        #[arg(long, default_value_t = 0)]
        attachment: usize,
        /// Open N connections, say EHLO, and hold them idle until stopped (Ctrl-C).
        #[arg(long)]
        hold: Option<usize>,
        /// Sender threads (one executor each); default: all CPUs.
        #[arg(long)]
        threads: Option<usize>,
        /// Envelope sender.
        #[arg(long, default_value = "load@bulwark-load.test")]
        from: String,
        /// Envelope recipient; with --recipients N the others are numbered (user1@…).
        #[arg(long, default_value = "user@example.test")]
        to: String,
        /// Write the Message-ID of every message that got a 2xx here, one per line.
        #[arg(long)]
        ids: Option<PathBuf>,
    },
    /// Accept SMTP mail, count it, check it, and report.
    Sink {
        /// Address to listen on, HOST:PORT.
        #[arg(long)]
        listen: String,
        /// Answer RCPT with this reply (e.g. "550 5.1.1 unknown user"), at --fail-rate.
        #[arg(long)]
        reply_rcpt: Option<String>,
        /// Answer the end of DATA with this reply (e.g. "451 4.3.0 try later"), at --fail-rate.
        #[arg(long)]
        reply_data: Option<String>,
        /// Share of RCPTs / messages given the replies above (0..1; default 1).
        #[arg(long)]
        fail_rate: Option<f64>,
        /// Write a JSON report here every second and on SIGTERM.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Write the Message-ID of every message received here, one per line.
        #[arg(long)]
        ids: Option<PathBuf>,
        /// Receiver threads (one executor each); default: all CPUs.
        #[arg(long)]
        threads: Option<usize>,
        /// PEM certificate chain: offer STARTTLS (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

fn resolve(s: &str, what: &str) -> anyhow::Result<SocketAddr> {
    s.to_socket_addrs()
        .with_context(|| format!("{what}: {s:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("{what}: {s:?} has no address"))
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Send {
            target,
            connections,
            messages,
            size,
            recipients,
            tls,
            rate,
            duration,
            json,
            attachment,
            hold,
            threads,
            from,
            to,
            ids,
        } => resolve(&target, "--target").and_then(|target| {
            send::run(send::Options {
                target,
                connections,
                messages,
                size,
                recipients,
                tls,
                rate,
                duration,
                json,
                attachment,
                hold,
                threads: threads.unwrap_or_else(cpus),
                from,
                to,
                ids,
            })
        }),
        Command::Sink {
            listen,
            reply_rcpt,
            reply_data,
            fail_rate,
            report,
            ids,
            threads,
            tls_cert,
            tls_key,
        } => resolve(&listen, "--listen").and_then(|listen| {
            sink::run(sink::Options {
                listen,
                reply_rcpt,
                reply_data,
                fail_rate,
                report,
                ids,
                threads: threads.unwrap_or_else(cpus),
                tls: tls_cert.zip(tls_key),
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwark-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
