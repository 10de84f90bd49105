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
    /// Train a classifier model from labelled mail (one message per file, maildirs or
    /// mbox files) for `[inspection] model`.
    Learn {
        /// Spam: a directory of messages or an mbox file (repeatable).
        #[arg(long, required = true)]
        spam: Vec<PathBuf>,
        /// Wanted mail: a directory of messages or an mbox file (repeatable).
        #[arg(long, required = true)]
        ham: Vec<PathBuf>,
        /// Where to write the model.
        #[arg(long)]
        model: PathBuf,
    },
    /// Inspect messages in files (one per file, maildirs, mbox) with the rules, model and
    /// settings of a configuration, without authentication (no envelope): one line per
    /// message and a summary, or JSON lines.
    Score {
        /// Configuration file (its `[inspection]` and `[[domains]]`).
        #[arg(long, short)]
        config: PathBuf,
        /// A model to use instead of `[inspection] model`.
        #[arg(long)]
        model: Option<PathBuf>,
        /// One JSON object per message instead of the table.
        #[arg(long)]
        json: bool,
        /// Only the summary.
        #[arg(long, conflicts_with = "json")]
        summary: bool,
        /// Files, directories or mbox files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Inspect and act on the queue of a running engine (through its admin sockets).
    Queue {
        /// Configuration file of the running engine (finds `server.admin_dir`); before
        /// or after the operation.
        #[arg(
            long,
            short,
            default_value = "/etc/bulwark/bulwark.toml",
            global = true
        )]
        config: PathBuf,
        /// The admin socket directory, instead of reading it from the configuration.
        #[arg(long, global = true)]
        admin_dir: Option<PathBuf>,
        #[command(subcommand)]
        op: QueueOp,
    },
    /// List, show, release and delete quarantined messages of a running engine.
    Quarantine {
        /// Configuration file of the running engine (finds `server.admin_dir`).
        #[arg(
            long,
            short,
            default_value = "/etc/bulwark/bulwark.toml",
            global = true
        )]
        config: PathBuf,
        /// The admin socket directory, instead of reading it from the configuration.
        #[arg(long, global = true)]
        admin_dir: Option<PathBuf>,
        #[command(subcommand)]
        op: QuarantineOp,
    },
    /// The connection tier of a running engine: explain an address's verdict; list and
    /// lift dynamic blocks (harvest and throttles).
    Ip {
        /// Configuration file of the running engine (finds `server.admin_dir`).
        #[arg(
            long,
            short,
            default_value = "/etc/bulwark/bulwark.toml",
            global = true
        )]
        config: PathBuf,
        /// The admin socket directory, instead of reading it from the configuration.
        #[arg(long, global = true)]
        admin_dir: Option<PathBuf>,
        #[command(subcommand)]
        op: IpOp,
    },
}

#[derive(Subcommand)]
enum IpOp {
    /// What the engine would decide about a connection from ADDRESS, step by step (IP
    /// lists, pregreet, dynamic blocks, DNS lists, throttles); nothing is counted.
    Check {
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Dynamic blocks.
    Dynamic {
        #[command(subcommand)]
        op: DynamicOp,
    },
}

#[derive(Subcommand)]
enum DynamicOp {
    /// The blocks in force: client network, reason, time left.
    List {
        /// One JSON document (an array of blocks) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Lift the block and throttles of the client an address belongs to.
    Remove { address: String },
}

#[derive(Subcommand)]
enum QuarantineOp {
    /// Quarantined messages, oldest first: id, age, size, verdict, score, sender,
    /// recipients, subject.
    List {
        /// Only messages held for this recipient.
        #[arg(long)]
        recipient: Option<String>,
        /// One JSON document (an array of messages) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One message: its details and its content (the first 256 KiB).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Deliver a quarantined message through the queue (to one recipient or all of
    /// them), with an `X-Bulwark-Released` header.
    Release {
        id: String,
        #[arg(long)]
        recipient: Option<String>,
    },
    /// Remove a quarantined message (for one recipient or all of them).
    Delete {
        id: String,
        #[arg(long)]
        recipient: Option<String>,
    },
}

#[derive(Subcommand)]
enum QueueOp {
    /// Every queued message: id, size, age, state, attempts, next attempt, last error,
    /// sender and recipients.
    List {
        /// One JSON document (an array of messages) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One message in detail, with each recipient's status and last reply.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Attempt deferred messages now and end their destinations' backoff.
    Flush {
        /// Only messages with a pending recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Remove a message (no delivery, no bounce), or every pending recipient in a domain.
    Delete {
        #[arg(required_unless_present = "domain", conflicts_with = "domain")]
        id: Option<String>,
        #[arg(long)]
        domain: Option<String>,
    },
    /// Stop delivery attempts of a message until it is released.
    Hold { id: String },
    /// Let a held message be delivered again, at once.
    Release { id: String },
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
        Command::Score {
            config,
            model,
            json,
            summary,
            paths,
        } => match score(&config, model, json, summary, &paths) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bulwark: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Learn { spam, ham, model } => match learn(&spam, &ham, &model) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bulwark: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Queue {
            config,
            admin_dir,
            op,
        } => match queue(&config, admin_dir, op) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("bulwark: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Quarantine {
            config,
            admin_dir,
            op,
        } => match quarantine(&config, admin_dir, op) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bulwark: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ip {
            config,
            admin_dir,
            op,
        } => match ip(&config, admin_dir, op) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bulwark: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            let _guard = init_logging();
            bulwark::runtime::abort_on_panic();
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

fn learn(spam: &[PathBuf], ham: &[PathBuf], model: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let (m, s, h) = bulwark_inspect::corpus::train(spam, ham)
        .map_err(|(p, e)| anyhow::anyhow!("reading {}: {e}", p.display()))?;
    let tmp = model.with_extension("tmp");
    std::fs::write(&tmp, m.to_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, model).with_context(|| format!("writing {}", model.display()))?;
    println!(
        "learned {s} spam and {h} ham messages: {} tokens in {}",
        m.tokens(),
        model.display()
    );
    if s < bulwark_inspect::classifier::MIN_TRAINED || h < bulwark_inspect::classifier::MIN_TRAINED
    {
        println!(
            "note: the model gives no opinion until it has learned at least {} messages of each class",
            bulwark_inspect::classifier::MIN_TRAINED
        );
    }
    Ok(())
}

fn score(
    config: &std::path::Path,
    model: Option<PathBuf>,
    json: bool,
    summary: bool,
    paths: &[PathBuf],
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use bulwark_inspect::{corpus, inspector::Envelope};
    use std::collections::BTreeMap;
    let mut cfg =
        Config::load(config).map_err(|e| anyhow::anyhow!("{}:\n{e}", config.display()))?;
    if model.is_some() {
        cfg.inspection.model = model;
    }
    cfg.inspection.enabled = true;
    // No envelope here: SpamAssassin's network score sets do not apply.
    cfg.authentication.enabled = false;
    let ins = bulwark::runtime::load_inspector(&cfg)?
        .ok_or_else(|| anyhow::anyhow!("inspection is off"))?;
    let mut scanner = ins
        .scanner()
        .map_err(|e| anyhow::anyhow!("scratch space: {e}"))?;
    let now = bulwark::queue::unix_now();
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0usize;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write as _;
    for p in paths {
        corpus::for_each_named(p, |file, index, m| {
            total += 1;
            // When it arrived, as its first Received header says (else now), so date
            // rules judge archived mail as its receiver did.
            let arrival = received_at(m).unwrap_or(now);
            let env = Envelope {
                client_ip: std::net::IpAddr::from([0, 0, 0, 0]),
                helo: "",
                mail_from: "",
                hostname: &cfg.server.hostname,
                queue_id: "",
                arrival,
                auth: None,
                approved: false,
                verdicts: None,
            };
            let r = ins.inspect(&mut scanner, m, &env);
            let key = format!("{}/{}", r.verdict.as_str(), r.action.as_str());
            *verdicts.entry(key).or_default() += 1;
            let rules: Vec<String> = r
                .hits
                .iter()
                .map(|h| format!("{}={}", h.name, h.score))
                .collect();
            let _ = if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "file": file.display().to_string(),
                        "index": index,
                        "verdict": r.verdict.as_str(),
                        "action": r.action.as_str(),
                        "score": (r.score * 1000.0).round() / 1000.0,
                        "rules": rules,
                    })
                )
            } else if !summary {
                writeln!(
                    out,
                    "{}{}\t{}\t{}\t{:.2}\t{}",
                    file.display(),
                    if index > 0 {
                        format!("#{index}")
                    } else {
                        String::new()
                    },
                    r.verdict.as_str(),
                    r.action.as_str(),
                    r.score,
                    rules.join(",")
                )
            } else {
                Ok(())
            };
        })
        .with_context(|| format!("reading {}", p.display()))?;
    }
    if !json {
        writeln!(out, "-- {total} messages")?;
        for (k, v) in &verdicts {
            writeln!(
                out,
                "   {k}: {v} ({:.1}%)",
                *v as f64 * 100.0 / total.max(1) as f64
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The date of a message's first (most recent) Received header, as Unix seconds.
fn received_at(m: &[u8]) -> Option<u64> {
    let head_end = memchr::memmem::find(m, b"\r\n\r\n")
        .or_else(|| memchr::memmem::find(m, b"\n\n"))
        .unwrap_or(m.len());
    let head = String::from_utf8_lossy(&m[..head_end]);
    let mut lines = head.lines();
    let mut value = String::new();
    for l in lines.by_ref() {
        if l.len() > 9 && l[..9].eq_ignore_ascii_case("received:") {
            value.push_str(&l[9..]);
            break;
        }
    }
    if value.is_empty() {
        return None;
    }
    for l in lines {
        if l.starts_with([' ', '\t']) {
            value.push(' ');
            value.push_str(l.trim());
        } else {
            break;
        }
    }
    let date = value.rsplit(';').next()?;
    bulwark_inspect::native::parse_date(date).and_then(|t| u64::try_from(t).ok())
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

fn admin_dir(config: &std::path::Path, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match given {
        Some(d) => d,
        None => Config::load(config)
            .map_err(|e| anyhow::anyhow!("{}:\n{e}", config.display()))?
            .admin_dir(),
    })
}

fn ip(config: &std::path::Path, admin_dir_arg: Option<PathBuf>, op: IpOp) -> anyhow::Result<()> {
    use bulwark::admin::{ClientRequest, ClientResponse};
    let dir = admin_dir(config, admin_dir_arg)?;
    let req = match &op {
        IpOp::Check { address, .. } => ClientRequest::Check {
            address: address.clone(),
        },
        IpOp::Dynamic {
            op: DynamicOp::List { .. },
        } => ClientRequest::DynamicList,
        IpOp::Dynamic {
            op: DynamicOp::Remove { address },
        } => ClientRequest::DynamicRemove {
            address: address.clone(),
        },
    };
    let r: ClientResponse = bulwark::admin::ask_core(&dir, 0, &req)?;
    if !r.ok {
        anyhow::bail!("{}", r.error.unwrap_or_else(|| "failed".into()));
    }
    match op {
        IpOp::Check { json, .. } => {
            let c = r.check.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!("{} (client {}): {}", c.address, c.client, c.verdict);
                if !c.reply.is_empty() {
                    println!("  reply: {}", c.reply);
                }
                if !c.group.is_empty() {
                    println!("  group: {}", c.group);
                }
                for (step, found) in &c.steps {
                    println!("  {step}: {found}");
                }
            }
        }
        IpOp::Dynamic {
            op: DynamicOp::List { json: true },
        } => println!("{}", serde_json::to_string_pretty(&r.blocks)?),
        IpOp::Dynamic {
            op: DynamicOp::List { json: false },
        } => {
            for b in &r.blocks {
                println!(
                    "{:<24} {:<18} {:>8}",
                    b.network,
                    b.reason,
                    age(b.remaining_ms / 1000)
                );
            }
            println!("{} blocked", r.blocks.len());
        }
        IpOp::Dynamic {
            op: DynamicOp::Remove { address },
        } => {
            if r.removed {
                println!("{address}: block lifted");
            } else {
                println!("{address}: no block was in force (throttles reset)");
            }
        }
    }
    Ok(())
}

fn quarantine(
    config: &std::path::Path,
    admin_dir_arg: Option<PathBuf>,
    op: QuarantineOp,
) -> anyhow::Result<()> {
    use bulwark::quarantine::{Request, Response};
    let dir = admin_dir(config, admin_dir_arg)?;
    let by = format!(
        "{}@cli",
        std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "admin".into())
    );
    let req = match &op {
        QuarantineOp::List { recipient, .. } => Request::QuarantineList {
            recipient: recipient.clone(),
        },
        QuarantineOp::Show { id, .. } => Request::QuarantineShow { id: id.clone() },
        QuarantineOp::Release { id, recipient } => Request::QuarantineRelease {
            id: id.clone(),
            recipient: recipient.clone(),
            by: Some(by),
        },
        QuarantineOp::Delete { id, recipient } => Request::QuarantineDelete {
            id: id.clone(),
            recipient: recipient.clone(),
            by: Some(by),
        },
    };
    let r: Response = bulwark::admin::ask_core(&dir, 0, &req)?;
    if !r.ok {
        anyhow::bail!("{}", r.error.unwrap_or_else(|| "failed".into()));
    }
    let now = bulwark::queue::unix_now();
    match op {
        QuarantineOp::List { json: true, .. } => {
            println!("{}", serde_json::to_string_pretty(&r.entries)?)
        }
        QuarantineOp::Show { json: true, .. } => println!("{}", serde_json::to_string_pretty(&r)?),
        QuarantineOp::List { .. } => {
            let mut size = 0;
            for m in &r.entries {
                size += m.size;
                println!(
                    "{}  {:>9}  {:>7}  {} {:.1}  <{}>",
                    m.id,
                    m.size,
                    age(now.saturating_sub(m.arrival)),
                    m.verdict,
                    m.score,
                    m.sender
                );
                println!("    subject: {}", m.subject.replace(['\r', '\n'], " "));
                for rcpt in &m.recipients {
                    println!("    {rcpt}");
                }
            }
            println!(
                "-- {} message{}, {} octets in quarantine",
                r.entries.len(),
                plural(r.entries.len()),
                size
            );
        }
        QuarantineOp::Show { .. } => {
            for m in &r.entries {
                println!("id:          {}", m.id);
                println!("sender:      <{}>", m.sender);
                println!("recipients:  {}", m.recipients.join(", "));
                println!("client:      {} ({})", m.client_ip, m.helo);
                println!(
                    "arrival:     {} ({} ago)",
                    bulwark::util::rfc5322_date(m.arrival),
                    age(now.saturating_sub(m.arrival))
                );
                println!("expires:     {}", bulwark::util::rfc5322_date(m.expires));
                println!("verdict:     {} (score {:.2})", m.verdict, m.score);
                println!("rules:       {}", m.rules.join(", "));
                println!("size:        {} octets", m.size);
                println!("subject:     {}", m.subject.replace(['\r', '\n'], " "));
            }
            println!();
            print!("{}", r.content.unwrap_or_default());
            if r.truncated {
                println!("\n[… truncated at 256 KiB]");
            }
        }
        QuarantineOp::Release { id, .. } => println!(
            "{id}: released to {} as {}",
            r.recipients.join(", "),
            r.queued_as.unwrap_or_default()
        ),
        QuarantineOp::Delete { id, .. } => {
            println!("{id}: deleted for {}", r.recipients.join(", "))
        }
    }
    Ok(())
}

fn queue(
    config: &std::path::Path,
    admin_dir_arg: Option<PathBuf>,
    op: QueueOp,
) -> anyhow::Result<ExitCode> {
    use bulwark::deliver::ops::Request;
    let dir = admin_dir(config, admin_dir_arg)?;
    let (req, json) = match &op {
        QueueOp::List { json } => (Request::List, *json),
        QueueOp::Show { id, json } => (Request::Show { id: id.clone() }, *json),
        QueueOp::Flush { domain } => (
            Request::Flush {
                domain: domain.clone(),
            },
            false,
        ),
        QueueOp::Delete { id, domain } => (
            Request::Delete {
                id: id.clone(),
                domain: domain.clone(),
            },
            false,
        ),
        QueueOp::Hold { id } => (Request::Hold { id: id.clone() }, false),
        QueueOp::Release { id } => (Request::Release { id: id.clone() }, false),
    };
    let answers = bulwark::admin::ask_all(&dir, &req)?;
    // Operations on one id: the core that has it answers; the others do not know it.
    let by_id = matches!(
        req,
        Request::Show { .. } | Request::Hold { .. } | Request::Release { .. }
    ) || matches!(req, Request::Delete { id: Some(_), .. });
    let mut errors = Vec::new();
    let mut not_found = None;
    let (mut entries, mut messages, mut recipients) = (Vec::new(), 0, 0);
    for a in answers {
        if a.ok {
            entries.extend(a.entries);
            messages += a.messages;
            recipients += a.recipients;
        } else if a.missing {
            not_found = a.error;
        } else {
            errors.push(a.error.unwrap_or_else(|| "failed".into()));
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    if by_id && messages == 0 {
        anyhow::bail!("{}", not_found.unwrap_or_else(|| "no such message".into()));
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    let now = bulwark::queue::unix_now();
    match op {
        QueueOp::List { .. } | QueueOp::Show { .. } if json => {
            let v = match op {
                QueueOp::Show { .. } => serde_json::to_string_pretty(&entries.first())?,
                _ => serde_json::to_string_pretty(&entries)?,
            };
            println!("{v}");
        }
        QueueOp::List { .. } => print_list(&entries, now),
        QueueOp::Show { .. } => {
            for e in &entries {
                print_entry(e, now);
            }
        }
        QueueOp::Flush { domain } => println!(
            "{messages} message{} scheduled for delivery now{}",
            plural(messages),
            domain.map(|d| format!(" (domain {d})")).unwrap_or_default()
        ),
        QueueOp::Delete { id: Some(id), .. } => {
            println!(
                "{id}: deleted ({recipients} pending recipient{})",
                plural(recipients)
            )
        }
        QueueOp::Delete { domain, .. } => println!(
            "{recipients} recipient{} in {} removed from {messages} message{}",
            plural(recipients),
            domain.unwrap_or_default(),
            plural(messages)
        ),
        QueueOp::Hold { id } => println!("{id}: on hold"),
        QueueOp::Release { id } => println!("{id}: released"),
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h", secs / 86400, (secs % 86400) / 3600),
    }
}

fn print_list(entries: &[bulwark::deliver::ops::Entry], now: u64) {
    let mut size = 0u64;
    let mut held = 0;
    let mut deferred = 0;
    for e in entries {
        size += e.size;
        held += (e.state == "held") as usize;
        deferred += (e.state == "deferred") as usize;
        let next = match e.next_attempt {
            Some(t) => format!(", next in {}", age(t.saturating_sub(now))),
            None => String::new(),
        };
        println!(
            "{}  {:>9}  {:>7}  {}, {} attempt{}{}  <{}>",
            e.id,
            e.size,
            age(now.saturating_sub(e.arrival)),
            e.state,
            e.attempts,
            plural(e.attempts as usize),
            next,
            e.sender
        );
        if !e.last_error.is_empty() {
            println!("    ({})", e.last_error);
        }
        for r in e.recipients.iter().filter(|r| r.status == "pending") {
            println!("    {}", r.address);
        }
    }
    println!(
        "-- {} message{}, {} octets in the queue ({held} held, {deferred} deferred)",
        entries.len(),
        plural(entries.len()),
        size
    );
}

fn print_entry(e: &bulwark::deliver::ops::Entry, now: u64) {
    println!("id:           {}", e.id);
    println!("core:         {}", e.core);
    println!("sender:       <{}>", e.sender);
    println!("size:         {} octets", e.size);
    println!(
        "arrival:      {} ({} ago)",
        bulwark::util::rfc5322_date(e.arrival),
        age(now.saturating_sub(e.arrival))
    );
    println!("state:        {}", e.state);
    println!("attempts:     {}", e.attempts);
    if let Some(t) = e.next_attempt {
        println!(
            "next attempt: {} (in {})",
            bulwark::util::rfc5322_date(t),
            age(t.saturating_sub(now))
        );
    }
    if !e.last_error.is_empty() {
        println!("last error:   {}", e.last_error);
    }
    println!("recipients:");
    for r in &e.recipients {
        print!("  {:<10} {}", r.status, r.address);
        if let Some(reply) = &r.last_reply {
            print!("  ({reply}");
            if let Some(remote) = &r.remote {
                print!(" from {remote}");
            }
            print!(")");
        }
        println!();
    }
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
