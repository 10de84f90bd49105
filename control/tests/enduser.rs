//! The end-user quarantine console over real HTTP, with a real engine delivering its
//! mail to a sink that keeps every message: registration and the activation mail, what
//! an end user can and cannot see or do, personal approved senders applied by the
//! engine, the digest and its signed release links, the sign-in throttle.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A browser's worth of HTTP: cookies kept, redirects not followed.
struct Client {
    addr: String,
    cookies: HashMap<String, String>,
}

struct Page {
    status: u16,
    location: String,
    body: String,
}

impl Client {
    fn new(url: &str) -> Client {
        Client {
            addr: url.trim_start_matches("http://").to_string(),
            cookies: HashMap::new(),
        }
    }

    fn send(&mut self, method: &str, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let cookies: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // HTTP/1.0: the body ends with the connection, never chunked.
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.addr);
        if !cookies.is_empty() {
            req.push_str(&format!("Cookie: {}\r\n", cookies.join("; ")));
        }
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let status: u16 = head[9..12].parse().unwrap();
        let mut location = String::new();
        for line in head.lines().skip(1) {
            let Some((k, v)) = line.split_once(": ") else {
                continue;
            };
            if k.eq_ignore_ascii_case("set-cookie") {
                let pair = v.split(';').next().unwrap_or("");
                if let Some((name, value)) = pair.split_once('=') {
                    if value.is_empty() || v.contains("Max-Age=0") {
                        self.cookies.remove(name);
                    } else {
                        self.cookies.insert(name.into(), value.into());
                    }
                }
            } else if k.eq_ignore_ascii_case("location") {
                location = v.to_string();
            }
        }
        Page {
            status,
            location,
            body: body.to_string(),
        }
    }

    fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, &[])
    }
}

fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the first hidden `name` field of a page.
fn field(body: &str, name: &str) -> String {
    let at = body
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in {body}"));
    let rest = &body[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn mail_in(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut v: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits up to 15 s for a message at the sink containing every one of `want`.
fn wait_mail(dir: &Path, want: &[&str]) -> String {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((_, m)) = mail_in(dir)
            .into_iter()
            .find(|(_, m)| want.iter().all(|w| m.contains(w)))
        {
            return m;
        }
        assert!(
            Instant::now() < end,
            "no message with {want:?} at the sink; it has {:?}",
            mail_in(dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first URL in `mail` starting with `prefix`.
fn link(mail: &str, prefix: &str) -> String {
    let at = mail
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} in {mail}"));
    mail[at..]
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap()
        .to_string()
}

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// Sends one message (spam: GTUBE); the reply to its end of data.
fn smtp_send(smtp: u16, from: &str, to: &str, subject: &str) -> String {
    send_mail(
        smtp,
        from,
        to,
        &format!(
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nSee http://example.invalid/x\r\n{GTUBE}"
        ),
    )
}

/// The queue id of the newest message to `rcpt` with `subject`, from tracking.
fn tracked(c: &Control, rcpt: &str, subject: &str, want_status: &str) -> String {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, v) = http(
            &c.url,
            "GET",
            &format!("/api/v1/tracking?recipient={}&since=1h", enc(rcpt)),
            Some(&c.token),
            None,
        );
        let hit = v["rows"].as_array().and_then(|l| {
            l.iter()
                .find(|m| {
                    m["subject"] == subject
                        && m["status"].as_str().unwrap_or("").contains(want_status)
                })
                .cloned()
        });
        if let Some(m) = hit {
            return m["qid"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < end,
            "{subject} to {rcpt} never became {want_status}: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn end_users_register_see_only_their_mail_approve_senders_and_release_from_digests() {
    let dir = tmp("enduser");
    let mailbox = dir.join("mailbox");
    let (_sink, sink_port) = load_sink(&["--save".as_ref(), mailbox.as_os_str()]);
    let (c, _engine, smtp, _) = control_and_engine(&dir);
    add_domain_routed_to(&c, "example.test", sink_port);
    let csv = dir.join("users.csv");
    std::fs::write(
        &csv,
        "Email,Name\nalice@example.test,Alice\nbob@example.test,Bob\n",
    )
    .unwrap();
    let (ok, out) = cli(
        &c,
        &["directory", "import", "example.test", csv.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    // Spam is quarantined; every test message is spam (GTUBE) unless its sender is
    // approved.
    let (ok, out) = cli(&c, &["verdicts", "set", "spam_action=quarantine"]);
    assert!(ok, "{out}");
    assert!(
        eventually("250", || smtp_send(
            smtp,
            "hold@sender.test",
            "alice@example.test",
            "For Alice"
        ))
        .starts_with("250")
    );
    assert!(smtp_send(smtp, "hold@sender.test", "bob@example.test", "For Bob").starts_with("250"));
    let alice_id = tracked(&c, "alice@example.test", "For Alice", "quarantined");
    let bob_id = tracked(&c, "bob@example.test", "For Bob", "quarantined");

    // Registration: the same answer for an address outside the directory, and no mail.
    let mut web = Client::new(&c.url);
    for address in ["mallory@example.test", "alice@example.test"] {
        let p = web.get("/quarantine/register");
        assert_eq!(p.status, 200);
        let csrf = field(&p.body, "csrf");
        let p = web.send(
            "POST",
            "/quarantine/register",
            &[("csrf", &csrf), ("address", address)],
        );
        assert_eq!(p.status, 200, "{}", p.body);
        assert!(
            p.body.contains("a message with a link is on its way"),
            "{}",
            p.body
        );
    }
    // Without the form's token, nothing is sent.
    let p = web.send(
        "POST",
        "/quarantine/register",
        &[("csrf", "forged"), ("address", "bob@example.test")],
    );
    assert!(p.body.contains("The form expired"), "{}", p.body);
    let activation = wait_mail(
        &mailbox,
        &[
            "To: <alice@example.test>",
            "Activate your quarantine account",
        ],
    );
    let url = link(
        &activation,
        &format!("{}/quarantine/activate?token=", c.url),
    );
    let path = url.trim_start_matches(&c.url).to_string();
    let p = web.get(&path);
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("alice@example.test"));
    let csrf = field(&p.body, "csrf");
    let token = field(&p.body, "token");
    let p = web.send(
        "POST",
        "/quarantine/activate",
        &[
            ("csrf", &csrf),
            ("token", &token),
            ("password", "alice's long password"),
            ("confirm", "not the same password"),
        ],
    );
    assert_eq!(p.status, 400);
    assert!(p.body.contains("not the same"), "{}", p.body);
    let csrf = field(&p.body, "csrf");
    let p = web.send(
        "POST",
        "/quarantine/activate",
        &[
            ("csrf", &csrf),
            ("token", &token),
            ("password", "alice's long password"),
            ("confirm", "alice's long password"),
        ],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(
        p.location
            .starts_with("/quarantine/?done=Your%20account%20is%20active"),
        "{}",
        p.location
    );
    assert!(web.cookies.contains_key("bulwark_user"));
    // The link is used up.
    assert_eq!(web.get(&path).status, 404);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !mail_in(&mailbox)
            .iter()
            .any(|(_, m)| m.contains("mallory@example.test")),
        "an address outside the directory got mail"
    );

    // Alice sees her message and not Bob's; she cannot preview or release Bob's.
    let p = web.get("/quarantine/");
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("For Alice") && !p.body.contains("For Bob"),
        "{}",
        p.body
    );
    let csrf = field(&p.body, "csrf");
    let p = web.get(&format!("/quarantine/message/{alice_id}"));
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("<pre class=\"preview\">") && p.body.contains("example.invalid"),
        "{}",
        p.body
    );
    assert!(
        !p.body.contains("href=\"http://example.invalid"),
        "a link came alive"
    );
    assert_eq!(
        web.get(&format!("/quarantine/message/{bob_id}")).status,
        404
    );
    for op in ["release", "delete", "approve"] {
        let p = web.send(
            "POST",
            &format!("/quarantine/message/{bob_id}/{op}"),
            &[("csrf", &csrf)],
        );
        assert_eq!(p.status, 404, "{op}: {}", p.body);
    }
    // Without the session's CSRF token nothing happens.
    let p = web.send(
        "POST",
        &format!("/quarantine/message/{alice_id}/release"),
        &[("csrf", "forged")],
    );
    assert_eq!(p.status, 403);
    // The end user's session is not an administrator's, nor the API's.
    assert_eq!(web.get("/tracking").status, 303);
    let p = web.get("/api/v1/domains");
    assert_eq!(p.status, 401);

    // Release and approve: delivered now, and the engine lets her next one through.
    let p = web.send(
        "POST",
        &format!("/quarantine/message/{alice_id}/approve"),
        &[("csrf", &csrf)],
    );
    assert_eq!(p.status, 303, "{}", p.body);
    wait_mail(
        &mailbox,
        &[
            "Subject: For Alice",
            "X-Bulwark-Released:",
            "alice@example.test (end user)",
        ],
    );
    let p = web.get("/quarantine/settings");
    assert!(p.body.contains("<td>hold@sender.test</td>"), "{}", p.body);
    // The engine has the new policy within a moment.
    let end = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let subject = format!("Again for Alice {n}");
        assert!(
            smtp_send(smtp, "hold@sender.test", "alice@example.test", &subject).starts_with("250")
        );
        let status = {
            let end2 = Instant::now() + Duration::from_secs(10);
            loop {
                let (_, v) = http(
                    &c.url,
                    "GET",
                    "/api/v1/tracking?recipient=alice%40example.test&since=1h",
                    Some(&c.token),
                    None,
                );
                let s = v["rows"]
                    .as_array()
                    .and_then(|l| l.iter().find(|m| m["subject"] == subject.as_str()))
                    .map(|m| m["status"].as_str().unwrap_or("").to_string());
                if let Some(s) = s.filter(|s| s != "accepted" && s != "queued") {
                    break s;
                }
                assert!(Instant::now() < end2, "{subject} not tracked: {v}");
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        if status == "delivered" {
            break;
        }
        assert!(
            Instant::now() < end,
            "mail from an approved sender is still {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Bob approved nothing: his is still held.
    assert!(
        smtp_send(
            smtp,
            "hold@sender.test",
            "bob@example.test",
            "Again for Bob"
        )
        .starts_with("250")
    );
    tracked(&c, "bob@example.test", "Again for Bob", "quarantined");

    // The digest: Bob's two held messages, each with a signed release link.
    let (status, v) = http(
        &c.url,
        "POST",
        "/api/v1/quarantine/digest",
        Some(&c.token),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["recipients"], 1, "{v}");
    assert_eq!(v["messages"], 2, "{v}");
    let digest = wait_mail(
        &mailbox,
        &[
            "To: <bob@example.test>",
            "Quarantine digest: 2 new messages",
        ],
    );
    assert!(
        digest.contains("For Bob") && digest.contains("Again for Bob"),
        "{digest}"
    );
    // Nothing twice: a second run finds nothing new.
    let (_, v) = http(
        &c.url,
        "POST",
        "/api/v1/quarantine/digest",
        Some(&c.token),
        None,
    );
    assert_eq!(v["recipients"], 0, "{v}");
    let release = link(
        &digest[digest.find("Subject: For Bob").unwrap()..],
        &format!("{}/quarantine/release?", c.url),
    );
    let path = release.trim_start_matches(&c.url).to_string();
    assert!(path.contains(&format!("id={bob_id}")), "{path}");
    let mut stranger = Client::new(&c.url);
    // A changed link does not work: another message, another recipient, a later expiry.
    for (from, to) in [
        (format!("id={bob_id}"), format!("id={alice_id}")),
        ("to=bob".into(), "to=alice".into()),
        ("&exp=".into(), "&exp=9".into()),
    ] {
        let forged = path.replace(&from, &to);
        let p = stranger.get(&forged);
        assert_eq!(p.status, 404, "{forged}: {}", p.body);
    }
    let p = stranger.get(&path);
    assert_eq!(p.status, 200, "{}", p.body);
    // Opening the link releases nothing (link scanners open links): the button does.
    assert!(p.body.contains("Release it to my inbox"));
    let fields: Vec<(String, String)> = ["id", "to", "exp", "sig"]
        .iter()
        .map(|k| (k.to_string(), field(&p.body, k)))
        .collect();
    let form: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let p = stranger.send("POST", "/quarantine/release", &form);
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("on its way"), "{}", p.body);
    wait_mail(&mailbox, &["Subject: For Bob", "(digest link)"]);
    // Used once: the message is not held any more.
    let p = stranger.send("POST", "/quarantine/release", &form);
    assert_eq!(p.status, 404);

    // Sign-in throttling: after five wrong passwords even the right one waits.
    let mut guesser = Client::new(&c.url);
    for _ in 0..5 {
        let p = guesser.get("/quarantine/login");
        let csrf = field(&p.body, "csrf");
        let p = guesser.send(
            "POST",
            "/quarantine/login",
            &[
                ("csrf", &csrf),
                ("address", "alice@example.test"),
                ("password", "guess guess guess"),
            ],
        );
        assert_eq!(p.status, 401);
    }
    let p = guesser.get("/quarantine/login");
    let csrf = field(&p.body, "csrf");
    let p = guesser.send(
        "POST",
        "/quarantine/login",
        &[
            ("csrf", &csrf),
            ("address", "alice@example.test"),
            ("password", "alice's long password"),
        ],
    );
    assert_eq!(p.status, 429, "{}", p.body);
    // The administrator sees who registered, and removes an end user: their session
    // ends with them.
    let (ok, out) = cli(&c, &["quarantine", "users"]);
    assert!(
        ok && out.contains("alice@example.test") && out.contains("yes"),
        "{out}"
    );
    assert_eq!(web.get("/quarantine/").status, 200);
    let (status, v) = http(
        &c.url,
        "DELETE",
        "/api/v1/end-users/alice@example.test",
        Some(&c.token),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(web.get("/quarantine/").status, 303);
    let (status, _) = http(
        &c.url,
        "DELETE",
        "/api/v1/end-users/alice@example.test",
        Some(&c.token),
        None,
    );
    assert_eq!(status, 404);
    let (_, out) = cli(&c, &["quarantine", "users"]);
    assert!(!out.contains("alice@example.test"), "{out}");
}
