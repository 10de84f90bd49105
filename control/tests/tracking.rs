//! Message tracking end to end: the engine writes events, the control service ingests
//! them, the API and `bulwark-control tracking` find them. Real processes, real sockets,
//! real clients (Python's smtplib, bulwark-load).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn load_bin() -> PathBuf {
    let load = Path::new(CONTROL).with_file_name("bulwark-load");
    assert!(
        load.exists(),
        "build the workspace first: {} is missing",
        load.display()
    );
    load
}

/// A sink reporting to `report`.
fn sink(report: &Path) -> (Proc, u16) {
    load_sink(&["--report".as_ref(), report.as_os_str()])
}

fn sink_received(report: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null);
    v["received"].as_u64().unwrap_or(0)
}

/// Sends one message with Python's smtplib.
fn smtplib_send(smtp: u16, from: &str, to: &[&str], subject: &str) -> Result<(), String> {
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
port, sender, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rcpts = sys.argv[4:]
m = EmailMessage()
m["From"] = sender
m["To"] = ", ".join(rcpts)
m["Subject"] = subject
m.set_content("Hello, this is a tracked message.\n")
s = smtplib.SMTP("127.0.0.1", port, timeout=20)
s.ehlo("client.test")
try:
    s.send_message(m, from_addr=sender, to_addrs=rcpts)
except smtplib.SMTPResponseException as e:
    print("ERR", e.smtp_code, e.smtp_error.decode(errors="replace"))
except smtplib.SMTPRecipientsRefused as e:
    print("ERR", e.recipients)
s.quit()
"#;
    let out = Command::new("python3")
        .args(["-c", script, &smtp.to_string(), from, subject])
        .args(to)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() || text.starts_with("ERR") {
        return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

fn search(c: &Control, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["tracking", "search", "--json"];
    all.extend_from_slice(args);
    let (ok, out) = cli(c, &all);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Retries `f` until it gives `Some`, for up to `secs` seconds.
fn within<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A message sent with smtplib shows up in `tracking search` with its verdict and its
/// delivery within 5 seconds; its timeline has its accepted and delivered events; a
/// recipient refused at RCPT is blocked traffic; bad searches name the field at fault.
#[test]
fn a_message_sent_through_the_engine_is_tracked_with_its_outcome() {
    let dir = tmp("tracked");
    let report = dir.join("sink.json");
    let (_sink, sink_port) = sink(&report);
    let (c, _engine, smtp, _) = control_and_engine(&dir);
    add_domain_routed_to(&c, "example.test", sink_port);
    assert!(
        eventually("250", || rcpt_from(
            smtp,
            "127.0.0.1",
            "a@b.test",
            "user@example.test"
        ))
        .starts_with("250")
    );
    let sent = Instant::now();
    smtplib_send(
        smtp,
        "alice@sender.test",
        &["bob@example.test", "carol@example.test"],
        "Quarterly report <b>draft</b>",
    )
    .unwrap();
    let row = within(5, || {
        let rows = search(&c, &["--sender", "alice@sender.test"]);
        let row = rows.as_array()?.first()?.clone();
        (row["status"] == "delivered").then_some(row)
    })
    .unwrap_or_else(|| {
        panic!(
            "not tracked as delivered within 5 s: {}",
            search(&c, &["--sender", "alice@sender.test"])
        )
    });
    eprintln!(
        "tracked as delivered {:?} after the message was sent",
        sent.elapsed()
    );
    assert_eq!(row["traffic"], "accepted", "{row}");
    assert_eq!(row["subject"], "Quarterly report <b>draft</b>", "{row}");
    assert_eq!(row["verdict"], "clean", "{row}");
    assert_eq!(row["action"], "deliver", "{row}");
    assert_eq!(row["client_ip"], "127.0.0.1", "{row}");
    assert_eq!(row["helo"], "client.test", "{row}");
    let rcpts: Vec<(String, String)> = row["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rcpts,
        vec![
            ("bob@example.test".into(), "delivered".into()),
            ("carol@example.test".into(), "delivered".into())
        ]
    );
    let qid = row["qid"].as_str().unwrap().to_string();

    // The same message by recipient, by recipient domain, by subject text, by queue id,
    // and in the window given with --since/--until.
    for args in [
        vec!["--recipient", "carol@example.test"],
        vec!["--recipient", "@EXAMPLE.test"],
        vec!["--subject", "report <b>"],
        vec!["--qid", qid.as_str()],
        vec!["--since", "10m", "--until", "now", "--traffic", "accepted"],
    ] {
        let rows = search(&c, &args);
        assert!(
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["qid"] == qid.as_str()),
            "{args:?}: {rows}"
        );
    }
    // Not found where it is not.
    for args in [
        vec!["--recipient", "dave@example.test"],
        vec!["--subject", "invoice"],
        vec!["--traffic", "blocked", "--sender", "alice@sender.test"],
        vec!["--since", "3d", "--until", "2d"],
    ] {
        let rows = search(&c, &args);
        assert!(
            !rows
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["qid"] == qid.as_str()),
            "{args:?}: {rows}"
        );
    }

    // Its timeline.
    let (ok, out) = cli(&c, &["tracking", "show", &qid]);
    assert!(ok, "{out}");
    for want in [
        "accepted",
        "delivered",
        "rcpt=bob@example.test",
        "dest=127.0.0.1",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let (status, t) = http(
        &c.url,
        "GET",
        &format!("/api/v1/tracking/messages/{qid}"),
        Some(&c.token),
        None,
    );
    assert_eq!(status, 200, "{t}");
    let kinds: Vec<&str> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ev"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["accepted", "delivered", "delivered"], "{t}");

    // A recipient refused at RCPT: blocked traffic, with its reply.
    let reply = rcpt_from(smtp, "127.0.0.1", "mallory@sender.test", "x@elsewhere.test");
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    let row = within(5, || {
        let rows = search(
            &c,
            &["--traffic", "blocked", "--sender", "mallory@sender.test"],
        );
        rows.as_array()?.first().cloned()
    })
    .expect("the refused recipient was not tracked");
    assert_eq!(row["kind"], "rcpt_refused", "{row}");
    assert_eq!(row["verdict"], "relay_denied", "{row}");
    assert_eq!(row["recipients"][0]["address"], "x@elsewhere.test", "{row}");
    assert!(
        row["reply"].as_str().unwrap().starts_with("550 5.7.1"),
        "{row}"
    );

    // Bad searches: a 400 naming the field, and the CLI says so.
    let t = Some(c.token.as_str());
    for (query, field) in [
        ("since=yesterday", "since"),
        ("since=2026-12-01&until=2020-01-01", "since"),
        ("since=2000-01-01&until=2026-01-01", "since"),
        ("until=2026-02-30", "until"),
        ("subject=ab", "subject"),
        ("limit=100000", "limit"),
        ("limit=-1", "limit"),
        ("ip=999.1.1.1", "ip"),
        ("qid=..%2Fetc", "qid"),
        ("verdict=bogus", "verdict"),
        ("traffic=sideways", "traffic"),
        ("sender=a%20b", "sender"),
        ("before=xyz", "before"),
        ("colour=red", "query"),
    ] {
        let (status, body) = http(&c.url, "GET", &format!("/api/v1/tracking?{query}"), t, None);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    let long = "x".repeat(5000);
    let (status, body) = http(
        &c.url,
        "GET",
        &format!("/api/v1/tracking?subject={long}"),
        t,
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "subject", "{body}");
    let (status, _) = http(&c.url, "GET", "/api/v1/tracking/messages/zz", t, None);
    assert_eq!(status, 400);
    let (status, _) = http(
        &c.url,
        "GET",
        "/api/v1/tracking/messages/0000000000000000000",
        t,
        None,
    );
    assert_eq!(status, 404);
    let (status, _) = http(&c.url, "GET", "/api/v1/tracking", None, None);
    assert_eq!(status, 401);
    let (ok, out) = cli(&c, &["tracking", "search", "--since", "last tuesday"]);
    assert!(!ok && out.contains("since"), "{out}");
    let _ = sink_received(&report);
}

/// Counts what the store holds of messages that went through: accepted messages by
/// queue id (each once), and their recipients delivered.
fn tracked(c: &Control) -> (usize, usize, usize) {
    let mut qids = std::collections::HashSet::new();
    let (mut rows_seen, mut delivered) = (0, 0);
    let mut before: Option<String> = None;
    loop {
        let mut path = "/api/v1/tracking?since=1h&traffic=accepted&limit=1000".to_string();
        if let Some(b) = &before {
            path.push_str(&format!("&before={b}"));
        }
        let (status, body) = http(&c.url, "GET", &path, Some(&c.token), None);
        assert_eq!(status, 200, "{body}");
        let rows = body["rows"].as_array().unwrap();
        for r in rows {
            rows_seen += 1;
            qids.insert(r["qid"].as_str().unwrap().to_string());
            delivered += r["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["status"] == "delivered")
                .count();
        }
        match body["next"].as_str() {
            Some(n) => before = Some(n.to_string()),
            None => break,
        }
    }
    (rows_seen, qids.len(), delivered)
}

/// Control is killed (SIGKILL) twice while mail flows and started again: every message
/// the load generator had accepted is tracked once, with its delivery, and the
/// counters agree (no event lost, none applied twice).
#[test]
fn no_tracking_event_is_lost_or_duplicated_when_control_is_killed_under_load() {
    let dir = tmp("killed");
    let report = dir.join("sink.json");
    let (_sink, sink_port) = sink(&report);
    let (mut c, _engine, smtp, _) = control_and_engine(&dir);
    add_domain_routed_to(&c, "example.test", sink_port);
    assert!(
        eventually("250", || rcpt_from(
            smtp,
            "127.0.0.1",
            "a@b.test",
            "user@example.test"
        ))
        .starts_with("250")
    );
    let sender = Command::new(load_bin())
        .args([
            "send",
            "--target",
            &format!("127.0.0.1:{smtp}"),
            "--connections",
            "10",
            "--threads",
            "1",
            "--duration",
            "8",
            "--size",
            "2048",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.crash_and_restart(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(1500));
    c.crash_and_restart(Duration::from_millis(500));
    let out = sender.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let accepted = r["accepted"].as_u64().unwrap() as usize;
    assert!(accepted > 200, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    // Every message arrives, then every event is ingested.
    let arrived = within(30, || {
        (sink_received(&report) as usize >= accepted).then_some(())
    });
    assert!(
        arrived.is_some(),
        "the sink got {} of {accepted}",
        sink_received(&report)
    );
    let counts = within(30, || {
        let t = tracked(&c);
        (t.2 >= accepted).then_some(t)
    })
    .unwrap_or_else(|| tracked(&c));
    let (_, st) = http(
        &c.url,
        "GET",
        "/api/v1/tracking/status",
        Some(&c.token),
        None,
    );
    eprintln!(
        "{accepted} messages; tracked (rows, queue ids, delivered) {counts:?}; ingester since the last restart {st}"
    );
    // The probe recipient check above was a transaction without a message: not counted.
    assert_eq!(
        counts,
        (accepted, accepted, accepted),
        "rows, queue ids, delivered"
    );
    let (status, v) = http(
        &c.url,
        "GET",
        "/api/v1/tracking/volume?since=1h",
        Some(&c.token),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let sum = |k: &str| -> i64 {
        v["hours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[k].as_i64().unwrap_or(0))
            .sum()
    };
    assert_eq!(sum("accepted"), accepted as i64, "{v}");
    assert_eq!(sum("delivered"), accepted as i64, "{v}");
}

/// Writes `n` events of one engine core in segments of `per_segment` lines: each
/// message's accepted and delivered events.
fn write_backlog(dir: &Path, n: usize, per_segment: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut seg = 1;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(dir.join(format!("core-0-{seg:010}.events"))).unwrap(),
    );
    let mut in_seg = 0;
    for i in 0..n / 2 {
        let t = now - 3_000_000 + i as i64;
        let qid = format!("{:013X}000{:03X}", t * 1000 + (i % 1000) as i64, i & 0xFFF);
        writeln!(
            f,
            r#"{{"t":{t},"core":0,"ev":"accepted","qid":"{qid}","ip":"192.0.2.{}","helo":"h","tls":false,"from":"s{}@backlog.test","rcpts":["r{}@example.test"],"size":1000,"subject":"backlog {i}","verdict":"clean","score":0.0,"action":"deliver"}}"#,
            i % 250,
            i % 1000,
            i % 5000
        )
        .unwrap();
        writeln!(
            f,
            r#"{{"t":{},"core":0,"ev":"delivered","qid":"{qid}","rcpt":"r{}@example.test","dest":"mx[192.0.2.1]:25","delay":1,"attempt":1}}"#,
            t + 5,
            i % 5000
        )
        .unwrap();
        in_seg += 2;
        if in_seg >= per_segment {
            f.flush().unwrap();
            seg += 1;
            in_seg = 0;
            f = std::io::BufWriter::new(
                std::fs::File::create(dir.join(format!("core-0-{seg:010}.events"))).unwrap(),
            );
        }
    }
    f.flush().unwrap();
}

/// A million events waiting after an outage: control ingests them in batches while
/// its API keeps answering searches, ends with every message tracked once, and removes
/// the segments it has read (all but the newest, which its core may still write).
#[test]
fn a_backlog_of_a_million_events_is_ingested_while_searches_answer() {
    let dir = tmp("backlog");
    let events = dir.join("events");
    write_backlog(&events, 1_000_000, 100_000);
    let snapshot = dir.join("shm/policy");
    let c = start_control_with(
        &dir,
        &snapshot,
        &[],
        &format!("tracking_dirs = [\"{}\"]", events.display()),
    );
    let t = Some(c.token.as_str());
    let started = Instant::now();
    let mut answered_during = 0;
    loop {
        let (status, st) = http(&c.url, "GET", "/api/v1/tracking/status", t, None);
        assert_eq!(status, 200, "{st}");
        let done = st["events"].as_u64().unwrap_or(0) >= 1_000_000;
        if done {
            break;
        }
        // A search while the backlog is being read is answered (and sees what is in).
        let asked = Instant::now();
        let (status, body) = http(
            &c.url,
            "GET",
            "/api/v1/tracking?since=2h&sender=s7@backlog.test&limit=5",
            t,
            None,
        );
        assert_eq!(status, 200, "{body}");
        if st["backlog_bytes"].as_u64().unwrap_or(0) > 0 {
            answered_during += 1;
            eprintln!(
                "search during ingestion: {:?} ({} events in)",
                asked.elapsed(),
                st["events"]
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "ingestion stalled: {st}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("1,000,000 events ingested in {:?}", started.elapsed());
    assert!(
        answered_during > 0,
        "ingestion ended before any search was made"
    );
    let (status, st) = http(&c.url, "GET", "/api/v1/tracking/status", t, None);
    assert_eq!(status, 200);
    assert_eq!(st["events"], 1_000_000, "{st}");
    assert_eq!(st["duplicates"], 0, "{st}");
    assert_eq!(st["damaged_lines"], 0, "{st}");
    let (_, v) = http(&c.url, "GET", "/api/v1/tracking/volume?since=2h", t, None);
    let sum = |k: &str| -> i64 {
        v["hours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[k].as_i64().unwrap_or(0))
            .sum()
    };
    assert_eq!(sum("accepted"), 500_000, "{v}");
    assert_eq!(sum("delivered"), 500_000, "{v}");
    // Read segments are removed, all but each core's newest.
    let left = || -> Vec<std::ffi::OsString> {
        std::fs::read_dir(&events)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect()
    };
    within(5, || (left().len() == 1).then_some(()));
    assert_eq!(left().len(), 1, "{:?}", left());
}
