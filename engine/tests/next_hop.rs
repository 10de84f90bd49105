//! What the delivery side makes of the next hop's EHLO: keywords count only at the start
//! of an extension line, and 8-bit or SMTPUTF8 mail goes only where the next hop takes
//! it (or as plain ASCII when that loses nothing); otherwise it fails with 5.6.3 / 5.6.7
//! as RFC 6152 and RFC 6531 say. The next hop is a small server that advertises exactly
//! the lines each case needs (tests/support/ehlo_server.py).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct NextHop {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl NextHop {
    fn start(ehlo: &[&str]) -> NextHop {
        let dir = TempDir::new("nexthop");
        let log = dir.path().join("transactions.jsonl");
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ehlo_server.py");
        let mut child = Command::new(PYTHON)
            .arg(script)
            .arg(port.to_string())
            .arg(&log)
            .args(ehlo)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        NextHop {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            log,
            _dir: dir,
        }
    }

    fn transactions(&self) -> Vec<serde_json::Value> {
        read_lines(&self.log)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The transaction whose content contains `marker`, waiting for it a while.
    fn find(&self, marker: &str, timeout: Duration) -> Option<serde_json::Value> {
        let mut found = None;
        wait_until(timeout, || {
            found = self
                .transactions()
                .into_iter()
                .find(|t| t["data"].as_str().unwrap_or("").contains(marker));
            found.is_some()
        });
        found
    }
}

impl Drop for NextHop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one message with smtplib: `options` are MAIL parameters, `body` is UTF-8 text.
fn send(engine: &Engine, from: &str, options: &[&str], body: &str) {
    let opts: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
    let out = python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port})
s.sendmail({from:?}, ["u@example.test"], {body:?}.encode("utf-8"), mail_options=[{opts}])
s.quit()
print("sent")
"#,
        port = engine.smtp.port(),
        opts = opts.join(", ")
    ));
    assert_eq!(out.trim(), "sent", "{out}");
}

fn engine_for(hop: &NextHop) -> Engine {
    Engine::start(EngineConfig {
        extra: domain("example.test", hop.addr),
        ..Default::default()
    })
}

fn message(marker: &str, text: &str) -> String {
    format!("Subject: {marker}\r\n\r\n{text}\r\n")
}

#[test]
fn keywords_in_the_greeting_are_not_extensions() {
    // A greeting that names extensions it does not have, SIZE 10 among them.
    let hop = NextHop::start(&[
        "next.test PIPELINING SIZE 10 STARTTLS 8BITMIME SMTPUTF8",
        "HELP",
    ]);
    let engine = engine_for(&hop);
    send(
        &engine,
        "s@sender.test",
        &[],
        &message("greeting", &"word ".repeat(400)),
    );
    let t = hop
        .find("greeting", Duration::from_secs(10))
        .expect("the message was not delivered (SIZE 10 taken from the greeting?)");
    assert_eq!(t["mail"], "MAIL FROM:<s@sender.test>");
}

#[test]
fn eight_bit_and_utf8_mail_goes_only_where_it_is_taken() {
    // No 8BITMIME, no SMTPUTF8.
    let hop = NextHop::start(&["next.test", "PIPELINING", "ENHANCEDSTATUSCODES"]);
    let engine = engine_for(&hop);
    // Declared 8-bit but all ASCII: goes, without BODY=8BITMIME.
    send(
        &engine,
        "s@sender.test",
        &["BODY=8BITMIME"],
        &message("ascii8", "plain"),
    );
    // Really 8-bit: fails with 5.6.3, never sent.
    send(
        &engine,
        "s@sender.test",
        &["BODY=8BITMIME"],
        &message("real8", "café crème"),
    );
    // SMTPUTF8 declared, everything ASCII: goes, without SMTPUTF8.
    send(
        &engine,
        "s@sender.test",
        &["SMTPUTF8"],
        &message("asciiutf8", "plain"),
    );
    // A UTF-8 sender: fails with 5.6.7.
    send(
        &engine,
        "sénder@sender.test",
        &["SMTPUTF8", "BODY=8BITMIME"],
        &message("realutf8", "x"),
    );
    let t = hop
        .find("ascii8", Duration::from_secs(10))
        .expect("ASCII 8BITMIME mail not delivered");
    assert_eq!(t["mail"], "MAIL FROM:<s@sender.test>");
    let t = hop
        .find("asciiutf8", Duration::from_secs(10))
        .expect("ASCII SMTPUTF8 mail not delivered");
    assert_eq!(t["mail"], "MAIL FROM:<s@sender.test>");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = engine.log_text();
            log.contains("5.6.3 the message has 8-bit content")
                && log.contains("5.6.7 the message needs SMTPUTF8")
        }),
        "no 5.6.3 / 5.6.7 failure logged"
    );
    assert!(hop.find("real8", Duration::from_millis(100)).is_none());
    assert!(hop.find("realutf8", Duration::from_millis(100)).is_none());
    // The two messages, and the two bounces about them (sender.test has no mail server).
    assert!(wait_until(Duration::from_secs(5), || engine
        .metric("bulwark_deliveries_total{result=\"failed\"}")
        == 4.0));
    assert_eq!(
        engine.metric("bulwark_deliveries_total{result=\"delivered\"}"),
        2.0
    );

    // A next hop with both extensions gets both messages, with their parameters.
    let hop = NextHop::start(&["next.test", "8BITMIME", "SMTPUTF8"]);
    let engine = engine_for(&hop);
    send(
        &engine,
        "s@sender.test",
        &["BODY=8BITMIME"],
        &message("real8", "café crème"),
    );
    send(
        &engine,
        "sénder@sender.test",
        &["SMTPUTF8", "BODY=8BITMIME"],
        &message("realutf8", "x"),
    );
    let t = hop
        .find("real8", Duration::from_secs(10))
        .expect("8-bit mail not delivered");
    assert_eq!(t["mail"], "MAIL FROM:<s@sender.test> BODY=8BITMIME");
    assert!(t["data"].as_str().unwrap().contains("café crème"));
    let t = hop
        .find("realutf8", Duration::from_secs(10))
        .expect("SMTPUTF8 mail not delivered");
    assert_eq!(
        t["mail"],
        "MAIL FROM:<sénder@sender.test> BODY=8BITMIME SMTPUTF8"
    );
}
