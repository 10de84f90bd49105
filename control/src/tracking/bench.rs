//! `bulwark-control tracking bench`: the tracking store's benchmark.
//!
//! 1. Ingestion: engine-format segment files (two cores, the mix of a gateway's day:
//!    refused connections and recipients, accepted messages with one to three
//!    recipients, deliveries, deferrals, quarantines) read by the real ingester into a
//!    fresh store; events per second.
//! 2. History: `--days` days of `--per-day` messages generated into the store through the
//!    same ingestion code (its rate reported too).
//! 3. Searches over the whole history, each run `--repeat` times: by sender, sender
//!    domain, recipient, recipient domain, client IP, queue id, subject text, verdict,
//!    the blocked-traffic tab, the first page of everything, and a message's timeline;
//!    median, 95th percentile and worst, in milliseconds.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::ingest::{Ingester, Stats};
use super::sqlite::{SqliteSearch, SqliteTracking, now_ms};
use super::{DAY_MS, Event, Ingested, Query, TrackingIngest, TrackingSearch, Traffic};

#[derive(clap::Args)]
pub struct Args {
    /// Where to build the store (emptied first); default: a directory under /tmp.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Events written as segment files and ingested for the ingestion rate.
    #[arg(long, default_value_t = 1_000_000)]
    ingest_events: usize,
    /// Days of history to generate.
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Messages per day of history (each has about four events).
    #[arg(long, default_value_t = 200_000)]
    per_day: usize,
    /// Runs of each search.
    #[arg(long, default_value_t = 20)]
    repeat: usize,
    /// Keep the store afterwards.
    #[arg(long)]
    keep: bool,
}

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "invoice",
    "meeting",
    "report",
    "quarterly",
    "update",
    "project",
    "shipping",
    "order",
    "payment",
    "reminder",
    "welcome",
    "newsletter",
    "security",
    "account",
    "password",
    "review",
    "schedule",
    "contract",
    "delivery",
    "offer",
    "summary",
    "agenda",
    "budget",
    "travel",
    "receipt",
    "statement",
    "feedback",
    "launch",
    "training",
    "holiday",
];

/// One synthetic message's events, as engine lines (at `t`, core `core`).
fn message_lines(rng: &mut Rng, t: i64, core: u64, seq: u64, out: &mut Vec<String>) {
    let micros = t * 1000 + (seq % 1000) as i64;
    let qid = format!("{micros:013X}{core:03X}{:03X}", seq & 0xFFF);
    let ip = format!("198.51.{}.{}", rng.below(200), rng.below(250) + 1);
    let roll = rng.below(100);
    let sender = format!("user{}@sender{}.example", rng.below(5000), rng.below(400));
    if roll < 20 {
        // Blocked before the message: a refused connection or recipient.
        if roll < 10 {
            out.push(format!(
                r#"{{"t":{t},"core":{core},"ev":"refused","ip":"{ip}","stage":"dnsbl","reply":"554 5.7.1 Service unavailable; client [{ip}] blocked using zen"}}"#
            ));
        } else {
            out.push(format!(
                r#"{{"t":{t},"core":{core},"ev":"rcpt_refused","ip":"{ip}","helo":"mx.sender.example","from":"{sender}","rcpt":"nobody{}@customer{}.example","reply":"550 5.1.1 Recipient address rejected: user unknown"}}"#,
                rng.below(100_000),
                rng.below(50)
            ));
        }
        return;
    }
    let n = 1 + rng.below(3) as usize;
    let rcpts: Vec<String> = (0..n)
        .map(|_| format!("user{}@customer{}.example", rng.below(4000), rng.below(50)))
        .collect();
    let rcpt_json = rcpts
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(",");
    let subject = format!(
        "{} {} {}",
        WORDS[rng.below(WORDS.len() as u64) as usize],
        WORDS[rng.below(WORDS.len() as u64) as usize],
        rng.below(100_000)
    );
    let (verdict, score, action) = match rng.below(100) {
        0..=69 => ("clean", 0.4, "deliver"),
        70..=84 => ("spam", 7.5, "tag"),
        85..=94 => ("spam", 12.0, "quarantine"),
        95..=97 => ("phishing", 15.0, "reject"),
        _ => ("virus", 100.0, "reject"),
    };
    let size = 2000 + rng.below(200_000);
    if action == "reject" {
        out.push(format!(
            r#"{{"t":{t},"core":{core},"ev":"rejected","qid":"{qid}","ip":"{ip}","helo":"mx.sender.example","tls":true,"from":"{sender}","rcpts":[{rcpt_json}],"size":{size},"subject":"{subject}","verdict":"{verdict}","score":{score},"rules":["BULWARK_RULE_A","BULWARK_RULE_B"],"action":"reject","reply":"550 5.7.1 Message refused; reference {qid}"}}"#
        ));
        return;
    }
    out.push(format!(
        r#"{{"t":{t},"core":{core},"ev":"accepted","qid":"{qid}","ip":"{ip}","helo":"mx.sender.example","tls":true,"from":"{sender}","rcpts":[{rcpt_json}],"size":{size},"subject":"{subject}","verdict":"{verdict}","score":{score},"rules":["BULWARK_RULE_A"],"action":"{action}"}}"#
    ));
    if action == "quarantine" {
        out.push(format!(
            r#"{{"t":{t},"core":{core},"ev":"quarantined","qid":"{qid}","rcpts":[{rcpt_json}],"verdict":"{verdict}"}}"#
        ));
        return;
    }
    for r in &rcpts {
        if rng.below(10) == 0 {
            out.push(format!(
                r#"{{"t":{},"core":{core},"ev":"deferred","qid":"{qid}","rcpt":"{r}","dest":"mail.customer.example[192.0.2.25]:25","reply":"451 4.3.0 try again later","delay":1,"attempt":1}}"#,
                t + 1000
            ));
        }
        out.push(format!(
            r#"{{"t":{},"core":{core},"ev":"delivered","qid":"{qid}","rcpt":"{r}","dest":"mail.customer.example[192.0.2.25]:25","delay":2,"attempt":2}}"#,
            t + 2000
        ));
    }
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.95), at(1.0))
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("bulwark-tracking-bench"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let now = now_ms();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // 1. Ingestion from segment files.
    let segs = dir.join("segments");
    let store_dir = dir.join("store");
    std::fs::create_dir_all(&segs)?;
    let mut written = 0usize;
    {
        let mut files = [
            std::io::BufWriter::new(std::fs::File::create(
                segs.join("core-0-0000000001.events"),
            )?),
            std::io::BufWriter::new(std::fs::File::create(
                segs.join("core-1-0000000001.events"),
            )?),
        ];
        let mut lines = Vec::new();
        let mut seq = 0u64;
        let start = now - 3_600_000;
        while written < a.ingest_events {
            lines.clear();
            let core = seq % 2;
            let t = start + (seq as i64 * 3_600_000) / a.ingest_events.max(1) as i64;
            message_lines(&mut rng, t, core, seq, &mut lines);
            for l in &lines {
                writeln!(files[core as usize], "{l}")?;
            }
            written += lines.len();
            seq += 1;
        }
        for f in &mut files {
            f.flush()?;
        }
    }
    let mut store = SqliteTracking::open(&store_dir, a.days + 1)?;
    let stats = Arc::new(Stats::default());
    let mut ingester = Ingester::open(
        vec![segs.clone()],
        &dir.join("cursors.sqlite"),
        stats.clone(),
    )?;
    let t0 = Instant::now();
    let no_stop = std::sync::atomic::AtomicBool::new(false);
    while ingester.drain(&mut store, &no_stop)? > 0 {}
    let took = t0.elapsed().as_secs_f64();
    let applied = stats.view().events;
    println!(
        "ingest: {applied} events from segment files in {took:.2} s = {:.0} events/s ({} batches)",
        applied as f64 / took,
        stats.view().batches
    );

    // 2. History.
    let t0 = Instant::now();
    let mut events = 0usize;
    let mut batch: Vec<Ingested> = Vec::with_capacity(super::ingest::BATCH + 16);
    let mut lines = Vec::new();
    let mut key: i64 = 1 << 62;
    let mut sample_qid = String::new();
    // A sender of the middle day, so that the address search finds something.
    let mut sample_sender: Option<String> = None;
    for d in (0..a.days).rev() {
        let day_start = (now / DAY_MS - d) * DAY_MS;
        for i in 0..a.per_day {
            let t = day_start + (i as i64 * DAY_MS) / a.per_day as i64;
            if t > now {
                break;
            }
            lines.clear();
            message_lines(&mut rng, t, (i % 2) as u64, i as u64, &mut lines);
            for l in &lines {
                let Ok(event) = serde_json::from_str::<Event>(l) else {
                    continue;
                };
                if d == a.days / 2
                    && i >= a.per_day / 2
                    && sample_qid.is_empty()
                    && !event.qid.is_empty()
                {
                    sample_qid = event.qid.clone();
                }
                if d == a.days / 2
                    && i >= a.per_day / 2
                    && sample_sender.is_none()
                    && event.ev == "accepted"
                {
                    sample_sender = event.from.clone();
                }
                key += 1;
                batch.push(Ingested {
                    key,
                    event,
                    line: l.clone(),
                });
            }
            if batch.len() >= super::ingest::BATCH {
                events += store.ingest(&batch)?;
                batch.clear();
            }
        }
        eprint!(".");
    }
    events += store.ingest(&batch)?;
    eprintln!();
    let took = t0.elapsed().as_secs_f64();
    let size: u64 = std::fs::read_dir(&store_dir)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "history: {} days x {} messages = {events} events in {took:.0} s = {:.0} events/s; store {:.1} GiB",
        a.days,
        a.per_day,
        events as f64 / took,
        size as f64 / (1u64 << 30) as f64
    );
    drop(store);

    // 3. Searches over the whole history.
    let search = SqliteSearch::new(&store_dir);
    let all = Query {
        since: now - a.days * DAY_MS,
        until: now,
        limit: 100,
        ..Default::default()
    };
    let cases: Vec<(&str, Query)> = vec![
        (
            "sender (address)",
            Query {
                sender: Some(
                    sample_sender
                        .clone()
                        .unwrap_or_else(|| "user1234@sender42.example".into()),
                ),
                ..all.clone()
            },
        ),
        (
            "sender (@domain)",
            Query {
                sender: Some("@sender42.example".into()),
                ..all.clone()
            },
        ),
        (
            "recipient (address)",
            Query {
                recipient: Some("user77@customer7.example".into()),
                ..all.clone()
            },
        ),
        (
            "recipient (@domain)",
            Query {
                recipient: Some("@customer7.example".into()),
                ..all.clone()
            },
        ),
        (
            "client ip",
            Query {
                ip: Some("198.51.100.7".into()),
                ..all.clone()
            },
        ),
        (
            "queue id",
            Query {
                qid: Some(sample_qid.clone()),
                ..all.clone()
            },
        ),
        (
            "subject text",
            Query {
                subject: Some("invoice 4242".into()),
                ..all.clone()
            },
        ),
        (
            "verdict spam, quarantined",
            Query {
                verdict: Some("spam".into()),
                status: Some("quarantined".into()),
                ..all.clone()
            },
        ),
        (
            "blocked traffic, last day",
            Query {
                traffic: Some(Traffic::Blocked),
                since: now - DAY_MS,
                ..all.clone()
            },
        ),
        ("everything, first page", all.clone()),
        (
            "sender + recipient domain",
            Query {
                sender: Some("@sender42.example".into()),
                recipient: Some("@customer7.example".into()),
                ..all.clone()
            },
        ),
        (
            "limited to 2 domains",
            Query {
                domains: Some(vec!["customer7.example".into(), "customer8.example".into()]),
                recipient: Some("@customer7.example".into()),
                ..all.clone()
            },
        ),
    ];
    println!(
        "searches over {} days ({} runs each; ms): median / p95 / worst, rows",
        a.days, a.repeat
    );
    for (name, q) in &cases {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..a.repeat {
            let t = Instant::now();
            rows = search.search(q)?.len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let (p50, p95, max) = percentiles(times);
        println!("  {name:<28} {p50:>8.1} {p95:>8.1} {max:>8.1}  {rows}");
    }
    let mut times = Vec::new();
    for _ in 0..a.repeat {
        let t = Instant::now();
        let found = search.timeline(&sample_qid)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            found.is_some(),
            "the sample message {sample_qid} has no timeline"
        );
    }
    let (p50, p95, max) = percentiles(times);
    println!(
        "  {:<28} {p50:>8.1} {p95:>8.1} {max:>8.1}  1",
        "timeline (queue id)"
    );
    let mut times = Vec::new();
    for _ in 0..a.repeat.min(5) {
        let t = Instant::now();
        search.volume(now - a.days * DAY_MS, now, None)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p95, max) = percentiles(times);
    println!(
        "  {:<28} {p50:>8.1} {p95:>8.1} {max:>8.1}",
        "hourly volume, all days"
    );
    if !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
