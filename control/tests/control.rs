//! The control service, its CLI, and an engine following what it publishes: all real
//! processes over real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONTROL: &str = env!("CARGO_BIN_EXE_bulwark-control");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "bulwark-control-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Control {
    _p: Proc,
    url: String,
    token: String,
    config: PathBuf,
}

fn start_control(dir: &Path, snapshot: &Path, engines: &[String]) -> Control {
    let port = free_port();
    let config = dir.join("control.toml");
    let engines: Vec<String> = engines.iter().map(|e| format!("\"{e}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "[control]\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\nsnapshot = \"{}\"\nengines = [{}]\n",
            dir.join("control.sqlite").display(),
            snapshot.display(),
            engines.join(", ")
        ),
    )
    .unwrap();
    let out = Command::new(CONTROL)
        .args(["token", "create", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let p = Proc(
        Command::new(CONTROL)
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    Control {
        _p: p,
        url: format!("http://127.0.0.1:{port}"),
        token,
        config,
    }
}

fn cli(c: &Control, args: &[&str]) -> (bool, String) {
    let out = Command::new(CONTROL)
        .args(args)
        .args(["--url", &c.url])
        .env("BULWARK_TOKEN", &c.token)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A raw HTTP request; returns (status, body).
fn http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Chunked bodies: the JSON sits between the chunk sizes.
    let json = body.find(['{', '[']).map(|i| &body[i..]).unwrap_or("");
    let end = json.rfind(['}', ']']).map(|i| i + 1).unwrap_or(0);
    (
        status,
        serde_json::from_str(&json[..end]).unwrap_or(serde_json::Value::Null),
    )
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
    let (ok, out) = cli(&c, &["domain", "list"]);
    assert!(ok);
    assert_eq!(out.trim(), "example.test\t127.0.0.1:2526");
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
    let engine_bin = Path::new(CONTROL).with_file_name("bulwark");
    assert!(
        engine_bin.exists(),
        "build the workspace first: {} is missing",
        engine_bin.display()
    );
    let dir = tmp("follow");
    let snapshot = dir.join("shm/policy");
    let (smtp, metrics) = (free_port(), free_port());
    let ecfg = dir.join("bulwark.toml");
    std::fs::write(
        &ecfg,
        format!(
            "[server]\nhostname = \"mx.test\"\nlisten = [\"127.0.0.1:{smtp}\"]\nmetrics = \"127.0.0.1:{metrics}\"\ncores = 2\n\
             [spool]\ndir = \"{}\"\n[policy]\nsnapshot = \"{}\"\n",
            dir.join("spool").display(),
            snapshot.display()
        ),
    )
    .unwrap();
    let c = start_control(&dir, &snapshot, &[format!("127.0.0.1:{metrics}")]);
    let _engine = Proc(
        Command::new(&engine_bin)
            .args(["serve", "--config"])
            .arg(&ecfg)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(smtp);
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
    let (ok, out) = cli(&c, &["snapshot", "show"]);
    assert!(ok, "{out}");
    let generation = out
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(',')
        .to_string();
    assert!(
        out.contains(&format!(
            "engine 127.0.0.1:{metrics}: generation {generation}"
        )),
        "{out}"
    );
    let (ok, _) = cli(&c, &["domain", "remove", "new.test"]);
    assert!(ok);
    let end = Instant::now() + Duration::from_secs(2);
    while !rcpt("u@new.test").starts_with("550") {
        assert!(Instant::now() < end, "removal was not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
}
