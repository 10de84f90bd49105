//! Policy snapshots published through shared memory, followed by a running engine.

mod common;

use std::time::Duration;

use common::*;

fn rcpt_code(engine: &Engine, rcpt: &str) -> String {
    let mut c = Raw::connect(engine.smtp);
    c.send(
        format!("EHLO c\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<{rcpt}>\r\nQUIT\r\n").as_bytes(),
    );
    let r = c.replies(4);
    r[2][..9.min(r[2].len())].to_string()
}

fn publish(config: &std::path::Path) -> (bool, String) {
    run(
        env!("CARGO_BIN_EXE_bulwark"),
        &["publish-policy", "--config", config.to_str().unwrap()],
    )
}

/// A 2-core engine following a snapshot header in a fresh directory, and a second
/// configuration beside it that adds the domain `new.test`: (directory, header, sink,
/// engine, second configuration).
fn following_engine(
    name: &str,
) -> (
    TempDir,
    std::path::PathBuf,
    Sink,
    Engine,
    std::path::PathBuf,
) {
    let shm = TempDir::new(name);
    let header = shm.path().join("policy");
    let sink = Sink::start(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let policy = format!("[policy]\nsnapshot = \"{}\"\n\n", header.display());
    let engine = Engine::start(EngineConfig {
        cores: 2,
        extra: format!("{policy}{}", domain("example.test", sink.addr)),
        ..Default::default()
    });
    let text = std::fs::read_to_string(&engine.config).unwrap();
    let second = shm.path().join("second.toml");
    std::fs::write(
        &second,
        format!("{text}\n{}", domain("new.test", sink.addr)),
    )
    .unwrap();
    (shm, header, sink, engine, second)
}

#[test]
fn published_policy_is_followed_without_restart_and_bad_images_are_refused() {
    let (_shm, header, sink, mut engine, second) = following_engine("shm");
    assert_eq!(engine.metric("bulwark_policy_generation"), 1.0);
    assert_eq!(rcpt_code(&engine, "u@new.test"), "550 5.7.1");

    // The operator adds a domain and publishes: no restart.
    let (ok, out) = publish(&second);
    assert!(ok, "{out}");
    assert!(out.contains("published generation 2"), "{out}");
    assert!(wait_until(Duration::from_secs(2), || engine
        .metric("bulwark_policy_generation")
        == 2.0));
    assert_eq!(rcpt_code(&engine, "u@new.test"), "250 2.1.5");
    let (ok, out) = run(
        "swaks",
        &[
            "--server",
            &engine.smtp.to_string(),
            "--from",
            "s@sender.test",
            "--to",
            "u@new.test",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(sink.wait_for(1, Duration::from_secs(10)).len(), 1);

    // A damaged image under a raised generation: refused by every core, generation 2 stays.
    let image = std::fs::read(header.with_file_name("policy.0000000000000002")).unwrap();
    let mut bad = image.clone();
    let n = bad.len() - 7;
    bad[n] ^= 0x55;
    std::fs::write(header.with_file_name("policy.0000000000000003"), &bad).unwrap();
    let mut h = std::fs::read(&header).unwrap();
    h[8..16].copy_from_slice(&3u64.to_ne_bytes());
    std::fs::write(&header, &h).unwrap();
    assert!(wait_until(Duration::from_secs(2), || engine
        .metric("bulwark_policy_snapshots_refused_total")
        == 2.0));
    assert_eq!(engine.metric("bulwark_policy_generation"), 2.0);
    assert_eq!(rcpt_code(&engine, "u@new.test"), "250 2.1.5");
    assert!(
        engine
            .log_text()
            .contains("policy snapshot refused, keeping generation 2")
    );

    // The next good publication is taken, and survives a restart.
    let (ok, out) = publish(&engine.config);
    assert!(ok, "{out}");
    assert!(out.contains("published generation 4"), "{out}");
    assert!(wait_until(Duration::from_secs(2), || engine
        .metric("bulwark_policy_generation")
        == 4.0));
    assert_eq!(rcpt_code(&engine, "u@new.test"), "550 5.7.1");
    engine.restart();
    assert_eq!(engine.metric("bulwark_policy_generation"), 4.0);
}

#[test]
fn publish_policy_needs_a_snapshot_path() {
    let dir = TempDir::new("nopolicy");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[server]\ncores = 1\n").unwrap();
    let (ok, out) = publish(&cfg);
    assert!(!ok);
    assert!(out.contains("policy.snapshot is not set"), "{out}");
}

/// Directory, sender lists and IP lists from the configuration, seen by smtplib
/// connecting from different loopback addresses.
#[test]
fn directory_senders_and_ip_lists() {
    let sink = Sink::start(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let extra = format!(
        "[senders]\napproved = [\"*.partner.test\"]\nblocked = [\"spam.test\", \"*.spam.test\"]\n\n\
         [ip]\nblock = [\"127.0.0.2\", \"127.0.0.8/29\"]\nallow = [\"127.0.0.9\"]\n\n\
         [[domains]]\nname = \"example.test\"\nroute = \"{}\"\n\
         directory = [\"alice@example.test\", \"Bob@Example.test\"]\n\
         approved_senders = [\"friend@spam.test\"]\nblocked_senders = [\"foe@ok.test\"]\n\n\
         [[domains]]\nname = \"open.test\"\nroute = \"{}\"\n",
        sink.addr, sink.addr
    );
    let engine = Engine::start(EngineConfig {
        extra,
        ..Default::default()
    });
    let out = python(&format!(
        r#"
import smtplib, socket
def rcpt(sender, to, source="127.0.0.1"):
    s = smtplib.SMTP("127.0.0.1", {port}, source_address=(source, 0))
    s.ehlo("c")
    s.mail(sender)
    code, msg = s.rcpt(to)
    s.quit()
    return "%d %s" % (code, msg.decode().split()[0])
assert rcpt("s@ok.test", "alice@example.test") == "250 2.1.5"
assert rcpt("s@ok.test", "BOB@example.test") == "250 2.1.5"
assert rcpt("s@ok.test", "carol@example.test") == "550 5.1.1", rcpt("s@ok.test", "carol@example.test")
assert rcpt("s@ok.test", "anyone@open.test") == "250 2.1.5"
assert rcpt("x@spam.test", "alice@example.test") == "550 5.7.1"
assert rcpt("x@mx.spam.test", "anyone@open.test") == "550 5.7.1"
assert rcpt("friend@spam.test", "alice@example.test") == "250 2.1.5", "domain approval beats a global block"
assert rcpt("friend@spam.test", "anyone@open.test") == "550 5.7.1", "approval is only for example.test"
assert rcpt("foe@ok.test", "alice@example.test") == "550 5.7.1"
assert rcpt("x@mail.partner.test", "carol@example.test") == "550 5.1.1", "approved senders still need a real user"
assert rcpt("s@ok.test", "alice@example.test", "127.0.0.9") == "250 2.1.5", "allow beats block"
for source in ["127.0.0.2", "127.0.0.10"]:
    c = socket.create_connection(("127.0.0.1", {port}), source_address=(source, 0))
    greeting = c.recv(1024).decode()
    assert greeting.startswith("554 5.7.1"), greeting
    assert c.recv(1024) == b""
print("ok")
"#,
        port = engine.smtp.port()
    ));
    assert_eq!(out.trim(), "ok");
    assert_eq!(
        engine.metric("bulwark_smtp_rejections_total{reason=\"ip_blocked\"}"),
        2.0
    );
    assert!(wait_until(Duration::from_secs(3), || engine.metric(
        "bulwark_smtp_rejections_total{reason=\"unknown_user\"}"
    ) == 2.0));
    assert_eq!(
        engine.metric("bulwark_smtp_rejections_total{reason=\"sender_blocked\"}"),
        4.0
    );
}

/// Directory-harvest protection: past the limit, the session gets 421 4.7.0 (within a
/// few recipients when the count crosses cores), further connections from the address
/// are refused until the block expires, other addresses are unaffected. Two cores, so
/// counts and blocks cross cores.
#[test]
fn directory_harvest_is_stopped_across_cores() {
    let sink = Sink::start(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let extra = format!(
        "[harvest]\nmax_unknown = 3\nwindow = \"1m\"\nblock = \"3s\"\n\n[smtp]\nmax_errors = 50\n\n\
         [[domains]]\nname = \"example.test\"\nroute = \"{}\"\ndirectory = [\"alice@example.test\"]\n",
        sink.addr
    );
    let engine = Engine::start(EngineConfig {
        cores: 2,
        extra,
        ..Default::default()
    });
    let out = python(&format!(
        r#"
import smtplib, socket, time
PORT = {port}
def greeting(source):
    c = socket.create_connection(("127.0.0.1", PORT), source_address=(source, 0))
    g = c.recv(1024).decode()
    c.close()
    return g
# Three unknown recipients over three connections: still welcome.
for i in range(3):
    s = smtplib.SMTP("127.0.0.1", PORT, source_address=("127.0.0.5", 0))
    s.ehlo("c")
    m = s.mail("x@harvest.test")
    assert m[0] == 250, m
    r = s.rcpt("guess%d@example.test" % i)
    assert r[0] == 550, r
    s.quit()
# The fourth session keeps guessing: it is told 421 4.7.0 and closed.
s = smtplib.SMTP("127.0.0.1", PORT, source_address=("127.0.0.5", 0))
s.ehlo("c")
s.mail("x@harvest.test")
codes = []
try:
    for i in range(10):
        code, msg = s.rcpt("more%d@example.test" % i)
        codes.append(code)
        if code == 421:
            break
except smtplib.SMTPServerDisconnected:
    codes.append("closed")
assert 421 in codes or "closed" in codes, codes
# The count lives on the address's home core: when that is another core, the block
# comes back by message a few round trips later.
assert len(codes) <= 8, codes
time.sleep(0.2)
for _ in range(4):
    g = greeting("127.0.0.5")
    assert g.startswith("421 4.7.0"), g
assert greeting("127.0.0.6").startswith("220"), "another address is not affected"
time.sleep(3.2)
assert greeting("127.0.0.5").startswith("220"), "the block expires"
s = smtplib.SMTP("127.0.0.1", PORT, source_address=("127.0.0.5", 0))
s.ehlo("c")
s.mail("x@harvest.test")
assert s.rcpt("alice@example.test")[0] == 250
s.quit()
print("ok")
"#,
        port = engine.smtp.port()
    ));
    assert_eq!(out.trim(), "ok");
    assert!(engine.metric("bulwark_smtp_rejections_total{reason=\"harvest_refused\"}") >= 4.0);
    assert!(wait_until(Duration::from_secs(3), || engine.metric(
        "bulwark_smtp_rejections_total{reason=\"harvest_closed\"}"
    ) >= 1.0));
    assert!(
        engine
            .log_text()
            .contains("directory harvest: client blocked")
    );
}

#[test]
fn a_header_truncated_or_overwritten_under_a_running_engine_breaks_nothing() {
    let (_shm, header, _sink, engine, second) = following_engine("shm-break");
    let (ok, out) = publish(&second);
    assert!(ok, "{out}");
    assert!(wait_until(Duration::from_secs(2), || engine
        .metric("bulwark_policy_generation")
        == 2.0));
    // Someone cuts the header file to nothing while every core has it mapped.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&header)
        .unwrap()
        .set_len(0)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..4 {
        assert_eq!(rcpt_code(&engine, "u@new.test"), "250 2.1.5");
    }
    assert_eq!(engine.metric("bulwark_policy_generation"), 2.0);
    // Then writes garbage over it: a generation with no image is refused, nothing else.
    std::fs::write(&header, [0x5au8; 64]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rcpt_code(&engine, "u@new.test"), "250 2.1.5");
    assert_eq!(engine.metric("bulwark_policy_generation"), 2.0);
    // The operator removes the damaged header and publishes again: the engine maps the
    // new header and follows it.
    let (ok, out) = publish(&engine.config);
    assert!(!ok && out.contains("not a Bulwark policy header"), "{out}");
    std::fs::remove_file(&header).unwrap();
    let (ok, out) = publish(&engine.config);
    assert!(ok, "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || rcpt_code(&engine, "u@new.test")
            == "550 5.7.1"),
        "the engine did not follow the recreated header"
    );
    assert!(engine.log_text().contains("policy header mapped again"));
}
