//! Receiving and relaying, end to end: real binary, real clients, real downstream.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

fn sink_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn engine_for(sink: SocketAddr, extra: &str) -> Engine {
    Engine::start(EngineConfig {
        extra: format!("{}{extra}", domain("example.test", sink)),
        ..Default::default()
    })
}

#[test]
fn swaks_message_is_relayed_with_received_header() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "");
    let (ok, out) = run(
        "swaks",
        &[
            "--server",
            &engine.smtp.to_string(),
            "--from",
            "alice@sender.test",
            "--to",
            "bob@example.test",
            "--header",
            "Subject: swaks test",
            "--body",
            "hello from swaks",
        ],
    );
    assert!(ok, "{out}");
    let id = out
        .lines()
        .find_map(|l| l.split("queued as ").nth(1))
        .expect("queue id in reply")
        .trim()
        .to_string();
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.mail_from, "alice@sender.test");
    assert_eq!(m.rcpts, ["bob@example.test"]);
    assert_eq!(m.header("Subject").as_deref(), Some("swaks test"));
    assert!(m.content.starts_with("Received: from "), "{}", m.content);
    let received = m.content.split("\r\n\r\n").next().unwrap();
    assert!(
        received.contains(&format!("with ESMTP id {id}")),
        "{received}"
    );
    assert!(received.contains("for <bob@example.test>"), "{received}");
    assert!(m.content.contains("hello from swaks"));
    assert!(wait_until(Duration::from_secs(5), || engine
        .metric("bulwark_deliveries_total{result=\"delivered\"}")
        == 1.0));
    assert_eq!(engine.metric("bulwark_messages_received_total"), 1.0);
    // The harness waits on /healthz, not on the SMTP port: swaks's is the only one.
    assert_eq!(engine.metric("bulwark_smtp_connections_total"), 1.0);
    assert!(wait_until(Duration::from_secs(5), || engine
        .metric("bulwark_queue_messages")
        == 0.0));
}

#[test]
fn smtplib_sends_many_messages_on_one_connection() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "");
    let out = python(&format!(
        r#"
import smtplib
from email.message import EmailMessage
s = smtplib.SMTP("127.0.0.1", {port})
s.ehlo("client.test")
assert s.has_extn("pipelining") and s.has_extn("chunking") and s.has_extn("8bitmime") and s.has_extn("smtputf8")
ids = []
for i in range(20):
    m = EmailMessage()
    m["From"] = "sender@sender.test"
    m["To"] = "user{{}}@example.test".format(i)
    m["Subject"] = "message {{}}".format(i)
    m["Message-ID"] = "<m{{}}@client.test>".format(i)
    m.set_content("Grüße, message {{}}\n".format(i), cte="8bit")
    r = s.send_message(m, mail_options=["BODY=8BITMIME"])
    assert r == {{}}, r
print("ok")
s.quit()
"#,
        port = engine.smtp.port()
    ));
    assert_eq!(out.trim(), "ok");
    let msgs = sink.wait_for(20, Duration::from_secs(15));
    assert_eq!(msgs.len(), 20);
    let mut ids: Vec<String> = msgs.iter().filter_map(|m| m.header("Message-ID")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    assert!(msgs.iter().all(|m| m.content.contains("Grüße")));
}

#[test]
fn smtp_source_load_arrives_complete() {
    let sink = Sink::start(sink_addr());
    let engine = Engine::start(EngineConfig {
        cores: 2,
        extra: domain("example.test", sink.addr),
        ..Default::default()
    });
    let (ok, out) = run(
        "smtp-source",
        &[
            "-s",
            "5",
            "-m",
            "200",
            "-l",
            "4096",
            "-f",
            "load@sender.test",
            "-t",
            "sink@example.test",
            &engine.smtp.to_string(),
        ],
    );
    assert!(ok, "{out}");
    let msgs = sink.wait_for(200, Duration::from_secs(30));
    assert_eq!(msgs.len(), 200);
    assert!(msgs.iter().all(|m| m.rcpts == ["sink@example.test"]));
    assert_eq!(engine.metric("bulwark_messages_received_total"), 200.0);
    // Every accepted message was made durable by some commit, and commits were shared.
    let commits = engine.metric("bulwark_spool_commits_total");
    assert!(commits >= 1.0);
    assert!(engine.metric("bulwark_spool_commit_batch_messages_sum") >= 200.0);
    assert!(engine.metric("bulwark_spool_commit_batch_messages_count") == commits);
}

#[test]
fn relay_is_denied_and_counted() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "");
    let (ok, out) = run(
        "swaks",
        &[
            "--server",
            &engine.smtp.to_string(),
            "--from",
            "a@sender.test",
            "--to",
            "victim@elsewhere.test",
        ],
    );
    assert!(!ok);
    assert!(out.contains("550 5.7.1"), "{out}");
    assert!(wait_until(Duration::from_secs(3), || engine.metric(
        "bulwark_smtp_rejections_total{reason=\"relay_denied\"}"
    ) == 1.0));
    assert!(sink.messages().is_empty());
}

#[test]
fn size_and_recipient_limits() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(
        sink.addr,
        "[limits]\nmessage_size = 10000\nrecipients = 2\n",
    );
    let out = python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port})
s.ehlo("c")
assert s.esmtp_features["size"] == "10000", s.esmtp_features
# Refused early from the SIZE parameter.
code, msg = s.mail("a@sender.test", ["SIZE=20000"])
assert code == 552 and msg.startswith(b"5.3.4"), (code, msg)
# Refused after the content, when no SIZE was announced.
assert s.mail("a@sender.test")[0] == 250
assert s.rcpt("u@example.test")[0] == 250
code, msg = s.data("Subject: big\r\n\r\n" + ("x" * 70 + "\r\n") * 200)
assert code == 552 and msg.startswith(b"5.3.4"), (code, msg)
code, _ = s.mail("a@sender.test")
assert code == 250
assert s.rcpt("u1@example.test")[0] == 250
assert s.rcpt("u2@example.test")[0] == 250
code, msg = s.rcpt("u3@example.test")
assert code == 452 and msg.startswith(b"4.5.3"), (code, msg)
code, _ = s.data("Subject: two\r\n\r\nok\r\n")
assert code == 250
s.quit()
print("ok")
"#,
        port = engine.smtp.port()
    ));
    assert_eq!(out.trim(), "ok");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, ["u1@example.test", "u2@example.test"]);
    assert!(wait_until(Duration::from_secs(3), || engine.metric(
        "bulwark_smtp_rejections_total{reason=\"message_size\"}"
    ) == 2.0));
}

#[test]
fn starttls_inbound_and_opportunistic_tls_outbound() {
    let certs = TempDir::new("certs");
    let (sink_cert, sink_key) = make_cert(certs.path(), "localhost");
    let sink = Sink::start_with(
        sink_addr(),
        &[
            "--tls-cert",
            sink_cert.to_str().unwrap(),
            "--tls-key",
            sink_key.to_str().unwrap(),
        ],
    );
    let (cert, key) = make_cert(certs.path(), "mx.bulwark.test");
    let engine = engine_for(
        sink.addr,
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let (ok, out) = run(
        "swaks",
        &[
            "--server",
            &engine.smtp.to_string(),
            "--tls",
            "--from",
            "a@sender.test",
            "--to",
            "u@example.test",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("220 2.0.0 Ready to start TLS"), "{out}");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    let received = msgs[0]
        .content
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_string();
    assert!(received.contains("with ESMTPS id"), "{received}");
    assert!(received.contains("version=TLSv1_3"), "{received}");
    assert!(
        msgs[0].tls,
        "delivery to a STARTTLS-capable route was not encrypted"
    );
    assert_eq!(
        engine.metric("bulwark_tls_handshakes_total{result=\"ok\"}"),
        1.0
    );
}

#[test]
fn starttls_discards_injected_plaintext() {
    let certs = TempDir::new("certs");
    let sink = Sink::start(sink_addr());
    let (cert, key) = make_cert(certs.path(), "mx.bulwark.test");
    let engine = engine_for(
        sink.addr,
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    // The classic STARTTLS command injection: commands pipelined behind STARTTLS in the
    // clear must not be executed after the handshake. Python's ssl wraps the socket after
    // the 220 and then sees whether the server answers the injected commands.
    let out = python(&format!(
        r#"
import socket, ssl
s = socket.create_connection(("127.0.0.1", {port}))
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        l = f.readline()
        lines.append(l)
        if l[3:4] != b"-":
            return lines
reply()
s.sendall(b"EHLO c\r\n"); reply()
s.sendall(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\nRCPT TO:<u@example.test>\r\n")
r = reply()
assert r[0].startswith(b"220"), r
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="mx.bulwark.test")
tf = t.makefile("rb")
def treply():
    lines = []
    while True:
        l = tf.readline()
        lines.append(l)
        if l[3:4] != b"-":
            return lines
# If the injected MAIL had been kept, this RCPT would be accepted.
t.sendall(b"RCPT TO:<u@example.test>\r\n")
r = treply()
assert r[0].startswith(b"503"), r
t.sendall(b"EHLO c\r\n")
r = treply()
assert not any(b"STARTTLS" in l for l in r), r
t.sendall(b"QUIT\r\n"); treply()
print("ok")
"#,
        port = engine.smtp.port()
    ));
    assert_eq!(out.trim(), "ok");
}

/// Each smuggling variant sent over a real socket: no smuggled message ever reaches the
/// downstream server.
#[test]
fn smtp_smuggling_variants_over_the_wire() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "");
    let mut accepted = 0;
    for v in bulwark::smtp::data::SMUGGLING_VARIANTS {
        let mut c = Raw::connect(engine.smtp);
        c.send(b"EHLO attacker.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n");
        let r = c.replies(4);
        assert!(r[3].starts_with("354"), "{r:?}");
        let mut body = b"Subject: outer\r\n\r\nouter".to_vec();
        body.extend_from_slice(v);
        body.extend_from_slice(b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n");
        c.send(&body);
        let r = c.replies(1);
        if v == b"\r\n\x00.\r\n" {
            // Not a line ending problem: one message whose text holds the rest.
            assert!(r[0].starts_with("250"), "{v:?}: {r:?}");
            accepted += 1;
        } else {
            assert!(r[0].starts_with("550 5.6.0"), "{v:?}: {r:?}");
        }
        c.send(b"QUIT\r\n");
        assert!(c.replies(1)[0].starts_with("221"));
    }
    let msgs = sink.wait_for(accepted, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let msgs = if msgs.len() == accepted {
        sink.messages()
    } else {
        msgs
    };
    assert_eq!(msgs.len(), accepted);
    for m in &msgs {
        assert_eq!(m.rcpts, ["u@example.test"]);
        assert_eq!(m.header("Subject").as_deref(), Some("outer"));
    }
    assert_eq!(
        engine.metric("bulwark_smtp_rejections_total{reason=\"bare_line_end\"}"),
        10.0
    );
}

#[test]
fn bdat_and_pipelining_over_the_wire() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "");
    let mut c = Raw::connect(engine.smtp);
    let body = b"Subject: chunked\r\n\r\nfirst chunk\r\n";
    let tail = b"second chunk\r\n";
    let mut pipelined =
        b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<u@example.test>\r\n".to_vec();
    pipelined.extend_from_slice(format!("BDAT {}\r\n", body.len()).as_bytes());
    pipelined.extend_from_slice(body);
    pipelined.extend_from_slice(format!("BDAT {} LAST\r\n", tail.len()).as_bytes());
    pipelined.extend_from_slice(tail);
    pipelined.extend_from_slice(b"QUIT\r\n");
    c.send(&pipelined);
    let r = c.replies(6);
    assert!(r[0].starts_with("250 CHUNKING"), "{r:?}");
    assert!(
        r[1].starts_with("250 2.1.0") && r[2].starts_with("250 2.1.5"),
        "{r:?}"
    );
    assert!(
        r[3].starts_with("250 2.0.0") && r[4].contains("queued as"),
        "{r:?}"
    );
    assert!(r[5].starts_with("221"), "{r:?}");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert!(
        msgs[0]
            .content
            .ends_with("Subject: chunked\r\n\r\nfirst chunk\r\nsecond chunk\r\n"),
        "{}",
        msgs[0].content
    );
}

#[test]
fn idle_client_is_closed_after_command_timeout() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "[smtp]\ncommand_timeout = \"1s\"\n");
    let mut c = Raw::connect(engine.smtp);
    c.send(b"EHLO c\r\n");
    c.replies(1);
    let t = std::time::Instant::now();
    let r = c.replies(1);
    assert!(r[0].starts_with("421 4.4.2"), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert!(c.closed());
}

#[test]
fn error_limit_closes_the_session() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "[smtp]\nmax_errors = 3\n");
    let mut c = Raw::connect(engine.smtp);
    c.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n");
    let r = c.replies(4);
    assert!(r[2].starts_with("500"), "{r:?}");
    assert!(r[3].starts_with("421 4.7.0"), "{r:?}");
    assert!(c.closed());
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "");
    let text = http_get(engine.metrics, "/metrics");
    for name in [
        "bulwark_smtp_connections_total",
        "bulwark_messages_received_total",
        "bulwark_deliveries_total{result=\"delivered\"}",
        "bulwark_deliveries_total{result=\"deferred\"}",
        "bulwark_deliveries_total{result=\"failed\"}",
        "bulwark_queue_messages",
        "bulwark_accept_latency_seconds_bucket",
        "bulwark_delivery_latency_seconds_bucket",
        "bulwark_policy_generation 1",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    assert!(http_get(engine.metrics, "/nope").contains("not found"));
}

/// Regression: the session closed on QUIT before writing its `221`.
#[test]
fn quit_gets_its_221_before_the_connection_closes() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "");
    let mut c = Raw::connect(engine.smtp);
    c.send(b"QUIT\r\n");
    let r = c.replies(1);
    assert_eq!(r, ["221 2.0.0 Bye"]);
    assert!(c.closed());
}

/// One message to u@example.test through `engine`, with swaks.
fn send_one(engine: &Engine) {
    let (ok, out) = run(
        "swaks",
        &[
            "--server",
            &engine.smtp.to_string(),
            "--from",
            "a@s.test",
            "--to",
            "u@example.test",
        ],
    );
    assert!(ok, "{out}");
}

fn route_with_tls(sink: SocketAddr, tls: &str, ca: Option<&std::path::Path>) -> String {
    let ca = ca
        .map(|p| format!("tls_ca = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!("[[domains]]\nname = \"example.test\"\nroute = \"{sink}\"\ntls = \"{tls}\"\n{ca}\n")
}

/// `tls = "required"`: delivered over TLS to a route whose certificate chains to the
/// configured CA; held (deferred, 4.7.x) when the route offers no STARTTLS or presents a
/// certificate from another CA. `tls = "none"`: plaintext even when STARTTLS is offered.
#[test]
fn route_tls_policies() {
    let certs = TempDir::new("tlspolicy");
    let (ca, crt, key) = make_ca_signed(certs.path(), "127.0.0.1");
    let tls_args = [
        "--tls-cert",
        crt.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];

    // Required, verified against the CA: delivered encrypted.
    let sink = Sink::start_with(sink_addr(), &tls_args);
    let engine = Engine::start(EngineConfig {
        extra: route_with_tls(sink.addr, "required", Some(&ca)),
        ..Default::default()
    });
    send_one(&engine);
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1, "{}", engine.log_text());
    assert!(msgs[0].tls);
    drop(engine);

    // None: plaintext although the route offers STARTTLS.
    let engine = Engine::start(EngineConfig {
        extra: route_with_tls(sink.addr, "none", None),
        ..Default::default()
    });
    send_one(&engine);
    let msgs = sink.wait_for(2, Duration::from_secs(10));
    assert_eq!(msgs.len(), 2);
    assert!(!msgs[1].tls);
    drop(engine);

    // Required, but no STARTTLS offered: held, never sent in the clear.
    let plain = Sink::start(sink_addr());
    let engine = Engine::start(EngineConfig {
        extra: route_with_tls(plain.addr, "required", Some(&ca)),
        ..Default::default()
    });
    send_one(&engine);
    assert!(wait_until(Duration::from_secs(5), || engine
        .log_text()
        .contains("4.7.4 TLS is required, but was not offered")));
    assert!(plain.messages().is_empty());
    assert!(engine.metric("bulwark_deliveries_total{result=\"deferred\"}") >= 1.0);
    drop(engine);

    // Required, certificate from another CA: held.
    let other = TempDir::new("othercert");
    let (self_crt, self_key) = make_cert(other.path(), "127.0.0.1");
    let stranger = Sink::start_with(
        sink_addr(),
        &[
            "--tls-cert",
            self_crt.to_str().unwrap(),
            "--tls-key",
            self_key.to_str().unwrap(),
        ],
    );
    let engine = Engine::start(EngineConfig {
        extra: route_with_tls(stranger.addr, "required", Some(&ca)),
        ..Default::default()
    });
    send_one(&engine);
    assert!(
        wait_until(Duration::from_secs(5), || engine
            .log_text()
            .contains("4.7.5 TLS handshake failed")),
        "{}",
        engine.log_text()
    );
    assert!(stranger.messages().is_empty());
}
