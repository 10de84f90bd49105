//! `bulwark-control`: Bulwark's control plane. `serve` runs the API and publishes policy
//! snapshots; the other commands talk to a running service (or, for `token create`, to
//! the store directly).

mod accounts;
mod api;
mod api_accounts;
mod api_tracking;
mod authz;
mod cli_tracking;
mod config;
mod endusers;
mod store;
mod tracking;
mod web;
mod web_admin;
mod web_user;

use bulwark_policy::directory_csv as csv;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use config::Config;
use store::Store;

#[derive(Parser)]
#[command(
    name = "bulwark-control",
    version,
    about = "Bulwark control plane: policy store, API and snapshot publisher"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// `--url` and `--token` go before or after the subcommand.
    #[command(flatten)]
    remote: Remote,
}

#[derive(clap::Args)]
struct Remote {
    /// The control service.
    #[arg(long, default_value = "http://127.0.0.1:8025", global = true)]
    url: String,
    /// API token (or the BULWARK_TOKEN environment variable).
    #[arg(long, env = "BULWARK_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// Send the quarantine digests now (they also go out daily at [control] digest_hour).
    Digest,
    /// End users registered on the quarantine console (of your domains).
    Users,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control service.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Console accounts (works on the store directly, to bootstrap: the first account
    /// is the main administrator).
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// API tokens (works on the store directly, to bootstrap).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Managed domains.
    Domain {
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// Recipient directories.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Approved and blocked senders.
    Sender {
        #[command(subcommand)]
        command: SenderCommand,
    },
    /// IP allow and block lists.
    Ip {
        #[command(subcommand)]
        command: IpCommand,
    },
    /// Message size, recipient and harvest-protection limits.
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
    },
    /// The published policy snapshot.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Content inspection rules, compiled by the service and published to the engines.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Train a classifier model from labelled mail (files, maildirs, mbox) and publish it.
    Learn {
        /// Spam: a directory of messages or an mbox file (repeatable).
        #[arg(long, required = true)]
        spam: Vec<PathBuf>,
        /// Wanted mail (repeatable).
        #[arg(long, required = true)]
        ham: Vec<PathBuf>,
    },
    /// The published classifier model.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// The URL blocklist the phishing checks use, published to the engines.
    UrlBlocklist {
        #[command(subcommand)]
        command: UrlBlocklistCommand,
    },
    /// Antivirus signatures (ClamAV `.hdb`, `.hsb`, `.ndb`) compiled and published to
    /// the engines' built-in engine.
    Av {
        #[command(subcommand)]
        command: AvCommand,
    },
    /// Thresholds and actions of the verdict classes, for every domain or one.
    Verdicts {
        #[command(subcommand)]
        command: VerdictsCommand,
    },
    /// DNS block and allow lists (zones, weights, classes, answer filters) and thresholds.
    Dnsbl {
        #[command(subcommand)]
        command: DnsblCommand,
    },
    /// Message tracking: search accepted and blocked traffic, a message's timeline.
    Tracking {
        #[command(subcommand)]
        command: cli_tracking::TrackingCommand,
    },
    /// The end-user quarantine console: its accounts, and the daily digest.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Policy rules: conditions and an action, tried in order after inspection.
    PolicyRules {
        #[command(subcommand)]
        command: PolicyRulesCommand,
    },
}

#[derive(Subcommand)]
enum UrlBlocklistCommand {
    /// Replace the published list with these files' entries (one URL or host/path per
    /// line, `#` comments); a bad line is named with its file and line.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Digest and number of entries of the published list.
    Show,
    /// Remove it: engines go back to their own `[inspection] url_blocklist`.
    Remove,
}

#[derive(Subcommand)]
enum AvCommand {
    /// Replace the published signatures with EICAR and these files; a malformed line is
    /// named with its file and line, and lines this engine cannot express are listed as
    /// skipped.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Digest and counts of the published signatures.
    Show,
    /// Remove them: engines go back to their own `[antivirus] signatures`.
    Remove,
}

#[derive(Subcommand)]
enum VerdictsCommand {
    /// The global settings and every domain's own.
    Show,
    /// Change settings: KEY=VALUE (tag_threshold, spam_threshold, spam_action,
    /// phishing_action, malformed_action, dmarc_reject_action, dmarc_quarantine_action,
    /// subject_tag); VALUE `inherit` removes the key.
    Set {
        /// A domain's own settings instead of the global ones.
        #[arg(long)]
        domain: Option<String>,
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// Remove every setting of the scope: it inherits them all.
    Clear {
        #[arg(long)]
        domain: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyRulesCommand {
    /// The rules in the order they are tried.
    Show,
    /// Replace every rule with the `[[policy_rules]]` tables of a TOML file.
    Import { file: PathBuf },
    /// Remove one rule.
    Remove { name: String },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Import rule files and directories of them (SpamAssassin `.cf`, Bulwark `.toml`):
    /// the service compiles them with the built-in rules, reports every rule it cannot
    /// take (file and line) and publishes the compiled set, replacing the previous one.
    Import {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also list every rule with its mode.
        #[arg(long)]
        verbose: bool,
    },
    /// What is published: digest, size, modes, skipped rules.
    Show,
    /// Remove the imported rules: engines go back to their own configuration's.
    Remove,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Digest, size and tokens of the published model.
    Show,
    /// Remove the model.
    Remove,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account; its password comes from BULWARK_PASSWORD, or is made up and
    /// printed.
    Create {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        name: String,
        /// readonly, quarantine, policy or admin (the first account is always admin).
        #[arg(long, default_value = "admin")]
        role: String,
        /// The domains it is limited to (space or comma separated); none: every domain.
        #[arg(long, default_value = "")]
        domains: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an administrator token and print it (it is not shown again).
    Create {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, default_value = "admin")]
        name: String,
    },
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Add a managed domain and its route.
    Add {
        name: String,
        #[arg(long)]
        route: String,
        /// TLS on delivery: opportunistic (default), required (verified) or none.
        #[arg(long)]
        tls: Option<String>,
        /// CA file on the engine hosts for --tls required (default: web PKI roots).
        #[arg(long)]
        tls_ca: Option<String>,
    },
    /// List managed domains.
    List,
    /// Remove a managed domain.
    Remove { name: String },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Import addresses from a CSV file: column A the address, column B the full name.
    Import {
        domain: String,
        file: PathBuf,
        /// Import the valid lines of a file that has invalid ones.
        #[arg(long)]
        skip_invalid: bool,
    },
    /// List a domain's directory.
    List { domain: String },
}

#[derive(Subcommand)]
enum SenderCommand {
    /// Approve a sender: an address, a domain, or *.domain.
    Approve {
        pattern: String,
        /// Only for this domain (default: every domain).
        #[arg(long)]
        domain: Option<String>,
    },
    /// Block a sender: an address, a domain, or *.domain.
    Block {
        pattern: String,
        #[arg(long)]
        domain: Option<String>,
    },
    /// List approved and blocked senders.
    List,
    /// Remove a sender entry.
    Remove {
        pattern: String,
        #[arg(long)]
        domain: Option<String>,
    },
}

#[derive(Subcommand)]
enum IpCommand {
    /// Refuse an address or network at connect.
    Block { cidr: String },
    /// Drop an address or network's packets in the XDP program (refused at connect
    /// where the program is not loaded).
    Drop { cidr: String },
    /// What a connection from ADDRESS would get, and why (asks the engine when
    /// `[control] engine_admin_dir` is set, else the stored lists only).
    Check {
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// The engine's dynamic blocks (harvest and throttles).
    Dynamic {
        #[command(subcommand)]
        command: DynamicCommand,
    },
    /// Always allow an address or network.
    Allow { cidr: String },
    /// List the IP entries.
    List,
    /// Remove an IP entry.
    Remove { cidr: String },
}

#[derive(Subcommand)]
enum DnsblCommand {
    /// The lists in order and the thresholds.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Add a zone (or change it when it is there).
    Add {
        zone: String,
        /// Added to a listed client's score; negative for allow lists.
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        weight: i32,
        /// standard (550 5.7.1) or dynamic (450 4.7.1).
        #[arg(long, default_value = "standard")]
        class: String,
        /// Answer filters, e.g. 127.0.0.[2..11] (repeatable; none: any answer counts).
        #[arg(long = "answer")]
        answers: Vec<String>,
    },
    /// Remove a zone.
    Remove { zone: String },
    /// Set the score from which mail is refused, and the allow threshold.
    Threshold {
        threshold: i32,
        /// A negative score at or below which later tests are skipped (0: off).
        #[arg(long, allow_hyphen_values = true)]
        allow: Option<i32>,
    },
}

#[derive(Subcommand)]
enum DynamicCommand {
    /// The blocks in force: client network, reason, time left.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Lift the block and throttles of the client an address belongs to.
    Remove { address: String },
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// Show the limits in force.
    Show,
    /// Set some limits.
    Set {
        #[arg(long)]
        message_size: Option<i64>,
        #[arg(long)]
        recipients: Option<i64>,
        #[arg(long)]
        harvest_max_unknown: Option<i64>,
        #[arg(long)]
        harvest_window_secs: Option<i64>,
        #[arg(long)]
        harvest_block_secs: Option<i64>,
        /// Any limit by its API name, e.g. throttle_suspect_connections=3 (see
        /// `limits show` for the names).
        #[arg(value_name = "NAME=VALUE")]
        values: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Generation, size and age of the published snapshot, and what each engine runs.
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let remote = cli.remote;
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Token {
            command: TokenCommand::Create { config, name },
        } => token_create(&config, &name),
        Command::Account {
            command:
                AccountCommand::Create {
                    config,
                    name,
                    role,
                    domains,
                },
        } => account_create(&config, &name, &role, &domains),
        Command::Domain { command } => domain(command, &remote),
        Command::Directory { command } => directory(command, &remote),
        Command::Sender { command } => sender(command, &remote),
        Command::Ip { command } => ip(command, &remote),
        Command::Limits { command } => limits(command, &remote),
        Command::Snapshot {
            command: SnapshotCommand::Show,
        } => snapshot_show(&remote),
        Command::Rules { command } => rules(command, &remote),
        Command::Learn { spam, ham } => learn(&spam, &ham, &remote),
        Command::Model { command } => model(command, &remote),
        Command::Verdicts { command } => verdicts(command, &remote),
        Command::UrlBlocklist { command } => url_blocklist(command, &remote),
        Command::Av { command } => antivirus(command, &remote),
        Command::PolicyRules { command } => policy_rules(command, &remote),
        Command::Dnsbl { command } => dnsbl(command, &remote),
        Command::Tracking { command } => cli_tracking::run(command, &remote),
        Command::Quarantine { command } => quarantine(command, &remote),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwark-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BULWARK_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = Config::load(path)?;
    let store = Store::open(&cfg.database)
        .with_context(|| format!("control.database: {}", cfg.database.display()))?;
    let publisher = bulwark_policy::shm::Publisher::open(&cfg.snapshot, Duration::from_secs(60))
        .with_context(|| format!("control.snapshot: {}", cfg.snapshot.display()))?;
    let mut tracking_writer =
        tracking::sqlite::SqliteTracking::open(&cfg.tracking_store, cfg.tracking_retention_days)
            .with_context(|| format!("control.tracking_store: {}", cfg.tracking_store.display()))?;
    let tracking_stats = Arc::new(tracking::ingest::Stats::default());
    let ingester = tracking::ingest::Ingester::open(
        cfg.tracking_dirs.clone(),
        &cfg.tracking_store.join("segments.sqlite"),
        tracking_stats.clone(),
    )
    .with_context(|| format!("control.tracking_store: {}", cfg.tracking_store.display()))?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ingest_thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("tracking-ingest".into())
            .spawn(move || {
                ingester.run(&mut tracking_writer, Duration::from_millis(200), &stop);
            })?
    };
    let state = Arc::new(api::AppState {
        store: Mutex::new(store),
        publisher: Mutex::new(publisher),
        published: Mutex::new(None),
        engines: cfg.engines.clone(),
        engine_admin_dir: cfg.engine_admin_dir.clone(),
        tracking: Arc::new(tracking::sqlite::SqliteSearch::new(&cfg.tracking_store)),
        tracking_stats,
        max_accounts: cfg.max_accounts,
        throttle: accounts::Throttle::default(),
        cookie_secure: cfg.cookie_secure,
        console_url: cfg.console_url.clone(),
        notify_from: cfg.notify_from.clone(),
    });
    let digest_thread = match cfg.digest_hour {
        Some(hour) => {
            let (state, stop) = (state.clone(), stop.clone());
            Some(
                std::thread::Builder::new()
                    .name("quarantine-digest".into())
                    .spawn(move || web_user::digest_loop(state, hour, stop))?,
            )
        }
        None => None,
    };
    // What the store holds is what the engines should run, from the first moment.
    api::publish(&state).map_err(|e| anyhow::anyhow!("publishing the stored policy: {e:?}"))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("control.listen: cannot listen on {}", cfg.listen))?;
        tracing::info!(listen = %cfg.listen, "control API listening");
        axum::serve(
            listener,
            api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        anyhow::Ok(())
    })?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ingest_thread.join();
    if let Some(t) = digest_thread {
        let _ = t.join();
    }
    Ok(())
}

fn account_create(
    path: &std::path::Path,
    name: &str,
    role: &str,
    domains: &str,
) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let mut store = Store::open(&cfg.database)
        .with_context(|| format!("control.database: {}", cfg.database.display()))?;
    let role = accounts::Role::parse(role).with_context(|| {
        format!("--role: {role:?} is not readonly, quarantine, policy or admin")
    })?;
    let domains = accounts::parse_domains(domains)?;
    let (password, made_up) = match std::env::var("BULWARK_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => {
            let mut raw = [0u8; 15];
            getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            (
                raw.iter()
                    .map(|b| {
                        const A: &[u8] =
                            b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
                        A[*b as usize % A.len()] as char
                    })
                    .collect(),
                true,
            )
        }
    };
    let a = store.create_account(name, &password, role, &domains, cfg.max_accounts)?;
    store.audit(
        "bulwark-control account create",
        "account create",
        name,
        a.role.as_str(),
    );
    println!(
        "account {} created: role {}{}",
        a.name,
        a.role.as_str(),
        if a.main { ", main administrator" } else { "" }
    );
    if made_up {
        println!("password: {password}");
    }
    Ok(())
}

fn token_create(path: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let store = Store::open(&cfg.database)
        .with_context(|| format!("control.database: {}", cfg.database.display()))?;
    println!("{}", store.create_token(name)?);
    Ok(())
}

/// Rule files under `paths` (directories read in name order, `.cf` and `.toml` only).
fn rule_files(paths: &[PathBuf]) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for p in paths {
        let mut files = Vec::new();
        if p.is_dir() {
            for e in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
                files.push(e?.path());
            }
            files.sort();
            files.retain(|f| f.extension().is_some_and(|x| x == "cf" || x == "toml"));
        } else {
            files.push(p.clone());
        }
        for f in files {
            let text = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            let name = f
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            // SpamAssassin files may be Latin-1: sent as text, each octet kept.
            let text = match String::from_utf8(text) {
                Ok(t) => t,
                Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
            };
            out.push(json!({"name": name, "text": text}));
        }
    }
    if out.is_empty() {
        bail!("no .cf or .toml files in the paths given");
    }
    Ok(out)
}

fn rules(command: RulesCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        RulesCommand::Import { paths, verbose } => {
            let files = rule_files(&paths)?;
            let n = files.len();
            let r = call_for(
                remote,
                "POST",
                "/api/v1/rules",
                Some(json!({"files": files})),
                Duration::from_secs(1800),
            )?;
            if verbose {
                for x in r["rule_modes"].as_array().into_iter().flatten() {
                    println!(
                        "{:<40} {:<16} {}",
                        x["name"].as_str().unwrap_or(""),
                        x["mode"].as_str().unwrap_or(""),
                        x["origin"].as_str().unwrap_or("")
                    );
                }
            }
            for x in r["skipped"].as_array().into_iter().flatten() {
                println!(
                    "skipped {}:{}: {}: {}",
                    x["file"].as_str().unwrap_or(""),
                    x["line"],
                    x["rule"].as_str().unwrap_or(""),
                    x["reason"].as_str().unwrap_or("")
                );
            }
            print_rules_summary(&r);
            println!(
                "imported {n} file{} and published generation {}",
                if n == 1 { "" } else { "s" },
                r["generation"]
            );
        }
        RulesCommand::Show => {
            let r = call(remote, "GET", "/api/v1/rules", None)?;
            print_rules_summary(&r);
        }
        RulesCommand::Remove => {
            let r = call(remote, "DELETE", "/api/v1/rules", None)?;
            println!("rules removed; generation {}", r["generation"]);
        }
    }
    Ok(())
}

fn print_rules_summary(r: &Value) {
    let m = &r["modes"];
    println!(
        "{} rules: {} hyperscan, {} prefilter+pcre2, {} pcre2, {} meta, {} exists, {} native; {} skipped",
        r["rules"],
        m["hyperscan"],
        m["prefilter"],
        m["pcre2"],
        m["meta"],
        m["exists"],
        m["native"],
        r["skipped"].as_array().map_or(0, Vec::len)
    );
    println!(
        "sha256 {} ({} octets)",
        r["sha256"].as_str().unwrap_or(""),
        r["size"]
    );
}

fn learn(spam: &[PathBuf], ham: &[PathBuf], remote: &Remote) -> anyhow::Result<()> {
    let (model, s, h) = bulwark_inspect::corpus::train(spam, ham)
        .map_err(|(p, e)| anyhow::anyhow!("reading {}: {e}", p.display()))?;
    let model = model.to_bytes();
    let r = call_bytes(remote, "/api/v1/model", &model)?;
    println!(
        "learned {s} spam and {h} ham messages: {} tokens; published generation {} (sha256 {})",
        r["tokens"],
        r["generation"],
        r["sha256"].as_str().unwrap_or("")
    );
    Ok(())
}

fn model(command: ModelCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        ModelCommand::Show => {
            let r = call(remote, "GET", "/api/v1/model", None)?;
            println!(
                "model: {} tokens, sha256 {} ({} octets)",
                r["tokens"],
                r["sha256"].as_str().unwrap_or(""),
                r["size"]
            );
        }
        ModelCommand::Remove => {
            let r = call(remote, "DELETE", "/api/v1/model", None)?;
            println!("model removed; generation {}", r["generation"]);
        }
    }
    Ok(())
}

/// Calls the API; returns the JSON body of a 2xx, or an error with the service's message.
fn quarantine(command: QuarantineCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        QuarantineCommand::Digest => {
            let v = call(remote, "POST", "/api/v1/quarantine/digest", None)?;
            println!(
                "{} digests queued listing {} messages; {} could not be queued",
                v["recipients"], v["messages"], v["failed"]
            );
        }
        QuarantineCommand::Users => {
            let v = call(remote, "GET", "/api/v1/end-users", None)?;
            println!(
                "{:<40} {:<8} {:<7} REGISTERED",
                "ADDRESS", "ACTIVE", "DIGEST"
            );
            for u in v.as_array().into_iter().flatten() {
                println!(
                    "{:<40} {:<8} {:<7} {}",
                    u["address"].as_str().unwrap_or(""),
                    if u["active"] == json!(true) {
                        "yes"
                    } else {
                        "pending"
                    },
                    if u["digest"] == json!(true) {
                        "on"
                    } else {
                        "off"
                    },
                    tracking::rfc3339(u["created_at"].as_i64().unwrap_or(0) * 1000)
                );
            }
        }
    }
    Ok(())
}

fn call(remote: &Remote, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    call_for(remote, method, path, body, Duration::from_secs(30))
}

/// `PUT` of a binary body.
fn call_bytes(remote: &Remote, path: &str, bytes: &[u8]) -> anyhow::Result<Value> {
    let Some(token) = &remote.token else {
        bail!("no token: pass --token or set BULWARK_TOKEN");
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let url = format!("{}{path}", remote.url.trim_end_matches('/'));
    let response = agent
        .put(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .content_type("application/octet-stream")
        .send(bytes);
    answer(response.with_context(|| format!("cannot reach {url}"))?)
}

fn call_for(
    remote: &Remote,
    method: &str,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let Some(token) = &remote.token else {
        bail!(
            "no token: pass --token or set BULWARK_TOKEN (create one with `bulwark-control token create`)"
        );
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let url = format!("{}{path}", remote.url.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let response = match (method, body) {
        ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
        ("PUT", Some(b)) => agent.put(&url).header("Authorization", &auth).send_json(&b),
        // A string body is sent as it is (CSV); anything else as JSON.
        (_, Some(Value::String(text))) => agent
            .post(&url)
            .header("Authorization", &auth)
            .content_type("text/csv")
            .send(text.as_str()),
        (_, Some(b)) => agent
            .post(&url)
            .header("Authorization", &auth)
            .send_json(&b),
        (_, None) => agent.post(&url).header("Authorization", &auth).send_empty(),
    };
    answer(response.with_context(|| format!("cannot reach {url}"))?)
}

/// The JSON body of a 2xx, or an error with the service's message.
fn answer(mut response: ureq::http::Response<ureq::Body>) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        for l in value["lines"].as_array().into_iter().flatten() {
            eprintln!("line {}: {}", l["line"], l["error"].as_str().unwrap_or(""));
        }
        let msg = value["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        match value["field"].as_str() {
            Some(f) => bail!("{status}: {f}: {msg}"),
            None => bail!("{status}: {msg}"),
        }
    }
    Ok(value)
}

fn domain(command: DomainCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        DomainCommand::Add {
            name,
            route,
            tls,
            tls_ca,
        } => {
            let r = call(
                remote,
                "POST",
                "/api/v1/domains",
                Some(json!({"name": name, "route": route, "tls": tls, "tls_ca": tls_ca})),
            )?;
            println!(
                "added {} -> {} (generation {})",
                r["name"].as_str().unwrap_or(""),
                r["route"].as_str().unwrap_or(""),
                r["generation"]
            );
        }
        DomainCommand::List => {
            let r = call(remote, "GET", "/api/v1/domains", None)?;
            for d in r.as_array().into_iter().flatten() {
                let ca = d["tls_ca"]
                    .as_str()
                    .filter(|c| !c.is_empty())
                    .map(|c| format!("\t{c}"))
                    .unwrap_or_default();
                println!(
                    "{}\t{}\t{}{ca}",
                    d["name"].as_str().unwrap_or(""),
                    d["route"].as_str().unwrap_or(""),
                    d["tls"].as_str().unwrap_or("")
                );
            }
        }
        DomainCommand::Remove { name } => {
            let r = call(remote, "DELETE", &format!("/api/v1/domains/{name}"), None)?;
            println!("removed {name} (generation {})", r["generation"]);
        }
    }
    Ok(())
}

/// Percent-encodes a query value.
fn query(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn directory(command: DirectoryCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        DirectoryCommand::Import {
            domain,
            file,
            skip_invalid,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let path = format!(
                "/api/v1/domains/{}/directory{}",
                query(&domain),
                if skip_invalid {
                    "?skip_invalid=true"
                } else {
                    ""
                }
            );
            let r = call(remote, "POST", &path, Some(Value::String(text)))?;
            for l in r["skipped"].as_array().into_iter().flatten() {
                eprintln!(
                    "skipped line {}: {}",
                    l["line"],
                    l["error"].as_str().unwrap_or("")
                );
            }
            println!(
                "imported {} addresses into {domain} (generation {})",
                r["imported"], r["generation"]
            );
        }
        DirectoryCommand::List { domain } => {
            let r = call(
                remote,
                "GET",
                &format!("/api/v1/domains/{}/directory", query(&domain)),
                None,
            )?;
            for e in r.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}",
                    e["address"].as_str().unwrap_or(""),
                    e["name"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

fn sender(command: SenderCommand, remote: &Remote) -> anyhow::Result<()> {
    let set = |pattern: String, domain: Option<String>, action: &str| -> anyhow::Result<()> {
        let r = call(
            remote,
            "POST",
            "/api/v1/senders",
            Some(json!({"pattern": pattern, "action": action, "domain": domain})),
        )?;
        println!(
            "{action} {} (generation {})",
            r["pattern"].as_str().unwrap_or(""),
            r["generation"]
        );
        Ok(())
    };
    match command {
        SenderCommand::Approve { pattern, domain } => set(pattern, domain, "approved")?,
        SenderCommand::Block { pattern, domain } => set(pattern, domain, "blocked")?,
        SenderCommand::List => {
            let r = call(remote, "GET", "/api/v1/senders", None)?;
            for e in r.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    e["action"].as_str().unwrap_or(""),
                    e["pattern"].as_str().unwrap_or(""),
                    e["domain"].as_str().unwrap_or("*")
                );
            }
        }
        SenderCommand::Remove { pattern, domain } => {
            let mut path = format!("/api/v1/senders?pattern={}", query(&pattern));
            if let Some(d) = domain {
                path.push_str(&format!("&domain={}", query(&d)));
            }
            let r = call(remote, "DELETE", &path, None)?;
            println!("removed {pattern} (generation {})", r["generation"]);
        }
    }
    Ok(())
}

fn ip(command: IpCommand, remote: &Remote) -> anyhow::Result<()> {
    let set = |cidr: String, action: &str| -> anyhow::Result<()> {
        let r = call(
            remote,
            "POST",
            "/api/v1/ips",
            Some(json!({"cidr": cidr, "action": action})),
        )?;
        println!(
            "{action} {} (generation {})",
            r["cidr"].as_str().unwrap_or(""),
            r["generation"]
        );
        Ok(())
    };
    match command {
        IpCommand::Block { cidr } => set(cidr, "block")?,
        IpCommand::Allow { cidr } => set(cidr, "allow")?,
        IpCommand::Drop { cidr } => set(cidr, "drop")?,
        IpCommand::Check { address, json } => {
            let c = call(
                remote,
                "GET",
                &format!("/api/v1/ips/check?address={}", query(&address)),
                None,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
                println!(
                    "{} (client {}): {}",
                    s("address"),
                    s("client"),
                    s("verdict")
                );
                if !s("reply").is_empty() {
                    println!("  reply: {}", s("reply"));
                }
                if !s("group").is_empty() {
                    println!("  group: {}", s("group"));
                }
                for step in c["steps"].as_array().into_iter().flatten() {
                    println!(
                        "  {}: {}",
                        step[0].as_str().unwrap_or(""),
                        step[1].as_str().unwrap_or("")
                    );
                }
            }
        }
        IpCommand::Dynamic {
            command: DynamicCommand::List { json },
        } => {
            let r = call(remote, "GET", "/api/v1/ips/dynamic", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let blocks = r.as_array().cloned().unwrap_or_default();
                for b in &blocks {
                    println!(
                        "{:<24} {:<18} {:>6}s",
                        b["network"].as_str().unwrap_or(""),
                        b["reason"].as_str().unwrap_or(""),
                        b["remaining_ms"].as_u64().unwrap_or(0) / 1000
                    );
                }
                println!("{} blocked", blocks.len());
            }
        }
        IpCommand::Dynamic {
            command: DynamicCommand::Remove { address },
        } => {
            let r = call(
                remote,
                "DELETE",
                &format!("/api/v1/ips/dynamic?address={}", query(&address)),
                None,
            )?;
            if r["removed"] == json!(true) {
                println!("{address}: block lifted");
            } else {
                println!("{address}: no block was in force (throttles reset)");
            }
        }
        IpCommand::List => {
            let r = call(remote, "GET", "/api/v1/ips", None)?;
            for e in r.as_array().into_iter().flatten() {
                println!(
                    "{}\t{}",
                    e["action"].as_str().unwrap_or(""),
                    e["cidr"].as_str().unwrap_or("")
                );
            }
        }
        IpCommand::Remove { cidr } => {
            let r = call(
                remote,
                "DELETE",
                &format!("/api/v1/ips?cidr={}", query(&cidr)),
                None,
            )?;
            println!("removed {cidr} (generation {})", r["generation"]);
        }
    }
    Ok(())
}

fn dnsbl(command: DnsblCommand, remote: &Remote) -> anyhow::Result<()> {
    let mut cur = call(remote, "GET", "/api/v1/dnsbl", None)?;
    let print = |v: &Value| {
        println!(
            "threshold {}  allow_threshold {}",
            v["threshold"], v["allow_threshold"]
        );
        for z in v["zones"].as_array().into_iter().flatten() {
            let answers: Vec<&str> = z["answers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .collect();
            println!(
                "{:<32} weight {:>5}  {:<8}  {}",
                z["zone"].as_str().unwrap_or(""),
                z["weight"],
                z["class"].as_str().unwrap_or(""),
                if answers.is_empty() {
                    "any answer".to_string()
                } else {
                    answers.join(" ")
                }
            );
        }
    };
    let zones =
        |v: &mut Value| -> Vec<Value> { v["zones"].as_array().cloned().unwrap_or_default() };
    let body = match command {
        DnsblCommand::Show { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&cur)?);
            } else {
                print(&cur);
            }
            return Ok(());
        }
        DnsblCommand::Add {
            zone,
            weight,
            class,
            answers,
        } => {
            let name = zone.trim().trim_end_matches('.').to_ascii_lowercase();
            let mut list = zones(&mut cur);
            let entry = json!({"zone": name, "weight": weight, "class": class, "answers": answers});
            match list.iter().position(|z| z["zone"] == json!(name)) {
                Some(i) => list[i] = entry,
                None => list.push(entry),
            }
            cur["zones"] = json!(list);
            cur
        }
        DnsblCommand::Remove { zone } => {
            let name = zone.trim().trim_end_matches('.').to_ascii_lowercase();
            let mut list = zones(&mut cur);
            let before = list.len();
            list.retain(|z| z["zone"] != json!(name));
            if list.len() == before {
                bail!("{name}: no such DNS list");
            }
            cur["zones"] = json!(list);
            cur
        }
        DnsblCommand::Threshold { threshold, allow } => {
            cur["threshold"] = json!(threshold);
            if let Some(a) = allow {
                cur["allow_threshold"] = json!(a);
            }
            cur
        }
    };
    let r = call(remote, "PUT", "/api/v1/dnsbl", Some(body))?;
    println!("published (generation {})", r["generation"]);
    print(&call(remote, "GET", "/api/v1/dnsbl", None)?);
    Ok(())
}

fn limits(command: LimitsCommand, remote: &Remote) -> anyhow::Result<()> {
    let r = match command {
        LimitsCommand::Show => call(remote, "GET", "/api/v1/limits", None)?,
        LimitsCommand::Set {
            message_size,
            recipients,
            harvest_max_unknown,
            harvest_window_secs,
            harvest_block_secs,
            values,
        } => {
            let mut body = serde_json::Map::new();
            for kv in &values {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("{kv:?}: give NAME=VALUE");
                };
                let v: i64 = v
                    .trim()
                    .parse()
                    .with_context(|| format!("{kv:?}: the value must be a whole number"))?;
                body.insert(k.trim().to_string(), json!(v));
            }
            for (k, v) in [
                ("message_size", message_size),
                ("recipients", recipients),
                ("harvest_max_unknown", harvest_max_unknown),
                ("harvest_window_secs", harvest_window_secs),
                ("harvest_block_secs", harvest_block_secs),
            ] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            if body.is_empty() {
                bail!("give at least one limit to set (see --help)");
            }
            call(remote, "PUT", "/api/v1/limits", Some(Value::Object(body)))?
        }
    };
    for (k, v) in r.as_object().into_iter().flatten() {
        println!("{k}\t{v}");
    }
    Ok(())
}

fn antivirus(command: AvCommand, remote: &Remote) -> anyhow::Result<()> {
    let r = match command {
        AvCommand::Import { files } => {
            // Checked here first, so every malformed line of every file is named.
            let mut set = bulwark_inspect::av::SignatureSet::default();
            let mut body = Vec::new();
            let mut errors = Vec::new();
            for f in &files {
                let bytes =
                    std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let name = f.display().to_string();
                match set.add_file(&name, &text) {
                    Ok(()) => {}
                    Err(bulwark_inspect::av::AvError::Lines(l)) => errors.extend(l),
                    Err(e) => bail!("{e}"),
                }
                body.push(serde_json::json!({"name": name, "text": text}));
            }
            if !errors.is_empty() {
                for e in &errors {
                    eprintln!("{e}");
                }
                bail!(
                    "{} malformed signature lines: nothing imported",
                    errors.len()
                );
            }
            call_for(
                remote,
                "POST",
                "/api/v1/antivirus",
                Some(serde_json::json!({ "files": body })),
                Duration::from_secs(300),
            )?
        }
        AvCommand::Show => call(remote, "GET", "/api/v1/antivirus", None)?,
        AvCommand::Remove => call(remote, "DELETE", "/api/v1/antivirus", None)?,
    };
    for (k, v) in r.as_object().into_iter().flatten() {
        if let Some(list) = v.as_array() {
            for item in list {
                println!("{k}\t{}", item.as_str().unwrap_or(&item.to_string()));
            }
        } else {
            println!("{k}\t{v}");
        }
    }
    Ok(())
}

fn url_blocklist(command: UrlBlocklistCommand, remote: &Remote) -> anyhow::Result<()> {
    let r = match command {
        UrlBlocklistCommand::Import { files } => {
            let mut all = String::new();
            for f in &files {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                if let Err(e) = bulwark_inspect::phishing::Blocklist::parse(&text) {
                    bail!("{}:{}: {}", f.display(), e.line, e.message);
                }
                all.push_str(&text);
                all.push('\n');
            }
            call(
                remote,
                "POST",
                "/api/v1/url-blocklist",
                Some(Value::String(all)),
            )?
        }
        UrlBlocklistCommand::Show => call(remote, "GET", "/api/v1/url-blocklist", None)?,
        UrlBlocklistCommand::Remove => call(remote, "DELETE", "/api/v1/url-blocklist", None)?,
    };
    for (k, v) in r.as_object().into_iter().flatten() {
        println!("{k}\t{v}");
    }
    Ok(())
}

fn verdicts(command: VerdictsCommand, remote: &Remote) -> anyhow::Result<()> {
    let path = |domain: &Option<String>| match domain {
        Some(d) => format!("/api/v1/domains/{}/verdicts", query(d)),
        None => "/api/v1/verdicts".to_string(),
    };
    let r = match command {
        VerdictsCommand::Show => {
            let r = call(remote, "GET", "/api/v1/verdicts", None)?;
            println!("global\t{}", r["global"]);
            for (d, spec) in r["domains"].as_object().into_iter().flatten() {
                println!("{d}\t{spec}");
            }
            return Ok(());
        }
        VerdictsCommand::Set { domain, settings } => {
            let current = match &domain {
                Some(_) => call(remote, "GET", &path(&domain), None)?,
                None => call(remote, "GET", "/api/v1/verdicts", None)?["global"].clone(),
            };
            let mut body = current.as_object().cloned().unwrap_or_default();
            for kv in settings {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("{kv:?}: give KEY=VALUE");
                };
                let (k, v) = (k.trim(), v.trim());
                if v == "inherit" {
                    body.remove(k);
                } else if k.ends_with("_threshold") {
                    let n: f64 = v
                        .parse()
                        .map_err(|_| anyhow::anyhow!("{k}: {v:?} is not a number"))?;
                    body.insert(k.into(), json!(n));
                } else {
                    body.insert(k.into(), json!(v));
                }
            }
            call(remote, "PUT", &path(&domain), Some(Value::Object(body)))?
        }
        VerdictsCommand::Clear { domain } => call(remote, "PUT", &path(&domain), Some(json!({})))?,
    };
    println!("generation {}", r["generation"]);
    Ok(())
}

fn policy_rules(command: PolicyRulesCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        PolicyRulesCommand::Show => {
            let r = call(remote, "GET", "/api/v1/policy-rules", None)?;
            for (i, rule) in r["rules"].as_array().into_iter().flatten().enumerate() {
                println!("{}\t{}\t{rule}", i + 1, rule["name"].as_str().unwrap_or(""));
            }
        }
        PolicyRulesCommand::Import { file } => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct File {
                #[serde(default)]
                policy_rules: Vec<bulwark_policy::filtering::RuleSpec>,
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let f: File = toml::from_str(&text).map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start].matches('\n').count() + 1)
                    .map_or(String::new(), |l| format!(" line {l}"));
                anyhow::anyhow!("{}{line}: {}", file.display(), e.message())
            })?;
            let r = call(
                remote,
                "PUT",
                "/api/v1/policy-rules",
                Some(json!({"rules": f.policy_rules})),
            )?;
            println!("{} rules (generation {})", r["rules"], r["generation"]);
        }
        PolicyRulesCommand::Remove { name } => {
            let r = call(
                remote,
                "DELETE",
                &format!("/api/v1/policy-rules/{}", query(&name)),
                None,
            )?;
            println!("removed {name} (generation {})", r["generation"]);
        }
    }
    Ok(())
}

fn snapshot_show(remote: &Remote) -> anyhow::Result<()> {
    let r = call(remote, "GET", "/api/v1/snapshot", None)?;
    match r["generation"].as_u64() {
        Some(g) => println!(
            "generation {g}, {} octets, published {:.1} s ago",
            r["size"],
            r["age_seconds"].as_f64().unwrap_or(0.0)
        ),
        None => println!("nothing published yet"),
    }
    for e in r["engines"].as_array().into_iter().flatten() {
        match e["generation"].as_u64() {
            Some(g) => println!(
                "engine {}: generation {g}",
                e["endpoint"].as_str().unwrap_or("")
            ),
            None => println!(
                "engine {}: unreachable ({})",
                e["endpoint"].as_str().unwrap_or(""),
                e["error"].as_str().unwrap_or("")
            ),
        }
    }
    Ok(())
}
