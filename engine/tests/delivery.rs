//! Delivery at scale: destination backoff, limits, delayed DSNs, queue operations on a
//! running engine, route flapping under load, and restart with a full queue.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn local_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// The client addresses (one per connection) the sink stored messages from.
fn sink_peers(sink: &Sink) -> HashSet<String> {
    std::fs::read_dir(sink.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| v["peer"].as_str().unwrap_or("").to_string())
        .collect()
}

fn entry<'a>(list: &'a [serde_json::Value], id: &str) -> Option<&'a serde_json::Value> {
    list.iter().find(|e| e["id"] == id)
}

#[test]
fn queue_operations_on_a_running_engine() {
    let route = local_addr();
    let other = local_addr();
    let engine = Engine::start(EngineConfig {
        cores: 2,
        retry: "[\"30s\"]",
        extra: format!(
            "{}{}",
            domain("example.test", route),
            domain("other.test", other)
        ),
        ..Default::default()
    });
    let ids = send_messages(&engine, "s@sender.test", &["u@example.test"], 4, "ops");
    let mixed = send_messages(
        &engine,
        "s@sender.test",
        &["a@example.test", "b@other.test"],
        1,
        "mixed",
    );
    // Both routes are down: everything is deferred, with its attempt and error.
    assert!(wait_until(Duration::from_secs(10), || {
        let l = engine.queue_list();
        l.len() == 5 && l.iter().all(|e| e["state"] == "deferred")
    }));
    let list = engine.queue_list();
    let e = entry(&list, &ids[0]).unwrap();
    assert_eq!(e["sender"], "s@sender.test");
    assert_eq!(e["attempts"], 1);
    assert!(e["next_attempt"].as_u64().unwrap() > e["arrival"].as_u64().unwrap());
    assert!(
        e["last_error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{e:#}"
    );
    assert!(e["size"].as_u64().unwrap() > 50);
    assert_eq!(e["recipients"][0]["address"], "u@example.test");
    assert_eq!(e["recipients"][0]["status"], "pending");
    // The table and the detail view.
    let (ok, table) = engine.queue(&["list"]);
    assert!(ok, "{table}");
    assert!(
        table.contains(&ids[1]) && table.contains("deferred, 1 attempt"),
        "{table}"
    );
    assert!(table.contains("-- 5 messages"), "{table}");
    let (ok, detail) = engine.queue(&["show", &mixed[0]]);
    assert!(ok, "{detail}");
    assert!(detail.contains("pending    b@other.test"), "{detail}");
    // Unknown ids are errors that say so.
    let (ok, text) = engine.queue(&["show", "NOSUCHID"]);
    assert!(!ok);
    assert!(text.contains("no message NOSUCHID in the queue"), "{text}");
    let (ok, text) = engine.queue(&["release", &ids[0]]);
    assert!(!ok && text.contains("is not on hold"), "{text}");

    // Hold one, delete one, remove the other.test recipients.
    let (ok, text) = engine.queue(&["hold", &ids[0]]);
    assert!(ok, "{text}");
    let (ok, text) = engine.queue(&["hold", &ids[0]]);
    assert!(!ok && text.contains("already on hold"), "{text}");
    let (ok, text) = engine.queue(&["delete", &ids[1]]);
    assert!(
        ok && text.contains("deleted (1 pending recipient)"),
        "{text}"
    );
    let (ok, text) = engine.queue(&["delete", "--domain", "other.test"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("1 recipient in other.test removed from 1 message"),
        "{text}"
    );
    let list = engine.queue_list();
    assert_eq!(list.len(), 4);
    assert!(entry(&list, &ids[1]).is_none());
    assert_eq!(entry(&list, &ids[0]).unwrap()["state"], "held");
    assert_eq!(
        entry(&list, &mixed[0]).unwrap()["recipients"][1]["status"],
        "removed"
    );
    assert_eq!(engine.metric("bulwark_queue_held_messages"), 1.0);
    assert_eq!(engine.metric("bulwark_queue_deleted_total"), 2.0);

    // The route comes back; the retry is 30s away, so only a flush delivers now.
    let sink = Sink::start(route);
    let (ok, text) = engine.queue(&["flush", "--domain", "example.test"]);
    assert!(ok, "{text}");
    assert!(text.contains("3 messages scheduled"), "{text}");
    let got = sink.wait_for(3, Duration::from_secs(15));
    assert_eq!(got.len(), 3, "{}", engine.log_text());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.messages().len(), 3, "the held message went out");
    let subjects: HashSet<String> = got.iter().filter_map(|m| m.header("Subject")).collect();
    assert!(
        subjects.contains("ops 2") && subjects.contains("ops 3") && subjects.contains("mixed 0")
    );
    assert!(
        !subjects.contains("ops 1"),
        "a deleted message was delivered"
    );
    assert_eq!(
        got.iter()
            .find(|m| m.header("Subject").as_deref() == Some("mixed 0"))
            .unwrap()
            .rcpts,
        ["a@example.test"]
    );
    let list = engine.queue_list();
    assert_eq!(list.len(), 1, "{list:#?}");

    // The held message survives a restart held, then goes when released.
    let mut engine = engine;
    engine.restart();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let l = engine.queue_list();
            l.len() == 1 && l[0]["state"] == "held" && l[0]["attempts"] == 1
        }),
        "{:#?}",
        engine.queue_list()
    );
    let (ok, text) = engine.queue(&["release", &ids[0]]);
    assert!(ok && text.contains("released"), "{text}");
    let got = sink.wait_for(4, Duration::from_secs(15));
    assert_eq!(got.len(), 4);
    assert!(wait_until(Duration::from_secs(5), || engine
        .queue_list()
        .is_empty()));
    assert_eq!(engine.metric("bulwark_queue_held_messages"), 0.0);
    assert_eq!(engine.metric("bulwark_dsns_total"), 0.0, "deleting bounced");
}

#[test]
fn queue_command_without_a_running_engine_says_so() {
    let dir = TempDir::new("noengine");
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["queue", "--admin-dir"])
        .arg(dir.path())
        .arg("list")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no running engine answered"), "{err}");
}

#[test]
fn delay_notice_goes_once_then_the_message_is_delivered() {
    let route = local_addr();
    let senders = Sink::start(local_addr());
    let engine = Engine::start(EngineConfig {
        retry: "[\"1s\"]",
        queue_extra: "delay_warning = \"3s\"\n".into(),
        extra: format!(
            "{}{}",
            domain("example.test", route),
            domain("sender.test", senders.addr)
        ),
        ..Default::default()
    });
    let ids = send_messages(&engine, "alice@sender.test", &["u@example.test"], 1, "slow");
    let notices = senders.wait_for(1, Duration::from_secs(15));
    assert_eq!(notices.len(), 1, "{}", engine.log_text());
    let n = &notices[0];
    assert_eq!(n.rcpts, ["alice@sender.test"]);
    assert!(n.mail_from.is_empty(), "notices come from the null sender");
    assert!(
        n.content
            .contains("Subject: Delayed Mail (still being retried)")
    );
    assert!(
        n.content.contains("Action: delayed\r\nStatus: 4.4.1"),
        "{}",
        n.content
    );
    assert!(n.content.contains("Will-Retry-Until: "));
    assert!(
        n.content
            .contains(&format!("X-Bulwark-Queue-ID: {}", ids[0]))
    );
    assert!(
        n.content.contains("Subject: slow 0"),
        "the original header is attached"
    );
    // More attempts fail, and a restart happens: still only one notice.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(engine.metric("bulwark_delay_notices_total"), 1.0);
    let mut engine = engine;
    engine.restart();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        senders.messages().len(),
        1,
        "a second delay notice was sent"
    );
    let attempts = engine.queue_list()[0]["attempts"].as_u64().unwrap();
    assert!(
        attempts >= 3,
        "attempts were not kept across the restart: {attempts}"
    );
    let sink = Sink::start(route);
    assert_eq!(sink.wait_for(1, Duration::from_secs(15)).len(), 1);
    assert!(wait_until(Duration::from_secs(5), || engine
        .metric("bulwark_queue_messages")
        == 0.0));
    assert_eq!(senders.messages().len(), 1);
}

#[test]
fn a_down_destination_backs_off_instead_of_connecting_for_each_message() {
    let route = local_addr();
    let engine = Engine::start(EngineConfig {
        retry: "[\"1s\"]",
        extra: format!(
            "{}[delivery]\nidle_time = \"1s\"\nconnect_timeout = \"2s\"\nbackoff_min = \"2s\"\nbackoff_max = \"4s\"\nconnections_per_destination = 8\n",
            domain("example.test", route)
        ),
        ..Default::default()
    });
    send_messages(&engine, "s@sender.test", &["u@example.test"], 30, "down");
    std::thread::sleep(Duration::from_secs(6));
    // 30 messages retried every second for 6 s: about 180 message attempts, but only a
    // connection per backoff period (2 s, 4 s, …).
    let failures = engine.metric("bulwark_destination_failures_total");
    let suspended = engine.metric("bulwark_delivery_suspended_total");
    assert!(
        (1.0..=4.0).contains(&failures),
        "destination failures: {failures}"
    );
    assert!(suspended >= 30.0, "suspended deferrals: {suspended}");
    assert_eq!(engine.metric("bulwark_destinations_backing_off"), 1.0);
    // It comes back: the next probe finds it and everything parked goes at once.
    let sink = Sink::start(route);
    let got = sink.wait_for(30, Duration::from_secs(15));
    assert_eq!(got.len(), 30);
    assert!(wait_until(Duration::from_secs(5), || engine
        .metric("bulwark_destinations_backing_off")
        == 0.0));
    let peers = sink_peers(&sink);
    assert!(
        peers.len() <= 8,
        "30 messages took {} connections",
        peers.len()
    );
}

#[test]
fn destination_connection_and_rate_limits_hold() {
    let sink = Sink::start(local_addr());
    let engine = Engine::start(EngineConfig {
        extra: format!(
            "{}[delivery]\nidle_time = \"5s\"\nconnections_per_destination = 8\n\n[[delivery.destinations]]\nname = \"127.0.0.1\"\nconnections = 1\nrate = \"10/s\"\n",
            domain("example.test", sink.addr)
        ),
        ..Default::default()
    });
    let started = Instant::now();
    send_messages(&engine, "s@sender.test", &["u@example.test"], 20, "paced");
    let got = sink.wait_for(20, Duration::from_secs(20));
    let took = started.elapsed();
    assert_eq!(got.len(), 20);
    // 20 transactions at 10 per second need at least 1.9 s after the first.
    assert!(
        took >= Duration::from_millis(1800),
        "rate limit not applied: {took:?}"
    );
    let peers = sink_peers(&sink);
    assert_eq!(peers.len(), 1, "more than one connection: {peers:?}");
}

fn load_binary() -> PathBuf {
    let load = Path::new(env!("CARGO_BIN_EXE_bulwark")).with_file_name("bulwark-load");
    assert!(
        load.exists(),
        "build the workspace first: {} is missing",
        load.display()
    );
    load
}

fn start_load_sink(load: &Path, listen: SocketAddr, ids: &Path) -> Child {
    let child = Command::new(load)
        .args([
            "sink",
            "--threads",
            "1",
            "--listen",
            &listen.to_string(),
            "--ids",
        ])
        .arg(ids)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
            listen
        )
        .is_ok()),
        "sink did not start"
    );
    child
}

fn stop(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

fn read_ids(files: &[PathBuf]) -> Vec<String> {
    files.iter().flat_map(|f| read_lines(f)).collect()
}

#[test]
fn route_flapping_under_load_loses_nothing() {
    let load = load_binary();
    let dir = TempDir::new("flap");
    let route = local_addr();
    let engine = Engine::start(EngineConfig {
        cores: 2,
        retry: "[\"1s\", \"2s\"]",
        extra: domain("example.test", route),
        ..Default::default()
    });
    let sent_ids = dir.path().join("sent.txt");
    let sender = Command::new(&load)
        .args([
            "send",
            "--target",
            &engine.smtp.to_string(),
            "--connections",
            "8",
        ])
        .args([
            "--threads",
            "1",
            "--duration",
            "16",
            "--rate",
            "300",
            "--size",
            "2048",
        ])
        .arg("--ids")
        .arg(&sent_ids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The route is up for 2 s, down for 2 s, eight times over.
    let mut sink_files = Vec::new();
    for i in 0..4 {
        let f = dir.path().join(format!("sink-{i}.txt"));
        let mut sink = start_load_sink(&load, route, &f);
        sink_files.push(f);
        std::thread::sleep(Duration::from_secs(2));
        stop(&mut sink);
        std::thread::sleep(Duration::from_secs(2));
    }
    let out = sender.wait_with_output().unwrap();
    assert!(out.status.success());
    let f = dir.path().join("sink-final.txt");
    let mut sink = start_load_sink(&load, route, &f);
    sink_files.push(f);
    let sent: HashSet<String> = read_lines(&sent_ids).into_iter().collect();
    assert!(sent.len() > 1000, "too little load: {}", sent.len());
    assert!(wait_until(Duration::from_secs(60), || {
        engine.metric("bulwark_queue_messages") == 0.0
    }));
    stop(&mut sink);
    let all = read_ids(&sink_files);
    let got: HashSet<&String> = all.iter().collect();
    let lost: Vec<&String> = sent.iter().filter(|id| !got.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost",
        lost.len(),
        sent.len()
    );
    let deferred = engine.metric("bulwark_deliveries_total{result=\"deferred\"}");
    let failures = engine.metric("bulwark_destination_failures_total");
    let suspended = engine.metric("bulwark_delivery_suspended_total");
    assert!(deferred > 0.0 && failures > 0.0 && suspended > 0.0);
    eprintln!(
        "route flapping: {} acknowledged, all delivered, {} duplicates; {} deferrals, {} destination failures, {} suspended",
        sent.len(),
        all.len() - got.len(),
        deferred,
        failures,
        suspended
    );
}

/// Restart with a full queue: the engine answers while it reads the spool back, and
/// every message is delivered afterwards.
#[test]
fn restart_with_a_full_queue_accepts_mail_while_recovering() {
    let load = load_binary();
    let dir = TempDir::new("fullq");
    let route = local_addr();
    let mut engine = Engine::start(EngineConfig {
        cores: 2,
        retry: "[\"1s\"]",
        extra: domain("example.test", route),
        ..Default::default()
    });
    let sent_ids = dir.path().join("sent.txt");
    let out = Command::new(&load)
        .args([
            "send",
            "--target",
            &engine.smtp.to_string(),
            "--connections",
            "16",
        ])
        .args(["--threads", "1", "--messages", "20000", "--size", "1024"])
        .arg("--ids")
        .arg(&sent_ids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    engine.kill9();
    let mut sink_ids = vec![dir.path().join("sink.txt")];
    let mut sink = start_load_sink(&load, route, &sink_ids[0]);
    engine.restart();
    // New mail is taken at once, whatever the recovery is doing.
    let ids = send_messages(&engine, "s@sender.test", &["u@example.test"], 1, "during");
    assert_eq!(ids.len(), 1);
    let sent: HashSet<String> = read_lines(&sent_ids).into_iter().collect();
    assert_eq!(sent.len(), 20000);
    // Recovery first (until then the queue gauge does not count what is still on disk),
    // then delivery.
    assert!(wait_until(Duration::from_secs(60), || engine
        .metric("bulwark_queue_recovered_total")
        == 20000.0));
    assert!(wait_until(Duration::from_secs(60), || {
        engine.metric("bulwark_queue_messages") == 0.0
    }));
    stop(&mut sink);
    sink_ids.truncate(1);
    let all = read_ids(&sink_ids);
    let got: HashSet<&String> = all.iter().collect();
    let lost = sent.iter().filter(|id| !got.contains(id)).count();
    assert_eq!(lost, 0, "{lost} of 20000 lost across the restart");
    assert_eq!(engine.metric("bulwark_queue_recovered_total"), 20000.0);
}
