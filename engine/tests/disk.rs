//! Running out of spool space: new mail gets 452 4.3.1, nothing accepted is lost, and
//! service resumes when space returns. Uses a small tmpfs as the spool (needs root,
//! which CI has).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A spool directory on a 3 MB tmpfs, unmounted when the `Mount` is dropped.
fn small_spool(name: &str) -> (TempDir, std::path::PathBuf, Mount) {
    let dir = TempDir::new(name);
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&spool)
        .status()
        .unwrap();
    assert!(ok.success(), "mounting a tmpfs needs root");
    let mount = Mount(spool.clone());
    (dir, spool, mount)
}

/// Sends messages of `size` octets until one is refused; returns (accepted, refusal).
fn fill(engine: &Engine, size: usize, max: usize) -> (usize, String) {
    let out = python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port})
s.ehlo("c")
body = "Subject: fill\r\n\r\n" + ("x" * 70 + "\r\n") * ({size} // 72)
n = 0
refusal = ""
for i in range({max}):
    s.mail("s@sender.test")
    s.rcpt("u@example.test")
    code, msg = s.data(body)
    if code != 250:
        refusal = "%d %s" % (code, msg.decode())
        break
    n += 1
s.quit()
print(n)
print(refusal)
"#,
        port = engine.smtp.port()
    ));
    let mut lines = out.lines();
    (
        lines.next().unwrap().parse().unwrap(),
        lines.next().unwrap_or("").to_string(),
    )
}

#[test]
fn disk_full_answers_452_loses_nothing_and_recovers() {
    let (_dir, spool, _mount) = small_spool("diskfull");
    let route = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let engine = Engine::start(EngineConfig {
        extra: format!(
            "[spool]\ndir = \"{}\"\nsegment_size = 1048576\n\n{}",
            spool.display(),
            domain("example.test", route)
        ),
        ..Default::default()
    });
    // The route is down: everything accepted stays in the spool until the disk is full.
    let (accepted, refusal) = fill(&engine, 64 * 1024, 200);
    assert!(accepted > 5, "accepted only {accepted}");
    assert!(refusal.starts_with("452 4.3.1"), "{refusal}");
    assert!(engine.metric("bulwark_smtp_rejections_total{reason=\"spool_failed\"}") >= 1.0);
    // Space returns: delivery drains the queue, which frees the spool, and mail is
    // accepted again.
    let sink = Sink::start(route);
    let msgs = sink.wait_for(accepted, Duration::from_secs(30));
    assert_eq!(
        msgs.len(),
        accepted,
        "messages accepted before the disk filled were lost"
    );
    assert!(
        msgs.iter()
            .all(|m| m.content.ends_with(&format!("{}\r\n", "x".repeat(70)))),
        "a message was damaged"
    );
    assert!(wait_until(Duration::from_secs(10), || engine
        .metric("bulwark_queue_messages")
        == 0.0));
    let (again, refusal) = fill(&engine, 1024, 3);
    assert_eq!(again, 3, "not accepting after space returned: {refusal}");
    assert_eq!(
        sink.wait_for(accepted + 3, Duration::from_secs(10)).len(),
        accepted + 3
    );
}

#[test]
fn messages_refused_when_the_disk_filled_mid_batch_never_come_back_after_a_restart() {
    let (_dir, spool, _mount) = small_spool("diskfull-restart");
    let route = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut engine = Engine::start(EngineConfig {
        extra: format!(
            "[spool]\ndir = \"{}\"\nsegment_size = 16777216\n\n{}",
            spool.display(),
            domain("example.test", route)
        ),
        ..Default::default()
    });
    // Eight clients at once, so that commits hold several messages and the disk runs
    // out inside a batch. Each message is named by its Subject.
    let out = python(&format!(
        r#"
import smtplib, threading
results = []
lock = threading.Lock()
def client(c):
    s = smtplib.SMTP("127.0.0.1", {port})
    s.ehlo("c")
    for i in range(40):
        name = "m-%d-%d" % (c, i)
        body = "Subject: %s\r\n\r\n" % name + ("y" * 70 + "\r\n") * 300
        s.mail("s@sender.test")
        s.rcpt("u@example.test")
        code, msg = s.data(body)
        with lock:
            results.append("%s %d" % (name, code))
    s.quit()
ts = [threading.Thread(target=client, args=(c,)) for c in range(8)]
for t in ts: t.start()
for t in ts: t.join()
print("\n".join(results))
"#,
        port = engine.smtp.port()
    ));
    let mut accepted = std::collections::BTreeSet::new();
    let mut refused = std::collections::BTreeSet::new();
    for line in out.lines() {
        let (name, code) = line.split_once(' ').unwrap();
        match code {
            "250" => accepted.insert(name.to_string()),
            _ => refused.insert(name.to_string()),
        };
    }
    assert!(accepted.len() > 5, "accepted only {}", accepted.len());
    assert!(refused.len() > 5, "the disk never filled: {out}");
    // Crash, bring the route up, start again: what was refused must not be delivered.
    engine.kill9();
    let sink = Sink::start(route);
    engine.restart();
    let msgs = sink.wait_for(accepted.len(), Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let msgs = sink.messages().into_iter().chain(msgs.into_iter().take(0));
    let delivered: std::collections::BTreeSet<String> =
        msgs.filter_map(|m| m.header("Subject")).collect();
    let resurrected: Vec<&String> = delivered.intersection(&refused).collect();
    assert!(
        resurrected.is_empty(),
        "messages answered with an error were delivered after the restart: {resurrected:?}"
    );
    let lost: Vec<&String> = accepted.difference(&delivered).collect();
    assert!(lost.is_empty(), "accepted messages were lost: {lost:?}");
}
