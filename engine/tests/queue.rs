//! The queue end to end: retries, bounces, expiry, MX routing, and crash safety.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn addr(ip: &str) -> SocketAddr {
    format!("{ip}:{}", free_port()).parse().unwrap()
}

/// Sends `n` messages to one recipient; returns the queue ids given.
fn send_many(engine: &Engine, from: &str, to: &str, n: usize, tag: &str) -> Vec<String> {
    send_messages(engine, from, &[to], n, tag)
}

#[test]
fn route_down_then_up_is_retried() {
    let route = addr("127.0.0.1");
    let engine = Engine::start(EngineConfig {
        extra: domain("example.test", route),
        ..Default::default()
    });
    send_many(&engine, "s@sender.test", "u@example.test", 3, "retry");
    assert!(wait_until(Duration::from_secs(5), || engine
        .metric("bulwark_deliveries_total{result=\"deferred\"}")
        >= 3.0));
    assert_eq!(engine.metric("bulwark_queue_messages"), 3.0);
    let sink = Sink::start(route);
    let msgs = sink.wait_for(3, Duration::from_secs(15));
    assert_eq!(msgs.len(), 3);
    assert!(wait_until(Duration::from_secs(5), || engine
        .metric("bulwark_queue_messages")
        == 0.0));
    assert_eq!(engine.metric("bulwark_dsns_total"), 0.0);
}

#[test]
fn permanent_failure_bounces_to_the_sender() {
    let sink = Sink::start(addr("127.0.0.1"));
    let engine = Engine::start(EngineConfig {
        extra: domain("example.test", sink.addr),
        ..Default::default()
    });
    let out = python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port})
r = s.sendmail("owner@example.test", ["good@example.test", "reject-me@example.test"],
               "Subject: partly bad\r\nMessage-ID: <orig@client.test>\r\n\r\nsecret\r\n")
assert r == {{}}, r
s.quit()
print("ok")
"#,
        port = engine.smtp.port()
    ));
    assert_eq!(out.trim(), "ok");
    let msgs = sink.wait_for(2, Duration::from_secs(10));
    assert_eq!(msgs.len(), 2, "{msgs:#?}");
    let original = msgs
        .iter()
        .find(|m| m.mail_from == "owner@example.test")
        .expect("original");
    assert_eq!(original.rcpts, ["good@example.test"]);
    let dsn = msgs
        .iter()
        .find(|m| m.mail_from.is_empty())
        .expect("a DSN from the null sender");
    assert_eq!(dsn.rcpts, ["owner@example.test"]);
    let c = &dsn.content;
    assert!(
        c.contains("Content-Type: multipart/report; report-type=delivery-status"),
        "{c}"
    );
    assert!(
        c.contains(
            "Final-Recipient: rfc822; reject-me@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{c}"
    );
    assert!(c.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{c}");
    assert!(
        c.contains("Message-ID: <orig@client.test>"),
        "original headers returned: {c}"
    );
    assert!(!c.contains("secret"), "the body must not be returned");
    assert!(
        !c.contains("good@example.test"),
        "only failed recipients are reported"
    );
    assert_eq!(engine.metric("bulwark_dsns_total"), 1.0);
    assert_eq!(
        engine.metric("bulwark_deliveries_total{result=\"failed\"}"),
        1.0
    );
}

#[test]
fn failure_from_the_null_sender_is_not_bounced() {
    let sink = Sink::start(addr("127.0.0.1"));
    let engine = Engine::start(EngineConfig {
        extra: domain("example.test", sink.addr),
        ..Default::default()
    });
    send_many(&engine, "", "reject-x@example.test", 1, "nullsender");
    assert!(wait_until(Duration::from_secs(10), || engine
        .metric("bulwark_deliveries_total{result=\"failed\"}")
        == 1.0));
    assert!(wait_until(Duration::from_secs(5), || engine
        .metric("bulwark_queue_messages")
        == 0.0));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(engine.metric("bulwark_dsns_total"), 0.0);
    assert!(sink.messages().is_empty());
}

#[test]
fn expired_message_bounces_after_its_lifetime() {
    let dead = addr("127.0.0.1");
    let sink = Sink::start(addr("127.0.0.1"));
    let engine = Engine::start(EngineConfig {
        lifetime: "3s",
        extra: format!(
            "{}{}",
            domain("example.test", dead),
            domain("bounce.test", sink.addr)
        ),
        ..Default::default()
    });
    send_many(&engine, "s@bounce.test", "u@example.test", 1, "expire");
    let msgs = sink.wait_for(1, Duration::from_secs(15));
    assert_eq!(msgs.len(), 1);
    let c = &msgs[0].content;
    assert_eq!(msgs[0].rcpts, ["s@bounce.test"]);
    assert!(
        c.contains(
            "Final-Recipient: rfc822; u@example.test\r\nAction: failed\r\nStatus: 4.4.7\r\n"
        ),
        "{c}"
    );
    assert!(c.contains("delivery time expired"), "{c}");
    assert!(wait_until(Duration::from_secs(5), || engine
        .metric("bulwark_queue_messages")
        == 0.0));
}

/// A DSN for a sender outside the managed domains goes to the sender domain's MX host,
/// found through the configured DNS server.
#[test]
fn bounce_to_a_foreign_sender_follows_its_mx() {
    let dns_port = free_port();
    let dns = Dnsmasq::start(
        dns_port,
        &[
            "--mx-host=sender.test,mx1.sender.test,10",
            "--host-record=mx1.sender.test,127.0.0.7",
        ],
    );
    let mx_sink = Sink::start("127.0.0.7:25".parse().unwrap());
    let route_sink = Sink::start(addr("127.0.0.1"));
    let engine = Engine::start(EngineConfig {
        extra: format!(
            "{}[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n",
            domain("example.test", route_sink.addr)
        ),
        ..Default::default()
    });
    send_many(
        &engine,
        "alice@sender.test",
        "reject-1@example.test",
        1,
        "mxbounce",
    );
    let msgs = mx_sink.wait_for(1, Duration::from_secs(15));
    assert_eq!(msgs.len(), 1, "engine log:\n{}", engine.log_text());
    assert_eq!(msgs[0].rcpts, ["alice@sender.test"]);
    assert!(msgs[0].mail_from.is_empty());
    assert!(msgs[0].content.contains("Status: 5.1.1"));
    drop(dns);
}

/// MX hosts are tried in preference order: the first one is down, so the bounce goes to
/// the second. A domain without MX records gets its mail at its own address (RFC 5321
/// §5.1, the implicit MX).
#[test]
fn mx_fallback_and_implicit_mx() {
    let dns_port = free_port();
    let dns = Dnsmasq::start(
        dns_port,
        &[
            "--mx-host=fallback.test,mx1.fallback.test,10",
            "--mx-host=fallback.test,mx2.fallback.test,20",
            "--host-record=mx1.fallback.test,127.0.0.8",
            "--host-record=mx2.fallback.test,127.0.0.9",
            "--host-record=implicit.test,127.0.0.10",
            // Answer for the zone itself: no MX (NOERROR, no data), as a real server does.
            "--local=/implicit.test/",
        ],
    );
    let second = Sink::start("127.0.0.9:25".parse().unwrap());
    let implicit = Sink::start("127.0.0.10:25".parse().unwrap());
    let route_sink = Sink::start(addr("127.0.0.1"));
    let engine = Engine::start(EngineConfig {
        extra: format!(
            "{}[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n",
            domain("example.test", route_sink.addr)
        ),
        ..Default::default()
    });
    send_many(
        &engine,
        "bob@fallback.test",
        "reject-1@example.test",
        1,
        "fallback",
    );
    send_many(
        &engine,
        "carol@implicit.test",
        "reject-2@example.test",
        1,
        "implicit",
    );
    let got = second.wait_for(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1, "{}", engine.log_text());
    assert_eq!(got[0].rcpts, ["bob@fallback.test"]);
    let got = implicit.wait_for(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1, "{}", engine.log_text());
    assert_eq!(got[0].rcpts, ["carol@implicit.test"]);
    drop(dns);
}

/// A bounce to a domain that publishes a null MX (RFC 7505) fails at once: no
/// connection, no retries, and no bounce of the bounce.
#[test]
fn null_mx_fails_at_once() {
    let dns_port = free_port();
    let dns = Dnsmasq::start(dns_port, &["--mx-host=nullmx.test,.,0"]);
    let route_sink = Sink::start(addr("127.0.0.1"));
    let engine = Engine::start(EngineConfig {
        retry: "[\"1s\"]",
        extra: format!(
            "{}[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n",
            domain("example.test", route_sink.addr)
        ),
        ..Default::default()
    });
    send_many(
        &engine,
        "alice@nullmx.test",
        "reject-1@example.test",
        1,
        "nullmx",
    );
    assert!(
        wait_until(Duration::from_secs(10), || engine
            .metric("bulwark_queue_messages")
            == 0.0),
        "{}",
        engine.log_text()
    );
    // The original was refused by the route; its bounce failed on the null MX.
    assert_eq!(
        engine.metric("bulwark_deliveries_total{result=\"failed\"}"),
        2.0
    );
    assert_eq!(
        engine.metric("bulwark_deliveries_total{result=\"deferred\"}"),
        0.0
    );
    assert_eq!(engine.metric("bulwark_dsns_total"), 1.0);
    assert_eq!(engine.metric("bulwark_destination_failures_total"), 0.0);
    let log = engine.log_text();
    assert!(
        log.contains("5.1.10 nullmx.test accepts no mail (null MX)"),
        "{log}"
    );
    assert!(log.contains("failed message from the null sender: no bounce"));
    drop(dns);
}

/// Mail accepted while the route is down survives SIGKILL: every message that got 250
/// arrives after the restart, and none twice.
#[test]
fn kill_9_loses_nothing_that_got_250() {
    let route = addr("127.0.0.1");
    let mut engine = Engine::start(EngineConfig {
        cores: 2,
        extra: domain("example.test", route),
        ..Default::default()
    });
    let mut ids = send_many(&engine, "s@sender.test", "u@example.test", 40, "crash-a");
    ids.extend(send_many(
        &engine,
        "s@sender.test",
        "v@example.test",
        40,
        "crash-b",
    ));
    assert_eq!(ids.len(), 80);
    engine.kill9();
    engine.restart();
    assert!(
        wait_until(Duration::from_secs(10), || engine
            .metric("bulwark_queue_messages")
            == 80.0),
        "engine log:\n{}",
        engine.log_text()
    );
    let sink = Sink::start(route);
    let msgs = sink.wait_for(80, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let msgs = if msgs.len() >= 80 {
        sink.messages()
    } else {
        msgs
    };
    let mut got: Vec<String> = msgs.iter().filter_map(|m| m.header("Message-ID")).collect();
    got.sort();
    let total = got.len();
    got.dedup();
    assert_eq!(got.len(), 80, "lost messages");
    assert_eq!(total, 80, "duplicated messages");
    for id in &ids {
        assert!(
            msgs.iter()
                .any(|m| m.content.contains(&format!(" id {id}"))),
            "queue id {id} not delivered"
        );
    }
    assert!(wait_until(Duration::from_secs(5), || engine
        .metric("bulwark_queue_messages")
        == 0.0));
    // Everything finished: the spool is reclaimed except the active segments.
    let left: usize = std::fs::read_dir(&engine.spool)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("core-"))
        })
        .map(|p| std::fs::read_dir(p).unwrap().count())
        .sum();
    assert!(left <= 2, "{left} spool segments left");
}

/// SIGKILL at random moments while bulwark-load sends at full speed, ten times: every
/// message that got a 250 reaches the downstream. Duplicates (at-least-once) are counted.
#[test]
fn kill_9_ten_times_under_load_loses_nothing() {
    let load = std::path::Path::new(env!("CARGO_BIN_EXE_bulwark")).with_file_name("bulwark-load");
    assert!(
        load.exists(),
        "build the workspace first: {} is missing",
        load.display()
    );
    let dir = TempDir::new("kill9load");
    let (sent_ids, sink_ids, report) = (
        dir.path().join("sent.txt"),
        dir.path().join("sink.txt"),
        dir.path().join("sink.json"),
    );
    let route = addr("127.0.0.1");
    let mut sink = Command::new(&load)
        .args([
            "sink",
            "--threads",
            "1",
            "--listen",
            &route.to_string(),
            "--ids",
        ])
        .arg(&sink_ids)
        .arg("--report")
        .arg(&report)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut engine = Engine::start(EngineConfig {
        cores: 2,
        extra: domain("example.test", route),
        ..Default::default()
    });
    let sender = Command::new(&load)
        .args([
            "send",
            "--target",
            &engine.smtp.to_string(),
            "--connections",
            "10",
            "--threads",
            "1",
        ])
        .args(["--duration", "12", "--size", "2048", "--json", "--ids"])
        .arg(&sent_ids)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seed = std::process::id() as u64 | 1;
    for _ in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 700));
        engine.kill9();
        engine.restart();
    }
    let out = sender.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let sent: std::collections::HashSet<String> = read_lines(&sent_ids).into_iter().collect();
    assert!(sent.len() > 100, "too little load: {r}");
    let received = || read_lines(&sink_ids);
    wait_until(Duration::from_secs(60), || {
        let got: std::collections::HashSet<String> = received().into_iter().collect();
        sent.is_subset(&got)
    });
    unsafe { libc::kill(sink.id() as i32, libc::SIGTERM) };
    let _ = sink.wait();
    let all = received();
    let unique: std::collections::HashSet<&String> = all.iter().collect();
    let lost: Vec<&String> = sent.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        sent.len(),
        &lost[..lost.len().min(3)]
    );
    eprintln!(
        "kill -9 x10 under load: {} acknowledged, {} delivered, {} duplicates, {} client errors",
        sent.len(),
        all.len(),
        all.len() - unique.len(),
        r["errors"]
    );
}
