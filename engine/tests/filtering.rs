//! Per-domain verdict actions and ordered policy rules, end to end: the real engine,
//! Python's smtplib as the client, a real downstream, the quarantine CLI.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

fn sink_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn config(sink: SocketAddr) -> String {
    format!(
        r#"{plain}
[[domains]]
name = "strict.test"
route = "{sink}"
spam_action = "quarantine"

[[domains]]
name = "lenient.test"
route = "{sink}"
tag_threshold = 4000
spam_threshold = 5000

[[policy_rules]]
name = "wire-fraud"
recipients = ["finance@example.test"]
header = "Subject"
contains = ["wire transfer"]
action = "quarantine"

[[policy_rules]]
name = "partner-spam-tagged"
senders = ["partner.test"]
verdicts = ["spam"]
action = "tag"
"#,
        plain = domain("example.test", sink),
    )
}

/// Sends one message; prints each RCPT's code and the DATA reply's code and text.
fn send(engine: &Engine, from: &str, rcpts: &[&str], subject: &str, body: &str) -> String {
    let rcpts: Vec<String> = rcpts.iter().map(|r| format!("{r:?}")).collect();
    python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("{ip}", {port})
s.ehlo("client.test")
s.mail("{from}")
for r in [{rcpts}]:
    code, text = s.rcpt(r)
    print("rcpt", r, code, text.decode())
code, text = s.data("From: {from}\r\nTo: x@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n")
print("data", code, text.decode())
s.quit()
"#,
        ip = engine.smtp.ip(),
        port = engine.smtp.port(),
        rcpts = rcpts.join(", "),
    ))
}

fn quarantined(engine: &Engine) -> Vec<serde_json::Value> {
    let (ok, text) = engine.quarantine(&["list", "--json"]);
    assert!(ok, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"))
}

#[test]
fn domains_keep_their_own_verdict_actions_and_policy_rules_decide_in_order() {
    let sink = Sink::start(sink_addr());
    let engine = Engine::start(EngineConfig {
        extra: config(sink.addr),
        ..Default::default()
    });

    // Recipients of two policies never share a transaction: the second is deferred,
    // and the refusal of the spam covers the first only.
    let out = send(
        &engine,
        "alice@sender.test",
        &["bob@example.test", "carol@strict.test"],
        "offer",
        GTUBE,
    );
    assert!(out.contains("rcpt bob@example.test 250"), "{out}");
    assert!(
        out.contains("rcpt carol@strict.test 452 4.5.3 Recipient has another filtering policy"),
        "{out}"
    );
    assert!(
        out.contains("data 550 5.7.1 Message refused as spam"),
        "{out}"
    );
    assert_eq!(
        engine.metric("bulwark_smtp_rejections_total{reason=\"policy_split\"}"),
        1.0
    );

    // The client's retry for the strict domain: quarantined there, not refused.
    let out = send(
        &engine,
        "alice@sender.test",
        &["carol@strict.test"],
        "offer",
        GTUBE,
    );
    assert!(out.contains("data 250"), "{out}");
    let q = quarantined(&engine);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["recipients"], serde_json::json!(["carol@strict.test"]));
    assert_eq!(q[0]["verdict"], "spam");

    // The lenient domain's thresholds: GTUBE's score is below them, so delivered clean,
    // and the stamp shows the thresholds it was judged by.
    let out = send(
        &engine,
        "alice@sender.test",
        &["dave@lenient.test"],
        "offer",
        GTUBE,
    );
    assert!(out.contains("data 250"), "{out}");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    let m = &msgs[0];
    assert_eq!(m.rcpts, vec!["dave@lenient.test".to_string()]);
    assert_eq!(m.header("X-Spam-Flag").as_deref(), Some("NO"));
    let result = m.header("X-Bulwark-Result").unwrap_or_default();
    assert!(result.ends_with("-4000-5000"), "{result}");

    // A rule on recipient and Subject: clean mail quarantined, named in the log and metrics.
    let out = send(
        &engine,
        "ceo@outside.test",
        &["finance@example.test"],
        "Urgent WIRE TRANSFER today",
        "Please pay the attached invoice.",
    );
    assert!(out.contains("data 250"), "{out}");
    let q = quarantined(&engine);
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(
        q.iter()
            .any(|m| m["recipients"] == serde_json::json!(["finance@example.test"])),
        "{q:?}"
    );
    assert_eq!(
        engine.metric("bulwark_policy_rule_hits_total{rule=\"wire-fraud\"}"),
        1.0
    );
    assert!(
        engine
            .log_text()
            .lines()
            .any(|l| l.contains("inspected") && l.contains("policy_rule=\"wire-fraud\"")),
        "{}",
        engine.log_text()
    );
    // The same subject to someone else in the domain is not the rule's business.
    let out = send(
        &engine,
        "ceo@outside.test",
        &["bob@example.test"],
        "Urgent WIRE TRANSFER today",
        "Please pay the attached invoice.",
    );
    assert!(out.contains("data 250"), "{out}");
    sink.wait_for(2, Duration::from_secs(10));

    // A rule on sender and verdict: the partner's spam is tagged and delivered instead of
    // refused, with the rule named in the stamp.
    let out = send(
        &engine,
        "news@partner.test",
        &["bob@example.test"],
        "news",
        GTUBE,
    );
    assert!(out.contains("data 250"), "{out}");
    let msgs = sink.wait_for(3, Duration::from_secs(10));
    let m = msgs
        .iter()
        .find(|m| m.mail_from == "news@partner.test")
        .expect("the partner's message was delivered");
    assert_eq!(m.header("X-Spam-Flag").as_deref(), Some("YES"));
    assert_eq!(
        m.header("X-Bulwark-Policy-Rule").as_deref(),
        Some("partner-spam-tagged")
    );
}

#[test]
fn a_bad_policy_rule_stops_the_engine_naming_key_and_line() {
    let dir = TempDir::new("bad-rule");
    let cfg = dir.path().join("bulwark.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname = \"mx.bulwark.test\"\nlisten = [\"127.0.0.1:{}\"]\n[spool]\ndir = \"{}\"\n\n[[policy_rules]]\nname = \"r1\"\nverdicts = [\"worm\"]\naction = \"reject\"\n[[policy_rules]]\nname = \"r2\"\nattachment_types = [\"exe\"]\naction = \"reject\"\n",
            free_port(),
            dir.path().join("spool").display(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy_rules[0].verdicts[0]") && err.contains("line 7"),
        "{err}"
    );
    assert!(err.contains("\"worm\" is not a verdict"), "{err}");
    assert!(
        err.contains("policy_rules[1].attachment_types[0]")
            && err.contains("line 11")
            && err.contains("\"exe\" is not a type"),
        "{err}"
    );
}

/// Regression: a streamed message's first piece was judged as if it were the whole
/// message, so a rule for small mail (`max_size`) fired on a 2 MiB message sent without
/// `SIZE=`.
#[test]
fn a_size_rule_is_not_decided_on_the_first_piece_of_a_streamed_message() {
    let sink = Sink::start(sink_addr());
    let engine = Engine::start(EngineConfig {
        extra: format!(
            "{}[[policy_rules]]\nname = \"small-held\"\nmax_size = 1000000\naction = \"quarantine\"\n",
            domain("example.test", sink.addr)
        ),
        ..Default::default()
    });
    let out = python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("{ip}", {port})
s.ehlo("client.test")
for size in (10_000, 2_000_000):
    s.mail("alice@sender.test")  # no SIZE=
    s.rcpt("bob@example.test")
    line = "lorem ipsum dolor sit amet " * 3 + "\r\n"
    body = line * (size // len(line))
    code, text = s.data("From: alice@sender.test\r\nSubject: size %d\r\n\r\n%s" % (size, body))
    print("data", size, code)
s.quit()
"#,
        ip = engine.smtp.ip(),
        port = engine.smtp.port(),
    ));
    assert!(
        out.contains("data 10000 250") && out.contains("data 2000000 250"),
        "{out}"
    );
    let q = quarantined(&engine);
    assert_eq!(q.len(), 1, "only the small one is held: {q:?}");
    assert_eq!(q[0]["subject"], "size 10000");
    let msgs = sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].content.contains("Subject: size 2000000"));
}
