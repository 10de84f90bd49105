//! Content inspection end to end: the real engine with its built-in rules (no
//! `[inspection]` section), real clients (swaks, smtplib), a real downstream.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

fn sink_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn engine_for(sink: SocketAddr, extra: &str) -> Engine {
    Engine::start(EngineConfig {
        extra: format!("{}{extra}", domain("example.test", sink)),
        ..Default::default()
    })
}

fn swaks(engine: &Engine, extra: &[&str]) -> (bool, String) {
    let server = engine.smtp.to_string();
    let mut args = vec![
        "--server",
        server.as_str(),
        "--from",
        "alice@sender.test",
        "--to",
        "bob@example.test",
    ];
    args.extend_from_slice(extra);
    run("swaks", &args)
}

#[test]
fn gtube_is_refused_in_the_session_with_a_reference() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "");
    let (ok, out) = swaks(&engine, &["--header", "Subject: test", "--body", GTUBE]);
    assert!(!ok, "swaks reports the refusal: {out}");
    let reply = out
        .lines()
        .find(|l| l.contains("<** 550"))
        .unwrap_or_else(|| panic!("no 550 in:\n{out}"));
    assert!(
        reply.contains("550 5.7.1 Message refused as spam"),
        "{reply}"
    );
    assert!(reply.contains("reference "), "{reply}");
    // Nothing was queued or delivered, and the metrics and log say why.
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink.messages().is_empty());
    assert_eq!(
        engine.metric("bulwark_inspection_verdicts_total{verdict=\"spam\",action=\"reject\"}"),
        1.0
    );
    assert_eq!(
        engine.metric("bulwark_inspection_rule_hits_total{rule=\"GTUBE\"}"),
        1.0
    );
    let log = engine.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("inspected") && l.contains("GTUBE") && l.contains("reject")),
        "{log}"
    );
}

#[test]
fn delivered_mail_is_stamped_and_inbound_stamps_are_removed() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "");
    // A sender that claims to have been scanned already, and clean.
    let (ok, out) = swaks(
        &engine,
        &[
            "--header",
            "Subject: lunch",
            "--add-header",
            "X-Spam-Flag: NO",
            "--add-header",
            "X-Bulwark-Result: clean--0.000-5-15",
            "--body",
            "See you at noon.",
        ],
    );
    assert!(ok, "{out}");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    let head = m.content.split("\r\n\r\n").next().unwrap_or("");
    assert_eq!(head.matches("X-Spam-Flag:").count(), 1, "{head}");
    assert_eq!(head.matches("X-Bulwark-Result:").count(), 1, "{head}");
    assert_eq!(m.header("X-Spam-Flag").as_deref(), Some("NO"));
    let result = m.header("X-Bulwark-Result").unwrap_or_default();
    assert!(result.starts_with("clean--"), "{result}");
    assert!(
        m.header("X-Spam-Status")
            .unwrap_or_default()
            .starts_with("No, score=")
    );
    assert!(
        m.header("X-Bulwark-Product-Ver")
            .unwrap_or_default()
            .starts_with("Bulwark ")
    );
    // Our stamps come after our Received and before the sender's header fields.
    assert!(m.content.starts_with("Received: from "), "{}", m.content);
    assert!(head.find("X-Bulwark-Result").unwrap_or(0) < head.find("Subject: lunch").unwrap_or(0));
    assert!(m.content.contains("See you at noon."));
}

#[test]
fn spam_above_the_tag_threshold_is_tagged_with_a_subject_prefix() {
    let sink = Sink::start(sink_addr());
    let rules = TempDir::new("rules");
    let file = rules.path().join("local.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname = \"LOCAL_CHEAP_MEDS\"\nclass = \"body\"\npattern = 'cheap\\s+meds'\nflags = \"i\"\nscore = 7.0\ndescribe = \"Sells medicine\"\n",
    )
    .unwrap();
    let engine = engine_for(
        sink.addr,
        &format!(
            "\n[inspection]\nrules = [\"{}\"]\nsubject_tag = \"[SPAM] \"\n",
            file.display()
        ),
    );
    let out = python(&format!(
        r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "alice@sender.test"
m["To"] = "bob@example.test"
m["Subject"] = "offer"
m.set_content("Buy CHEAP   meds here today")
s = smtplib.SMTP("{}", {})
s.send_message(m)
s.quit()
print("sent")
"#,
        engine.smtp.ip(),
        engine.smtp.port()
    ));
    assert_eq!(out.trim(), "sent");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.header("X-Spam-Flag").as_deref(), Some("YES"));
    assert_eq!(m.header("Subject").as_deref(), Some("[SPAM] offer"));
    let head = m.content.split("\r\n\r\n").next().unwrap_or("");
    assert_eq!(
        head.to_ascii_lowercase().matches("\r\nsubject:").count(),
        1,
        "{head}"
    );
    let detail = m.header("X-Bulwark-Result-Detail").unwrap_or_default();
    assert!(detail.contains("LOCAL_CHEAP_MEDS=7"), "{detail}");
    let result = m.header("X-Bulwark-Result").unwrap_or_default();
    assert!(result.starts_with("spam--"), "{result}");
    let score: f64 = result[6..]
        .split('-')
        .next()
        .unwrap_or("")
        .parse()
        .unwrap_or(0.0);
    assert!((7.0..15.0).contains(&score), "{result}");
}

#[test]
fn a_bad_rule_file_stops_the_engine_with_the_file_and_line() {
    let rules = TempDir::new("rules");
    let file = rules.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname = \"X\"\nclass = \"nonsense\"\npattern = \"a\"\n",
    )
    .unwrap();
    let cfg = rules.path().join("bulwark.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname = \"mx.bulwark.test\"\nlisten = [\"127.0.0.1:{}\"]\n[spool]\ndir = \"{}\"\n[inspection]\nrules = [\"{}\"]\n",
            free_port(),
            rules.path().join("spool").display(),
            file.display()
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
    assert!(err.contains("bad.toml:2: rule X: unknown class"), "{err}");
}

#[test]
fn bulwark_learn_trains_a_model_the_engine_scores_with() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpus/train");
    let dir = TempDir::new("model");
    let model = dir.path().join("model.bwm");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["learn", "--spam"])
        .arg(format!("{corpus}/spam"))
        .arg("--ham")
        .arg(format!("{corpus}/ham"))
        .arg("--model")
        .arg(&model)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("learned 500 spam and 2500 ham messages"),
        "{text}"
    );

    let sink = Sink::start(sink_addr());
    let engine = engine_for(
        sink.addr,
        &format!(
            "\n[inspection]\nmodel = \"{}\"\nspam_threshold = 1000\n",
            model.display()
        ),
    );
    let out = python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("{}", {})
s.sendmail("a@sender.test", ["bob@example.test"], "Subject: meeting\r\nFrom: a@sender.test\r\n\r\nFREE!!! Click here to claim your cash prize, limited time offer, act now!\r\n")
s.quit()
print("sent")
"#,
        engine.smtp.ip(),
        engine.smtp.port()
    ));
    assert_eq!(out.trim(), "sent");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    let head = msgs[0]
        .content
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_string();
    let status = head.split("X-Spam-Status:").nth(1).unwrap_or("");
    assert!(
        status.contains("BAYES_"),
        "the classifier scored the message: {head}"
    );
}

fn quarantine_list(engine: &Engine, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(extra);
    let (ok, text) = engine.quarantine(&args);
    assert!(ok, "bulwark quarantine list failed: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"))
}

#[test]
fn quarantined_spam_is_kept_per_recipient_across_kill_9_and_released_through_the_queue() {
    let sink = Sink::start(sink_addr());
    let mut engine = engine_for(sink.addr, "\n[inspection]\nspam_action = \"quarantine\"\n");
    let out = python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("{}", {})
r = s.sendmail("alice@sender.test", ["bob@example.test", "carol@example.test"],
    "From: alice@sender.test\r\nSubject: =?utf-8?q?caf=C3=A9_deal?=\r\n\r\n{GTUBE}\r\n")
s.quit()
print("accepted", r)
"#,
        engine.smtp.ip(),
        engine.smtp.port()
    ));
    assert_eq!(
        out.trim(),
        "accepted {}",
        "a quarantined message is accepted"
    );
    assert_eq!(
        engine.metric("bulwark_inspection_verdicts_total{verdict=\"spam\",action=\"quarantine\"}"),
        1.0
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sink.messages().is_empty(),
        "quarantined mail is not delivered"
    );
    assert!(engine.queue_list().is_empty(), "nor queued");

    let list = quarantine_list(&engine, &[]);
    assert_eq!(list.len(), 1, "{list:?}");
    let q = &list[0];
    let id = q["id"].as_str().unwrap().to_string();
    assert_eq!(q["verdict"], "spam");
    assert_eq!(q["subject"], "café deal");
    assert_eq!(q["sender"], "alice@sender.test");
    assert!(q["rules"].as_array().unwrap().iter().any(|r| r == "GTUBE"));
    assert!(q["expires"].as_u64().unwrap() >= q["arrival"].as_u64().unwrap() + 30 * 86400 - 1);
    assert_eq!(
        quarantine_list(&engine, &["--recipient", "carol@example.test"]).len(),
        1
    );
    assert!(quarantine_list(&engine, &["--recipient", "dave@example.test"]).is_empty());
    let (ok, shown) = engine.quarantine(&["show", &id]);
    assert!(ok, "{shown}");
    assert!(shown.contains("verdict:     spam"), "{shown}");
    assert!(shown.contains("X-Spam-Flag: YES"), "{shown}");
    assert!(shown.contains(GTUBE), "{shown}");

    // A crash keeps it.
    engine.restart();
    assert_eq!(quarantine_list(&engine, &[]).len(), 1);

    // Released for one recipient: delivered through the queue under a new id, saying so.
    let (ok, out) = engine.quarantine(&["release", &id, "--recipient", "bob@example.test"]);
    assert!(ok, "{out}");
    assert!(out.contains("released to bob@example.test as "), "{out}");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, vec!["bob@example.test".to_string()]);
    let released = msgs[0].header("X-Bulwark-Released").unwrap_or_default();
    assert!(
        released.starts_with(&format!("from quarantine {id} by ")),
        "{released}"
    );
    assert!(msgs[0].content.contains(GTUBE));
    // Carol's copy stays; releasing Bob's again is an error naming him.
    let left = quarantine_list(&engine, &[]);
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0]["recipients"],
        serde_json::json!(["carol@example.test"])
    );
    let (ok, out) = engine.quarantine(&["release", &id, "--recipient", "bob@example.test"]);
    assert!(!ok);
    assert!(
        out.contains("not in quarantine for bob@example.test"),
        "{out}"
    );

    // Deleted: gone, and it never reaches the sink.
    let (ok, out) = engine.quarantine(&["delete", &id]);
    assert!(ok, "{out}");
    assert!(quarantine_list(&engine, &[]).is_empty());
    let (ok, out) = engine.quarantine(&["show", &id]);
    assert!(!ok);
    assert!(
        out.contains(&format!("no message {id} in quarantine")),
        "{out}"
    );
    let (ok, out) = engine.quarantine(&["show", "../../etc/passwd"]);
    assert!(!ok);
    assert!(out.contains("is not a queue id"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        engine.metric("bulwark_quarantine_operations_total{op=\"released\"}"),
        1.0
    );
    assert_eq!(
        engine.metric("bulwark_quarantine_operations_total{op=\"deleted\"}"),
        1.0
    );
}

#[test]
fn a_streamed_message_is_quarantined_whole() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "\n[inspection]\nspam_action = \"quarantine\"\n");
    // Larger than what a session keeps in memory: it streams to the spool.
    let out = python(&format!(
        r#"
import smtplib
body = "{GTUBE}\r\n" + ("filler line of a large message\r\n" * 200000) + "the end\r\n"
s = smtplib.SMTP("{}", {})
r = s.sendmail("alice@sender.test", ["bob@example.test"], "Subject: big\r\n\r\n" + body)
s.quit()
print("accepted", r, len(body))
"#,
        engine.smtp.ip(),
        engine.smtp.port()
    ));
    assert!(out.starts_with("accepted {}"), "{out}");
    assert_eq!(engine.metric("bulwark_messages_streamed_total"), 1.0);
    let list = quarantine_list(&engine, &[]);
    assert_eq!(list.len(), 1, "{list:?}");
    let size = list[0]["size"].as_u64().unwrap();
    assert!(size > 6_400_000, "{size}");
    // The stored copy is the whole message, and the spool keeps nothing of it.
    let id = list[0]["id"].as_str().unwrap();
    let file = engine.spool.join("quarantine").join(format!("{id}.bwq"));
    let stored = std::fs::read(&file).unwrap();
    assert!(stored.ends_with(b"the end\r\n"));
    assert!(engine.queue_list().is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.messages().is_empty());
}

#[test]
fn quarantined_mail_is_removed_after_its_retention() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(
        sink.addr,
        "\n[inspection]\nspam_action = \"quarantine\"\n[quarantine]\nretention = \"2s\"\n",
    );
    let (ok, out) = swaks(&engine, &["--header", "Subject: t", "--body", GTUBE]);
    assert!(ok, "{out}");
    assert_eq!(quarantine_list(&engine, &[]).len(), 1);
    assert!(
        wait_until(Duration::from_secs(10), || quarantine_list(&engine, &[])
            .is_empty()),
        "still there after its retention"
    );
    assert_eq!(
        engine.metric("bulwark_quarantine_operations_total{op=\"expired\"}"),
        1.0
    );
    assert!(sink.messages().is_empty());
}

#[test]
fn phishing_links_and_lookalikes_are_caught() {
    let sink = Sink::start(sink_addr());
    let dir = TempDir::new("phish");
    let list = dir.path().join("blocklist.txt");
    std::fs::write(&list, "# a feed\nhttp://login.evil.test/account/\n").unwrap();
    let engine = engine_for(
        sink.addr,
        &format!("\n[inspection]\nurl_blocklist = [\"{}\"]\n", list.display()),
    );
    let send = |from: &str, html: &str| {
        python(&format!(
            r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "{from}"
m["To"] = "bob@example.test"
m["Subject"] = "account notice"
m["Date"] = "Tue, 1 Dec 2026 10:00:00 +0000"
m["Message-ID"] = "<n@x.test>"
m.set_content("See the HTML part.")
m.add_alternative('''{html}''', subtype="html")
s = smtplib.SMTP("{}", {})
try:
    s.send_message(m)
    print("250")
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode())
s.quit()
"#,
            engine.smtp.ip(),
            engine.smtp.port()
        ))
        .trim()
        .to_string()
    };
    // A link on the blocklist (under a listed path, on a subdomain's suffix).
    let r = send(
        "notice@sender.test",
        "<p>Please <a href=\"https://login.evil.test/account/verify?id=7\">sign in</a>.</p>",
    );
    assert!(
        r.starts_with("550 5.7.1 Message refused as phishing"),
        "{r}"
    );
    // The text shows PayPal's address, the link goes to a look-alike of it.
    let r = send(
        "service@sender.test",
        "<p><a href=\"https://www.paypa1.com/signin\">https://www.paypal.com/signin</a></p>",
    );
    assert!(
        r.starts_with("550 5.7.1 Message refused as phishing"),
        "{r}"
    );
    // A sender imitating the gateway's own domain, and a shortened link: scored, named,
    // delivered (neither alone is phishing).
    let r = send(
        "it@examp1e.test",
        "<p>Your mailbox is full: <a href=\"https://bit.ly/x1\">https://bit.ly/x1</a></p>",
    );
    assert_eq!(r, "250");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    let head = msgs[0]
        .content
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_string();
    let status = head.split("X-Spam-Status:").nth(1).unwrap_or("");
    assert!(status.contains("PHISH_LOOKALIKE_FROM"), "{head}");
    assert!(status.contains("URI_SHORTENER"), "{head}");
    assert_eq!(
        engine.metric("bulwark_inspection_verdicts_total{verdict=\"phishing\",action=\"reject\"}"),
        2.0
    );
    assert_eq!(
        engine.metric("bulwark_inspection_rule_hits_total{rule=\"PHISH_URL_BLOCKLISTED\"}"),
        1.0
    );
    assert_eq!(
        engine.metric("bulwark_inspection_rule_hits_total{rule=\"PHISH_DECEPTIVE_LINK\"}"),
        1.0
    );
}

#[test]
fn a_bad_blocklist_line_stops_the_engine_with_file_and_line() {
    let dir = TempDir::new("badlist");
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "good.test/\n\nnot a url at all\n").unwrap();
    let cfg = dir.path().join("bulwark.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname = \"mx.bulwark.test\"\nlisten = [\"127.0.0.1:{}\"]\n[spool]\ndir = \"{}\"\n[inspection]\nurl_blocklist = [\"{}\"]\nbrands = [\"not a domain!\"]\n",
            free_port(),
            dir.path().join("spool").display(),
            list.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["check-config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(err.contains("inspection.brands"), "{err}");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("brands = [\"not a domain!\"]\n", ""),
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
        err.contains(&format!("{}: line 3:", list.display())),
        "{err}"
    );
}

#[test]
fn spam_past_the_first_piece_of_a_streamed_message_is_found_by_the_full_scan() {
    let sink = Sink::start(sink_addr());
    let engine = engine_for(sink.addr, "");
    // 600 KiB of harmless text, then GTUBE: only a scan of the whole message sees it.
    let out = python(&format!(
        r#"
import smtplib
body = ("an ordinary line of a long report\r\n" * 18000) + "{GTUBE}\r\n"
s = smtplib.SMTP("{}", {})
try:
    s.sendmail("alice@sender.test", ["bob@example.test"], "Subject: report\r\n\r\n" + body)
    print("250")
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode())
s.quit()
"#,
        engine.smtp.ip(),
        engine.smtp.port()
    ));
    assert!(
        out.trim().starts_with("550 5.7.1 Message refused as spam"),
        "{out}"
    );
    assert_eq!(engine.metric("bulwark_messages_streamed_total"), 1.0);
    assert_eq!(
        engine.metric("bulwark_inspection_full_scans_total{result=\"stronger\"}"),
        1.0
    );
    assert!(engine.log_text().contains("inspected whole"));
    // Refused after it was durable: finished in the spool, never delivered.
    std::thread::sleep(Duration::from_millis(500));
    assert!(engine.queue_list().is_empty());
    assert!(sink.messages().is_empty());
    // A clean long message goes through, scanned whole.
    let out = python(&format!(
        r#"
import smtplib
body = "an ordinary line of a long report\r\n" * 18000
s = smtplib.SMTP("{}", {})
s.sendmail("alice@sender.test", ["bob@example.test"], "Subject: report 2\r\n\r\n" + body)
s.quit()
print("250")
"#,
        engine.smtp.ip(),
        engine.smtp.port()
    ));
    assert_eq!(out.trim(), "250");
    assert_eq!(sink.wait_for(1, Duration::from_secs(10)).len(), 1);
    assert_eq!(
        engine.metric("bulwark_inspection_full_scans_total{result=\"same\"}"),
        1.0
    );
}

#[test]
fn an_approved_sender_skips_spam_scoring_but_not_the_phishing_checks() {
    let sink = Sink::start(sink_addr());
    let dir = TempDir::new("approved");
    let list = dir.path().join("blocklist.txt");
    std::fs::write(&list, "evil.test/\n").unwrap();
    let engine = engine_for(
        sink.addr,
        &format!(
            "\n[senders]\napproved = [\"partner@sender.test\"]\n[inspection]\nurl_blocklist = [\"{}\"]\n",
            list.display()
        ),
    );
    let send = |from: &str, body: &str| {
        let server = engine.smtp.to_string();
        run(
            "swaks",
            &[
                "--server",
                &server,
                "--from",
                from,
                "--to",
                "bob@example.test",
                "--header",
                "Subject: partner news",
                "--body",
                body,
            ],
        )
    };
    // GTUBE from the approved partner is delivered, its score still stamped.
    let (ok, out) = send("partner@sender.test", GTUBE);
    assert!(ok, "{out}");
    let msgs = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].header("X-Spam-Flag").as_deref(), Some("NO"));
    assert!(
        msgs[0]
            .header("X-Bulwark-Result-Detail")
            .unwrap_or_default()
            .contains("GTUBE=1000")
    );
    // The same from anyone else is refused; a blocklisted link is refused even from
    // the approved partner.
    let (ok, out) = send("other@sender.test", GTUBE);
    assert!(
        !ok && out.contains("550 5.7.1 Message refused as spam"),
        "{out}"
    );
    let (ok, out) = send("partner@sender.test", "see http://evil.test/login now");
    assert!(
        !ok && out.contains("550 5.7.1 Message refused as phishing"),
        "{out}"
    );
    assert_eq!(sink.messages().len(), 1);
}
