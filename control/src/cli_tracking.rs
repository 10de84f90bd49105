//! `bulwark-control tracking …`: searches and timelines through the API, and the
//! tracking store's benchmark.

use clap::Subcommand;
use serde_json::Value;

use crate::tracking::rfc3339;
use crate::{Remote, call, query};

#[derive(Subcommand)]
pub enum TrackingCommand {
    /// Messages and refused connections: newest first.
    Search(Box<SearchArgs>),
    /// A message's details and its whole timeline.
    Show {
        qid: String,
        #[arg(long)]
        json: bool,
    },
    /// What the ingester has done: events, backlog, the newest event.
    Status,
    /// Benchmark of the tracking store: ingestion rate, then search latency over a
    /// generated history (see bench/RESULTS.md).
    Bench(crate::tracking::bench::Args),
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Sender address, or @domain.
    #[arg(long)]
    sender: Option<String>,
    /// Recipient address, or @domain.
    #[arg(long)]
    recipient: Option<String>,
    /// From (2026-12-01, 2026-12-01T10:00:00Z, Unix seconds, or an age: 2h, 7d).
    /// Default: a day before --until.
    #[arg(long)]
    since: Option<String>,
    /// Until (default: now).
    #[arg(long)]
    until: Option<String>,
    /// accepted, blocked or all.
    #[arg(long)]
    traffic: Option<String>,
    /// Client IP address.
    #[arg(long)]
    ip: Option<String>,
    /// Queue id.
    #[arg(long)]
    qid: Option<String>,
    /// Part of the subject (3 characters or more).
    #[arg(long)]
    subject: Option<String>,
    /// clean, spam, phishing, virus, …
    #[arg(long)]
    verdict: Option<String>,
    /// deliver, tag, quarantine, strip, reject, defer.
    #[arg(long)]
    action: Option<String>,
    /// delivered, deferred, bounced, quarantined, …
    #[arg(long)]
    status: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Print the rows as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: TrackingCommand, remote: &Remote) -> anyhow::Result<()> {
    match command {
        TrackingCommand::Search(a) => {
            let SearchArgs {
                sender,
                recipient,
                since,
                until,
                traffic,
                ip,
                qid,
                subject,
                verdict,
                action,
                status,
                limit,
                json,
            } = *a;
            let mut params = vec![format!("limit={limit}")];
            for (k, v) in [
                ("sender", sender),
                ("recipient", recipient),
                ("since", since),
                ("until", until),
                ("traffic", traffic),
                ("ip", ip),
                ("qid", qid),
                ("subject", subject),
                ("verdict", verdict),
                ("action", action),
                ("status", status),
            ] {
                if let Some(v) = v {
                    params.push(format!("{k}={}", query(&v)));
                }
            }
            let r = call(
                remote,
                "GET",
                &format!("/api/v1/tracking?{}", params.join("&")),
                None,
            )?;
            let rows = r["rows"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            print_rows(&rows);
            Ok(())
        }
        TrackingCommand::Show { qid, json } => {
            let r = call(
                remote,
                "GET",
                &format!("/api/v1/tracking/messages/{}", query(&qid)),
                None,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            print_timeline(&r);
            Ok(())
        }
        TrackingCommand::Status => {
            let r = call(remote, "GET", "/api/v1/tracking/status", None)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        TrackingCommand::Bench(args) => crate::tracking::bench::run(&args),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn recipients(row: &Value) -> String {
    row["recipients"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| format!("{} ({})", s(&r["address"]), s(&r["status"])))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_rows(rows: &[Value]) {
    if rows.is_empty() {
        println!("nothing found");
        return;
    }
    println!(
        "{:<20}  {:<19}  {:<8}  {:<11}  {:<10}  {:<30}  {:<30}  SUBJECT / REPLY",
        "TIME", "QUEUE ID", "TRAFFIC", "STATUS", "VERDICT", "FROM", "TO"
    );
    for r in rows {
        let time = rfc3339(r["first"].as_i64().unwrap_or(0));
        let qid = r["qid"].as_str().unwrap_or("-");
        let from = if s(&r["sender"]).is_empty() {
            format!("[{}]", s(&r["client_ip"]))
        } else {
            s(&r["sender"]).to_string()
        };
        let text = if s(&r["subject"]).is_empty() {
            s(&r["reply"])
        } else {
            s(&r["subject"])
        };
        println!(
            "{time:<20}  {qid:<19}  {:<8}  {:<11}  {:<10}  {:<30}  {:<30}  {}",
            s(&r["traffic"]),
            s(&r["status"]),
            s(&r["verdict"]),
            from,
            recipients(r),
            text
        );
    }
}

fn print_timeline(t: &Value) {
    let m = &t["message"];
    let first = m["first"].as_i64().unwrap_or(0);
    let last = m["last"].as_i64().unwrap_or(0);
    println!("queue id:   {}", m["qid"].as_str().unwrap_or("-"));
    println!("from:       {}", s(&m["sender"]));
    println!("to:         {}", recipients(m));
    println!("subject:    {}", s(&m["subject"]));
    println!(
        "client:     {} (HELO {}){}",
        s(&m["client_ip"]),
        s(&m["helo"]),
        if m["tls"].as_bool() == Some(true) {
            ", TLS"
        } else {
            ""
        }
    );
    if let Some(size) = m["size"].as_i64() {
        println!("size:       {size} octets");
    }
    println!(
        "verdict:    {}{} -> {}",
        s(&m["verdict"]),
        m["score"]
            .as_f64()
            .map(|x| format!(" (score {x:.2})"))
            .unwrap_or_default(),
        s(&m["action"])
    );
    let rules: Vec<&str> = m["rules"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !rules.is_empty() {
        println!("rules:      {}", rules.join(" "));
    }
    println!("status:     {}", s(&m["status"]));
    println!(
        "first/last: {} / {} ({:.1} s)",
        rfc3339(first),
        rfc3339(last),
        (last - first) as f64 / 1000.0
    );
    println!();
    for e in t["events"].as_array().cloned().unwrap_or_default() {
        let at = e["t"].as_i64().unwrap_or(0);
        let mut detail = Vec::new();
        for k in ["rcpt", "dest", "reply", "by", "queued_as", "stage"] {
            if let Some(v) = e[k].as_str().filter(|v| !v.is_empty()) {
                detail.push(format!("{k}={v}"));
            }
        }
        if let Some(rc) = e["rcpts"].as_array() {
            let list: Vec<&str> = rc.iter().filter_map(Value::as_str).collect();
            detail.push(format!("rcpts={}", list.join(",")));
        }
        if let Some(d) = e["delay"].as_i64() {
            detail.push(format!("delay={d}s"));
        }
        println!(
            "{}  +{:>7.3}s  {:<11}  {}",
            rfc3339(at),
            (at - first) as f64 / 1000.0,
            s(&e["ev"]),
            detail.join("  ")
        );
    }
}
