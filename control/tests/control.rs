//! The control service, its CLI, and an engine following what it publishes: all real
//! processes over real sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn directory_senders_and_ips_reach_the_engine() {
    let dir = tmp("lists");
    let (c, _engine, smtp, _) = control_and_engine(&dir);
    let (ok, out) = cli(
        &c,
        &["domain", "add", "example.test", "--route", "127.0.0.1:2526"],
    );
    assert!(ok, "{out}");
    assert!(
        eventually("250", || rcpt_from(
            smtp,
            "127.0.0.1",
            "a@b.test",
            "anyone@example.test"
        ))
        .starts_with("250")
    );

    let csv = dir.join("users.csv");
    std::fs::write(&csv, "Email,Name\nalice@example.test,Alice\nbad;two@example.test,X\nbob@example.test,\"Smith, Bob\"\nno-at,Y\n").unwrap();
    let (ok, out) = cli(
        &c,
        &["directory", "import", "example.test", csv.to_str().unwrap()],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("line 3:") && out.contains("line 5:"), "{out}");
    assert!(out.contains("nothing was imported"), "{out}");
    let (_, listed) = cli(&c, &["directory", "list", "example.test"]);
    assert_eq!(listed.trim(), "");
    let (ok, out) = cli(
        &c,
        &[
            "directory",
            "import",
            "example.test",
            csv.to_str().unwrap(),
            "--skip-invalid",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("imported 2 addresses"), "{out}");
    let (_, listed) = cli(&c, &["directory", "list", "example.test"]);
    assert_eq!(
        listed.trim(),
        "alice@example.test\tAlice\nbob@example.test\tSmith, Bob"
    );
    assert!(
        eventually("550 5.1.1", || rcpt_from(
            smtp,
            "127.0.0.1",
            "a@b.test",
            "carol@example.test"
        ))
        .starts_with("550 5.1.1")
    );
    assert!(rcpt_from(smtp, "127.0.0.1", "a@b.test", "alice@example.test").starts_with("250"));

    let (ok, out) = cli(&c, &["sender", "block", "*.spam.test"]);
    assert!(ok, "{out}");
    assert!(
        eventually("550 5.7.1", || rcpt_from(
            smtp,
            "127.0.0.1",
            "x@mx.spam.test",
            "alice@example.test"
        ))
        .starts_with("550 5.7.1")
    );
    let (ok, out) = cli(
        &c,
        &[
            "sender",
            "approve",
            "good@mx.spam.test",
            "--domain",
            "example.test",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        eventually("250", || rcpt_from(
            smtp,
            "127.0.0.1",
            "good@mx.spam.test",
            "alice@example.test"
        ))
        .starts_with("250")
    );
    let (ok, out) = cli(&c, &["sender", "block", "not a pattern"]);
    assert!(!ok && out.contains("400 Bad Request: pattern:"), "{out}");
    let (_, listed) = cli(&c, &["sender", "list"]);
    assert!(
        listed.contains("blocked\t*.spam.test\t*")
            && listed.contains("approved\tgood@mx.spam.test\texample.test"),
        "{listed}"
    );
    let (ok, _) = cli(&c, &["sender", "remove", "*.spam.test"]);
    assert!(ok);

    let (ok, out) = cli(&c, &["ip", "block", "127.0.0.2"]);
    assert!(ok, "{out}");
    assert!(
        eventually("554 5.7.1", || rcpt_from(
            smtp,
            "127.0.0.2",
            "a@b.test",
            "alice@example.test"
        ))
        .starts_with("554 5.7.1")
    );
    assert!(rcpt_from(smtp, "127.0.0.3", "a@b.test", "alice@example.test").starts_with("250"));
    let (ok, out) = cli(&c, &["ip", "block", "10.0.0.0/99"]);
    assert!(!ok && out.contains("cidr:"), "{out}");
    let (_, listed) = cli(&c, &["ip", "list"]);
    assert_eq!(listed.trim(), "block\t127.0.0.2");
    let (ok, _) = cli(&c, &["ip", "remove", "127.0.0.2"]);
    assert!(ok);
    assert!(
        eventually("250", || rcpt_from(
            smtp,
            "127.0.0.2",
            "a@b.test",
            "alice@example.test"
        ))
        .starts_with("250")
    );
}

#[test]
fn api_auth_validation_and_cli() {
    let dir = tmp("api");
    let c = start_control(&dir, &dir.join("shm/policy"), &[]);
    let (status, body) = http(&c.url, "GET", "/api/v1/domains", None, None);
    assert_eq!(status, 401, "{body}");
    let (status, _) = http(&c.url, "GET", "/api/v1/domains", Some("wrong"), None);
    assert_eq!(status, 401);
    let (status, doc) = http(&c.url, "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    // --url and --token go before the subcommand as well as after it.
    let out = Command::new(CONTROL)
        .args(["--url", &c.url, "--token", &c.token, "domain", "list"])
        .env_remove("BULWARK_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "global options before the subcommand were refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Some(c.token.as_str());
    for (body, field) in [
        (r#"{"name":"a.test","route":"host:99999"}"#, "route"),
        (r#"{"name":"bad name","route":"127.0.0.1:25"}"#, "name"),
        (r#"{"route":"127.0.0.1:25"}"#, "name"),
        (r#"{"name":"a.test","route":25}"#, "route"),
        (
            r#"{"name":"a.test","route":"127.0.0.1:25","colour":"red"}"#,
            "body",
        ),
        (r#"not json"#, "body"),
        (r#"[1]"#, "body"),
    ] {
        let (status, err) = http(&c.url, "POST", "/api/v1/domains", t, Some(body));
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["field"], field, "{body}: {err}");
        assert!(err["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (ok, out) = cli(
        &c,
        &["domain", "add", "Example.Test", "--route", "127.0.0.1:2526"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("added example.test -> 127.0.0.1:2526"),
        "{out}"
    );
    let (ok, out) = cli(
        &c,
        &["domain", "add", "example.test", "--route", "127.0.0.1:2526"],
    );
    assert!(!ok);
    assert!(
        out.contains("409") && out.contains("already exists"),
        "{out}"
    );
    let (ok, out) = cli(
        &c,
        &[
            "domain",
            "add",
            "other.test",
            "--route",
            "mail.other.test:0",
        ],
    );
    assert!(!ok);
    assert!(out.contains("400 Bad Request: route:"), "{out}");
    let (ok, out) = cli(
        &c,
        &[
            "domain",
            "add",
            "secure.test",
            "--route",
            "127.0.0.1:2527",
            "--tls",
            "required",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &c,
        &[
            "domain",
            "add",
            "odd.test",
            "--route",
            "127.0.0.1:2527",
            "--tls",
            "sometimes",
        ],
    );
    assert!(!ok && out.contains("400 Bad Request: tls:"), "{out}");
    let (ok, out) = cli(&c, &["domain", "list"]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        "example.test\t127.0.0.1:2526\topportunistic\nsecure.test\t127.0.0.1:2527\trequired"
    );
    let (ok, out) = cli(&c, &["domain", "remove", "nowhere.test"]);
    assert!(!ok && out.contains("404"), "{out}");
    let (ok, out) = cli(&c, &["snapshot", "show"]);
    assert!(ok, "{out}");
    assert!(out.starts_with("generation "), "{out}");
    let out = Command::new(CONTROL)
        .args(["domain", "list", "--url", &c.url])
        .env_remove("BULWARK_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token"));
    let _ = c.config;
}

/// A domain added through the CLI is accepted by a running engine that follows the
/// published snapshot, without a restart; `snapshot show` reports the engine's generation.
#[test]
fn engine_follows_what_control_publishes() {
    let dir = tmp("follow");
    let (c, _engine, smtp, metrics) = control_and_engine(&dir);
    let rcpt = |to: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", smtp)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<{to}>\r\nQUIT\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .nth(3)
            .unwrap_or("")
            .to_string()
    };
    assert!(rcpt("u@new.test").starts_with("550 5.7.1"));
    let (ok, out) = cli(
        &c,
        &["domain", "add", "new.test", "--route", "127.0.0.1:2526"],
    );
    assert!(ok, "{out}");
    let end = Instant::now() + Duration::from_secs(2);
    let mut reply = rcpt("u@new.test");
    while !reply.starts_with("250") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        reply = rcpt("u@new.test");
    }
    assert!(reply.starts_with("250 2.1.5"), "{reply}");
    // The core that answered has the new policy; every core converges within
    // milliseconds (idle ones check every 5 ms), and `snapshot show` reports the
    // generation all of them apply.
    let (ok, out) = cli(&c, &["snapshot", "show"]);
    assert!(ok, "{out}");
    let generation = out
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(',')
        .to_string();
    let want = format!("engine 127.0.0.1:{metrics}: generation {generation}");
    let end = Instant::now() + Duration::from_secs(2);
    let mut out = out;
    while !out.contains(&want) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
        out = cli(&c, &["snapshot", "show"]).1;
    }
    assert!(out.contains(&want), "{out}");
    let (ok, _) = cli(&c, &["domain", "remove", "new.test"]);
    assert!(ok);
    let end = Instant::now() + Duration::from_secs(2);
    while !rcpt("u@new.test").starts_with("550") {
        assert!(Instant::now() < end, "removal was not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regression: removing a sender that is not listed answered 500 instead of 404.
#[test]
fn removing_an_unlisted_sender_is_404_not_500() {
    let dir = tmp("unlisted");
    let c = start_control(&dir, &dir.join("shm/policy"), &[]);
    let t = Some(c.token.as_str());
    let (status, body) = http(
        &c.url,
        "DELETE",
        "/api/v1/senders?pattern=nobody.test",
        t,
        None,
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(&c.url, "DELETE", "/api/v1/senders?pattern=", t, None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "pattern");
}

/// An external client generated from the OpenAPI document (schemathesis) finds no
/// server error anywhere in the API.
#[test]
fn schemathesis_finds_no_server_errors() {
    let dir = tmp("schemathesis");
    let c = start_control(&dir, &dir.join("shm/policy"), &[]);
    let out = Command::new("schemathesis")
        .current_dir(&dir)
        .args([
            "run",
            &format!("{}/api/v1/openapi.json", c.url),
            "--checks",
            "not_a_server_error",
            "-n",
            "40",
            "--seed",
            "1",
        ])
        .args(["-H", &format!("Authorization: Bearer {}", c.token)])
        .output()
        .expect("schemathesis is installed by scripts/setup.sh (pip install schemathesis)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    assert!(text.contains("passed"), "{text}");
}

/// 1000 policy changes published while bulwark-load sends at full speed: every
/// transaction is answered correctly (the changes never touch the load's domain), the
/// engine ends on the last generation, and every accepted message arrives whole.
#[test]
fn thousand_policy_changes_under_load() {
    let load = Path::new(CONTROL).with_file_name("bulwark-load");
    assert!(
        load.exists(),
        "build the workspace first: {} is missing",
        load.display()
    );
    let dir = tmp("thousand");
    let sink_port = free_port();
    let report = dir.join("sink.json");
    let _sink = Proc(
        Command::new(&load)
            .args([
                "sink",
                "--threads",
                "1",
                "--listen",
                &format!("127.0.0.1:{sink_port}"),
                "--report",
            ])
            .arg(&report)
            .stderr(std::fs::File::create(dir.join("sink.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    // Regression (CI, once): the sink was not listening after 20 s and its errors had
    // gone to /dev/null; they are shown now.
    wait_port_or(sink_port, || {
        std::fs::read_to_string(dir.join("sink.log")).unwrap_or_default()
    });
    let (c, _engine, smtp, metrics) = control_and_engine(&dir);
    let (ok, out) = cli(
        &c,
        &[
            "domain",
            "add",
            "example.test",
            "--route",
            &format!("127.0.0.1:{sink_port}"),
        ],
    );
    assert!(ok, "{out}");
    assert!(
        eventually("250", || rcpt_from(
            smtp,
            "127.0.0.1",
            "a@b.test",
            "user@example.test"
        ))
        .starts_with("250")
    );

    let sender = Command::new(&load)
        .args([
            "send",
            "--target",
            &format!("127.0.0.1:{smtp}"),
            "--connections",
            "20",
            "--threads",
            "1",
            "--duration",
            "6",
            "--size",
            "2048",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Some(c.token.as_str());
    let mut last = 0u64;
    for i in 0..500 {
        let pattern = format!("x{i}.example.org");
        let (status, body) = http(
            &c.url,
            "POST",
            "/api/v1/senders",
            t,
            Some(&format!(r#"{{"pattern":"{pattern}","action":"blocked"}}"#)),
        );
        assert_eq!(status, 201, "{body}");
        let (status, body) = http(
            &c.url,
            "DELETE",
            &format!("/api/v1/senders?pattern={pattern}"),
            t,
            None,
        );
        assert_eq!(status, 200, "{body}");
        last = body["generation"].as_u64().unwrap();
    }
    let out = sender.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let accepted = r["accepted"].as_u64().unwrap();
    assert!(accepted > 100, "{r}");
    assert_eq!(r["rejected"], 0, "wrongly answered transactions: {r}");
    assert_eq!(r["errors"], 0, "failed transactions: {r}");

    let generation = || -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", metrics)).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("bulwark_policy_generation "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let end = Instant::now() + Duration::from_secs(2);
    while generation() != last && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        generation(),
        last,
        "the engine did not reach the last generation"
    );
    let end = Instant::now() + Duration::from_secs(20);
    let received = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null)
    };
    while received()["received"].as_u64().unwrap_or(0) < accepted && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rep = received();
    assert_eq!(rep["received"].as_u64().unwrap_or(0), accepted, "{rep}");
    assert_eq!(rep["incomplete"], 0, "{rep}");
}

/// Limits set through the API reach a running engine's next transaction.
#[test]
fn limits_reach_the_engine() {
    let dir = tmp("limits");
    let (c, _engine, smtp, _) = control_and_engine(&dir);
    let (ok, out) = cli(
        &c,
        &["domain", "add", "example.test", "--route", "127.0.0.1:2526"],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(&c, &["limits", "show"]);
    assert!(ok && out.contains("message_size\t52428800"), "{out}");
    let t = Some(c.token.as_str());
    let (status, body) = http(
        &c.url,
        "PUT",
        "/api/v1/limits",
        t,
        Some(r#"{"recipients": 0}"#),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("recipients")),
        "{body}"
    );
    let (status, body) = http(&c.url, "PUT", "/api/v1/limits", t, Some(r#"{}"#));
    assert_eq!(status, 400, "{body}");
    let (ok, out) = cli(
        &c,
        &[
            "limits",
            "set",
            "--message-size",
            "2048",
            "--recipients",
            "1",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("message_size\t2048") && out.contains("recipients\t1"),
        "{out}"
    );
    let ehlo_size = || {
        let mut s = TcpStream::connect(("127.0.0.1", smtp)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "EHLO c\r\nMAIL FROM:<a@b.test> SIZE=4000\r\nQUIT\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let end = Instant::now() + Duration::from_secs(2);
    let mut out = ehlo_size();
    while !out.contains("250-SIZE 2048") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        out = ehlo_size();
    }
    assert!(out.contains("250-SIZE 2048"), "{out}");
    assert!(out.contains("552 5.3.4"), "{out}");
}

/// `rules import` compiles on the service, reports what it skipped with file and line,
/// and publishes the compiled set beside the snapshot; the engine loads it without a
/// restart and scores with it. `rules remove` takes the engine back to its own rules;
/// `learn` trains and publishes a model.
#[test]
fn rules_and_models_published_by_control_reach_the_engine() {
    let dir = tmp("rules");
    let (c, _engine, smtp, metrics) = control_and_engine(&dir);
    let (ok, out) = cli(
        &c,
        &["domain", "add", "fleet.test", "--route", "127.0.0.1:9"],
    );
    assert!(ok, "{out}");
    let before = eventually("250", || send_message(smtp, "the fleetword is here"));
    assert!(before.starts_with("250"), "{before}");

    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("fleet.toml"),
        "[[rule]]\nname = \"FLEET_RULE\"\nclass = \"body\"\npattern = 'fleetword'\nscore = 20.0\n",
    )
    .unwrap();
    std::fs::write(
        rules.join("local.cf"),
        "body LOCAL_OK /another phrase/\nscore LOCAL_OK 0.5\n\nheader LOCAL_EVAL eval:check_no_such_thing()\n",
    )
    .unwrap();
    let (ok, out) = cli(
        &c,
        &["rules", "import", rules.to_str().unwrap(), "--verbose"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("FLEET_RULE") && out.contains("hyperscan"),
        "{out}"
    );
    assert!(
        out.contains("skipped local.cf:4: LOCAL_EVAL:"),
        "the skipped rule is named with its file and line:\n{out}"
    );
    assert!(
        out.contains("imported 2 files and published generation"),
        "{out}"
    );
    let reply = eventually("550", || send_message(smtp, "the fleetword is here"));
    assert!(
        reply.starts_with("550 5.7.1 Message refused as spam"),
        "{reply}"
    );
    assert!(
        metric(
            metrics,
            "bulwark_inspection_rule_hits_total{rule=\"FLEET_RULE\"} "
        ) >= 1.0
    );
    let (ok, out) = cli(&c, &["rules", "show"]);
    assert!(
        ok && out.contains("skipped") && out.contains("sha256 "),
        "{out}"
    );

    // A rule file that does not parse: 400 with the file and line, nothing published.
    std::fs::write(
        rules.join("bad.toml"),
        "[[rule]]\nname = \"B\"\nclass = \"nope\"\n",
    )
    .unwrap();
    let (ok, out) = cli(
        &c,
        &["rules", "import", rules.join("bad.toml").to_str().unwrap()],
    );
    assert!(!ok);
    assert!(out.contains("400") && out.contains("bad.toml:2"), "{out}");
    assert!(send_message(smtp, "the fleetword again").starts_with("550"));

    let (ok, out) = cli(&c, &["rules", "remove"]);
    assert!(ok, "{out}");
    let reply = eventually("250", || send_message(smtp, "the fleetword is back"));
    assert!(reply.starts_with("250"), "{reply}");

    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpus/train");
    let (ok, out) = cli(
        &c,
        &[
            "learn",
            "--spam",
            &format!("{corpus}/spam"),
            "--ham",
            &format!("{corpus}/ham"),
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("learned 500 spam and 2500 ham messages"),
        "{out}"
    );
    let (ok, out) = cli(&c, &["model", "show"]);
    assert!(ok && out.contains("tokens"), "{out}");
}

/// Thresholds and actions per domain and policy rules, set with the CLI, reach the engine
/// without a restart; bad ones are refused with the field named and change nothing.
#[test]
fn verdict_actions_and_policy_rules_published_by_control_reach_the_engine() {
    const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
    let dir = tmp("filtering");
    let (c, _engine, smtp, metrics) = control_and_engine(&dir);
    let (ok, out) = cli(
        &c,
        &["domain", "add", "fleet.test", "--route", "127.0.0.1:9"],
    );
    assert!(ok, "{out}");
    let reply = eventually("550", || send_message(smtp, GTUBE));
    assert!(
        reply.starts_with("550 5.7.1 Message refused as spam"),
        "{reply}"
    );

    // The domain quarantines its spam instead.
    let (ok, out) = cli(
        &c,
        &[
            "verdicts",
            "set",
            "--domain",
            "fleet.test",
            "spam_action=quarantine",
            "subject_tag=[SPAM] ",
        ],
    );
    assert!(ok, "{out}");
    let reply = eventually("250", || send_message(smtp, GTUBE));
    assert!(reply.starts_with("250"), "{reply}");
    let (ok, out) = cli(&c, &["verdicts", "show"]);
    assert!(
        ok && out.contains("fleet.test\t") && out.contains("\"spam_action\":\"quarantine\""),
        "{out}"
    );
    // A bad value is a 400 naming the field; nothing changes.
    let (ok, out) = cli(&c, &["verdicts", "set", "phishing_action=bounce"]);
    assert!(
        !ok && out.contains("400") && out.contains("phishing_action"),
        "{out}"
    );
    let (ok, out) = cli(
        &c,
        &[
            "verdicts",
            "set",
            "--domain",
            "nowhere.test",
            "spam_action=tag",
        ],
    );
    assert!(!ok && out.contains("404"), "{out}");

    // A policy rule, imported from the same TOML the engine's own file takes.
    let rules = dir.join("policy-rules.toml");
    std::fs::write(
        &rules,
        "[[policy_rules]]\nname = \"hold-fleet\"\nheader = \"Subject\"\ncontains = [\"FLEET\"]\naction = \"reject\"\n",
    )
    .unwrap();
    let (ok, out) = cli(&c, &["policy-rules", "import", rules.to_str().unwrap()]);
    assert!(ok, "{out}");
    let reply = eventually("550", || send_message(smtp, "a clean note"));
    assert!(
        reply.starts_with("550 5.7.1 Message refused by policy"),
        "{reply}"
    );
    assert!(
        metric(
            metrics,
            "bulwark_policy_rule_hits_total{rule=\"hold-fleet\"} "
        ) >= 1.0
    );
    let (ok, out) = cli(&c, &["policy-rules", "show"]);
    assert!(ok && out.starts_with("1\thold-fleet\t"), "{out}");
    // A rule that does not hold together: refused with its index and field.
    std::fs::write(
        &rules,
        "[[policy_rules]]\nname = \"x\"\naction = \"explode\"\n",
    )
    .unwrap();
    let (ok, out) = cli(&c, &["policy-rules", "import", rules.to_str().unwrap()]);
    assert!(
        !ok && out.contains("400") && out.contains("rules[0].action"),
        "{out}"
    );
    std::fs::write(
        &rules,
        "[[policy_rules]]\nname = \"x\"\nactoin = \"reject\"\n",
    )
    .unwrap();
    let (ok, out) = cli(&c, &["policy-rules", "import", rules.to_str().unwrap()]);
    assert!(
        !ok && out.contains("line 3") && out.contains("actoin"),
        "{out}"
    );
    assert!(send_message(smtp, "a clean note").starts_with("550"));

    let (ok, out) = cli(&c, &["policy-rules", "remove", "hold-fleet"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&c, &["verdicts", "clear", "--domain", "fleet.test"]);
    assert!(ok, "{out}");
    let reply = eventually("250", || send_message(smtp, "a clean note"));
    assert!(reply.starts_with("250"), "{reply}");
    let reply = eventually("550", || send_message(smtp, GTUBE));
    assert!(
        reply.starts_with("550 5.7.1 Message refused as spam"),
        "{reply}"
    );
}

/// A URL blocklist imported through control is published beside the snapshot and the
/// engine refuses mail linking to a listed URL as phishing; a bad line is named.
#[test]
fn url_blocklist_published_by_control_reaches_the_engine() {
    let dir = tmp("urls");
    let (c, _engine, smtp, _metrics) = control_and_engine(&dir);
    let (ok, out) = cli(
        &c,
        &["domain", "add", "fleet.test", "--route", "127.0.0.1:9"],
    );
    assert!(ok, "{out}");
    let body = "Please sign in at http://login.evil-bank.test/account/verify?id=7 today.";
    let reply = eventually("250", || send_message(smtp, body));
    assert!(reply.starts_with("250"), "{reply}");

    let list = dir.join("feed.txt");
    std::fs::write(&list, "# feed\nevil-bank.test/account/\n").unwrap();
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "good.test/\nnot a url at all\n").unwrap();
    let (ok, out) = cli(
        &c,
        &[
            "url-blocklist",
            "import",
            list.to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("bad.txt:2:"), "{out}");
    let (ok, out) = cli(&c, &["url-blocklist", "import", list.to_str().unwrap()]);
    assert!(ok && out.contains("entries\t1"), "{out}");
    let reply = eventually("550", || send_message(smtp, body));
    assert!(
        reply.starts_with("550 5.7.1 Message refused as phishing"),
        "{reply}"
    );
    let (ok, out) = cli(&c, &["url-blocklist", "show"]);
    assert!(ok && out.contains("sha256"), "{out}");
    let (ok, out) = cli(&c, &["url-blocklist", "remove"]);
    assert!(ok, "{out}");
    let reply = eventually("250", || send_message(smtp, body));
    assert!(reply.starts_with("250"), "{reply}");
}

/// Antivirus signatures imported through control: a malformed line is named and nothing
/// is published; good files reach the engine's built-in engine (a hash and a body
/// signature), EICAR stays known, and removing them goes back to the engine's own.
#[test]
fn antivirus_signatures_imported_through_control_reach_the_engine() {
    let dir = tmp("av");
    let (c, _engine, smtp, _metrics) = control_and_engine(&dir);
    let (ok, out) = cli(
        &c,
        &["domain", "add", "fleet.test", "--route", "127.0.0.1:9"],
    );
    assert!(ok, "{out}");
    // The body as the engine sees the part: the text and its line end.
    let hashed = "a payload known by its hash";
    let md5 = {
        let out = std::process::Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut ch| {
                use std::io::Write as _;
                ch.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{hashed}\r\n").as_bytes())?;
                ch.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..32].to_string()
    };
    let reply = eventually("250", || send_message(smtp, hashed));
    assert!(reply.starts_with("250"), "{reply}");
    let hdb = dir.join("local.hdb");
    std::fs::write(
        &hdb,
        format!("{md5}:{}:Local.Hash.Test\n", hashed.len() + 2),
    )
    .unwrap();
    let ndb = dir.join("local.ndb");
    let hex: String = "dropper-marker-77"
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        &ndb,
        format!("Local.Body.Test:0:*:{hex}\nLocal.Ep.Test:1:EP+0:4d5a\n"),
    )
    .unwrap();
    let bad = dir.join("bad.ndb");
    std::fs::write(&bad, "Ok:0:*:41424344\nBroken:0:*:41zz\n").unwrap();
    let (ok, out) = cli(
        &c,
        &["av", "import", hdb.to_str().unwrap(), bad.to_str().unwrap()],
    );
    assert!(!ok && out.contains("bad.ndb:2:"), "{out}");
    let (ok, out) = cli(&c, &["av", "show"]);
    assert!(!ok, "nothing was published: {out}");
    let (ok, out) = cli(
        &c,
        &["av", "import", hdb.to_str().unwrap(), ndb.to_str().unwrap()],
    );
    assert!(
        ok && out.contains("hashes\t2") && out.contains("bodies\t2"),
        "{out}"
    );
    assert!(
        out.contains("local.ndb:2: offset EP+0"),
        "skipped lines are listed: {out}"
    );
    let reply = eventually("550", || send_message(smtp, hashed));
    assert!(
        reply.starts_with("550 5.7.1 Message refused: virus found (Local.Hash.Test)"),
        "{reply}"
    );
    let reply = send_message(smtp, "look: dropper-marker-77 inside");
    assert!(
        reply.starts_with("550 5.7.1 Message refused: virus found (Local.Body.Test)"),
        "{reply}"
    );
    let eicar = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    let reply = send_message(smtp, eicar);
    assert!(
        reply.starts_with("550 5.7.1 Message refused: virus found (Eicar-Test-Signature)"),
        "{reply}"
    );
    let (ok, out) = cli(&c, &["av", "show"]);
    assert!(ok && out.contains("sha256"), "{out}");
    let (ok, out) = cli(&c, &["av", "remove"]);
    assert!(ok, "{out}");
    let reply = eventually("250", || send_message(smtp, hashed));
    assert!(reply.starts_with("250"), "{reply}");

    // Attachment conditions in policy rules go through the same import.
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        "[[policy_rules]]\nname = \"no-programs\"\nattachment_types = [\"executable\"]\ndouble_extension = true\naction = \"strip\"\n",
    )
    .unwrap();
    let (ok, out) = cli(&c, &["policy-rules", "import", rules.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&c, &["policy-rules", "show"]);
    assert!(
        ok && out.contains("\"attachment_types\":[\"executable\"]")
            && out.contains("\"double_extension\":true")
            && out.contains("\"action\":\"strip\""),
        "{out}"
    );
    std::fs::write(
        &rules,
        "[[policy_rules]]\nname = \"x\"\nattachment_types = [\"exe\"]\naction = \"reject\"\n",
    )
    .unwrap();
    let (ok, out) = cli(&c, &["policy-rules", "import", rules.to_str().unwrap()]);
    assert!(
        !ok && out.contains("400") && out.contains("rules[0].attachment_types[0]"),
        "{out}"
    );
}

/// The connection tier through control: a drop network and throttles published to the
/// engine, `ip check` explaining each address's verdict as the engine decides it, and a
/// dynamic block the engine imposed listed and lifted through the API and the CLI.
#[test]
fn ip_check_and_dynamic_blocks_go_through_control_to_the_engine() {
    let dir = tmp("ipcheck");
    let (c, _engine, smtp, _metrics) = control_and_engine(&dir);
    for args in [
        &["ip", "drop", "198.18.0.0/15"][..],
        &["ip", "allow", "198.18.0.7"],
        &[
            "limits",
            "set",
            "throttle_unknown_connections=1",
            "throttle_block_after=2",
            "throttle_block_secs=60",
        ],
    ] {
        let (ok, out) = cli(&c, args);
        assert!(ok, "{args:?}: {out}");
    }
    // The engine applies what was published: wait for the throttle to show in a check.
    let check = |addr: &str| {
        let (ok, out) = cli(&c, &["ip", "check", addr, "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let end = Instant::now() + Duration::from_secs(3);
    while check("198.18.3.4")["verdict"] != "drop" {
        assert!(
            Instant::now() < end,
            "the drop list never reached the engine"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(check("198.18.0.7")["verdict"], "approved");
    let fresh = check("127.0.0.40");
    assert_eq!(fresh["verdict"], "accepted", "{fresh}");
    assert_eq!(fresh["group"], "unknown");
    assert!(
        fresh["steps"][4][1]
            .as_str()
            .unwrap()
            .contains("1 connections at once"),
        "{fresh}"
    );
    // Hold one connection from 127.0.0.40; two more are refused; the second refusal
    // blocks it.
    let mut held = connect_from("127.0.0.40", smtp).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut banner = [0u8; 64];
    let n = held.read(&mut banner).unwrap();
    assert!(banner[..n].starts_with(b"220"));
    write!(held, "NOOP\r\n").unwrap();
    let _ = held.read(&mut banner).unwrap();
    // Refused at connect or, when another core owns the client, at its first command.
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.40", smtp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = write!(s, "EHLO c\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let reply = out.lines().find(|l| !l.starts_with("220")).unwrap_or("");
        assert!(reply.starts_with("421 4.7.0 Too many connections"), "{out}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let (ok, out) = cli(&c, &["ip", "dynamic", "list"]);
    assert!(
        ok && out.contains("127.0.0.40/32") && out.contains("connections"),
        "{out}"
    );
    let blocked = check("127.0.0.40");
    assert_eq!(blocked["verdict"], "dynamic_block", "{blocked}");
    assert!(blocked["reply"].as_str().unwrap().starts_with("421 4.7.0"));
    let t = Some(c.token.as_str());
    let (status, body) = http(
        &c.url,
        "DELETE",
        "/api/v1/ips/dynamic?address=127.0.0.40",
        t,
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], true);
    drop(held);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(check("127.0.0.40")["verdict"], "accepted");
    // Bad input names the field.
    let (status, body) = http(&c.url, "GET", "/api/v1/ips/check?address=nonsense", t, None);
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("address")),
        "{body}"
    );
    let (status, body) = http(
        &c.url,
        "POST",
        "/api/v1/ips",
        t,
        Some(r#"{"cidr": "198.18.0.0/15", "action": "tarpit"}"#),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("action")),
        "{body}"
    );
    let (ok, out) = cli(&c, &["limits", "set", "throttle_ipv4_prefix=8"]);
    assert!(!ok && out.contains("throttle_ipv4_prefix"), "{out}");
}

/// Without an engine to ask, `ip check` explains from the stored lists, and the
/// dynamic-block routes say what is missing (409, field named).
#[test]
fn without_an_engine_ip_check_uses_the_stored_lists() {
    let dir = tmp("ipcheck-alone");
    let c = start_control(&dir, &dir.join("shm/policy"), &[]);
    let (ok, out) = cli(&c, &["ip", "block", "192.0.2.0/24"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&c, &["ip", "check", "192.0.2.9"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("192.0.2.9 (client 192.0.2.9/32): blocked"),
        "{out}"
    );
    assert!(out.contains("listed in 192.0.2.0/24"), "{out}");
    let t = Some(c.token.as_str());
    let (status, body) = http(&c.url, "GET", "/api/v1/ips/dynamic", t, None);
    assert_eq!(
        (status, body["field"].as_str()),
        (409, Some("engine_admin_dir")),
        "{body}"
    );
}

/// DNS lists managed through control: a zone added with a weight, class and answer filter
/// and a threshold reach the engine in the snapshot, which then refuses a listed client's
/// mail naming the zone (served by a real dnsmasq); a malformed zone or filter is refused
/// with the field named; removing the zone lets the client through again.
#[test]
fn dns_lists_are_managed_through_control_and_applied_by_the_engine() {
    let dir = tmp("dnsbl");
    let dns = free_port();
    let _dnsmasq = Proc(
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                &format!("--port={dns}"),
                "--host-record=50.0.0.127.bl.ctl.test,127.0.0.2",
                "--host-record=51.0.0.127.bl.ctl.test,127.0.0.99",
                "--local=/test/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    let (c, _engine, smtp, _metrics) = control_and_engine_with(
        &dir,
        &format!("[dns]\nnameservers = [\"127.0.0.1:{dns}\"]\n[authentication]\nenabled = false\n"),
    );
    let (ok, out) = cli(
        &c,
        &["domain", "add", "ctl.test", "--route", "127.0.0.1:2599"],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &c,
        &[
            "dnsbl",
            "add",
            "BL.ctl.test.",
            "--weight",
            "2",
            "--answer",
            "127.0.0.[2..11]",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("bl.ctl.test") && out.contains("127.0.0.[2..11]"),
        "{out}"
    );
    let (ok, out) = cli(&c, &["dnsbl", "threshold", "2"]);
    assert!(ok, "{out}");
    let check = |addr: &str| {
        let (ok, out) = cli(&c, &["ip", "check", addr, "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let end = Instant::now() + Duration::from_secs(5);
    let mut v = check("127.0.0.50");
    while v["verdict"] != "dnsbl" {
        assert!(Instant::now() < end, "the engine never used the list: {v}");
        std::thread::sleep(Duration::from_millis(100));
        v = check("127.0.0.50");
    }
    assert!(v["reply"].as_str().unwrap().contains("bl.ctl.test"), "{v}");
    // 127.0.0.51's answer is outside the filter: not a listing.
    assert_eq!(check("127.0.0.51")["verdict"], "accepted");
    let mut s = connect_from("127.0.0.50", smtp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "EHLO c\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(
        out.contains("550 5.7.1") && out.contains("bl.ctl.test"),
        "{out}"
    );
    // Bad definitions name what is wrong; nothing changes.
    let (ok, out) = cli(&c, &["dnsbl", "add", "not a zone"]);
    assert!(!ok && out.contains("zones[1].zone"), "{out}");
    let (ok, out) = cli(
        &c,
        &["dnsbl", "add", "x.test", "--answer", "127.0.0.[9..2]"],
    );
    assert!(!ok && out.contains("zones[1].answers"), "{out}");
    let (ok, out) = cli(&c, &["dnsbl", "add", "x.test", "--weight", "0"]);
    assert!(!ok && out.contains("zones[1].weight"), "{out}");
    let t = Some(c.token.as_str());
    let (status, body) = http(
        &c.url,
        "PUT",
        "/api/v1/dnsbl",
        t,
        Some(r#"{"zones": [{"zone": "a.test", "class": "sometimes"}]}"#),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("zones")),
        "{body}"
    );
    let (status, body) = http(&c.url, "GET", "/api/v1/dnsbl", t, None);
    assert_eq!(status, 200);
    assert_eq!(body["zones"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["threshold"], 2);
    let (ok, out) = cli(&c, &["dnsbl", "remove", "bl.ctl.test"]);
    assert!(ok, "{out}");
    let end = Instant::now() + Duration::from_secs(5);
    while check("127.0.0.50")["verdict"] != "accepted" {
        assert!(Instant::now() < end, "the list was not removed");
        std::thread::sleep(Duration::from_millis(100));
    }
}
