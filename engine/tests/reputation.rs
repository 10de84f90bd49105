//! Connection reputation end to end: DNS block and allow lists served by a real DNS
//! server (dnsmasq) and by a scripted one that times out, fails and answers garbage;
//! clients are Python's smtplib bound to different loopback addresses.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// MAIL FROM's reply for a client connecting from `source` (a 127/8 address).
fn mail_reply(engine: &Engine, source: &str) -> String {
    python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("{ip}", {port}, source_address=("{source}", 0), timeout=20)
s.ehlo("client.test")
code, text = s.mail("alice@sender.test")
print(code, text.decode())
s.quit()
"#,
        ip = engine.smtp.ip(),
        port = engine.smtp.port(),
    ))
    .trim()
    .to_string()
}

fn sink_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

#[test]
fn dns_lists_refuse_defer_and_allow_by_weight_and_class() {
    let dns_port = free_port();
    let _dns = Dnsmasq::start(
        dns_port,
        &[
            // 127.0.0.2: on the block list.
            "--host-record=2.0.0.127.bl.test,127.0.0.2",
            // 127.0.0.3: on the dynamic list only.
            "--host-record=3.0.0.127.dyn.test,127.0.0.10",
            // 127.0.0.4: the block list refuses to answer (quota): not a listing.
            "--host-record=4.0.0.127.bl.test,127.255.255.254",
            // 127.0.0.5: on the block list and on the allow list (weight -5).
            "--host-record=5.0.0.127.bl.test,127.0.0.2",
            "--host-record=5.0.0.127.wl.test,127.0.0.2",
            // 127.0.0.6: an answer outside the zone's filter.
            "--host-record=6.0.0.127.bl.test,127.0.0.20",
            "--local=/test/",
            "--local-ttl=300",
        ],
    );
    let sink = Sink::start(sink_addr());
    let engine = Engine::start(EngineConfig {
        extra: format!(
            r#"{}[dns]
nameservers = ["127.0.0.1:{dns_port}"]

[authentication]
enabled = false

[reputation]
dnsbl_threshold = 1
allow_threshold = -1

[[reputation.dnsbl]]
zone = "bl.test"
answers = ["127.0.0.[2..11]"]

[[reputation.dnsbl]]
zone = "dyn.test"
class = "dynamic"

[[reputation.dnsbl]]
zone = "wl.test"
weight = -5
"#,
            domain("example.test", sink.addr)
        ),
        ..Default::default()
    });

    let r = mail_reply(&engine, "127.0.0.2");
    assert_eq!(
        r,
        "550 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"
    );
    let r = mail_reply(&engine, "127.0.0.3");
    assert!(
        r.starts_with("450 4.7.1 Service unavailable; client [127.0.0.3] listed by dyn.test"),
        "{r}"
    );
    for clean in ["127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"] {
        let r = mail_reply(&engine, clean);
        assert!(r.starts_with("250"), "{clean}: {r}");
    }
    // Again from the listed address: answered from the core's cache.
    let hits = engine.metric("bulwark_dnsbl_cache_total{result=\"hit\"}");
    let r = mail_reply(&engine, "127.0.0.2");
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(
        engine.metric("bulwark_dnsbl_cache_total{result=\"hit\"}") >= hits + 3.0,
        "the second check of 127.0.0.2 asks nothing"
    );
    assert_eq!(
        engine.metric("bulwark_reputation_verdicts_total{reason=\"dnsbl\"}"),
        2.0
    );
    assert_eq!(
        engine.metric("bulwark_reputation_verdicts_total{reason=\"dnsbl_dynamic\"}"),
        1.0
    );
    assert_eq!(
        engine.metric("bulwark_reputation_verdicts_total{reason=\"dnswl\"}"),
        1.0
    );
    assert_eq!(
        engine.metric("bulwark_dnsbl_results_total{zone=\"bl.test\",result=\"refused\"}"),
        1.0
    );
}

/// A scripted DNS server: no answer for 2.0.0.127, SERVFAIL for 3.0.0.127, a garbage
/// datagram for 4.0.0.127, a non-127 answer for 5.0.0.127, NXDOMAIN for the rest.
struct Scripted(Child);

impl Scripted {
    fn start(port: u16) -> Scripted {
        let script = format!(
            r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", {port}))
while True:
    q, addr = s.recvfrom(512)
    if len(q) < 12:
        continue
    qid = q[:2]
    i, labels = 12, []
    while i < len(q) and q[i] != 0:
        labels.append(q[i+1:i+1+q[i]].decode(errors="replace")); i += 1 + q[i]
    question = q[12:i+5]
    name = ".".join(labels)
    def reply(rcode, answer=b""):
        flags = 0x8180 | rcode
        return qid + struct.pack(">HHHHH", flags, 1, 1 if answer else 0, 0, 0) + question + answer
    if name.startswith("2.0.0.127."):
        continue
    elif name.startswith("3.0.0.127."):
        s.sendto(reply(2), addr)
    elif name.startswith("4.0.0.127."):
        s.sendto(qid + b"\xff\x00garbage", addr)
    elif name.startswith("5.0.0.127."):
        s.sendto(reply(0, b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + bytes([10, 0, 0, 1])), addr)
    else:
        s.sendto(reply(3), addr)
"#
        );
        let child = Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        std::thread::sleep(Duration::from_millis(300));
        Scripted(child)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_dns_list_that_times_out_fails_or_lies_never_blocks_mail() {
    let dns_port = free_port();
    let _dns = Scripted::start(dns_port);
    let sink = Sink::start(sink_addr());
    let engine = Engine::start(EngineConfig {
        extra: format!(
            "{}[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n\n[authentication]\nenabled = false\n\n[reputation]\ntimeout = \"1s\"\n\n[[reputation.dnsbl]]\nzone = \"flaky.test\"\n",
            domain("example.test", sink.addr)
        ),
        ..Default::default()
    });
    for source in [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
    ] {
        let t0 = Instant::now();
        let r = mail_reply(&engine, source);
        assert!(r.starts_with("250"), "{source}: {r}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{source} waited {:?}",
            t0.elapsed()
        );
    }
    // The timeout and the failures are failures; the non-127 answer is a refusal.
    let failed =
        engine.metric("bulwark_dnsbl_results_total{zone=\"flaky.test\",result=\"failed\"}");
    assert!(failed >= 2.0, "failed: {failed}");
    assert_eq!(
        engine.metric("bulwark_dnsbl_results_total{zone=\"flaky.test\",result=\"refused\"}"),
        1.0
    );
    assert_eq!(
        engine.metric("bulwark_dnsbl_results_total{zone=\"flaky.test\",result=\"not_listed\"}"),
        1.0
    );
    assert_eq!(
        engine.metric("bulwark_reputation_verdicts_total{reason=\"pass\"}"),
        5.0
    );
}

#[test]
fn a_bad_zone_definition_stops_the_engine_naming_key_and_line() {
    let dir = TempDir::new("bad-zone");
    let cfg = dir.path().join("bulwark.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname = \"mx.bulwark.test\"\nlisten = [\"127.0.0.1:{}\"]\n[spool]\ndir = \"{}\"\n\n[[reputation.dnsbl]]\nzone = \"bl.test\"\nanswers = [\"127.0.0.[9..2]\"]\n",
            free_port(),
            dir.path().join("spool").display(),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reputation.dnsbl[0].answers[0]") && err.contains("line 9"),
        "{err}"
    );
}

#[test]
fn an_early_talker_is_refused_and_remembered_and_a_patient_client_waits_once() {
    let sink = Sink::start(sink_addr());
    let engine = Engine::start(EngineConfig {
        extra: format!(
            "{}[authentication]\nenabled = false\n\n[reputation]\ngreet_wait = \"700ms\"\n",
            domain("example.test", sink.addr)
        ),
        ..Default::default()
    });
    let out = python(&format!(
        r#"
import socket, smtplib, time
def talk_first(source):
    s = socket.create_connection(("{ip}", {port}), source_address=(source, 0), timeout=10)
    s.sendall(b"EHLO impatient.test\r\n")
    data = b""
    while True:
        chunk = s.recv(512)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()
def greeting_after(source):
    t = time.time()
    s = smtplib.SMTP("{ip}", {port}, source_address=(source, 0), timeout=10)
    waited = time.time() - t
    s.quit()
    return waited
print("early", talk_first("127.0.0.2"))
print("again", talk_first("127.0.0.2"))
print("first %.3f" % greeting_after("127.0.0.3"))
print("second %.3f" % greeting_after("127.0.0.3"))
"#,
        ip = engine.smtp.ip(),
        port = engine.smtp.port(),
    ));
    let line = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {k} in {out}"))
    };
    assert_eq!(
        line("early"),
        "554 5.5.1 Protocol error: you talked before the greeting"
    );
    assert_eq!(
        line("again"),
        "554 5.7.1 Connection refused: you talked before the greeting"
    );
    let first: f64 = line("first").parse().unwrap();
    let second: f64 = line("second").parse().unwrap();
    assert!(first >= 0.65, "the first greeting came after {first} s");
    assert!(
        second < 0.3,
        "a client that waited once is not made to wait again: {second} s"
    );
    assert_eq!(
        engine.metric("bulwark_reputation_verdicts_total{reason=\"pregreet\"}"),
        1.0
    );
    assert_eq!(
        engine.metric("bulwark_reputation_verdicts_total{reason=\"early_talker\"}"),
        1.0
    );
}

/// `bulwark ip ARGS` against the engine.
fn ip(engine: &Engine, args: &[&str]) -> (bool, String) {
    run(
        env!("CARGO_BIN_EXE_bulwark"),
        &[&["ip", "--config", engine.config.to_str().unwrap()], args].concat(),
    )
}

/// Throttles of the unknown group, counted at each client's owner core (two cores, so
/// clients are owned by either): concurrent connections, messages per session,
/// recipients per hour and protocol errors, each refused with its `421 4.7.0` or
/// `451 4.7.1`; another client is not affected; 127.0.0.1 is never throttled.
#[test]
fn throttles_refuse_a_client_past_its_group_limits_and_release_it() {
    let sink = Sink::start(sink_addr());
    let engine = Engine::start(EngineConfig {
        cores: 2,
        extra: format!(
            "{}[authentication]\nenabled = false\n\n[inspection]\nenabled = false\n\n\
             [throttle]\nblock_after = 0\n\n[throttle.unknown]\nmax_connections = 2\n\
             messages_per_session = 2\nrecipients_per_hour = 6\nprotocol_errors_per_hour = 4\n",
            domain("example.test", sink.addr)
        ),
        ..Default::default()
    });
    let out = python(&format!(
        r#"
import smtplib, socket, time
IP, PORT = "{ip}", {port}
def first_reply(source, hold):
    # Greeting and EHLO reply of a new connection kept open in `hold`.
    s = socket.create_connection((IP, PORT), source_address=(source, 0), timeout=10)
    f = s.makefile("rb")
    g = f.readline().decode().strip()
    if not g.startswith("220"):
        return g
    s.sendall(b"EHLO c.test\r\n")
    while True:
        l = f.readline().decode().strip()
        if not l or l[3] == " ":
            break
    hold.append(s)
    return l
held = []
print("c1", first_reply("127.0.0.20", held))
print("c2", first_reply("127.0.0.20", held))
print("c3", first_reply("127.0.0.20", held))
print("other", first_reply("127.0.0.21", held))
for s in held:
    s.close()
time.sleep(0.3)
print("after", first_reply("127.0.0.20", []))
# Messages per session: the third MAIL is refused and the session closed.
s = smtplib.SMTP(IP, PORT, source_address=("127.0.0.22", 0), timeout=10)
s.ehlo("c.test")
codes = []
for i in range(3):
    try:
        code, _ = s.mail("a@sender.test")
        codes.append(code)
        if code != 250:
            break
        s.rcpt("bob@example.test")
        s.data(b"Subject: t\r\n\r\nhi\r\n")
    except smtplib.SMTPServerDisconnected:
        codes.append("closed")
        break
print("messages", codes)
# Recipients per hour (6): a burst of 6 passes, then MAIL is deferred.
s = smtplib.SMTP(IP, PORT, source_address=("127.0.0.23", 0), timeout=10)
s.ehlo("c.test")
s.mail("a@sender.test")
for i in range(6):
    assert s.rcpt("bob%d@example.test" % i)[0] == 250
s.rset()
time.sleep(0.3)
print("rcpt", s.mail("a@sender.test"))
s.close()
# Protocol errors per hour (4): the session is closed, and the next connection refused.
s = socket.create_connection((IP, PORT), source_address=("127.0.0.24", 0), timeout=10)
f = s.makefile("rb")
f.readline()
for i in range(6):
    try:
        s.sendall(b"BOGUS\r\n")
    except OSError:
        break
time.sleep(0.5)
s.close()
print("errors", first_reply("127.0.0.24", []))
print("local", first_reply("127.0.0.1", held), first_reply("127.0.0.1", held), first_reply("127.0.0.1", held))
"#,
        ip = engine.smtp.ip(),
        port = engine.smtp.port(),
    ));
    let line = |k: &str| {
        out.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{k} "))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {k} in {out}"))
    };
    assert!(line("c1").starts_with("250"), "{out}");
    assert!(line("c2").starts_with("250"), "{out}");
    assert_eq!(
        line("c3"),
        "421 4.7.0 Too many connections from your address; try again later"
    );
    assert!(line("other").starts_with("250"), "{out}");
    assert!(
        line("after").starts_with("250"),
        "closed connections are released: {out}"
    );
    assert!(
        line("messages").starts_with("[250, 250, 421]"),
        "{}",
        line("messages")
    );
    assert!(
        line("rcpt").contains("451") && line("rcpt").contains("4.7.1"),
        "{out}"
    );
    assert!(
        line("errors").starts_with("421 4.7.0 Too many protocol errors"),
        "{out}"
    );
    assert_eq!(line("local").matches("250").count(), 3, "{out}");
    for (reason, min) in [
        ("throttle_connections", 1.0),
        ("throttle_messages", 1.0),
        ("throttle_recipients", 1.0),
        ("throttle_protocol_errors", 1.0),
    ] {
        let v = engine.metric(&format!(
            "bulwark_reputation_verdicts_total{{reason=\"{reason}\"}}"
        ));
        assert!(v >= min, "{reason}: {v}");
    }
    assert_eq!(sink.wait_for(2, Duration::from_secs(10)).len(), 2);
}

/// A client that keeps hitting a limit is blocked dynamically on every core: refused
/// at connect, listed by `bulwark ip dynamic list`, lifted by `bulwark ip dynamic remove`, and
/// released on its own when the block ends; the next block lasts twice as long.
#[test]
fn a_client_that_keeps_hitting_its_limits_is_blocked_for_a_doubling_time() {
    let engine = Engine::start(EngineConfig {
        cores: 2,
        extra: "[throttle]\nblock_after = 3\nblock = \"2s\"\nblock_max = \"1h\"\n\n\
                [throttle.unknown]\nmax_connections = 1\n"
            .into(),
        ..Default::default()
    });
    let script = |source: &str| {
        format!(
            r#"
import socket, time
IP, PORT = "{ip}", {port}
def first_reply(hold):
    s = socket.create_connection((IP, PORT), source_address=("{source}", 0), timeout=10)
    f = s.makefile("rb")
    g = f.readline().decode().strip()
    if not g.startswith("220"):
        return g
    s.sendall(b"NOOP\r\n")
    l = f.readline().decode().strip()
    hold.append(s)
    return l
held = []
print("first", first_reply(held))
for i in range(3):
    print("refused", first_reply([]))
time.sleep(0.3)
for s in held:
    s.close()
time.sleep(0.2)
print("blocked", first_reply([]))
"#,
            ip = engine.smtp.ip(),
            port = engine.smtp.port(),
        )
    };
    let out = python(&script("127.0.0.30"));
    assert!(out.contains("first 250"), "{out}");
    assert_eq!(
        out.matches("refused 421 4.7.0 Too many connections")
            .count(),
        3,
        "{out}"
    );
    assert!(
        out.contains("blocked 421 4.7.0 Your address is blocked for a while"),
        "{out}"
    );
    let (ok, list) = ip(&engine, &["dynamic", "list", "--json"]);
    assert!(ok, "{list}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["network"], "127.0.0.30/32");
    assert_eq!(listed[0]["reason"], "connections");
    assert!(listed[0]["remaining_ms"].as_u64().unwrap() <= 2000);
    assert!(engine.metric("bulwark_dynamic_blocks_total{reason=\"throttle\"}") >= 1.0);
    assert!(engine.metric("bulwark_reputation_verdicts_total{reason=\"dynamic_block\"}") >= 1.0);
    // It ends on its own.
    std::thread::sleep(Duration::from_millis(2200));
    let (ok, list) = ip(&engine, &["dynamic", "list", "--json"]);
    assert!(ok && list.trim() == "[]", "{list}");
    // The second block is twice as long; an operator lifts it.
    let out = python(&script("127.0.0.30"));
    assert!(out.contains("blocked 421"), "{out}");
    let (_, list) = ip(&engine, &["dynamic", "list", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    let left = listed[0]["remaining_ms"].as_u64().unwrap();
    assert!(left > 2500 && left <= 4000, "{list}");
    let (ok, text) = ip(&engine, &["dynamic", "remove", "127.0.0.30"]);
    assert!(ok && text.contains("block lifted"), "{text}");
    std::thread::sleep(Duration::from_millis(100));
    let out = python(&script("127.0.0.30"));
    assert!(out.contains("first 250"), "lifted on every core: {out}");
    let (ok, text) = ip(&engine, &["dynamic", "remove", "not-an-address"]);
    assert!(!ok && text.contains("is not an IP address"), "{text}");
}

/// With DNS lists, a client listed under the threshold is *suspect* and gets that group's
/// tighter limits; an unlisted one keeps the unknown group's; and idle connections (no
/// command sent) count against the limit from the accept.
#[test]
fn a_suspect_client_gets_its_groups_limits_and_idle_connections_count() {
    let dns_port = free_port();
    let _dns = Dnsmasq::start(
        dns_port,
        &[
            "--host-record=60.0.0.127.bl.test,127.0.0.2",
            "--local=/test/",
            "--local-ttl=300",
        ],
    );
    let engine = Engine::start(EngineConfig {
        cores: 2,
        extra: format!(
            "[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n\n[authentication]\nenabled = false\n\n\
             [reputation]\ndnsbl_threshold = 2\n\n[[reputation.dnsbl]]\nzone = \"bl.test\"\nweight = 1\n\n\
             [throttle]\nblock_after = 0\n\n[throttle.unknown]\nmax_connections = 2\n\n\
             [throttle.suspect]\nmax_connections = 1\n"
        ),
        ..Default::default()
    });
    let out = python(&format!(
        r#"
import socket, time
IP, PORT = "{ip}", {port}
def opened(source):
    s = socket.create_connection((IP, PORT), source_address=(source, 0), timeout=10)
    f = s.makefile("rb")
    return s, f, f.readline().decode().strip()
def first_reply(source, hold):
    s, f, g = opened(source)
    if not g.startswith("220"):
        return g
    s.sendall(b"NOOP\r\n")
    l = f.readline().decode().strip()
    hold.append(s)
    return l
held = []
print("suspect1", first_reply("127.0.0.60", held))
print("suspect2", first_reply("127.0.0.60", held))
print("unknown1", first_reply("127.0.0.61", held))
print("unknown2", first_reply("127.0.0.61", held))
# Two idle connections (greeting read, nothing sent) fill the unknown group's two.
idle = [opened("127.0.0.62")[0] for _ in range(2)]
time.sleep(0.3)
print("idle3", first_reply("127.0.0.62", held))
"#,
        ip = engine.smtp.ip(),
        port = engine.smtp.port(),
    ));
    let line = |k: &str| {
        out.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{k} "))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {k} in {out}"))
    };
    assert!(line("suspect1").starts_with("250"), "{out}");
    assert!(
        line("suspect2").starts_with("421 4.7.0 Too many connections"),
        "{out}"
    );
    assert!(line("unknown1").starts_with("250"), "{out}");
    assert!(line("unknown2").starts_with("250"), "{out}");
    assert!(
        line("idle3").starts_with("421 4.7.0 Too many connections"),
        "{out}"
    );
    assert!(engine.metric("bulwark_reputation_verdicts_total{reason=\"suspect\"}") >= 2.0);
}
