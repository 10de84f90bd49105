//! `bulwark`: the Bulwark SMTP security gateway's data plane.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use bulwark::config::Config;

#[derive(Parser)]
#[command(
    name = "bulwark",
    version,
    about = "Bulwark SMTP security gateway (data plane)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file; every error is printed with its key and line.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Publish the domains and limits of a configuration file to `[policy] snapshot`:
    /// running engines that follow it apply them within milliseconds, without a restart.
    PublishPolicy {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::PublishPolicy { config } => match publish_policy(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bulwark: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            let _guard = init_logging();
            match serve(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("bulwark: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(cfg) => {
            if let Some(t) = &cfg.tls
                && let Err(e) = bulwark::net::tls::server_config(&t.cert, &t.key)
            {
                eprintln!("{}: {e:#}", file.display());
                return ExitCode::FAILURE;
            }
            println!(
                "{}: OK ({} domain{}, listening on {})",
                file.display(),
                cfg.domains.len(),
                if cfg.domains.len() == 1 { "" } else { "s" },
                cfg.server
                    .listen
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.errors {
                eprintln!("{}: {e}", file.display());
            }
            eprintln!(
                "{}: {} error{}",
                file.display(),
                errors.errors.len(),
                if errors.errors.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

fn publish_policy(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::load(path).map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?;
    let Some(target) = &cfg.policy.snapshot else {
        anyhow::bail!(
            "{}: policy.snapshot is not set, so there is nowhere to publish",
            path.display()
        );
    };
    let mut publisher =
        bulwark_policy::shm::Publisher::open(target, std::time::Duration::from_secs(60))?;
    let mut policy = cfg.policy();
    // Generation 1 is what an engine builds from its own file; published ones come after.
    policy.generation = (publisher.generation() + 1).max(2);
    let image = bulwark_policy::encode(&policy)?;
    let generation = publisher.publish(&image)?;
    println!(
        "published generation {generation} ({} octets, {} domains) to {}",
        image.len(),
        policy.domains.len(),
        target.display()
    );
    Ok(())
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::load(path).map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?;
    bulwark::runtime::serve(cfg).context("engine stopped")
}

/// Logs go through a background writer, so an executor never blocks on stderr.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULWARK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    guard
}
